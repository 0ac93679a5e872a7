"""LRML (Tay, Luu, Hui; WWW 2018) in the same framework as MAML.

Latent Relational Metric Learning: a memory-based attention learns one
latent relation vector r per user-item pair, and the distance is
D(u, i) = ||p_u + r - q_i||^2:

  s = p_u * q_i                 (element-wise joint key)
  beta = softmax(s K^T)         (over the N memory slots; K [N, d] the keys)
  r = beta M                    (M [N, d] the memory slices)

Training: the pairwise hinge sum_b max(0, m + D(u, i+) - D(u, i-)) with one
uniform negative per positive. The authors' code computes r once, for the
positive pair, and reuses it for the negative (`negative_relation=
"positive"`, the default here); `"own"` gives the negative pair its own r.
P and Q are clipped to the unit ball after each step; Adam.

`LRML` is a `MAML` with no item features and no attention whose distance is
the memory relation's: it shares MAML's training loop, sampler, evaluation,
checkpoints, TensorBoard logging and export, and overrides only what the
distance touches (`pair_distances`, `score_items`, `loss_terms`). Its loss
has no feature or covariance term.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from maml_tf import losses
from maml_tf.config import NEGATIVE_RELATIONS
from maml_tf.model import MAML, map_item_chunks


@keras.saving.register_keras_serializable(package="maml_tf")
class MemoryRelation(keras.layers.Layer):
  """r = softmax((p * q) K^T) M: the latent relation of a user-item pair."""

  def __init__(self, slots=10, embed_dim=64, seed=None, **kwargs):
    super().__init__(**kwargs)
    if int(slots) < 1 or int(embed_dim) < 1:
      raise ValueError("`slots` and `embed_dim` must be >= 1. Received: "
                       f"slots={slots}, embed_dim={embed_dim}")
    self.slots, self.embed_dim, self.seed = int(slots), int(embed_dim), seed

  def build(self, input_shape=None):
    init = lambda: keras.initializers.GlorotUniform(seed=self.seed)  # noqa: E731
    self.keys = self.add_weight(shape=(self.slots, self.embed_dim),
                                initializer=init(), name="keys")
    self.memory = self.add_weight(shape=(self.slots, self.embed_dim),
                                  initializer=init(), name="memory")
    self.built = True

  def attention(self, p, q):
    """beta [..., N] for broadcastable p, q [..., d]."""
    s = p * q
    logits = tf.tensordot(s, tf.convert_to_tensor(self.keys), [[-1], [1]])
    return tf.nn.softmax(logits, axis=-1)

  def relate(self, beta):
    """r = beta M [..., d] from the attention beta [..., N]."""
    return tf.tensordot(beta, tf.convert_to_tensor(self.memory), [[-1], [0]])

  def call(self, p, q):
    """r [..., d]."""
    return self.relate(self.attention(p, q))

  def get_config(self):
    config = super().get_config()
    config.update(slots=self.slots, embed_dim=self.embed_dim, seed=self.seed)
    return config


def relation_distance(p, q, r):
  """||p + r - q||^2 over the last axis."""
  return tf.reduce_sum(tf.square(p + r - q), axis=-1)


@keras.saving.register_keras_serializable(package="maml_tf")
class LRML(MAML):
  """LRML: MAML's framework with the memory relation as the distance."""

  # Hyper-parameter search space (scripts/tune.py); the form is MAML's.
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "margin": ("float", 0.1, 1.0, "linear"),
      "memory_slots": ("int", 5, 50),
      "embed_dim": ("choice", [32, 64, 128]),
  }

  def __init__(self, n_users, n_items, embed_dim=64, memory_slots=10,
               margin=0.5, negative_relation="positive", clip_norm=1.0,
               seed=None, **kwargs):
    if negative_relation not in NEGATIVE_RELATIONS:
      raise ValueError("`negative_relation` must be positive or own. "
                       f"Received: {negative_relation!r}")
    for key in ("feature_dim", "attention", "use_cov_loss", "mode"):
      kwargs.pop(key, None)
    self.memory_slots = int(memory_slots)
    self.negative_relation = negative_relation
    super().__init__(n_users, n_items, feature_dim=0, embed_dim=embed_dim,
                     attention="none", mode="faithful", margin=margin,
                     use_rank_weight=False, use_cov_loss=False,
                     clip_norm=clip_norm, seed=seed, **kwargs)
    self.relation = MemoryRelation(self.memory_slots, self.embed_dim, seed=seed,
                                   name="relation")
    self.relation.build()

  @property
  def model_kind(self):
    return "lrml"

  def pair_distances(self, users, items, fused=None, training=False):
    """D(u, i) for users [B] and items [B, N], each pair its own relation."""
    p = tf.gather(self.user_embeddings, users)[:, None, :]
    q = tf.gather(self.item_embeddings, items)
    return relation_distance(p, q, self.relation(p, q))

  def pair_attention(self, users, items):
    """The memory attention beta [B, N slots] of pairs users [B], items [B]."""
    p = tf.gather(self.user_embeddings, users)
    q = tf.gather(self.item_embeddings, items)
    return self.relation.attention(p, q)

  def loss_terms(self, users, items, training=False):
    """The hinge against one negative (column 1 of `items`), summed."""
    p = tf.gather(self.user_embeddings, users)[:, None, :]
    q = tf.gather(self.item_embeddings, items[:, :2])
    if self.negative_relation == "positive":
      r = self.relation(p[:, 0], q[:, 0])[:, None, :]  # the positive's, twice
    else:
      r = self.relation(p, q)
    d = relation_distance(p, q, r)
    emb = losses.embedding_loss(d[:, 0], d[:, 1:], self.margin, self.n_items,
                                use_rank_weight=False)
    return {"embedding_loss": emb, "loss": emb}

  def score_items(self, users, item_chunk=None):
    """-D(u, i) of users [U] against every item: [U, n_items], in chunks."""
    p = tf.gather(self.user_embeddings, users)[:, None, :]

    def block(args):
      q = args[0][None]
      return -relation_distance(p, q, self.relation(p, q))

    return map_item_chunks(block, (tf.convert_to_tensor(self.item_embeddings),),
                           self.n_items, item_chunk)

  def get_config(self):
    return {"n_users": self.n_users, "n_items": self.n_items,
            "embed_dim": self.embed_dim, "memory_slots": self.memory_slots,
            "margin": self.margin, "negative_relation": self.negative_relation,
            "clip_norm": self.clip_norm, "seed": self.seed, "name": self.name}
