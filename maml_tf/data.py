"""Interactions and item features -> one immutable `Dataset`.

Sources (SPEC section 1):

* `load_release_layout(data_dir)`: the MAML release's layout, `train.csv`,
  `test.csv` and optionally `valid.csv` (a validation split) with header
  `itemID,userID,reviewerID,asin` (extra columns such as `unixReviewTime`
  are fine), plus one user-supplied file per item modality (see
  `maml_tf.features.load_modality_file`).
* `load_office()`: the Amazon Office split embedded in
  `maml_tf/datasets/office/`, with two content modalities built here: "text"
  (Doc2Vec PV-DM on the product title/category/brand text, not reviews) and
  "meta" (one-hot category + brand). Office has no image features.
* `from_arrays(train, test, ...)`: plain numpy arrays.
* RecBole, MMRec and scipy-sparse folders: `maml_tf.formats`, through its
  `load_dataset(..., data_format=...)`.

Ids. In the release layout `userID`/`itemID` are non-negative integers and
index = the integer, as in the release. A file without those two columns
but with `reviewerID` and `asin` is read by raw id instead: any strings,
mapped to 0..n-1 in order of first appearance (train, then valid, then
test). Either way the Dataset keeps the raw ids (`user_ids`, `item_ids`, see
`maml_tf.vocab`).

Where we depart from the release on purpose: n_users / n_items are 1 + the
largest id over train, valid AND test, and every feature matrix has a row
for every id in 0..n_items-1 (the release built them from train only and
crashed on test-only items). Duplicate (user, item) pairs are merged, with a
warning.

Filters (`min_rating`, `kcore`) apply to the interactions of every split
before the Dataset is made; their counts are in `Dataset.notes`.
`split_validation` holds out part of each user's train items for model
selection (the release has no validation split).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import re
import types
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from maml_tf import features as features_lib
from maml_tf import tables
from maml_tf.dataset_types import Dataset
from maml_tf.errors import DataError, UsageError

logger = logging.getLogger("maml_tf")

MAX_ID = tables.MAX_ID
REQUIRED_COLUMNS = ("itemID", "userID")
RAW_ID_COLUMNS = ("reviewerID", "asin")
RATING_COLUMNS = ("rating", "overall")
SPLITS = ("train", "valid", "test")
OFFICE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "datasets", "office")
OFFICE_BUILTIN = ("text", "meta")
DATASETS = ("office", "custom")
_MODALITY_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_LABEL_CHARS = 60
_NO_PATHS: Mapping[str, str] = types.MappingProxyType({})
_TIME_RULE = "must be an integer (unix seconds)"
_RATING_RULE = "must be a finite number"


# ---------------------------------------------------------------------------
# reading interaction files


@dataclasses.dataclass
class Rows:
  """One interaction file's rows, in file order, before any merging.

  users / items are int64 indices when `raw` is False, else object arrays of
  raw id strings (mapped later, over all splits together).
  """
  path: str
  users: np.ndarray
  items: np.ndarray
  lines: np.ndarray
  asins: Optional[np.ndarray] = None
  times: Optional[np.ndarray] = None
  ratings: Optional[np.ndarray] = None
  raw: bool = False


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
    found += [(_first(items == ""), item_col, "must not be empty"),
              (_first(users == ""), user_col, "must not be empty")]
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


def _first(mask: np.ndarray) -> Optional[int]:
  return int(np.argmax(mask)) if len(mask) and mask.any() else None


# ---------------------------------------------------------------------------
# interactions of all splits -> indices, vocabularies, filters


@dataclasses.dataclass
class _Interactions:
  """The splits' pairs after mapping, filtering and merging."""
  train: np.ndarray
  test: np.ndarray
  train_time: Optional[np.ndarray]
  test_time: Optional[np.ndarray]
  n_users: int
  n_items: int
  item_asins: Optional[List[Optional[str]]]
  valid: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 2), np.int64))
  user_ids: Optional[np.ndarray] = None
  item_ids: Optional[np.ndarray] = None
  notes: Tuple[str, ...] = ()


