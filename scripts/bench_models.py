"""One model at one size (`<model>@<size>`): a training epoch, one full-ranking
evaluation of every test user, peak memory, each beside its floor.

Run by scripts/benchmark.py in its own process (the peak RSS is this
scenario's). Nothing is extrapolated:

- training: the sampler draws one epoch (timed: `draw_s`), three warm-up
  steps run (the first traces and compiles: `compile_s` is its time less a
  steady step's); then, when an epoch is estimated under --max_epoch_s,
  whole epochs are timed (`how: whole_epoch`: every step of fresh epochs,
  each from Keras' epoch begin to its end, the sampler's draw of it
  included; fit's set-up before the first is left out, as a run fits many
  epochs in one call; as many epochs as fill ~10 s, up to 20, the median
  the figure); otherwise N whole
  steps are timed (at least ~30 s of them) and the epoch figure is N steps'
  mean x steps per epoch + the draw (`how: computed_from_steps`, a computed
  figure, said so in the table);
- evaluation: one chunk of users runs first (trace and compile:
  `first_chunk_s`), then the whole evaluation of every test user is timed
  (`seconds`), with the model's one-time `prepare_scoring` (propagation,
  the attention's item half) timed inside it (`prepare_s`) and reported
  apart from the ranking (`ranking_s`, `per_user_ms`). An evaluation whose
  steady chunks would run past --max_eval_s is not run; the table says so
  with the measured chunk time and the number of chunks (no figure);
- two-stage evaluation, for a model whose full ranking does per-pair work
  (MAML's and MARIO's attention, LRML's relation, NeuMF's MLP) and has a
  retrieval first stage: one whole `--eval_candidates=N` evaluation of
  every test user (`two_stage.TwoStageEvaluator`, N = the benchmark's
  --eval_candidates), timed as the full ranking is (its first chunk apart,
  `prepare_s` the serving tables), beside its own floor: the first stage
  over every item at the dot product's rate, the N candidates at the
  per-pair rate. The weights are the untrained ones, so its agreement with
  full ranking is not measured here (a run's metrics.json has it).
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np

import bench_floors as floors
import bench_settings
import bench_sizes
import bench_system

WARMUP_STEPS = 3
STEPS_TARGET_S = 30.0  # steps timed when an epoch is too long to time whole
KS = (10, 20)


def current_rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _nbytes(arrays) -> int:
  return int(sum(np.asarray(a).nbytes for a in arrays if a is not None))


EPOCHS_TARGET_S = 10.0  # short epochs: whole epochs timed for about this long


class _Clock:
  """perf_counter at each epoch's begin and end and at the end of every
  train batch (a Keras callback)."""

  def __init__(self):
    import keras

    times, epochs = self.times, self.epochs = [], []

    class Callback(keras.callbacks.Callback):
      def on_epoch_begin(self, index, logs=None):
        epochs.append([time.perf_counter(), None])

      def on_train_batch_end(self, batch, logs=None):
        times.append(time.perf_counter())

      def on_epoch_end(self, index, logs=None):
        epochs[-1][1] = time.perf_counter()

    self.callback = Callback()


def _fit(model, sampler, start_step, steps, epochs=1):
  """Fits `epochs` Keras epochs of `steps` steps from global step
  `start_step` in one call; (each epoch's seconds from its begin to its
  end, [first epoch's begin] + batch end times). Fit's set-up before the
  first epoch is left out, as a run fits many epochs in one call."""
  clock = _Clock()
  model.fit(sampler.dataset(start_step, steps * epochs), epochs=epochs,
            steps_per_epoch=steps, verbose=0, callbacks=[clock.callback])
  return [end - begin for begin, end in clock.epochs], [clock.epochs[0][0]] + clock.times


def train_figures(model, ds, config, max_epoch_s, quick):
  from maml_tf.data.sampler import PairSampler
  start = time.perf_counter()
  sampler = PairSampler(ds.train, config.batch_size, config.num_neg, config.seed)
  sampler_s = time.perf_counter() - start
  spe = sampler.steps_per_epoch
  start = time.perf_counter()
  sampler.epoch(0)  # cached: the warm-up and the timed steps reuse it
  draw_s = time.perf_counter() - start
  warm = min(WARMUP_STEPS, spe)
  _, times = _fit(model, sampler, 0, warm)
  steady = (times[-1] - times[1]) / (warm - 1) if warm > 1 else times[1] - times[0]
  compile_s = max(0.0, times[1] - times[0] - steady)
  estimate = spe * steady + draw_s
  pairs = config.batch_size
  if quick or estimate <= max_epoch_s:
    # Fresh epochs (each drawn inside it), as many as fit in ~10 s: the
    # median epoch is the figure (short epochs are noisy on a shared machine).
    n = 1 if quick else int(min(20, max(1, math.ceil(EPOCHS_TARGET_S / max(estimate, 1e-6)))))
    epochs, _ = _fit(model, sampler, spe, spe, n)
    seconds = float(np.median(epochs))
    out = {"how": "whole_epoch", "epoch_s": seconds, "epochs": n,
           "epochs_s": epochs, "steps": spe, "per_step_s": seconds / spe,
           "pairs_per_s": spe * pairs / seconds}
  else:
    steps = int(min(spe - warm, max(5, math.ceil(STEPS_TARGET_S / max(steady, 1e-6)))))
    _, times = _fit(model, sampler, warm, steps + 1)
    per_step = (times[-1] - times[1]) / steps  # the first step waits on the iterator
    out = {"how": "computed_from_steps", "epoch_s": spe * per_step + draw_s,
           "steps": steps, "per_step_s": per_step, "pairs_per_s": pairs / per_step}
  out.update(steps_per_epoch=spe, batch=pairs, negatives=config.num_neg,
             compile_s=compile_s, draw_s=draw_s, sampler_build_s=sampler_s)
  return out, sampler


def train_floor(model, config, bytes_per_s, prop, flops_per_s, tanh_per_s=None):
  """Floor of one train step: Adam's dense update + 2 x L propagations +
  the batch's pairs scored once (their flops and tanh) and the covariance
  loss's forward."""
  weights = int(sum(np.prod(v.shape) for v in model.trainable_variables))
  layers = bench_settings.graph_layers(model)
  prop_s = prop.get("seconds", 0.0) if layers else 0.0
  work = bench_settings.pair_work(model)
  pairs = config.batch_size * (1 + config.num_neg)
  flops = pairs * work["flops"]
  if getattr(model, "use_cov_loss", False):
    flops += 2 * (model.n_users + model.n_items) * model.embed_dim ** 2
  floor = floors.step_floor(weights, bytes_per_s, 2 * layers, prop_s, flops, flops_per_s,
                            pairs * work["tanh"], tanh_per_s)
  floor.update(trained_weights=weights, bandwidth_gb_s=bytes_per_s / 1e9,
               step_flops=flops, product_s=prop)
  return floor


class _Timed:
  """Wraps the method `obj.<name>()`, keeping the seconds of its last call."""

  def __init__(self, obj, name):
    self.obj, self.name, self.inner, self.seconds = obj, name, getattr(obj, name), 0.0
    setattr(obj, name, self)

  def __call__(self):
    start = time.perf_counter()
    self.inner()
    self.seconds = time.perf_counter() - start

  def restore(self):
    setattr(self.obj, self.name, self.inner)


def _whole_evaluation(ev, timed, max_eval_s):
  """The one-time preparation `timed()` and the first chunk together (trace
  and compile: `first_chunk_s`), a second chunk at the same shape
  (`chunk_s`), then, unless the chunks would run past `max_eval_s`
  ("skipped"), one whole evaluation `ev()`, its preparation (`timed` again,
  inside it) reported apart from the ranking."""
  chunk, n = ev.user_chunk, ev.n_users
  start = time.perf_counter()
  timed()
  ev.chunk_hits(0)
  out = {"users": n, "items": ev.model.n_items, "user_chunk": chunk,
         "chunks": -(-n // chunk), "first_chunk_s": time.perf_counter() - start}
  if n > chunk:
    start = time.perf_counter()
    ev.chunk_hits(1)
    out["chunk_s"] = time.perf_counter() - start
    if max_eval_s and out["chunks"] * out["chunk_s"] > max_eval_s:
      out["skipped"] = (f"not run: {out['chunks']:,} chunks of {chunk} users, "
                        f"{out['chunk_s']:.2f} s each (measured) > "
                        f"--max_eval_s={max_eval_s:g}")
      return out
  start = time.perf_counter()
  metrics = ev()  # the same users: no input built, nothing compiled again
  seconds = time.perf_counter() - start
  ranking = seconds - timed.seconds
  out.update(seconds=seconds, prepare_s=timed.seconds, ranking_s=ranking,
             per_user_ms=1000 * ranking / max(n, 1),
             metrics={k: float(v) for k, v in metrics.items()})
  return out


def eval_figures(model, ds, max_eval_s, jit_compile=True):
  from maml_tf.evaluate import full_ranking
  exclude = np.concatenate([ds.train, ds.valid]) if len(ds.valid) else ds.train
  ev = full_ranking.Evaluator(model, exclude, ds.test, KS, jit_compile=jit_compile)
  # What every evaluation of a run reuses is built once, apart: every
  # chunk's users and exclusions (padded to one width, so the chunks timed
  # here run at the shape the whole evaluation compiles for; a chunk
  # evaluated alone would pay XLA's compilation of its own width).
  start = time.perf_counter()
  ev.prepare_inputs()
  inputs_s = time.perf_counter() - start
  timed = _Timed(model, "prepare_scoring")
  try:
    out = _whole_evaluation(ev, timed, max_eval_s)
  finally:
    timed.restore()
  out.update(item_chunk=ev.item_chunk, inputs_s=inputs_s)
  return out, ev


def per_pair(model) -> bool:
  """Whether the model's full ranking does work per (user, item) pair beyond
  one dot product of two tables (the models two-stage evaluation is for)."""
  work = bench_settings.pair_work(model)
  return work["shape"] is not None or bool(work["tanh"])


def two_stage_figures(model, ds, n_candidates, max_eval_s, jit_compile=True):
  """A whole two-stage evaluation of every test user (see the module
  docstring), or {"skipped": why} when the model has no first stage or its
  chunks would run past `max_eval_s`."""
  from maml_tf.errors import UsageError
  from maml_tf.evaluate import two_stage
  exclude = np.concatenate([ds.train, ds.valid]) if len(ds.valid) else ds.train
  try:
    ev = two_stage.TwoStageEvaluator(model, exclude, ds.test, KS,
                                     n_candidates=n_candidates,
                                     jit_compile=jit_compile)
  except UsageError as e:
    return {"candidates": int(n_candidates), "skipped": f"not run: {e}"}
  ev.prepare_inputs()
  timed = _Timed(ev, "prepare_tables")  # the serving tables, every call
  try:
    out = _whole_evaluation(ev, timed, max_eval_s)
  finally:
    timed.restore()
  return dict(out, candidates=ev.n_candidates)


def two_stage_floor(model, users, candidates, full_floor):
  """The two-stage figure's floor (bench_floors.two_stage_floor) at this
  process's rates: the first stage's dot product over the retrieval space's
  vectors at the rate of its own [users, width] x [width, items] shape, the
  per-pair work at the rates of the full ranking's floor (`full_floor`)."""
  work = bench_settings.pair_work(model)
  # The first stage's vectors (MAML's: P and Q, not its serving width).
  width = int(model.retrieval_space(model.serving_tables())[1].shape[-1])
  dot = max(floors.matmul_rate(rows, width, model.n_items) for rows in (64, 512))
  tanh = full_floor.get("tanh_g_s")
  floor = floors.two_stage_floor(
      users, model.n_items, candidates, 2 * width, dot, work["flops"],
      full_floor["matmul_gflop_s"] * 1e9, full_floor["scan_mscores_s"] * 1e6,
      work["tanh"], tanh and tanh * 1e9)
  floor.update(first_stage_width=width, first_matmul_gflop_s=dot / 1e9)
  return floor


def eval_floor(model, ev, prop):
  # Every rate at fixed shapes, the faster of two, never at our own chunk's:
  # the floor must not move with the chunking it judges.
  work = bench_settings.pair_work(model)
  if work["shape"] is None:  # one product of tables, users x items
    inner = model.score_width if work["flops"] == 2 * model.score_width else model.embed_dim
    mm = max(floors.matmul_rate(rows, inner, model.n_items) for rows in (64, 512))
  else:  # the pairs through the per-pair matmul, a cache-sized or a large block
    inner, outer = work["shape"]
    mm = max(floors.matmul_rate(rows, inner, outer) for rows in (1 << 12, 1 << 16))
  scan = max(floors.scan_rate(rows, model.n_items) for rows in (16, 256))
  tanh = floors.tanh_rate() if work["tanh"] else None
  floor = floors.ranking_floor(ev.n_users, model.n_items, work["flops"], mm, scan,
                               work["tanh"], tanh)
  floor.update(pair_flops=work["flops"], pair_tanh=work["tanh"], pair_work=work["what"],
               matmul_gflop_s=mm / 1e9, scan_mscores_s=scan / 1e6,
               tanh_g_s=None if tanh is None else tanh / 1e9)
  layers = bench_settings.graph_layers(model)
  if layers:
    floor["prepare_floor_s"] = layers * prop["seconds"]
  return floor


def _itemsize(dtype) -> int:
  """Bytes of one element of a Keras (a string) or TF dtype."""
  return int(getattr(dtype, "size", 0) or np.dtype(str(dtype)).itemsize)


def memory_floor(model, ds, sampler, ev, base_mb):
  """The process at start-up + variables (with the optimizer's) + data +
  graph + one chunk of scores, in MB."""
  variables = list(model.variables)
  if getattr(model, "optimizer", None) is not None:
    variables += list(model.optimizer.variables)
  var_b = int(sum(np.prod(v.shape) * _itemsize(v.dtype) for v in variables))
  data_b = _nbytes([ds.train, ds.test, ds.valid] + list(ds.features.values()))
  if sampler is not None:  # one epoch's batches (int32) + the pairs and keys
    data_b += (sampler.steps_per_epoch * sampler.batch_size * (2 + sampler.num_neg) * 4
               + 2 * sampler.pairs.nbytes)
  graph_b = 0
  if bench_settings.graph_layers(model):  # both directions: int64 index pair + value
    graph_b = 2 * len(ds.train) * (2 * 8 + 4)
  chunk_b = 0
  if ev is not None:  # the scores (masked in place), one item chunk's
    # per-pair activations (none for one product of tables)
    chunk_b = ev.user_chunk * model.n_items * 4
    chunk_b += ev.user_chunk * ev.item_chunk * getattr(model, "pair_width", 0) * 4
  mb = lambda b: b / 2**20  # noqa: E731
  parts = {"base_mb": base_mb, "variables_mb": mb(var_b), "data_mb": mb(data_b),
           "graph_mb": mb(graph_b), "chunk_mb": mb(chunk_b)}
  return dict(parts, mb=sum(parts.values()))


def adjacency_of(model, ds):
  """The scenario's normalised train graph (a graph model's own when it
  holds one), or None for a model without propagation."""
  if not bench_settings.graph_layers(model):
    return None
  adjacency = getattr(model, "adjacency", None)
  import tensorflow as tf
  if isinstance(adjacency, tf.sparse.SparseTensor):
    return adjacency
  from maml_tf.models import lightgcn
  return lightgcn.normalized_adjacency(ds.train, ds.n_users, ds.n_items)


def run(model_name, size_name, quick=False, max_epoch_s=180.0, max_eval_s=1800.0,
        root=".", eval_candidates=100):
  """Every figure of `model_name@size_name` as a JSON-able dict."""
  import tensorflow as tf  # noqa: F401  (the start-up memory is part of base)
  from maml_tf import models as models_lib
  from maml_tf import train
  from maml_tf.config import Config
  base_mb = current_rss_mb()
  spec = models_lib.spec(model_name)
  start = time.perf_counter()
  ds = bench_sizes.dataset(size_name, quick, with_features=spec.uses_features)
  data_s = time.perf_counter() - start
  overrides = bench_settings.settings(model_name, root)
  if quick:  # two steps an epoch at least on the small data
    overrides["batch_size"] = min(overrides.get("batch_size", 5000), len(ds.train) // 2)
  config = Config(**dict(overrides, modalities=tuple(ds.features), export=False,
                         tensorboard=False,
                         workdir=bench_system.scratch_dir("bench-")))
  start = time.perf_counter()
  model = train.build_model(config, ds)
  build_s = time.perf_counter() - start
  result = {"model": model_name, "size": size_name, "n_users": ds.n_users,
            "n_items": ds.n_items, "train_pairs": len(ds.train),
            "test_pairs": len(ds.test), "valid_pairs": len(ds.valid),
            "features": {m: int(v.shape[1]) for m, v in ds.features.items()},
            "settings": {k: v for k, v in overrides.items()
                         if not isinstance(v, tuple)},
            "data_s": data_s, "build_s": build_s}
  train_fig, sampler = train_figures(model, ds, config, max_epoch_s, quick)
  ev_fig, ev = eval_figures(model, ds, max_eval_s)
  # Peak memory before the floors run (they allocate buffers of their own).
  peak = peak_rss_mb()
  mem = memory_floor(model, ds, sampler, ev, base_mb)
  result["memory"] = {"peak_rss_mb": peak, "floor": mem["mb"],
                      "fraction": floors.fraction(mem["mb"], peak),
                      "floor_parts": {k: v for k, v in mem.items() if k != "mb"}}
  result["peak_rss_mb"] = peak
  adjacency = adjacency_of(model, ds)
  prop = {} if adjacency is None else floors.propagation_seconds(adjacency, model.embed_dim)
  del adjacency
  floor = eval_floor(model, ev, prop)
  if "ranking_s" in ev_fig:
    ev_fig.update(floors.figure(ev_fig["ranking_s"], floor, key="ranking_s"))
  else:
    ev_fig.update(floor=floor["seconds"], fraction=None,
                  floor_parts={k: v for k, v in floor.items() if k != "seconds"})
  result["eval"] = ev_fig
  if eval_candidates and per_pair(model):
    ts_fig = two_stage_figures(model, ds, eval_candidates, max_eval_s)
    if "ranking_s" in ts_fig:
      ts_floor = two_stage_floor(model, ts_fig["users"], ts_fig["candidates"], floor)
      ts_fig.update(floors.figure(ts_fig["ranking_s"], ts_floor, key="ranking_s"))
    result["two_stage"] = ts_fig
  floor = train_floor(model, config, floors.bandwidth(), prop,
                      floor["matmul_gflop_s"] * 1e9,
                      floor["tanh_g_s"] and floor["tanh_g_s"] * 1e9)
  train_fig.update(floors.figure(train_fig["per_step_s"], floor, key="per_step_s"))
  result["train"] = train_fig
  return result
