"""MAML as a Keras 3 model with a custom train_step (docs/spec.md §2-3).

Faithful mode (the release): only the user table P and the item table Q
train; the fusion and attention networks keep their random initial weights,
dropout is inert, and the declared L2 on the attention kernels is not part of
the loss. Paper mode (docs/spec.md §8): the two networks train too, dropout is active
while training and the L2 counts.

Two deliberate shortcuts, both exact in real arithmetic and checked against
the plain computation in tests/test_model.py:
- in faithful mode the fusion output F is a constant, computed once (the
  release recomputed it every step);
- the attention's first layer is split into a user half and an item half
  (see `AlphaAttention`), so it costs one small matmul per user and per item
  instead of one per (user, item) pair.
"""

from __future__ import annotations


import keras
import numpy as np
import tensorflow as tf

from maml_tf.models import maml_layers
from maml_tf.models import maml_fastpath as fastpath
from maml_tf.models import metric_losses as losses
from maml_tf.models import base
from maml_tf.models.base import map_item_chunks
from maml_tf.models.layers import gather_rows

# The networks --mode=paper trains (both by default; --paper_trains picks).
PAPER_NETWORKS = ("fusion", "attention")
TERMS_ORDER = ("loss", "embedding_loss", "feature_loss", "cov_loss", "l2_loss")


def attentive_distance(a, p, q):
  """sum_k (a_k p_k - a_k q_k)^2; with a=None, the plain squared distance."""
  diff = p - q
  if a is not None:
    diff = a * diff
  return tf.reduce_sum(tf.square(diff), axis=-1)


