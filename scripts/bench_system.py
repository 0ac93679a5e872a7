"""The benchmark's system scenarios: serving latency (`serve`), local worker
processes (`workers`), the train.csv reader (`loader`), and the release's
own speed measured beside ours (`release`).

- serve: p50/p99 latency of the SavedModel's serving_default and retrieve
  signatures for 1 and 100 users, in-process (MAML on the real Office data).
- workers: training throughput of 1 and of 2 local worker processes under
  `--strategy=multi_worker` (TF_CONFIG on 127.0.0.1), same global batch,
  whole Office-sized epochs.
- loader: rows per second of `data.read_interactions` on a synthetic
  10M-row train.csv (200k with --quick) in the release's layout, with the
  pandas reader beside the hand-written csv-module parser it replaced. The
  reference is not a copy: it is the package as of commit
  `LOADER_REFERENCE_COMMIT` (the last one before pandas), extracted with
  `git archive` and run in a process of its own, so what is measured is
  exactly the old code; without git (or that commit) it is skipped.
- release: scripts/release_speed.py on the authors' release checkout
  (--release_dir), which prints `RESULT {json}` with the release's training
  pairs/s and Office evaluation seconds.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import bench_sizes

LOADER_REFERENCE_COMMIT = "379cd8135f374008012a72171b7c4644b7abf9c9"
WORKER_EPOCHS = 3


def result_line(stdout: str):
  """The JSON of the last `RESULT {...}` line of a scenario's output, or None."""
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  return json.loads(lines[-1][len("RESULT "):]) if lines else None


def scratch_dir(prefix):
  """A new temporary folder, removed when this scenario's process exits."""
  folder = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, folder, True)
  return folder


def _config(**overrides):
  from maml_tf.config import Config
  base = dict(export=False, tensorboard=False, workdir=scratch_dir("bench-"))
  base.update(overrides)
  return Config(**base)


def serve_latency(quick):
  from maml_tf import data
  from maml_tf import train
  from maml_tf.export import measures
  from maml_tf.export import saved_model as export
  ds = data.load_office(modalities=("meta",))
  model = train.build_model(_config(), ds)
  folder = scratch_dir("bench-export-")
  path = export.export_saved_model(model, ds, folder, "bench", topk=10,
                                   retrieve_candidates=200)
  repeats = 20 if quick else 100
  out = {}
  for signature in ("serving_default", "retrieve"):
    for users in (1, 100):
      out[f"{signature}@{users}"] = measures.latency(path, signature, users, repeats)
  return out


def worker_throughput(quick):
  """One worker of `workers` (TF_CONFIG set): whole epochs of the release's
  MAML settings on Office-sized data; the chief's global pairs/s."""
  import keras
  from maml_tf import train
  from maml_tf.data.sampler import PairSampler
  from maml_tf.train import distribute
  strategy = distribute.make_strategy("multi_worker")
  ds = bench_sizes.dataset("office", quick, with_features=True)
  config = _config(modalities=tuple(ds.features))
  keras.utils.set_random_seed(0)
  model = train.build_model(config, ds, strategy)
  sampler = PairSampler(ds.train, config.batch_size, config.num_neg, 0)
  spe = sampler.steps_per_epoch
  model.fit(sampler.dataset(0, spe), epochs=1, steps_per_epoch=spe, verbose=0)
  start = time.perf_counter()
  model.fit(sampler.dataset(spe, WORKER_EPOCHS * spe), epochs=WORKER_EPOCHS,
            steps_per_epoch=spe, verbose=0)
  seconds = time.perf_counter() - start
  steps = WORKER_EPOCHS * spe
  return {"pairs_per_s": config.batch_size * steps / seconds,
          "ms_per_step": 1000 * seconds / steps, "epochs": WORKER_EPOCHS,
          "steps": steps}


def workers(n, quick, script):
  """Throughput of `n` local worker processes (MultiWorkerMirroredStrategy):
  each gets 1/n of every global batch of 5000."""
  from maml_tf.train import distribute
  procs = []
  for tf_config in distribute.local_tf_configs(n):
    env = dict(os.environ, TF_CONFIG=tf_config)
    cmd = [sys.executable, script, "--scenario=worker"] + (["--quick"] if quick else [])
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=1800) for p in procs]
  result = result_line(outs[0][0])
  if procs[0].returncode or result is None:
    raise RuntimeError(f"worker 0 failed: {outs[0][1][-1500:]}")
  return result


