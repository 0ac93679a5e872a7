"""Full-ranking top-k evaluation, the paper's protocol (docs/spec.md §5).

For every user with at least one target (test or validation) item: score all
|I| items, drop the items the user is known to have (train, plus validation
when the target is test), take the top k. With hits = target items among
them: Recall = hits / |target_u|, Precision = hits / k, HR = [hits > 0],
NDCG = DCG / IDCG with binary gains, DCG = sum over hit positions (0-based,
after dropping) of 1 / log2(pos + 2), IDCG over the first min(|target_u|, k)
positions. Metrics are averaged over users and kept as fractions (the paper
prints them x100).

Ties in score go to the lower item id (`tf.math.top_k`'s rule).
"""

from __future__ import annotations

from typing import Dict

import keras
import numpy as np
import tensorflow as tf
from maml_tf.evaluate.metrics import (group_by_user, mean_metrics,
                                     per_user_metrics)
from maml_tf.models.base import cache_item_chunk


def default_chunks(n_items, width, budget=1 << 25, pair_width=0):
  """(users per chunk, items per chunk): chunk x width <= ~budget, and for a
  model with per-pair activations, items cut by `cache_item_chunk`."""
  n_item_chunks = -(-n_items // 8192)
  item_chunk = -(-n_items // n_item_chunks)
  user_chunk = int(max(1, min(512, budget // (item_chunk * width))))
  return user_chunk, cache_item_chunk(n_items, item_chunk, user_chunk, pair_width)


class Evaluator:
  """Ranks every target user's unseen items with a model and scores top-k."""

  def __init__(self, model, exclude_pairs, target_pairs, ks=(10,),
               user_chunk=None, item_chunk=None, jit_compile=True):
    n_users, n_items = model.n_users, model.n_items
    self.model, self.ks, self.kmax = model, tuple(ks), max(ks)
    auto_users, auto_items = default_chunks(
        n_items, model.score_width, pair_width=getattr(model, "pair_width", 0))
    self.user_chunk = user_chunk or auto_users
    self.item_chunk = item_chunk or auto_items
    self.excl_ptr, self.excl_items = group_by_user(exclude_pairs, n_users)
    ptr, items = group_by_user(target_pairs, n_users)
    self.users = np.flatnonzero(np.diff(ptr))
    self.targets = [items[ptr[u]:ptr[u + 1]] for u in self.users]
    k = min(self.kmax, n_items)
    item_chunk = self.item_chunk

    # Scoring has one fixed shape per chunk (users are padded), so it can be
    # compiled once; the exclusion list differs in length per chunk, so the
    # masking and top-k stay outside XLA (a dynamic shape would recompile).
    self._score = tf.function(
        lambda users: model.score_items(users, item_chunk),
        jit_compile=jit_compile, reduce_retracing=True,
        input_signature=[tf.TensorSpec([None], tf.int32)])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 2], tf.int32)])
    def rank(users, excl):
      scores = self._score(users)
      scores = tf.tensor_scatter_nd_update(
          scores, excl, tf.fill([tf.shape(excl)[0]], -np.inf))
      return tf.math.top_k(scores, k=k)

    self._rank = rank
    # The latest call's {"users": [U] ids, metric@k: [U] values}, or None.
    self.per_user = None

  @property
  def n_users(self):
    return len(self.users)

  def top_k(self, progress=False) -> np.ndarray:
    """[n target users, kmax] best-first unseen item ids (-1: no candidate)."""
    out = []
    chunk = self.user_chunk
    self.model.prepare_scoring()  # tables derived from the weights, once
    bar = keras.utils.Progbar(len(self.users), unit_name="user") if progress else None
    for start in range(0, len(self.users), chunk):
      users = self.users[start:start + chunk]
      n = len(users)
      if n < chunk:  # keep one traced shape
        users = np.concatenate([users, np.full(chunk - n, users[0])])
      lo, hi = self.excl_ptr[users], self.excl_ptr[users + 1]
      rows = np.repeat(np.arange(chunk), hi - lo)
      cols = self.excl_items[np.concatenate(
          [np.arange(a, b) for a, b in zip(lo, hi)]) if len(rows) else []]
      excl = np.stack([rows, cols], 1).astype(np.int32).reshape(-1, 2)
      values, idx = self._rank(tf.constant(users, tf.int32), tf.constant(excl))
      idx = np.where(np.isneginf(values.numpy()), -1, idx.numpy())[:n]
      out.append(idx)
      if bar is not None:
        bar.add(n)
    topk = np.concatenate(out) if out else np.zeros((0, self.kmax), np.int64)
    if topk.shape[1] < self.kmax:
      topk = np.pad(topk, [(0, 0), (0, self.kmax - topk.shape[1])],
                    constant_values=-1)
    return topk

  def __call__(self, progress=False) -> Dict[str, float]:
    """The metrics averaged over the target users; the latest call's values
    per user are kept in `per_user` (no extra pass: the averages are theirs).
    """
    if not len(self.users):
      self.per_user = None
      return {}
    values = per_user_metrics(self.top_k(progress), self.targets, self.ks)
    self.per_user = dict(values, users=self.users)
    return mean_metrics(values)


