"""The NCF-style leave-one-out protocol (`--protocol=loo`), as LRML's paper
evaluated: each user's last interaction by time is the test item, ranked
among `n_neg` (100) items the user never interacted with, sampled uniformly
and seeded; HR@k and nDCG@k averaged over test users. With
--validation_fraction > 0 a share of the remaining train items is held out
as validation (ranked the same way) and selects the best round.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from maml_tf import data as data_lib
from maml_tf.dataset_types import Dataset
from maml_tf.errors import DataError


def leave_one_out(ds: Dataset) -> Dataset:
  """Pools train and test; each user's latest interaction becomes the test.

  Duplicate (user, item) pairs keep their latest time. Ties in time go to
  the pair that comes last in the pooled order (train rows, then test rows).
  Users with a single interaction keep it in train (nothing to test them on).

  Raises:
    DataError: the dataset has no interaction times.
  """
  if ds.train_time is None or ds.test_time is None:
    raise DataError(f"`--protocol=loo` needs interaction times (a "
                    f"`unixReviewTime` column in train.csv and test.csv); "
                    f"dataset {ds.name!r} has none")
  pairs = np.concatenate([ds.train, ds.test]).astype(np.int64)
  times = np.concatenate([ds.train_time, ds.test_time]).astype(np.int64)
  order = np.arange(len(pairs))
  # Sort by (user, item, time, order): the last row of each (user, item)
  # group is its latest occurrence.
  idx = np.lexsort((order, times, pairs[:, 1], pairs[:, 0]))
  pairs, times, order = pairs[idx], times[idx], order[idx]
  last = np.ones(len(pairs), bool)
  last[:-1] = np.any(pairs[1:] != pairs[:-1], axis=1)
  pairs, times, order = pairs[last], times[last], order[last]
  # Per user, the latest (time, then pooled order) interaction.
  idx = np.lexsort((order, times, pairs[:, 0]))
  pairs, times = pairs[idx], times[idx]
  is_last = np.ones(len(pairs), bool)
  is_last[:-1] = pairs[1:, 0] != pairs[:-1, 0]
  counts = np.bincount(pairs[:, 0], minlength=ds.n_users)
  test = is_last & (counts[pairs[:, 0]] >= 2)
  return dataclasses.replace(
      ds, name=f"{ds.name}-loo", train=pairs[~test], test=pairs[test],
      valid=np.zeros((0, 2), np.int64), train_time=times[~test],
      test_time=times[test])


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
  """HR@k and nDCG@k of column 0 among the candidates of each row.

  rank = #candidates scoring higher than column 0, plus the negatives that
  tie with it (pessimistic: a constant model ranks every test item last).
  """
  scores = np.asarray(scores, np.float64)
  s0 = scores[:, :1]
  rank = (np.sum(scores[:, 1:] >= s0, axis=1)).astype(np.float64)
  out = {}
  for k in ks:
    hit = rank < k
    out[f"hr@{k}"] = float(np.mean(hit)) if len(rank) else 0.0
    out[f"ndcg@{k}"] = (float(np.mean(np.where(hit, 1.0 / np.log2(rank + 2), 0.0)))
                        if len(rank) else 0.0)
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
    del progress  # one pass takes a second or two
    return sampled_metrics(self.scores(), self.ks)


def prepare(config, ds):
  """(leave_one_out(ds), then the --validation_fraction hold-out; info)."""
  out = data_lib.split_validation(leave_one_out(ds), config.validation_fraction,
                                  config.seed)
  how = "each user's latest interaction by time is the test"
  if config.validation_fraction:
    how += (f"; validation: a share {config.validation_fraction:g} of each "
            f"user's other items, seed {config.seed}")
  return out, {"name": "loo", "split": how,
               "negatives": config.loo_negatives,
               "sizes": {"train": int(len(out.train)),
                         "valid": int(len(out.valid)),
                         "test": int(len(out.test))}}


def build_evaluators(config, ds, model, jit_compile):
  """Each target ranked among --loo_negatives items the user never
  interacted with anywhere (train, validation or test)."""
  del jit_compile  # a pass takes a second or two
  every = np.concatenate([ds.train, ds.valid, ds.test])
  evaluators = {}
  for split, target in (("valid", ds.valid), ("test", ds.test)):
    if len(target):
      evaluators[split] = SampledEvaluator(
          model, every, target, config.topk, n_neg=config.loo_negatives,
          seed=config.seed + (1 if split == "valid" else 0))
  return evaluators
