"""Interactions and item features -> one immutable `Dataset`.

Sources (SPEC section 1):

* `load_release_layout(data_dir)`: the MAML release's layout, `train.csv`
  and `test.csv` with header `itemID,userID,reviewerID,asin` (extra columns
  such as `unixReviewTime` are fine), plus one user-supplied file per item
  modality (see `maml_tf.features.load_modality_file`).
* `load_office()`: the Amazon Office split embedded in
  `maml_tf/datasets/office/`, with two content modalities built here: "text"
  (Doc2Vec PV-DM on the product title/category/brand text, not reviews) and
  "meta" (one-hot category + brand). Office has no image features.
* `from_arrays(train, test, ...)`: plain numpy arrays.

Where we depart from the release on purpose: n_users / n_items are 1 + the
largest id over train AND test, and every feature matrix has a row for every
id in 0..n_items-1 (the release built them from train only and crashed on
test-only items). Duplicate (user, item) pairs are merged, with a warning.

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

from maml_tf import features as features_lib
from maml_tf.dataset_types import Dataset
from maml_tf.errors import DataError, UsageError

logger = logging.getLogger("maml_tf")

MAX_ID = 2**31 - 1
REQUIRED_COLUMNS = ("itemID", "userID")
OFFICE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "datasets", "office")
OFFICE_BUILTIN = ("text", "meta")
DATASETS = ("office", "custom")
_MODALITY_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_TIME_RE = re.compile(r"-?[0-9]+\Z")
_LABEL_CHARS = 60
_NO_PATHS: Mapping[str, str] = types.MappingProxyType({})


# ---------------------------------------------------------------------------
# reading interaction files


def read_interactions(
    path: str
) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
  """Reads one interactions CSV in the release's layout.

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
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found")
  if os.path.isdir(path):
    raise DataError(f"{path}: is a directory, expected a CSV file")
  try:
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
      return _parse_interactions(path, f)
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: is not UTF-8 text (byte {e.start}: "
                    f"{e.reason})") from e
  except csv.Error as e:
    raise DataError(f"{path}: malformed CSV ({e})") from e
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def _parse_interactions(path, f):
  """Does the work of `read_interactions` on an open text file."""
  reader = csv.reader(f)
  header = None
  for row in reader:
    if not _is_blank(row):
      header = [c.strip() for c in row]
      header_line = reader.line_num
      break
  if header is None:
    raise DataError(f"{path}: is empty, expected a header line "
                    f"`itemID,userID,reviewerID,asin`")
  seen = set()
  for name in header:
    if name and name in seen:
      raise DataError(f"{path}: line {header_line}: column `{name}` appears "
                      f"twice in the header")
    seen.add(name)
  for name in REQUIRED_COLUMNS:
    if name not in header:
      near = [h for h in header if h.lower() == name.lower() or
              h.lower().replace("_", "") == name.lower()]
      hint = f"; did you mean `{near[0]}`?" if near else ""
      raise DataError(
          f"{path}: line {header_line}: missing required column `{name}` "
          f"(header has: {', '.join(header) or 'nothing'}){hint}")
  col_item = header.index("itemID")
  col_user = header.index("userID")
  col_asin = header.index("asin") if "asin" in header else None
  col_time = (header.index("unixReviewTime") if "unixReviewTime" in header
              else None)
  need = max(c for c in (col_item, col_user, col_asin, col_time)
             if c is not None) + 1

  lines: List[int] = []
  users: List[str] = []
  items: List[str] = []
  asins: List[Optional[str]] = []
  times: List[int] = []
  for row in reader:
    if _is_blank(row):
      continue
    line = reader.line_num
    if len(row) < need:
      raise DataError(f"{path}: line {line}: has {len(row)} fields, the "
                      f"header has {len(header)}")
    lines.append(line)
    items.append(row[col_item])
    users.append(row[col_user])
    if col_asin is not None:
      asins.append(row[col_asin].strip() or None)
    if col_time is not None:
      times.append(row[col_time])
  # Columns are checked vectorised; the first bad cell in file order (then
  # in the order itemID, userID, unixReviewTime) is the one reported.
  item_ids, item_bad = _parse_id_column(items)
  user_ids, user_bad = _parse_id_column(users)
  time_arr, time_bad = (None, None)
  if col_time is not None:
    time_arr, time_bad = _parse_time_column(times)
  found = [(bad, rank, cells, column) for rank, (bad, cells, column) in
           enumerate(((item_bad, items, "itemID"), (user_bad, users, "userID"),
                      (time_bad, times, "unixReviewTime")))
           if bad is not None]
  if found:
    k, _, cells, column = min(found, key=lambda f: f[:2])
    if column == "unixReviewTime":
      _parse_time(cells[k], path, lines[k])  # raises the DataError
    else:
      _parse_id(cells[k], path, lines[k], column)  # raises the DataError
    raise AssertionError(f"cell {cells[k]!r} was judged bad but parsed")
  pairs = np.empty((len(lines), 2), np.int64)
  pairs[:, 0] = user_ids
  pairs[:, 1] = item_ids
  asin_arr = None
  if col_asin is not None:
    asin_arr = np.empty(len(asins), object)
    asin_arr[:] = asins
  return pairs, asin_arr, time_arr


