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
  os.makedirs(data_dir, exist_ok=True)
  parts = dict(zip(("train", "valid", "test"),
                   split_pairs(office_pairs(), seed)))
  for name, rows in parts.items():
    path = os.path.join(data_dir, f"office.{name}.inter")
    with open(path + ".tmp", "w") as f:
      f.write("user_id:token\titem_id:token\n")
      f.writelines(f"{u}\t{i}\n" for u, i in rows)
    os.replace(path + ".tmp", path)
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
  args = parser.parse_args(argv)
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
