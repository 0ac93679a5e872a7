"""RecBole atomic files (`--data_format=recbole`).

`<name>.inter`, tab-separated, typed header (`user_id:token  item_id:token
rating:float  timestamp:float`); or RecBole's benchmark split
`<name>.train.inter`, `<name>.test.inter` and optionally
`<name>.valid.inter`. Ids are tokens (any strings), mapped to 0..n-1 in order
of first appearance. A single `.inter` leaves the split to the protocol:
every interaction is train and test is empty (the Dataset's notes say so). An
optional `<name>.item` (`item_id:token` plus fields) gives item modalities
named after its fields: each `float_seq` field (space-separated numbers) a
dense one; each `token` field a one-hot and each `token_seq` field a
multi-hot one when it has at most `MAX_ONE_HOT` distinct tokens (larger ones,
e.g. titles, are skipped with a warning); `float` fields are not used. Items
without a row get zeros.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from maml_tf.data import tables
from maml_tf.data.dataset import Dataset
from maml_tf.data.formats import common
from maml_tf.data.interactions import (SPLITS, Rows, empty_rows,
                                       finish_interactions, first_true)
from maml_tf.data.modalities import MODALITY_NAME
from maml_tf.errors import DataError

logger = logging.getLogger("maml_tf")

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
MAX_ONE_HOT = 1024
# Where this format keeps interaction times (`--protocol=loo` names it when
# they are missing).
TIMES = ("a `timestamp:float` column in <name>.inter (or in each of "
         "<name>.train.inter, .valid.inter and .test.inter)")


def detect(data_dir: str, names: Sequence[str]) -> List[str]:
  """The `.inter` files of `names` with a typed (RecBole) header."""
  return [f for f in names if f.endswith(".inter") and
          common.inter_kind(os.path.join(data_dir, f)) == "recbole"]


def recbole_header(path: str) -> Tuple[List[str], List[str], int]:
  """(field names, field types, header line) of a RecBole atomic file."""
  header, line = tables.read_header(path, **common.TSV)
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


def read_recbole_inter(path: str) -> Rows:
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
  table = tables.read_table(path, names, line, wanted, **common.TSV)
  cols = table.columns
  users = tables.stripped(table, "user_id")
  items = tables.stripped(table, "item_id")
  found = [(first_true(users == ""), "user_id", "must not be empty"),
           (first_true(items == ""), "item_id", "must not be empty")]
  ratings, times = common.ratings_and_times(cols, found)
  tables.first_error(table, found)
  return Rows(path, users, items, table.lines, None, times, ratings, raw=True)


def _recbole_files(data_dir: str) -> Tuple[str, Dict[str, str]]:
  """(dataset name, {split: file}) of the folder's `.inter` files."""
  groups: Dict[str, Dict[str, str]] = collections.OrderedDict()
  for f in sorted(os.listdir(data_dir)):
    if not f.endswith(".inter"):
      continue
    stem, split = f[:-len(".inter")], None
    for s in SPLITS:
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
  data_dir = common.check_dir(data_dir)
  name, files = _recbole_files(data_dir)
  notes = []
  if "all" in files:
    rows = read_recbole_inter(files["all"])
    splits = {"train": rows, "test": empty_rows(files["all"])}
  else:
    splits = {s: read_recbole_inter(p) for s, p in files.items()}
  inter = finish_interactions(splits, min_rating=min_rating, kcore=kcore,
                              asins=False)
  if "all" in files:
    notes.append(common.NO_TEST.format(
        n=len(inter.train),
        files=f"{name}.train.inter + {name}.test.inter"))
  item_path = os.path.join(data_dir, f"{name}.item")
  builtin = {}
  if os.path.exists(item_path):
    builtin = recbole_item_features(item_path, inter.item_ids)
  return common.with_features(name, inter, builtin, feature_paths,
                              modalities, inter.item_ids, notes)


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
  table = tables.read_table(path, names, line, ["item_id"] + use, **common.TSV)
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
    if not MODALITY_NAME.match(field):
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
