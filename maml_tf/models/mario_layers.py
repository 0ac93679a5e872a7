"""MARIO's own layers and feature rescaling (see maml_tf/models/mario.py):
the modality attention, the dense layers of its encoders and decoders, and
`normalize_features` (`--mario_feature_norm`)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

FEATURE_NORMS = ("scale", "row", "none")


def normalize_features(x, how):
  """One modality's features [n_items, d_m] rescaled as `feature_norm`
  says (module docstring): `scale` by the mean row L2 norm, `row` each row
  to unit norm, `none` unchanged; zero rows (and an all-zero modality) are
  left as they are. float64 in, float32 out."""
  x = np.asarray(x, np.float64)
  if how == "none":
    return x.astype(np.float32)
  norms = np.linalg.norm(x, axis=1)
  if how == "scale":
    mean = float(norms.mean()) if len(norms) else 0.0
    return (x / mean if mean > 0 else x).astype(np.float32)
  return (x / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)


@keras.saving.register_keras_serializable(package="maml_tf")
class ModalityAttention(keras.layers.Layer):
  """a^m = softmax_m(v . tanh(W_u u + W_e e^m + b)) over the modalities.

  `user_part` and `item_part` are the two halves of the first layer, so the
  per-pair work can be an addition of precomputed halves.
  """

  def __init__(self, embed_dim=64, hidden_dim=64, seed=None, **kwargs):
    super().__init__(**kwargs)
    for name, value in (("embed_dim", embed_dim), ("hidden_dim", hidden_dim)):
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Received: "
                         f"{name}={value!r}")
    self.embed_dim, self.hidden_dim, self.seed = int(embed_dim), int(hidden_dim), seed

  def build(self, input_shape=None):
    glorot = lambda: keras.initializers.GlorotUniform(seed=self.seed)  # noqa: E731
    d, h = self.embed_dim, self.hidden_dim
    self.user_kernel = self.add_weight(shape=(d, h), initializer=glorot(),
                                       name="user_kernel")
    self.item_kernel = self.add_weight(shape=(d, h), initializer=glorot(),
                                       name="item_kernel")
    self.bias = self.add_weight(shape=(h,), initializer="zeros", name="bias")
    self.score_vector = self.add_weight(shape=(h, 1), initializer=glorot(),
                                        name="score_vector")
    self.built = True

  def user_part(self, u):
    """W_u u + b: [..., d] -> [..., h]."""
    return tf.tensordot(u, tf.convert_to_tensor(self.user_kernel), [[-1], [0]]) + self.bias

  def item_part(self, e):
    """W_e e: [..., d] -> [..., h]."""
    return tf.tensordot(e, tf.convert_to_tensor(self.item_kernel), [[-1], [0]])

  def logits(self, user_part, item_part):
    """v . tanh(user_part + item_part) over the last axis (broadcasting)."""
    h = tf.tanh(user_part + item_part)
    return tf.tensordot(h, tf.convert_to_tensor(self.score_vector)[:, 0], [[-1], [0]])

  def call(self, u, e):
    """Weights [..., M] of users u [..., d] over modality embeddings
    e [..., M, d] (u's leading axes broadcast against e's)."""
    return tf.nn.softmax(self.logits(self.user_part(u)[..., None, :],
                                     self.item_part(e)), axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update(embed_dim=self.embed_dim, hidden_dim=self.hidden_dim,
                  seed=self.seed)
    return config


def dense_layer(units, name, seed):
  return keras.layers.Dense(
      units, kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
      bias_initializer="zeros", name=name)
