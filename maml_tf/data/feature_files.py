"""User-supplied modality files -> float32 [n_items, d], row i = item i.

`load_modality_file` recognises a file by its content:
  - a `.npy` holding a pickled dict asin -> vector (the release's
    `image_feature.npy`; Python-2 pickles are read with `encoding="latin1"`),
  - a `.npy` holding a plain [n_items, d] numeric matrix,
  - otherwise a gensim Doc2Vec model file whose document tags are asins (the
    release's text model, `model.dv[asin]`; `doc2vec_matrix`).

Items whose asin is unknown (an id in 0..n_items-1 that occurs in no
interaction row) cannot be looked up by asin: they get an all-zero row and a
warning, instead of the release's crash (docs/spec.md §1).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from maml_tf.errors import DataError

logger = logging.getLogger("maml_tf")

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_SHOWN = 5


# user-supplied modality files


def load_modality_file(name: str, path: str, n_items: int,
                       item_asins: Optional[Sequence[Optional[str]]]
                       ) -> np.ndarray:
  """Reads one modality file into float32 [n_items, d], row i = item i.

  The format is recognised by content, not by file name: a `.npy` whose
  payload is a dict (asin -> vector), a `.npy` numeric matrix, or else a
  gensim Doc2Vec model. See `load_modality_file_described` for the same
  with a one-line description of what was read.

  Args:
    name: the modality ("text", "image", ...), used in messages.
    path: the file.
    n_items: rows the matrix must have.
    item_asins: n_items asins (None where unknown), needed for the dict and
      Doc2Vec formats; may be None for a plain matrix.

  Returns:
    float32 [n_items, d].

  Raises:
    DataError: the file is missing, unreadable or breaks a rule.
  """
  return load_modality_file_described(name, path, n_items, item_asins)[0]


def load_modality_file_described(
    name: str, path: str, n_items: int,
    item_asins: Optional[Sequence[Optional[str]]]) -> Tuple[np.ndarray, str]:
  """Like `load_modality_file`, also returning e.g. "image: <path> (...)"."""
  label = f"{path} (modality `{name}`)"
  if not os.path.exists(path):
    raise DataError(f"{label}: file not found")
  if os.path.isdir(path):
    raise DataError(f"{label}: is a directory, expected a file")
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as e:
    raise DataError(f"{label}: cannot read ({one_line(e)})") from e
  if head.startswith(_ZIP_MAGIC):
    raise DataError(f"{label}: is a .npz/zip archive; save one array or "
                    f"dict with np.save instead")
  if head.startswith(_NPY_MAGIC):
    payload = load_npy(path, label)
    if isinstance(payload, dict):
      matrix = load_npy_dict(path, item_asins, name=name, payload=payload)
      kind = f"pickled dict asin -> vector, {matrix.shape[1]}-d"
    else:
      matrix = load_npy_matrix(path, n_items, name=name, payload=payload)
      kind = f"[{n_items} x {matrix.shape[1]}] matrix"
  else:
    matrix = load_doc2vec_file(path, item_asins, name=name)
    kind = f"gensim Doc2Vec model, {matrix.shape[1]}-d"
  if matrix.shape[0] != n_items:
    raise DataError(f"{label}: has {matrix.shape[0]} rows, expected "
                    f"n_items = {n_items}")
  return matrix, f"{name}: {path} ({kind})"


def load_doc2vec_file(path: str,
                      item_asins: Optional[Sequence[Optional[str]]],
                      name: str = "text") -> np.ndarray:
  """Loads a gensim Doc2Vec model file and returns `doc2vec_matrix` of it.

  Raises:
    DataError: not a loadable Doc2Vec model, no asins known, missing tags.
  """
  label = f"{path} (modality `{name}`)"
  if item_asins is None:
    raise DataError(f"{label}: a Doc2Vec model is looked up by asin, but the "
                    f"interactions have no `asin` column")
  try:
    from gensim.models.doc2vec import Doc2Vec  # pylint: disable=g-import-not-at-top
    model = Doc2Vec.load(path)
  except Exception as e:  # pylint: disable=broad-except
    # gensim's pickle-based loader can fail in many ways on a foreign file.
    raise DataError(
        f"{label}: not a .npy file and not a loadable gensim Doc2Vec model "
        f"({type(e).__name__}: {one_line(e)})") from e
  return doc2vec_matrix(model, list(item_asins), model_path=label)


def load_npy_dict(path: str,
                  item_asins: Optional[Sequence[Optional[str]]],
                  name: str = "image",
                  payload: Optional[dict] = None) -> np.ndarray:
  """Reads a `.npy` pickled dict asin -> vector (the release's image file).

  Args:
    path: the file.
    item_asins: n_items asins (None where unknown -> zero row + warning).
    name: the modality, for messages.
    payload: the already-loaded dict, to skip reading the file again.

  Returns:
    float32 [n_items, d].

  Raises:
    DataError: not a dict, ragged/non-numeric/non-finite vectors, missing
      asins.
  """
  label = f"{path} (modality `{name}`)"
  if payload is None:
    payload = load_npy(path, label)
  if not isinstance(payload, dict):
    raise DataError(f"{label}: expected a pickled dict asin -> vector. "
                    f"Received: {type(payload).__name__}")
  if item_asins is None:
    raise DataError(f"{label}: a dict of vectors is looked up by asin, but "
                    f"the interactions have no `asin` column")
  table = {_key_str(k): v for k, v in payload.items()}
  if not table:
    raise DataError(f"{label}: the dict is empty")
  missing = [a for a in item_asins if a is not None and a not in table]
  if missing:
    raise DataError(f"{label}: {len(missing)} of {len(item_asins)} item asins "
                    f"have no vector in the dict, e.g. {show(missing)}")
  known = [i for i, a in enumerate(item_asins) if a is not None]
  dim = None
  rows = []
  for i in known:
    vec = np.asarray(table[item_asins[i]])
    if vec.dtype.kind not in "fiu" or vec.ndim != 1:
      raise DataError(f"{label}: the vector of asin {item_asins[i]!r} must be "
                      f"a 1-D numeric array. Received dtype {vec.dtype}, "
                      f"shape {vec.shape}")
    if dim is None:
      dim = vec.shape[0]
    elif vec.shape[0] != dim:
      raise DataError(f"{label}: vectors differ in length: asin "
                      f"{item_asins[i]!r} has {vec.shape[0]}, earlier ones "
                      f"{dim}")
    rows.append(vec)
  if dim is None:  # no item has an asin: take the width from the dict.
    dim = int(np.asarray(next(iter(table.values()))).reshape(-1).shape[0])
  out = np.zeros((len(item_asins), dim), np.float32)
  if rows:
    out[known] = np.stack(rows).astype(np.float32)
  warn_unknown(len(item_asins) - len(known), label)
  check_feature_matrix(out, label)
  return out


def load_npy_matrix(path: str, n_items: int, name: str = "features",
                    payload: Optional[np.ndarray] = None) -> np.ndarray:
  """Reads a plain `.npy` [n_items, d] numeric matrix, row i = item i.

  Raises:
    DataError: unreadable, not 2-D, non-numeric dtype, wrong row count, or a
      NaN/infinite value (the first one is named by row and column).
  """
  label = f"{path} (modality `{name}`)"
  arr = load_npy(path, label) if payload is None else payload
  if not isinstance(arr, np.ndarray):
    raise DataError(f"{label}: expected a numeric matrix. Received: "
                    f"{type(arr).__name__}")
  if arr.ndim != 2:
    raise DataError(f"{label}: must be a 2-D [n_items, d] matrix. Received "
                    f"shape {arr.shape}")
  if arr.dtype.kind not in "fiu":
    raise DataError(f"{label}: must hold float or integer values. Received "
                    f"dtype {arr.dtype}")
  if arr.shape[0] != n_items:
    raise DataError(f"{label}: has {arr.shape[0]} rows, expected n_items = "
                    f"{n_items} (row i = item i)")
  return check_feature_matrix(arr, label)


def check_feature_matrix(matrix: Any, label: str,
                         n_rows: Optional[int] = None) -> np.ndarray:
  """Validates a feature matrix and returns it as float32.

  Args:
    matrix: array-like [n_items, d].
    label: what it is (file or modality), first thing in any message.
    n_rows: the row count it must have, if known.

  Returns:
    The matrix as a float32 numpy array.

  Raises:
    DataError: not 2-D, non-numeric, wrong rows, no columns, or a value that
      is NaN/infinite or overflows float32 (first one named).
  """
  arr = np.asarray(matrix)
  if arr.ndim != 2:
    raise DataError(f"{label}: feature matrix must be 2-D [n_items, d]. "
                    f"Received shape {arr.shape}")
  if arr.dtype.kind not in "fiu":
    raise DataError(f"{label}: feature matrix must hold float or integer "
                    f"values. Received dtype {arr.dtype}")
  if n_rows is not None and arr.shape[0] != n_rows:
    raise DataError(f"{label}: feature matrix has {arr.shape[0]} rows, "
                    f"expected n_items = {n_rows} (row i = item i)")
  if arr.shape[1] == 0:
    raise DataError(f"{label}: feature matrix has 0 columns")
  with np.errstate(over="ignore", invalid="ignore"):
    out = arr.astype(np.float32, copy=False)
  finite = np.isfinite(out)
  if not finite.all():
    r, c = (int(v) for v in np.argwhere(~finite)[0])
    value = arr[r, c]
    rule = ("is not finite" if not np.isfinite(value)
            else "overflows float32")
    raise DataError(f"{label}: value at row {r} (item {r}), column {c} "
                    f"{rule} (NaN and infinities are not allowed). "
                    f"Received: {value.item()!r}")
  return out


def load_npy(path: str, label: str) -> Any:
  """np.load with pickles allowed; retries latin1 for Python-2 pickles."""
  def load(**kwargs):
    payload = np.load(path, allow_pickle=True, **kwargs)
    if (isinstance(payload, np.ndarray) and payload.dtype == object and
        payload.ndim == 0):
      payload = payload.item()
    return payload

  try:
    return load()
  except UnicodeError:  # numpy re-raises the pickle's UnicodeDecodeError.
    pass
  except Exception as e:  # pylint: disable=broad-except
    # np.load raises ValueError/OSError/EOFError/UnpicklingError/... on a
    # truncated or corrupt file; all mean the same to the user.
    raise DataError(f"{label}: cannot read .npy file "
                    f"({type(e).__name__}: {one_line(e)})") from e
  try:
    return load(encoding="latin1")
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{label}: cannot read .npy file, also not as a Python-2 "
                    f"pickle ({type(e).__name__}: {one_line(e)})") from e


def _key_str(key: Any) -> str:
  if isinstance(key, bytes):
    return key.decode("utf-8", errors="replace")
  return str(key)


def warn_unknown(n_unknown: int, label: str) -> None:
  if n_unknown:
    logger.warning("%s: %d item ids have no known asin (they occur in no "
                   "interaction); their feature rows are zero", label,
                   n_unknown)


def show(values: Sequence[Any]) -> str:
  shown = ", ".join(repr(v) for v in values[:_MAX_SHOWN])
  return shown + (", ..." if len(values) > _MAX_SHOWN else "")


def one_line(err: BaseException) -> str:
  return " ".join(str(err).split())[:200]


def doc2vec_matrix(model: Any,
                   asins: Sequence[Optional[str]],
                   model_path: Optional[str] = None) -> np.ndarray:
  """Stacks `model.dv[asin]` for each item, row i = item i.

  Args:
    model: a gensim 4 Doc2Vec model (document tags are asins).
    asins: n_items asins; None marks an item with no known asin, which gets
      an all-zero row (with a warning).
    model_path: the file the model came from, named in errors.

  Returns:
    float32 [n_items, model.dv.vector_size].

  Raises:
    DataError: some asins are not tags of the model, or vectors not finite.
  """
  where = model_path or "Doc2Vec model"
  dv = getattr(model, "dv", None)
  if dv is None:
    raise DataError(f"{where}: not a gensim 4 Doc2Vec model (no `dv` "
                    f"document vectors); got {type(model).__name__}")
  dim = int(dv.vector_size)
  missing = [a for a in asins if a is not None and a not in dv]
  if missing:
    raise DataError(f"{where}: {len(missing)} of {len(asins)} item asins are "
                    f"not document tags of the model, e.g. {show(missing)}")
  out = np.zeros((len(asins), dim), np.float32)
  known = [i for i, a in enumerate(asins) if a is not None]
  if known:
    out[known] = np.stack([dv[asins[i]] for i in known]).astype(np.float32)
  warn_unknown(len(asins) - len(known), where)
  check_feature_matrix(out, where)
  return out
