"""Per-user results (<workdir>/per_user.npz, maml_tf/evaluate/per_user.py) and
`maml-tf significance` (maml_tf/commands/significance.py): the tests against
hand-computed cases, the file of real runs against their metrics.json, and
the command's table and one-line refusals."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags as absl_flags
from scipy import stats

from maml_tf import commands
from maml_tf.commands import significance
from maml_tf.evaluate import metrics as metrics_lib
from maml_tf.evaluate import per_user as per_user_lib
from maml_tf.evaluate import sampled
from tests.helpers import ROOT, run_in_process, write_release_layout


# ------------------------------------------------------------- the two tests
def test_t_test_against_a_hand_computed_case():
  a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]
  # d = 1, 2, 2, 3: mean 2, sample sd sqrt(2/3), t = 2 / (sd / sqrt 4) = 2 sqrt 6.
  t_hand = 2.0 * np.sqrt(6.0)
  # Student's t with 3 degrees of freedom has a closed form: with
  # theta = atan(t / sqrt 3), P(|T| > t) = 1 - (2 / pi) (theta + sin cos theta).
  theta = np.arctan(t_hand / np.sqrt(3.0))
  p_hand = 1.0 - 2.0 / np.pi * (theta + np.sin(theta) * np.cos(theta))
  t, p = significance.t_test(a, b)
  assert t == pytest.approx(t_hand, rel=1e-12)
  assert p == pytest.approx(p_hand, rel=1e-9)
  assert p == pytest.approx(0.0162766, abs=1e-7)
  t, p_swapped = significance.t_test(b, a)  # two-tailed: same p, t negated
  assert t == pytest.approx(-t_hand) and p_swapped == pytest.approx(p_hand)
  # Undefined: no difference at all, or a single pair.
  assert np.isnan(significance.t_test(a, a)[1])
  assert np.isnan(significance.t_test([1.0], [0.0])[1])


def test_wilcoxon_on_cases_with_exact_p_values():
  b = np.zeros(6)
  # Six differences of one sign: only 1 of the 2^6 sign patterns has W- = 0,
  # so the two-sided exact p is 2 / 64.
  assert significance.wilcoxon_p(b + [1, 2, 3, 4, 5, 6], b) == pytest.approx(2 / 64)
  # Ranks 1..6 with the difference of rank 2 negative: W- = 2; the sign
  # patterns with W- <= 2 are {}, {1}, {2}: p = 2 * 3 / 64.
  assert significance.wilcoxon_p(b + [1, -2, 3, 4, 5, 6], b) == pytest.approx(6 / 64)
  assert np.isnan(significance.wilcoxon_p(b, b))


def test_the_star_is_the_papers_level():
  assert significance.star(0.049) == "*"
  assert significance.star(0.05) == "" and significance.star(float("nan")) == ""


# ------------------------------------------------------- per-user evaluators
def test_per_user_metrics_by_hand_and_their_mean():
  # User 0: targets {1, 2}, top-3 = 1, 5, 2 -> hits at positions 0 and 2.
  # User 1: target {7}, top-3 = 4, 5, 6 -> no hit.
  topk = np.array([[1, 5, 2], [4, 5, 6]])
  targets = [np.array([1, 2]), np.array([7])]
  per = metrics_lib.per_user_metrics(topk, targets, ks=(3,))
  np.testing.assert_allclose(per["recall@3"], [1.0, 0.0])
  np.testing.assert_allclose(per["precision@3"], [2 / 3, 0.0])
  np.testing.assert_allclose(per["hr@3"], [1.0, 0.0])
  idcg = 1 + 1 / np.log2(3)
  np.testing.assert_allclose(per["ndcg@3"], [(1 + 1 / np.log2(4)) / idcg, 0.0])
  means = metrics_lib.ranking_metrics(topk, targets, ks=(3,))
  assert means == {name: float(np.mean(v)) for name, v in per.items()}


def test_sampled_per_row_and_its_mean():
  # Row 0: the target (column 0) beats both negatives -> rank 0; row 1: one
  # negative above and one tie -> rank 2 (ties count against the target).
  scores = np.array([[0.9, 0.1, 0.2], [0.5, 0.7, 0.5]])
  per = sampled.sampled_per_row(scores, ks=(1, 3))
  np.testing.assert_allclose(per["hr@1"], [1.0, 0.0])
  np.testing.assert_allclose(per["hr@3"], [1.0, 1.0])
  np.testing.assert_allclose(per["ndcg@3"], [1.0, 1 / np.log2(4)])
  assert sampled.sampled_metrics(scores, ks=(1, 3)) == {
      name: float(np.mean(v)) for name, v in per.items()}


# ------------------------------------------------------------- real runs
RUN_FLAGS = ["--embed_dim=8", "--batch_size=16", "--num_neg=1",
             "--train_steps=4", "--eva_batches=2", "--noexport",
             "--notensorboard"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """mf and cml, seeds 0 and 1, --protocol=split (mf seed 0 with --refit)."""
  root = tmp_path_factory.mktemp("significance")
  data = root / "data"
  write_release_layout(str(data), n_users=24, n_items=30)
  for model in ("mf", "cml"):
    for seed in (0, 1):
      extra = ["--refit"] if (model, seed) == ("mf", 0) else []
      proc = run_in_process(
          ["--dataset=custom", f"--data_dir={data}", f"--model={model}",
           "--protocol=split", f"--seed={seed}",
           f"--workdir={root / f'{model}_s{seed}'}",
           f"--cache_dir={root / 'cache'}"] + RUN_FLAGS + extra)
      assert proc.returncode == 0, proc.stderr[-3000:]
  return root


def _assert_means_match(npz, label, reported):
  assert set(reported) <= set(npz[label]) - {"step"}
  for name, value in reported.items():
    assert abs(npz[label][name].mean() - value) < 1e-6, (label, name)


def test_per_user_means_are_the_reported_test_metrics(runs):
  for name in ("mf_s0", "mf_s1", "cml_s0", "cml_s1"):
    summary = json.loads((runs / name / "metrics.json").read_text())
    npz = per_user_lib.read(str(runs / name / "per_user.npz"))
    # 24 users with one test item each (6 items a user: 4 / 1 / 1).
    assert npz["users"].dtype == np.int32
    np.testing.assert_array_equal(npz["users"], np.arange(24))
    assert npz["best"]["step"] == summary["best"]["step"]
    assert npz["last"]["step"] == summary["last"]["step"] == 4
    _assert_means_match(npz, "best", summary["results"]["best"]["test"])
    _assert_means_match(npz, "best", summary["best"]["test"])
    _assert_means_match(npz, "last", summary["last"]["test"])
    assert summary["per_user"]["file"] == "per_user.npz"
    if name == "mf_s0":
      assert npz["refit"]["step"] == summary["results"]["refit"]["step"]
      _assert_means_match(npz, "refit", summary["results"]["refit"]["test"])
    else:
      assert "refit" not in npz


def test_a_resumed_run_evaluates_its_earlier_rounds_once_at_the_end(runs, tmp_path):
  """Selected on test (--protocol=release): the rounds are before the
  resume, so the last weights and checkpoints/best are evaluated again; the
  values equal those of the rounds themselves."""
  args = ["--dataset=custom", f"--data_dir={runs / 'data'}", "--model=mf",
          f"--workdir={tmp_path / 'run'}", f"--cache_dir={runs / 'cache'}"]
  assert run_in_process(args + RUN_FLAGS).returncode == 0
  before = per_user_lib.read(str(tmp_path / "run" / "per_user.npz"))
  # As if killed after its last checkpoint, before the final metrics.json.
  path = tmp_path / "run" / "metrics.json"
  summary = json.loads(path.read_text())
  path.write_text(json.dumps(dict(summary, finished=False)))
  os.remove(tmp_path / "run" / "per_user.npz")
  proc = run_in_process(args + RUN_FLAGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resuming from step 4" in proc.stdout
  after = per_user_lib.read(str(tmp_path / "run" / "per_user.npz"))
  summary = json.loads(path.read_text())
  assert summary["best_checkpoint"]["selected_by"] == "test"
  for label in ("best", "last"):
    assert after[label]["step"] == before[label]["step"]
    for name in before[label]:
      np.testing.assert_allclose(after[label][name], before[label][name], atol=1e-7)
  _assert_means_match(after, "best", summary["best"]["test"])
  _assert_means_match(after, "last", summary["last"]["test"])


# ------------------------------------------------------------- the command
def _significance(*args):
  """`maml-tf significance ARGS` in this process, through the command's
  dispatcher: (exit status, out, err)."""
  absl_flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  code = None
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = commands.main(["maml-tf", "significance", *args])
    except SystemExit as e:
      code = e.code
    finally:
      absl_flags.FLAGS.unparse_flags()
  return code, out.getvalue(), err.getvalue()


def _cells(line):
  return [c.strip() for c in line.strip().strip("|").split("|")]


def test_the_table_holds_the_per_user_tests(runs):
  code, out, err = _significance(f"--a={runs}/cml_s*", f"--b={runs}/mf_s*",
                                 "--metrics=ndcg@20,recall@10")
  assert code == 0, err
  rows = [_cells(line) for line in out.splitlines() if line.startswith("| ")]
  assert rows[0] == ["metric", "seed", "n", "A", "B", "A − B", "t-test p",
                     "Wilcoxon p"]
  rows = rows[1:]
  assert [r[:3] for r in rows] == [
      ["ndcg@20", "0", "24"], ["ndcg@20", "1", "24"], ["ndcg@20", "all seeds", "2"],
      ["recall@10", "0", "24"], ["recall@10", "1", "24"],
      ["recall@10", "all seeds", "2"]]
  for metric, block in (("ndcg@20", rows[:3]), ("recall@10", rows[3:])):
    seed_means = []
    for seed, row in zip((0, 1), block):
      a = per_user_lib.read(str(runs / f"cml_s{seed}" / "per_user.npz"))["best"][metric]
      b = per_user_lib.read(str(runs / f"mf_s{seed}" / "per_user.npz"))["best"][metric]
      seed_means.append((a.mean(), b.mean()))
      assert float(row[3]) == pytest.approx(100 * a.mean(), abs=1e-3)
      assert float(row[4]) == pytest.approx(100 * b.mean(), abs=1e-3)
      assert float(row[5].rstrip("*")) == pytest.approx(
          100 * (a.mean() - b.mean()), abs=1e-3)
      d = a - b
      if np.any(d != 0):
        # t by hand; p from Student's t survival function (not ttest_rel).
        t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
        p = 2 * stats.t.sf(abs(t), len(d) - 1)
        assert float(row[6]) == pytest.approx(p, rel=2e-3)
        assert row[5].endswith("*") == (p < 0.05)
        assert float(row[7]) == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=2e-3)
      else:
        assert row[6] == row[7] == "–"
    (a0, b0), (a1, b1) = seed_means
    assert float(block[2][3]) == pytest.approx(100 * (a0 + a1) / 2, abs=1e-3)
    d = np.array([a0 - b0, a1 - b1])
    if d[0] != d[1]:
      t = d.mean() / (d.std(ddof=1) / np.sqrt(2))
      assert float(block[2][6]) == pytest.approx(2 * stats.t.sf(abs(t), 1), rel=2e-3)
    assert block[2][7] == "–"
  assert "p < 0.05" in out


@pytest.mark.parametrize("args, message", [
    (["--a={runs}/mf_s*", "--b={runs}/cml_s0"],
     "error: `--b` must hold runs of the seeds of `--a` ([0, 1]). Received: "
     "seeds [0]"),
    (["--a={runs}/mf_s*", "--b={runs}/cml_s*", "--which=refit"],
     "error: `--which` must name results {runs}/mf_s1/per_user.npz holds "
     "(best, last; refit: runs trained with --refit). Received: refit"),
    (["--a={runs}/mf_s*", "--b={runs}/cml_s*", "--metrics=ndcg@5"],
     "error: `--metrics` must be in {runs}/mf_s0/per_user.npz (hr@10, hr@20, "
     "ndcg@10, ndcg@20, precision@10, precision@20, recall@10, recall@20). "
     "Received: ndcg@5"),
    (["--a={runs}/nothing*", "--b={runs}/cml_s*"],
     "error: `--a` must match at least one workdir. Received: '{runs}/nothing*'"),
    (["--a={runs}/mf_s*", "--b={runs}/*_s0"],
     "error: `--b` must match one run a seed; --seed=0 is both {runs}/cml_s0 "
     "and {runs}/mf_s0"),
    (["--b={runs}/mf_s*"],
     "error: `--a` must be a GLOB of run workdirs. Received: None"),
])
def test_refusals_are_one_line_and_exit_2(runs, args, message):
  code, out, err = _significance(*[a.format(runs=runs) for a in args])
  assert code == 2 and out == ""
  assert err.strip().splitlines() == [message.format(runs=runs)]


def test_runs_with_other_test_users_are_refused(runs, tmp_path):
  for seed in (0, 1):
    other = tmp_path / f"other_s{seed}"
    other.mkdir()
    (other / "flags.txt").write_text(f"--model=mf\n--seed={seed}\n")
    data = per_user_lib.read(str(runs / f"mf_s{seed}" / "per_user.npz"))
    block = dict(data["best"], users=data["users"][1:])
    block = {k: (v[1:] if k not in ("users", "step") else v)
             for k, v in block.items()}
    per_user_lib.write(str(other), {"best": block})
  code, out, err = _significance(f"--a={runs}/mf_s*", f"--b={tmp_path}/other_s*")
  assert code == 2 and out == ""
  assert err.strip().splitlines() == [
      f"error: `--b` {tmp_path}/other_s0 must have the test users of `--a` "
      f"{runs}/mf_s0 (same data, protocol and seed). Received: 23 users, 24 "
      f"in A, 23 in both"]


def test_the_script_runs(runs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "significance.py"),
       f"--a={runs}/mf_s*", f"--b={runs}/mf_s*", "--which=last"], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  # A run against itself: no difference, undefined p-values.
  assert "| recall@20 | 0 | 24 |" in proc.stdout
  assert "| +0.000 | – | – |" in proc.stdout


def test_the_sampled_evaluator_keeps_its_latest_per_pair_values():
  import tensorflow as tf

  class Table:  # scores from a fixed [users, items] table
    n_items = 40

    def __init__(self, table):
      self.table = tf.constant(table, tf.float32)

    def score_pairs(self, users, items):
      return tf.gather(tf.gather(self.table, users), items, batch_dims=1)

  rng = np.random.default_rng(0)
  known = np.stack([np.repeat(np.arange(5), 3), rng.integers(0, 40, 15)], 1)
  test = known[::3]
  ev = sampled.SampledEvaluator(Table(rng.normal(size=(5, 40))), known, test,
                                ks=(5,), n_neg=10)
  assert ev.per_user is None
  means = ev()
  np.testing.assert_array_equal(ev.per_user["users"], test[:, 0])
  for name, value in means.items():
    assert ev.per_user[name].mean() == pytest.approx(value, abs=1e-12)
  np.testing.assert_allclose(
      ev.per_user["hr@5"], sampled.sampled_per_row(ev.scores(), (5,))["hr@5"])
