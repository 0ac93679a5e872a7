"""Data folders in other projects' formats -> the same `Dataset`.

`--data_format` (with `--dataset=custom --data_dir=DIR`):

* `release`: train.csv, test.csv, optional valid.csv (`maml_tf.data`).
* `recbole`: RecBole atomic files. `<name>.inter`, tab-separated, typed
  header (`user_id:token  item_id:token  rating:float  timestamp:float`);
  or RecBole's benchmark split `<name>.train.inter`, `<name>.test.inter`
  and optionally `<name>.valid.inter`. Ids are tokens (any strings), mapped
  to 0..n-1 in order of first appearance. A single `.inter` leaves the split
  to the protocol: every interaction is train and test is empty (the
  Dataset's notes say so). An optional `<name>.item` (`item_id:token` plus
  fields) gives item modalities named after its fields: each `float_seq`
  field (space-separated numbers) a dense one; each `token` field a one-hot
  and each `token_seq` field a multi-hot one when it has at most
  `MAX_ONE_HOT` distinct tokens (larger ones, e.g. titles, are skipped with
  a warning); `float` fields are not used. Items without a row get zeros.
* `mmrec`: MMRec's `<name>.inter`, tab-separated, columns `userID`,
  `itemID`, `x_label` (0 train, 1 validation, 2 test), optional `rating`,
  `timestamp`; ids are integers (index = the integer), and
  `image_feat.npy` / `text_feat.npy`, [n_items, d] matrices with row i =
  item i, become the modalities `image` and `text`.
* `npz`: `train.npz`, `test.npz`, optional `valid.npz`, each a scipy sparse
  users x items matrix (`scipy.sparse.save_npz`); a stored nonzero is an
  interaction and its value the rating (`--min_rating`); shapes must agree.
* `auto`: the one format the folder's files point to; none or several is a
  one-line error naming what was found.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maml_tf import data as data_lib
from maml_tf import features as features_lib
from maml_tf import tables
from maml_tf.config import DATA_FORMATS
from maml_tf.dataset_types import Dataset
from maml_tf.errors import DataError, UsageError

logger = logging.getLogger("maml_tf")

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
MAX_ONE_HOT = 1024
MMREC_FEATURES = (("image", "image_feat.npy"), ("text", "text_feat.npy"))
NPZ_SPLITS = ("train", "valid", "test")
_TSV = dict(sep="\t", quoting=3)  # csv.QUOTE_NONE, as RecBole and MMRec read
_NO_TEST = ("no test split: all {n:,} interactions are train; under "
            "--protocol=release give a split ({files}) or use --protocol=split "
            "(a per-user 8:1:1 split)")


# ---------------------------------------------------------------------------
# detection


def detect_format(data_dir: str) -> str:
  """The format the files of `data_dir` point to.

  Raises:
    UsageError: none, or more than one (the message lists what was found).
  """
  data_dir = _check_dir(data_dir)
  names = sorted(os.listdir(data_dir))
  found: Dict[str, List[str]] = collections.OrderedDict()
  if "train.csv" in names:
    found.setdefault("release", []).append("train.csv")
  if "train.npz" in names:
    found.setdefault("npz", []).append("train.npz")
  for f in names:
    if f.endswith(".inter"):
      kind = _inter_kind(os.path.join(data_dir, f))
      if kind:
        found.setdefault(kind, []).append(f)
  if len(found) == 1:
    return next(iter(found))
  shown = "; ".join(f"{k} ({', '.join(v)})" for k, v in found.items())
  if not found:
    listing = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise UsageError(
        f"`--data_format=auto` found no known data files in {data_dir} "
        f"(release: train.csv + test.csv; recbole: <name>.inter with typed "
        f"header; mmrec: <name>.inter with x_label; npz: train.npz + "
        f"test.npz); it has: {listing or 'nothing'}. Received: auto")
  raise UsageError(
      f"`--data_format=auto` is ambiguous in {data_dir}: found {shown}; pass "
      f"--data_format={'|'.join(found)}. Received: auto")


def _ratings_and_times(cols, found):
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


def _inter_kind(path: str) -> Optional[str]:
  try:
    header, _ = tables.read_header(path, **_TSV)
  except DataError:
    return None
  if any(":" in h for h in header):
    return "recbole"
  if "x_label" in header:
    return "mmrec"
  return None


def resolve_format(data_dir: str, data_format: str) -> str:
  if data_format not in DATA_FORMATS:
    raise UsageError(f"`--data_format` must be one of "
                     f"{', '.join(DATA_FORMATS)}. Received: {data_format!r}")
  if data_format == "auto":
    return detect_format(data_dir)
  return data_format


def load_format(data_format: str, data_dir: str, *,
                feature_paths: Mapping[str, str] = None,
                modalities: Optional[Sequence[str]] = None,
                min_rating: Optional[float] = None,
                kcore: int = 0) -> Dataset:
  """Loads `data_dir` in one of the non-release formats."""
  loaders = {"recbole": load_recbole, "mmrec": load_mmrec, "npz": load_npz}
  if data_format == "release":
    return data_lib.load_release_layout(
        data_dir, feature_paths=feature_paths or {}, modalities=modalities,
        min_rating=min_rating, kcore=kcore)
  if data_format not in loaders:
    raise UsageError(f"`--data_format` must be one of "
                     f"{', '.join(DATA_FORMATS)}. Received: {data_format!r}")
  return loaders[data_format](data_dir, feature_paths=feature_paths or {},
                              modalities=modalities, min_rating=min_rating,
                              kcore=kcore)


def _check_dir(data_dir: str) -> str:
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: data folder not found")
  return data_dir


# ---------------------------------------------------------------------------
# RecBole


def recbole_header(path: str) -> Tuple[List[str], List[str], int]:
  """(field names, field types, header line) of a RecBole atomic file."""
  header, line = tables.read_header(path, **_TSV)
  if not header:
    raise DataError(f"{path}: is empty, expected a typed header line such "
                    f"as `user_id:token<TAB>item_id:token`")
  names, types = [], []
  for field in header:
    name, sep, kind = field.partition(":")
    if not sep or kind not in RECBOLE_TYPES:
      raise DataError(f"{path}: line {line}: field `{field}` must be "
                      f"name:type with type one of {', '.join(RECBOLE_TYPES)}"
                      f" (RecBole atomic file). Received: {field!r}")
    names.append(name)
    types.append(kind)
  return names, types, line


def read_recbole_inter(path: str) -> data_lib.Rows:
  """One RecBole `.inter` file: user_id, item_id tokens, optional rating
  and timestamp (floats)."""
  path = tables.check_file(path, "RecBole .inter file")
  names, types, line = recbole_header(path)
  tables.check_header(path, names, line, ("user_id", "item_id"))
  for field, kind in (("user_id", "token"), ("item_id", "token"),
                      ("rating", "float"), ("timestamp", "float")):
    if field in names and types[names.index(field)] != kind:
      raise DataError(f"{path}: line {line}: field `{field}` must have type "
                      f"{kind}. Received: "
                      f"{field}:{types[names.index(field)]!r}")
  wanted = [c for c in ("user_id", "item_id", "rating", "timestamp")
            if c in names]
  table = tables.read_table(path, names, line, wanted, **_TSV)
  cols = table.columns
  users = tables.stripped(table, "user_id")
  items = tables.stripped(table, "item_id")
  found = [(data_lib._first(users == ""), "user_id", "must not be empty"),
           (data_lib._first(items == ""), "item_id", "must not be empty")]
  ratings, times = _ratings_and_times(cols, found)
  tables.first_error(table, found)
  return data_lib.Rows(path, users, items, table.lines, None, times, ratings,
                       raw=True)


def _recbole_files(data_dir: str) -> Tuple[str, Dict[str, str]]:
  """(dataset name, {split: file}) of the folder's `.inter` files."""
  groups: Dict[str, Dict[str, str]] = collections.OrderedDict()
  for f in sorted(os.listdir(data_dir)):
    if not f.endswith(".inter"):
      continue
    stem, split = f[:-len(".inter")], None
    for s in NPZ_SPLITS:
      if stem.endswith("." + s):
        stem, split = stem[:-len(s) - 1], s
    groups.setdefault(stem, {})[split or "all"] = f
  if not groups:
    raise DataError(f"{data_dir}: no RecBole `<name>.inter` file")
  if len(groups) > 1:
    raise DataError(f"{data_dir}: .inter files of several datasets "
                    f"({', '.join(groups)}); keep one per folder")
  name, files = next(iter(groups.items()))
  split = {s: f for s, f in files.items() if s != "all"}
  if split:
    for s in ("train", "test"):
      if s not in split:
        raise DataError(
            f"{data_dir}: RecBole benchmark split needs {name}.train.inter and "
            f"{name}.test.inter (found: {', '.join(sorted(files.values()))})")
    if "all" in files:
      logger.warning("%s: using the benchmark split files; %s is not read",
                     data_dir, files["all"])
    return name, {s: os.path.join(data_dir, f) for s, f in split.items()}
  return name, {"all": os.path.join(data_dir, files["all"])}