def map_raw_ids(splits: Mapping[str, Rows], n_users: Optional[int] = None,
                n_items: Optional[int] = None):
  """Index columns for every split, and the vocabularies.

  Splits whose rows hold integer indices keep them (index = the integer,
  vocabulary None = identity); raw id strings are numbered 0..n-1 in order
  of first appearance over the splits in `SPLITS` order. Users and items
  are decided separately. All splits of one dataset must agree.

  Returns:
    ({split: (users int64, items int64)}, n_users, n_items, user_ids,
    item_ids).
  """
  names = [s for s in SPLITS if s in splits]
  kinds = {splits[s].raw for s in names}
  if len(kinds) > 1:
    paths = ", ".join(f"{splits[s].path} ({'raw' if splits[s].raw else 'integer'}"
                      f" ids)" for s in names)
    raise DataError(f"the splits must all use integer userID/itemID or all "
                    f"reviewerID/asin: {paths}")
  out = {s: [None, None] for s in names}
  vocabs, sizes = [], []
  for col, given in ((0, n_users), (1, n_items)):
    arrays = [(splits[s].users, splits[s].items)[col] for s in names]
    if kinds == {True}:
      codes, uniques = pd.factorize(np.concatenate(arrays), sort=False)
      uniques = np.asarray(uniques, dtype=object)
      start = 0
      for s, a in zip(names, arrays):
        out[s][col] = codes[start:start + len(a)].astype(np.int64)
        start += len(a)
      vocabs.append(uniques)
      sizes.append(len(uniques))
    else:
      for s, a in zip(names, arrays):
        out[s][col] = np.asarray(a, np.int64)
      top = max((int(a.max()) + 1 for a in arrays if len(a)), default=0)
      vocabs.append(None)
      sizes.append(max(top, given or 0))
  return ({s: tuple(v) for s, v in out.items()}, sizes[0], sizes[1],
          vocabs[0], vocabs[1])


