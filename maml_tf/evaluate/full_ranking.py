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

A large catalogue's top k is taken by blocks of items (`top_k_by_blocks`):
`tf.math.top_k`'s answer, ties included, in a third to a half of its time.
"""

from __future__ import annotations

from typing import Dict

import keras
import numpy as np
import tensorflow as tf
from maml_tf.evaluate.metrics import (group_by_user, mean_metrics,
                                     per_user_metrics)
from maml_tf.models.base import cache_item_chunk


TOPK_BLOCK = 128  # items a block in `top_k_by_blocks`


def top_k_by_blocks(scores, k, block=TOPK_BLOCK):
  """`tf.math.top_k(scores, k)` of scores [U, n] (values, indices), by blocks.

  Every item of the top k lies in one of the k blocks whose maxima rank
  highest (maximum descending, then block index ascending): each block
  ranked before an item's own block holds an item ranked before it (a
  greater value, or an equal one at a lower id), and fewer than k items
  rank before a top-k item. The chosen blocks are kept in item order, so
  the final top k breaks ties by the lower item id, as `tf.math.top_k`
  does. A catalogue of at most 2 x k blocks' items takes the plain top k.
  """
  n = scores.shape[-1]
  if n is None or n <= 2 * k * block:
    return tf.math.top_k(scores, k=k)
  n_blocks = -(-n // block)
  rows = tf.shape(scores)[0]
  padded = tf.pad(scores, [[0, 0], [0, n_blocks * block - n]],
                  constant_values=-np.inf)
  blocks = tf.reshape(padded, [rows, n_blocks, block])
  _, best = tf.math.top_k(tf.reduce_max(blocks, -1), k=k)
  best = tf.sort(best, -1)  # item order among the candidates
  candidates = tf.reshape(tf.gather(blocks, best, batch_dims=1), [rows, k * block])
  values, at = tf.math.top_k(candidates, k=k)
  items = tf.gather(best, at // block, batch_dims=1) * block + at % block
  return values, items


# Floats of one chunk's [users, n_items] scores for a model whose scores are
# one product of tables: the block the scores, their masked copy and the top
# k pass over stays in the CPU's last-level cache (24 MB). Measured with
# LightGCN at Clothing's size (23k items), 68 / 128 / 256 / 512 users a chunk:
# 0.122 / 0.091 / 0.100 / 0.265 ms a user; NGCF at 100k items (256-wide
# tables), 17 / 41 / 64 / 128 users: 1.59 / 1.12 / 0.92 / 1.52 ms a user.
SCORE_BLOCK_FLOATS = 6 << 20


def default_chunks(n_items, width, budget=1 << 25, pair_width=0):
  """(users per chunk, items per chunk), at most 512 users a chunk.

  A model whose scores are one product of tables (`pair_width` 0) scores the
  whole catalogue at once: its users fill `SCORE_BLOCK_FLOATS` of scores.
  A model with per-pair activations (`pair_width` floats a pair) keeps
  users x item chunk x `width` <= ~budget, with items in chunks of at most
  8,192 cut further by `cache_item_chunk` to keep its activations in cache.
  """
  n_item_chunks = -(-n_items // 8192)
  item_chunk = -(-n_items // n_item_chunks)
  if not pair_width:
    return int(max(1, min(512, SCORE_BLOCK_FLOATS // n_items))), item_chunk
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
      return top_k_by_blocks(scores, k)

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