def load_recbole(data_dir: str, *, feature_paths: Mapping[str, str] = None,
                 modalities: Optional[Sequence[str]] = None,
                 min_rating: Optional[float] = None,
                 kcore: int = 0) -> Dataset:
  """A RecBole dataset folder (see the module docstring)."""
  data_dir = _check_dir(data_dir)
  name, files = _recbole_files(data_dir)
  notes = []
  if "all" in files:
    rows = read_recbole_inter(files["all"])
    splits = {"train": rows, "test": _empty_rows(files["all"])}
  else:
    splits = {s: read_recbole_inter(p) for s, p in files.items()}
  inter = data_lib.finish_interactions(splits, min_rating=min_rating,
                                       kcore=kcore, asins=False)
  if "all" in files:
    notes.append(_NO_TEST.format(
        n=len(inter.train),
        files=f"{name}.train.inter + {name}.test.inter"))
  item_path = os.path.join(data_dir, f"{name}.item")
  builtin = {}
  if os.path.exists(item_path):
    builtin = recbole_item_features(item_path, inter.item_ids)
  return _with_features(name, inter, builtin, feature_paths, modalities,
                        inter.item_ids, notes)


def _empty_rows(path: str, raw: bool = True) -> data_lib.Rows:
  kind = object if raw else np.int64
  return data_lib.Rows(path, np.zeros(0, kind), np.zeros(0, kind),
                       np.zeros(0, np.int64), raw=raw)


