"""LRML (Tay, Luu, Hui; WWW 2018) in the same framework as MAML.

Latent Relational Metric Learning: a memory-based attention learns one
latent relation vector r per user-item pair, and the distance is
D(u, i) = sqrt(||p_u + r - q_i||^2 + 1e-3) (`distance="l2"`, the default:
the authors' code's Euclidean distance, epsilon under the root), the paper's
squared ||p_u + r - q_i||^2 (`"squared"`) or the code's other choice, the
L1 norm (`"l1"`):

  s = p_u * q_i                 (element-wise joint key)
  beta = softmax(s K^T)         (over the N memory slots; K [N, d] the keys)
  r = beta M                    (M [N, d] the memory slices)

Training: the pairwise hinge sum_b max(0, m + D(u, i+) - D(u, i-)) with one
uniform negative per positive. The authors' code computes r once, for the
positive pair, and reuses it for the negative (`negative_relation=
"positive"`, the default here); `"own"` gives the negative pair its own r.
P and Q are clipped to the unit ball after each step; Adam.

`LRML` is a `RankingModel` (unit-ball tables P and Q, the shared training
loop, sampler, evaluation, checkpoints, TensorBoard logging and export) that
adds the memory relation. Its loss has no feature or covariance term. The
`score` signature's explanation is the memory attention beta over the N
slots.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from maml_tf.models import metric_losses as losses
from maml_tf.models import base
from maml_tf.models.base import map_item_chunks

NEGATIVE_RELATIONS = ("positive", "own")
# "l2": sqrt(||p + r - q||^2 + 1e-3) and "l1": ||p + r - q||_1, the two
# distances the authors' code offers (l2 the default); "squared":
# ||p + r - q||^2, as the paper writes it. Why the default is not the square:
# with the negative reusing the positive's r, D(u, i+) - D(u, i-) for the
# square is (||q+||^2 - ||q-||^2) - 2 (p + r).(q+ - q-), unbounded in r, so
# the hinge is met by growing one offset r along the popular items'
# direction, and every user's ranking drifts towards popularity (on Office:
# validation Recall@20 4.9 against 8.7 for l2, see the README). For l2 the
# difference is at most ||q+ - q-|| <= 2 whatever r is (triangle
# inequality): the margin has to be earned by the embeddings.
DISTANCES = ("l2", "l1", "squared")
L2_EPSILON = 1e-3


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


def relation_distance(p, q, r, distance="l2"):
  """D(u, i) over the last axis: ||p + r - q||^2, its square root with
  L2_EPSILON under it ("l2"), or the L1 norm of p + r - q ("l1")."""
  diff = p + r - q
  if distance == "l1":
    return tf.reduce_sum(tf.abs(diff), axis=-1)
  squared = tf.reduce_sum(tf.square(diff), axis=-1)
  return tf.sqrt(squared + L2_EPSILON) if distance == "l2" else squared


@keras.saving.register_keras_serializable(package="maml_tf")
class LRML(base.RankingModel):
  """LRML: unit-ball tables and the memory relation as the distance."""

  NAME = "lrml"
  BATCH_SUM_TERMS = ("embedding_loss",)
  # Hyper-parameter search space (scripts/tune.py); the form is MAML's.
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "margin": ("float", 0.1, 1.0, "linear"),
      "memory_slots": ("int", 5, 50),
      "embed_dim": ("choice", [32, 64, 128]),
  }

  def __init__(self, n_users, n_items, embed_dim=64, memory_slots=10,
               margin=0.5, negative_relation="positive", clip_norm=1.0,
               distance="l2", seed=None, **kwargs):
    if negative_relation not in NEGATIVE_RELATIONS:
      raise ValueError("`negative_relation` must be positive or own. "
                       f"Received: {negative_relation!r}")
    if distance not in DISTANCES:
      raise ValueError("`distance` must be l2, l1 or squared. "
                       f"Received: {distance!r}")
    self.distance = distance
    super().__init__(n_users, n_items, embed_dim=embed_dim, clip_norm=clip_norm,
                     seed=seed, **kwargs)
    base.check_positive("margin", margin)
    self.margin = float(margin)
    self.memory_slots = int(memory_slots)
    self.negative_relation = negative_relation
    self.relation = MemoryRelation(self.memory_slots, self.embed_dim, seed=seed,
                                   name="relation")
    self.relation.build()
    self.finish_init()

  @property
  def loss_names(self):
    return ["loss", "embedding_loss"]

  @property
  def explains(self):
    return True

  @property
  def score_width(self):
    return 2 * self.embed_dim + self.memory_slots

  @property
  def pair_width(self):
    # The relation's memory attention and the relation vector, per pair.
    return self.score_width

  def pair_distances(self, users, items):
    """D(u, i) for users [B] and items [B, N], each pair its own relation."""
    p = tf.gather(self.user_embeddings, users)[:, None, :]
    q = tf.gather(self.item_embeddings, items)
    return relation_distance(p, q, self.relation(p, q), self.distance)

  def score_pairs(self, users, items, explain=False):
    """-D(u, i) [B, C]; with `explain`, (-D [B], beta [B, N slots])."""
    if explain:
      return self.serve_pairs(self.serving_tables(), users, items)
    return -self.pair_distances(users, items)

  def pair_attention(self, users, items):
    """The memory attention beta [B, N slots] of pairs users [B], items [B]."""
    p = tf.gather(self.user_embeddings, users)
    q = tf.gather(self.item_embeddings, items)
    return self.relation.attention(p, q)

  def diagnostics(self, pairs):
    """Norms of the pairs' relations r and of what they move: mean ||r||,
    ||mean r|| (the part of r shared by every pair: a constant offset makes
    -D rank items by q . mean r, the same order for every user), mean ||p||
    and ||q||, and the largest memory-slice norm."""
    p = tf.gather(self.user_embeddings, pairs[:, 0])
    q = tf.gather(self.item_embeddings, pairs[:, 1])
    r = self.relation(p, q)
    norm = lambda x: tf.norm(x, axis=-1)  # noqa: E731
    return {"relation_norm": float(tf.reduce_mean(norm(r))),
            "mean_relation_norm": float(norm(tf.reduce_mean(r, 0))),
            "user_norm": float(tf.reduce_mean(norm(p))),
            "item_norm": float(tf.reduce_mean(norm(q))),
            "max_slice_norm": float(tf.reduce_max(norm(self.relation.memory)))}

  def loss_terms(self, users, items, training=False):
    """The hinge against one negative (column 1 of `items`), summed."""
    p = tf.gather(self.user_embeddings, users)[:, None, :]
    q = tf.gather(self.item_embeddings, items[:, :2])
    if self.negative_relation == "positive":
      r = self.relation(p[:, 0], q[:, 0])[:, None, :]  # the positive's, twice
    else:
      r = self.relation(p, q)
    d = relation_distance(p, q, r, self.distance)
    emb = losses.embedding_loss(d[:, 0], d[:, 1:], self.margin, self.n_items,
                                use_rank_weight=False)
    return {"embedding_loss": emb, "loss": emb}

  def score_items(self, users, item_chunk=None):
    """-D(u, i) of users [U] against every item: [U, n_items], in chunks."""
    return self.serve_items({"users": self.user_embeddings,
                             "items": self.item_embeddings}, users, item_chunk)

  def serve_items(self, tables, users, item_chunk=None):
    p = tf.gather(tables["users"], users)[:, None, :]

    def block(args):
      q = args[0][None]
      return -relation_distance(p, q, self.relation(p, q), self.distance)

    return map_item_chunks(block, (tf.convert_to_tensor(tables["items"]),),
                           self.n_items, item_chunk)

  def serve_pairs(self, tables, users, items):
    p = tf.gather(tables["users"], users)
    q = tf.gather(tables["items"], items)
    if items.shape.rank == 2:
      p = p[:, None, :]
    beta = self.relation.attention(p, q)
    return (-relation_distance(p, q, self.relation.relate(beta), self.distance),
            beta)

  def retrieval_space(self, tables):
    # The relation moves the user by r (||r|| bounded by the slices); plain
    # Euclid over P and Q is the cheap first stage, re-ranked with r.
    return "euclidean", tables["items"]

  def describe(self):
    out = super().describe()
    out.update(memory_slots=self.memory_slots,
               negative_relation=self.negative_relation, distance=self.distance)
    return out

  def get_config(self):
    config = self.base_config()
    config.update(memory_slots=self.memory_slots, margin=self.margin,
                  negative_relation=self.negative_relation,
                  clip_norm=self.clip_norm, distance=self.distance)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    return cls(dataset.n_users, dataset.n_items, embed_dim=config.embed_dim,
               memory_slots=config.memory_slots, margin=config.margin,
               negative_relation=config.negative_relation,
               clip_norm=config.clip_norm, distance=config.lrml_distance,
               seed=config.seed, name="lrml")

