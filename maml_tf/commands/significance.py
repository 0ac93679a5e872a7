"""Paired significance tests between two sets of runs, as a Markdown table.

  maml-tf significance --a="runs/split/maml_s*" --b="runs/split/cml_s*" \
      --metrics=recall@20,ndcg@20

`--a` and `--b` are globs of workdirs, one run a seed; runs are paired by
the --seed of their flags.txt (both sides must hold the same seeds, each
once). For each metric of --metrics, read from each run's per_user.npz
(maml_tf/evaluate/per_user.py; --which picks the selected round, the last
round or the refit model):

  per seed: the mean over the test users of A and of B, A - B, the paired
    two-tailed t-test and the Wilcoxon signed-rank test (two-sided, zero
    differences dropped) over the users (both runs must have the same test
    users: same data, protocol and seed);
  over seeds: the means of the per-seed means, and the paired two-tailed
    t-test over the seeds' means (n = number of seeds).

A star marks A - B where the paired t-test gives p < 0.05, the test and the
level of the MAML paper (one level only). Both tests are scipy.stats'
(`ttest_rel`, `wilcoxon`). A p-value is "–" where it is undefined: every
difference zero, or fewer than two users or seeds.
"""

import glob
import os
import warnings

import numpy as np
from absl import app, flags
from scipy import stats

from maml_tf import cli
from maml_tf.errors import DataError, UsageError
from maml_tf.evaluate import per_user as per_user_lib

flags.DEFINE_string("a", None, "GLOB of the workdirs of run A (one a seed)")
flags.DEFINE_string("b", None, "GLOB of the workdirs of run B (one a seed)")
flags.DEFINE_enum("which", "best", list(per_user_lib.LABELS),
                  "the selected round (best), the last round (last) or the "
                  "--refit model (refit)")
flags.DEFINE_list("metrics", ["recall@20", "ndcg@20"], "metrics, in order")
FLAGS = flags.FLAGS

LEVEL = 0.05  # the paper's: * p < 0.05, two-tailed paired t-test
SCALE = 100.0  # means printed x100, as the papers print them


def t_test(a, b):
  """(t, two-tailed p) of the paired t-test of a against b (scipy's
  ttest_rel); (nan, nan) when undefined (n < 2, every difference zero)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or not np.any(a != b):
    return float("nan"), float("nan")
  with warnings.catch_warnings():  # a constant difference: t = ±inf, p = 0
    warnings.simplefilter("ignore", RuntimeWarning)
    result = stats.ttest_rel(a, b)
  return float(result.statistic), float(result.pvalue)


def wilcoxon_p(a, b):
  """Two-sided p of the Wilcoxon signed-rank test of a against b (scipy's
  `wilcoxon`, zero differences dropped); nan when every difference is zero."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if not np.any(a != b):
    return float("nan")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return float(stats.wilcoxon(a, b).pvalue)


def star(p):
  return "*" if p < LEVEL else ""  # nan compares False


def read_seed(workdir, flag):
  path = os.path.join(workdir, "flags.txt")
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise UsageError(f"`--{flag}` {workdir}: cannot read its flags.txt "
                     f"({e.strerror})") from None
  for line in lines:
    if line.startswith("--seed="):
      return int(line.split("=", 1)[1])
  raise UsageError(f"`--{flag}` {workdir}: its flags.txt has no --seed line")


