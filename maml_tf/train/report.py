"""A finished run's summary (metrics.json) and what the console shows of it."""

from __future__ import annotations

import os

from maml_tf.config import Config
from maml_tf.data.dataset import Dataset
from maml_tf.evaluate import records


def summarize(config: Config, ds: Dataset, evaluation, checkpointer,
              start_step: int, train_seconds: float) -> dict:
  """The summary of a run whose rounds are done: the evaluation's own
  (selection, last round, ...), its checkpoints, the dataset, and why
  training ended."""
  evaluation.extra_summary["checkpoints"] = checkpointer.info()
  summary = evaluation.summarize(finished=True)
  best = summary["checkpoints"].get("best")
  summary["best_checkpoint"] = (None if best is None
                                else dict(best, **evaluation.best_info()))
  if start_step:
    summary["started_from_step"] = start_step
  summary["train_seconds"] = round(train_seconds, 1)
  summary["dataset"] = ds.summary()
  summary["feature_sources"] = dict(ds.feature_sources)
  best_record = evaluation.best_record()
  last_step = evaluation.records[-1]["step"] if evaluation.records else start_step
  summary["early_stopping"] = {
      "patience": config.patience,
      "stopped_at_step": last_step,
      "reason": ("early_stopping" if evaluation.should_stop()
                 and last_step < config.train_steps else "train_steps"),
      "best_step": None if best_record is None else best_record["step"],
      "rounds_since_best": evaluation.rounds_since_best(),
  }
  return summary


def print_summary(config: Config, summary: dict, is_refit: bool, which: str,
                  step) -> None:
  """The final table, the best checkpoint, early stopping, refit and export
  lines."""
  print(records.metrics_table(summary, config.topk), flush=True)
  best = summary["checkpoints"].get("best")
  if best is not None and not is_refit:
    how = summary["best_checkpoint"]
    print(f"Best checkpoint: {os.path.join(config.workdir, best['path'])} "
          f"(step {best['step']}, selected by {how['selected_by']} "
          f"{how['metric']})", flush=True)
  stop = summary["early_stopping"]
  if stop["reason"] == "early_stopping":
    print(f"Stopped early at step {stop['stopped_at_step']} "
          f"(--patience={stop['patience']})", flush=True)
  if "refit" in summary:
    print(f"Refit on train + validation for {summary['refit']['step']} "
          f"steps: {summary['refit']['workdir']}", flush=True)
  if config.export:
    print(f"Exported the {which} round (step {step}) to {summary['export']}",
          flush=True)
