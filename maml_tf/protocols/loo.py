"""The NCF-style leave-one-out protocol (`--protocol=loo`), as LRML's paper
evaluated: each user's last interaction by time is the test item, ranked
among `n_neg` (100) items the user never interacted with, sampled uniformly
and seeded; HR@k and nDCG@k averaged over test users. With
--validation_fraction > 0 a share of the remaining train items is held out
as validation (ranked the same way) and selects the best round; a
validation split the data gives (valid.csv, <name>.valid.inter, MMRec
x_label 1) is kept as it is instead.

Times come from the data's own column: release `unixReviewTime`, RecBole
`timestamp:float` (one `.inter` file or the benchmark files), MMRec
`timestamp`; the npz format has none. When they are missing the error names
the column of the run's format (`maml_tf.data.formats.times_source`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from maml_tf.data import formats as formats_lib
from maml_tf.data import splits as splits_lib
from maml_tf.data.dataset import Dataset
from maml_tf.errors import DataError, MamlError
from maml_tf.evaluate.sampled import SampledEvaluator


def leave_one_out(ds: Dataset, data_format: Optional[str] = None) -> Dataset:
  """Pools train and test; each user's latest interaction becomes the test.

  Duplicate (user, item) pairs keep their latest time. Ties in time go to
  the pair that comes last in the pooled order (train rows, then test rows).
  Users with a single interaction keep it in train (nothing to test them on).
  A validation split the data gives (`ds.valid`) is kept as it is.

  Args:
    ds: the loaded Dataset, with train_time and test_time.
    data_format: the format the data was read in (a key of
      `maml_tf.data.formats.FORMATS`), for the message when times are
      missing; None: the Dataset was built otherwise (e.g. from arrays).

  Raises:
    DataError: the dataset has no interaction times.
  """
  if ds.train_time is None or ds.test_time is None:
    raise DataError(_no_times(ds, data_format))
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
      train_time=times[~test], test_time=times[test])


def _no_times(ds: Dataset, data_format: Optional[str]) -> str:
  """The one-line message of a dataset without interaction times."""
  if data_format is not None and formats_lib.times_source(data_format) is None:
    return (f"`--protocol=loo` needs interaction times and --data_format="
            f"{data_format} has none (its files hold no times); use "
            f"--protocol=split or release, or data in a format with times "
            f"(release, recbole, mmrec). Received: --protocol=loo")
  where = (formats_lib.times_source(data_format) if data_format is not None
           else "Dataset.train_time and test_time, unix seconds, one per pair")
  lacking = " and ".join(s for s, t in (("train", ds.train_time),
                                         ("test", ds.test_time)) if t is None)
  return (f"`--protocol=loo` needs interaction times: {where}; dataset "
          f"{ds.name!r} has none for its {lacking} pairs. Received: "
          f"--protocol=loo")


def format_of(config) -> Optional[str]:
  """The format of the run's data folder (None for the built-in Office,
  which has times, or when it cannot be told)."""
  if config.dataset != "custom" or not config.data_dir:
    return None
  try:
    return formats_lib.resolve_format(config.data_dir, config.data_format)
  except MamlError:
    return None


def prepare(config, ds):
  """(leave_one_out(ds), then the --validation_fraction hold-out; info)."""
  fmt = None
  if ds.train_time is None or ds.test_time is None:
    fmt = format_of(config)  # only for the message
  out = splits_lib.split_validation(leave_one_out(ds, fmt),
                                    config.validation_fraction, config.seed)
  how = "each user's latest interaction by time is the test"
  if len(ds.valid):
    how += (f"; validation: the data's own split ({len(ds.valid)} pairs), "
            f"kept as given")
  elif config.validation_fraction:
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