def read_side(flag, pattern, which, metrics):
  """{seed: (workdir, users, {metric: values})} of the runs a glob matches."""
  if not pattern:
    raise UsageError(f"`--{flag}` must be a GLOB of run workdirs. Received: "
                     f"{pattern!r}")
  workdirs = sorted(w for w in glob.glob(pattern) if os.path.isdir(w))
  if not workdirs:
    raise UsageError(f"`--{flag}` must match at least one workdir. Received: "
                     f"{pattern!r}")
  runs = {}
  for workdir in workdirs:
    seed = read_seed(workdir, flag)
    if seed in runs:
      raise UsageError(f"`--{flag}` must match one run a seed; --seed={seed} "
                       f"is both {runs[seed][0]} and {workdir}")
    path = os.path.join(workdir, per_user_lib.FILE)
    if not os.path.exists(path):
      raise UsageError(f"`--{flag}` must match finished runs with per-user "
                       f"results; {path} is missing (a run that has not "
                       f"finished, or one from before they were kept)")
    try:
      data = per_user_lib.read(path)
    except DataError as e:
      raise UsageError(f"`--{flag}` {e}") from None
    if which not in data:
      present = [label for label in per_user_lib.LABELS if label in data]
      raise UsageError(f"`--which` must name results {path} holds "
                       f"({', '.join(present) or 'none'}; refit: runs trained "
                       f"with --refit). Received: {which}")
    block = data[which]
    missing = [m for m in metrics if m not in block]
    if missing:
      held = sorted(k for k in block if k != "step")
      raise UsageError(f"`--metrics` must be in {path} ({', '.join(held)}). "
                       f"Received: {missing[0]}")
    runs[seed] = (workdir, data["users"], {m: block[m] for m in metrics})
  return runs


def pair_runs(runs_a, runs_b):
  """[(seed, run A, run B)] by seed; refuses other seeds or other users."""
  if sorted(runs_a) != sorted(runs_b):
    raise UsageError(f"`--b` must hold runs of the seeds of `--a` "
                     f"({sorted(runs_a)}). Received: seeds {sorted(runs_b)}")
  pairs = []
  for seed in sorted(runs_a):
    a, b = runs_a[seed], runs_b[seed]
    if not np.array_equal(a[1], b[1]):
      common = len(np.intersect1d(a[1], b[1]))
      raise UsageError(f"`--b` {b[0]} must have the test users of `--a` "
                       f"{a[0]} (same data, protocol and seed). Received: "
                       f"{len(b[1])} users, {len(a[1])} in A, {common} in both")
    pairs.append((seed, a, b))
  return pairs


def _p(p):
  return "–" if np.isnan(p) else f"{p:.3g}"


def _row(metric, what, n, mean_a, mean_b, p_t, p_w):
  diff = SCALE * (mean_a - mean_b)
  return (f"| {metric} | {what} | {n} | {SCALE * mean_a:.3f} | "
          f"{SCALE * mean_b:.3f} | {diff:+.3f}{star(p_t)} | {_p(p_t)} | "
          f"{_p(p_w)} |")


def table(pairs, metrics, which, pattern_a, pattern_b):
  """The Markdown table (and its notes) of `pair_runs`' pairs."""
  lines = [f"A: {pattern_a}  B: {pattern_b}  ({which}; metrics x100)", "",
           "| metric | seed | n | A | B | A − B | t-test p | Wilcoxon p |",
           "|---|---|---|---|---|---|---|---|"]
  for metric in metrics:
    means_a, means_b = [], []
    for seed, (_, users, values_a), (_, _, values_b) in pairs:
      a, b = values_a[metric], values_b[metric]
      means_a.append(a.mean())
      means_b.append(b.mean())
      lines.append(_row(metric, str(seed), len(users), means_a[-1],
                        means_b[-1], t_test(a, b)[1], wilcoxon_p(a, b)))
    lines.append(_row(metric, "all seeds", len(pairs), np.mean(means_a),
                      np.mean(means_b), t_test(means_a, means_b)[1],
                      float("nan")))
  lines += ["", f"n: test users (a seed's row) or seeds (the all-seeds row, a "
            f"t-test over the seeds' means). * A − B with paired two-tailed "
            f"t-test p < {LEVEL} (the paper's test and level). –: undefined "
            f"(every difference zero, or n < 2)."]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    metrics = [m.strip() for m in FLAGS.metrics if m.strip()]
    if not metrics:
      raise UsageError("`--metrics` must name at least one metric, e.g. "
                       "recall@20. Received: ''")
    runs_a = read_side("a", FLAGS.a, FLAGS.which, metrics)
    runs_b = read_side("b", FLAGS.b, FLAGS.which, metrics)
    pairs = pair_runs(runs_a, runs_b)
  except UsageError as e:
    cli.usage_error(str(e))
  print(table(pairs, metrics, FLAGS.which, FLAGS.a, FLAGS.b))
  return 0


def entry(argv=None):
  """`maml-tf significance ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv)
