"""A run's per-round records (metrics.jsonl) and its summary table.
"""

from __future__ import annotations

import json
import os

from maml_tf.errors import DataError


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
  # Here, not at the top: read_records serves `maml-tf plot`, which runs
  # without TensorFlow (metrics.py imports it).
  from maml_tf.evaluate.metrics import METRICS  # pylint: disable=g-import-not-at-top
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