def recbole_item_features(
    path: str, item_ids: np.ndarray) -> Dict[str, Tuple[np.ndarray, str]]:
  """Modalities from a RecBole `.item` file, rows aligned to `item_ids`.

  Returns:
    {field: (float32 [n_items, d], one-line description)} in file order.
  """
  names, types, line = recbole_header(path)
  tables.check_header(path, names, line, ("item_id",))
  if types[names.index("item_id")] != "token":
    raise DataError(f"{path}: line {line}: field `item_id` must have type "
                    f"token. Received: item_id:{types[names.index('item_id')]}")
  use = [n for n, t in zip(names, types) if n != "item_id" and t != "float"]
  skipped = [n for n, t in zip(names, types) if t == "float"]
  if skipped:
    logger.info("%s: float fields %s are not used as modalities", path,
                ", ".join(skipped))
  table = tables.read_table(path, names, line, ["item_id"] + use, **_TSV)
  tokens = np.array([c.strip() for c in table.columns["item_id"]], object)
  index = {str(t): i for i, t in enumerate(item_ids)}
  rows = np.array([index.get(t, -1) for t in tokens], np.int64)
  known = rows >= 0
  seen = np.zeros(len(item_ids), bool)
  for k in np.flatnonzero(known):
    if seen[rows[k]]:
      table.fail(int(k), "item_id", "must not repeat an item", tokens[k])
    seen[rows[k]] = True
  n_missing = int((~seen).sum())
  out = {}
  for field in use:
    kind = types[names.index(field)]
    if not data_lib._MODALITY_RE.match(field):
      raise DataError(f"{path}: line {line}: field `{field}` cannot name a "
                      f"modality (a-z, 0-9, _, starting with a letter); "
                      f"rename it. Received: {field!r}")
    cells = table.columns[field]
    if kind == "float_seq":
      matrix = _float_seq(table, field, cells, known, rows, len(item_ids))
      desc = (f"{field}: {path} float_seq field `{field}`, "
              f"{matrix.shape[1]}-d")
    else:
      matrix, n_tok = _hot(cells, known, rows, len(item_ids),
                           kind == "token_seq")
      if matrix is None:
        logger.warning("%s: field `%s` has %d distinct tokens (> %d); not "
                       "used as a one-hot modality", path, field, n_tok,
                       MAX_ONE_HOT)
        continue
      desc = (f"{field}: {path} {kind} field `{field}`, "
              f"{'multi' if kind == 'token_seq' else 'one'}-hot over "
              f"{n_tok} tokens")
    if n_missing:
      desc += f"; {n_missing} items without a row are zero"
    out[field] = (matrix, desc)
  if n_missing and out:
    logger.warning("%s: %d of %d items have no row; their features are zero",
                   path, n_missing, len(item_ids))
  return out