def finish_interactions(
    splits: Mapping[str, Rows], *, min_rating: Optional[float] = None,
    kcore: int = 0, n_users: Optional[int] = None,
    n_items: Optional[int] = None, compact: Optional[bool] = None,
    asins: bool = True) -> _Interactions:
  """Rows of each split -> merged, filtered `_Interactions`.

  Order: ids mapped (`map_raw_ids`); `min_rating` keeps rows rated at least
  that; duplicate (user, item) rows merged per split (first kept); `kcore`
  drops, until none is left, users and items with fewer than k distinct
  interactions over all splits together; with raw ids (or `compact`) the
  surviving ids are renumbered 0..n-1 keeping their order. Integer ids keep
  their numbers (feature files are indexed by them).

  Raises:
    DataError: no train rows left, an asin clash. UsageError: min_rating
      without a rating column.
  """
  names = [s for s in SPLITS if s in splits]
  train_path = splits["train"].path
  mapped, n_u, n_i, user_ids, item_ids = map_raw_ids(splits, n_users, n_items)
  raw = user_ids is not None or item_ids is not None
  compact = raw if compact is None else compact
  notes = []
  item_asins = None
  if asins and any(splits[s].asins is not None for s in names):
    # The asin map reads every row, duplicates included, so that a repeated
    # pair carrying another asin is caught before merging drops it.
    parts = [(mapped[s][1], splits[s].asins,
              np.full(len(splits[s].asins), splits[s].path, object))
             for s in names if splits[s].asins is not None]
    item_asins = _asin_map(np.concatenate([p[0] for p in parts]),
                           np.concatenate([p[1] for p in parts]),
                           np.concatenate([p[2] for p in parts]), n_i)
  pairs, times = {}, {}
  for s in names:
    r = splits[s]
    pairs[s] = np.stack(mapped[s], 1) if len(r.lines) else np.zeros(
        (0, 2), np.int64)
    times[s] = r.times
  if len(pairs["train"]) == 0:
    raise DataError(f"{train_path}: has no interactions (only a header)")
  if min_rating is not None:
    lacking = [splits[s].path for s in names
               if splits[s].ratings is None and len(pairs[s])]
    if lacking:
      raise UsageError(f"`--min_rating` needs a rating column ({', '.join(RATING_COLUMNS)}"
                       f" or the format's own); {lacking[0]} has none. "
                       f"Received: {min_rating}")
    before = _counts(pairs)
    for s in names:
      if splits[s].ratings is not None and len(pairs[s]):
        keep = splits[s].ratings >= min_rating
        pairs[s] = pairs[s][keep]
        times[s] = None if times[s] is None else times[s][keep]
  n_rows = sum(len(p) for p in pairs.values())
  for s in names:
    pairs[s], keep = _merge_duplicates(pairs[s], splits[s].path)
    times[s] = None if times[s] is None else times[s][keep]
  if min_rating is not None:
    n_dup = n_rows - sum(len(p) for p in pairs.values())
    merged = f" ({n_dup:,} duplicate rows merged)" if n_dup else ""
    notes.append(f"--min_rating={min_rating:g}: {before} -> "
                 f"{_counts(pairs)}{merged}")
  if kcore:
    before = _counts(pairs)
    pairs, times, rounds = _kcore(pairs, times, kcore, n_u, n_i)
    notes.append(f"--kcore={kcore} ({rounds} rounds): {before} -> "
                 f"{_counts(pairs)}")
  if len(pairs["train"]) == 0:
    raise DataError(f"{train_path}: no train interactions are left after "
                    f"filtering ({'; '.join(notes)})")
  if compact and (min_rating is not None or kcore):
    every = np.concatenate([pairs[s] for s in names])
    for col in (0, 1):
      kept = np.unique(every[:, col])
      remap = np.full((n_u, n_i)[col], -1, np.int64)
      remap[kept] = np.arange(len(kept))
      for s in names:
        if len(pairs[s]):
          pairs[s][:, col] = remap[pairs[s][:, col]]
      if col == 0:
        user_ids = (kept.astype(str).astype(object) if user_ids is None
                    else user_ids[kept])
        n_u = len(kept)
      else:
        item_ids = (kept.astype(str).astype(object) if item_ids is None
                    else item_ids[kept])
        if item_asins is not None:
          item_asins = [item_asins[i] for i in kept]
        n_i = len(kept)
  empty = np.zeros((0, 2), np.int64)
  test_path = splits["test"].path if "test" in splits else None
  if test_path is not None:
    _report_overlap(pairs["train"], pairs["test"], test_path)
  return _Interactions(
      train=pairs["train"], test=pairs.get("test", empty),
      train_time=times["train"], test_time=times.get("test"),
      n_users=n_u, n_items=n_i, item_asins=item_asins,
      valid=pairs.get("valid", empty), user_ids=user_ids, item_ids=item_ids,
      notes=tuple(notes))


def _counts(pairs: Mapping[str, np.ndarray]) -> str:
  every = np.concatenate(list(pairs.values()))
  return (f"{len(np.unique(every[:, 0])):,} users, "
          f"{len(np.unique(every[:, 1])):,} items, {len(every):,} "
          f"interactions")


def _kcore(pairs, times, k, n_users, n_items):
  """Iterated k-core over the union of the splits (distinct pairs)."""
  names = list(pairs)
  rounds = 0
  while True:
    every = np.concatenate([pairs[s] for s in names])
    codes = np.unique(_pair_codes(every, n_items))
    u, i = codes // n_items, codes % n_items
    deg_u = np.bincount(u, minlength=n_users)
    deg_i = np.bincount(i, minlength=n_items)
    ok_u, ok_i = deg_u >= k, deg_i >= k
    bad = (~ok_u[u]) | (~ok_i[i])
    if not bad.any():
      return pairs, times, rounds
    rounds += 1
    for s in names:
      keep = ok_u[pairs[s][:, 0]] & ok_i[pairs[s][:, 1]]
      pairs[s] = pairs[s][keep]
      times[s] = None if times[s] is None else times[s][keep]


def _read_split(data_dir: str, min_rating: Optional[float] = None,
                kcore: int = 0) -> _Interactions:
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


