"""SavedModel export for TF Serving: six signatures, written atomically.

Layout: `<export_dir>/<name>/<version>/`, the folder TF Serving watches
(`--model_base_path=<export_dir>/<name>`); versions are positive integers and
TF Serving serves the largest. A version is built in a hidden temporary
folder beside it (`.tmp-export-*`, a name TF Serving ignores) and appears by
one `os.rename`, so a half-written version is never visible; an existing
version is never overwritten.

The six signatures and the graphs behind them are described in
`maml_tf.export.signatures`; the latency and quality measures of an export
are in `maml_tf.export.measures`.

The SavedModel is written with `tf.saved_model.save` (each signature traced
once; see `_write_archive`) and carries all it needs as variables: the
model's weights, its `serving_tables()` (every tensor constant at serving
time, computed once here: e.g. an attention's item half, a graph model's
propagated tables, so no graph is needed at serving time), the known items
as a CSR (`known_indptr`, `known_items`) and the TFRS index. It loads with
plain `tf.saved_model.load` (or TF Serving), without maml_tf, Keras or TFRS.

Beside the SavedModel, `assets.extra/export_info.json` records what was
exported (sizes, k, N, dtypes, the signatures, under `raw_ids` which keys
the *_by_id signatures take, the run's flags when known); from that folder
TF Serving reads only its warm-up file, which we do not write.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile

# Before keras / anything that could resolve tf.keras: signatures imports
# maml_tf/export/retrieval.py (TFRS) first.
from maml_tf.export.signatures import (  # pylint: disable=g-bad-import-order
    BY_ID, EMPTY_KEY, ID_DTYPE, SIGNATURES, ServingGraphs, known_pairs)

import keras
import numpy as np
import tensorflow as tf
# Internal, and the one way to trace a signature the way the save will.
from tensorflow.python.saved_model import save_context  # pylint: disable=g-direct-tensorflow-import

from maml_tf.data import vocab as vocab_lib
from maml_tf.errors import UsageError
from maml_tf.export.measures import INFO_FILE, latency, load_info, ranking_quality
from maml_tf.train.checkpoint import quiet_tf_logs

# Public here: the export itself, and (for callers that import this module
# alone) the graphs and measures it builds on.
__all__ = ["export_saved_model", "export_from_run", "versions", "ServingGraphs",
           "known_pairs", "load_info", "latency", "ranking_quality"]

TMP_PREFIX = ".tmp-export-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------ the folders


def versions(base) -> list:
  """The numeric version folders under `base`, ascending."""
  if not os.path.isdir(base):
    return []
  return sorted(int(n) for n in os.listdir(base)
                if n.isdigit() and os.path.isdir(os.path.join(base, n)))


def export_saved_model(model, dataset, export_dir, name, version=None, topk=10,
                       retrieve_candidates=200, info=None) -> str:
  """Writes `export_dir/name/version/`, a SavedModel for TF Serving.

  Args:
    model: a built `RankingModel` (its weights are read now).
    dataset: the `Dataset` it was trained on (its known items are excluded;
      its vocabularies key the *_by_id signatures).
    export_dir: base folder of exports.
    name: the model's name (the folder TF Serving's MODEL_NAME points at).
    version: a positive int; default 1 + the largest existing version, or 1.
    topk: k of `serving_default` and `retrieve`.
    retrieve_candidates: N, the candidates `retrieve` re-ranks (>= topk).
    info: optional JSON-able dict stored in assets.extra/export_info.json.

  Returns:
    The path of the new version folder.

  Raises:
    UsageError: a bad argument, or `version` names an existing version.
  """
  name = _check_arguments(name, version, topk, retrieve_candidates)
  base = os.path.join(os.fspath(export_dir), name)
  if version is not None:
    _refuse_existing(base, int(version))
  os.makedirs(base, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=base)
  try:
    graphs = ServingGraphs(model, dataset, topk, retrieve_candidates)
    _write_archive(graphs, tmp)
    record = _info_record(name, model, graphs, topk, retrieve_candidates)
    record.update(info or {})
    _write_info(tmp, record)
    return _publish(tmp, base, version)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _check_arguments(name, version, topk, retrieve_candidates) -> str:
  """The export's folder name, once the arguments are valid, else UsageError."""
  name = str(name)
  if not _NAME.match(name):
    raise UsageError("`name` must be a folder name of letters, digits, '_', "
                     f"'.', '-' not starting with '.'. Received: {name!r}")
  if version is not None and (isinstance(version, bool) or
                              not isinstance(version, (int, np.integer)) or
                              version < 1):
    raise UsageError(f"`version` must be a positive integer. Received: {version!r}")
  if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
    raise UsageError(f"`topk` must be a positive integer. Received: {topk!r}")
  if (isinstance(retrieve_candidates, bool) or
      not isinstance(retrieve_candidates, (int, np.integer)) or
      retrieve_candidates < topk):
    raise UsageError(f"`retrieve_candidates` must be an integer >= topk ({topk})."
                     f" Received: {retrieve_candidates!r}")
  return name


