"""What the folder formats share: the folder check, the tab-separated
dialect, optional rating/timestamp columns, the `.inter` header kinds and the
Dataset with the format's own modalities plus any feature files."""

from __future__ import annotations

import os
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maml_tf.data import feature_files
from maml_tf.data import tables
from maml_tf.data.dataset import Dataset, make_dataset
from maml_tf.data.modalities import (check_feature_paths, default_order,
                                     resolve_modalities)
from maml_tf.errors import DataError, UsageError

TSV = dict(sep="\t", quoting=3)  # csv.QUOTE_NONE, as RecBole and MMRec read
NO_TEST = ("no test split: all {n:,} interactions are train; under "
           "--protocol=release give a split ({files}) or use --protocol=split "
           "(a per-user 8:1:1 split) or --protocol=loo (each user's latest "
           "interaction by time, from the timestamp column)")


def check_dir(data_dir: str) -> str:
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: data folder not found")
  return data_dir


def ratings_and_times(cols, found):
  """The optional `rating` and `timestamp` columns (None when absent), their
  first bad cells appended to `found` as (row, column, rule)."""
  ratings = times = None
  if "rating" in cols:
    ratings, bad = tables.float_column(cols["rating"])
    found.append((bad, "rating", "must be a finite number"))
  if "timestamp" in cols:
    stamps, bad = tables.float_column(cols["timestamp"])
    found.append((bad, "timestamp", "must be a finite number (unix seconds)"))
    times = None if stamps is None else np.round(stamps).astype(np.int64)
  return ratings, times


def inter_kind(path: str) -> Optional[str]:
  try:
    header, _ = tables.read_header(path, **TSV)
  except DataError:
    return None
  if any(":" in h for h in header):
    return "recbole"
  if "x_label" in header:
    return "mmrec"
  return None


def with_features(name: str, inter,
                  builtin: Mapping[str, Tuple[np.ndarray, str]],
                  feature_paths: Optional[Mapping[str, str]],
                  modalities: Optional[Sequence[str]],
                  item_keys: Optional[np.ndarray],
                  notes: List[str]) -> Dataset:
  """The Dataset, with the format's own modalities and any feature files
  (a file replaces a built-in modality of the same name)."""
  paths = check_feature_paths(feature_paths or {})
  available = list(builtin) + [p for p in paths if p not in builtin]
  mods = resolve_modalities(modalities, default_order(available))
  for m in mods:
    if m not in paths and m not in builtin:
      raise UsageError(
          f"modality `{m}` is neither in the data ({', '.join(builtin) or 'none'}"
          f") nor given a feature file (given for: {', '.join(paths) or 'none'})")
  keys = None if item_keys is None else [str(k) for k in item_keys]
  feats, sources = {}, {}
  for m in mods:
    if m in paths:
      feats[m], sources[m] = feature_files.load_modality_file_described(
          m, paths[m], inter.n_items, keys)
    else:
      feats[m] = feature_files.check_feature_matrix(builtin[m][0], m,
                                                    n_rows=inter.n_items)
      sources[m] = builtin[m][1]
  inter.notes = tuple(inter.notes) + tuple(notes)
  return make_dataset(name, inter, feats, sources, None)
