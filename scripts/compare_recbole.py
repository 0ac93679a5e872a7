"""Our BPR-MF / LightGCN beside RecBole's BPR / LightGCN on one split.

  python scripts/compare_recbole.py --workdir=runs/recbole_compare \
      --pairs=bpr,lightgcn

What it does, in order:

1. Writes ONE random 8:1:1 per-user split of the embedded Office data
   (maml_tf/datasets/office: train.csv + test.csv pooled, a pair seen twice
   counted once) as RecBole benchmark files
   `<workdir>/data/office/office.{train,valid,test}.inter` (tab-separated,
   header `user_id:token<TAB>item_id:token`; tokens are Office's integer
   ids). The rule and the random draw are those of `--protocol=split` with
   the same `--seed` (see maml_tf/protocols/split.py): per user of n
   interactions, n >= 3: valid = test = max(1, floor(n/10 + 1/2)); n = 2: one
   train, one test; n = 1: train only; the order inside a user is uniform,
   from numpy's default_rng(seed).
2. Writes a RecBole config yaml per model (`<workdir>/recbole_<model>.yaml`)
   and runs RecBole in its own virtual environment (`--recbole_python`) in a
   subprocess, torch at `--threads` threads.
3. Runs ours (`scripts/train.py --flagfile=<flagfile>`) on the same files:
   `--dataset=custom --data_format=recbole --data_dir=<workdir>/data/office`
   (a dataset that carries a validation split is used as given by
   `--protocol=split`), TensorFlow at `--threads` threads.
4. Prints one row per tool (valid and test Recall@20 / NDCG@20, best and
   last epoch, seconds) and appends the rows to `<workdir>/results.jsonl`.

Both tools: full ranking over every item; validation ranks exclude the
user's train items, test ranks train and validation items; users without
items in a split are not evaluated on it; the best round is chosen on
validation Recall@20, and its test numbers are reported.

RecBole's settings are its defaults (recbole/properties/overall.yaml and the
model's yaml: Adam lr 1e-3, batch 2048, d = 64, one uniform negative per
positive, weight_decay 0, BPR with xavier-normal init and no regulariser)
except where the yaml written here says otherwise: metrics Recall/NDCG at
10 and 20, valid_metric Recall@20, stopping_step 20 (so it stops after 21
epochs without a new best: `recbole.utils.early_stopping` uses `>`),
`--recbole_epochs` epochs at most (default 1000, ~ our 20000-step budget),
CPU. `--recbole_set key=value` overrides any of them (values parsed as
YAML), e.g. `--recbole_set n_layers=3`.

Needs: a virtual environment with RecBole 1.2.1 (not a dependency of this
project), e.g.

  python -m venv /work/venvs/recbole
  /work/venvs/recbole/bin/pip install torch recbole==1.2.1 \
      numpy==1.26.4 pandas==2.1.4 scipy==1.10.1

(Why the pins: RecBole 1.2.1 uses `np.float`, removed in numpy 1.24, in
some metrics; its LightGCN calls `dok_matrix._update`, which scipy 1.13 no
longer has; and its `trainer.evaluate(load_best_model=True)` calls
`torch.load` without `weights_only=False`, so the subprocess sets
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.)

Speed mode (`--speed`): the time of one training epoch and of one full
validation evaluation, ours beside RecBole's, per size, model and thread
count:

  python scripts/compare_recbole.py --speed --sizes=office,clothing \
      --pairs=bpr,lightgcn --threads=1 --workdir=/tmp/recbole_speed

Sizes (`SIZES`): `office`, the split above; `clothing` and `items100k`,
the benchmark's synthetic draws of the same names (scripts/bench_sizes.py:
Amazon Clothing's shape, 39,387 users and 23,033 items; 100k items at
Office's densities; skewed degrees as docs/speed.md describes), split 8:1:1
per user by the rule above. Each size is written once as RecBole benchmark files under
`<workdir>/data/<size>/`, which both tools read.

Per (size, model): RecBole in its venv (`SPEED_RUNNER`, its own subprocess)
and ours (this script with `--speed_worker`, its own subprocess), each
process pinned to `--threads` CPUs (`--cpus`), torch at
torch.set_num_threads(n), TensorFlow at TF_NUM_INTRAOP_THREADS=n and
TF_NUM_INTEROP_THREADS=1 (ops one at a time, each on n threads: torch's
way), OMP/MKL at n. Each side: one warm-up epoch, then `--repeats` epochs
timed whole; one warm-up validation evaluation, then `--repeats` timed
whole. `--repeats=0` times the first epoch and evaluation, one-time costs
included (compilation, the first touch of the tables), for sizes where an
epoch takes many minutes and those costs are seconds; the table marks such
rows "(no warm-up)". What is timed:

- RecBole: `trainer._train_epoch(train_data, epoch)` (its batches of 2048
  with their negatives drawn by its dataloader, forward, backward, Adam; the
  last partial batch kept) and `trainer.evaluate(valid_data,
  load_best_model=False)` (full sort over every item, Recall@20 and
  NDCG@20), at each `--recbole_eval_batch` value (RecBole's
  `eval_batch_size`, 4096 by default: the users per batch are
  eval_batch_size // items, at least 1). LightGCN's cached propagated
  tables are dropped before each evaluation (a training epoch drops them),
  so each evaluation propagates once, as in training.
- ours: `model.fit` over the `PairSampler` dataset, as `maml-tf train`
  runs it (the batch-2048 steps of one pass; the sampler drops the last
  partial batch), the epoch timed from Keras' on_epoch_begin to
  on_epoch_end; and the validation `full_ranking.Evaluator` of
  `--protocol=split` called once (its `prepare_scoring` propagates once).

Both: d = 64, batch 2048, one uniform negative, Adam lr 1e-3; LightGCN at
each `--gcn_layers` depth. Prints a table and writes `<workdir>/speed.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICE = os.path.join(ROOT, "maml_tf", "datasets", "office")
METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")

# One comparison per name: (RecBole model, its settings beyond the defaults,
# our flagfile).
PAIRS = {
    "bpr": ("BPR", {}, "flags/office_mf.flags"),
    # The propagation depth of our flagfile (3: the LightGCN paper's);
    # RecBole's default is 2. Its regulariser (reg_weight 1e-5 on the
    # batch's ego rows' norms) stays its own.
    "lightgcn": ("LightGCN", {"n_layers": 3}, "flags/office_lightgcn.flags"),
}


# ---------------------------------------------------------------------------
# the split


def office_pairs() -> np.ndarray:
  """Office's (user, item) pairs, train.csv and test.csv pooled, unique,
  sorted by (user, item)."""
  rows = []
  for name in ("train.csv", "test.csv"):
    with open(os.path.join(OFFICE, name), newline="") as f:
      for rec in csv.DictReader(f):
        rows.append((int(rec["userID"]), int(rec["itemID"])))
  return np.unique(np.asarray(rows, np.int64), axis=0)


def split_pairs(pairs: np.ndarray, seed: int):
  """(train, valid, test) pairs: the 8:1:1 per-user rule of the module
  docstring; one uniform draw per pair from default_rng(seed) orders the
  pairs inside each user, the first n_test go to test, the next n_valid to
  validation."""
  users = pairs[:, 0]
  n_u = np.bincount(users)
  tenth = np.maximum(1, np.floor(n_u / 10 + 0.5).astype(np.int64))
  n_test = np.where(n_u >= 3, tenth, np.where(n_u == 2, 1, 0))
  n_valid = np.where(n_u >= 3, tenth, 0)
  draws = np.random.default_rng(seed).random(len(pairs))
  order = np.lexsort((draws, users))
  first = np.concatenate([[0], np.cumsum(n_u)[:-1]])
  rank = np.empty(len(pairs), np.int64)
  rank[order] = np.arange(len(pairs)) - first[users[order]]
  test = rank < n_test[users]
  valid = ~test & (rank < (n_test + n_valid)[users])
  return pairs[~test & ~valid], pairs[valid], pairs[test]


def write_split(data_dir: str, seed: int) -> dict:
  """Writes office.{train,valid,test}.inter under data_dir; their sizes."""
  parts = dict(zip(("train", "valid", "test"),
                   split_pairs(office_pairs(), seed)))
  write_inter(data_dir, "office", parts)
  return {name: len(rows) for name, rows in parts.items()}


# ---------------------------------------------------------------------------
# RecBole


RUNNER = r'''
import json, sys, time
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_logger, init_seed

torch.set_num_threads(int(sys.argv[4]))
config = Config(model=sys.argv[1], config_file_list=[sys.argv[2]])
# The order of recbole.quick_start.run_recbole: seed, data, seed, model.
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
dataset = create_dataset(config)
train, valid, test = data_preparation(config, dataset)
init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
model = get_model(config["model"])(config, train._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
scores = []
plain_valid = trainer._valid_epoch
def valid_epoch(*args, **kwargs):
  score, result = plain_valid(*args, **kwargs)
  scores.append(float(score))
  return score, result
trainer._valid_epoch = valid_epoch
start = time.time()
_, best_valid = trainer.fit(train, valid, saved=True, show_progress=False)
test_result = trainer.evaluate(test, load_best_model=True, show_progress=False)
seconds = time.time() - start
# recbole.utils.early_stopping keeps the LAST of equal bests (>=).
best = max(range(len(scores)), key=lambda k: (scores[k], k)) if scores else -1
step = config["eval_step"]
out = {"valid": dict(best_valid), "test": dict(test_result),
       "best_epoch": (best + 1) * step, "last_epoch": len(scores) * step,
       "seconds": round(seconds, 1),
       "n_users": dataset.user_num - 1, "n_items": dataset.item_num - 1,
       "train_pairs": len(train._dataset)}
with open(sys.argv[3], "w") as f:
  json.dump(out, f)
'''


def recbole_yaml(data_root: str, saved: str, epochs: int,
                 settings: dict) -> str:
  config = {
      "data_path": data_root, "dataset": "office",
      "benchmark_filename": ["train", "valid", "test"],
      "field_separator": "\t",
      "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
      "load_col": {"inter": ["user_id", "item_id"]},
      "use_gpu": False, "show_progress": False, "checkpoint_dir": saved,
      "epochs": epochs, "stopping_step": 20, "eval_step": 1,
      "metrics": ["Recall", "NDCG"], "topk": [10, 20],
      "valid_metric": "Recall@20",
  }
  config.update(settings)
  # JSON is YAML: one key a line.
  return "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items())


def run_recbole(args, name: str, model: str, settings: dict) -> dict:
  os.makedirs(args.workdir, exist_ok=True)
  runner = os.path.join(args.workdir, "recbole_runner.py")
  with open(runner, "w") as f:
    f.write(RUNNER)
  yaml_path = os.path.join(args.workdir, f"recbole_{name}.yaml")
  with open(yaml_path, "w") as f:
    f.write(recbole_yaml(os.path.join(args.workdir, "data"),
                         os.path.join(args.workdir, f"recbole_saved_{name}"),
                         args.recbole_epochs, settings))
  out = os.path.join(args.workdir, f"recbole_{name}.json")
  env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
             OMP_NUM_THREADS=str(args.threads),
             MKL_NUM_THREADS=str(args.threads), CUDA_VISIBLE_DEVICES="")
  cmd = [args.recbole_python, runner, model, yaml_path, out, str(args.threads)]
  log = os.path.join(args.workdir, f"recbole_{name}.log")
  print("$", " ".join(shlex.quote(c) for c in cmd), f"> {log}", flush=True)
  start = time.time()
  with open(log, "w") as f:
    done = subprocess.run(cmd, cwd=args.workdir, env=env, stdout=f,
                          stderr=subprocess.STDOUT, check=False)
  if done.returncode:
    sys.exit(f"RecBole {model} failed (exit {done.returncode}); see {log}")
  with open(out) as f:
    res = json.load(f)
  row = {"tool": f"RecBole {model}", "settings": settings,
         "wall_seconds": round(time.time() - start, 1)}
  for split in ("valid", "test"):
    for m in METRICS:
      row[f"{split}_{m}"] = res[split][m]
  row.update(best_epoch=res["best_epoch"], last_epoch=res["last_epoch"],
             seconds=res["seconds"])
  return row


# ---------------------------------------------------------------------------
# ours


def run_ours(args, name: str, flagfile: str, train_pairs: int) -> dict:
  workdir = os.path.join(args.workdir, f"ours_{name}")
  cmd = [sys.executable, args.ours_entry, f"--flagfile={flagfile}",
         "--dataset=custom", "--data_format=recbole",
         f"--data_dir={os.path.join(args.workdir, 'data', 'office')}",
         f"--workdir={workdir}", "--overwrite", "--noexport",
         "--notensorboard"] + shlex.split(args.ours_flags)
  env = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(args.threads),
             TF_NUM_INTEROP_THREADS=str(args.threads),
             OMP_NUM_THREADS=str(args.threads), CUDA_VISIBLE_DEVICES="")
  log = workdir + ".log"
  print("$", " ".join(shlex.quote(c) for c in cmd), f"> {log}", flush=True)
  start = time.time()
  with open(log, "w") as f:
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f,
                          stderr=subprocess.STDOUT, check=False)
  if done.returncode:
    sys.exit(f"ours ({flagfile}) failed (exit {done.returncode}); see {log}")
  with open(os.path.join(workdir, "metrics.json")) as f:
    summary = json.load(f)
  best = summary["results"]["best"]
  stop = summary["early_stopping"]
  with open(os.path.join(workdir, "flags.txt")) as f:
    batch = next(int(line.split("=", 1)[1]) for line in f
                 if line.startswith("--batch_size="))
  per_epoch = train_pairs // batch  # the sampler drops the remainder
  row = {"tool": f"ours {flagfile}", "settings": args.ours_flags,
         "wall_seconds": round(time.time() - start, 1)}
  for split in ("valid", "test"):
    for m in METRICS:
      row[f"{split}_{m}"] = best[split][m]
  row.update(best_epoch=round(stop["best_step"] / per_epoch, 1),
             last_epoch=round(stop["stopped_at_step"] / per_epoch, 1),
             best_step=stop["best_step"], last_step=stop["stopped_at_step"],
             seconds=summary.get("train_seconds"))
  return row


# ---------------------------------------------------------------------------
# speed: the data


# The sizes: `office` is the real split above; the others are the
# benchmark's synthetic draws (scripts/bench_sizes.py), the same pairs for
# the same seed.
SIZES = ("office", "clothing", "items100k")


def size_pairs(size: str, seed: int) -> np.ndarray:
  """[m, 2] (user, item) pairs of one size, sorted by (user, item)."""
  if size == "office":
    return office_pairs()
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  import bench_sizes
  return bench_sizes.synthetic_pairs(bench_sizes.get(size), seed=seed)


def write_inter(data_dir: str, name: str, parts: dict):
  """<name>.{train,valid,test}.inter (RecBole benchmark files)."""
  os.makedirs(data_dir, exist_ok=True)
  for part, rows in parts.items():
    path = os.path.join(data_dir, f"{name}.{part}.inter")
    with open(path + ".tmp", "w") as f:
      f.write("user_id:token\titem_id:token\n")
      for start in range(0, len(rows), 1 << 20):
        f.write("".join(f"{u}\t{i}\n" for u, i in rows[start:start + (1 << 20)].tolist()))
    os.replace(path + ".tmp", path)


def write_size(workdir: str, size: str, seed: int):
  """(data folder, {users, items, train, valid, test}) of one size."""
  data_dir = os.path.join(workdir, "data", size)
  pairs = size_pairs(size, seed)
  parts = dict(zip(("train", "valid", "test"), split_pairs(pairs, seed)))
  write_inter(data_dir, size, parts)
  counts = {"users": int(len(np.unique(pairs[:, 0]))),
            "items": int(len(np.unique(pairs[:, 1]))),
            "interactions": int(len(pairs))}
  counts.update({part: int(len(rows)) for part, rows in parts.items()})
  return data_dir, counts


# ---------------------------------------------------------------------------
# speed: RecBole's side (run by the RecBole venv's python)


SPEED_RUNNER = r"""
import json, sys, time
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_logger, init_seed

