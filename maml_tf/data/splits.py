"""A validation split held out of the train pairs."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from maml_tf.data.dataset import Dataset
from maml_tf.errors import UsageError

logger = logging.getLogger("maml_tf")


def split_validation(ds: Dataset, fraction: float, seed: int) -> Dataset:
  """Holds out a random share of each user's train items as `valid`.

  User u with n_u >= 2 train items gives floor(fraction * n_u + U_u) of them
  to `valid`, U_u ~ Uniform[0, 1) (stochastic rounding: the expected share is
  exactly `fraction`), capped at n_u - 1 so every user keeps a train item.
  Deterministic for a seed. `train_time` follows the kept rows; the held-out
  rows' times are dropped (the Dataset has no valid_time).

  Args:
    ds: a Dataset without a validation split.
    fraction: 0 <= fraction < 1; 0 returns `ds` unchanged.
    seed: seeds numpy's default_rng.

  Returns:
    A new Dataset with train and valid disjoint, their union the old train.

  Raises:
    UsageError: fraction out of range, or `ds` already has a valid split.
  """
  if (isinstance(fraction, bool) or
      not isinstance(fraction, (int, float, np.floating, np.integer)) or
      not 0 <= fraction < 1 or math.isnan(fraction)):
    raise UsageError(f"`fraction` must be in [0, 1). Received: {fraction!r}")
  if fraction == 0:
    return ds
  if len(ds.valid):
    raise UsageError(f"{ds.name}: already has {len(ds.valid)} validation "
                     f"pairs; split_validation applies once")
  rng = np.random.default_rng(seed)
  users = ds.train[:, 0]
  n_u = np.bincount(users, minlength=ds.n_users)
  k_u = np.floor(fraction * n_u + rng.random(ds.n_users)).astype(np.int64)
  k_u = np.clip(k_u, 0, np.maximum(n_u - 1, 0))
  # Rank each row inside its user's group by a random key: the rows ranked
  # below k_u are held out, i.e. a uniform random subset of size k_u.
  order = np.lexsort((rng.random(len(users)), users))
  starts = np.concatenate([[0], np.cumsum(n_u)[:-1]])
  rank = np.empty(len(users), np.int64)
  rank[order] = np.arange(len(users)) - starts[users[order]]
  held = rank < k_u[users]
  train_time = None if ds.train_time is None else ds.train_time[~held]
  out = dataclasses.replace(ds, train=ds.train[~held], valid=ds.train[held],
                            train_time=train_time)
  logger.info("%s: held out %d of %d train pairs as validation (fraction %g)",
              ds.name, int(held.sum()), len(users), fraction)
  return out
