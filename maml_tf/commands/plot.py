"""Learning curves of runs, from their metrics.jsonl, to one PNG.

  maml-tf plot --workdir=runs/faithful --workdir=runs/paper \\
      --workdir=runs/cml --label=faithful --label=paper --label=CML \\
      --out=curves.png

One panel per metric (x100, as the paper prints them; test solid, validation
dashed), one per loss term (its mean over each round) and, for models that
explain their scores, the attention's entropy ratio and pair spread (see
maml_tf/explanation.py), against the training step. Each run has its colour and its label (default: the workdir's
folder name); a dotted line marks each run's best round. Needs only numpy and
matplotlib (Agg), not TensorFlow.
"""

import json
import math
import os
import sys

from absl import app
from absl import flags

from maml_tf import cli
from maml_tf.errors import DataError
from maml_tf.evaluate import records as records_lib

METRICS = ("ndcg", "recall", "hr", "precision")
METRIC_NAMES = {"ndcg": "NDCG", "recall": "Recall", "hr": "HR",
                "precision": "Precision"}
TERMS = ("loss", "embedding_loss", "feature_loss", "cov_loss", "l2_loss")
# Of each round's "explanation" (maml_tf.evaluate.explanation), when a run has one.
EXPLANATION = ("entropy_ratio", "pair_spread")
SPLIT_STYLES = {"test": "-", "valid": "--"}
SPLIT_NAMES = {"test": "test", "valid": "validation"}

flags.DEFINE_multi_string("workdir", None, "a run's folder (repeat to overlay "
                          "runs)")
flags.DEFINE_multi_string("label", None, "a label per --workdir, in order "
                          "(default: the folder names)")
flags.DEFINE_string("out", None, "the PNG file to write")
flags.DEFINE_string("title", "Learning curves", "the figure's title")
FLAGS = flags.FLAGS


class PlotError(Exception):
  """A one-line problem with the inputs or the output file."""


def read_records(workdir):
  """The records of <workdir>/metrics.jsonl, by step (maml_tf.evaluate.records
  reads them: a last line cut short by a crash is dropped, a damaged earlier
  line is a DataError)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise PlotError(f"{workdir}: has no metrics.jsonl (not a run's workdir?)")
  records = records_lib.read_records(path)
  if not records:
    raise PlotError(f"{path}: holds no evaluation yet")
  return sorted(records, key=lambda r: r["step"])


def read_best_step(workdir):
  """The step of the run's best round from metrics.json, or None."""
  try:
    with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
      return json.load(f)["best"]["step"]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def default_labels(workdirs):
  """Folder names; the last two path parts where names repeat."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(set(names)) == len(names):
    return names
  return [os.path.join(*os.path.normpath(os.path.abspath(w)).split(os.sep)[-2:])
          for w in workdirs]


def metric_keys(runs):
  """"metric@k" keys found in any record, in METRICS order then by k."""
  found = set()
  for _, records, _ in runs:
    for r in records:
      for split in SPLIT_STYLES:
        found.update(r.get(split) or {})

  def order(key):
    name, _, k = key.partition("@")
    return (int(k) if k.isdigit() else 0,
            METRICS.index(name) if name in METRICS else len(METRICS), key)

  return sorted(found, key=order)


def term_keys(runs):
  found = set()
  for _, records, _ in runs:
    for r in records:
      found.update(r.get("train") or {})
  return [t for t in TERMS if t in found] + sorted(found - set(TERMS))


def explanation_keys(runs):
  found = set()
  for _, records, _ in runs:
    for r in records:
      found.update(r.get("explanation") or {})
  return [k for k in EXPLANATION if k in found]


def plot(runs, out, title="Learning curves"):
  """Draws runs [(label, records, best_step)] to the PNG file `out`."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  metrics, terms = metric_keys(runs), term_keys(runs)
  panels = ([("metric", m) for m in metrics] + [("term", t) for t in terms]
            + [("explanation", e) for e in explanation_keys(runs)])
  if not panels:
    raise PlotError("the records hold no metric and no loss term to plot")
  ncols = min(4, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  height = 3.2 * nrows + 1.0
  fig = Figure(figsize=(4.2 * ncols, height), dpi=100)
  colors = [f"C{i % 10}" for i in range(len(runs))]
  splits_seen = set()
  for index, (kind, key) in enumerate(panels):
    ax = fig.add_subplot(nrows, ncols, index + 1)
    for color, (label, records, best) in zip(colors, runs):
      if kind == "metric":
        for split, style in SPLIT_STYLES.items():
          points = [(r["step"], 100 * r[split][key]) for r in records
                    if key in (r.get(split) or {})]
          if points:
            splits_seen.add(split)
            ax.plot(*zip(*points), style, color=color, marker=".",
                    markersize=4, linewidth=1.3)
        if best is not None:
          ax.axvline(best, color=color, linestyle=":", linewidth=1)
      else:
        part = "train" if kind == "term" else "explanation"
        points = [(r["step"], r[part][key]) for r in records
                  if key in (r.get(part) or {})]
        if points:
          ax.plot(*zip(*points), "-", color=color, marker=".", markersize=4,
                  linewidth=1.3)
    if kind == "metric":
      name, _, k = key.partition("@")
      ax.set_title(f"{METRIC_NAMES.get(name, name)}@{k} (x100)", fontsize=10)
    elif kind == "term":
      ax.set_title(f"{key} (mean over each round)", fontsize=10)
    else:
      ax.set_title(f"explanation {key} (train pairs)", fontsize=10)
    ax.set_xlabel("training step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
  handles = [Line2D([], [], color=c, linewidth=2, label=run[0])
             for c, run in zip(colors, runs)]
  handles += [Line2D([], [], color="0.3", linestyle=SPLIT_STYLES[s],
                     label=SPLIT_NAMES[s]) for s in SPLIT_STYLES if s in splits_seen]
  handles.append(Line2D([], [], color="0.3", linestyle=":", label="best round"))
  fig.suptitle(title, fontsize=12, y=1 - 0.08 / height, va="top")
  fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6),
             fontsize=9, frameon=False, bbox_to_anchor=(0.5, 1 - 0.4 / height))
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))
  try:
    fig.savefig(out, format="png")
  except OSError as e:
    raise PlotError(f"`--out` must be a writable file path. Received: {out!r} "
                    f"({e.strerror or e})") from None


def main(argv):
  if len(argv) > 1:
    return _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  workdirs = FLAGS.workdir or []
  if not workdirs:
    return _fail("`--workdir` is required (repeat it to overlay runs)")
  if not FLAGS.out:
    return _fail("`--out` is required, e.g. --out=curves.png")
  if not FLAGS.out.lower().endswith(".png"):
    return _fail(f"`--out` must name a .png file. Received: {FLAGS.out!r}")
  labels = FLAGS.label or default_labels(workdirs)
  if len(labels) != len(workdirs):
    return _fail(f"`--label` must be given once per --workdir ({len(workdirs)})"
                 f". Received: {len(labels)} labels")
  try:
    runs = [(label, read_records(w), read_best_step(w))
            for label, w in zip(labels, workdirs)]
    plot(runs, FLAGS.out, FLAGS.title)
  except (PlotError, DataError) as e:
    return _fail(str(e))
  print(f"wrote {FLAGS.out} ({len(runs)} run{'s' * (len(runs) > 1)})")
  return 0


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  return 2


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def entry(argv=None):
  """`maml-tf plot ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv, flags_parser=_parse_flags)