def _merge_duplicates(pairs: np.ndarray,
                      path: str) -> Tuple[np.ndarray, np.ndarray]:
  """Drops repeated (user, item) rows, keeping first occurrences in order.

  Returns:
    (unique pairs, indices of the kept rows).
  """
  if len(pairs) == 0:
    return pairs, np.zeros(0, np.int64)
  _, first = np.unique(_pair_codes(pairs, int(pairs[:, 1].max()) + 1),
                       return_index=True)
  keep = np.sort(first)
  n_dup = len(pairs) - len(keep)
  if n_dup:
    logger.warning("%s: merged %d duplicate (user, item) rows", path, n_dup)
  return pairs[keep], keep


def _pair_codes(pairs: np.ndarray, n_items: int) -> np.ndarray:
  return pairs[:, 0].astype(np.int64) * int(n_items) + pairs[:, 1]


def _report_overlap(train: np.ndarray, test: np.ndarray, test_path: str):
  """Warns about test pairs also in train; counts cold users/items."""
  if len(test) == 0:
    return
  n_items = int(max(train[:, 1].max(), test[:, 1].max())) + 1
  in_train = np.isin(_pair_codes(test, n_items), _pair_codes(train, n_items))
  if in_train.any():
    logger.warning("%s: %d test pairs also occur in train; kept", test_path,
                   int(in_train.sum()))
  cold_users = np.setdiff1d(test[:, 0], train[:, 0])
  cold_items = np.setdiff1d(test[:, 1], train[:, 1])
  if len(cold_users) or len(cold_items):
    logger.info("%s: %d test users and %d test items never occur in train",
                test_path, len(cold_users), len(cold_items))


def _asin_map(items: np.ndarray, asins: np.ndarray, files: np.ndarray,
              n_items: int) -> List[Optional[str]]:
  """item id -> asin from interaction rows (None where never given).

  Raises:
    DataError: an item id carries two different asins.
  """
  has = np.array([a is not None for a in asins], bool)
  items, asins, files = items[has], asins[has], files[has]
  out: List[Optional[str]] = [None] * n_items
  if len(items) == 0:
    return out
  order = np.argsort(items, kind="stable")
  items, asins, files = items[order], asins[order], files[order]
  same_item = items[1:] == items[:-1]
  clash = same_item & (asins[1:] != asins[:-1])
  if clash.any():
    j = int(np.argmax(clash))
    first = int(np.searchsorted(items, items[j + 1]))
    raise DataError(
        f"{files[j + 1]}: item {items[j + 1]} has asin {asins[j + 1]!r}, but "
        f"{files[first]} gives it {asins[first]!r}; an item id must map to "
        f"one asin")
  starts = np.concatenate([[True], ~same_item])
  for item, asin in zip(items[starts], asins[starts]):
    out[int(item)] = str(asin)
  uniq, counts = np.unique(np.asarray(asins[starts], str), return_counts=True)
  if (counts > 1).any():
    logger.warning("%d asins are shared by more than one item id (e.g. %r); "
                   "such items get identical asin-keyed features",
                   int((counts > 1).sum()), str(uniq[counts > 1][0]))
  return out


def _check_feature_paths(
    feature_paths: Mapping[str, str]) -> Dict[str, str]:
  out = {}
  for name, path in dict(feature_paths or {}).items():
    if not isinstance(name, str) or not _MODALITY_RE.match(name):
      raise UsageError(f"modality names must match [a-z][a-z0-9_]*. "
                       f"Received: {name!r}")
    if not path:
      raise UsageError(f"feature path for modality `{name}` is empty")
    out[name] = os.fspath(path)
  return out


def _resolve_modalities(modalities: Optional[Sequence[str]],
                        default: Sequence[str]) -> List[str]:
  """Orders/validates the requested modality names (None -> `default`)."""
  if modalities is None:
    return list(default)
  if isinstance(modalities, str):
    raise UsageError(f"`modalities` must be a list of names, not a string. "
                     f"Received: {modalities!r}")
  names = list(modalities)
  for name in names:
    if not isinstance(name, str) or not _MODALITY_RE.match(name):
      raise UsageError(f"modality names must match [a-z][a-z0-9_]*. "
                       f"Received: {name!r}")
  dups = sorted({n for n in names if names.count(n) > 1})
  if dups:
    raise UsageError(f"`modalities` lists {dups[0]!r} more than once. "
                     f"Received: {names}")
  return names


