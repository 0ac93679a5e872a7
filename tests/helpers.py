"""Helpers shared by the test files: a tiny dataset in the release's layout,
and the train command run as a real process or in this process."""

import contextlib
import io
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")


def write_release_layout(folder, n_users=24, n_items=30, seed=0):
  """A tiny dataset in the release's layout, plus a feature matrix."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  rows = {"train": [], "test": []}
  for u in range(n_users):
    items = rng.choice(n_items, size=6, replace=False)
    for j, i in enumerate(items):
      rows["train" if j < 4 else "test"].append((i, u))
  for split, pairs in rows.items():
    with open(os.path.join(folder, f"{split}.csv"), "w") as f:
      f.write("itemID,userID,reviewerID,asin\n")
      for i, u in pairs:
        f.write(f"{i},{u},R{u},A{i:04d}\n")
  features = os.path.join(folder, "meta.npy")
  np.save(features, rng.normal(size=(n_items, 5)).astype(np.float32))
  return features


def run(args, cwd=ROOT, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, SCRIPT] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def run_in_process(args):
  """What scripts/train.py's main runs (`cli.run(cli.train_main)` after
  `cli.parse_flags`), in this process: the same parsing, one-line errors and
  exit statuses, without an interpreter and TensorFlow start-up per call.
  Returns a CompletedProcess. An exception that would have been a traceback
  propagates and fails the test."""
  from absl import flags as absl_flags
  from maml_tf import cli
  if "model" not in absl_flags.FLAGS:
    cli.define_flags()
  absl_flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      cli.parse_flags([SCRIPT] + list(args))
      code = cli.run(cli.train_main)
    except SystemExit as e:  # flag errors: usage_error exits 2
      code = e.code
    finally:
      absl_flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess([SCRIPT] + list(args), code,
                                     out.getvalue(), err.getvalue())
