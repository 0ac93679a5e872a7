"""Item feature matrices: one float32 [n_items, d] matrix per modality.

Row i of every matrix describes item i. Sources:

* `meta_features`: one-hot category id + one-hot brand id (brand 0 = unknown).
* `train_doc2vec` / `doc2vec_matrix` / `cached_text_features`: gensim Doc2Vec
  PV-DM document vectors trained here, cached on disk by content hash.
* `load_modality_file`: a user-supplied file, recognised by its content
  (`maml_tf.data.feature_files`, whose public names are also importable
  from here).
"""


from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from maml_tf import fileio
from maml_tf.data.feature_files import (check_feature_matrix, doc2vec_matrix,
                                        load_doc2vec_file, load_modality_file,
                                        load_modality_file_described,
                                        load_npy_dict, load_npy_matrix, one_line,
                                        show)
from maml_tf.errors import DataError, UsageError

logger = logging.getLogger("maml_tf")

# Doc2Vec training passes over the corpus unless told otherwise.
DEFAULT_DOC2VEC_EPOCHS = 20
# Bump when anything that changes the trained vectors (tokeniser, Doc2Vec
# settings) changes, so stale cache files are never reused.
_CACHE_SCHEMA = "maml_tf-doc2vec-v1"
_TOKEN_RE = re.compile(r"[^\W_]+")


def default_cache_dir() -> str:
  """Where derived features are cached: `$MAML_TF_CACHE` or ~/.cache/maml_tf."""
  env = os.environ.get("MAML_TF_CACHE")
  if env:
    return os.path.expanduser(env)
  return os.path.join(os.path.expanduser("~"), ".cache", "maml_tf")


# ---------------------------------------------------------------------------
# meta: category / brand one-hot


def meta_features(category_ids: Sequence[int],
                  brand_ids: Sequence[int]) -> np.ndarray:
  """One-hot category id concatenated with one-hot brand id.

  Brand id 0 means "unknown brand": such an item gets an all-zero brand part
  (the unknown column is dropped). Category ids are all real categories.

  Args:
    category_ids: n_items non-negative ints, item i's category.
    brand_ids: n_items non-negative ints, item i's brand, 0 = unknown.

  Returns:
    float32 [n_items, (max category id + 1) + max brand id]: columns
    0..max_cat are the category one-hot, then column max_cat + b is brand b
    (b >= 1).

  Raises:
    DataError: lengths differ, or an id is negative or not an integer.
  """
  cats = _as_id_vector(category_ids, "category_ids")
  brands = _as_id_vector(brand_ids, "brand_ids")
  if cats.shape != brands.shape:
    raise DataError(
        f"`category_ids` and `brand_ids` must have the same length. "
        f"Received: {len(cats)} and {len(brands)}")
  n = len(cats)
  n_cat = int(cats.max()) + 1 if n else 0
  n_brand = int(brands.max()) if n else 0
  out = np.zeros((n, n_cat + n_brand), np.float32)
  rows = np.arange(n)
  out[rows, cats] = 1.0
  known = brands > 0
  out[rows[known], n_cat + brands[known] - 1] = 1.0
  return out


def _as_id_vector(values: Sequence[int], what: str) -> np.ndarray:
  arr = np.asarray(values)
  if arr.ndim != 1:
    raise DataError(f"`{what}` must be 1-D. Received shape {arr.shape}")
  if arr.size and arr.dtype.kind not in "iu":
    raise DataError(
        f"`{what}` must hold integers. Received dtype {arr.dtype}")
  arr = arr.astype(np.int64)
  if arr.size and arr.min() < 0:
    bad = int(np.argmax(arr < 0))
    raise DataError(
        f"`{what}` must be non-negative. Received: {arr[bad]} at index {bad}")
  return arr


# ---------------------------------------------------------------------------
# Doc2Vec text features


def tokenize(text: str) -> list:
  """Lowercases and splits on runs of non-alphanumeric characters."""
  return _TOKEN_RE.findall(str(text).lower())


