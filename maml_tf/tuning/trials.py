"""The records of a search: one per trial (trials.jsonl: status, values, the
validation objective and the test metrics of that same round), the best
trial's flagfile (best.flags) and the console table of the trials."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from maml_tf import fileio
from maml_tf.tuning.space import show

TRIALS_JSONL = "trials.jsonl"
BEST_FLAGS = "best.flags"


def read_json(path):
  """The JSON in `path`, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def failure_message(trial) -> Optional[str]:
  """The one-line reason of a failed trial (keras-tuner keeps a traceback)."""
  text = getattr(trial, "message", None) or ""
  lines = [l for l in text.strip().splitlines() if l.strip()]
  for line in reversed(lines):
    if "Error: " in line:
      return line.split("Error: ", 1)[1]
  return lines[-1] if lines else None


def trial_record(trial, params, base, workdir) -> dict:
  """The record of one keras-tuner trial of `params` over the base Config
  `base`, with the validation-selected round of its run in `workdir`."""
  values = trial.hyperparameters.values
  record = {"trial_id": trial.trial_id, "status": str(trial.status),
            "values": {p.name: values.get(p.name) for p in params},
            "objective": {"name": f"validation {base.select_metric}",
                          "value": trial.score},
            "workdir": workdir}
  hyperband = {k.split("/", 1)[1]: v for k, v in values.items()
               if k.startswith("tuner/")}
  if hyperband:
    record["hyperband"] = hyperband
    record["train_steps"] = hyperband["epochs"] * base.eva_batches
  else:
    record["train_steps"] = base.train_steps
  summary = read_json(os.path.join(workdir, "metrics.json")) or {}
  best = summary.get("best")
  if best:
    record["best_step"] = best.get("step")
    record["valid"] = best.get("valid")
    # The run's result: that round's weights restored and evaluated on test
    # (the round's own record has no test under --test_rounds=last).
    result = (summary.get("results") or {}).get("best") or {}
    record["test_of_that_round"] = (
        result["test"] if result.get("step") == best.get("step")
        and result.get("test") else best.get("test"))
    record["finished"] = summary.get("finished")
  if str(trial.status) == "FAILED":
    record["message"] = failure_message(trial)
  return record


def in_start_order(oracle) -> list:
  """The oracle's trials, in the order they started (any others after)."""
  order = [k for k in oracle.start_order if k in oracle.trials]
  order += sorted(set(oracle.trials) - set(order))
  return [oracle.trials[k] for k in order]


def write_records(tune_dir, records):
  """Rewrites <tune_dir>/trials.jsonl: one record a line."""
  fileio.write_text_atomic(os.path.join(tune_dir, TRIALS_JSONL),
                           "".join(json.dumps(r) + "\n" for r in records))


def best_record(records) -> Optional[dict]:
  """The completed trial of the highest objective, or None."""
  # The earliest trial of equals (keras-tuner's order of equals depends on
  # the order its files were listed).
  done = [r for r in records if r["status"] == "COMPLETED"
          and r["objective"]["value"] is not None]
  return max(done, key=lambda r: r["objective"]["value"], default=None)


def best_flagfile(best: dict, records: Sequence[dict], config, tune_dir: str,
                  budget: str, metric: str, params) -> str:
  """best.flags: `config` (the base run with the best trial's values) as a
  flagfile, under a header saying where it comes from."""
  test = (best.get("test_of_that_round") or {}).get(metric)
  done = sum(r["status"] == "COMPLETED" for r in records)
  header = [
      f"# The best trial ({best['trial_id']}) of the search in {tune_dir}",
      f"# Search: {budget}; {done} trials completed of {len(records)} run",
      f"# Objective: validation {metric} (max) = "
      f"{best['objective']['value']:.6f} at step {best.get('best_step')}"
      + (f"; test {metric} of that round = {test:.6f}" if test is not None else ""),
      "# Searched: " + ", ".join(p.describe() for p in params),
      "# Best values: " + ", ".join(f"--{k}={show(v)}"
                                    for k, v in best["values"].items()),
      "# Run: python scripts/train.py --flagfile="
      f"{os.path.join(tune_dir, BEST_FLAGS)} [--workdir=...]",
  ]
  return "\n".join(header) + "\n" + config.to_flagfile()


def results_table(records: Sequence[dict], metric: str) -> str:
  """The console table of the trials' records (values, steps, validation and
  test `metric`)."""
  names = list(records[0]["values"]) if records else []
  header = (f"{'trial':<7}{'status':<11}" + "".join(f"{n:>16}" for n in names)
            + f"{'steps':>8}{'valid ' + metric:>18}{'test ' + metric:>18}")
  lines = [header]
  for r in records:
    row = f"{r['trial_id']:<7}{r['status']:<11}"
    for n in names:
      v = r["values"].get(n)
      row += f"{(f'{v:.4g}' if isinstance(v, float) else str(v)):>16}"
    row += f"{r['train_steps']:>8}"
    valid = (r.get("valid") or {}).get(metric) if r["status"] == "COMPLETED" else None
    test = (r.get("test_of_that_round") or {}).get(metric) if valid is not None else None
    row += f"{'-' if valid is None else f'{valid:.4f}':>18}"
    row += f"{'-' if test is None else f'{test:.4f}':>18}"
    lines.append(row)
  lines.append("(test: the test metric of the validation-selected round; the "
               "search saw only validation)")
  return "\n".join(lines)
