"""The per-round evaluation callback of a run: evaluates every split each
round, selects the best round on --select_metric, stops early, writes
metrics.jsonl and prints the round's line.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import keras
from maml_tf.evaluate import per_user as per_user_lib
from maml_tf.evaluate.full_ranking import Evaluator, same_weights
from maml_tf.evaluate.records import _flatten, format_record, read_records
from maml_tf import fileio




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
    test_rounds: "all": the test split is evaluated every round; "last":
      only at `last_step` and at a round that stops training early (the
      other rounds' records have no "test"). Only with a validation split to
      select on, or in a run whose result is its last round (a refit).
    last_step: the run's last step (its --train_steps).
  """

  PROGRESS_USERS = 2000

  def __init__(self, evaluators, eva_batches, workdir, select_metric,
               modalities=(), progress=None, patience=0, test_rounds="all",
               last_step=None):
    super().__init__()
    if test_rounds not in ("all", "last"):
      raise ValueError(f"`test_rounds` must be all or last. Received: "
                       f"{test_rounds!r}")
    if test_rounds == "last" and last_step is None:
      raise ValueError("`test_rounds='last'` needs the run's `last_step`")
    self.test_rounds, self.last_step = test_rounds, last_step
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
    # "best" / "last" -> the test users' values of the best round so far and
    # of the last round evaluated in this process (`per_user.block`; see
    # maml_tf/evaluate/per_user.py for the rounds evaluated before a resume).
    self.per_user = {}

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
    with fileio.atomic_writer(self.path) as f:
      for record in self.records:
        f.write(json.dumps(record) + "\n")
    return self.records

  def _progress(self, evaluator):
    if self.progress is not None:
      return bool(self.progress)
    return (self.params or {}).get("verbose") == 1 and (
        evaluator.n_users > self.PROGRESS_USERS)

  def tests_at(self, step) -> bool:
    """Whether the round of `step` evaluates the test split (besides a
    round that stops training early, known once its validation is in)."""
    return self.test_rounds == "all" or step >= self.last_step

  def same_weights(self):
    """`full_ranking.same_weights` of the full-ranking evaluators' models."""
    return same_weights({id(e.model): e.model for e in self.evaluators.values()
                         if isinstance(e, Evaluator)}.values())

  def evaluate_split(self, record, split):
    """Adds `split`'s metrics and seconds to the round's `record`."""
    evaluator = self.evaluators[split]
    start = time.perf_counter()
    record[split] = evaluator(progress=self._progress(evaluator))
    record[f"{split}_seconds"] = round(time.perf_counter() - start, 3)

  def evaluate(self, step, logs=None, test=True):
    """The round's record: every split's metrics (the test split's only
    when `test`), the extras and the train logs."""
    record = {"step": int(step), "round": int(step // self.eva_batches)}
    with self.same_weights():  # one preparation for every split
      for split in self.evaluators:
        if test or split != "test":
          self.evaluate_split(record, split)
    for name, measure in self.extras.items():
      record[name] = measure()
    if logs:
      record["train"] = {k: float(v) for k, v in logs.items()
                         if not k.startswith(("test_", "valid_")) and "/" not in k}
    return record

  def append_record(self, record):
    """Adds a round to the records and to metrics.jsonl. The file is
    rewritten whole (atomically, as every file a run keeps), so a kill
    leaves the old rounds or the new ones, never a part of a line."""
    self.records.append(record)
    with fileio.atomic_writer(self.path) as f:
      for kept in self.records:
        f.write(json.dumps(kept) + "\n")

  def on_epoch_end(self, epoch, logs=None):
    if (self.params or {}).get("verbose") == 1:
      print(flush=True)  # off the line Keras' progress bar is drawing
    step = (epoch + 1) * self.eva_batches
    record = self.evaluate(step, logs, test=self.tests_at(step))
    if "test" in self.evaluators and "test" not in record:
      self.records.append(record)
      stops = self.should_stop()
      self.records.pop()
      if stops:  # the last round after all (the same weights)
        with self.same_weights():
          self.evaluate_split(record, "test")
    self.append_record(record)
    if "test" in record:
      self.keep_per_user("last", step)
      if self.best_record() is record:
        self.keep_per_user("best", step)
    self.write_summary(finished=False)
    if logs is not None:
      for split in self.evaluators:
        for name, value in record.get(split, {}).items():
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

  def keep_per_user(self, label, step):
    """Keeps, as `label`, the per-user values of the test evaluator's latest
    call (the weights of `step`); an evaluator without them keeps none."""
    latest = getattr(self.evaluators.get("test"), "per_user", None)
    if latest is None:
      self.per_user.pop(label, None)
    else:
      self.per_user[label] = per_user_lib.block(latest, step)

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
    fileio.write_json_atomic(os.path.join(self.workdir, "metrics.json"), self.summary)
    return self.summary

  def ranking(self):
    """{"ranking": {split: how it ranks}} for the evaluators that describe
    it (two-stage ones: their candidates and agreement); {} when none does
    (every split ranks by the protocol's own rule)."""
    described = {split: e.describe() for split, e in self.evaluators.items()
                 if callable(getattr(e, "describe", None))}
    return {"ranking": described} if described else {}

  def summarize(self, finished):
    if not self.records:
      return dict({"finished": finished, "rounds": 0,
                   "selection": self.selection}, **self.ranking(),
                  **self.extra_summary)
    return dict({
        "finished": finished,
        "rounds": len(self.records),
        "selection": self.selection,
        "select_split": self.select_split,
        "select_metric": self.select_metric,
        "modalities": list(self.modalities),
        "best": self.best_record(),
        "last": self.records[-1],
    }, **self.ranking(), **self.extra_summary)
