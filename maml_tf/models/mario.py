"""MARIO (Kim, Lee, Shin, Kim; CIKM 2022): modality-aware attention and
modality-preserving decoders over a collaborative-filtering backbone, as
the authors' talk describes it (no code was released with it). Every
choice the talk leaves open is marked OURS below.

Modalities M = {IN} + the content modalities (`--modalities`, e.g. text,
meta), in that order: column 0 of the explanation is "interaction".

- Backbone (`--backbone`): the user embedding u_i and the item's
  interaction embedding e_j^IN. `mf`: the plain tables P, Q. `lightgcn`:
  LightGCN's propagated tables (`--gcn_layers` layers over the normalised
  train graph; `lightgcn.propagate`, the same code as `--model=lightgcn`).
  `ngcf`: NGCF's final tables (`ngcf.BiInteractionPropagation`, the same
  layer as `--model=ngcf`, built from `--ngcf_layers`,
  `--ngcf_node_dropout`, `--ngcf_message_dropout`; the dropouts act in
  training only; the ego tables Xavier-uniform as NGCF's), whose rows are
  D = d + sum(layer sizes) wide (E^0 and each layer's l2-normalised output
  concatenated).
  The interaction width D (d for mf and lightgcn) is the width of the whole
  model: encoders, attention, fc, decoders' inputs and the scoring cache
  are sized to it. OURS, and why: r_ij = u_i . e_ij needs u_i and every
  e_j^m in one space, and u_i is the backbone's user row; sizing the content
  embeddings to D keeps the backbone's tables as they are (the ngcf
  backbone's (u, e^IN) ARE NGCF's tables, so MARIO's mean fusion over IN
  alone would score as NGCF), where a learned projection D -> d would put a
  map between NGCF's tables and the score that the other backbones do not
  have, and change what NGCF's own L2-normalised layers mean.
- Feature scale (`feature_norm`, OURS; the talk says nothing of it, and no
  authors' code was released): each content modality's features are
  rescaled once, at `set_item_features`, before anything reads them:
    scale (default): x^m / s_m, s_m the mean row L2 norm of x^m over all
      items, so every modality's rows have mean norm 1 and the model is
      exactly invariant to a modality's global scale (units);
    row: every row x_j^m / ||x_j^m|| (also drops the norms' spread within
      a modality; a zero row stays zero);
    none: the features as given.
  Why: the encoders are linear with Glorot kernels, so ||e^m|| at init is
  ~0.8 ||x^m|| (d_m = 2d) against ~0.2-0.8 for e^IN; a modality whose rows
  have norm 40 gives encoder outputs 10-100x the interaction embedding's,
  which then swamp u . e_ij and the attention's tanh (measured on
  synthetic data with one noisy modality x10, LightGCN backbone, 600
  steps: Recall@20 0.271 -> 0.128 and that modality's attention weight
  0.004 -> 0.41 without it; the same run with it: identical to x1).
  The decoders reconstruct the rescaled features (L_MP is relative anyway).
- C1, encoders: e_j^m = W_m x_j^m + b_m, one linear Dense to D per content
  modality over its fixed pre-trained features (OURS: linear, as the talk
  allows; a small MLP would be the other choice).
- C2, modality-aware attention (OURS, the form the spec calls usual): one
  network shared by all modalities,
    a_ij^m = softmax_m( v . tanh(W_u u_i + W_e e_j^m + b) ),
  i.e. a one-hidden-layer MLP (width `--mario_hidden`) on [u_i; e_j^m] with
  its first layer split as W [u; e] = W_u u + W_e e. Then
  e_ij = sum_m a_ij^m e_j^m and r_ij = u_i . e_ij.
  Variants (`--mario_fusion`): `mean` (a = 1/|M|), `max` (e_ij the
  element-wise max over the modality embeddings), `fc` (e_ij = a Dense to D
  on the concatenated [e^IN; e^m...]); these three are user-independent.
- C3, decoders: x~_j^m = V_m e_j^m + c_m, one linear Dense back to d_m per
  content modality (OURS: linear).
- C4, loss = bpr_loss + l2_loss + mp_loss:
    bpr_loss = mean over the batch of -ln sigmoid(r_ij - r_ip), one sampled
      negative p per positive (OURS: a mean, not the talk's sum, so the
      learning rate does not depend on the batch size);
    l2_loss = `--l2_reg` * sum (||P_i||^2 + ||Q_j||^2 + ||Q_p||^2) / (2 B)
      on the backbone's ego rows, as `mf`, `lightgcn` and `ngcf` (the
      encoders, decoders, attention and NGCF's layer weights are not
      regularised: OURS);
    mp_loss = `--mp_weight` (mu) * sum over content modalities m of the
      RELATIVE L1 error mean|x~_j^m(f) - x_j^m(f)| / mean|x^m|: the mean
      absolute error over the batch's items (the positive and the negative
      of every triple, with repeats) and the features f, divided by the mean
      absolute feature value of the modality over all items (a constant,
      `feature_scales`, of the rescaled features). OURS: the batch's items, not all items, so a step
      costs O(B); means, so mu does not scale with d_m or B; relative, so
      a decoder that outputs zeros scores 1 whatever the features' scale
      (on Office mean|x| is 0.022 for the Doc2Vec text and 0.005 for the
      one-hot meta: a plain mean would make the term vanish). Default
      mu = 0.1: OURS (the talk gives no value), to be tuned (SEARCH_SPACE);
      mu = 0 is the ablation.

Full-ranking scoring scales: the attention is never evaluated as a
[U, I, M, 2d] tensor. `prepare_scoring()` (once per evaluation, eagerly;
`lightgcn.ScoringCache` recomputes if a train step made the cache stale)
stores the users' backbone embeddings, every item's modality embeddings
[I, M, d] and their half of the attention's first layer W_e e [I, M, h];
`score_items` then computes, per chunk of items (`base.map_item_chunks`),
tanh(W_u u + b + W_e e) . v and u . e_j^m, [U, chunk, M] each, and the
softmax-weighted sum. The other fusions give a user-independent item
vector, scored with one matmul.

The "final" item embedding (`item_representation`, used to measure modality
preservation) is OURS: the fusion's user-independent item vector; for the
attention, the uniform mean over M of the modality embeddings (what the
attention gives a user without preference). It is also the item side of
the export's first retrieval stage (dot product).

No content modality is an error: MARIO would be its backbone alone (use
`--model=mf`, `--model=lightgcn` or `--model=ngcf`).
"""

