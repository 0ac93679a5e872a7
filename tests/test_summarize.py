"""scripts/summarize.py: mean ± sd rows from metrics.json files, and refusals."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "summarize.py")


def _run_dir(path, recall, step, selected_by="validation recall@20", finished=True):
  os.makedirs(path)
  summary = {"finished": finished, "results": {"best": {
      "step": step, "selected_by": selected_by,
      "test": {"recall@20": recall, "ndcg@20": recall / 2}}}}
  with open(os.path.join(path, "metrics.json"), "w") as f:
    json.dump(summary, f)


def _summarize(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def test_mean_and_sample_sd(tmp_path):
  for seed, recall in enumerate((0.10, 0.12, 0.14)):
    _run_dir(tmp_path / f"m_s{seed}", recall, 400 + 100 * seed)
  proc = _summarize(f"--run=M={tmp_path}/m_s*", "--metrics=recall@20,ndcg@20")
  assert proc.returncode == 0, proc.stderr
  row = proc.stdout.strip().splitlines()[-1]
  # mean 12.00, sample sd 2.00 (x100); ndcg half of it
  assert row == "| M | 3 | 400–600 | 12.00 ± 2.00 | 6.00 ± 1.00 |"


def test_refuses_unfinished_test_selected_and_bad_flags(tmp_path):
  _run_dir(tmp_path / "a", 0.1, 400, finished=False)
  proc = _summarize(f"--run=A={tmp_path}/a")
  assert proc.returncode == 2 and "has not finished" in proc.stderr
  assert proc.stdout == ""
  _run_dir(tmp_path / "b", 0.1, 400, selected_by="test ndcg@10")
  proc = _summarize(f"--run=B={tmp_path}/b", "--metrics=recall@20")
  assert proc.returncode == 2 and "not on validation" in proc.stderr
  proc = _summarize("--run=nolabel")
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: `--run` must look like LABEL=GLOB. Received: 'nolabel'"
  proc = _summarize(f"--run=C={tmp_path}/nothing*")
  assert proc.returncode == 2 and "no folder matches" in proc.stderr
