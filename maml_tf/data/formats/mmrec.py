"""MMRec dataset folders (`--data_format=mmrec`).

`<name>.inter`, tab-separated, columns `userID`, `itemID`, `x_label` (0
train, 1 validation, 2 test), optional `rating`, `timestamp`; ids are
integers (index = the integer), and `image_feat.npy` / `text_feat.npy`,
[n_items, d] matrices with row i = item i, become the modalities `image` and
`text`.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from maml_tf.data import feature_files
from maml_tf.data import tables
from maml_tf.data.dataset import Dataset
from maml_tf.data.formats import common
from maml_tf.data.interactions import Rows, finish_interactions
from maml_tf.errors import DataError

MMREC_FEATURES = (("image", "image_feat.npy"), ("text", "text_feat.npy"))
# Where this format keeps interaction times (`--protocol=loo` names it when
# they are missing).
TIMES = "a `timestamp` column (unix seconds) in the MMRec <name>.inter"


def detect(data_dir: str, names: Sequence[str]) -> List[str]:
  """The `.inter` files of `names` with an `x_label` column."""
  return [f for f in names if f.endswith(".inter") and
          common.inter_kind(os.path.join(data_dir, f)) == "mmrec"]


def load_mmrec(data_dir: str, *, feature_paths: Mapping[str, str] = None,
               modalities: Optional[Sequence[str]] = None,
               min_rating: Optional[float] = None,
               kcore: int = 0) -> Dataset:
  """An MMRec dataset folder (see the module docstring)."""
  data_dir = common.check_dir(data_dir)
  inters = [f for f in sorted(os.listdir(data_dir)) if f.endswith(".inter")
            and common.inter_kind(os.path.join(data_dir, f)) == "mmrec"]
  if not inters:
    raise DataError(f"{data_dir}: no MMRec `<name>.inter` file (a "
                    f"tab-separated table with userID, itemID, x_label)")
  if len(inters) > 1:
    raise DataError(f"{data_dir}: several MMRec .inter files "
                    f"({', '.join(inters)}); keep one per folder")
  path = os.path.join(data_dir, inters[0])
  name = inters[0][:-len(".inter")]
  splits = read_mmrec_inter(path)
  mats = {}
  for modality, fname in MMREC_FEATURES:
    fpath = os.path.join(data_dir, fname)
    if os.path.exists(fpath):
      mats[modality] = (fpath, feature_files.load_npy(
          fpath, f"{fpath} (modality `{modality}`)"))
  rows = [m.shape[0] for _, m in mats.values()
          if isinstance(m, np.ndarray) and m.ndim == 2]
  inter = finish_interactions(
      splits, min_rating=min_rating, kcore=kcore,
      n_items=max(rows, default=0) or None)
  builtin = {}
  for modality, (fpath, payload) in mats.items():
    matrix = feature_files.load_npy_matrix(fpath, inter.n_items, modality,
                                           payload=payload)
    builtin[modality] = (matrix, f"{modality}: {fpath} ([{inter.n_items} x "
                                 f"{matrix.shape[1]}] matrix, row i = item i)")
  notes = []
  if len(inter.test) == 0:
    notes.append(common.NO_TEST.format(n=len(inter.train),
                                       files="rows with x_label 2"))
  return common.with_features(name, inter, builtin, feature_paths,
                              modalities, None, notes)


def read_mmrec_inter(path: str) -> Dict[str, Rows]:
  """MMRec's `.inter`: {"train", "valid", "test": Rows} by x_label."""
  path = tables.check_file(path, "MMRec .inter file")
  header, line = tables.read_header(path, **common.TSV)
  if not header:
    raise DataError(f"{path}: is empty, expected a header line "
                    f"`userID<TAB>itemID<TAB>x_label`")
  tables.check_header(path, header, line, ("userID", "itemID", "x_label"))
  wanted = [c for c in ("userID", "itemID", "x_label", "rating", "timestamp")
            if c in header]
  table = tables.read_table(path, header, line, wanted,
                            int_columns=("userID", "itemID", "x_label"), **common.TSV)
  cols = table.columns
  users, bad_u = tables.table_ids(table, "userID")
  items, bad_i = tables.table_ids(table, "itemID")
  labels, bad_l = tables.table_ids(table, "x_label")
  if labels is not None and (labels > 2).any():
    bad_l = int(np.argmax(labels > 2))
  found = [(bad_u, "userID", tables.id_rule), (bad_i, "itemID", tables.id_rule),
           (bad_l, "x_label", "must be 0 (train), 1 (validation) or 2 (test)")]
  ratings, times = common.ratings_and_times(cols, found)
  tables.first_error(table, found)
  out = {}
  for label, split in enumerate(("train", "valid", "test")):
    keep = labels == label
    if split == "valid" and not keep.any():
      continue
    out[split] = Rows(
        path, users[keep], items[keep], table.lines[keep], None,
        None if times is None else times[keep],
        None if ratings is None else ratings[keep])
  return out
