"""Speed and memory of training, evaluation and serving; prints one table.

  python scripts/benchmark.py [--quick] [--out=benchmark.json]

Each scenario runs in its own Python process so that its peak memory (max
RSS) is its own. Figures are measured here, never asserted by tests; compare
ratios within one run, since these machines are shared and noisy.

Scenarios (the release's settings unless said: batch 5000, 4 negatives, K 64,
hidden 256, text 512-d + image 4096-d features as in the release's Office
example; our Office data has no images, so the benchmark uses random
features of those sizes, which cost the same):
- train: positive pairs per second of `model.fit` (input pipeline included)
  with the fast path, and with the plain autodiff computation (same model).
- eval: one full evaluation of every Office test user over all items, fast
  path; and the plain computation (unsplit attention per pair) on a sample
  of users, extrapolated.
- serve: p50/p99 latency of the SavedModel's serving_default and retrieve
  signatures for 1 and 100 users, in-process.
- workers: training throughput of 1 and of 2 local worker processes under
  `--strategy=multi_worker` (TF_CONFIG on 127.0.0.1), same global batch.
- scale: training throughput and per-user evaluation cost on synthetic
  catalogues of 10k and 100k items with Office's users-per-item and
  interactions-per-user densities.
- loader: rows per second of `data.read_interactions` on a synthetic
  10M-row train.csv (200k with --quick) in the release's layout, with the
  pandas reader beside the hand-written csv-module parser it replaced. The
  reference is not a copy: it is maml_tf/data.py as of commit
  `LOADER_REFERENCE_COMMIT` (the last one before pandas), read with
  `git show` into a temporary module, so what is measured is exactly the old
  code; without git (or that commit) the reference is skipped.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_boolean("quick", False, "fewer steps and users (a smoke run)")
flags.DEFINE_string("out", "benchmark.json", "where to write the JSON figures")
flags.DEFINE_string("scenario", None, "internal: run one scenario and print JSON")
flags.DEFINE_list("only", None, "run only these scenarios (e.g. loader)")
FLAGS = flags.FLAGS

OFFICE_USERS, OFFICE_ITEMS, OFFICE_PAIRS = 4874, 2406, 37027
LOADER_REFERENCE_COMMIT = "379cd8135f374008012a72171b7c4644b7abf9c9"
REFERENCE = {"train_pairs_per_s": (38_000, 55_000), "eval_seconds": (97, 102)}


def _peak_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _synthetic(n_items, seed=0, feature_dims=(512, 4096)):
  """A dataset with Office's densities, scaled to n_items items."""
  import numpy as np
  from maml_tf import data
  rng = np.random.default_rng(seed)
  scale = n_items / OFFICE_ITEMS
  n_users = int(round(OFFICE_USERS * scale))
  n_train = int(round(OFFICE_PAIRS * scale))
  users = rng.integers(0, n_users, n_train * 2)
  items = rng.integers(0, n_items, n_train * 2)
  pairs = np.unique(np.stack([users, items], 1), axis=0)
  pairs = pairs[rng.permutation(len(pairs))]
  test = pairs[n_train:n_train + int(n_train * 0.43)]
  train = pairs[:n_train]
  features = {f"f{i}": rng.normal(size=(n_items, d)).astype(np.float32)
              for i, d in enumerate(feature_dims)}
  return data.from_arrays(train, test, features=features, n_users=n_users,
                          n_items=n_items, name=f"synthetic-{n_items}")


def _config(**overrides):
  from maml_tf.config import Config
  base = dict(train_steps=400, eva_batches=400, export=False, tensorboard=False,
              workdir=tempfile.mkdtemp(prefix="bench-"))
  base.update(overrides)
  return Config(**base)


