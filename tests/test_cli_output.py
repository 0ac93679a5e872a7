"""What a newcomer sees from scripts/train.py: no TensorFlow start-up noise,
each modality described once, the vocabularies written."""

import os
import re
import subprocess
import sys

from tests.helpers import SCRIPT, ROOT, write_release_layout

NATIVE_LOG = re.compile(r"^([IWEF]\d{4} .*\.cc:\d+\]|WARNING: All log messages before)")


def test_quiet_start_and_one_description_per_modality(tmp_path):
  data = tmp_path / "data"
  features = write_release_layout(str(data))
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--dataset=custom", f"--data_dir={data}",
       f"--extra_features=meta={features}", "--batch_size=8",
       "--train_steps=2", "--eva_batches=2", "--noexport", "--notensorboard",
       f"--workdir={tmp_path / 'w'}", "--embed_dim=4", "--hidden_layer_dim=8"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  noise = [l for l in proc.stderr.splitlines() if NATIVE_LOG.match(l)]
  assert not noise, noise[:3]
  described = [l for l in proc.stdout.splitlines() if l.startswith("  meta:")]
  assert len(described) == 1 and "meta: meta:" not in described[0], described
  for name in ("users.tsv", "items.tsv"):
    assert (tmp_path / "w" / "vocab" / name).exists()
