"""scripts/plot.py: learning curves of several workdirs to one PNG."""

import json
import os
import subprocess
import sys

import numpy as np

from maml_tf import data
from maml_tf import train
from maml_tf.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "plot.py")


def _run(args):
  return subprocess.run([sys.executable, SCRIPT] + args, capture_output=True,
                        text=True, timeout=120, cwd=ROOT)


def _real_run(workdir):
  """A tiny run with a validation split: metrics.jsonl as training writes it."""
  rng = np.random.default_rng(0)
  pairs = np.unique(np.stack([rng.integers(0, 24, 260),
                              rng.integers(0, 30, 260)], 1), axis=0)
  pairs = pairs[rng.permutation(len(pairs))]
  ds = data.from_arrays(pairs[:190], pairs[190:], n_users=24, n_items=30)
  config = Config(embed_dim=8, hidden_layer_dim=8, batch_size=32, num_neg=2,
                  train_steps=6, eva_batches=2, jit_compile=False,
                  tensorboard=False, export=False, validation_fraction=0.2,
                  workdir=workdir)
  train.train_and_evaluate(config, dataset=ds, verbose=0)


def _written_run(workdir):
  """A run without validation, killed while writing its last line."""
  os.makedirs(workdir)
  lines = [json.dumps({
      "step": step, "round": step // 2,
      "test": {"ndcg@10": 0.1 + 0.01 * step, "recall@10": 0.2,
               "hr@10": 0.3, "precision@10": 0.04},
      "train": {"loss": 100.0 - step, "embedding_loss": 100.0 - step,
                "cov_loss": -0.1}}) for step in (2, 4, 6)]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("\n".join(lines) + '\n{"step": 8, "te')


def test_plot_overlays_two_workdirs(tmp_path):
  paper, cml = str(tmp_path / "paper"), str(tmp_path / "cml")
  _real_run(paper)
  _written_run(cml)
  with open(os.path.join(paper, "metrics.jsonl")) as f:  # MAML explains
    assert all("entropy_ratio" in json.loads(l)["explanation"] for l in f)
  out = str(tmp_path / "curves.png")
  proc = _run([f"--workdir={paper}", f"--workdir={cml}", "--label=MAML",
               "--label=CML", f"--out={out}"])
  assert proc.returncode == 0, proc.stderr
  assert "wrote" in proc.stdout
  with open(out, "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000


def test_plot_errors_are_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = _run([f"--workdir={empty}", f"--out={tmp_path / 'x.png'}"])
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      f"error: {empty}: has no metrics.jsonl (not a run's workdir?)")
  _written_run(str(tmp_path / "run"))
  proc = _run([f"--workdir={tmp_path / 'run'}", "--label=a", "--label=b",
               f"--out={tmp_path / 'x.png'}"])
  assert proc.returncode == 2 and "`--label` must be given once per" in proc.stderr
  proc = _run([f"--workdir={tmp_path / 'run'}", "--out=curves.pdf"])
  assert proc.returncode == 2 and "must name a .png file" in proc.stderr


def test_plot_reads_records_as_training_does_without_tensorflow(tmp_path):
  """plot reads metrics.jsonl with maml_tf.evaluate.records: a cut-short last
  line is dropped, a damaged earlier line is refused in one line; and reading
  does not load TensorFlow."""
  run = tmp_path / "run"
  _written_run(str(run))
  probe = ("import sys\n"
           "from maml_tf.commands import plot\n"
           f"records = plot.read_records({str(run)!r})\n"
           "print([r['step'] for r in records], 'tensorflow' in sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                        text=True, timeout=120, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split("\n")[0] == "[2, 4, 6] False"
  path = run / "metrics.jsonl"
  lines = path.read_text().split("\n")
  path.write_text("\n".join([lines[0], '{"step": 3, "te'] + lines[1:]))
  proc = _run([f"--workdir={run}", f"--out={tmp_path / 'x.png'}"])
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      f"error: {path}: line 2 is not JSON; the file is damaged (move it away "
      "to start the run afresh)")
  assert not (tmp_path / "x.png").exists()