def _train_throughput(ds, steps, fast=True, strategy=None, **overrides):
  import keras
  from maml_tf import train
  from maml_tf.data.sampler import PairSampler
  config = _config(**overrides)
  keras.utils.set_random_seed(0)
  model = train.build_model(config, ds, strategy)
  if hasattr(model, "use_fastpath"):
    model.use_fastpath = fast
  sampler = PairSampler(ds.train, config.batch_size, config.num_neg, 0)
  times = []

  class Clock(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      times.append(time.perf_counter())

  warmup = 5
  model.fit(sampler.dataset(0), epochs=1, steps_per_epoch=warmup + steps,
            verbose=0, callbacks=[Clock()])
  seconds = times[-1] - times[warmup - 1]
  return {"pairs_per_s": config.batch_size * steps / seconds,
          "ms_per_step": 1000 * seconds / steps, "steps": steps}


def _eval_time(ds, max_users=None, fast=True, **overrides):
  from maml_tf.evaluate import full_ranking
  from maml_tf import train
  config = _config(**overrides)
  model = train.build_model(config, ds)
  if fast:
    ev = full_ranking.Evaluator(model, ds.train, ds.test, (10,))
  else:
    ev = PlainEvaluator(model, ds.train, ds.test)
  n_all = ev.n_users
  if max_users and max_users < n_all:
    ev.users, ev.targets = ev.users[:max_users], ev.targets[:max_users]
  ev.users_warm = ev.users[:ev.user_chunk] if fast else ev.users[:2]
  # Warm up (trace and compile) on one chunk, then time the whole pass.
  saved = ev.users, ev.targets
  ev.users, ev.targets = saved[0][:len(ev.users_warm)], saved[1][:len(ev.users_warm)]
  ev()
  ev.users, ev.targets = saved
  start = time.perf_counter()
  metrics = ev()
  seconds = time.perf_counter() - start
  per_user = seconds / len(ev.users)
  return {"seconds": seconds, "users": len(ev.users), "all_users": n_all,
          "seconds_full": per_user * n_all, "ndcg@10": metrics["ndcg@10"],
          "extrapolated": len(ev.users) < n_all}


class PlainEvaluator:
  """The straightforward computation: the unsplit attention on every pair."""

  def __init__(self, model, exclude, target):
    import numpy as np
    import tensorflow as tf
    from maml_tf.evaluate import full_ranking
    self.inner = full_ranking.Evaluator(model, exclude, target, (10,))
    self.users, self.targets = self.inner.users, self.inner.targets
    self.user_chunk = 2
    n_items = model.n_items
    items = tf.constant(np.arange(n_items, dtype=np.int32))

    @tf.function
    def scores(users):
      grid = tf.broadcast_to(items[None], [tf.shape(users)[0], n_items])
      return -model.plain_pair_distances(users, grid)

    self.scores = scores
    self.excl = (self.inner.excl_ptr, self.inner.excl_items)

  @property
  def n_users(self):
    return len(self.users)

  def __call__(self):
    import numpy as np
    import tensorflow as tf
    from maml_tf.evaluate import metrics as metrics_lib
    ptr, items = self.excl
    top = []
    for start in range(0, len(self.users), self.user_chunk):
      users = self.users[start:start + self.user_chunk]
      s = self.scores(tf.constant(users, tf.int32)).numpy()
      top.append(metrics_lib.top_k_excluding(
          s, [items[ptr[u]:ptr[u + 1]] for u in users], 10))
    return metrics_lib.ranking_metrics(np.concatenate(top), self.targets, (10,))


def _serve_latency(ds, repeats):
  from maml_tf.export import saved_model as export
  from maml_tf import train
  config = _config()
  model = train.build_model(config, ds)
  folder = tempfile.mkdtemp(prefix="bench-export-")
  path = export.export_saved_model(model, ds, folder, "bench", topk=10,
                                   retrieve_candidates=200)
  out = {}
  for signature in ("serving_default", "retrieve"):
    for users in (1, 100):
      out[f"{signature}@{users}"] = export.latency(path, signature, users, repeats)
  return out


def _workers(n, quick):
  """Throughput of `n` local worker processes (MultiWorkerMirroredStrategy).

  Each worker gets 1/n of every global batch of 5000; the figure is the
  global pairs/s the chief measures.
  """
  from maml_tf.train import distribute
  procs = []
  for tf_config in distribute.local_tf_configs(n):
    env = dict(os.environ, TF_CONFIG=tf_config)
    cmd = [sys.executable, os.path.abspath(__file__), "--scenario=worker"]
    if quick:
      cmd.append("--quick")
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=900) for p in procs]
  line = [l for l in outs[0][0].splitlines() if l.startswith("RESULT ")]
  if procs[0].returncode or not line:
    raise RuntimeError(f"worker 0 failed: {outs[0][1][-1500:]}")
  return json.loads(line[-1][len("RESULT "):])


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