from __future__ import annotations

from typing import Dict, Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.errors import UsageError
from maml_tf.models import base
from maml_tf.models import lightgcn
from maml_tf.models import mf
from maml_tf.models import ngcf
from maml_tf.models.base import map_item_chunks
from maml_tf.models.mario_layers import (FEATURE_NORMS, ModalityAttention,
                                         dense_layer, normalize_features)

FUSIONS = ("attention", "mean", "max", "fc")
BACKBONES = ("mf", "lightgcn", "ngcf")
GRAPH_BACKBONES = ("lightgcn", "ngcf")
INTERACTION = "interaction"


def _check_arguments(modalities, feature_dims, backbone, fusion, mp_weight,
                     feature_norm):
  """MARIO's arguments checked (ValueError naming the first broken one);
  returns (modalities, feature_dims) as tuples."""
  modalities, feature_dims = tuple(modalities), tuple(int(d) for d in feature_dims)
  if not modalities:
    raise ValueError(
        "`modalities` must name at least one content modality (without one "
        "MARIO is its backbone alone: use the mf, lightgcn or ngcf model). "
        "Received: modalities=()")
  if INTERACTION in modalities or len(set(modalities)) != len(modalities):
    raise ValueError("`modalities` must be distinct names other than "
                     f"{INTERACTION!r}. Received: modalities={modalities}")
  if len(feature_dims) != len(modalities) or min(feature_dims) < 1:
    raise ValueError("`feature_dims` must give one size >= 1 per modality. "
                     f"Received: feature_dims={feature_dims}")
  if backbone not in BACKBONES:
    raise ValueError(f"`backbone` must be one of {', '.join(BACKBONES)}. "
                     f"Received: backbone={backbone!r}")
  if fusion not in FUSIONS:
    raise ValueError(f"`fusion` must be one of {', '.join(FUSIONS)}. "
                     f"Received: fusion={fusion!r}")
  if not mp_weight >= 0:
    raise ValueError(f"`mp_weight` must be >= 0. Received: mp_weight={mp_weight!r}")
  if feature_norm not in FEATURE_NORMS:
    raise ValueError(f"`feature_norm` must be one of {', '.join(FEATURE_NORMS)}. "
                     f"Received: feature_norm={feature_norm!r}")
  return modalities, feature_dims