def _default_order(names: Sequence[str]) -> List[str]:
  """text, image, then the rest in the given order."""
  head = [n for n in ("text", "image") if n in names]
  return head + [n for n in names if n not in ("text", "image")]


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
  paths = _check_feature_paths(feature_paths)
  mods = _resolve_modalities(modalities, _default_order(list(paths)))
  for m in mods:
    if m not in paths:
      raise UsageError(
          f"modality `{m}` has no feature file; feature files given for: "
          f"{', '.join(paths) or 'none'}")
  inter = _read_split(data_dir, min_rating, kcore)
  feats, sources = {}, {}
  for m in mods:
    feats[m], sources[m] = features_lib.load_modality_file_described(
        m, paths[m], inter.n_items, inter.item_asins)
  return _make_dataset(name, inter, feats, sources, None)


# ---------------------------------------------------------------------------
# Office


def load_office(*,
                modalities: Optional[Sequence[str]] = None,
                feature_paths: Mapping[str, str] = _NO_PATHS,
                text_dim: int = 512,
                seed: int = 0,
                cache_dir: Optional[str] = None,
                min_rating: Optional[float] = None,
                kcore: int = 0) -> Dataset:
  """The Amazon Office split embedded in `maml_tf/datasets/office/`.

  Built-in modalities: "text" (Doc2Vec PV-DM trained here on item_text.tsv:
  product title, leaf category and brand, NOT review text as in the paper)
  and "meta" (one-hot category + brand from item_meta.tsv). There is no image
  feature for Office; a file of your own can be given for any modality via
  `feature_paths` (a path for "text" replaces the built-in text).

  Args:
    modalities: names in order; None means text, meta (plus any modality in
      `feature_paths`, ordered text, image, meta, rest); empty means none.
    feature_paths: modality name -> user file, as in `load_release_layout`.
    text_dim: Doc2Vec vector size for the built-in text.
    seed: Doc2Vec seed.
    cache_dir: Doc2Vec cache folder (None: `features.default_cache_dir()`).
    min_rating, kcore: as in `load_release_layout` (Office has no ratings).

  Returns:
    Dataset named "office" with item_labels and train/test times.
  """
  paths = _check_feature_paths(feature_paths)
  if (isinstance(text_dim, bool) or
      not isinstance(text_dim, (int, np.integer)) or text_dim <= 0):
    raise UsageError(f"`text_dim` must be a positive integer. Received: "
                     f"{text_dim!r}")
  if modalities is None:
    extra = [m for m in paths if m not in OFFICE_BUILTIN]
    mods = _default_order(["text"] + extra)
    mods.insert(mods.index("image") + 1 if "image" in mods else 1, "meta")
  else:
    mods = _resolve_modalities(modalities, ())
  for m in mods:
    if m in paths or m in OFFICE_BUILTIN:
      continue
    if m == "image":
      raise UsageError(
          "Office has no image features (the release's product images are "
          "not available offline); built-in modalities: text, meta. Give "
          "your own file for `image` via feature paths to use one")
    raise UsageError(f"modality `{m}` is not built into Office (built-in: "
                     f"{', '.join(OFFICE_BUILTIN)}) and has no feature file; "
                     f"feature files given for: {', '.join(paths) or 'none'}")

  inter = _read_split(OFFICE_DIR, min_rating, kcore)
  text_path = os.path.join(OFFICE_DIR, "item_text.tsv")
  meta_path = os.path.join(OFFICE_DIR, "item_meta.tsv")
  text = _read_item_table(text_path, ("asin", "text"), inter)
  feats, sources = {}, {}
  for m in mods:
    if m in paths:
      feats[m], sources[m] = features_lib.load_modality_file_described(
          m, paths[m], inter.n_items, inter.item_asins)
    elif m == "text":
      feats[m], cache_path = features_lib.cached_text_features(
          text["text"], text["asin"], text_dim, seed, cache_dir)
      sources[m] = (f"text: Doc2Vec PV-DM {text_dim}-d (seed {seed}, "
                    f"{features_lib.DEFAULT_DOC2VEC_EPOCHS} epochs) trained on "
                    f"item_text.tsv product titles + leaf category + brand "
                    f"(not reviews)")
      logger.info("office text features: %s", cache_path or "not cached")
    else:  # meta
      meta = _read_item_table(meta_path, ("category_id", "brand_id"), inter)
      cats = _int_column(meta["category_id"], meta_path, "category_id")
      brands = _int_column(meta["brand_id"], meta_path, "brand_id")
      feats[m] = features_lib.meta_features(cats, brands)
      n_cat = int(cats.max()) + 1
      sources[m] = (f"meta: one-hot category ({n_cat}) + brand "
                    f"({feats[m].shape[1] - n_cat}) ids from item_meta.tsv "
                    f"(brand 0 = unknown -> all-zero brand part)")
  labels = tuple(_truncate(t) for t in text["text"])
  return _make_dataset("office", inter, feats, sources, labels)