@keras.saving.register_keras_serializable(package="maml_tf")
class MAML(base.RankingModel):
  """Users and items in one metric space, with per-pair attention.

  Call `set_item_features(x)` once after construction when the model has
  item features: it stores them, computes F and (like the release, after
  every variable is initialised) sets Q = F.

  The training data are `(users [B], items [B, 1 + W])` with the positive
  item in column 0 and the W sampled negatives after it.
  """

  NAME = "maml"
  BATCH_SUM_TERMS = ("embedding_loss",)
  # Hyper-parameter search space (scripts/tune.py): flag -> ("float", lo, hi,
  # "log"|"linear") | ("int", lo, hi) | ("choice", [values]), an optional
  # last {flag: value} dict limiting an entry to runs with those flags.
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "margin": ("float", 0.5, 2.5, "linear"),
      "feature_l2_reg": ("float", 0.0, 10.0, "linear"),
      "cov_loss_weight": ("float", 0.0, 10.0, "linear"),
      "num_neg": ("int", 2, 10),
      "embed_dim": ("choice", [32, 64, 128]),
      "attention_l2": ("float", 1e-2, 1e3, "log", {"mode": "paper"}),
      "dropout": ("float", 0.0, 0.5, "linear", {"mode": "paper"}),
      "network_lr_scale": ("float", 1e-2, 1.0, "log", {"mode": "paper"}),
  }

  def __init__(self, n_users, n_items, feature_dim=0, embed_dim=64,
               hidden_dim=256, attention="scaled", mode="faithful",
               margin=1.6, feature_l2_reg=5.0, use_rank_weight=True,
               use_cov_loss=True, cov_loss_weight=5.0, dropout=0.2,
               attention_dropout=0.05, attention_l2=100.0,
               feature_scaling=1.0, clip_norm=1.0, paper_trains=PAPER_NETWORKS,
               seed=None, **kwargs):
    super().__init__(n_users, n_items, embed_dim=embed_dim, clip_norm=clip_norm,
                     seed=seed, **kwargs)
    if mode not in ("faithful", "paper"):
      raise ValueError(f"`mode` must be faithful or paper. Received: mode={mode!r}")
    if attention not in ("scaled", "softmax", "none"):
      raise ValueError("`attention` must be scaled, softmax or none. "
                       f"Received: attention={attention!r}")
    paper_trains = tuple(paper_trains)
    if not paper_trains or set(paper_trains) - set(PAPER_NETWORKS):
      raise ValueError("`paper_trains` must name one or both of fusion, "
                       f"attention. Received: {paper_trains!r}")
    self.paper_trains = tuple(n for n in PAPER_NETWORKS if n in paper_trains)
    self.feature_dim = int(feature_dim)
    self.hidden_dim, self.attention_kind, self.mode = int(hidden_dim), attention, mode
    self.margin, self.feature_l2_reg = float(margin), float(feature_l2_reg)
    self.use_rank_weight, self.use_cov_loss = bool(use_rank_weight), bool(use_cov_loss)
    self.cov_loss_weight, self.dropout = float(cov_loss_weight), float(dropout)
    self.attention_dropout, self.attention_l2 = float(attention_dropout), float(attention_l2)
    self.feature_scaling = float(feature_scaling)
    paper = mode == "paper"
    k = self.embed_dim
    self.fusion = None
    if self.feature_dim:
      self.item_features = self.add_weight(
          shape=(self.n_items, self.feature_dim), initializer="zeros",
          trainable=False, name="item_features")
      self.fused_features = self.add_weight(
          shape=(self.n_items, k), initializer="zeros", trainable=False,
          name="fused_features")
      self.fusion = maml_layers.FeatureFusion(
          self.hidden_dim, k, dropout=self.dropout, scaling=self.feature_scaling,
          clip_norm=self.clip_norm, seed=seed, name="fusion")
      self.fusion.build((None, self.feature_dim))
      self.fusion.trainable = paper and "fusion" in self.paper_trains

    self.attention = None
    if attention != "none":
      self.attention = maml_layers.AlphaAttention(
          k, float(k) if attention == "scaled" else 1.0,
          dropout=self.attention_dropout, l2=self.attention_l2,
          use_features=bool(self.feature_dim), seed=seed, name="attention")
      self.attention.build()
      self.attention.trainable = paper and "attention" in self.paper_trains

    # The hand-derived gradient of fastpath.py (faithful mode only); False
    # gives the plain autodiff computation, for tests and benchmarks.
    self.use_fastpath = True
    self.finish_init()

  # ---------------------------------------------------------------- setup
  @property
  def paper_mode(self):
    return self.mode == "paper"

  @property
  def explains(self):
    return self.attention is not None

  @property
  def score_width(self):
    return 5 * self.embed_dim if self.attention is not None else self.embed_dim

  @property
  def compiles_whole_step(self):
    # The fast path XLA-compiles its own kernels; around them the step's two
    # per-pair matmuls run through TensorFlow's oneDNN kernels, faster here
    # than XLA's (docs/speed.md, "Targets: met and missed").
    return not (self.use_fastpath and not self.paper_mode and
                self.attention is not None)

  @property
  def pair_width(self):
    # The attention's [5K] hidden layer and its [K] head, per pair.
    return self.score_width if self.attention is not None else 0

  def score_pairs(self, users, items, explain=False):
    """Scores -d(u, i) of users [B] against their own items [B, C]; with
    `explain`, (scores [B], attention [B, K]) of pairs with items [B]."""
    if explain:
      return self.serve_pairs(self.serving_tables(), users, items)
    return -self.pair_distances(users, items, self.item_fusion(False))

  @property
  def loss_names(self):
    names = ["loss", "embedding_loss"]
    if self.feature_dim:
      names.append("feature_loss")
    if self.use_cov_loss:
      names.append("cov_loss")
    if self.paper_mode and self.attention is not None and self.attention.trainable:
      names.append("l2_loss")
    return names

  @property
  def metrics(self):
    return list(self.trackers.values())

  def set_item_features(self, features, init_items=True):
    """Stores the [n_items, d] features, computes F, and sets Q = F."""
    features = np.asarray(features, np.float32)
    if features.shape != (self.n_items, self.feature_dim):
      raise ValueError(f"`features` must have shape {(self.n_items, self.feature_dim)}. "
                       f"Received: shape={features.shape}")
    self.item_features.assign(features)
    self.refresh_fused_features()
    if init_items:
      self.item_embeddings.assign(self.fused_features)

  def after_restore(self):
    self.refresh_fused_features()

  def refresh_fused_features(self):
    """Recomputes the stored F (needed after the fusion weights change)."""
    if self.fusion is not None:
      self.fused_features.assign(self.fusion(self.item_features, training=False))

  # ---------------------------------------------------------------- forward
  def item_fusion(self, training=False):
    """F for all items: recomputed while the fusion network trains (paper
    mode), the stored constant else."""
    if self.fusion is None:
      return None
    if self.paper_mode and self.fusion.trainable:
      return self.fusion(self.item_features, training=training)
    return tf.convert_to_tensor(self.fused_features)

  def item_side(self, fused, training=False):
    """The attention's item half for the whole catalogue: (proj, sqnorm)."""
    return self.attention.item_part(tf.convert_to_tensor(self.item_embeddings), fused)

  def _hardest_negative_path(self, items):
    """Whether `loss_terms` back-propagates through the hardest pairs only.

    The fast path only: faithful mode with attention (paper mode trains the
    attention, through autodiff), and more than one negative (else there is
    nothing to skip).
    """
    return (self.use_fastpath and not self.paper_mode and
            self.attention is not None and items.shape[1] is not None and
            items.shape[1] > 2)

  def _halves(self, users, items, fused, training, as_table=False):
    """(p [B, 1, K], the items' embeddings, the attention's user half, its
    item half, ids) for users [B] and items [B, N].

    With ids [B, N], the item half and the items' embeddings are tables
    [n, ...] that ids index: the whole catalogue, projected once, when it has
    fewer items than the batch has pairs, or with `as_table` the pairs' own
    rows; else (ids None) they are per pair [B, N, ...]. The embeddings are
    gathered with dense gradients (`layers.gather_rows`)."""
    p = gather_rows(self.user_embeddings, users)
    user = self.attention.user_part(p)
    user = (user[0][:, None, :], user[1][:, None])
    n_pairs = items.shape[0] * items.shape[1] if None not in items.shape else None
    if n_pairs is not None and self.n_items <= n_pairs:
      # Fewer items than pairs: project the whole catalogue once.
      return (p[:, None, :], tf.convert_to_tensor(self.item_embeddings), user,
              self.item_side(fused, training), items)
    flat = tf.reshape(items, [-1])
    q = gather_rows(self.item_embeddings, flat)
    f = None if fused is None else tf.gather(fused, flat)
    proj, sq = self.attention.item_part(q, f)
    shape = tf.shape(items)
    if as_table:
      return (p[:, None, :], q, user, (proj, sq),
              tf.reshape(tf.range(tf.size(items)), shape))
    item = (tf.reshape(proj, tf.concat([shape, [-1]], 0)), tf.reshape(sq, shape))
    return (p[:, None, :], tf.reshape(q, tf.concat([shape, [-1]], 0)), user,
            item, None)

  def pair_distances(self, users, items, fused=None, training=False):
    """d(u, i) for users [B] and items [B, N]; returns [B, N]."""
    if self.attention is None:
      p = tf.gather(self.user_embeddings, users)
      return attentive_distance(None, p[:, None, :],
                                tf.gather(self.item_embeddings, items))
    p, q, user, item, ids = self._halves(users, items, fused, training)
    att = self.attention
    if self.paper_mode or not self.use_fastpath:  # plain autodiff
      if ids is not None:
        item = (tf.gather(item[0], ids), tf.gather(item[1], ids))
        q = tf.gather(q, ids)
      a = att.combine(user, item, training=training)
      return attentive_distance(a, p, q)
    return fastpath.attention_distance(
        user, item, p, q, att.dense1.bias, att.dense2.kernel, att.dense2.bias,
        att.alpha, item_ids=ids)

  def plain_pair_distances(self, users, items, training=False):
    """The same as `pair_distances` through the unsplit layers (for tests)."""
    fused = self.item_fusion(training)
    p = tf.gather(self.user_embeddings, users)
    q = tf.gather(self.item_embeddings, items)
    p = tf.broadcast_to(p[:, None, :], tf.shape(q))
    if self.attention is None:
      return attentive_distance(None, p, q)
    f = None if fused is None else tf.gather(fused, items)
    flat = lambda t: None if t is None else tf.reshape(t, [-1, self.embed_dim])
    a = self.attention(flat(p), flat(q), flat(f), training=training)
    return tf.reshape(attentive_distance(a, flat(p), flat(q)), tf.shape(items))

  def loss_terms(self, users, items, training=False):
    """Every loss term of one step (docs/spec.md §3) as a dict; "loss" is the total.

    Dropout is active only in paper mode (faithful mode's is inert)."""
    training = bool(training) and self.paper_mode
    fused = self.item_fusion(training)
    if self._hardest_negative_path(items):
      # Gradient flows only through the positive and the closest negative:
      # every pair is scored once, and the backward pass runs for those two
      # (2 pairs a row instead of 1 + W).
      p, q, user, item, ids = self._halves(users, items, fused, training,
                                           as_table=True)
      att = self.attention
      d2, d = fastpath.hardest_attention_distance(
          user, item, p, q, att.dense1.bias, att.dense2.kernel,
          att.dense2.bias, att.alpha, ids)
      emb = losses.embedding_loss_hardest(d2[:, 0], d2[:, 1], d, self.margin,
                                          self.n_items, self.use_rank_weight)
    else:
      d = self.pair_distances(users, items, fused, training)
      emb = losses.embedding_loss(d[:, 0], d[:, 1:], self.margin, self.n_items,
                                  self.use_rank_weight)
    terms = {"embedding_loss": emb}
    if fused is not None:
      terms["feature_loss"] = losses.feature_loss(
          self.item_embeddings, fused, self.feature_l2_reg)
    if self.use_cov_loss:
      terms["cov_loss"] = losses.covariance_loss(
          self.item_embeddings, self.user_embeddings, self.cov_loss_weight)
    if self.paper_mode and self.attention is not None and self.attention.trainable:
      terms["l2_loss"] = self.attention.regularization_loss()
    terms["loss"] = tf.add_n(list(terms.values()))
    return terms

  # ---------------------------------------------------------------- scoring
  def score_items(self, users, item_chunk=None):
    """Scores of users [U] against every item: [U, n_items].

    The catalogue is processed in chunks of `item_chunk` items so that
    memory stays at U x item_chunk x 5K floats, whatever the catalogue size.
    """
    p = tf.gather(self.user_embeddings, users)
    q_all = tf.convert_to_tensor(self.item_embeddings)
    if self.attention is None:
      return -plain_sq_distances(p, q_all)
    user = self.attention.user_part(p)
    user = (user[0][:, None, :], user[1][:, None])
    proj, sq = self.item_side(self.item_fusion(False))
    att = self.attention

    def block(args):
      q, pr, s = args
      return -fastpath.attention_distance_nograd(
          user, (pr[None], s[None]), p[:, None, :], q[None], att.dense1.bias,
          att.dense2.kernel, att.dense2.bias, att.alpha)

    return map_item_chunks(block, (q_all, proj, sq), self.n_items, item_chunk)

  # ---------------------------------------------------------------- serving
  def serving_tables(self):
    tables = super().serving_tables()
    if self.attention is not None:
      proj, sq = self.item_side(self.item_fusion(False))
      tables.update(item_attention_proj=proj, item_attention_sqnorm=sq)
    return tables

  def _serve_attention(self, tables, p, items):
    user = self.attention.user_part(p)
    if items.shape.rank == 2:
      user = (user[0][:, None, :], user[1][:, None])
    item = (tf.gather(tables["item_attention_proj"], items),
            tf.gather(tables["item_attention_sqnorm"], items))
    return self.attention.combine(user, item)

  def serve_pairs(self, tables, users, items):
    """(-d(u, i), the pair's attention [.., K]; ones without attention)."""
    p = tf.gather(tables["users"], users)
    q = tf.gather(tables["items"], items)
    if items.shape.rank == 2:
      p_b = p[:, None, :]
    else:
      p_b = p
    if self.attention is None:
      d = attentive_distance(None, p_b, q)
      return -d, tf.ones(tf.concat([tf.shape(d), [self.embed_dim]], 0))
    a = self._serve_attention(tables, p, items)
    return -attentive_distance(a, p_b, q), a

  def serve_items(self, tables, users, item_chunk=None):
    p = tf.gather(tables["users"], users)
    q_all = tables["items"]
    if self.attention is None:
      return -plain_sq_distances(p, q_all)
    att = self.attention
    proj, sq = att.user_part(p)
    user = (proj[:, None, :], sq[:, None])

    def block(args):
      q, iproj, isq = args
      a = att.combine(user, (iproj[None], isq[None]))
      return -attentive_distance(a, p[:, None, :], q[None])

    return map_item_chunks(
        block, (q_all, tables["item_attention_proj"], tables["item_attention_sqnorm"]),
        self.n_items, item_chunk)

  def retrieval_space(self, tables):
    # With alpha = K a uniform attention is all ones: the attentive distance
    # is then the plain one, so plain Euclid ranks like uniform attention.
    return "euclidean", tables["items"]

  def projector_tensors(self):
    tensors = super().projector_tensors()
    if self.fusion is not None:
      tensors["fused_features"] = self.fused_features
    return tensors

  def describe(self):
    out = super().describe()
    out.update(attention=self.attention_kind, mode=self.mode)
    return out

  def get_config(self):
    return {
        "n_users": self.n_users, "n_items": self.n_items,
        "feature_dim": self.feature_dim, "embed_dim": self.embed_dim,
        "hidden_dim": self.hidden_dim, "attention": self.attention_kind,
        "mode": self.mode, "margin": self.margin,
        "feature_l2_reg": self.feature_l2_reg,
        "use_rank_weight": self.use_rank_weight,
        "use_cov_loss": self.use_cov_loss,
        "cov_loss_weight": self.cov_loss_weight, "dropout": self.dropout,
        "attention_dropout": self.attention_dropout,
        "attention_l2": self.attention_l2,
        "feature_scaling": self.feature_scaling, "clip_norm": self.clip_norm,
        "paper_trains": list(self.paper_trains),
        "seed": self.seed, "name": self.name,
    }

  @classmethod
  def from_run_config(cls, config, dataset):
    """The model of a run: `config` a `maml_tf.config.Config`, `dataset` its
    Dataset (the item features are set, and Q = F as the release does)."""
    features = dataset.feature_matrix()
    model = cls(
        dataset.n_users, dataset.n_items,
        feature_dim=0 if features is None else features.shape[1],
        embed_dim=config.embed_dim, hidden_dim=config.hidden_layer_dim,
        attention=config.attention, mode=config.mode, margin=config.margin,
        feature_l2_reg=config.feature_l2_reg,
        use_rank_weight=config.use_rank_weight,
        use_cov_loss=config.use_cov_loss, cov_loss_weight=config.cov_loss_weight,
        dropout=config.dropout, attention_dropout=config.attention_dropout,
        attention_l2=config.attention_l2, feature_scaling=config.feature_scaling,
        clip_norm=config.clip_norm, paper_trains=config.paper_trains,
        seed=config.seed, name="maml")
    if features is not None:
      model.set_item_features(features)
    return model


def plain_sq_distances(p, q):
  """||p_u - q_i||^2 for p [U, K], q [n, K] -> [U, n] (one matmul)."""
  sq = tf.reduce_sum(tf.square(p), -1)[:, None] + tf.reduce_sum(tf.square(q), -1)[None]
  return sq - 2.0 * tf.matmul(p, q, transpose_b=True)
