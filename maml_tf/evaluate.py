"""Full-ranking top-k evaluation, the paper's protocol (SPEC §5).

For every user with at least one target (test or validation) item: score all
|I| items, drop the items the user is known to have (train, plus validation
when the target is test), take the top k. With hits = target items among
them: Recall = hits / |target_u|, Precision = hits / k, HR = [hits > 0],
NDCG = DCG / IDCG with binary gains, DCG = sum over hit positions (0-based,
after dropping) of 1 / log2(pos + 2), IDCG over the first min(|target_u|, k)
positions. Metrics are averaged over users and kept as fractions (the paper
prints them x100).

Ties in score go to the lower item id (`tf.math.top_k`'s rule).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.errors import DataError

METRICS = ("ndcg", "recall", "hr", "precision")


def group_by_user(pairs, n_users):
  """CSR of (user, item) pairs: (indptr [n_users + 1], items sorted by user)."""
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  order = np.lexsort((pairs[:, 1], pairs[:, 0]))
  indptr = np.zeros(n_users + 1, np.int64)
  np.cumsum(np.bincount(pairs[:, 0], minlength=n_users), out=indptr[1:])
  return indptr, pairs[order, 1]


def ranking_metrics(topk_items, test_items, ks=(10,)) -> Dict[str, float]:
  """Average NDCG, Recall, HR and Precision at each k over the given users.

  Args:
    topk_items: int [U, kmax] ranked item ids per user, best first; -1 marks
      an empty slot (fewer candidates than kmax).
    test_items: U arrays of the users' target items (each non-empty).
    ks: cutoffs, each <= kmax.
  """
  topk_items = np.asarray(topk_items, np.int64)
  sizes = np.array([len(t) for t in test_items], np.int64)
  if len(sizes) != len(topk_items):
    raise ValueError(f"`test_items` has {len(sizes)} users, `topk_items` "
                     f"{len(topk_items)}")
  if (sizes == 0).any():
    raise ValueError("every user in `test_items` needs at least one item")
  if max(ks) > topk_items.shape[1]:
    raise ValueError(f"`ks` must be <= {topk_items.shape[1]}. Received: {ks}")
  stride = int(max(topk_items.max(initial=0), max((t.max() for t in test_items),
                                                  default=0))) + 2
  rows = np.repeat(np.arange(len(sizes)), sizes)
  keys = np.sort(rows * stride + np.concatenate(test_items).astype(np.int64))
  probe = np.arange(len(sizes))[:, None] * stride + topk_items
  found = np.searchsorted(keys, probe)
  hits = (keys[np.minimum(found, len(keys) - 1)] == probe) & (topk_items >= 0)
  out = {}
  for k in ks:
    h = hits[:, :k]
    n_hits = h.sum(1)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    idcg = np.cumsum(discount)[np.minimum(sizes, k) - 1]
    out[f"ndcg@{k}"] = float(np.mean((h * discount).sum(1) / idcg))
    out[f"recall@{k}"] = float(np.mean(n_hits / sizes))
    out[f"hr@{k}"] = float(np.mean(n_hits > 0))
    out[f"precision@{k}"] = float(np.mean(n_hits / k))
  return out


def top_k_excluding(scores, exclude, k):
  """Best-first item ids per row of `scores`, never an excluded item.

  Rows with fewer than k candidates are padded with -1.
  """
  scores = np.array(scores, np.float32)
  rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
  if len(rows):
    scores[rows, np.concatenate(exclude).astype(np.int64)] = -np.inf
  values, idx = tf.math.top_k(scores, k=min(k, scores.shape[1]))
  idx = np.where(np.isneginf(values.numpy()), -1, idx.numpy())
  if idx.shape[1] < k:
    idx = np.pad(idx, [(0, 0), (0, k - idx.shape[1])], constant_values=-1)
  return idx


def default_chunks(n_items, width, budget=1 << 25):
  """(users per chunk, items per chunk) keeping chunk x width <= ~budget."""
  n_item_chunks = -(-n_items // 8192)
  item_chunk = -(-n_items // n_item_chunks)
  user_chunk = int(max(1, min(512, budget // (item_chunk * width))))
  return user_chunk, item_chunk


class Evaluator:
  """Ranks every target user's unseen items with a model and scores top-k."""

  def __init__(self, model, exclude_pairs, target_pairs, ks=(10,),
               user_chunk=None, item_chunk=None, jit_compile=True):
    n_users, n_items = model.n_users, model.n_items
    self.model, self.ks, self.kmax = model, tuple(ks), max(ks)
    auto_users, auto_items = default_chunks(n_items, model.score_width)
    self.user_chunk = user_chunk or auto_users
    self.item_chunk = item_chunk or auto_items
    self.excl_ptr, self.excl_items = group_by_user(exclude_pairs, n_users)
    ptr, items = group_by_user(target_pairs, n_users)
    self.users = np.flatnonzero(np.diff(ptr))
    self.targets = [items[ptr[u]:ptr[u + 1]] for u in self.users]
    k = min(self.kmax, n_items)
    item_chunk = self.item_chunk

    # Scoring has one fixed shape per chunk (users are padded), so it can be
    # compiled once; the exclusion list differs in length per chunk, so the
    # masking and top-k stay outside XLA (a dynamic shape would recompile).
    self._score = tf.function(
        lambda users: model.score_items(users, item_chunk),
        jit_compile=jit_compile, reduce_retracing=True,
        input_signature=[tf.TensorSpec([None], tf.int32)])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 2], tf.int32)])
    def rank(users, excl):
      scores = self._score(users)
      scores = tf.tensor_scatter_nd_update(
          scores, excl, tf.fill([tf.shape(excl)[0]], -np.inf))
      return tf.math.top_k(scores, k=k)

    self._rank = rank

  @property
  def n_users(self):
    return len(self.users)

  def top_k(self, progress=False) -> np.ndarray:
    """[n target users, kmax] best-first unseen item ids (-1: no candidate)."""
    out = []
    chunk = self.user_chunk
    self.model.prepare_scoring()  # tables derived from the weights, once
    bar = keras.utils.Progbar(len(self.users), unit_name="user") if progress else None
    for start in range(0, len(self.users), chunk):
      users = self.users[start:start + chunk]
      n = len(users)
      if n < chunk:  # keep one traced shape
        users = np.concatenate([users, np.full(chunk - n, users[0])])
      lo, hi = self.excl_ptr[users], self.excl_ptr[users + 1]
      rows = np.repeat(np.arange(chunk), hi - lo)
      cols = self.excl_items[np.concatenate(
          [np.arange(a, b) for a, b in zip(lo, hi)]) if len(rows) else []]
      excl = np.stack([rows, cols], 1).astype(np.int32).reshape(-1, 2)
      values, idx = self._rank(tf.constant(users, tf.int32), tf.constant(excl))
      idx = np.where(np.isneginf(values.numpy()), -1, idx.numpy())[:n]
      out.append(idx)
      if bar is not None:
        bar.add(n)
    topk = np.concatenate(out) if out else np.zeros((0, self.kmax), np.int64)
    if topk.shape[1] < self.kmax:
      topk = np.pad(topk, [(0, 0), (0, self.kmax - topk.shape[1])],
                    constant_values=-1)
    return topk

  def __call__(self, progress=False) -> Dict[str, float]:
    if not len(self.users):
      return {}
    return ranking_metrics(self.top_k(progress), self.targets, self.ks)