def _is_blank(row: Sequence[str]) -> bool:
  return not row or (len(row) == 1 and not row[0].strip())


def _parse_id_column(
    cells: List[str]) -> Tuple[Optional[np.ndarray], Optional[int]]:
  """Vectorised id check: (int64 values, None) or (None, first bad index)."""
  if not cells:
    return np.zeros(0, np.int64), None
  if not "".join(cells).isascii():
    values = []
    for k, cell in enumerate(cells):
      text = cell.strip()
      if not (text.isascii() and text.isdigit() and int(text) <= MAX_ID):
        return None, k
      values.append(int(text))
    return np.array(values, np.int64), None
  text = np.strings.strip(np.array(cells, dtype=str))
  bad = ~np.strings.isdigit(text) | (np.strings.str_len(text) > 10)
  if not bad.any():
    values = text.astype(np.int64)
    bad = values > MAX_ID
    if not bad.any():
      return values, None
  return None, int(np.argmax(bad))


def _parse_time_column(
    cells: List[str]) -> Tuple[Optional[np.ndarray], Optional[int]]:
  """Like `_parse_id_column` for signed int64 unix times."""
  values = []
  for k, cell in enumerate(cells):
    text = cell.strip()
    if not _TIME_RE.match(text) or len(text.lstrip("-")) > 18:
      return None, k
    values.append(int(text))
  return np.array(values, np.int64), None


def _parse_id(cell: str, path: str, line: int, column: str) -> int:
  text = cell.strip()
  if not (text.isascii() and text.isdigit()):
    raise DataError(f"{path}: line {line}: column `{column}` must be a "
                    f"non-negative integer. Received: {cell!r}")
  value = int(text)
  if value > MAX_ID:
    raise DataError(f"{path}: line {line}: column `{column}` must be <= "
                    f"{MAX_ID} (2**31-1). Received: {cell!r}")
  return value


def _parse_time(cell: str, path: str, line: int) -> int:
  text = cell.strip()
  if not _TIME_RE.match(text) or len(text.lstrip("-")) > 18:
    raise DataError(f"{path}: line {line}: column `unixReviewTime` must be an "
                    f"integer (unix seconds). Received: {cell!r}")
  return int(text)


# ---------------------------------------------------------------------------
# the release layout


@dataclasses.dataclass
class _Interactions:
  """train/test pairs after merging, and what the rows say about items."""
  train: np.ndarray
  test: np.ndarray
  train_time: Optional[np.ndarray]
  test_time: Optional[np.ndarray]
  n_users: int
  n_items: int
  item_asins: Optional[List[Optional[str]]]


