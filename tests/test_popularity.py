"""scripts/popularity.py: MostPop under the release protocol of a tiny
dataset, against the numpy oracle's ranking metrics; its one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import oracles
from tests.helpers import ROOT, write_release_layout

SCRIPT = os.path.join(ROOT, "scripts", "popularity.py")


def _run(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, SCRIPT] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _pairs(path):
  rows = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.int64)
  return rows[:, ::-1]  # (user, item)


def test_most_popular_matches_the_oracle(tmp_path):
  data = tmp_path / "data"
  write_release_layout(str(data))
  proc = _run(["--dataset=custom", f"--data_dir={data}", "--topk=5,10"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["model"] == "most_popular" and out["protocol"]["name"] == "release"
  assert set(out) >= {"test"} and "valid" not in out
  train, test = _pairs(data / "train.csv"), _pairs(data / "test.csv")
  n_users, n_items = 24, 30
  counts = np.bincount(train[:, 1], minlength=n_items).astype(float)
  scores = np.tile(counts, (n_users, 1))
  train_items = [train[train[:, 0] == u, 1] for u in range(n_users)]
  test_items = [test[test[:, 0] == u, 1] for u in range(n_users)]
  for k in (5, 10):
    expected = oracles.evaluate(scores, train_items, test_items, k)
    for name, value in expected.items():
      assert out["test"][f"{name}@{k}"] == pytest.approx(value, abs=1e-6), (name, k)


def test_a_bad_flag_is_one_line(tmp_path):
  proc = _run(["--dataset=custom", f"--data_dir={tmp_path / 'missing'}"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: `--data_dir` must be an existing folder")