def _float_seq(table, field, cells, known, rows, n_items):
  dim, values = None, {}
  for k in np.flatnonzero(known):
    parts = cells[k].split()
    if not parts:
      continue
    try:
      vec = np.array([float(p) for p in parts], np.float64)
    except ValueError:
      table.fail(int(k), field, "must be space-separated numbers", cells[k])
    if not np.isfinite(vec).all():
      table.fail(int(k), field, "must be finite numbers", cells[k])
    if dim is None:
      dim = len(vec)
    elif len(vec) != dim:
      table.fail(int(k), field, f"must have {dim} numbers like the rows "
                 f"before it, has {len(vec)}", cells[k])
    values[int(rows[k])] = vec
  if dim is None:
    table.fail(0, field, "has no numbers in any row of a known item",
               cells[0] if len(cells) else "")
  out = np.zeros((n_items, dim), np.float32)
  for i, vec in values.items():
    out[i] = vec
  return out


def _hot(cells, known, rows, n_items, multi):
  lists = [cells[k].split() if multi else [cells[k].strip()]
           for k in np.flatnonzero(known)]
  vocab = {}
  for toks in lists:
    for t in toks:
      if t:
        vocab.setdefault(t, len(vocab))
  if len(vocab) > MAX_ONE_HOT or not vocab:
    return None, len(vocab)
  out = np.zeros((n_items, len(vocab)), np.float32)
  for i, toks in zip(rows[known], lists):
    for t in toks:
      if t:
        out[i, vocab[t]] = 1.0
  return out, len(vocab)


# ---------------------------------------------------------------------------
# MMRec


