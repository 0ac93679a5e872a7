"""Speed and memory of every model at the field's sizes, each beside its
hardware floor; prints the tables and writes benchmark.json.

  python scripts/benchmark.py [--quick] [--only=mf@office,loader]
      [--models=mf,lightgcn] [--sizes=office,clothing] [--release_dir=DIR]
      [--max_epoch_s=180] [--max_eval_s=1800] [--eval_candidates=100]
      [--out=benchmark.json] [--list]

Every figure is measured, none extrapolated: an evaluation figure is one
whole evaluation of every test user; a training figure is a whole epoch,
or, where an epoch would run past --max_epoch_s, N whole steps with the
epoch figure computed from them and labelled so. One-time work
(compilation, propagation, serving tables, the sampler's epoch draw) is
reported apart from the per-step and per-user cost. Each figure carries its
floor, measured in the same process (bench_floors.py says how), and its
fraction floor / measured. The models whose full ranking does per-pair work
(MAML, MARIO, LRML, NeuMF) also get one whole two-stage evaluation
(--eval_candidates=N, the flag `maml-tf train` has), the remedy where their
full ranking is too long to run.

Scenarios, one process each (so each peak memory is its own):
- `<model>@<size>` (bench_models.py): the model with its own Office
  flagfile's settings on a size of bench_sizes.py: office (the real Office
  data), clothing (Amazon Clothing's shape: 39k users, 23k items, 280k
  interactions, 4096-d + 384-d features), ml20m (MovieLens-20M's: 138k
  users, 27k items, 20M interactions; CML and LRML by default) and
  items100k (100k items, Office's densities). By default every model at
  office, clothing and items100k, and CML and LRML at ml20m.
- serve, workers, loader (bench_system.py).
- release: with --release_dir, scripts/release_speed.py measures the
  authors' release on this machine in the same run, and MAML's ratios to it
  are printed.

--quick uses small synthetic data of the same shapes (whole evaluations,
whole small epochs): a smoke run of minutes. Compare ratios within one run;
these machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, ROOT)
if SCRIPTS not in sys.path:
  sys.path.insert(0, SCRIPTS)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import bench_scenarios  # noqa: E402
import bench_settings  # noqa: E402
import bench_table  # noqa: E402

flags.DEFINE_boolean("quick", False, "small synthetic data of the same shapes (a smoke run)")
flags.DEFINE_string("out", "benchmark.json", "where to write the JSON figures")
flags.DEFINE_list("only", None, "run only these scenarios, e.g. mf@office,loader")
flags.DEFINE_list("models", None, "run the default scenarios of these models only")
flags.DEFINE_list("sizes", None, "run the default scenarios at these sizes only")
flags.DEFINE_string("release_dir", None, "the authors' release checkout: measure it "
                    "beside MAML (scripts/release_speed.py)")
flags.DEFINE_float("max_epoch_s", 180.0, "time a whole epoch when one is estimated "
                   "under this many seconds; else whole steps, the epoch computed")
flags.DEFINE_float("max_eval_s", 1800.0, "skip (and say so) an evaluation whose "
                   "measured chunks add up past this many seconds; 0: no limit")
flags.DEFINE_integer("eval_candidates", 100, "N of the two-stage evaluation timed for "
                     "the models with per-pair work (MAML, MARIO, LRML, NeuMF); 0: "
                     "none", lower_bound=0)
flags.DEFINE_boolean("list", False, "print the scenarios that would run and exit")
flags.DEFINE_string("scenario", None, "internal: run one scenario and print JSON")
FLAGS = flags.FLAGS


def model_names():
  from maml_tf import models as models_lib
  return models_lib.NAMES


def run_scenario(name):
  import bench_system
  quick = FLAGS.quick
  if name == "worker":  # one worker of `workers`, TF_CONFIG set
    return bench_system.worker_throughput(quick)
  if name == "workers":
    script = os.path.abspath(__file__)
    return {"1": bench_system.workers(1, quick, script),
            "2": bench_system.workers(2, quick, script)}
  if name == "serve":
    return bench_system.serve_latency(quick)
  if name == "loader":
    return bench_system.loader(quick, ROOT)
  if name == "release":
    return bench_system.release(FLAGS.release_dir, quick, ROOT)
  import bench_models
  model, _, size = bench_scenarios.check_scenario(name, model_names()).partition("@")
  return bench_models.run(model, size, quick, FLAGS.max_epoch_s, FLAGS.max_eval_s, ROOT,
                          FLAGS.eval_candidates)


def launch(name):
  """Runs one scenario in its own process; its result (or its error)."""
  import bench_system
  cmd = [sys.executable, os.path.abspath(__file__), f"--scenario={name}",
         f"--max_epoch_s={FLAGS.max_epoch_s}", f"--max_eval_s={FLAGS.max_eval_s}",
         f"--eval_candidates={FLAGS.eval_candidates}"]
  if FLAGS.quick:
    cmd.append("--quick")
  if FLAGS.release_dir:
    cmd.append(f"--release_dir={FLAGS.release_dir}")
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  result = bench_system.result_line(proc.stdout)
  if proc.returncode or result is None:
    print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
    return {"error": proc.stderr[-800:] or f"exit status {proc.returncode}"}
  result["wall_s"] = time.perf_counter() - start
  print(f"[{name}: {result['wall_s']:.0f} s]", file=sys.stderr, flush=True)
  return result


def main(argv):
  del argv
  if FLAGS.scenario:
    print("RESULT " + json.dumps(run_scenario(FLAGS.scenario)))
    return 0
  try:
    chosen = bench_scenarios.select(FLAGS.only, FLAGS.models, FLAGS.sizes, FLAGS.release_dir,
                    model_names())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.list:
    print("\n".join(chosen))
    return 0
  results = {"machine": bench_scenarios.machine(), "quick": FLAGS.quick,
             "max_epoch_s": FLAGS.max_epoch_s, "max_eval_s": FLAGS.max_eval_s,
             "scenarios": {}}
  start = time.perf_counter()
  for name in chosen:
    results["scenarios"][name] = launch(name)
  results["wall_s"] = time.perf_counter() - start
  from maml_tf import fileio
  fileio.write_json_atomic(FLAGS.out, results)  # before the table: kept if it fails
  print(bench_table.render(results, bench_settings.DOT_PRODUCT))
  print(f"(figures written to {FLAGS.out}; {results['wall_s'] / 60:.1f} min in all)")
  return 0


if __name__ == "__main__":
  app.run(main)
