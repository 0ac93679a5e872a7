"""Hardware floors of the benchmark's figures, measured in the same process.

A floor is the time the figure's essential work would take at a rate this
machine reaches, measured here right next to the figure (so a busy machine
lowers both):

- full ranking: users x items x `flops` per pair at the dense matmul rate
  (GFLOP/s of tf.matmul at the faster of two fixed shapes, whatever the
  evaluation's chunks: [64 or 512 users, width] x [width, items], or the
  per-pair matmul of a model with one), plus the pairs' tanh / exp at the
  tanh rate (MAML's and MARIO's attention, LRML's softmax), plus users x
  items scores at the scan rate (scores/s of one compiled pass of
  reduce_max over [16 or 256, items] scores, the faster: an exact top k
  reads every score at least once);
- two-stage ranking (`--eval_candidates=N`): the first stage as a full
  ranking by the retrieval space's dot product (2 x its width flops a
  pair), the second as N pairs a user of the model's own per-pair work;
- a graph model's train step: its forward and backward propagations, each
  a product of the normalised graph with a [nodes, d] table, at the rate of
  the faster of tf.sparse.sparse_dense_matmul and the XLA gather /
  segment-sum product on the scenario's own graph;
- every train step: Adam's dense update, 7 float32 streams per trained
  weight (read the gradient, weight, m, v; write weight, m, v) at the
  memory bandwidth (bytes/s of a large fused elementwise op, in place), plus
  the batch's pairs each scored once (forward only) and the covariance
  loss's forward over both tables where the model has one, at the matmul
  rate; what a model computes beyond that (encoders, decoders, per-modality
  graphs, backward passes) is not counted, so its floor is looser;
- peak memory: the process at start-up plus every variable (tables,
  optimizer slots, caches), the data arrays, the graph and one chunk of
  scores.

fraction = floor / measured: 1 means the figure runs at the floor; the
usual is below 1. The arithmetic (`ranking_floor`, `adam_bytes`,
`fraction`, ...) is separate from the measuring (`*_rate`), so it is tested
without TensorFlow.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

ADAM_STREAMS = 7  # read g, w, m, v; write w, m, v
FLOAT_BYTES = 4


# ------------------------------------------------------------------ arithmetic
def fraction(floor_s: Optional[float], measured_s: Optional[float]) -> Optional[float]:
  """floor / measured, or None when either is missing or measured is 0."""
  if floor_s is None or not measured_s:
    return None
  return floor_s / measured_s


def ranking_floor(users: int, items: int, pair_flops: float,
                  matmul_flops_per_s: float, scan_scores_per_s: float,
                  pair_transcendentals: float = 0.0,
                  transcendentals_per_s: Optional[float] = None) -> dict:
  """Seconds of a full ranking of `users` x `items` at the measured rates:
  the pairs' flops at the matmul rate, their tanh / exp at the tanh rate,
  every score read once at the scan rate."""
  pairs = float(users) * float(items)
  score_s = pairs * pair_flops / matmul_flops_per_s
  tanh_s = (pairs * pair_transcendentals / transcendentals_per_s
            if pair_transcendentals and transcendentals_per_s else 0.0)
  scan_s = pairs / scan_scores_per_s
  return {"seconds": score_s + tanh_s + scan_s, "score_s": score_s,
          "transcendental_s": tanh_s, "scan_s": scan_s}


def two_stage_floor(users: int, items: int, candidates: int, first_flops: float,
                    first_matmul_per_s: float, pair_flops: float,
                    pair_matmul_per_s: float, scan_scores_per_s: float,
                    pair_transcendentals: float = 0.0,
                    transcendentals_per_s: Optional[float] = None) -> dict:
  """Seconds of a two-stage ranking (`--eval_candidates`): the first stage
  is a full ranking of `users` x `items` at `first_flops` a pair (the
  retrieval space's dot or distance); the second scores `users` x
  `candidates` pairs with the model's own per-pair work and reads them
  once more."""
  first = ranking_floor(users, items, first_flops, first_matmul_per_s,
                        scan_scores_per_s)
  second = ranking_floor(users, candidates, pair_flops, pair_matmul_per_s,
                         scan_scores_per_s, pair_transcendentals,
                         transcendentals_per_s)
  return {"seconds": first["seconds"] + second["seconds"],
          "first_stage_s": first["seconds"], "second_stage_s": second["seconds"],
          "second_transcendental_s": second["transcendental_s"]}


def adam_bytes(trained_weights: int) -> int:
  """Bytes Adam's dense update moves per step over `trained_weights` floats."""
  return ADAM_STREAMS * FLOAT_BYTES * int(trained_weights)


def step_floor(trained_weights: int, bytes_per_s: float,
               propagations: int = 0, propagation_s: float = 0.0,
               flops: float = 0.0, flops_per_s: Optional[float] = None,
               transcendentals: float = 0.0,
               transcendentals_per_s: Optional[float] = None) -> dict:
  """Seconds of one train step: Adam's dense update, plus `propagations`
  graph products of `propagation_s` each (forward and backward), plus
  `flops` (the batch's pairs scored once, whole-table terms) at
  `flops_per_s` and their `transcendentals` at `transcendentals_per_s`."""
  adam_s = adam_bytes(trained_weights) / bytes_per_s
  prop_s = propagations * propagation_s
  compute_s = flops / flops_per_s if flops and flops_per_s else 0.0
  tanh_s = (transcendentals / transcendentals_per_s
            if transcendentals and transcendentals_per_s else 0.0)
  return {"seconds": adam_s + prop_s + compute_s + tanh_s, "adam_s": adam_s,
          "propagation_s": prop_s, "propagations": propagations,
          "compute_s": compute_s, "transcendental_s": tanh_s}


def figure(measured: float, floor: dict, key: str = "seconds", **extra) -> dict:
  """{key: measured, "floor": floor seconds, "fraction": ..., "floor_parts"}."""
  out = {key: measured, "floor": floor["seconds"],
         "fraction": fraction(floor["seconds"], measured),
         "floor_parts": {k: v for k, v in floor.items() if k != "seconds"}}
  out.update(extra)
  return out


# ------------------------------------------------------------------ measuring
def best_time(fn: Callable[[], object], min_s: float = 0.3, repeats: int = 3) -> float:
  """The shortest mean seconds of one call over `repeats` rounds of at
  least `min_s` each (after one warm-up call)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    calls, start = 0, time.perf_counter()
    while True:
      fn()
      calls += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_s:
        break
    best = min(best, elapsed / calls)
  return best


def matmul_rate(rows: int, inner: int, cols: int) -> float:
  """FLOP/s of [rows, inner] x [cols, inner]^T (tf.matmul, compiled)."""
  import tensorflow as tf
  a = tf.random.normal([rows, inner])
  b = tf.random.normal([cols, inner])
  mm = tf.function(lambda: tf.matmul(a, b, transpose_b=True), jit_compile=True)
  seconds = best_time(lambda: mm().numpy())
  return 2.0 * rows * inner * cols / seconds


def scan_rate(rows: int, cols: int) -> float:
  """Scores/s of one compiled reduce_max pass over [rows, cols] random
  scores: the least an exact top k of each row does (read every score)."""
  import tensorflow as tf
  x = tf.random.normal([rows, cols])
  scan = tf.function(lambda: tf.reduce_max(x, -1), jit_compile=True)
  seconds = best_time(lambda: scan().numpy())
  return float(rows) * cols / seconds


def tanh_rate(rows: int = 1024, width: int = 64) -> float:
  """tanh/s of a compiled tanh(a_u + b_i) . v over every (u, i) of
  [rows, width] halves: an attention logit's own form (per-user and
  per-item halves added, no large operand read from memory), its
  contraction a dot (XLA vectorises the tanh ~2.5x better before a dot
  than inside a reduce_sum fusion here)."""
  import tensorflow as tf
  a = tf.random.normal([rows, 1, width])
  b = tf.random.normal([1, rows, width])
  v = tf.random.normal([width])
  op = tf.function(lambda: tf.tensordot(tf.tanh(a + b), v, [[-1], [0]]), jit_compile=True)
  return rows * rows * width / best_time(lambda: op().numpy())


def propagation_seconds(adjacency, width: int) -> dict:
  """Seconds of one product of the normalised graph with a [nodes, width]
  table, the faster of tf.sparse.sparse_dense_matmul and the XLA-compiled
  gather / scale / segment-sum product the graph models run
  (`lightgcn.sparse_product`): {"seconds", "sparse_dense_matmul_s",
  "xla_segment_sum_s"}."""
  import tensorflow as tf
  from maml_tf.models import lightgcn
  x = tf.random.normal([int(adjacency.dense_shape[0]), int(width)])
  spmm = tf.function(lambda: tf.sparse.sparse_dense_matmul(adjacency, x))
  xla = tf.function(lambda: lightgcn.sparse_product(adjacency, x), jit_compile=True)
  out = {"sparse_dense_matmul_s": best_time(lambda: spmm().numpy()),
         "xla_segment_sum_s": best_time(lambda: xla().numpy())}
  return dict(out, seconds=min(out.values()))


def bandwidth(floats: int = 1 << 25) -> float:
  """Bytes/s of v.assign(v * s + b) over `floats` float32 (3 streams, in
  place as Adam's update is), compiled."""
  import tensorflow as tf
  v = tf.Variable(tf.random.normal([floats]))
  b = tf.random.normal([floats])

  @tf.function(jit_compile=True)
  def op():
    v.assign(v * 0.5 + b)
    return v[0]

  seconds = best_time(lambda: op().numpy())
  return 3.0 * FLOAT_BYTES * floats / seconds
