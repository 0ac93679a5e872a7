"""Top-k ranking metrics of one ranked list per user (docs/spec.md §5).

Recall = hits / |target_u|, Precision = hits / k, HR = [hits > 0], NDCG =
DCG / IDCG with binary gains (DCG over the 0-based hit positions after the
known items are dropped, 1 / log2(pos + 2); IDCG over the first
min(|target_u|, k) positions); averaged over users, kept as fractions.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf



METRICS = ("ndcg", "recall", "hr", "precision")


def group_by_user(pairs, n_users):
  """CSR of (user, item) pairs: (indptr [n_users + 1], items sorted by user)."""
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  order = np.lexsort((pairs[:, 1], pairs[:, 0]))
  indptr = np.zeros(n_users + 1, np.int64)
  np.cumsum(np.bincount(pairs[:, 0], minlength=n_users), out=indptr[1:])
  return indptr, pairs[order, 1]


def ranking_metrics(topk_items, test_items, ks=(10,)) -> Dict[str, float]:
  """Average NDCG, Recall, HR and Precision at each k over the given users.

  Args:
    topk_items: int [U, kmax] ranked item ids per user, best first; -1 marks
      an empty slot (fewer candidates than kmax).
    test_items: U arrays of the users' target items (each non-empty).
    ks: cutoffs, each <= kmax.
  """
  return mean_metrics(per_user_metrics(topk_items, test_items, ks))


def mean_metrics(per_user: Dict[str, np.ndarray]) -> Dict[str, float]:
  """{metric@k: mean over users} of `per_user_metrics`' arrays."""
  return {name: float(np.mean(values)) for name, values in per_user.items()}


class Targets:
  """Every user's target items, indexed once for `per_user_metrics` (an
  evaluator scores the same targets every round; indexing them is a Python
  loop over the users that took as long as the metrics themselves).

  Attributes:
    sizes: int64 [U] targets per user.
    keys: int64 sorted `user position x stride + item` of every target.
    stride: larger than every item id + 1 (so -1, no item, matches nothing).
  """

  def __init__(self, test_items, n_items=None):
    self.sizes = np.array([len(t) for t in test_items], np.int64)
    if (self.sizes == 0).any():
      raise ValueError("every user in `test_items` needs at least one item")
    top = max((int(t.max()) for t in test_items if len(t)), default=0)
    if n_items is not None:
      top = max(top, n_items - 1)
    self.stride = top + 2
    rows = np.repeat(np.arange(len(self.sizes)), self.sizes)
    self.keys = np.sort(rows * self.stride + (
        np.concatenate(test_items).astype(np.int64) if len(rows) else rows))

  def __len__(self):
    return len(self.sizes)


def per_user_metrics(topk_items, test_items, ks=(10,)) -> Dict[str, np.ndarray]:
  """`ranking_metrics` before the average: {metric@k: float64 [U]}, one value
  per user in the order of `test_items` (arguments as `ranking_metrics`;
  `test_items` may be their `Targets`)."""
  topk_items = np.asarray(topk_items, np.int64)
  top = int(topk_items.max(initial=0))
  if isinstance(test_items, Targets):
    targets = test_items
    if top > targets.stride - 2:
      raise ValueError(f"`topk_items` holds item {top}, past the `Targets`' "
                       f"items (stride {targets.stride})")
  else:
    targets = Targets(test_items, top + 1)
  sizes = targets.sizes
  if len(sizes) != len(topk_items):
    raise ValueError(f"`test_items` has {len(sizes)} users, `topk_items` "
                     f"{len(topk_items)}")
  if max(ks) > topk_items.shape[1]:
    raise ValueError(f"`ks` must be <= {topk_items.shape[1]}. Received: {ks}")
  return hit_metrics(hits(topk_items, targets), sizes, ks)


def hits(topk_items, targets: Targets, first: int = 0) -> np.ndarray:
  """bool [U, kmax]: whether each ranked item of `topk_items` [U, kmax]
  (-1: none) is a target of its user, row r being user `first + r` of
  `targets`."""
  keys = targets.keys
  rows = first + np.arange(len(topk_items))
  probe = rows[:, None] * targets.stride + topk_items
  found = np.searchsorted(keys, probe)
  return (keys[np.minimum(found, len(keys) - 1)] == probe) & (topk_items >= 0)


def hit_metrics(hits, sizes, ks=(10,)) -> Dict[str, np.ndarray]:
  """{metric@k: float64 [U]} of each user's hits (bool [U, >= max(ks)], the
  0-based positions of the ranked list that hold a target) and number of
  targets (`sizes` [U])."""
  hits = np.asarray(hits, bool)
  sizes = np.asarray(sizes)
  out = {}
  for k in ks:
    h = hits[:, :k]
    n_hits = h.sum(1)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    idcg = np.cumsum(discount)[np.minimum(sizes, k) - 1]
    out[f"ndcg@{k}"] = (h * discount).sum(1) / idcg
    out[f"recall@{k}"] = n_hits / sizes
    out[f"hr@{k}"] = (n_hits > 0).astype(np.float64)
    out[f"precision@{k}"] = n_hits / k
  return out


def top_k_excluding(scores, exclude, k):
  """Best-first item ids per row of `scores`, never an excluded item.

  Rows with fewer than k candidates are padded with -1.
  """
  scores = np.array(scores, np.float32)
  rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
  if len(rows):
    scores[rows, np.concatenate(exclude).astype(np.int64)] = -np.inf
  values, idx = tf.math.top_k(scores, k=min(k, scores.shape[1]))
  idx = np.where(np.isneginf(values.numpy()), -1, idx.numpy())
  if idx.shape[1] < k:
    idx = np.pad(idx, [(0, 0), (0, k - idx.shape[1])], constant_values=-1)
  return idx
