"""A `Dataset` from plain numpy arrays (`from_arrays`)."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from maml_tf.data import tables
from maml_tf.data.dataset import Dataset, make_dataset
from maml_tf.data.feature_files import check_feature_matrix
from maml_tf.data.interactions import Interactions, merge_duplicates
from maml_tf.data.modalities import MODALITY_NAME
from maml_tf.errors import DataError, UsageError

MAX_ID = tables.MAX_ID


def from_arrays(train: np.ndarray,
                test: Optional[np.ndarray],
                *,
                features: Optional[Mapping[str, np.ndarray]] = None,
                n_users: Optional[int] = None,
                n_items: Optional[int] = None,
                name: str = "arrays",
                valid: Optional[np.ndarray] = None) -> Dataset:
  """A Dataset from (user, item) arrays and optional feature matrices.

  Args:
    train: integer [n, 2] (user, item) pairs; duplicates are merged.
    test: integer [m, 2] pairs, or None for none.
    features: modality name -> [n_items, d] numeric matrix.
    n_users: defaults to 1 + the largest user id.
    n_items: defaults to the feature rows if features are given, else 1 +
      the largest item id.
    name: the Dataset's name.
    valid: integer [v, 2] validation pairs, or None for none.

  Raises:
    DataError: a shape, dtype, id or value breaks a rule.
  """
  train = _check_pairs(train, "train")
  test = (np.zeros((0, 2), np.int64) if test is None
          else _check_pairs(test, "test"))
  if len(train) == 0:
    raise DataError("`train` has no interactions")
  valid = (np.zeros((0, 2), np.int64) if valid is None
           else _check_pairs(valid, "valid"))
  train, _ = merge_duplicates(train, "`train`")
  both = np.concatenate([train, test, valid])
  feats = {}
  for m, mat in dict(features or {}).items():
    if not isinstance(m, str) or not MODALITY_NAME.match(m):
      raise UsageError(f"modality names must match [a-z][a-z0-9_]*. "
                       f"Received: {m!r}")
    feats[m] = check_feature_matrix(mat, f"features[{m!r}]")
  if n_items is None:
    n_items = (next(iter(feats.values())).shape[0] if feats
               else int(both[:, 1].max()) + 1)
  if n_users is None:
    n_users = int(both[:, 0].max()) + 1
  sources = {m: f"{m}: user-supplied array, {v.shape[1]}-d"
             for m, v in feats.items()}
  inter = Interactions(train, test, None, None, _as_count(n_users, "n_users"),
                       _as_count(n_items, "n_items"), None, valid=valid)
  return make_dataset(name, inter, feats, sources, None)


def _check_pairs(pairs, what: str) -> np.ndarray:
  arr = np.asarray(pairs)
  if arr.size == 0:
    return np.zeros((0, 2), np.int64)
  if arr.ndim != 2 or arr.shape[1] != 2:
    raise DataError(f"`{what}` must have shape [n, 2] (user, item). "
                    f"Received shape {arr.shape}")
  if arr.dtype.kind not in "iu":
    raise DataError(f"`{what}` must be an integer array. Received dtype "
                    f"{arr.dtype}")
  if (arr < 0).any():
    r, c = (int(v) for v in np.argwhere(arr < 0)[0])
    raise DataError(f"`{what}` row {r}: {('user', 'item')[c]} id must be "
                    f"non-negative. Received: {arr[r, c]}")
  if (arr > MAX_ID).any():
    r, c = (int(v) for v in np.argwhere(arr > MAX_ID)[0])
    raise DataError(f"`{what}` row {r}: {('user', 'item')[c]} id must be <= "
                    f"{MAX_ID}. Received: {arr[r, c]}")
  return arr.astype(np.int64)


def _as_count(value, what: str) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
      value <= 0):
    raise DataError(f"`{what}` must be a positive integer. Received: "
                    f"{value!r}")
  return int(value)
