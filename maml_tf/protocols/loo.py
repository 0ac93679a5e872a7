"""The NCF-style leave-one-out protocol (`--protocol=loo`), as LRML's paper
evaluated: each user's last interaction by time is the test item, ranked
among `n_neg` (100) items the user never interacted with, sampled uniformly
and seeded; HR@k and nDCG@k averaged over test users. With
--validation_fraction > 0 a share of the remaining train items is held out
as validation (ranked the same way) and selects the best round.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maml_tf.data import splits as splits_lib
from maml_tf.data.dataset import Dataset
from maml_tf.errors import DataError
from maml_tf.evaluate.sampled import SampledEvaluator


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


def prepare(config, ds):
  """(leave_one_out(ds), then the --validation_fraction hold-out; info)."""
  out = splits_lib.split_validation(leave_one_out(ds), config.validation_fraction,
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