def _write_train_csv(path, n_rows, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    f.write("itemID,userID,reviewerID,asin,unixReviewTime\n")
    for start in range(0, n_rows, 1_000_000):
      n = min(1_000_000, n_rows - start)
      users = rng.integers(0, max(1, n_rows // 10), n)
      items = rng.integers(0, max(1, n_rows // 20), n)
      times = rng.integers(1_000_000_000, 1_400_000_000, n)
      f.write("".join(f"{i},{u},R{u},A{i},{t}\n"
                      for u, i, t in zip(users.tolist(), items.tolist(),
                                         times.tolist())))


REFERENCE_RUN = """
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from maml_tf import data
start = time.perf_counter()
arrays = data.read_interactions(sys.argv[2])
seconds = time.perf_counter() - start
np.savez(sys.argv[3], *[np.asarray([]) if a is None else a for a in arrays],
         none=np.asarray([a is None for a in arrays]))
print(seconds)
"""


def _reference_read(root, path):
  """(seconds, arrays) of the old reader: the package at
  LOADER_REFERENCE_COMMIT extracted with `git archive` and run in its own
  process (its modules import each other by the package's name); None
  without git, that commit, or when it fails."""
  folder = scratch_dir("bench-ref-")
  try:
    archive = subprocess.run(["git", "-C", root, "archive", LOADER_REFERENCE_COMMIT,
                              "maml_tf"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    out = os.path.join(folder, "arrays.npz")
    proc = subprocess.run([sys.executable, "-c", REFERENCE_RUN, folder, path, out],
                          capture_output=True, text=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  import numpy as np
  saved = np.load(out, allow_pickle=True)  # our own file: object arrays of asins
  n = len(saved["none"])
  arrays = [None if saved["none"][i] else saved[f"arr_{i}"] for i in range(n)]
  return float(proc.stdout.strip().splitlines()[-1]), arrays


def loader(quick, root):
  import numpy as np
  from maml_tf import data
  n_rows = 200_000 if quick else 10_000_000
  folder = scratch_dir("bench-loader-")
  path = os.path.join(folder, "train.csv")
  _write_train_csv(path, n_rows)
  out = {"rows": n_rows, "mb": os.path.getsize(path) / 2**20}
  start = time.perf_counter()
  ours = data.read_interactions(path)
  seconds = time.perf_counter() - start
  out["pandas"] = {"seconds": seconds, "rows_per_s": n_rows / seconds}
  reference = _reference_read(root, path)
  if reference is not None:
    seconds, theirs = reference
    out["reference"] = {"seconds": seconds, "rows_per_s": n_rows / seconds}
    # Same answer, or the comparison means nothing.
    for a, b in zip(ours, theirs):
      assert (a is None and b is None) or np.array_equal(a, b), "loaders differ"
  else:
    out["reference_skipped"] = f"git or commit {LOADER_REFERENCE_COMMIT[:10]} unavailable"
  os.remove(path)
  return out


def release_figures(result):
  """(train pairs/s, Office evaluation seconds) of release_speed.py's
  RESULT, from its flat keys (`train_pairs_per_s`, `eval_seconds`) or
  nested ones (`train.pairs_per_s`, `eval.seconds`); None where absent."""
  def find(flat, outer, inner):
    if isinstance(result.get(flat), (int, float)):
      return float(result[flat])
    nested = result.get(outer)
    if isinstance(nested, dict) and isinstance(nested.get(inner), (int, float)):
      return float(nested[inner])
    return None
  return (find("train_pairs_per_s", "train", "pairs_per_s"),
          find("eval_seconds", "eval", "seconds"))


def release(release_dir, quick, root):
  """The release's figures from scripts/release_speed.py, run here."""
  script = os.path.join(root, "scripts", "release_speed.py")
  if not os.path.isfile(script):
    raise RuntimeError(f"{script} not found (it measures the release)")
  cmd = [sys.executable, script, f"--release_dir={release_dir}"]
  if quick:
    cmd.append("--quick")
  proc = subprocess.run(cmd, capture_output=True, text=True)
  result = result_line(proc.stdout)
  if proc.returncode or result is None:
    raise RuntimeError(f"release_speed.py failed: {proc.stderr[-1500:]}")
  pairs, seconds = release_figures(result)
  return dict(result, train_pairs_per_s=pairs, eval_seconds=seconds)