def load_mmrec(data_dir: str, *, feature_paths: Mapping[str, str] = None,
               modalities: Optional[Sequence[str]] = None,
               min_rating: Optional[float] = None,
               kcore: int = 0) -> Dataset:
  """An MMRec dataset folder (see the module docstring)."""
  data_dir = _check_dir(data_dir)
  inters = [f for f in sorted(os.listdir(data_dir)) if f.endswith(".inter")
            and _inter_kind(os.path.join(data_dir, f)) == "mmrec"]
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
      mats[modality] = (fpath, features_lib._load_npy(
          fpath, f"{fpath} (modality `{modality}`)"))
  rows = [m.shape[0] for _, m in mats.values()
          if isinstance(m, np.ndarray) and m.ndim == 2]
  inter = data_lib.finish_interactions(
      splits, min_rating=min_rating, kcore=kcore,
      n_items=max(rows, default=0) or None)
  builtin = {}
  for modality, (fpath, payload) in mats.items():
    matrix = features_lib.load_npy_matrix(fpath, inter.n_items, modality,
                                          payload=payload)
    builtin[modality] = (matrix, f"{modality}: {fpath} ([{inter.n_items} x "
                                 f"{matrix.shape[1]}] matrix, row i = item i)")
  notes = []
  if len(inter.test) == 0:
    notes.append(_NO_TEST.format(n=len(inter.train),
                                 files="rows with x_label 2"))
  return _with_features(name, inter, builtin, feature_paths, modalities,
                        None, notes)


def read_mmrec_inter(path: str) -> Dict[str, data_lib.Rows]:
  """MMRec's `.inter`: {"train", "valid", "test": Rows} by x_label."""
  path = tables.check_file(path, "MMRec .inter file")
  header, line = tables.read_header(path, **_TSV)
  if not header:
    raise DataError(f"{path}: is empty, expected a header line "
                    f"`userID<TAB>itemID<TAB>x_label`")
  tables.check_header(path, header, line, ("userID", "itemID", "x_label"))
  wanted = [c for c in ("userID", "itemID", "x_label", "rating", "timestamp")
            if c in header]
  table = tables.read_table(path, header, line, wanted,
                            int_columns=("userID", "itemID", "x_label"), **_TSV)
  cols = table.columns
  users, bad_u = tables.table_ids(table, "userID")
  items, bad_i = tables.table_ids(table, "itemID")
  labels, bad_l = tables.table_ids(table, "x_label")
  if labels is not None and (labels > 2).any():
    bad_l = int(np.argmax(labels > 2))
  found = [(bad_u, "userID", tables.id_rule), (bad_i, "itemID", tables.id_rule),
           (bad_l, "x_label", "must be 0 (train), 1 (validation) or 2 (test)")]
  ratings, times = _ratings_and_times(cols, found)
  tables.first_error(table, found)
  out = {}
  for label, split in enumerate(("train", "valid", "test")):
    keep = labels == label
    if split == "valid" and not keep.any():
      continue
    out[split] = data_lib.Rows(
        path, users[keep], items[keep], table.lines[keep], None,
        None if times is None else times[keep],
        None if ratings is None else ratings[keep])
  return out


# ---------------------------------------------------------------------------
# scipy sparse


def load_npz(data_dir: str, *, feature_paths: Mapping[str, str] = None,
             modalities: Optional[Sequence[str]] = None,
             min_rating: Optional[float] = None,
             kcore: int = 0) -> Dataset:
  """train.npz, test.npz and optional valid.npz (users x items)."""
  data_dir = _check_dir(data_dir)
  splits, shape, first = {}, None, None
  for s in NPZ_SPLITS:
    path = os.path.join(data_dir, f"{s}.npz")
    if s == "valid" and not os.path.exists(path):
      continue
    rows, this = read_npz(path)
    if shape is not None and this != shape:
      raise DataError(f"{path}: shape {this} differs from {first}'s {shape};"
                      f" every split must be the same users x items matrix")
    shape, first = this, path
    splits[s] = rows
  inter = data_lib.finish_interactions(
      splits, min_rating=min_rating, kcore=kcore, n_users=shape[0],
      n_items=shape[1])
  return _with_features(os.path.basename(os.path.normpath(data_dir)), inter,
                        {}, feature_paths, modalities, None, [])


def read_npz(path: str) -> Tuple[data_lib.Rows, Tuple[int, int]]:
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
  rows = data_lib.Rows(path, users, items, np.arange(len(users)), None,
                       None, values[nonzero][order])
  return rows, (int(matrix.shape[0]), int(matrix.shape[1]))


