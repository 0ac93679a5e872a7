"""Measures of an export: the export_info.json written beside it, the
in-process latency of a signature, and the test-set ranking quality of the
signatures."""

from __future__ import annotations

import json
import os
import time
from typing import Dict

# Before anything that could resolve tf.keras: signatures imports
# maml_tf/export/retrieval.py (TFRS) first.
from maml_tf.export.signatures import ID_DTYPE, INT_SIGNATURES  # pylint: disable=g-bad-import-order

import numpy as np
import tensorflow as tf

from maml_tf.evaluate import metrics as metrics_lib
from maml_tf.errors import UsageError

INFO_FILE = os.path.join("assets.extra", "export_info.json")


def load_info(saved_model_path) -> dict:
  """The export_info.json written beside a SavedModel."""
  with open(os.path.join(saved_model_path, INFO_FILE)) as f:
    return json.load(f)


def latency(saved_model_path, signature="serving_default", batch_users=1,
            repeats=50, warmup=3, seed=0, loaded=None) -> Dict[str, float]:
  """In-process latency of one signature of an exported model.

  Loads the SavedModel with `tf.saved_model.load` (as a server would), calls
  the signature `warmup` times, then `repeats` times on random valid ids
  (new ones each call), timing each call until its outputs are in numpy.

  Args:
    saved_model_path: a version folder written by `export_saved_model`.
    signature: serving_default, score or retrieve (the int signatures: the
      random requests are indices; a *_by_id signature is those plus a
      table lookup).
    batch_users: users per request (for `score`: pairs per request).
    repeats: timed calls.
    warmup: untimed calls first.
    seed: seed of the random ids.
    loaded: an already loaded SavedModel of that path (skips loading).

  Returns:
    {"signature", "batch_users", "repeats", "p50_ms", "p99_ms", "mean_ms"}.
  """
  if signature not in INT_SIGNATURES:
    raise UsageError(f"`signature` must be one of {', '.join(INT_SIGNATURES)} "
                     f"(latency draws integer ids). Received: {signature!r}")
  info = load_info(saved_model_path)
  loaded = loaded if loaded is not None else tf.saved_model.load(saved_model_path)
  fn = loaded.signatures[signature]
  rng = np.random.default_rng(seed)

  def request():
    args = {"user_ids": tf.constant(
        rng.integers(0, info["n_users"], batch_users), ID_DTYPE)}
    if signature == "score":
      args["item_ids"] = tf.constant(
          rng.integers(0, info["n_items"], batch_users), ID_DTYPE)
    return args

  for _ in range(warmup):
    {k: v.numpy() for k, v in fn(**request()).items()}
  times = []
  for _ in range(repeats):
    args = request()
    start = time.perf_counter()
    {k: v.numpy() for k, v in fn(**args).items()}
    times.append(1e3 * (time.perf_counter() - start))
  times = np.asarray(times)
  return {"signature": signature, "batch_users": int(batch_users),
          "repeats": int(repeats),
          "p50_ms": float(np.percentile(times, 50)),
          "p99_ms": float(np.percentile(times, 99)),
          "mean_ms": float(times.mean())}


def ranking_quality(saved_model_path, dataset, signatures=("serving_default", "retrieve"),
                    batch_users=256, loaded=None) -> Dict[str, Dict[str, float]]:
  """Test-set top-k metrics of the exported signatures (the paper's protocol).

  Every user with a test item is served in batches; the signatures exclude
  train and validation items themselves, as `maml_tf.evaluate.full_ranking` does, so
  "serving_default" reproduces the evaluator's figures and "retrieve" shows
  what the two-stage shortcut costs.

  Args:
    saved_model_path: a version folder written by `export_saved_model`.
    dataset: the Dataset the model was exported with.
    signatures: those to measure (each takes `user_ids` alone).
    batch_users: users per call.
    loaded: an already loaded SavedModel of that path.

  Returns:
    {signature: {"ndcg@k", "recall@k", "hr@k", "precision@k"}} with k the
    exported topk, plus "overlap" {signature: mean share of the top k it
    has in common with serving_default} when both were measured.
  """
  info = load_info(saved_model_path)
  loaded = loaded if loaded is not None else tf.saved_model.load(saved_model_path)
  ptr, items = metrics_lib.group_by_user(dataset.test, dataset.n_users)
  users = np.flatnonzero(np.diff(ptr))
  targets = [items[ptr[u]:ptr[u + 1]] for u in users]
  tops, out = {}, {}
  for name in signatures:
    fn = loaded.signatures[name]
    parts = [fn(user_ids=tf.constant(users[s:s + batch_users], ID_DTYPE))["item_ids"].numpy()
             for s in range(0, len(users), batch_users)]
    tops[name] = np.concatenate(parts) if parts else np.zeros((0, info["topk"]), np.int64)
    out[name] = metrics_lib.ranking_metrics(tops[name], targets, (info["topk"],))
  if "serving_default" in tops and len(tops) > 1:
    full = tops["serving_default"]
    out["overlap"] = {
        name: float(np.mean([len(np.intersect1d(a[a >= 0], b[b >= 0])) / max(1, (b >= 0).sum())
                             for a, b in zip(top, full)]))
        for name, top in tops.items() if name != "serving_default"}
  return out
