"""MAML's building blocks as Keras 3 layers (SPEC §2).

- `FeatureFusion`: the item-feature MLP that projects the concatenated
  modalities into the embedding space (SPEC §2.2).
- `AlphaAttention`: the per (user, item) attention over the K embedding
  dimensions, alpha * softmax (SPEC §2.3).
- `TableEmbedding`: a user or item table (a Keras `Embedding`), with the
  `UnitBall` constraint for the metric-learning models.
- `UnitBall`: the post-update clip of every embedding row to norm <= c,
  with `tf.clip_by_norm` semantics (SPEC §3).

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


def _dense(units, activation, name):
  return keras.layers.Dense(
      units, activation=activation, kernel_initializer="glorot_uniform",
      bias_initializer="zeros", name=name)


@keras.saving.register_keras_serializable(package="maml_tf")
class FeatureFusion(keras.layers.Layer):
  """x -> l2norm -> relu(H) -> l2norm -> relu(H/2) -> l2norm -> relu(H/2) -> K.

  The output is multiplied by `scaling` and its rows clipped to norm
  `clip_norm`. Dropout (rate `dropout`) follows each hidden layer and acts
  only when called with training=True (the release declared it and never
  activated it; paper mode does).
  """

  def __init__(self, hidden_dim, embed_dim, dropout=0.0, scaling=1.0,
               clip_norm=1.0, seed=None, **kwargs):
    super().__init__(**kwargs)
    if hidden_dim < 2:
      raise ValueError(f"`hidden_dim` must be >= 2. Received: hidden_dim={hidden_dim}")
    if embed_dim < 1:
      raise ValueError(f"`embed_dim` must be >= 1. Received: embed_dim={embed_dim}")
    if not 0 <= dropout < 1:
      raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
    self.hidden_dim = int(hidden_dim)
    self.embed_dim = int(embed_dim)
    self.dropout = float(dropout)
    self.scaling = float(scaling)
    self.clip_norm = float(clip_norm)
    self.seed = seed
    self.dense1 = _dense(self.hidden_dim, "relu", "dense1")
    self.dense2 = _dense(self.hidden_dim // 2, "relu", "dense2")
    self.dense3 = _dense(self.hidden_dim // 2, "relu", "dense3")
    self.out = _dense(self.embed_dim, None, "out")
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, input_shape):
    d = input_shape[-1]
    self.dense1.build((None, d))
    self.dense2.build((None, self.hidden_dim))
    self.dense3.build((None, self.hidden_dim // 2))
    self.out.build((None, self.hidden_dim // 2))

  def _drop(self, h, training):
    if training and self.dropout > 0:
      return stateless_dropout(h, self.dropout, self.seed_generator)
    return h

  def call(self, x, training=False):
    h = self._drop(self.dense1(l2norm(x)), training)
    h = self._drop(self.dense2(l2norm(h)), training)
    h = self._drop(self.dense3(l2norm(h)), training)
    return clip_rows_to_norm(self.out(h) * self.scaling, self.clip_norm)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.embed_dim,)

  def get_config(self):
    config = super().get_config()
    config.update(hidden_dim=self.hidden_dim, embed_dim=self.embed_dim,
                  dropout=self.dropout, scaling=self.scaling,
                  clip_norm=self.clip_norm, seed=self.seed)
    return config


@keras.saving.register_keras_serializable(package="maml_tf")
class AlphaAttention(keras.layers.Layer):
  """a = alpha * softmax(relu(W2 l2norm(tanh(W1 l2norm([p; q; f]) + b1)) + b2)).

  W1 maps 3K (2K without item features) to 5K, W2 maps 5K to K. `call` is
  the plain computation. Because W1 acts on l2norm([p; q; f]),
  W1 z = (Wp p + Wq q + Wf f) / ||[p; q; f]||: `user_part` and `item_part`
  compute the two halves once per user and once per item, and `combine`
  finishes the pair. Both paths compute the same function (tested).

  `l2` is the L2 weight on both kernels that the release declared and never
  added to its loss; `regularization_loss()` returns it for paper mode.
  `dropout` acts after the first layer only when training=True.
  """

  def __init__(self, embed_dim, alpha, dropout=0.05, l2=100.0,
               use_features=True, seed=None, **kwargs):
    super().__init__(**kwargs)
    if embed_dim < 1:
      raise ValueError(f"`embed_dim` must be >= 1. Received: embed_dim={embed_dim}")
    if not alpha > 0:
      raise ValueError(f"`alpha` must be > 0. Received: alpha={alpha}")
    if not 0 <= dropout < 1:
      raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
    self.embed_dim = int(embed_dim)
    self.alpha = float(alpha)
    self.dropout = float(dropout)
    self.l2 = float(l2)
    self.use_features = bool(use_features)
    self.seed = seed
    self.dense1 = _dense(5 * self.embed_dim, "tanh", "dense1")
    self.dense2 = _dense(self.embed_dim, "relu", "dense2")
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, *args, **kwargs):
    parts = 3 if self.use_features else 2
    self.dense1.build((None, parts * self.embed_dim))
    self.dense2.build((None, 5 * self.embed_dim))

  def call(self, p, q, f=None, training=False):
    z = tf.concat([p, q] + ([f] if self.use_features else []), axis=-1)
    a1 = self._drop(self.dense1(l2norm(z)), training)
    return self.alpha * tf.nn.softmax(self.dense2(l2norm(a1)), axis=-1)

  # The split computation used on the hot paths.
  def _kernel_block(self, index):
    k = self.embed_dim
    return self.dense1.kernel[index * k:(index + 1) * k]

  def user_part(self, p):
    """(p Wp, ||p||^2) for user rows p [..., K]."""
    return tf.matmul(p, self._kernel_block(0)), tf.reduce_sum(p * p, -1)

  def item_part(self, q, f=None, f_part=None):
    """(q Wq + f Wf, ||q||^2 + ||f||^2); `f_part` = (f Wf, ||f||^2) if known."""
    proj = tf.matmul(q, self._kernel_block(1))
    sq = tf.reduce_sum(q * q, -1)
    if self.use_features:
      if f_part is None:
        f_part = self.feature_part(f)
      proj, sq = proj + f_part[0], sq + f_part[1]
    return proj, sq

  def feature_part(self, f):
    return tf.matmul(f, self._kernel_block(2)), tf.reduce_sum(f * f, -1)

  def combine(self, user, item, training=False):
    """Attention from broadcastable (proj, sqnorm) halves of user and item."""
    inv = tf.math.rsqrt(tf.maximum(user[1] + item[1], EPS))
    pre = (user[0] + item[0]) * inv[..., None] + self.dense1.bias
    a1 = l2norm(self._drop(tf.tanh(pre), training))
    flat = tf.reshape(a1, [-1, 5 * self.embed_dim])
    a2 = tf.nn.relu(tf.matmul(flat, self.dense2.kernel) + self.dense2.bias)
    a2 = tf.reshape(a2, tf.concat([tf.shape(a1)[:-1], [self.embed_dim]], 0))
    return self.alpha * tf.nn.softmax(a2, axis=-1)

  def _drop(self, h, training):
    if training and self.dropout > 0:
      return stateless_dropout(h, self.dropout, self.seed_generator)
    return h

  def regularization_loss(self):
    return self.l2 * (tf.reduce_sum(tf.square(self.dense1.kernel)) +
                      tf.reduce_sum(tf.square(self.dense2.kernel)))

  def get_config(self):
    config = super().get_config()
    config.update(embed_dim=self.embed_dim, alpha=self.alpha,
                  dropout=self.dropout, l2=self.l2,
                  use_features=self.use_features, seed=self.seed)
    return config