# ---------------------------------------------------------------------------
# modalities


def _with_features(name: str, inter, builtin: Mapping[str, Tuple[np.ndarray,
                                                                 str]],
                   feature_paths: Optional[Mapping[str, str]],
                   modalities: Optional[Sequence[str]],
                   item_keys: Optional[np.ndarray], notes: List[str]):
  """The Dataset, with the format's own modalities and any feature files
  (a file replaces a built-in modality of the same name)."""
  paths = data_lib._check_feature_paths(feature_paths or {})
  available = list(builtin) + [p for p in paths if p not in builtin]
  mods = data_lib._resolve_modalities(modalities,
                                      data_lib._default_order(available))
  for m in mods:
    if m not in paths and m not in builtin:
      raise UsageError(
          f"modality `{m}` is neither in the data ({', '.join(builtin) or 'none'}"
          f") nor given a feature file (given for: {', '.join(paths) or 'none'})")
  keys = None if item_keys is None else [str(k) for k in item_keys]
  feats, sources = {}, {}
  for m in mods:
    if m in paths:
      feats[m], sources[m] = features_lib.load_modality_file_described(
          m, paths[m], inter.n_items, keys)
    else:
      feats[m] = features_lib.check_feature_matrix(builtin[m][0], m,
                                                   n_rows=inter.n_items)
      sources[m] = builtin[m][1]
  inter.notes = tuple(inter.notes) + tuple(notes)
  return data_lib._make_dataset(name, inter, feats, sources, None)


__all__ = ["MAX_ONE_HOT", "RECBOLE_TYPES", "detect_format", "load_format",
           "load_mmrec", "load_npz", "load_recbole", "read_mmrec_inter",
           "read_npz", "read_recbole_inter", "recbole_item_features",
           "resolve_format"]


def load_dataset(dataset: str,
                 data_dir: Optional[str] = None,
                 modalities: Optional[Sequence[str]] = None,
                 feature_paths: Optional[Mapping[str, str]] = None,
                 text_dim: int = 512,
                 seed: int = 0,
                 cache_dir: Optional[str] = None,
                 *,
                 data_format: str = "auto",
                 min_rating: Optional[float] = None,
                 kcore: int = 0) -> Dataset:
  """"office" -> `load_office`, "custom" -> the folder `data_dir` in
  `data_format` ("auto" detects it): the one entry point for every dataset.

  `text_dim`, `seed` and `cache_dir` only matter for Office's built-in text.

  Raises:
    UsageError: unknown dataset, or data_dir missing for "custom" / given
      for "office", or a format that cannot be detected.
  """
  feature_paths = feature_paths or {}
  if dataset == "office":
    if data_dir:
      raise UsageError(f"`data_dir` is only for dataset 'custom'; Office is "
                       f"built in. Received: data_dir={data_dir!r}")
    if data_format not in ("auto", "release"):
      raise UsageError(f"`data_format` must be auto or release with dataset "
                       f"'office' (built in, the release's layout). Received: "
                       f"{data_format!r}")
    return data_lib.load_office(modalities=modalities, feature_paths=feature_paths,
                       text_dim=text_dim, seed=seed, cache_dir=cache_dir,
                       min_rating=min_rating, kcore=kcore)
  if dataset == "custom":
    if not data_dir:
      raise UsageError("dataset 'custom' needs `data_dir`, a folder with "
                       "train.csv and test.csv")
    fmt = resolve_format(data_dir, data_format)
    if fmt == "release":
      return data_lib.load_release_layout(data_dir, feature_paths=feature_paths,
                                 modalities=modalities, name="custom",
                                 min_rating=min_rating, kcore=kcore)
    return load_format(fmt, data_dir, feature_paths=feature_paths,
                               modalities=modalities, min_rating=min_rating,
                               kcore=kcore)
  raise UsageError(f"`dataset` must be one of {', '.join(map(repr, data_lib.DATASETS))}"
                   f". Received: {dataset!r}")
