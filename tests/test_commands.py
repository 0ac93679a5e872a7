"""The `maml-tf` command: its dispatcher, `--help` where it is looked for,
and a built wheel installed into a fresh environment training from any
folder on the embedded Office data."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, SCRIPT

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _run(args, cwd=ROOT, timeout=300, python=sys.executable):
  return subprocess.run([python] + args, cwd=cwd, env=ENV, capture_output=True,
                        text=True, timeout=timeout)


def test_no_command_prints_the_commands_and_exits_2():
  proc = _run(["-m", "maml_tf"])
  assert proc.returncode == 2
  for name in ("train", "tune", "export", "summarize", "significance", "table",
               "plot", "preservation", "popularity", "serve-client"):
    assert f"  {name} " in proc.stdout


def test_unknown_command_is_one_line_and_exit_2():
  proc = _run(["-m", "maml_tf", "fit"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: unknown command 'fit'; one of: train, tune, export, summarize, "
      "significance, table, plot, preservation, popularity, serve-client"]


@pytest.mark.parametrize("argv", [["-m", "maml_tf", "train", "--help"],
                                  [SCRIPT, "--help"]])
def test_train_help_lists_the_runs_flags_grouped_with_defaults(argv):
  proc = _run(argv)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  headings = [l for l in out.splitlines() if l.endswith(":") and not l.startswith(" ")]
  assert headings == ["data:", "model:", "training:", "evaluation:", "outputs:",
                      "export:", "distribution:"]
  assert "  --embed_dim=64\n      embedding size K" in out
  assert "  --margin=1.6\n      hinge margin" in out
  assert "--helpfull" in out
  # absl's own flags stay under --helpfull.
  assert "absl.app" not in out and "helpxml" not in out
  assert out.index("model:") < out.index("--embed_dim") < out.index("training:")


def test_tune_help_shows_its_own_flags_and_the_runs():
  proc = _run(["-m", "maml_tf", "tune", "--help"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.index("this command:") < proc.stdout.index("--tune_dir=")
  assert proc.stdout.index("--tune_dir=") < proc.stdout.index("\ndata:")


def test_helpfull_is_absls():
  proc = _run([SCRIPT, "--helpfull"])
  assert "absl.app:" in proc.stdout and "--[no]helpxml" in proc.stdout


def test_a_built_wheel_trains_from_any_folder(tmp_path):
  """`pip install .` (not -e): the wheel carries the Office data and the
  console script; the venv reuses this environment's TensorFlow."""
  dist = tmp_path / "dist"
  built = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
       "-q", "-w", str(dist), ROOT], capture_output=True, text=True, timeout=600)
  assert built.returncode == 0, built.stderr[-3000:]
  wheels = [w for w in os.listdir(dist) if w.endswith(".whl")]
  assert len(wheels) == 1, wheels
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                  str(venv)], check=True, timeout=300)
  python = str(venv / "bin" / "python")
  installed = subprocess.run(
      [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
       str(dist / wheels[0])], capture_output=True, text=True, timeout=600)
  assert installed.returncode == 0, installed.stderr[-3000:]
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  where = _run(["-c", "import maml_tf; print(maml_tf.__file__)"], cwd=elsewhere,
               python=python)
  assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
  proc = subprocess.run(
      [str(venv / "bin" / "maml-tf"), "train", "--dataset=office", "--model=mf",
       "--num_neg=1", "--embed_dim=8", "--batch_size=512", "--train_steps=2",
       "--eva_batches=2", "--noexport", "--notensorboard", "--workdir=w"],
      cwd=elsewhere, env=ENV, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (elsewhere / "w" / "metrics.json").exists()
  assert "Devices: " in proc.stdout and "ndcg@10" in proc.stdout