with open(sys.argv[1]) as f:
  job = json.load(f)
torch.set_num_threads(job["threads"])
config = Config(model=job["model"], config_file_list=[job["yaml"]])
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
dataset = create_dataset(config)
train, valid, test = data_preparation(config, dataset)
init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
model = get_model(config["model"])(config, train._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
trainer.eval_collector.data_collect(train)  # what trainer.fit does first

def clock(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out

epochs = []
for epoch in range(1 + job["repeats"]):  # the first: warm-up
  seconds, _ = clock(lambda: trainer._train_epoch(train, epoch, show_progress=False))
  epochs.append(seconds)
  print(f"epoch {epoch}: {seconds:.2f} s", flush=True)
evals = {}
for size in job["eval_batch_sizes"]:
  config["eval_batch_size"] = size
  # A loader per size, as data_preparation makes it (its torch batch size
  # is fixed when it is made).
  loader = type(valid)(config, valid._dataset, valid._sampler, shuffle=False)
  times, result = [], None
  for _ in range(1 + job["repeats"]):
    if hasattr(model, "restore_user_e"):  # LightGCN: propagate again, as
      model.restore_user_e = model.restore_item_e = None  # after an epoch
    seconds, result = clock(lambda: trainer.evaluate(
        loader, load_best_model=False, show_progress=False))
    times.append(seconds)
    print(f"evaluate (eval_batch_size {size}): {seconds:.2f} s", flush=True)
  evals[str(size)] = {"seconds": times, "users_per_batch": loader.step,
                      "metrics": {k: float(v) for k, v in result.items()}}
out = {"epoch_seconds": epochs, "eval": evals, "batches": len(train),
       "train_pairs": len(train._dataset), "n_users": dataset.user_num - 1,
       "n_items": dataset.item_num - 1, "eval_users": len(valid.uid_list),
       "torch": torch.__version__, "threads": torch.get_num_threads()}
with open(job["out"], "w") as f:
  json.dump(out, f)
"""


def speed_yaml(workdir: str, size: str, model: str, layers) -> str:
  config = {
      "data_path": os.path.join(workdir, "data"), "dataset": size,
      "benchmark_filename": ["train", "valid", "test"],
      "field_separator": "\t",
      "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
      "load_col": {"inter": ["user_id", "item_id"]},
      "use_gpu": False, "show_progress": False,
      "checkpoint_dir": os.path.join(workdir, "recbole_saved"),
      "embedding_size": 64, "train_batch_size": 2048, "learning_rate": 0.001,
      "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
      "metrics": ["Recall", "NDCG"], "topk": [20],
      "valid_metric": "Recall@20",
  }
  if model == "LightGCN":
    config["n_layers"] = layers
  return "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items())


def _pinned(cpus):
  return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def _run_job(cmd, env, log, cpus, cwd):
  print("$", " ".join(shlex.quote(c) for c in cmd), f"> {log}", flush=True)
  with open(log, "w") as f:
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                          preexec_fn=_pinned(cpus), check=False)
  if done.returncode:
    sys.exit(f"failed (exit {done.returncode}); see {log}")


def speed_recbole(args, size: str, name: str, layers, cpus) -> dict:
  model = PAIRS[name][0]
  tag = f"{size}_{name}{layers or ''}_t{args.threads}"
  runner = os.path.join(args.workdir, "recbole_speed_runner.py")
  with open(runner, "w") as f:
    f.write(SPEED_RUNNER)
  yaml_path = os.path.join(args.workdir, f"recbole_speed_{tag}.yaml")
  with open(yaml_path, "w") as f:
    f.write(speed_yaml(args.workdir, size, model, layers))
  job = {"model": model, "yaml": yaml_path, "threads": args.threads,
         "repeats": args.repeats, "eval_batch_sizes": args.recbole_eval_batch,
         "out": os.path.join(args.workdir, f"recbole_speed_{tag}.json")}
  job_path = os.path.join(args.workdir, f"recbole_speed_{tag}.job.json")
  with open(job_path, "w") as f:
    json.dump(job, f)
  n = str(args.threads)
  env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS=n,
             MKL_NUM_THREADS=n, CUDA_VISIBLE_DEVICES="")
  _run_job([args.recbole_python, runner, job_path], env,
           os.path.join(args.workdir, f"recbole_speed_{tag}.log"), cpus, args.workdir)
  with open(job["out"]) as f:
    res = json.load(f)
  evals = {int(k): v for k, v in res["eval"].items()}
  return {"system": "RecBole", "version": f"RecBole 1.2.1, torch {res['torch']}",
          "epoch_seconds": res["epoch_seconds"], "steps": res["batches"],
          "train_pairs": res["train_pairs"], "pairs_per_epoch": res["train_pairs"],
          "n_users": res["n_users"], "n_items": res["n_items"],
          "eval_users": res["eval_users"],
          "eval": {b: {"seconds": v["seconds"], "users_per_batch": v["users_per_batch"],
                       "metrics": v["metrics"]} for b, v in evals.items()}}


# ---------------------------------------------------------------------------
# speed: our side (this script with --speed_worker, our python)


def speed_worker(job_path: str):
  """Our epoch and evaluation times for one job; writes job["out"]."""
  with open(job_path) as f:
    job = json.load(f)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, ROOT)
  import keras
  import tensorflow as tf
  from maml_tf.config import Config
  from maml_tf.data.sampler import PairSampler
  from maml_tf.train.build import build_evaluators, build_model
  from maml_tf.train.inputs import load_data

  config = Config(
      dataset="custom", data_format="recbole", data_dir=job["data_dir"],
      model=job["model"], protocol="split", topk=(20,),
      select_metric="recall@20", embed_dim=64, batch_size=2048, num_neg=1,
      learning_rate=1e-3, l2_reg=1e-4, gcn_layers=job["layers"] or 3,
      modalities=(), seed=0, export=False, tensorboard=False,
      workdir=job["workdir"])
  config.validate()
  keras.utils.set_random_seed(0)
  ds = load_data(config)
  model = build_model(config, ds)
  sampler = PairSampler(ds.train, config.batch_size, config.num_neg, config.seed)
  epochs = []

  class Clock(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      epochs.append(time.perf_counter() - self.start)
      print(f"epoch {epoch}: {epochs[-1]:.2f} s", flush=True)

  # One Keras epoch = one pass of the sampler (its steps_per_epoch batches).
  model.fit(sampler.dataset(0), epochs=1 + job["repeats"],
            steps_per_epoch=sampler.steps_per_epoch, callbacks=[Clock()],
            verbose=0, shuffle=False)
  evaluator = build_evaluators(config, ds, model)["valid"]
  evals, result = [], None
  for _ in range(1 + job["repeats"]):
    start = time.perf_counter()
    result = evaluator()
    evals.append(time.perf_counter() - start)
    print(f"evaluate: {evals[-1]:.2f} s", flush=True)
  out = {"epoch_seconds": epochs, "eval_seconds": evals,
         "steps": sampler.steps_per_epoch, "train_pairs": len(ds.train),
         "pairs_per_epoch": sampler.steps_per_epoch * config.batch_size,
         "n_users": ds.n_users, "n_items": ds.n_items,
         "eval_users": evaluator.n_users, "users_per_chunk": evaluator.user_chunk,
         "metrics": {k: float(v) for k, v in result.items()},
         "tensorflow": tf.__version__,
         # Set by the environment (the tf.config getters say 0 then).
         "intra_threads": os.environ.get("TF_NUM_INTRAOP_THREADS"),
         "inter_threads": os.environ.get("TF_NUM_INTEROP_THREADS")}
  with open(job["out"], "w") as f:
    json.dump(out, f)


def speed_ours(args, size: str, name: str, layers, cpus) -> dict:
  model = {"bpr": "mf", "lightgcn": "lightgcn"}[name]
  tag = f"{size}_{name}{layers or ''}_t{args.threads}"
  job = {"model": model, "layers": layers, "repeats": args.repeats,
         "data_dir": os.path.join(args.workdir, "data", size),
         "workdir": os.path.join(args.workdir, f"ours_speed_{tag}"),
         "out": os.path.join(args.workdir, f"ours_speed_{tag}.json")}
  job_path = os.path.join(args.workdir, f"ours_speed_{tag}.job.json")
  with open(job_path, "w") as f:
    json.dump(job, f)
  n = str(args.threads)
  env = dict(os.environ, TF_NUM_INTRAOP_THREADS=n,
             TF_NUM_INTEROP_THREADS=str(args.tf_interop or args.threads),
             OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, CUDA_VISIBLE_DEVICES="")
  _run_job([sys.executable, os.path.abspath(__file__), f"--speed_worker={job_path}"],
           env, os.path.join(args.workdir, f"ours_speed_{tag}.log"), cpus, ROOT)
  with open(job["out"]) as f:
    res = json.load(f)
  return {"system": "ours", "version": f"maml-tf, TensorFlow {res['tensorflow']} "
          f"(intra {res['intra_threads']}, inter {res['inter_threads']})",
          "epoch_seconds": res["epoch_seconds"], "steps": res["steps"],
          "train_pairs": res["train_pairs"], "pairs_per_epoch": res["pairs_per_epoch"],
          "n_users": res["n_users"], "n_items": res["n_items"],
          "eval_users": res["eval_users"],
          "eval": {"ours": {"seconds": res["eval_seconds"],
                            "users_per_batch": res["users_per_chunk"],
                            "metrics": res["metrics"]}}}


# ---------------------------------------------------------------------------
# speed: the table


def _warm(row) -> bool:
  """Whether the row's first epoch and evaluation were an untimed warm-up
  (every row before --repeats=0 existed has no "repeats": it had one)."""
  return row.get("repeats", 1) > 0


def _timed(seconds, warm=True):
  """The timed repeats' minimum (the first, the warm-up, left out when
  there was one)."""
  return min(seconds[1:] if warm and len(seconds) > 1 else seconds)


def merge_rows(rows):
  """One row per (size, model, threads, system): the timed repeats of all
  its runs pooled (each run's warm-up kept first, as its own)."""
  merged = {}
  for r in rows:
    key = (r["size"], r["model"], r["threads"], r["system"], _warm(r))
    if key not in merged:
      merged[key] = json.loads(json.dumps(r))
      merged[key]["runs"] = 1
      continue
    m = merged[key]
    m["runs"] += 1
    first = 1 if _warm(r) else 0
    m["epoch_seconds"] += r["epoch_seconds"][first:]
    for b, e in r["eval"].items():
      if b in m["eval"]:
        m["eval"][b]["seconds"] += e["seconds"][first:]
      else:
        m["eval"][b] = e
  return list(merged.values())


def speed_table(rows) -> str:
  """The rows (merged) as a table, then RecBole / ours per pair."""
  rows = merge_rows(rows)
  lines = [f"{'size':10s} {'model':10s} {'system':8s} {'users':>7s} {'items':>7s} "
           f"{'train':>8s} {'steps':>5s} {'epoch s':>8s} {'per 1M pairs':>12s} "
           f"{'eval s':>8s} {'eval users':>10s}  eval users/batch"]
  for r in rows:
    warm = _warm(r)
    per_m = _timed(r["epoch_seconds"], warm) / r["pairs_per_epoch"] * 1e6
    for k, (key, e) in enumerate(r["eval"].items()):
      head = (f"{r['size']:10s} {r['model']:10s} {r['system']:8s} {r['n_users']:7d} "
              f"{r['n_items']:7d} {r['train_pairs']:8d} {r['steps']:5d} "
              f"{_timed(r['epoch_seconds'], warm):8.2f} {per_m:12.2f}") if k == 0 else " " * 91
      note = ("" if key == "ours" else f" (eval_batch_size {key})")
      note += "" if warm else " (no warm-up)"
      lines.append(f"{head} {_timed(e['seconds'], warm):8.2f} {r['eval_users']:10d}  "
                   f"{e['users_per_batch']}{note}")
  by = {}
  for r in rows:
    by.setdefault((r["size"], r["model"], r["threads"], _warm(r)), {})[r["system"]] = r
  for (size, model, threads, warm), pair in by.items():
    if len(pair) < 2:
      continue
    ours, rb = pair["ours"], pair["RecBole"]
    ours_epoch, rb_epoch = (_timed(ours["epoch_seconds"], warm),
                            _timed(rb["epoch_seconds"], warm))
    ours_pm = ours_epoch / ours["pairs_per_epoch"]
    rb_pm = rb_epoch / rb["pairs_per_epoch"]
    ours_eval = _timed(ours["eval"]["ours"]["seconds"], warm)
    rb_evals = ", ".join(f"{_timed(e['seconds'], warm) / ours_eval:.1f}x at "
                         f"eval_batch_size {b}" for b, e in rb["eval"].items())
    lines.append(f"{size} {model}, {threads} thread(s){'' if warm else ', no warm-up'}: "
                 f"RecBole / ours: epoch {rb_epoch / ours_epoch:.2f}x "
                 f"({rb_pm / ours_pm:.2f}x per pair); evaluation {rb_evals}")
  return "\n".join(lines)


def run_speed(args, names):
  """The speed mode: every size x model x system; the table and speed.json."""
  sizes = [s for s in args.sizes.split(",") if s]
  for s in sizes:
    if s not in SIZES:
      sys.exit(f"`--sizes` must name only {', '.join(SIZES)}. Received: {s!r}")
  systems = [s for s in args.systems.split(",") if s]
  for s in systems:
    if s not in ("recbole", "ours"):
      sys.exit(f"`--systems` must name only recbole, ours. Received: {s!r}")
  layers = [int(x) for x in args.gcn_layers.split(",") if x]
  cpus = None
  if args.cpus != "none":
    allowed = sorted(os.sched_getaffinity(0))
    cpus = ([int(c) for c in args.cpus.split(",")] if args.cpus
            else allowed[:args.threads])
    if len(cpus) != args.threads:
      sys.exit(f"`--cpus` must name --threads ({args.threads}) CPUs. "
               f"Received: {args.cpus!r}")
  out_path = os.path.join(args.workdir, "speed.json")
  rows = []
  if os.path.exists(out_path) and args.append:
    with open(out_path) as f:
      rows = json.load(f)["rows"]
  for size in sizes:
    data_dir, counts = write_size(args.workdir, size, args.seed)
    print(f"{size} (seed {args.seed}): {counts}", flush=True)
    for name in [n for _ in range(args.rounds) for n in names]:
      for depth in (layers if name == "lightgcn" else [None]):
        for system in systems:
          run = speed_recbole if system == "recbole" else speed_ours
          start, load = time.time(), os.getloadavg()[0]
          row = run(args, size, name, depth, cpus)
          row.update(size=size, model=f"{name}" + (f"-{depth}" if depth else ""),
                     threads=args.threads, repeats=args.repeats, cpus=cpus, counts=counts,
                     wall_seconds=round(time.time() - start, 1), label=args.label,
                     load_before=load, load_after=os.getloadavg()[0])
          rows.append(row)
          print(speed_table([row]), flush=True)
          with open(out_path + ".tmp", "w") as f:
            json.dump({"machine": _machine(), "command": " ".join(sys.argv),
                       "rows": rows}, f, indent=1)
          os.replace(out_path + ".tmp", out_path)
  print(speed_table(rows))
  print(f"(written to {out_path})")


def _machine() -> dict:
  cpu = "?"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f
                 if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------


def print_rows(rows):
  head = (f"{'tool':44s} {'val R@20':>8s} {'val N@20':>8s} {'test R@20':>9s} "
          f"{'test N@20':>9s} {'best ep':>7s} {'last ep':>7s} {'sec':>6s}")
  print(head)
  for r in rows:
    print(f"{r['tool'][:44]:44s} {r['valid_recall@20']:8.4f} "
          f"{r['valid_ndcg@20']:8.4f} {r['test_recall@20']:9.4f} "
          f"{r['test_ndcg@20']:9.4f} {r['best_epoch']:7} {r['last_epoch']:7} "
          f"{r['wall_seconds']:6.0f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/recbole_compare")
  parser.add_argument("--pairs", default="bpr",
                      help=f"comma-separated, of: {', '.join(PAIRS)}")
  parser.add_argument("--seed", type=int, default=0,
                      help="the split's seed (our --seed is the flagfile's)")
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--recbole_python",
                      default="/work/venvs/recbole/bin/python")
  parser.add_argument("--recbole_epochs", type=int, default=1000)
  parser.add_argument("--recbole_set", action="append", default=[],
                      metavar="KEY=VALUE", help="a RecBole setting (YAML value)")
  parser.add_argument("--ours_flags", default="",
                      help="extra flags for our run, after the flagfile")
  parser.add_argument("--ours_entry", default="scripts/train.py",
                      help="our training entry point (relative to the repo)")
  parser.add_argument("--skip_recbole", action="store_true")
  parser.add_argument("--skip_ours", action="store_true")
  parser.add_argument("--label", default="", help="stored with the rows")
  speed = parser.add_argument_group("speed mode (--speed)")
  speed.add_argument("--speed", action="store_true",
                     help="time an epoch and a full evaluation instead")
  speed.add_argument("--sizes", default="office",
                     help=f"comma-separated, of: {', '.join(SIZES)}")
  speed.add_argument("--systems", default="recbole,ours")
  speed.add_argument("--gcn_layers", default="2,3",
                     help="LightGCN's depths to time, comma-separated")
  speed.add_argument("--repeats", type=int, default=2,
                     help="timed epochs and evaluations after the warm-up "
                          "(0: no warm-up, the first of each timed)")
  speed.add_argument("--rounds", type=int, default=1,
                     help="run every (model, system) this many times, "
                          "interleaved; the table pools their timed repeats")
  speed.add_argument("--recbole_eval_batch", default="4096",
                     help="RecBole eval_batch_size values (4096: its default)")
  speed.add_argument("--cpus", default="",
                     help="CPUs to pin each side to (default: the first "
                          "--threads allowed ones; none: no pinning)")
  speed.add_argument("--tf_interop", type=int, default=1,
                     help="TF_NUM_INTEROP_THREADS of our side (0: --threads)")
  speed.add_argument("--append", action="store_true",
                     help="keep the rows already in <workdir>/speed.json")
  speed.add_argument("--speed_worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.speed_worker:
    speed_worker(args.speed_worker)
    return
  args.workdir = os.path.abspath(args.workdir)
  names = [p for p in args.pairs.split(",") if p]
  for p in names:
    if p not in PAIRS:
      parser.error(f"`--pairs` must name only {', '.join(PAIRS)}. "
                   f"Received: {p!r}")
  extra = {}
  for item in args.recbole_set:
    key, sep, value = item.partition("=")
    if not sep:
      parser.error(f"`--recbole_set` must be KEY=VALUE. Received: {item!r}")
    extra[key] = json.loads(value) if value[:1] in "[{\"" else _scalar(value)
  if args.speed:
    try:
      args.recbole_eval_batch = [int(b) for b in args.recbole_eval_batch.split(",")]
    except ValueError:
      parser.error(f"`--recbole_eval_batch` must be integers, comma-separated. "
                   f"Received: {args.recbole_eval_batch!r}")
    if args.repeats < 0:
      parser.error(f"`--repeats` must be >= 0. Received: {args.repeats}")
    if args.rounds < 1:
      parser.error(f"`--rounds` must be >= 1. Received: {args.rounds}")
    os.makedirs(args.workdir, exist_ok=True)
    run_speed(args, names)
    return

  sizes = write_split(os.path.join(args.workdir, "data", "office"), args.seed)
  print(f"split (seed {args.seed}): {sizes}", flush=True)
  rows = []
  for name in names:
    model, settings, flagfile = PAIRS[name]
    if not args.skip_recbole:
      rows.append(run_recbole(args, name, model, dict(settings, **extra)))
    if not args.skip_ours:
      rows.append(run_ours(args, name, flagfile, sizes["train"]))
  with open(os.path.join(args.workdir, "results.jsonl"), "a") as f:
    for r in rows:
      f.write(json.dumps(dict(r, label=args.label, split_seed=args.seed,
                              split_sizes=sizes)) + "\n")
  print_rows(rows)


def _scalar(text: str):
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text.lower(), text)


if __name__ == "__main__":
  main()