def _read_item_table(path: str, columns: Sequence[str],
                     inter: _Interactions) -> Dict[str, List[str]]:
  """Reads an `itemID<TAB>...` table with exactly one row per item id.

  Returns:
    column name -> n_items cells, position i = item i (`asin` included when
    the table has it, and then checked against the interactions' asins).
  """
  path = tables.check_file(path, "TSV file")
  quoting = csv.QUOTE_NONE  # quotes are text in these tables
  header, header_line = tables.read_header(path, "\t", quoting)
  if not header:
    raise DataError(f"{path}: is empty, expected a header line")
  for c in ("itemID",) + tuple(columns):
    if c not in header:
      raise DataError(f"{path}: line {header_line}: missing required column "
                      f"`{c}`")
  wanted = [c for c in ("itemID", "asin") + tuple(columns) if c in header]
  # Every column is read, so that a row shorter than the header is caught.
  table = tables.read_table(path, header, header_line,
                            list(dict.fromkeys(wanted + header)), "\t",
                            quoting)
  items, bad = tables.table_ids(table, "itemID")
  tables.first_error(table, [(bad, "itemID", tables.id_rule)])
  too_big = items >= inter.n_items
  if too_big.any():
    k = int(np.argmax(too_big))
    raise DataError(f"{path}: line {int(table.lines[k])}: itemID must be < "
                    f"n_items = {inter.n_items}. Received: {int(items[k])}")
  order = np.argsort(items, kind="stable")
  twice = np.flatnonzero(items[order][1:] == items[order][:-1])
  if len(twice):
    k = int(np.min(order[twice + 1]))
    raise DataError(f"{path}: line {int(table.lines[k])}: itemID "
                    f"{int(items[k])} appears twice")
  have = np.zeros(inter.n_items, bool)
  have[items] = True
  if not have.all():
    missing = np.flatnonzero(~have)
    raise DataError(f"{path}: {len(missing)} item ids have no row, e.g. "
                    f"{missing[:5].tolist()}")
  out = {}
  for c in wanted[1:]:
    cells = np.empty(inter.n_items, object)
    cells[items] = table.columns[c]
    out[c] = list(cells)
  if "asin" in out and inter.item_asins is not None:
    for item, (a, b) in enumerate(zip(out["asin"], inter.item_asins)):
      if b is not None and a.strip() != b:
        raise DataError(f"{path}: item {item} has asin {a!r}, but the "
                        f"interactions give it {b!r}")
  return out


def _int_column(values: Sequence[str], path: str, column: str) -> np.ndarray:
  out = np.empty(len(values), np.int64)
  for i, v in enumerate(values):
    text = v.strip()
    if not (text.isascii() and text.isdigit() and int(text) <= MAX_ID):
      raise DataError(f"{path}: item {i}: column `{column}` must be a "
                      f"non-negative integer. Received: {v!r}")
    out[i] = int(text)
  return out


def _truncate(text: str) -> str:
  text = " ".join(str(text).split())
  if len(text) <= _LABEL_CHARS:
    return text
  return text[:_LABEL_CHARS - 3].rstrip() + "..."