def stable_hash(text: str) -> int:
  """A string hash that does not depend on PYTHONHASHSEED (for gensim)."""
  digest = hashlib.blake2b(str(text).encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") & 0x7FFFFFFF


def train_doc2vec(texts: Sequence[str],
                  tags: Sequence[str],
                  dim: int,
                  seed: int,
                  epochs: int = DEFAULT_DOC2VEC_EPOCHS):
  """Trains gensim Doc2Vec PV-DM, one document per text tagged by `tags`.

  Settings: dm=1 (PV-DM), min_count=1, window=5, workers=1 and a
  PYTHONHASHSEED-independent `hashfxn`, so a given (texts, tags, dim, seed,
  epochs) gives the same vectors in every process.

  Args:
    texts: one string per document; see `tokenize`.
    tags: one unique tag (asin) per document.
    dim: vector size (> 0).
    seed: gensim's random seed.
    epochs: training passes (> 0).

  Returns:
    The trained `gensim.models.doc2vec.Doc2Vec` model.

  Raises:
    UsageError: bad dim/epochs. DataError: lengths differ, duplicate tags,
      empty corpus or a corpus with no tokens at all.
  """
  from gensim.models.doc2vec import Doc2Vec, TaggedDocument  # pylint: disable=g-import-not-at-top

  _check_positive_int(dim, "dim")
  _check_positive_int(epochs, "epochs")
  texts = list(texts)
  tags = [str(t) for t in tags]
  if len(texts) != len(tags):
    raise DataError(f"`texts` and `tags` must have the same length. "
                    f"Received: {len(texts)} and {len(tags)}")
  if not texts:
    raise DataError("Doc2Vec needs at least one document. Received: 0")
  if len(set(tags)) != len(tags):
    seen, dups = set(), []
    for t in tags:
      if t in seen:
        dups.append(t)
      seen.add(t)
    raise DataError(f"Doc2Vec tags must be unique; {len(dups)} repeat, "
                    f"e.g. {show(dups)}")
  docs = [TaggedDocument(tokenize(x), [t]) for x, t in zip(texts, tags)]
  if not any(d.words for d in docs):
    raise DataError("Doc2Vec corpus has no tokens: every text is empty")
  n_empty = sum(1 for d in docs if not d.words)
  if n_empty:
    logger.warning("Doc2Vec: %d of %d texts have no tokens; their vectors "
                   "stay at their random initialisation", n_empty, len(docs))
  model = Doc2Vec(vector_size=int(dim), dm=1, min_count=1, window=5,
                  workers=1, seed=int(seed), epochs=int(epochs),
                  hashfxn=stable_hash)
  model.build_vocab(docs)
  model.train(docs, total_examples=len(docs), epochs=model.epochs)
  return model


def cache_key(texts: Sequence[str], asins: Sequence[str], dim: int, seed: int,
              epochs: int) -> str:
  """sha256 hex of everything that determines the trained Doc2Vec vectors."""
  import gensim  # pylint: disable=g-import-not-at-top

  payload = json.dumps(
      [_CACHE_SCHEMA, [str(t) for t in texts], [str(a) for a in asins],
       int(dim), int(seed), int(epochs), gensim.__version__],
      ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cached_text_features(
    texts: Sequence[str],
    asins: Sequence[str],
    dim: int,
    seed: int,
    cache_dir: Optional[str] = None,
    epochs: int = DEFAULT_DOC2VEC_EPOCHS,
) -> Tuple[np.ndarray, Optional[str]]:
  """Doc2Vec PV-DM vectors for `texts`, trained once and cached on disk.

  The cache file is `<cache_dir>/doc2vec-<first 16 hex of cache_key>.npy`,
  written atomically (temp file in the same folder, then os.replace). A
  cache file that is unreadable or has the wrong shape is retrained and
  overwritten.

  Args:
    texts: item i's text at position i.
    asins: item i's asin (the Doc2Vec tag), unique.
    dim: vector size.
    seed: Doc2Vec seed.
    cache_dir: folder for the cache; None means `default_cache_dir()`.
    epochs: Doc2Vec training passes.

  Returns:
    (float32 [n_items, dim] matrix, cache file path). The path is None when
    the cache folder could not be written (a warning says why).
  """
  _check_positive_int(dim, "dim")
  _check_positive_int(epochs, "epochs")
  texts = [str(t) for t in texts]
  asins = [str(a) for a in asins]
  cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
  key = cache_key(texts, asins, dim, seed, epochs)
  path = os.path.join(cache_dir, f"doc2vec-{key[:16]}.npy")
  if os.path.exists(path):
    try:
      cached = np.load(path, allow_pickle=False)
      if (cached.shape == (len(texts), dim) and cached.dtype == np.float32 and
          np.isfinite(cached).all()):
        logger.info("text features: reusing cache %s", path)
        return cached, path
      logger.warning("text features: cache %s has shape %s / dtype %s; "
                     "retraining", path, cached.shape, cached.dtype)
    except (OSError, ValueError, EOFError) as e:
      logger.warning("text features: cache %s is unreadable (%s); retraining",
                     path, one_line(e))
  model = train_doc2vec(texts, asins, dim, seed, epochs=epochs)
  matrix = doc2vec_matrix(model, asins)
  try:
    _atomic_save(path, matrix)
  except OSError as e:
    logger.warning("text features: could not write cache in %s (%s); "
                   "continuing without a cache", cache_dir, one_line(e))
    return matrix, None
  return matrix, path


def _atomic_save(path: str, array: np.ndarray) -> None:
  with fileio.atomic_writer(path, "wb") as f:
    np.save(f, array, allow_pickle=False)


def _check_positive_int(value: Any, what: str) -> None:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
      value <= 0):
    raise UsageError(f"`{what}` must be a positive integer. Received: "
                     f"{value!r}")


__all__ = [
    "DEFAULT_DOC2VEC_EPOCHS", "cache_key", "cached_text_features",
    "check_feature_matrix", "default_cache_dir", "doc2vec_matrix",
    "load_doc2vec_file", "load_modality_file", "load_modality_file_described",
    "load_npy_dict", "load_npy_matrix", "meta_features", "stable_hash",
    "tokenize", "train_doc2vec",
]
