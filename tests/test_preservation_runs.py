"""Modality preservation measured during and after a run.

`--preservation_modalities` puts the measure of `maml_tf.evaluate.preservation`
into every metrics.jsonl round and into TensorBoard, for a model that reads
the features (MARIO) and for one that does not (LightGCN: the features are
read for the measure only); `scripts/preservation.py` measures a finished
run's checkpoint and gives the same numbers as the run's last round.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.evaluate import preservation
from tests.helpers import ROOT, run_in_process, write_release_layout


def _events_tags(logdir):
  tags = set()
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.add(value.tag)
  return tags


@pytest.mark.parametrize("model", ["lightgcn", "mario"])
def test_preservation_every_round_and_after(tmp_path, model):
  data = tmp_path / "data"
  features = write_release_layout(str(data))
  workdir = tmp_path / "run"
  args = ["--dataset=custom", f"--data_dir={data}", f"--extra_features=meta={features}",
          f"--model={model}", "--num_neg=1", "--embed_dim=8", "--batch_size=16",
          "--train_steps=6", "--eva_batches=3", "--topk=5", "--select_metric=ndcg@5",
          "--noexport", "--preservation_modalities=meta", f"--workdir={workdir}"]
  if model == "mario":
    args.append("--modalities=meta")
  proc = run_in_process(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records] == [3, 6]
  for r in records:
    meta = r["preservation"]["meta"]
    assert set(meta) == {"all", "high_degree"}
    assert 0.0 < meta["all"] < 2.0 and 0.0 < meta["high_degree"] < 2.0
  tags = _events_tags(workdir / "tensorboard")
  assert {"preservation/meta/all", "preservation/meta/high_degree"} <= tags
  # The explanation's concentration, every round, for a model that explains.
  if model == "mario":
    for r in records:
      ex = r["explanation"]
      assert 0.0 <= ex["entropy_ratio"] <= 1.0 + 1e-9
      assert ex["share/interaction"] + ex["share/meta"] == pytest.approx(1.0)
    assert {"explanation/entropy_ratio", "explanation/share/meta"} <= tags
  else:
    assert all("explanation" not in r for r in records)

  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "preservation.py"),
       f"--workdir={workdir}", "--which=last"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = json.loads(proc.stdout.strip().splitlines()[-1])
  assert after["step"] == 6 and after["model"] == model
  np.testing.assert_allclose(after["preservation"]["meta"]["all"],
                             records[-1]["preservation"]["meta"]["all"], rtol=1e-5)


def test_a_modality_the_data_lacks_is_a_one_line_error(tmp_path):
  data = tmp_path / "data"
  write_release_layout(str(data))
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}", "--model=mf", "--num_neg=1",
      "--embed_dim=8", "--batch_size=16", "--train_steps=3", "--eva_batches=3",
      "--noexport", "--notensorboard", "--preservation_modalities=text",
      f"--workdir={tmp_path / 'run'}"])
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: `--preservation_modalities` names a modality")
  assert "Received: text" in lines[-1]


def test_bad_modality_name_is_refused():
  proc = run_in_process(["--preservation_modalities=Text!"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: `--preservation_modalities` must be modality names like text, meta. "
      "Received: 'Text!'")


def test_report_uses_the_models_item_representation():
  class Fixed:
    def item_representation(self):
      return np.eye(3, dtype=np.float32)

  class Data:
    train = np.array([[0, 0], [1, 0], [0, 1]])
    n_items = 3
    features = {"m": np.eye(3, dtype=np.float32)}

  report = preservation.preservation_report(Fixed(), Data())
  assert report == {"m": {"all": 0.0, "high_degree": 0.0}}