# ---------------------------------------------------------------------------
# dispatch and arrays


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
  train, _ = _merge_duplicates(train, "`train`")
  both = np.concatenate([train, test, valid])
  feats = {}
  for m, mat in dict(features or {}).items():
    if not isinstance(m, str) or not _MODALITY_RE.match(m):
      raise UsageError(f"modality names must match [a-z][a-z0-9_]*. "
                       f"Received: {m!r}")
    feats[m] = features_lib.check_feature_matrix(mat, f"features[{m!r}]")
  if n_items is None:
    n_items = (next(iter(feats.values())).shape[0] if feats
               else int(both[:, 1].max()) + 1)
  if n_users is None:
    n_users = int(both[:, 0].max()) + 1
  sources = {m: f"{m}: user-supplied array, {v.shape[1]}-d"
             for m, v in feats.items()}
  inter = _Interactions(train, test, None, None, _as_count(n_users, "n_users"),
                        _as_count(n_items, "n_items"), None, valid=valid)
  return _make_dataset(name, inter, feats, sources, None)


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


def _make_dataset(name: str, inter: _Interactions,
                  feats: Mapping[str, np.ndarray], sources: Mapping[str, str],
                  labels: Optional[Tuple[str, ...]]) -> Dataset:
  ds = Dataset(name=name, n_users=inter.n_users, n_items=inter.n_items,
               train=inter.train, test=inter.test, features=dict(feats),
               feature_sources=dict(sources), item_labels=labels,
               train_time=inter.train_time, test_time=inter.test_time,
               valid=inter.valid, user_ids=inter.user_ids,
               item_ids=inter.item_ids, notes=tuple(inter.notes))
  for note in ds.notes:
    logger.info("%s: %s", name, note)
  validate_dataset(ds)
  return ds


def validate_dataset(ds: Dataset) -> None:
  """Checks every invariant of the Dataset contract.

  Raises:
    DataError: ids out of range, bad shapes/dtypes, feature rows != n_items,
      non-finite features, misaligned times/labels/sources.
  """
  for what in ("train", "test", "valid"):
    arr = getattr(ds, what)
    if (not isinstance(arr, np.ndarray) or arr.dtype != np.int64 or
        arr.ndim != 2 or arr.shape[1] != 2):
      raise DataError(f"{ds.name}: `{what}` must be int64 [n, 2]")
    if len(arr) == 0:
      continue
    if arr.min() < 0:
      raise DataError(f"{ds.name}: `{what}` has a negative id")
    for col, who, limit in ((0, "user", ds.n_users), (1, "item", ds.n_items)):
      top = int(arr[:, col].max())
      if top >= limit:
        raise DataError(f"{ds.name}: `{what}` has {who} id {top}, but "
                        f"n_{who}s = {limit}")
  for m, mat in ds.features.items():
    features_lib.check_feature_matrix(mat, f"{ds.name}: modality `{m}`",
                                      n_rows=ds.n_items)
    if mat.dtype != np.float32:
      raise DataError(f"{ds.name}: modality `{m}` must be float32")
    if m not in ds.feature_sources:
      raise DataError(f"{ds.name}: modality `{m}` has no feature_sources line")
  for what, pairs in (("train_time", ds.train), ("test_time", ds.test)):
    t = getattr(ds, what)
    if t is not None and (t.ndim != 1 or len(t) != len(pairs)):
      raise DataError(f"{ds.name}: `{what}` has {t.shape} entries for "
                      f"{len(pairs)} pairs")
  for what, ids, n in (("user_ids", ds.user_ids, ds.n_users),
                       ("item_ids", ds.item_ids, ds.n_items)):
    if ids is not None and len(ids) != n:
      raise DataError(f"{ds.name}: `{what}` has {len(ids)} raw ids for "
                      f"{n} indices")
  if ds.item_labels is not None and len(ds.item_labels) != ds.n_items:
    raise DataError(f"{ds.name}: {len(ds.item_labels)} item labels for "
                    f"{ds.n_items} items")


# ---------------------------------------------------------------------------
# validation split


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


__all__ = [
    "DATASETS", "OFFICE_DIR", "from_arrays", "load_dataset", "load_office",
    "load_release_layout", "read_interactions", "split_validation",
    "validate_dataset",
]