def _reference_loader():
  """maml_tf/data.py at LOADER_REFERENCE_COMMIT as a module, or None."""
  import importlib.util
  try:
    source = subprocess.run(
        ["git", "-C", ROOT, "show", f"{LOADER_REFERENCE_COMMIT}:maml_tf/data.py"],
        capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  folder = tempfile.mkdtemp(prefix="bench-ref-")
  path = os.path.join(folder, "reference_data.py")
  with open(path, "w") as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("reference_data", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["reference_data"] = module  # dataclasses look themselves up here
  spec.loader.exec_module(module)
  return module


def _loader(quick):
  import gc
  import numpy as np
  from maml_tf import data
  n_rows = 200_000 if quick else 10_000_000
  folder = tempfile.mkdtemp(prefix="bench-loader-")
  path = os.path.join(folder, "train.csv")
  _write_train_csv(path, n_rows)
  out = {"rows": n_rows, "mb": os.path.getsize(path) / 2**20}
  loaders = [("pandas", data)]
  reference = _reference_loader()
  if reference is not None:
    loaders.append(("reference", reference))
  results = {}
  for label, module in loaders:
    start = time.perf_counter()
    results[label] = module.read_interactions(path)
    seconds = time.perf_counter() - start
    out[label] = {"seconds": seconds, "rows_per_s": n_rows / seconds}
    gc.collect()
  if "reference" in results:  # same answer, or the comparison means nothing
    for a, b in zip(results["pandas"], results["reference"]):
      assert (a is None and b is None) or np.array_equal(a, b), "loaders differ"
  os.remove(path)
  return out


def run_scenario(name, quick):
  from maml_tf import data
  steps = 10 if quick else 40
  if name == "worker":  # one worker of a `workers` scenario, TF_CONFIG set
    from maml_tf.train import distribute
    strategy = distribute.make_strategy("multi_worker")
    ds = _synthetic(OFFICE_ITEMS)
    return {"train": _train_throughput(ds, steps, strategy=strategy),
            "peak_rss_mb": _peak_mb()}
  if name == "workers":
    return {"1": _workers(1, quick), "2": _workers(2, quick)}
  if name == "loader":
    return dict(_loader(quick), peak_rss_mb=_peak_mb())
  if name == "train":
    ds = _synthetic(OFFICE_ITEMS)
    result = {"fast": _train_throughput(ds, steps, fast=True),
              "plain": _train_throughput(ds, max(5, steps // 2), fast=False)}
  elif name == "eval":
    ds = data.load_office(modalities=("meta",))
    result = {"fast": _eval_time(ds, 600 if quick else None, fast=True),
              "plain": _eval_time(ds, 8 if quick else 40, fast=False)}
  elif name == "serve":
    result = _serve_latency(data.load_office(modalities=("meta",)),
                            20 if quick else 100)
  elif name.startswith("bpr_"):
    # bpr_<model>_<n items>: the BPR models at Office size or larger, with
    # their own settings (batch 2048, one negative; MARIO on LightGCN with
    # two content modalities of Office's sizes, 512-d text and 381-d meta).
    _, model, n_items = name.split("_")
    n_items = int(n_items)
    overrides = dict(model=model, batch_size=2048, num_neg=1, backbone="lightgcn",
                     gcn_layers=3)
    dims = (512, 381) if model == "mario" else ()
    ds = _synthetic(n_items, feature_dims=dims)
    if model == "mario":
      overrides["modalities"] = tuple(ds.features)
    big = n_items > OFFICE_ITEMS
    result = {"train": _train_throughput(ds, max(5, steps // (4 if big else 1)),
                                         **overrides),
              "eval": _eval_time(ds, 256 if big else None, **overrides),
              "model": model, "n_users": ds.n_users, "n_items": ds.n_items,
              "train_pairs": len(ds.train)}
  elif name.startswith("scale"):
    n_items = int(name[len("scale"):])
    ds = _synthetic(n_items, feature_dims=(512,))
    result = {"train": _train_throughput(ds, max(5, steps // 2)),
              "eval": _eval_time(ds, 256 if n_items > 20000 else 1024),
              "n_users": ds.n_users, "n_items": ds.n_items,
              "train_pairs": len(ds.train)}
  else:
    raise ValueError(f"unknown scenario {name}")
  result["peak_rss_mb"] = _peak_mb()
  return result


def machine():
  import tensorflow as tf
  cpu = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "tensorflow": tf.__version__, "platform": platform.platform()}


def table(results):
  r = results
  lines = [f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, "
           f"TF {r['machine']['tensorflow']}"]
  row = lambda a, b, c="": lines.append(f"{a:<46}{b:>18}  {c}")
  lo, hi = REFERENCE["train_pairs_per_s"]
  if "train" in r:
    t = r["train"]
    row("train, Office size, pairs/s (fast path)", f"{t['fast']['pairs_per_s']:,.0f}",
        f"{t['fast']['pairs_per_s'] / hi:.1f}-{t['fast']['pairs_per_s'] / lo:.1f}x "
        f"the release's {lo:,}-{hi:,}")
    row("train, Office size, pairs/s (plain autodiff)", f"{t['plain']['pairs_per_s']:,.0f}",
        f"fast/plain {t['fast']['pairs_per_s'] / t['plain']['pairs_per_s']:.2f}x")
    row("train peak RSS (MB)", f"{t['peak_rss_mb']:,.0f}")
  if "eval" in r:
    e = r["eval"]
    lo, hi = REFERENCE["eval_seconds"]
    note = " (extrapolated)" if e["fast"]["extrapolated"] else ""
    row("eval, Office, all test users, s (fast)", f"{e['fast']['seconds_full']:.2f}",
        f"{lo / e['fast']['seconds_full']:.0f}-{hi / e['fast']['seconds_full']:.0f}x "
        f"faster than the release's {lo}-{hi} s{note}")
    row("eval, Office, s (plain, extrapolated)", f"{e['plain']['seconds_full']:.1f}",
        f"from {e['plain']['users']} users; plain/fast "
        f"{e['plain']['seconds_full'] / e['fast']['seconds_full']:.1f}x")
    row("eval peak RSS (MB)", f"{e['peak_rss_mb']:,.0f}")
  if "workers" in r:
    for n, w in sorted(r["workers"].items()):
      row(f"train, {n} local worker(s) (multi_worker), pairs/s",
          f"{w['train']['pairs_per_s']:,.0f}",
          f"{w['train']['ms_per_step']:.0f} ms/step")
  if "serve" in r:
    for key, v in r["serve"].items():
      if isinstance(v, dict):
        row(f"serve {key} users, p50 / p99 ms", f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}")
  if "loader" in r:
    ld = r["loader"]
    rows = f"{ld['rows']:,}-row train.csv ({ld['mb']:,.0f} MB)"
    row(f"loader, {rows}, rows/s (pandas)", f"{ld['pandas']['rows_per_s']:,.0f}",
        f"{ld['pandas']['seconds']:.1f} s")
    if "reference" in ld:
      row("loader, rows/s (the old csv-module parser)",
          f"{ld['reference']['rows_per_s']:,.0f}",
          f"{ld['reference']['seconds']:.1f} s; pandas/old "
          f"{ld['pandas']['rows_per_s'] / ld['reference']['rows_per_s']:.1f}x")
  for key in sorted(k for k in r if k.startswith("bpr_")):
    s = r[key]
    size = f"{s['model']}, {s['n_items']:,} items / {s['n_users']:,} users"
    row(f"{size}: train pairs/s", f"{s['train']['pairs_per_s']:,.0f}",
        f"{s['train']['ms_per_step']:.0f} ms/step of 2048 pairs")
    note = (f"extrapolated from {s['eval']['users']} users"
            if s["eval"]["extrapolated"] else "measured")
    row(f"{s['model']}, {s['n_items']:,} items: full eval s",
        f"{s['eval']['seconds_full']:,.1f}",
        f"{s['eval']['all_users']:,} test users ({note}); peak RSS "
        f"{s['peak_rss_mb']:,.0f} MB")
  for key in sorted(k for k in r if k.startswith("scale")):
    s = r[key]
    row(f"{s['n_items']:,} items / {s['n_users']:,} users: train pairs/s",
        f"{s['train']['pairs_per_s']:,.0f}")
    row(f"{s['n_items']:,} items: eval s per user, full eval s",
        f"{1000 * s['eval']['seconds'] / s['eval']['users']:.1f} ms",
        f"{s['eval']['seconds_full']:,.0f} s for all {s['eval']['all_users']:,} "
        f"test users (extrapolated from {s['eval']['users']}); "
        f"peak RSS {s['peak_rss_mb']:,.0f} MB")
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.scenario:
    print("RESULT " + json.dumps(run_scenario(FLAGS.scenario, FLAGS.quick)))
    return 0
  results = {"machine": machine(), "quick": FLAGS.quick}
  scenarios = ["train", "eval", "serve", "workers", "scale10000", "scale100000",
               "bpr_lightgcn_2406", "bpr_mario_2406", "bpr_lightgcn_100000",
               "bpr_mario_100000", "loader"]
  if FLAGS.only:
    scenarios = [s for s in scenarios if s in FLAGS.only]
  for name in scenarios:
    start = time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), f"--scenario={name}"]
    if FLAGS.quick:
      cmd.append("--quick")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
      print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
      results[name] = {"error": proc.stderr[-500:]}
      continue
    results[name] = json.loads(line[-1][len("RESULT "):])
    print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
  ok = {k: v for k, v in results.items() if not (isinstance(v, dict) and "error" in v)}
  print(table(ok))
  with open(FLAGS.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"(figures written to {FLAGS.out})")
  return 0


if __name__ == "__main__":
  app.run(main)
