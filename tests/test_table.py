"""maml-tf table: a results table's rows run from its plan, each search and
seed recorded once, resumed across sessions, and bad plans refused in one
line."""

import contextlib
import glob
import io
import json
import os
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from maml_tf import commands
from maml_tf.commands import table
from maml_tf.commands import tune as _tune_command  # noqa: F401 (its flags)
from maml_tf.errors import UsageError
from maml_tf.evaluate import per_user as per_user_lib
from tests.helpers import ROOT, run_in_process, write_release_layout


def in_process(argv):
  """`maml-tf ARGV` in this process (the runner `maml-tf table` uses runs
  it as its own process); its exit status. train and tune share their
  flags, defined once (by the tune module's import)."""
  if argv[0] == "train":
    return run_in_process(argv[1:]).returncode
  absl_flags.FLAGS.unparse_flags()
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
      code = commands.main(["maml-tf", *argv])
    except SystemExit as e:
      code = e.code
    finally:
      absl_flags.FLAGS.unparse_flags()
  return code


class Counting:
  def __init__(self, status=None):
    self.calls, self.status = [], status

  def __call__(self, argv):
    self.calls.append(list(argv))
    return self.status if self.status is not None else in_process(argv)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny dataset, a base flagfile with a validation split, a plan with a
  committed-flagfile row and a searched row, and the plan run once."""
  root = tmp_path_factory.mktemp("table")
  data = root / "data"
  features = write_release_layout(str(data), n_users=30, n_items=40)
  base = root / "base.flags"
  base.write_text("\n".join([
      "--dataset=custom", f"--data_dir={data}", f"--extra_features=meta={features}",
      "--model=cml", "--embed_dim=8", "--batch_size=16", "--num_neg=2",
      "--train_steps=4", "--eva_batches=2", "--topk=5,10",
      "--validation_fraction=0.25", "--notensorboard", "--nojit_compile",
      f"--cache_dir={root / 'cache'}"]) + "\n")
  records = root / "records" / "tiny"
  records.mkdir(parents=True)
  plan = records / "table.json"
  plan.write_text(json.dumps({"runs": {
      "tune": ["--max_trials=1", "--search_space=margin"],
      "train": ["--noexport"], "seeds": [0, 1],
      "rows": {"fixed": {"flagfile": str(base), "train": ["--refit"]},
               "searched": {"flagfile": str(base), "tune": ["--num_neg=3"]}}}}))
  runner = Counting()
  lines = []
  p = table.read_plan(str(plan))
  table.run_table(p, list(p.rows.values()), str(root / "runs"), runner=runner,
                  say=lines.append)
  return root, plan, records, runner, lines


def _flags(path):
  with open(path) as f:
    return [line for line in f.read().splitlines() if line.startswith("--")]


def test_each_search_and_seed_runs_once_and_is_recorded(tiny):
  root, plan, records, runner, lines = tiny
  commands_run = [argv[0] for argv in runner.calls]
  assert commands_run == ["train", "train", "tune", "train", "train"]
  tune_argv = runner.calls[2]
  # The row's flagfile first, then the table's search flags, then the row's.
  assert tune_argv[1] == f"--flagfile={root / 'base.flags'}"
  assert tune_argv.index("--max_trials=1") < tune_argv.index("--num_neg=3")
  assert sorted(os.listdir(records)) == [
      "fixed_s0", "fixed_s1", "searched_s0", "searched_s1", "table.json",
      "tune_searched"]
  assert sorted(os.listdir(records / "tune_searched")) == sorted(table.SEARCH_FILES)
  best = records / "tune_searched" / "best.flags"
  for run in ("fixed_s0", "fixed_s1", "searched_s0", "searched_s1"):
    assert sorted(os.listdir(records / run)) == sorted(
        ("flags.txt", "metrics.json", "per_user.npz"))
    seed = int(run[-1])
    flags_txt = _flags(records / run / "flags.txt")
    assert f"--seed={seed}" in flags_txt
    summary = json.loads((records / run / "metrics.json").read_text())
    assert summary["finished"] is True
    data = per_user_lib.read(str(records / run / "per_user.npz"))
    assert ("refit" in data) == run.startswith("fixed")
  # The searched row's seeds train from the recorded best.flags: its values.
  searched = _flags(records / "searched_s0" / "flags.txt")
  for line in _flags(best):
    if line.startswith(("--margin=", "--num_neg=")):
      assert line in searched
  assert "--num_neg=3" in searched
  assert any(line.startswith("searched: search recorded in") for line in lines)
  # Its "# Run:" comment names the recorded copy, not the search folder
  # (which the runs folder need not keep); every other line is the search's.
  searched_best = root / "runs" / "tune_searched" / "best.flags"
  recorded, original = best.read_text().splitlines(), searched_best.read_text().splitlines()
  changed = [(a, b) for a, b in zip(recorded, original) if a != b]
  assert len(recorded) == len(original) and changed == [(
      f"# Run: maml-tf train --flagfile={best} [--workdir=...]",
      f"# Run: python scripts/train.py --flagfile={searched_best} [--workdir=...]")]


def test_a_rerun_runs_nothing_recorded(tiny):
  root, plan, records, _, _ = tiny
  runner, lines = Counting(status=99), []
  p = table.read_plan(str(plan))
  table.run_table(p, list(p.rows.values()), str(root / "runs"), runner=runner,
                  say=lines.append)
  assert runner.calls == []
  assert sum(line.endswith(")") and ": recorded (" in line for line in lines) == 4
  assert any(line.startswith("searched: search recorded (") for line in lines)


def test_a_failed_run_stops_with_its_row_seed_and_workdir_and_records_nothing(
    tiny, tmp_path):
  root, plan, _, _, _ = tiny
  copy = tmp_path / "t" / "table.json"
  copy.parent.mkdir()
  copy.write_text(plan.read_text())
  p = table.read_plan(str(copy))
  runner = Counting(status=3)
  with pytest.raises(table.Failed, match=r"row fixed seed 0: the run exited with "
                     r"status 3 \(its workdir: .*fixed_s0\)"):
    table.run_table(p, [p.rows["fixed"]], str(tmp_path / "runs"), runner=runner,
                    say=lambda line: None)
  assert len(runner.calls) == 1
  assert os.listdir(copy.parent) == ["table.json"]
  # A run that exits 0 without finishing is a failure too.
  with pytest.raises(table.Failed, match="without finishing"):
    table.run_table(p, [p.rows["fixed"]], str(tmp_path / "runs"),
                    runner=Counting(status=0), say=lambda line: None)
  with pytest.raises(table.Failed, match=r"row searched: the search exited "
                     r"with status 3"):
    table.run_table(p, [p.rows["searched"]], str(tmp_path / "runs"),
                    runner=runner, say=lambda line: None)
  assert os.listdir(copy.parent) == ["table.json"]


def _trials(tune_dir):
  with open(os.path.join(tune_dir, "trials.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_a_search_runs_one_trial_a_call_and_resumes_on_a_fresh_machine(
    tiny, tmp_path):
  """A search of 3 trials is 3 calls; after each but the last its small state
  is recorded, and a fresh runs folder (a new machine) resumes from it
  without running an ended trial again; the trials are those of one
  uninterrupted `maml-tf tune`."""
  root, _, _, _, _ = tiny
  records = tmp_path / "records"
  records.mkdir()
  plan_path = records / "table.json"
  plan_path.write_text(json.dumps({"runs": {
      "tune": ["--max_trials=3", "--search_space=margin"],
      "train": ["--noexport"], "seeds": [0],
      "rows": {"r": {"flagfile": str(root / "base.flags"), "tune": []}}}}))
  plan = table.read_plan(str(plan_path))
  progress = records / f"tune_r{table.PROGRESS}"

  class StopAfterTwo(Counting):
    def __call__(self, argv):
      if argv[0] == "tune" and argv[-2] == "--max_trials=3":
        return 7  # the session ends before the third trial
      return super().__call__(argv)

  first = StopAfterTwo()
  with pytest.raises(table.Failed, match="the search exited with status 7"):
    table.run_table(plan, [plan.rows["r"]], str(tmp_path / "runs1"),
                    runner=first, say=lambda line: None)
  assert [a[-2] for a in first.calls] == ["--max_trials=1", "--max_trials=2"]
  assert table.trials_ended(str(progress)) == 2
  kept = sorted(os.path.relpath(os.path.join(d, f), progress)
                for d, _, files in os.walk(progress) for f in files)
  assert [k for k in kept if k.startswith("trials/")] == [
      "trials/0/flags.txt", "trials/0/metrics.json",
      "trials/1/flags.txt", "trials/1/metrics.json"]
  assert not any("ckpt" in k or "checkpoint" in k for k in kept), kept
  ended = _trials(progress)

  second, lines = Counting(), []
  table.run_table(plan, [plan.rows["r"]], str(tmp_path / "runs2"),
                  runner=second, say=lines.append)
  assert [a[0] for a in second.calls] == ["tune", "train"]
  assert second.calls[0][-2] == "--max_trials=3"
  assert any("search resumed from" in line and "(2 of 3 trials ended)" in line
             for line in lines)
  # The ended trials were not trained again (their folders hold only the
  # recorded files), and their records are unchanged.
  assert sorted(os.listdir(tmp_path / "runs2" / "tune_r" / "trials" / "0")) == [
      "flags.txt", "metrics.json"]
  resumed = _trials(tmp_path / "runs2" / "tune_r")
  assert [(t["values"], t["objective"], t["valid"]) for t in resumed[:2]] == [
      (t["values"], t["objective"], t["valid"]) for t in ended]
  assert not progress.exists() and (records / "tune_r" / "best.flags").is_file()
  assert "3 trials completed of 3 run" in (records / "tune_r" / "best.flags").read_text()

  # One uninterrupted search draws the same three trials.
  whole = tmp_path / "whole"
  assert in_process(["tune", f"--flagfile={root / 'base.flags'}",
                     "--max_trials=3", "--search_space=margin",
                     f"--tune_dir={whole}"]) == 0
  assert [(t["values"], t["objective"]) for t in _trials(whole)] == [
      (t["values"], t["objective"]) for t in resumed]


def test_a_record_is_whole_or_absent(tmp_path):
  source = tmp_path / "run"
  source.mkdir()
  (source / "flags.txt").write_text("--seed=0\n")
  with pytest.raises(UsageError, match="metrics.json is missing"):
    table.copy_record(str(source), str(tmp_path / "rec"), table.RUN_FILES)
  assert sorted(os.listdir(tmp_path)) == ["run"]
  (source / "metrics.json").write_text("{}")
  table.copy_record(str(source), str(tmp_path / "rec"), table.RUN_FILES,
                    table.OPTIONAL_RUN_FILES)
  assert sorted(os.listdir(tmp_path / "rec")) == ["flags.txt", "metrics.json"]
  assert sorted(os.listdir(tmp_path)) == ["rec", "run"]


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
  flagfile = tmp_path / "a.flags"
  flagfile.write_text("--model=mf\n")
  path = tmp_path / "x" / "table.json"
  path.parent.mkdir()
  path.write_text(json.dumps({"runs": {
      "tune": ["--max_trials=2"], "seeds": [0],
      "rows": {"a": {"flagfile": str(flagfile)}, "b": {"tune": ["--model=mf"]}}}}))
  proc = subprocess.run([sys.executable, "-m", "maml_tf", "table", f"--plan={path}",
                         "--dry_run", f"--runs_dir={tmp_path / 'runs'}"],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      f"a_s0: maml-tf train --flagfile={flagfile} --seed=0 "
      f"--workdir={tmp_path / 'runs' / 'a_s0'}",
      f"b: search: maml-tf tune --max_trials=2 --model=mf "
      f"--tune_dir={tmp_path / 'runs' / 'tune_b'} (one trial a call, "
      f"--max_trials=1 to 2)",
      f"b_s0: maml-tf train --flagfile={tmp_path / 'runs' / 'tune_b' / 'best.flags'}"
      f" (once searched) --seed=0 --workdir={tmp_path / 'runs' / 'b_s0'}"]
  assert sorted(os.listdir(tmp_path)) == ["a.flags", "x"]


@pytest.mark.parametrize("runs,message", [
    (None, "must hold a `runs` object"),
    ({"seeds": [0], "rows": {"a": {"tune": []}}, "budget": 1},
     "`runs` keys must be tune, train, seeds, rows. Received: budget"),
    ({"seeds": [], "rows": {"a": {"tune": []}}},
     "`runs.seeds` must be a non-empty list of distinct integers >= 0. Received: []"),
    ({"seeds": [0, 0], "rows": {"a": {"tune": []}}}, "Received: [0, 0]"),
    ({"seeds": [0], "rows": {}}, "`runs.rows` must be a non-empty object of rows"),
    ({"seeds": [0], "tune": "--max_trials=2", "rows": {"a": {"tune": []}}},
     "`runs.tune` must be a list of flags, each starting with '--'. "
     "Received: \"--max_trials=2\""),
    ({"seeds": [0], "rows": {"A b": {"tune": []}}},
     "row 'A b': a row's name must be lower-case letters, digits and '_'"),
    ({"seeds": [0], "rows": {"a": {}}},
     "row 'a' must have `flagfile` (a committed run), `tune`"),
    ({"seeds": [0], "rows": {"a": {"tune": [], "steps": 3}}},
     "row 'a': keys must be flagfile, tune, train. Received: steps"),
    ({"seeds": [0], "rows": {"a": {"tune": ["model=mf"]}}},
     "row 'a': `tune` must be a list of flags"),
])
def test_bad_plans_are_one_line_errors(tmp_path, runs, message):
  path = tmp_path / "table.json"
  path.write_text(json.dumps({} if runs is None else {"runs": runs}))
  with pytest.raises(UsageError) as e:
    table.read_plan(str(path))
  assert message in str(e.value) and str(path) in str(e.value)
  assert "\n" not in str(e.value)


def test_cli_errors_exit_2_with_one_line(tmp_path):
  path = tmp_path / "table.json"
  path.write_text(json.dumps({"runs": {"seeds": [0], "rows": {
      "a": {"flagfile": str(tmp_path / "missing.flags")}}}}))
  cases = [
      ([], "error: `--plan` must name a table's plan"),
      ([f"--plan={tmp_path / 'none.json'}"], "cannot read it (No such file"),
      ([f"--plan={path}", "--rows=b"], "`--rows` must name rows of"),
      ([f"--plan={path}"], "row 'a': its flagfile must exist"),
  ]
  (tmp_path / "bad.json").write_text("{")
  cases.append(([f"--plan={tmp_path / 'bad.json'}"], "not JSON"))
  for args, message in cases:
    proc = subprocess.run([sys.executable, "-m", "maml_tf", "table", *args],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, (args, proc.stderr)
    assert message in proc.stderr, (args, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


@pytest.mark.parametrize("path", sorted(glob.glob(
    os.path.join(ROOT, "results", "*", "table.json"))),
    ids=lambda p: os.path.relpath(p, ROOT))
def test_the_committed_plans_are_valid_and_name_existing_flagfiles(path):
  plan = table.read_plan(path)
  for row in plan.rows.values():
    if row.flagfile:
      assert os.path.isfile(os.path.join(ROOT, row.flagfile)), row.flagfile
  # Every record of the table belongs to a row and one of its seeds.
  runs = {f"{name}_s{s}" for name in plan.rows for s in plan.seeds}
  searches = {f"tune_{name}{suffix}" for name, row in plan.rows.items()
              if row.tune is not None for suffix in ("", table.PROGRESS)}
  folder = os.path.dirname(path)
  for entry in os.listdir(folder):
    if os.path.isdir(os.path.join(folder, entry)):
      assert entry in runs | searches, entry
    if entry.endswith(table.PROGRESS):  # an unfinished search: no record yet
      assert not os.path.isdir(os.path.join(folder, entry[:-len(table.PROGRESS)]))
      assert table.trials_ended(os.path.join(folder, entry)) >= 1
