"""Mean ± standard deviation of finished runs, as a Markdown table.

  maml-tf summarize --run="MF=runs/split/mf_s*" --run="LightGCN=runs/split/lgcn_s*"

Each `--run=LABEL=GLOB` is one row: the workdirs the glob matches (one per
seed) are read from their metrics.json, and the row shows, for every
metric of --metrics, the mean ± sd (sample standard deviation, n - 1) over
them of the reported test numbers: the validation-selected round's
(`results.best`), or with `--which=refit` the refit model's. A run that
did not finish, or selected on test, is refused with a one-line error
(tables here report validation-selected numbers only).
"""

import glob
import json
import os
import sys

import numpy as np
from absl import app, flags

from maml_tf import cli

flags.DEFINE_multi_string("run", [], "LABEL=GLOB of workdirs, one row each")
flags.DEFINE_list("metrics", ["recall@10", "ndcg@10", "precision@10", "recall@20",
                              "ndcg@20", "precision@20"], "columns, in order")
flags.DEFINE_enum("which", "best", ["best", "refit"], "validation-selected "
                  "round (best) or the refit model (refit)")
flags.DEFINE_float("scale", 100.0, "multiply metrics by this (the papers print x100)")
FLAGS = flags.FLAGS


def fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def read_run(workdir, which):
  path = os.path.join(workdir, "metrics.json")
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError) as e:
    fail(f"{path}: cannot read a run summary ({e})")
  if summary.get("finished") is not True:
    fail(f"{path}: the run has not finished")
  results = summary.get("results") or {}
  if which not in results:
    fail(f"{path}: no `{which}` result (a run selected on validation, with "
         f"--refit for `refit`); found: {', '.join(results) or 'none'}")
  result = results[which]
  if which == "best" and not str(result.get("selected_by", "")).startswith("validation"):
    fail(f"{path}: the best round was selected by {result.get('selected_by')!r}, "
         "not on validation")
  return result, summary


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.run:
    fail("`--run` must be given at least once, as LABEL=GLOB")
  header = ["model", "seeds", "step"] + FLAGS.metrics
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for item in FLAGS.run:
    label, sep, pattern = item.partition("=")
    if not sep or not label or not pattern:
      fail(f"`--run` must look like LABEL=GLOB. Received: {item!r}")
    workdirs = sorted(glob.glob(pattern))
    if not workdirs:
      fail(f"`--run` {label}: no folder matches {pattern!r}")
    rows = [read_run(w, FLAGS.which) for w in workdirs]
    steps = sorted(int(r["step"]) for r, _ in rows)
    cells = [label, str(len(rows)),
             f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}–{steps[-1]}"]
    for metric in FLAGS.metrics:
      values = [r["test"].get(metric) for r, _ in rows]
      if any(v is None for v in values):
        fail(f"`--metrics`: {metric} is missing from a run of {label}")
      values = FLAGS.scale * np.asarray(values, np.float64)
      sd = values.std(ddof=1) if len(values) > 1 else float("nan")
      cells.append(f"{values.mean():.2f} ± {sd:.2f}" if len(values) > 1
                   else f"{values.mean():.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  print("\n".join(lines))
  return 0


def entry(argv=None):
  """`maml-tf summarize ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv)