def select_split(evaluators: Mapping[str, "Evaluator"]) -> str:
  return "valid" if "valid" in evaluators else "test"


class EvaluationCallback(keras.callbacks.Callback):
  """Runs the evaluators every round (one Keras epoch = `eva_batches` steps).

  Appends one JSON object a round to <workdir>/metrics.jsonl (flushed and
  fsynced) and rewrites <workdir>/metrics.json (last and best round, and how
  "best" was chosen) after every round, so a crash keeps every finished
  evaluation. The round's metrics also go into the Keras epoch logs as
  `<split>_<metric>` (e.g. `test_ndcg@10`) for the callbacks after it.

  Args:
    evaluators: {"valid": Evaluator, "test": Evaluator} (valid optional).
    eva_batches: steps per round.
    workdir: where metrics.jsonl and metrics.json go.
    select_metric: the metric that picks the best round, e.g. "ndcg@10".
    modalities: recorded in the summary.
    progress: a progress bar per evaluation: True, False, or None for one
      only on evaluations of more than PROGRESS_USERS users while Keras shows
      its progress bar.
    patience: early stopping: once this many rounds in a row have not
      improved on the best round's select metric, `model.stop_training` is
      set (the round's checkpoint is still written) and `stop_reason` becomes
      "early_stopping". 0: never.
  """

  PROGRESS_USERS = 2000

  def __init__(self, evaluators, eva_batches, workdir, select_metric,
               modalities=(), progress=None, patience=0):
    super().__init__()
    self.patience = int(patience)
    self.stop_reason = None
    self.evaluators = dict(evaluators)
    self.eva_batches, self.workdir = int(eva_batches), workdir
    self.select_split = select_split(self.evaluators)
    self.select_metric = select_metric
    self.modalities = tuple(modalities)
    self.progress = progress
    self.records = []
    self.summary = None
    self.extra_summary = {}  # merged into every summary (e.g. checkpoints)
    # name -> fn() -> {key: value}: measured every round into the record
    # (e.g. "preservation") and the logs as "<name>/<key>/<subkey>".
    self.extras = {}

  @property
  def path(self):
    return os.path.join(self.workdir, "metrics.jsonl")

  @property
  def selection(self):
    if self.select_split == "valid":
      return f"best round by validation {self.select_metric}"
    return (f"best round by test {self.select_metric} (the release's protocol,"
            " which selects on the test set; use --validation_fraction to avoid)")

  def load_existing(self):
    """Reads the records a previous, interrupted run already wrote.

    A last line cut short by a crash is ignored.
    """
    self.records = read_records(self.path)
    return self.records

  def resume(self, step):
    """Keeps only the records of rounds up to `step`, on disk too.

    `step` is the checkpoint a run resumes from: metrics.jsonl is rewritten
    (atomically) with exactly the rounds up to it, since the rounds after it
    will be trained and evaluated again.
    """
    self.records = [r for r in read_records(self.path) if r["step"] <= step]
    tmp = f"{self.path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      for record in self.records:
        f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)
    return self.records

  def _progress(self, evaluator):
    if self.progress is not None:
      return bool(self.progress)
    return (self.params or {}).get("verbose") == 1 and (
        evaluator.n_users > self.PROGRESS_USERS)

  def evaluate(self, step, logs=None):
    record = {"step": int(step), "round": int(step // self.eva_batches)}
    for split, evaluator in self.evaluators.items():
      start = time.perf_counter()
      record[split] = evaluator(progress=self._progress(evaluator))
      record[f"{split}_seconds"] = round(time.perf_counter() - start, 3)
    for name, measure in self.extras.items():
      record[name] = measure()
    if logs:
      record["train"] = {k: float(v) for k, v in logs.items()
                         if not k.startswith(("test_", "valid_")) and "/" not in k}
    return record

  def on_epoch_end(self, epoch, logs=None):
    if (self.params or {}).get("verbose") == 1:
      print(flush=True)  # off the line Keras' progress bar is drawing
    step = (epoch + 1) * self.eva_batches
    record = self.evaluate(step, logs)
    self.records.append(record)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.write_summary(finished=False)
    if logs is not None:
      for split in self.evaluators:
        for name, value in record[split].items():
          logs[f"{split}_{name}"] = value
      for name in self.extras:
        for key, value in _flatten(record[name]).items():
          logs[f"{name}/{key}"] = value
    print(format_record(record, self.select_metric), flush=True)
    if self.should_stop():
      self.stop_reason = "early_stopping"
      if self.model is not None:
        self.model.stop_training = True
      best = self.best_record()
      print(f"Early stopping at step {step}: no better validation "
            f"{self.select_metric} for {self.rounds_since_best()} evaluations "
            f"(--patience={self.patience}); best round: step {best['step']}",
            flush=True)

  def rounds_since_best(self) -> int:
    """Rounds after the best one (0 when the last round is the best)."""
    best = self.best_record()
    if best is None:
      return 0
    return sum(1 for r in self.records if r["step"] > best["step"])

  def should_stop(self) -> bool:
    """True once `patience` rounds in a row failed to improve on the best."""
    return bool(self.patience) and self.rounds_since_best() >= self.patience

  def best_record(self):
    """The best round so far (the earliest of equals), or None."""
    if not self.records:
      return None
    key = lambda r: r.get(self.select_split, {}).get(self.select_metric, -1.0)
    return max(self.records, key=key)

  def best_info(self):
    """How the best round was chosen, and its value."""
    best = self.best_record()
    return {
        "selected_by": "validation" if self.select_split == "valid" else "test",
        "split": self.select_split,
        "metric": self.select_metric,
        "value": None if best is None else best.get(self.select_split, {}).get(
            self.select_metric),
    }

  def write_summary(self, finished=False):
    self.summary = self.summarize(finished)
    write_json_atomic(os.path.join(self.workdir, "metrics.json"), self.summary)
    return self.summary

  def summarize(self, finished):
    if not self.records:
      return dict({"finished": finished, "rounds": 0,
                   "selection": self.selection}, **self.extra_summary)
    return dict({
        "finished": finished,
        "rounds": len(self.records),
        "selection": self.selection,
        "select_split": self.select_split,
        "select_metric": self.select_metric,
        "modalities": list(self.modalities),
        "best": self.best_record(),
        "last": self.records[-1],
    }, **self.extra_summary)


def _flatten(tree, prefix=""):
  """{"text": {"all": x}} -> {"text/all": x}."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "/"))
    else:
      out[name] = value
  return out


def read_records(path):
  """The records of a metrics.jsonl ([] when absent).

  A last line cut short by a crash is dropped; a damaged line before the last
  raises DataError.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    lines = f.read().split("\n")
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError:
      if any(rest.strip() for rest in lines[i + 1:]):
        raise DataError(f"{path}: line {i + 1} is not JSON; the file is damaged"
                        " (move it away to start the run afresh)") from None
  return records


def format_record(record, metric):
  parts = [f"step {record['step']}:"]
  for split in ("valid", "test"):
    if split in record and record[split]:
      shown = ", ".join(f"{k} {v:.4f}" for k, v in record[split].items()
                        if k.endswith("@" + metric.split("@")[1]))
      parts.append(f"{split} [{shown}] ({record[split + '_seconds']:.1f}s)")
  return " ".join(parts)


def metrics_table(summary, ks) -> str:
  """The final table: best and last rounds, per split, x100 like the paper."""
  lines = [f"Selection: {summary['selection']}"]
  # The metrics the records hold (all four for the release's protocol, HR
  # and nDCG for leave-one-out), in METRICS order.
  # "refit" (--refit): the model retrained on train + validation for the
  # best round's steps, tested once.
  labels = ("best", "last", "refit")
  present = set()
  for label in labels:
    for split in ("valid", "test"):
      present.update((summary.get(label) or {}).get(split) or {})
  names = [f"{m}@{k}" for k in ks for m in METRICS if f"{m}@{k}" in present]
  header = f"{'round':<18}{'split':<7}" + "".join(f"{n:>14}" for n in names)
  lines.append(header)
  for label in labels:
    record = summary.get(label)
    if not record:
      continue
    for split in ("valid", "test"):
      if split in record and record[split]:
        row = f"{label + ' (step ' + str(record['step']) + ')':<18}{split:<7}"
        row += "".join(f"{100 * record[split][n]:>14.3f}" for n in names)
        lines.append(row)
  lines.append("(metrics x100, as the paper prints them)")
  return "\n".join(lines)


def write_json_atomic(path, obj):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