def _write_archive(graphs, tmp):
  """Writes the SavedModel of `graphs`' six signatures into `tmp`.

  Each signature is traced once. `tf.saved_model.save` traces its
  signatures inside a save context, whose options are part of a trace's
  cache key; tracing them beforehand in a save context with the same
  options makes the save reuse these traces (a trace outside one would be
  keyed apart and done again: `keras.export.ExportArchive` traces every
  endpoint twice that way). The traces also name the variables the
  signatures read, which the root tracks so that they are saved, and only
  they (a graph model's raw embeddings, replaced by its propagated serving
  tables, stay out).
  """
  functions = graphs.endpoints()
  options = tf.saved_model.SaveOptions()
  # TensorFlow logs a few INFO lines per signature while tracing and saving
  # (renamed inputs, sharding, fingerprint), through absl: noise for a user.
  with quiet_tf_logs():
    with save_context.save_context(options):
      traced = [fn.get_concrete_function() for fn in functions.values()]
    root = tf.Module()
    root.serving_variables = _variables_read(traced)
    root.lookup_tables = graphs.resources()
    tf.saved_model.save(root, tmp, signatures=functions, options=options)


def _variables_read(concrete_functions) -> list:
  """The variables the functions capture, each once, in first-use order."""
  seen, out = set(), []
  for fn in concrete_functions:
    for v in fn.variables:
      if id(v) not in seen:
        seen.add(id(v))
        out.append(v)
  return out


def _info_record(name, model, graphs, topk, retrieve_candidates) -> dict:
  """What export_info.json records of an export (before the caller's info)."""
  return {
      "name": name, **model.describe(), "topk": int(topk),
      "retrieve_candidates": int(retrieve_candidates),
      "known_pairs": int(graphs.known_items.shape[0]),
      "max_known_per_user": graphs.max_known,
      "id_dtype": ID_DTYPE.name, "signatures": list(SIGNATURES),
      "raw_ids": {
          "signatures": dict(BY_ID),
          "keys": ("the raw ids of the training data, as in "
                   f"<workdir>/{vocab_lib.FOLDER}/{vocab_lib.FILES['users']}"
                   f" and {vocab_lib.FILES['items']}"),
          "users": "identity" if graphs.identity["users"] else "raw",
          "items": "identity" if graphs.identity["items"] else "raw",
          "empty_item_key": EMPTY_KEY},
      "retrieval_metric": graphs.index.metric,
      "explanation": (None if not model.explains else {
          "output": model.explanation_name,
          "labels": (None if model.explanation_labels is None
                     else list(model.explanation_labels))}),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "tensorflow": tf.__version__, "keras": keras.__version__,
  }


def _write_info(tmp, record):
  """Writes `record` to `tmp`'s assets.extra/export_info.json."""
  os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
  with open(os.path.join(tmp, INFO_FILE), "w") as f:
    json.dump(record, f, indent=2)


def _refuse_existing(base, version):
  path = os.path.join(base, str(version))
  if os.path.exists(path):
    raise UsageError(
        f"`version` {version} already exists at {path}; exports never overwrite"
        " a version: pass another --version or omit it for the next one")


def _publish(tmp, base, version):
  """Renames the finished temporary folder to its version, atomically."""
  os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a server may run as another user
  while True:
    number = version if version is not None else max(versions(base), default=0) + 1
    _refuse_existing(base, number)
    target = os.path.join(base, str(number))
    try:
      os.rename(tmp, target)
    except OSError:
      if version is None and os.path.exists(target):
        continue  # a concurrent export took this number: take the next
      raise
    break
  try:  # make the rename durable where the platform allows it
    fd = os.open(base, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError:
    pass
  return target


def export_from_run(config, model, dataset, version=None, info=None) -> str:
  """The export at the end of a run: settings from the run's Config.

  Writes `<config.export_dir>/<config.model_name>/<version>/` with
  k = config.export_topk, N = config.retrieve_candidates, and the run's
  flags in export_info.json. Returns the version folder.
  """
  record = {"flags": config.to_flagfile(), "workdir": config.workdir,
            "dataset": dataset.summary()}
  record.update(info or {})
  return export_saved_model(
      model, dataset, config.export_dir, config.model_name, version=version,
      topk=config.export_topk, retrieve_candidates=config.retrieve_candidates,
      info=record)