@keras.saving.register_keras_serializable(package="maml_tf")
class MARIO(lightgcn.ScoringCache, base.RankingModel):
  """MARIO over an mf, lightgcn or ngcf backbone; see the module docstring.

  Call `set_item_features({modality: [n_items, d_m]})` after construction;
  with the lightgcn and ngcf backbones the train edges come as
  `train_pairs` (or `set_train_edges`).
  """

  NAME = "mario"
  BATCH_SUM_TERMS = ()
  explanation_name = "modality_weights"
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "l2_reg": ("float", 1e-6, 1e-2, "log"),
      "mp_weight": ("float", 1e-3, 10.0, "log"),
      "embed_dim": ("choice", [32, 64, 128]),
      # The attention's hidden width: the other fusions have no hidden layer.
      "mario_hidden": ("choice", [16, 32, 64, 128],
                       {"mario_fusion": "attention"}),
      # Only the lightgcn backbone propagates --gcn_layers times (mf has no
      # graph, ngcf reads --ngcf_layers).
      "gcn_layers": ("int", 1, 4, {"backbone": "lightgcn"}),
  }

  def __init__(self, n_users, n_items, modalities: Sequence[str] = (),
               feature_dims: Sequence[int] = (), backbone="mf", gcn_layers=3,
               train_pairs=None, fusion="attention", embed_dim=64,
               hidden_dim=64, mp_weight=0.1, l2_reg=1e-4,
               init_stddev=mf.INIT_STDDEV, ngcf_layers: Sequence[int] = (64, 64, 64),
               ngcf_node_dropout=0.1, ngcf_message_dropout=0.1,
               feature_norm="scale", seed=None, **kwargs):
    modalities, feature_dims = _check_arguments(
        modalities, feature_dims, backbone, fusion, mp_weight, feature_norm)
    gcn_layers = lightgcn.check_layers(gcn_layers)
    ngcf_layers = ngcf.check_layer_sizes(ngcf_layers)
    ngcf_node_dropout = ngcf.check_rate("ngcf_node_dropout", ngcf_node_dropout)
    ngcf_message_dropout = ngcf.check_rate("ngcf_message_dropout", ngcf_message_dropout)
    super().__init__(n_users, n_items, embed_dim=embed_dim, clip_norm=None,
                     init_stddev=init_stddev, seed=seed, **kwargs)
    self.modalities, self.feature_dims = modalities, feature_dims
    self.backbone, self.gcn_layers, self.fusion = backbone, gcn_layers, fusion
    self.hidden_dim = int(hidden_dim)
    self.mp_weight, self.l2_reg = float(mp_weight), mf.check_l2_reg(l2_reg)
    self.init_stddev = float(init_stddev)
    self.ngcf_layers = ngcf_layers
    self.ngcf_node_dropout, self.ngcf_message_dropout = ngcf_node_dropout, ngcf_message_dropout
    self.feature_norm = feature_norm
    self.propagation = None
    if backbone == "ngcf":
      self._build_ngcf(seed)
    # D: the interaction embedding's width, the width of the whole model.
    d = self.embed_dim if self.propagation is None else self.propagation.output_dim
    self.width, n_mod = d, 1 + len(modalities)
    self._build_networks(d, n_mod, seed)
    self.init_scoring_cache()
    self.adjacency = None
    if train_pairs is not None:
      self.set_train_edges(train_pairs)
    self.finish_init()

  def _build_ngcf(self, seed):
    """The ngcf backbone: its propagation layer and NGCF's own table
    initialisation."""
    # NGCF's own initialisation (its tables Xavier-uniform, its layer
    # seeded as NGCF seeds it), so MARIO(seed=s) starts from NGCF(seed=s).
    base_seed = None if seed is None else int(seed)
    self.user_embeddings.assign(ngcf.xavier_table(self.n_users, self.embed_dim,
                                                  base_seed))
    self.item_embeddings.assign(ngcf.xavier_table(
        self.n_items, self.embed_dim, None if seed is None else base_seed + 7))
    self.propagation = ngcf.BiInteractionPropagation(
        self.embed_dim, self.ngcf_layers, self.ngcf_node_dropout, self.ngcf_message_dropout,
        seed=None if seed is None else base_seed + 13, name="propagation")
    self.propagation.build()

  def _build_networks(self, d, n_mod, seed):
    """The feature tables, encoders, decoders, fusion and the scoring cache's
    tables, all of width d (created in this order: checkpoint names)."""
    for m, dm in zip(self.modalities, self.feature_dims):
      setattr(self, f"features_{m}", self.add_weight(
          shape=(self.n_items, dm), initializer="zeros", trainable=False,
          name=f"features_{m}"))
    # mean |x^m| over all items of each content modality (mp_loss's unit).
    self.feature_scales = self.add_weight(
        shape=(len(self.modalities),), initializer="ones", trainable=False,
        name="feature_scales")
    self.encoders = {m: dense_layer(d, f"encoder_{m}", seed) for m in self.modalities}
    self.decoders = {m: dense_layer(dm, f"decoder_{m}", seed)
                     for m, dm in zip(self.modalities, self.feature_dims)}
    for m, dm in zip(self.modalities, self.feature_dims):
      self.encoders[m].build((None, dm))
      self.decoders[m].build((None, d))
    self.attention = None
    self.fc = None
    if self.fusion == "attention":
      self.attention = ModalityAttention(d, self.hidden_dim, seed=seed,
                                         name="modality_attention")
      self.attention.build()
    elif self.fusion == "fc":
      self.fc = dense_layer(d, "fusion_fc", seed)
      self.fc.build((None, n_mod * d))
    # What `score_items` reads, refreshed by prepare_scoring().
    self.scoring_users = self.add_weight(
        shape=(self.n_users, d), initializer="zeros", trainable=False,
        name="scoring_users")
    self.scoring_modalities = self.add_weight(
        shape=(self.n_items, n_mod, d), initializer="zeros", trainable=False,
        name="scoring_modalities")
    self.scoring_vectors = self.add_weight(
        shape=(self.n_items, d), initializer="zeros", trainable=False,
        name="scoring_vectors")
    self.scoring_attention = None
    if self.attention is not None:
      self.scoring_attention = self.add_weight(
          shape=(self.n_items, n_mod, self.hidden_dim), initializer="zeros",
          trainable=False, name="scoring_attention")

  # ------------------------------------------------------------ setup
  @property
  def n_modalities(self):
    return 1 + len(self.modalities)

  @property
  def loss_names(self):
    return ["loss", "bpr_loss", "l2_loss", "mp_loss"]

  @property
  def explains(self):
    return self.fusion != "fc"

  @property
  def explanation_labels(self):
    return (INTERACTION,) + self.modalities

  @property
  def score_width(self):
    if self.attention is None:
      return self.width
    return self.n_modalities * (self.hidden_dim + 2)

  @property
  def pair_width(self):
    # The modality attention's hidden layer, logit and score, per pair.
    return 0 if self.attention is None else self.score_width

  def feature_table(self, modality):
    return getattr(self, f"features_{modality}")

  def set_item_features(self, features: Dict[str, np.ndarray]):
    """Stores the fixed [n_items, d_m] features of every content modality,
    rescaled as `feature_norm` says."""
    for m, dm in zip(self.modalities, self.feature_dims):
      if m not in features:
        raise ValueError(f"`features` must have the modality {m!r}. Received: "
                         f"{sorted(features)}")
      x = np.asarray(features[m], np.float32)
      if x.shape != (self.n_items, dm):
        raise ValueError(f"`features[{m!r}]` must have shape {(self.n_items, dm)}."
                         f" Received: shape={x.shape}")
      self.feature_table(m).assign(normalize_features(x, self.feature_norm))
    scales = [float(np.mean(np.abs(np.asarray(self.feature_table(m), np.float64))))
              for m in self.modalities]
    # An all-zero modality keeps unit scale (its error is then absolute).
    self.feature_scales.assign(np.array([s if s > 0 else 1.0 for s in scales],
                                        np.float32))
    self.after_restore()

  def set_train_edges(self, train_pairs):
    """The train graph of the lightgcn and ngcf backbones (ignored with mf)."""
    if self.backbone in GRAPH_BACKBONES:
      self.adjacency = lightgcn.normalized_adjacency(train_pairs, self.n_users,
                                                     self.n_items)

  # ------------------------------------------------------------ forward
  def backbone_tables(self, training=False):
    """(u [n_users, D], e^IN [n_items, D]) from the backbone; NGCF's
    dropouts only if training."""
    users = tf.convert_to_tensor(self.user_embeddings)
    items = tf.convert_to_tensor(self.item_embeddings)
    if self.backbone == "mf":
      return users, items
    if self.adjacency is None:
      raise ValueError(f"`train_pairs` must be given with backbone={self.backbone}: "
                       "call set_train_edges(pairs). Received: train_pairs=None")
    if self.backbone == "lightgcn":
      return lightgcn.propagate(self.adjacency, users, items, self.gcn_layers)
    final = self.propagation.propagate(self.adjacency, tf.concat([users, items], 0),
                                       training=training)
    return final[:self.n_users], final[self.n_users:]

  def encode(self, modality, item_ids):
    """e^m [..., d] of items of any shape."""
    x = tf.gather(tf.convert_to_tensor(self.feature_table(modality)), item_ids)
    return self.encoders[modality](x)

  def modality_embeddings(self, item_ids, interaction_items):
    """[..., M, d]: e^IN then each content modality's e^m."""
    rows = [tf.gather(interaction_items, item_ids)]
    rows += [self.encode(m, item_ids) for m in self.modalities]
    return tf.stack(rows, axis=-2)

  def fuse(self, u, e):
    """(e_ij [..., d], weights [..., M] or None) for users u [..., d]
    broadcasting against the modality embeddings e [..., M, d]."""
    if self.fusion == "attention":
      a = self.attention(u, e)
      return tf.reduce_sum(a[..., None] * e, -2), a
    if self.fusion == "mean":
      return tf.reduce_mean(e, -2), self._uniform(e)
    if self.fusion == "max":
      return tf.reduce_max(e, -2), self._max_shares(e)
    flat = tf.reshape(e, tf.concat([tf.shape(e)[:-2], [-1]], 0))
    return self.fc(tf.ensure_shape(flat, e.shape[:-2] + [self.n_modalities *
                                                          self.width])), None

  def _uniform(self, e):
    return tf.fill(tf.shape(e)[:-1], 1.0 / self.n_modalities)

  def _max_shares(self, e):
    """Share of the D dimensions whose max comes from each modality."""
    winner = tf.argmax(e, axis=-2, output_type=tf.int32)  # [..., d]
    return tf.reduce_mean(tf.one_hot(winner, self.n_modalities), -2)

  def item_vectors(self, e_all):
    """The user-independent item vector [n, d] of the fusion: mean / max /
    fc; for the attention, the uniform mean over the modalities."""
    if self.fusion in ("attention", "mean"):
      return tf.reduce_mean(e_all, -2)
    return self.fuse(None, e_all)[0]

  def mp_term(self, item_ids, e):
    """sum over content modalities of mean |Dec_m(e^m) - x^m| / mean |x^m|,
    the mean over the given items [..] (their modality embeddings
    e [.., M, d]) and the features."""
    total = []
    for k, m in enumerate(self.modalities):
      x = tf.gather(tf.convert_to_tensor(self.feature_table(m)), item_ids)
      error = tf.reduce_mean(tf.abs(self.decoders[m](e[..., 1 + k, :]) - x))
      total.append(error / self.feature_scales[k])
    return tf.add_n(total)

  def loss_terms(self, users, items, training=False):
    users_t, interaction = self.backbone_tables(training=training)
    u = tf.gather(users_t, users)
    ids = items[:, :2]
    e = self.modality_embeddings(ids, interaction)  # [B, 2, M, d]
    fused, _ = self.fuse(u[:, None, :], e)
    r = tf.reduce_sum(u[:, None, :] * fused, -1)
    bpr = mf.bpr_loss(r[:, 0], r[:, 1])
    l2 = self.l2_reg * mf.batch_l2(tf.gather(self.user_embeddings, users),
                                   tf.gather(self.item_embeddings, ids[:, 0]),
                                   tf.gather(self.item_embeddings, ids[:, 1]))
    mp = (self.mp_weight * self.mp_term(ids, e) if self.mp_weight > 0
          else tf.constant(0.0))
    return {"loss": bpr + l2 + mp, "bpr_loss": bpr, "l2_loss": l2, "mp_loss": mp}

  # ------------------------------------------------------------ scoring
  def serving_tables(self):
    users, interaction = self.backbone_tables()
    e_all = self.modality_embeddings(tf.range(self.n_items), interaction)
    tables = {"users": users, "item_modalities": e_all,
              "item_vectors": self.item_vectors(e_all)}
    if self.attention is not None:
      tables["item_attention"] = self.attention.item_part(e_all)
    return tables

  def _scoring_variables(self):
    variables = {"users": self.scoring_users,
                 "item_modalities": self.scoring_modalities,
                 "item_vectors": self.scoring_vectors}
    if self.scoring_attention is not None:
      variables["item_attention"] = self.scoring_attention
    return variables

  def prepare_scoring(self):
    self.store_scoring(self._scoring_variables(), self.serving_tables())

  def after_restore(self):
    if self.backbone not in GRAPH_BACKBONES or self.adjacency is not None:
      self.prepare_scoring()

  def item_representation(self):
    return self.serving_tables()["item_vectors"]

  def score_items(self, users, item_chunk=None):
    return self.cached_scoring(
        self._scoring_variables(), self.serving_tables,
        lambda tables: self.serve_items(tables, users, item_chunk))

  def serve_items(self, tables, users, item_chunk=None):
    """[U, n_items]; the attention's pairs only add, tanh and dot, by chunk."""
    u = tf.gather(tf.convert_to_tensor(tables["users"]), users)
    if self.attention is None:
      return mf.dot_scores(u, tf.convert_to_tensor(tables["item_vectors"]))
    att = self.attention
    user_half = att.user_part(u)[:, None, None, :]  # [U, 1, 1, h]

    def block(args):
      e, item_half = args  # [c, M, d], [c, M, h]
      a = tf.nn.softmax(att.logits(user_half, item_half[None]), -1)  # [U, c, M]
      s = tf.einsum("ud,cmd->ucm", u, e)
      return tf.reduce_sum(a * s, -1)

    return map_item_chunks(
        block, (tf.convert_to_tensor(tables["item_modalities"]),
                tf.convert_to_tensor(tables["item_attention"])),
        self.n_items, item_chunk)

  def serve_pairs(self, tables, users, items):
    """(r [B] or [B, N], modality weights [.., M], None for fc)."""
    u = tf.gather(tf.convert_to_tensor(tables["users"]), users)
    if items.shape.rank == 2:
      u = u[:, None, :]
    e = tf.gather(tf.convert_to_tensor(tables["item_modalities"]), items)
    if self.attention is not None:
      item_half = tf.gather(tf.convert_to_tensor(tables["item_attention"]), items)
      a = tf.nn.softmax(self.attention.logits(
          self.attention.user_part(u)[..., None, :], item_half), -1)
      return tf.reduce_sum(a * tf.reduce_sum(u[..., None, :] * e, -1), -1), a
    vectors = tf.gather(tf.convert_to_tensor(tables["item_vectors"]), items)
    scores = tf.reduce_sum(u * vectors, -1)
    if self.fusion == "mean":
      return scores, self._uniform(e)
    if self.fusion == "max":
      return scores, self._max_shares(e)
    return scores, None

  def score_pairs(self, users, items, explain=False):
    scores, explanation = self.serve_pairs(self.serving_tables(), users, items)
    return (scores, explanation) if explain else scores

  def retrieval_space(self, tables):
    # For the attention, the uniform mean of the modality embeddings: the
    # first stage scores as a user without modality preference would.
    return "dot", tables["item_vectors"]

  def projector_tensors(self):
    tensors = super().projector_tensors()
    tensors["item_vectors"] = self.scoring_vectors
    return tensors

  def describe(self):
    out = super().describe()
    out.update(backbone=self.backbone, fusion=self.fusion,
               modalities=list(self.modalities), mp_weight=self.mp_weight,
               l2_reg=self.l2_reg, feature_norm=self.feature_norm,
               interaction_width=self.width)
    if self.backbone == "lightgcn":
      out["gcn_layers"] = self.gcn_layers
    if self.backbone == "ngcf":
      out.update(ngcf_layers=list(self.ngcf_layers),
                 ngcf_node_dropout=self.ngcf_node_dropout,
                 ngcf_message_dropout=self.ngcf_message_dropout)
    return out

  def get_config(self):
    config = self.base_config()
    config.update(modalities=list(self.modalities),
                  feature_dims=list(self.feature_dims), backbone=self.backbone,
                  gcn_layers=self.gcn_layers, fusion=self.fusion,
                  hidden_dim=self.hidden_dim, mp_weight=self.mp_weight,
                  l2_reg=self.l2_reg, init_stddev=self.init_stddev,
                  ngcf_layers=list(self.ngcf_layers),
                  ngcf_node_dropout=self.ngcf_node_dropout,
                  ngcf_message_dropout=self.ngcf_message_dropout,
                  feature_norm=self.feature_norm)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    if not dataset.features:
      raise UsageError(
          "`--modalities` must name at least one content modality with "
          "--model=mario (without one MARIO is its backbone alone: use "
          "--model=mf, --model=lightgcn or --model=ngcf). Received: "
          f"{','.join(config.modalities or ())!r}")
    model = cls(
        dataset.n_users, dataset.n_items, modalities=dataset.modalities,
        feature_dims=[dataset.features[m].shape[1] for m in dataset.modalities],
        backbone=config.backbone, gcn_layers=config.gcn_layers,
        train_pairs=dataset.train if config.backbone in GRAPH_BACKBONES else None,
        fusion=config.mario_fusion, embed_dim=config.embed_dim,
        hidden_dim=config.mario_hidden, mp_weight=config.mp_weight,
        l2_reg=config.l2_reg, ngcf_layers=[int(s) for s in config.ngcf_layers],
        ngcf_node_dropout=config.ngcf_node_dropout,
        ngcf_message_dropout=config.ngcf_message_dropout,
        feature_norm=config.mario_feature_norm, seed=config.seed,
        name="mario")
    model.set_item_features(dict(dataset.features))
    return model
