"""Amazon Office, embedded in `maml_tf/datasets/office/` (`load_office`).

The release's layout (`train.csv`, `test.csv`, read as in
`maml_tf.data.formats.release`) plus two content modalities built here:
"text" (Doc2Vec PV-DM on the product title/category/brand text, not reviews)
and "meta" (one-hot category + brand). Office has no image features.
"""

from __future__ import annotations

import csv
import logging
import os
import types
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from maml_tf.data import features as features_lib
from maml_tf.data import tables
from maml_tf.data.dataset import Dataset, make_dataset
from maml_tf.data.feature_files import load_modality_file_described
from maml_tf.data.formats.release import read_split
from maml_tf.data.interactions import Interactions
from maml_tf.data.modalities import (check_feature_paths, default_order,
                                     resolve_modalities)
from maml_tf.errors import DataError, UsageError

logger = logging.getLogger("maml_tf")

MAX_ID = tables.MAX_ID
OFFICE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "datasets", "office")
OFFICE_BUILTIN = ("text", "meta")
_LABEL_CHARS = 60
_NO_PATHS: Mapping[str, str] = types.MappingProxyType({})


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
  paths = check_feature_paths(feature_paths)
  if (isinstance(text_dim, bool) or
      not isinstance(text_dim, (int, np.integer)) or text_dim <= 0):
    raise UsageError(f"`text_dim` must be a positive integer. Received: "
                     f"{text_dim!r}")
  mods = _office_modalities(modalities, paths)
  inter = read_split(OFFICE_DIR, min_rating, kcore)
  text_path = os.path.join(OFFICE_DIR, "item_text.tsv")
  meta_path = os.path.join(OFFICE_DIR, "item_meta.tsv")
  text = _read_item_table(text_path, ("asin", "text"), inter)
  feats, sources = {}, {}
  for m in mods:
    if m in paths:
      feats[m], sources[m] = load_modality_file_described(
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
  return make_dataset("office", inter, feats, sources, labels)


def _office_modalities(modalities: Optional[Sequence[str]],
                       paths: Mapping[str, str]) -> List[str]:
  """The modalities to load, each built in or given a file."""
  if modalities is None:
    extra = [m for m in paths if m not in OFFICE_BUILTIN]
    mods = default_order(["text"] + extra)
    mods.insert(mods.index("image") + 1 if "image" in mods else 1, "meta")
  else:
    mods = resolve_modalities(modalities, ())
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
  return mods


def _read_item_table(path: str, columns: Sequence[str],
                     inter: Interactions) -> Dict[str, List[str]]:
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
