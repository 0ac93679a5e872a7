"""scipy sparse matrices (`--data_format=npz`).

`train.npz`, `test.npz`, optional `valid.npz`, each a scipy sparse users x
items matrix (`scipy.sparse.save_npz`); a stored nonzero is an interaction
and its value the rating (`--min_rating`); shapes must agree.
"""

from __future__ import annotations

import os
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maml_tf.data import tables
from maml_tf.data.dataset import Dataset
from maml_tf.data.formats import common
from maml_tf.data.interactions import SPLITS, Rows, finish_interactions
from maml_tf.errors import DataError

# A users x items matrix holds no interaction times: `--protocol=loo` cannot
# run on this format.
TIMES = None


def detect(data_dir: str, names: Sequence[str]) -> List[str]:
  """`train.npz`, when `names` (the folder's listing) has it."""
  del data_dir  # the file name says it
  return ["train.npz"] if "train.npz" in names else []


def load_npz(data_dir: str, *, feature_paths: Mapping[str, str] = None,
             modalities: Optional[Sequence[str]] = None,
             min_rating: Optional[float] = None,
             kcore: int = 0) -> Dataset:
  """train.npz, test.npz and optional valid.npz (users x items)."""
  data_dir = common.check_dir(data_dir)
  splits, shape, first = {}, None, None
  for s in SPLITS:
    path = os.path.join(data_dir, f"{s}.npz")
    if s == "valid" and not os.path.exists(path):
      continue
    rows, this = read_npz(path)
    if shape is not None and this != shape:
      raise DataError(f"{path}: shape {this} differs from {first}'s {shape};"
                      f" every split must be the same users x items matrix")
    shape, first = this, path
    splits[s] = rows
  inter = finish_interactions(
      splits, min_rating=min_rating, kcore=kcore, n_users=shape[0],
      n_items=shape[1])
  return common.with_features(os.path.basename(os.path.normpath(data_dir)),
                              inter, {}, feature_paths, modalities, None, [])


def read_npz(path: str) -> Tuple[Rows, Tuple[int, int]]:
  """One split: (Rows of its stored nonzeros, values as ratings; shape)."""
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  path = tables.check_file(path, ".npz file")
  try:
    matrix = scipy.sparse.load_npz(path)
  except Exception as e:  # pylint: disable=broad-except
    # np.load / zipfile raise many types on a foreign or corrupt file.
    raise DataError(f"{path}: not a scipy.sparse.save_npz file "
                    f"({type(e).__name__}: {' '.join(str(e).split())[:150]})"
                    ) from e
  if matrix.ndim != 2:
    raise DataError(f"{path}: must be a 2-D users x items matrix. Received "
                    f"shape {matrix.shape}")
  coo = matrix.tocoo()
  values = np.asarray(coo.data)
  if values.dtype.kind not in "biuf":
    raise DataError(f"{path}: values must be numbers. Received dtype "
                    f"{values.dtype}")
  values = values.astype(np.float64)
  if not np.isfinite(values).all():
    k = int(np.argmax(~np.isfinite(values)))
    raise DataError(f"{path}: entry (user {int(coo.row[k])}, item "
                    f"{int(coo.col[k])}) must be finite. Received: "
                    f"{values[k]!r}")
  nonzero = values != 0
  order = np.lexsort((coo.col[nonzero], coo.row[nonzero]))
  users = coo.row[nonzero].astype(np.int64)[order]
  items = coo.col[nonzero].astype(np.int64)[order]
  rows = Rows(path, users, items, np.arange(len(users)), None, None,
              values[nonzero][order])
  return rows, (int(matrix.shape[0]), int(matrix.shape[1]))
