"""Hyper-parameter search: spaces -> keras-tuner, trials as real runs on tiny
data, the CLI killed and resumed, best.flags run by scripts/train.py, errors.

scripts/tune.py runs as a real process where the process is the point (the
search killed with SIGKILL); elsewhere its command runs in this process,
through the `maml-tf` dispatcher (the same parsing, one-line errors and exit
statuses, without an interpreter and TensorFlow start-up per call)."""

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags as absl_flags

from maml_tf.train import checkpoint as checkpoint_lib
from maml_tf import commands
from maml_tf import tuning
# Imported here, when the test files are collected and before any test has
# defined the train flags (helpers.run_in_process defines them only when
# absent): the command defines them together with its own.
from maml_tf.commands import tune as _tune_command  # noqa: F401
from maml_tf.config import Config
from maml_tf.errors import UsageError
from tests.helpers import ROOT, run_in_process as run_train, write_release_layout

TUNE = os.path.join(ROOT, "scripts", "tune.py")


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny dataset and a base flagfile with a validation split."""
  root = tmp_path_factory.mktemp("tune")
  data = root / "data"
  features = write_release_layout(str(data), n_users=40, n_items=50)
  flagfile = root / "base.flags"
  flagfile.write_text("\n".join([
      "--dataset=custom", f"--data_dir={data}",
      f"--extra_features=meta={features}", "--embed_dim=8",
      "--hidden_layer_dim=16", "--batch_size=16", "--num_neg=2",
      "--train_steps=4", "--eva_batches=2", "--topk=5,10",
      "--validation_fraction=0.25", "--notensorboard", "--nojit_compile",
      "--noexport", f"--export_dir={root / 'exports'}",
      f"--cache_dir={root / 'cache'}", "--workdir=/nonexistent/ignored"]) + "\n")
  return root, flagfile


def base_config(root, **changes):
  values = dict(dataset="custom", data_dir=str(root / "data"),
                extra_features=(f"meta={root / 'data' / 'meta.npy'}",),
                embed_dim=8, hidden_layer_dim=16, batch_size=16, num_neg=2,
                train_steps=4, eva_batches=2, topk=(5, 10),
                validation_fraction=0.25, tensorboard=False, jit_compile=False,
                export=False, cache_dir=str(root / "cache"))
  values.update(changes)
  return Config(**values).validate()


def run_tune(args):
  """`maml-tf tune ARGS` (what scripts/tune.py runs) in this process, through
  the command's dispatcher. Returns a CompletedProcess; an exception that
  would have been a traceback propagates and fails the test."""
  absl_flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = commands.main(["maml-tf", "tune", *args])
    except SystemExit as e:  # app.run exits with main's status
      code = e.code
    finally:
      absl_flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess([TUNE] + list(args), code, out.getvalue(),
                                     err.getvalue())


# --- Spaces ------------------------------------------------------------------


def test_every_declared_space_converts_and_its_values_make_valid_runs():
  for model, extra in (("maml", {}), ("maml", {"mode": "paper"}),
                       ("cml", {}), ("lrml", {"num_neg": 1})):
    base = Config(model=model, validation_fraction=0.1, **extra)
    declared = tuning.search_space(model)
    assert declared, model
    params = tuning.build_space(base)
    hp = tuning.to_hyperparameters(params)
    assert [p.name for p in hp.space] == [p.name for p in params]
    for p, h in zip(params, hp.space):
      assert type(h).__name__.lower() == p.kind
      assert p.kind in ("float", "int", "choice")
      if p.kind == "choice":
        assert list(h.values) == list(p.values) == list(declared[p.name][1])
      else:
        assert (h.min_value, h.max_value) == (p.low, p.high) == tuple(
            declared[p.name][1:3])
        assert h.sampling == p.sampling
    # Random draws applied to the base give valid Configs of the right types.
    for seed in range(5):
      values = {h.name: h.random_sample(seed) for h in hp.space}
      config = tuning.apply_values(base, values, params)
      for name, value in values.items():
        assert getattr(config, name) == value
        assert type(getattr(config, name)) is type(getattr(Config(), name))


def test_conditional_entries_follow_the_base_run():
  faithful = {p.name for p in tuning.build_space(Config(validation_fraction=0.1))}
  paper = {p.name for p in tuning.build_space(
      Config(validation_fraction=0.1, mode="paper"))}
  assert paper - faithful == {"attention_l2", "dropout", "network_lr_scale"}
  with pytest.raises(UsageError, match=r"`--search_space` entry dropout "
                     r"applies only with --mode=paper"):
    tuning.build_space(Config(validation_fraction=0.1), ["dropout"])


def test_mario_searches_gcn_layers_only_on_the_lightgcn_backbone():
  """--gcn_layers does nothing with the mf backbone (no graph) or ngcf (it
  reads --ngcf_layers), --mario_hidden nothing without the attention fusion:
  no trial is spent on either there."""
  spaces = {backbone: [p.name for p in tuning.build_space(Config(
      model="mario", backbone=backbone, num_neg=1, validation_fraction=0.1))]
            for backbone in ("mf", "lightgcn", "ngcf")}
  shared = ["learning_rate", "l2_reg", "mp_weight", "embed_dim", "mario_hidden"]
  assert spaces == {"mf": shared, "lightgcn": shared + ["gcn_layers"],
                    "ngcf": shared}
  with pytest.raises(UsageError, match=r"^`--search_space` entry gcn_layers "
                     r"applies only with --backbone=lightgcn\. Received: "
                     r"'gcn_layers'$"):
    tuning.build_space(Config(model="mario", backbone="ngcf", num_neg=1,
                              validation_fraction=0.1), ["gcn_layers"])
  mean = [p.name for p in tuning.build_space(Config(
      model="mario", mario_fusion="mean", num_neg=1, validation_fraction=0.1))]
  assert mean == ["learning_rate", "l2_reg", "mp_weight", "embed_dim"]


def test_search_space_flag_restricts_and_overrides():
  base = Config(validation_fraction=0.1)
  params = tuning.build_space(base, ["margin", "learning_rate=float:1e-3:1e-1:log",
                                     "embed_dim=choice:16|24",
                                     "use_rank_weight=choice:true|false",
                                     "hidden_layer_dim=int:32:64"])
  assert [p.describe() for p in params] == [
      "margin=float:0.5:2.5:linear", "learning_rate=float:0.001:0.1:log",
      "embed_dim=choice:16|24", "use_rank_weight=choice:true|false",
      "hidden_layer_dim=int:32:64"]
  hp = tuning.to_hyperparameters(params)
  assert [type(h).__name__ for h in hp.space] == [
      "Float", "Float", "Choice", "Choice", "Int"]
  assert hp.space[3].values == [True, False]


@pytest.mark.parametrize("entries, message", [
    (["bogus"], "`--search_space` names no flag of a run"),
    (["clip_norm"], "names a flag --model=maml's space does not declare"),
    (["margin=float:2:1"], "entry margin must have low < high"),
    (["learning_rate=float:0:1:log"], "must have low > 0 with log sampling"),
    (["num_neg=float:1:3"], "entry num_neg must be choice or int for an "
     "integer flag"),
    (["attention=int:1:3"], "must be choice for a text flag"),
    (["margin=float:a:1"], "entry margin must have float bounds"),
    (["embed_dim=choice:8|8"], "must not repeat a value"),
    (["margin=normal:0:1"], "must be margin=float:LO:HI"),
    (["train_steps=int:10:20"], "is a flag a search may not vary"),
    (["dropout=float:0:1.5"], "`--search_space` entry dropout=float:0.0:1.5:linear "
     "allows values the run refuses: `--dropout` must be < 1. Received: 1.5"),
    (["margin", "margin"], "names margin twice"),
])
def test_bad_search_space_entries_are_one_line_errors(entries, message):
  with pytest.raises(UsageError) as e:
    tuning.build_space(Config(validation_fraction=0.1), entries)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_declared_space_is_checked_against_the_model():
  # LRML trains on one negative: a num_neg range is refused up front.
  with pytest.raises(UsageError, match="`--num_neg` must be 1 with --model=lrml"):
    tuning.build_space(Config(validation_fraction=0.1, model="lrml", num_neg=1),
                       ["num_neg=int:1:3"])


@pytest.mark.parametrize("args, message", [
    (["--max_trials=0"], "error: `--max_trials` must be >= 1. Received: 0"),
    (["--tuner=grid"], "error: `--tuner` must be one of random, bayesian, "
     "hyperband. Received: 'grid'"),
    (["--validation_fraction=0"], "error: `maml-tf tune` needs a validation "
     "split to compare trials on (tuning on test is refused): use "
     "--protocol=split, --validation_fraction > 0, or data that gives one"),
    (["--tuner_seed=0"], "error: `--tuner_seed` must be >= 1. Received: 0"),
    (["--search_space=marginn"], "error: `--search_space` names no flag of a "
     "run"),
])
def test_cli_usage_errors_exit_2_with_one_line(tiny, tmp_path, args, message):
  _, flagfile = tiny
  proc = run_tune([f"--flagfile={flagfile}", f"--tune_dir={tmp_path / 't'}"]
                  + args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "t").exists()  # refused before anything is written


# --- What gives a validation split -------------------------------------------
#
# Each source of validation, on one small history (12 users, 6 items each:
# 4 train, 1 validation, 1 test), written in that source's format.


def _history():
  rng = np.random.default_rng(0)
  rows = {"train": [], "valid": [], "test": []}
  for u in range(12):
    for j, i in enumerate(rng.choice(20, size=6, replace=False)):
      rows["train" if j < 4 else "valid" if j == 4 else "test"].append((u, int(i)))
  return rows


def _release_layout(folder, valid):
  for split, pairs in _history().items():
    if split == "valid" and not valid:
      continue
    (folder / f"{split}.csv").write_text("itemID,userID\n" + "".join(
        f"{i},{u}\n" for u, i in pairs))


def _recbole_files(folder, valid):
  for split, pairs in _history().items():
    if split == "valid" and not valid:
      continue
    (folder / f"toy.{split}.inter").write_text(
        "user_id:token\titem_id:token\n" + "".join(
            f"u{u}\ti{i}\n" for u, i in pairs))


def _mmrec_file(folder, valid):
  lines = ["userID\titemID\tx_label"]
  for label, (split, pairs) in enumerate(_history().items()):
    if split == "valid" and not valid:
      continue
    lines += [f"{u}\t{i}\t{label}" for u, i in pairs]
  (folder / "toy.inter").write_text("\n".join(lines) + "\n")


SOURCES = {  # name: (writer, writes a validation file, flags)
    "split protocol": (_release_layout, False, dict(protocol="split")),
    "valid.csv": (_release_layout, True, {}),
    "recbole .valid.inter": (_recbole_files, True, {}),
    "mmrec x_label 1": (_mmrec_file, True, {}),
    "validation_fraction": (_release_layout, False,
                            dict(validation_fraction=0.25)),
}
NO_VALIDATION = {  # the same folders with nothing that gives a validation split
    "release layout": (_release_layout, False, {}),
    "recbole benchmark files": (_recbole_files, False, {}),
    "mmrec without x_label 1": (_mmrec_file, False, {}),
    "loo protocol": (_release_layout, False, dict(protocol="loo")),
}


def _source_base(folder, source, table):
  write, valid, flags = table[source]
  folder.mkdir()
  write(folder, valid)
  values = dict(dataset="custom", data_dir=str(folder), model="cml",
                batch_size=8, train_steps=4, eva_batches=2, tensorboard=False,
                jit_compile=False, export=False)
  values.update(flags)
  return Config(**values).validate()


@pytest.mark.parametrize("source", list(SOURCES))
def test_each_source_of_validation_makes_a_base_a_search_accepts(tmp_path,
                                                                  source):
  from maml_tf import train as train_lib
  from maml_tf.train import run as run_lib
  base = _source_base(tmp_path / "data", source, SOURCES)
  tune_dir = tmp_path / "t"
  from maml_tf.tuning import loop as tuning_loop
  search = tuning_loop.Search(base, tuning.TuneSettings(
      tune_dir=str(tune_dir), max_trials=1, search_space=("margin",)))
  assert search.objective == f"valid_{base.select_metric}"
  assert not tune_dir.exists()  # only the check ran
  # The split the run selects on, and --refit allowed on it.
  ds = train_lib.load_data(base)
  assert len(ds.valid) >= 12 and len(ds.test) == 12
  run_lib._check_run(dataclasses.replace(base, refit=True), ds)


@pytest.mark.parametrize("source", list(NO_VALIDATION))
def test_a_base_without_validation_is_refused_in_one_line(tmp_path, source):
  from maml_tf import train as train_lib
  from maml_tf.train import run as run_lib
  base = _source_base(tmp_path / "data", source, NO_VALIDATION)
  if base.protocol == "loo":  # the times loo needs
    for name in ("train.csv", "test.csv"):
      path = tmp_path / "data" / name
      lines = path.read_text().splitlines()
      path.write_text("\n".join([lines[0] + ",unixReviewTime"] + [
          f"{line},{k}" for k, line in enumerate(lines[1:])]) + "\n")
  tune_dir = tmp_path / "t"
  with pytest.raises(UsageError) as e:
    tuning.search(base, tuning.TuneSettings(tune_dir=str(tune_dir),
                                            max_trials=1,
                                            search_space=("margin",)))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("`maml-tf tune` needs a validation split to "
                            "compare trials on (tuning on test is refused)")
  for source_named in ("--protocol=split", "--validation_fraction > 0",
                       "valid.csv", "<name>.valid.inter", "x_label 1"):
    assert source_named in message
  assert message.endswith(f"Received: --protocol={base.protocol}, "
                          f"--validation_fraction=0, and "
                          f"{train_lib.load_data(base).name} has no "
                          f"validation pair")
  assert not tune_dir.exists()  # nothing written before the refusal
  with pytest.raises(UsageError, match="`--refit` needs a run that selects "
                     "on validation") as e:
    run_lib._check_run(dataclasses.replace(base, refit=True),
                       train_lib.load_data(base))
  for source_named in ("--protocol=split", "--validation_fraction > 0",
                       "valid.csv", "<name>.valid.inter", "x_label 1"):
    assert source_named in str(e.value)  # the same list as the tuner's


def test_a_tiny_search_runs_under_the_split_protocol(tiny):
  root, flagfile = tiny
  tune_dir = root / "split"
  proc = run_tune([f"--flagfile={flagfile}", f"--tune_dir={tune_dir}",
                   "--protocol=split", "--validation_fraction=0",
                   "--topk=10,20", "--max_trials=2", "--search_space=margin"])
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "objective: validation recall@20 (max)" in proc.stdout
  records = read_jsonl(tune_dir / "trials.jsonl")
  assert [r["status"] for r in records] == ["COMPLETED"] * 2
  for r in records:
    summary = json.loads(open(os.path.join(r["workdir"], "metrics.json")).read())
    assert summary["protocol"]["name"] == "split"
    assert summary["select_split"] == "valid"
    assert r["objective"]["value"] == summary["best"]["valid"]["recall@20"]
    assert "--protocol=split\n" in _flags(r["workdir"])
  best_flags = (tune_dir / "best.flags").read_text()
  assert "validation recall@20" in best_flags
  assert "\n--protocol=split\n" in best_flags


# --- Searches ----------------------------------------------------------------


def _flags(workdir):
  with open(os.path.join(workdir, "flags.txt")) as f:
    return f.read()


def test_hyperband_maps_epochs_to_rounds_and_continues_from_checkpoints(tiny):
  root, _ = tiny
  # max_epochs = 4 steps / 2 per round = 2; with factor 2 the first bracket
  # trains two trials one round each, then the better one a second round.
  base = base_config(root)
  settings = tuning.TuneSettings(tune_dir=str(root / "hb"), tuner="hyperband",
                                 max_trials=3, hyperband_factor=2,
                                 search_space=("margin",))
  result = tuning.search(base, settings, verbose=0)
  records = result["trials"]
  assert [r["status"] for r in records] == ["COMPLETED"] * 3
  continued = 0
  for r in records:
    hb = r["hyperband"]
    # One keras-tuner epoch is one round of --eva_batches steps.
    assert f"--train_steps={hb['epochs'] * 2}\n" in _flags(r["workdir"])
    summary = json.loads(open(os.path.join(r["workdir"], "metrics.json")).read())
    assert summary["last"]["step"] == hb["epochs"] * 2
    if "trial_id" in hb:  # continues an earlier trial from its checkpoint
      continued += 1
      assert summary["started_from_step"] == hb["initial_epoch"] * 2
      parent = next(p for p in records if p["trial_id"] == hb["trial_id"])
      assert parent["values"] == r["values"]
    assert r["objective"]["value"] == summary["best"]["valid"]["ndcg@10"]
  assert continued >= 1
  # Another search in the same folder is refused, not mixed in.
  with pytest.raises(UsageError, match="`--tune_dir` holds another search"):
    tuning.search(base, tuning.TuneSettings(tune_dir=str(root / "hb"),
                                            max_trials=2), verbose=0)


def test_a_failing_trial_fails_alone_and_is_reported(tiny):
  root, _ = tiny
  base = base_config(root)
  # 120 train pairs: batch_size 100000 is refused by the run, 16 trains.
  settings = tuning.TuneSettings(tune_dir=str(root / "bayes"), tuner="bayesian",
                                 max_trials=2,
                                 search_space=("batch_size=choice:16|100000",))
  result = tuning.search(base, settings, verbose=0)
  by_size = {r["values"]["batch_size"]: r for r in result["trials"]}
  assert set(by_size) == {16, 100000}
  failed = by_size[100000]
  assert failed["status"] == "FAILED"
  assert "`--batch_size` must be <= the number of train pairs" in failed["message"]
  assert "\n" not in failed["message"]
  assert by_size[16]["status"] == "COMPLETED"
  assert result["best"]["trial_id"] == by_size[16]["trial_id"]
  best_flags = (root / "bayes" / "best.flags").read_text()
  assert "\n--batch_size=16\n" in best_flags


def test_trials_never_refit_and_best_flags_keeps_the_base_refit(tiny):
  root, _ = tiny
  base = base_config(root, refit=True)
  tune_dir = root / "refit_base"
  settings = tuning.TuneSettings(tune_dir=str(tune_dir), max_trials=1,
                                 search_space=("margin",))
  record = tuning.search(base, settings, verbose=0)["trials"][0]
  assert record["status"] == "COMPLETED"
  workdir = tune_dir / "trials" / record["trial_id"]
  summary = json.loads((workdir / "metrics.json").read_text())
  assert "refit" not in summary["results"] and "refit" not in summary
  assert not (workdir / "refit").exists()
  assert "--norefit\n" in _flags(str(workdir))
  assert "\n--refit\n" in (tune_dir / "best.flags").read_text()


def test_a_search_with_test_rounds_last_records_each_trials_test_result(tiny):
  # --test_rounds=last (less time a trial): a trial's rounds before its last
  # have no test metrics; its record's test is its selected round's,
  # evaluated on that round's restored weights; best.flags keeps the flag.
  root, _ = tiny
  base = base_config(root, test_rounds="last", train_steps=6)
  tune_dir = root / "test_rounds_last"
  settings = tuning.TuneSettings(tune_dir=str(tune_dir), max_trials=2,
                                 search_space=("margin",))
  records = tuning.search(base, settings, verbose=0)["trials"]
  assert [r["status"] for r in records] == ["COMPLETED"] * 2
  for r in records:
    rounds = read_jsonl(os.path.join(r["workdir"], "metrics.jsonl"))
    assert [("test" in x) for x in rounds] == [False, False, True]
    summary = json.loads(open(os.path.join(r["workdir"], "metrics.json")).read())
    result = summary["results"]["best"]
    assert result["step"] == r["best_step"]
    assert r["test_of_that_round"] == result["test"]
    assert set(result["test"]) == {f"{m}@{k}" for m in ("ndcg", "recall", "hr",
                                                        "precision")
                                   for k in (5, 10)}
  assert "\n--test_rounds=last\n" in (tune_dir / "best.flags").read_text()


def _trial_state(tune_dir):
  """(finished trial ids, ids of unfinished runs that have a checkpoint)."""
  done, partial = [], []
  trials = os.path.join(tune_dir, "trials")
  for trial_id in sorted(os.listdir(trials)) if os.path.isdir(trials) else []:
    workdir = os.path.join(trials, trial_id)
    try:
      with open(os.path.join(workdir, "metrics.json")) as f:
        finished = json.load(f).get("finished") is True
    except (OSError, ValueError):
      continue
    # The rule a resume uses (the manager's state file names a checkpoint):
    # a ckpt-*.index file alone can exist before that file is updated, and
    # a run killed then starts afresh.
    has_ckpt = checkpoint_lib.last_prefix(workdir) is not None
    (done if finished else partial if has_ckpt else []).append(trial_id)
  return done, partial


def test_killed_search_resumes_and_best_flags_train(tiny):
  root, flagfile = tiny
  tune_dir = root / "killed"
  args = [f"--flagfile={flagfile}", f"--tune_dir={tune_dir}", "--max_trials=2",
          "--train_steps=6", "--search_space=learning_rate,margin,num_neg"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  log = open(root / "killed.log", "w")
  proc = subprocess.Popen([sys.executable, TUNE] + args, cwd=ROOT, env=env,
                          stdout=log, stderr=subprocess.STDOUT)
  try:
    # Kill once a trial has finished and a later one is part-way (its run
    # has a checkpoint but is not finished).
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      done, partial = _trial_state(str(tune_dir))
      if done and partial:
        break
      time.sleep(0.02)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  done, partial = _trial_state(str(tune_dir))
  assert done and partial
  kept = {t: (tune_dir / "trials" / t / "metrics.jsonl").read_text()
          for t in done}
  interrupted = partial[0]

  proc = run_tune(args)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "Reloading Tuner" in proc.stdout
  records = read_jsonl(tune_dir / "trials.jsonl")
  assert [r["trial_id"] for r in records] == ["0", "1"]
  assert all(r["status"] == "COMPLETED" for r in records)
  # The finished trials were not run again: their rounds are untouched.
  for t, text in kept.items():
    assert (tune_dir / "trials" / t / "metrics.jsonl").read_text() == text
  # The interrupted trial's run went on from its own checkpoint.
  summary = json.loads((tune_dir / "trials" / interrupted / "metrics.json")
                       .read_text())
  assert summary["finished"] is True and summary["started_from_step"] >= 2
  assert [r["step"] for r in read_jsonl(
      tune_dir / "trials" / interrupted / "metrics.jsonl")] == [2, 4, 6]
  # Each trial's run has its values; the objective is its best validation round.
  for r in records:
    text = _flags(r["workdir"])
    for name, value in r["values"].items():
      assert f"--{name}={value}\n" in text
    assert "--noexport\n" in text
    run_summary = json.loads(open(os.path.join(r["workdir"], "metrics.json")).read())
    assert run_summary["select_split"] == "valid"
    assert r["objective"]["value"] == run_summary["best"]["valid"]["ndcg@10"]
    assert r["test_of_that_round"] == run_summary["best"]["test"]
  # best.flags names the best trial: the highest objective, earliest of equals.
  best_flags = tune_dir / "best.flags"
  text = best_flags.read_text()
  best = records[int(text.split("The best trial (")[1].split(")")[0])]
  top = max(r["objective"]["value"] for r in records)
  assert best["objective"]["value"] == top
  assert best == next(r for r in records if r["objective"]["value"] == top)

  # best.flags runs directly (scripts/train.py's main, in this process) and
  # reproduces the best trial.
  assert text.startswith("# The best trial")
  assert "2 trials x 6 steps = 12 training steps" in text
  assert "validation ndcg@10" in text
  workdir = root / "from_best"
  proc = run_train([f"--flagfile={best_flags}", f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.loads((workdir / "metrics.json").read_text())
  assert again["best"]["valid"] == pytest.approx(best["valid"], abs=1e-6)
  assert again["best"]["test"] == pytest.approx(best["test_of_that_round"],
                                                abs=1e-6)


def test_a_trial_whose_run_finished_unrecorded_is_not_trained_again(tiny):
  """A kill after a trial's run finished but before keras-tuner recorded
  the trial: the rerun retries the trial and reads the finished run."""
  root, _ = tiny
  tune_dir = root / "unrecorded"
  base = base_config(root)
  settings = tuning.TuneSettings(tune_dir=str(tune_dir), max_trials=1,
                                 search_space=("margin",))
  first = tuning.search(base, settings, verbose=0)["trials"][0]
  rounds = (tune_dir / "trials" / "0" / "metrics.jsonl").read_text()
  # Put the oracle back to "trial 0 running", as the kill would leave it.
  state_path = tune_dir / "keras_tuner" / "oracle.json"
  state = json.loads(state_path.read_text())
  assert state["end_order"] == ["0"] and not state["ongoing_trials"]
  state["end_order"], state["ongoing_trials"] = [], {"tuner0": "0"}
  state["run_times"] = {}
  state_path.write_text(json.dumps(state))
  trial_path = tune_dir / "keras_tuner" / "trial_0" / "trial.json"
  trial = json.loads(trial_path.read_text())
  trial["status"], trial["score"] = "RUNNING", None
  trial_path.write_text(json.dumps(trial))

  again = tuning.search(base, settings, verbose=0)["trials"]
  assert len(again) == 1 and again[0]["status"] == "COMPLETED"
  assert again[0]["objective"] == first["objective"]
  assert (tune_dir / "trials" / "0" / "metrics.jsonl").read_text() == rounds


# --- The committed tuned flagfiles ---------------------------------------------


def test_the_tuned_office_flagfiles_hold_their_searches_best_values():
  """flags/tuned/*.flags (README, "Tuned, honest results"): each parses and
  validates as a run of scripts/train.py, reports the refit model, keeps the
  search's protocol and budget, and holds exactly the best values its header
  names (the file was made from the search's best.flags)."""
  import glob
  import re
  from absl import flags as absl_flags
  from maml_tf import cli
  if "model" not in absl_flags.FLAGS:
    cli.define_flags()
  paths = sorted(glob.glob(os.path.join(ROOT, "flags", "tuned", "*.flags")))
  assert len(paths) >= 4, paths
  for path in paths:
    text = open(path).read()
    best = text.split("# Best values: ")[1].splitlines()[0].split(", ")
    absl_flags.FLAGS.unparse_flags()
    try:
      absl_flags.FLAGS(["x", f"--flagfile={path}"])
      config = cli.config_from_flags().validate()
    finally:
      absl_flags.FLAGS.unparse_flags()
    assert config.refit and config.validation_fraction == 0.1, path
    steps = int(re.search(r"# Search: random: 5 trials x (\d+) steps = ",
                          text).group(1))
    assert steps in (2000, 6000), (path, steps)
    assert f"5 trials x {steps} steps = {5 * steps:,} training steps" in text, path
    assert f"--train_steps={steps} " in text, path  # the header's command
    assert (config.train_steps, config.eva_batches) == (steps, 400), path
    assert config.select_metric == "ndcg@10", path
    for entry in best:
      name, value = entry[2:].split("=", 1)
      assert f"\n--{name}={value}\n" in text, (path, entry)
      field = getattr(config, name)
      assert field == type(field)(value), (path, name, field, value)
