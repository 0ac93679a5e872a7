"""The MAML release's layout: `train.csv`, `test.csv`, optional `valid.csv`.

Header `itemID,userID,reviewerID,asin` (extra columns such as
`unixReviewTime` are fine), plus one user-supplied file per item modality
(see `maml_tf.data.features.load_modality_file`).

Ids. `userID`/`itemID` are non-negative integers and index = the integer, as
in the release. A file without those two columns but with `reviewerID` and
`asin` is read by raw id instead: any strings, mapped to 0..n-1 in order of
first appearance (train, then valid, then test). Either way the Dataset
keeps the raw ids (`user_ids`, `item_ids`, see `maml_tf.data.vocab`).

Where we depart from the release on purpose: n_users / n_items are 1 + the
largest id over train, valid AND test, and every feature matrix has a row
for every id in 0..n_items-1 (the release built them from train only and
crashed on test-only items). Duplicate (user, item) pairs are merged, with a
warning.
"""

from __future__ import annotations

import logging
import os
import types
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maml_tf.data import tables
from maml_tf.data.dataset import Dataset, make_dataset
from maml_tf.data.feature_files import load_modality_file_described
from maml_tf.data.interactions import (RATING_COLUMNS, SPLITS, Interactions,
                                       Rows, finish_interactions, first_true)
from maml_tf.data.modalities import (check_feature_paths, default_order,
                                     resolve_modalities)
from maml_tf.errors import DataError, UsageError

logger = logging.getLogger("maml_tf")

REQUIRED_COLUMNS = ("itemID", "userID")
RAW_ID_COLUMNS = ("reviewerID", "asin")
_NO_PATHS: Mapping[str, str] = types.MappingProxyType({})
_TIME_RULE = "must be an integer (unix seconds)"
_RATING_RULE = "must be a finite number"
# Where this format keeps interaction times (`--protocol=loo` names it when
# they are missing).
TIMES = ("a `unixReviewTime` column (unix seconds) in train.csv and test.csv"
         " (and valid.csv when given)")


def detect(data_dir: str, names: Sequence[str]) -> List[str]:
  """The files of `names` (the folder's listing) that are this format's."""
  del data_dir  # the file name says it
  return ["train.csv"] if "train.csv" in names else []


def read_interactions(
    path: str
) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
  """Reads one interactions CSV in the release's layout (integer ids).

  The header must name `itemID` and `userID`; `asin` and `unixReviewTime`
  are read when present, any other column is ignored. Blank lines, CRLF line
  ends and a UTF-8 byte-order mark are accepted.

  Args:
    path: the CSV file.

  Returns:
    (pairs, asins, times): pairs is int64 [n, 2] of (user, item) in file
    order; asins an object array of n strings (None for an empty cell) or
    None without an `asin` column; times int64 [n] from `unixReviewTime`, or
    None without that column.

  Raises:
    DataError: one line naming the file, the line (header = line 1), the
      column, the rule and the offending value.
  """
  rows = read_release_rows(path, allow_raw=False)
  return np.stack([rows.users, rows.items], 1), rows.asins, rows.times


