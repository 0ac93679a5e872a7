"""MAML's own layers (docs/spec.md §2): `FeatureFusion`, the item-feature
MLP into the embedding space (§2.2), and `AlphaAttention`, the per (user,
item) attention over the K embedding dimensions (§2.3).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from maml_tf.models.layers import EPS, clip_rows_to_norm, l2norm, stateless_dropout


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
