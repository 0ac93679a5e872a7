"""MAML's building blocks as Keras 3 layers (docs/spec.md §2).

- `FeatureFusion`: the item-feature MLP that projects the concatenated
  modalities into the embedding space (docs/spec.md §2.2).
- `AlphaAttention`: the per (user, item) attention over the K embedding
  dimensions, alpha * softmax (docs/spec.md §2.3).
- `TableEmbedding`: a user or item table (a Keras `Embedding`), with the
  `UnitBall` constraint for the metric-learning models.
- `UnitBall`: the post-update clip of every embedding row to norm <= c,
  with `tf.clip_by_norm` semantics (docs/spec.md §3).

Normalisation everywhere is `tf.nn.l2_normalize`'s: x / sqrt(max(sum x^2,
1e-12)).
"""

from __future__ import annotations

import keras
import tensorflow as tf

EPS = 1e-12


def l2norm(x, axis=-1):
  return tf.nn.l2_normalize(x, axis=axis, epsilon=EPS)


@tf.function(jit_compile=True)
def _dropout_kernel(x, seed, rate):
  keep = tf.random.stateless_uniform(tf.shape(x), seed, alg="threefry") >= rate
  return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))


def stateless_dropout(x, rate, seed_generator):
  """Inverted dropout whose mask is a stateless ThreeFry draw.

  Keras' own dropout compiles, under XLA on a CPU, to a random-number kernel
  about 100x slower than this (3.3 s vs 18 ms for a [25000, 320] mask,
  measured here); the mask is drawn in its own small XLA kernel, seeded from
  the layer's SeedGenerator, whose state is a tracked variable, so a resumed
  run draws the same masks.
  """
  seed = tf.cast(seed_generator.next(), tf.int32)
  return _dropout_kernel(x, seed, float(rate))


@tf.function(jit_compile=True)
def _segment_rows(rows, ids, table):
  return tf.math.unsorted_segment_sum(rows, ids, tf.shape(table)[0])


def sum_rows_into(rows, ids, table):
  """rows [..., d...] summed into a zero table shaped like `table` [n, d...]
  at their `ids` [...]: the dense gradient of `tf.gather(table, ids)`.

  XLA's kernel; TensorFlow's CPU UnsortedSegmentSum took 2.5-6x as long on
  a training step's shapes (7-8 ms against 2.6-3.7 ms for [10000, 320] rows
  into 2,406; 6-7 against 0.8-1.5 ms for [25000, 64]; docs/speed.md).
  """
  flat = tf.reshape(rows, tf.concat([[-1], tf.shape(table)[1:]], 0))
  return _segment_rows(flat, tf.reshape(ids, [-1]), table)


def gather_rows(table, ids):
  """`tf.gather(table, ids)` whose gradient is the dense table of
  `sum_rows_into`, instead of IndexedSlices that TensorFlow densifies with
  its slower kernel wherever the table has another gradient too."""
  ids = tf.convert_to_tensor(ids)

  @tf.custom_gradient
  def gather(values):
    def grad(upstream):
      return sum_rows_into(upstream, ids, values)
    return tf.gather(values, ids), grad

  return gather(tf.convert_to_tensor(table))


def clip_rows_to_norm(x, clip_norm):
  """Each row scaled by c / max(||row||, c): `tf.clip_by_norm(x, c, axes=1)`."""
  return tf.clip_by_norm(x, clip_norm, axes=[-1])


@keras.saving.register_keras_serializable(package="maml_tf")
class UnitBall(keras.constraints.Constraint):
  """Keeps every row of an embedding table inside the ball of radius c.

  Keras applies a variable's constraint after each optimiser update, which is
  where the release ran its clip ops.
  """

  def __init__(self, clip_norm=1.0):
    if not clip_norm > 0:
      raise ValueError(f"`clip_norm` must be > 0. Received: clip_norm={clip_norm}")
    self.clip_norm = float(clip_norm)

  def __call__(self, w):
    return clip_rows_to_norm(w, self.clip_norm)

  def get_config(self):
    return {"clip_norm": self.clip_norm}


@keras.saving.register_keras_serializable(package="maml_tf")
class TableEmbedding(keras.layers.Embedding):
  """An embedding table, rows ~ N(0, stddev^2), optionally kept in a ball.

  With `clip_norm` set, every row is clipped to norm <= clip_norm after each
  optimiser update (`UnitBall`, the metric-learning models' constraint);
  with None the table is unconstrained (the dot-product models). `seed` is
  an int or a shared `keras.random.SeedGenerator` (then tables built in turn
  draw from one stream).
  """

  def __init__(self, rows, dim, stddev=0.1, clip_norm=None, seed=None, **kwargs):
    if int(rows) < 1 or int(dim) < 1:
      raise ValueError("`rows` and `dim` must be >= 1. Received: "
                       f"rows={rows}, dim={dim}")
    if not stddev > 0:
      raise ValueError(f"`stddev` must be > 0. Received: stddev={stddev}")
    self.stddev, self.clip_norm = float(stddev), clip_norm
    self._seed = seed
    super().__init__(
        int(rows), int(dim),
        embeddings_initializer=keras.initializers.RandomNormal(
            stddev=self.stddev, seed=seed),
        embeddings_constraint=None if clip_norm is None else UnitBall(clip_norm),
        **kwargs)

  def get_config(self):
    config = super().get_config()
    for key in ("embeddings_initializer", "embeddings_constraint", "input_dim",
                "output_dim"):
      config.pop(key, None)
    config.update(rows=self.input_dim, dim=self.output_dim, stddev=self.stddev,
                  clip_norm=self.clip_norm,
                  seed=self._seed if isinstance(self._seed, int) else None)
    return config