def read_release_rows(path: str, allow_raw: bool = True,
                      ratings: bool = False) -> Rows:
  """`read_interactions`, also reading, with `ratings`, a rating column
  (`rating` or `overall`; otherwise such a column is ignored, as always)
  and, with `allow_raw`, files keyed by `reviewerID`/`asin`."""
  path = tables.check_file(path, "CSV file")
  header, header_line = tables.read_header(path)
  if not header:
    raise DataError(f"{path}: is empty, expected a header line "
                    f"`itemID,userID,reviewerID,asin`")
  raw = (allow_raw and not set(REQUIRED_COLUMNS) & set(header) and
         set(RAW_ID_COLUMNS) <= set(header))
  tables.check_header(path, header, header_line,
                      RAW_ID_COLUMNS if raw else REQUIRED_COLUMNS)
  user_col, item_col = ("reviewerID", "asin") if raw else ("userID", "itemID")
  rating_col = ratings and next((c for c in RATING_COLUMNS if c in header),
                                None)
  wanted = [c for c in (item_col, user_col, "asin", "unixReviewTime",
                        rating_col) if c and c in header]
  ints = [] if raw else [item_col, user_col]
  if "unixReviewTime" in wanted:
    ints.append("unixReviewTime")
  table = tables.read_table(path, header, header_line, wanted,
                            int_columns=ints)
  found = []
  if raw:
    users, items = (tables.stripped(table, c) for c in (user_col, item_col))
    found += [(first_true(items == ""), item_col, "must not be empty"),
              (first_true(users == ""), user_col, "must not be empty")]
  else:
    items, bad_i = tables.table_ids(table, item_col)
    users, bad_u = tables.table_ids(table, user_col)
    found += [(bad_i, item_col, tables.id_rule),
              (bad_u, user_col, tables.id_rule)]
  times = rating_values = None
  if "unixReviewTime" in wanted:
    times, bad = tables.table_times(table, "unixReviewTime")
    found.append((bad, "unixReviewTime", _TIME_RULE))
  if rating_col:
    rating_values, bad = tables.float_column(table.cells(rating_col))
    found.append((bad, rating_col, _RATING_RULE))
  tables.first_error(table, found)
  asins = None
  if "asin" in wanted:
    asins = tables.stripped(table, "asin")
    if not asins.all():  # '' -> None
      asins = asins.copy()
      asins[asins == ""] = None
  return Rows(path, users, items, table.lines, asins, times, rating_values,
              raw)


def read_split(data_dir: str, min_rating: Optional[float] = None,
               kcore: int = 0) -> Interactions:
  """Reads train.csv, test.csv (and valid.csv) of `data_dir`."""
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: data folder not found")
  splits = {}
  for s in SPLITS:
    path = os.path.join(data_dir, f"{s}.csv")
    if s == "valid" and not os.path.exists(path):
      continue
    splits[s] = read_release_rows(path, ratings=min_rating is not None)
  if len(splits["test"].lines) == 0:
    logger.warning("%s: has no interactions; nothing to evaluate on",
                   splits["test"].path)
  return finish_interactions(splits, min_rating=min_rating, kcore=kcore)


def load_release_layout(data_dir: str,
                        *,
                        feature_paths: Mapping[str, str] = _NO_PATHS,
                        modalities: Optional[Sequence[str]] = None,
                        name: str = "custom",
                        min_rating: Optional[float] = None,
                        kcore: int = 0) -> Dataset:
  """Loads `<data_dir>/train.csv`, `test.csv`, optional `valid.csv` and the
  given feature files.

  Args:
    data_dir: folder with train.csv and test.csv (release layout), and
      optionally valid.csv (then the Dataset's validation split).
    feature_paths: modality name -> file (Doc2Vec model, .npy dict of
      asin -> vector, or .npy [n_items, d] matrix).
    modalities: which feature files to use, in order. None: all given paths,
      ordered text, image, then the rest as given. Empty: no features (CML).
    name: the Dataset's name.
    min_rating: keep rows rated at least this (needs a `rating` or
      `overall` column); None keeps all.
    kcore: iterated k-core filter on users and items (0: off).

  Returns:
    The Dataset (validation split only from valid.csv; see
    `split_validation`).

  Raises:
    DataError: a file breaks a rule. UsageError: a modality has no path.
  """
  paths = check_feature_paths(feature_paths)
  mods = resolve_modalities(modalities, default_order(list(paths)))
  for m in mods:
    if m not in paths:
      raise UsageError(
          f"modality `{m}` has no feature file; feature files given for: "
          f"{', '.join(paths) or 'none'}")
  inter = read_split(data_dir, min_rating, kcore)
  feats, sources = {}, {}
  for m in mods:
    feats[m], sources[m] = load_modality_file_described(
        m, paths[m], inter.n_items, inter.item_asins)
  return make_dataset(name, inter, feats, sources, None)
