"""Sampled ranking: each test user's held-out item ranked among sampled
negatives (the leave-one-out protocol's HR@k and nDCG@k).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from maml_tf.errors import DataError


def sample_candidates(known_pairs, test_pairs, n_items, n_neg=100, seed=0):
  """(users [U], candidates [U, 1 + n_neg]): per test pair, its item first,
  then `n_neg` distinct items the user never interacted with (`known_pairs`
  holds every pair of every split), uniform, seeded.

  Raises:
    DataError: a user has fewer than n_neg items left to sample.
  """
  known = np.asarray(known_pairs, np.int64)
  test = np.asarray(test_pairs, np.int64)
  keys = np.unique(known[:, 0] * n_items + known[:, 1])
  counts = np.bincount(known[:, 0], minlength=int(test[:, 0].max(initial=0)) + 1)
  short = np.flatnonzero(n_items - counts[test[:, 0]] < n_neg)
  if len(short):
    user = int(test[short[0], 0])
    raise DataError(f"user {user} has only {n_items - counts[user]} items they "
                    f"never interacted with; `--loo_negatives` must be <= that. "
                    f"Received: {n_neg}")
  rng = np.random.default_rng(seed)
  users = test[:, 0]
  negs = rng.integers(0, n_items, size=(len(test), n_neg))

  def bad_cells(cand):
    """Known items, and repeats of an earlier column in the same row."""
    k = users[:, None] * n_items + cand
    pos = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
    bad = keys[pos] == k
    srt = np.sort(cand, axis=1)
    order = np.argsort(cand, axis=1, kind="stable")
    dup_sorted = np.zeros_like(bad)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(bad)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return bad | dup

  bad = bad_cells(negs)
  while bad.any():
    negs[bad] = rng.integers(0, n_items, size=int(bad.sum()))
    bad = bad_cells(negs)
  return users, np.concatenate([test[:, 1:], negs], axis=1)


def sampled_metrics(scores, ks: Sequence[int] = (10,)) -> Dict[str, float]:
  """HR@k and nDCG@k of column 0 among the candidates of each row, averaged
  over the rows (0.0 when there are none); see `sampled_per_row`."""
  return _average(sampled_per_row(scores, ks))


def _average(per_row):
  return {name: float(np.mean(values)) if len(values) else 0.0
          for name, values in per_row.items()}


def sampled_per_row(scores, ks: Sequence[int] = (10,)) -> Dict[str, np.ndarray]:
  """{metric@k: float64 [rows]}: HR@k and nDCG@k of column 0 of each row.

  rank = #candidates scoring higher than column 0, plus the negatives that
  tie with it (pessimistic: a constant model ranks every test item last).
  """
  scores = np.asarray(scores, np.float64)
  s0 = scores[:, :1]
  rank = (np.sum(scores[:, 1:] >= s0, axis=1)).astype(np.float64)
  out = {}
  for k in ks:
    hit = rank < k
    out[f"hr@{k}"] = hit.astype(np.float64)
    out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank + 2), 0.0)
  return out


class SampledEvaluator:
  """Ranks each target pair's item among sampled unknown items (fixed once)."""

  def __init__(self, model, known_pairs, target_pairs, ks=(10,), n_neg=100,
               seed=0, batch_users=512):
    self.model, self.ks = model, tuple(ks)
    self.users_all, self.candidates = sample_candidates(
        known_pairs, target_pairs, model.n_items, n_neg, seed)
    self.users = np.unique(self.users_all)
    self.batch_users = int(batch_users)
    # The latest call's {"users": [P] the pairs' users, metric@k: [P]}, or None.
    self.per_user = None
    self._score = tf.function(
        lambda users, items: model.score_pairs(users, items),
        input_signature=[tf.TensorSpec([None], tf.int32),
                         tf.TensorSpec([None, None], tf.int32)])

  @property
  def n_users(self):
    return len(self.users)

  def scores(self) -> np.ndarray:
    out = []
    for start in range(0, len(self.users_all), self.batch_users):
      users = self.users_all[start:start + self.batch_users].astype(np.int32)
      items = self.candidates[start:start + self.batch_users].astype(np.int32)
      out.append(self._score(tf.constant(users), tf.constant(items)).numpy())
    return np.concatenate(out) if out else np.zeros((0, self.candidates.shape[1]))

  def __call__(self, progress=False) -> Dict[str, float]:
    """The metrics averaged over the target pairs; the latest call's values
    per pair (one a user under leave-one-out) are kept in `per_user`."""
    del progress  # one pass takes a second or two
    per_row = sampled_per_row(self.scores(), self.ks)
    self.per_user = dict(per_row, users=self.users_all)
    return _average(per_row)