def _read_split(data_dir: str) -> _Interactions:
  """Reads train.csv/test.csv of `data_dir`, merges and checks them."""
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: data folder not found")
  train_path = os.path.join(data_dir, "train.csv")
  test_path = os.path.join(data_dir, "test.csv")
  train, train_asins, train_time = read_interactions(train_path)
  test, test_asins, test_time = read_interactions(test_path)
  if len(train) == 0:
    raise DataError(f"{train_path}: has no interactions (only a header)")
  if len(test) == 0:
    logger.warning("%s: has no interactions; nothing to evaluate on",
                   test_path)
  both = np.concatenate([train, test])
  n_users = int(both[:, 0].max()) + 1
  n_items = int(both[:, 1].max()) + 1
  # The asin map reads every row, duplicates included, so that a repeated
  # pair carrying another asin is caught before merging drops it.
  item_asins = None
  if train_asins is not None or test_asins is not None:
    parts_items, parts_asins, parts_files = [], [], []
    for pairs, asins, p in ((train, train_asins, train_path),
                            (test, test_asins, test_path)):
      if asins is not None:
        parts_items.append(pairs[:, 1])
        parts_asins.append(asins)
        parts_files.append(np.full(len(pairs), p, object))
    item_asins = _asin_map(np.concatenate(parts_items),
                           np.concatenate(parts_asins),
                           np.concatenate(parts_files), n_items)
  train, keep = _merge_duplicates(train, train_path)
  train_time = None if train_time is None else train_time[keep]
  test, keep = _merge_duplicates(test, test_path)
  test_time = None if test_time is None else test_time[keep]
  _report_overlap(train, test, test_path)
  return _Interactions(train, test, train_time, test_time, n_users, n_items,
                       item_asins)


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
                        name: str = "custom") -> Dataset:
  """Loads `<data_dir>/train.csv`, `test.csv` and the given feature files.

  Args:
    data_dir: folder with train.csv and test.csv (release layout).
    feature_paths: modality name -> file (Doc2Vec model, .npy dict of
      asin -> vector, or .npy [n_items, d] matrix).
    modalities: which feature files to use, in order. None: all given paths,
      ordered text, image, then the rest as given. Empty: no features (CML).
    name: the Dataset's name.

  Returns:
    The Dataset (no validation split; see `split_validation`).

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
  inter = _read_split(data_dir)
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
                cache_dir: Optional[str] = None) -> Dataset:
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

  inter = _read_split(OFFICE_DIR)
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
  out: Dict[str, List[Optional[str]]] = {}
  try:
    with open(path, "r", encoding="utf-8-sig", newline="") as f:
      reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
      header = None
      for row in reader:
        if _is_blank(row):
          continue
        line = reader.line_num
        if header is None:
          header = [c.strip() for c in row]
          for c in ("itemID",) + tuple(columns):
            if c not in header:
              raise DataError(f"{path}: line {line}: missing required "
                              f"column `{c}`")
          idx = {c: header.index(c) for c in ("asin",) + tuple(columns)
                 if c in header}
          out = {c: [None] * inter.n_items for c in idx}
          col_item = header.index("itemID")
          continue
        if len(row) < len(header):
          raise DataError(f"{path}: line {line}: has {len(row)} fields, the "
                          f"header has {len(header)}")
        item = _parse_id(row[col_item], path, line, "itemID")
        if item >= inter.n_items:
          raise DataError(f"{path}: line {line}: itemID must be < n_items = "
                          f"{inter.n_items}. Received: {item}")
        if out[columns[0]][item] is not None:
          raise DataError(f"{path}: line {line}: itemID {item} appears twice")
        for c, i in idx.items():
          out[c][item] = row[i]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"{path}: cannot read ({e})") from e
  if header is None:
    raise DataError(f"{path}: is empty, expected a header line")
  missing = [i for i, v in enumerate(out[columns[0]]) if v is None]
  if missing:
    raise DataError(f"{path}: {len(missing)} item ids have no row, e.g. "
                    f"{missing[:5]}")
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


def load_dataset(dataset: str,
                 data_dir: Optional[str] = None,
                 modalities: Optional[Sequence[str]] = None,
                 feature_paths: Optional[Mapping[str, str]] = None,
                 text_dim: int = 512,
                 seed: int = 0,
                 cache_dir: Optional[str] = None) -> Dataset:
  """"office" -> `load_office`, "custom" -> `load_release_layout(data_dir)`.

  `text_dim`, `seed` and `cache_dir` only matter for Office's built-in text.

  Raises:
    UsageError: unknown dataset, or data_dir missing for "custom" / given
      for "office".
  """
  feature_paths = feature_paths or {}
  if dataset == "office":
    if data_dir:
      raise UsageError(f"`data_dir` is only for dataset 'custom'; Office is "
                       f"built in. Received: data_dir={data_dir!r}")
    return load_office(modalities=modalities, feature_paths=feature_paths,
                       text_dim=text_dim, seed=seed, cache_dir=cache_dir)
  if dataset == "custom":
    if not data_dir:
      raise UsageError("dataset 'custom' needs `data_dir`, a folder with "
                       "train.csv and test.csv")
    return load_release_layout(data_dir, feature_paths=feature_paths,
                               modalities=modalities, name="custom")
  raise UsageError(f"`dataset` must be one of {', '.join(map(repr, DATASETS))}"
                   f". Received: {dataset!r}")


def from_arrays(train: np.ndarray,
                test: Optional[np.ndarray],
                *,
                features: Optional[Mapping[str, np.ndarray]] = None,
                n_users: Optional[int] = None,
                n_items: Optional[int] = None,
                name: str = "arrays") -> Dataset:
  """A Dataset from (user, item) arrays and optional feature matrices.

  Args:
    train: integer [n, 2] (user, item) pairs; duplicates are merged.
    test: integer [m, 2] pairs, or None for none.
    features: modality name -> [n_items, d] numeric matrix.
    n_users: defaults to 1 + the largest user id.
    n_items: defaults to the feature rows if features are given, else 1 +
      the largest item id.
    name: the Dataset's name.

  Raises:
    DataError: a shape, dtype, id or value breaks a rule.
  """
  train = _check_pairs(train, "train")
  test = (np.zeros((0, 2), np.int64) if test is None
          else _check_pairs(test, "test"))
  if len(train) == 0:
    raise DataError("`train` has no interactions")
  train, _ = _merge_duplicates(train, "`train`")
  both = np.concatenate([train, test])
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
                        _as_count(n_items, "n_items"), None)
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
               train_time=inter.train_time, test_time=inter.test_time)
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
