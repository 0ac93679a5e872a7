"""GRCN (Wei, Wang, Nie, He, Chua; ACM MM 2020, "Graph-Refined Convolutional
Network for Multimedia Recommendation with Implicit Feedback"): the
user-item graph refined per content modality, a GCN of ID embeddings on
the refined graph, and scores on the concatenated ID and content
representations.

Nodes: users u, items i; the edges are the TRAIN pairs (duplicates counted
once), each used in both directions: "i -> u" (an item's message to a
user) and "u -> i". N(u), N(i): a node's neighbours. d = `--embed_dim`.
For every content modality m (`--modalities`, in the dataset's order):

- Prototypical network. The item's content in the common space,
    f_i^m = normalize(LeakyReLU_0.01(W_m x_i^m + b_m))            [d]
  (x_i^m the fixed pre-trained features), and the user's preference in
  that modality, a learned table row, p_u^m = normalize(P^m_u).
- Neighbour routing (T = `--grcn_routing` iterations): the user's
  preference is refined towards the content of the items it agrees with,
    a_ui = softmax over i in N(u) of p_u^m . f_i^m
    p_u^m <- normalize(p_u^m + sum_{i in N(u)} a_ui f_i^m).
- The affinities of the refined graph, per direction of every edge, from
  the routed preference and the content:
    s_ui = p_u^m . f_i^m,
    a^m(i -> u) = softmax over i' in N(u) of s_ui'   (the user's side)
    a^m(u -> i) = softmax over u' in N(i) of s_u'i   (the item's side).
  The modality's content representations (one attention-weighted
  convolution on the refined graph):
    c_u^m = p_u^m + sum_{i in N(u)} a^m(i -> u) f_i^m
    c_i^m = f_i^m + sum_{u in N(i)} a^m(u -> i) p_u^m.
- Edge weights over the modalities (`--grcn_weight_mode`):
    confid (the authors' default): w(s -> t) = max_m a^m(s -> t) k_s^m,
      k a learned confidence per node and modality (the message's source
      node s: the user on u -> i, the item on i -> u);
    max: w = max_m a^m;   mean: w = mean_m a^m;
  then the pruning: w <- relu(w) (an edge whose weight is negative, which
  only the confidences can make, carries nothing).
- The GCN on the refined graph (L = `--gcn_layers`, no activation, "add"
  aggregation): x^0 = normalize([P; Q]) the ID tables' rows,
    x_t^{l+1} = sum_{s in N(t)} w(s -> t) x_s^l,   e = x^0 + ... + x^L.
- The representation: [e; c^1; ...; c^M] (concatenation: d (1 + M) wide,
  for users and for items); the score is their dot product.
- Loss: bpr_loss = mean over the batch of -ln sigmoid(r_ui - r_uj) (one
  sampled negative j); l2_loss = `--l2_reg` * sum over the batch's rows of
  P (users), Q (positives and negatives) and every P^m (users) of
  ||row||^2 / (2 B), the package's convention (mf, lightgcn).

What we checked in the authors' code (github.com/weiyinwei/GRCN,
Model_routing.py, GATConv.py, SAGEConv.py, main.py; MMRec's grcn.py is a
port of it) and where it differs from the paper:
- The routing. The paper refines each user's preference from its items.
  The code runs its routing convolution on the one-directional edge list
  (user, item) under PyTorch Geometric's source-to-target flow, which
  aggregates at the items; the users' rows it adds to the preferences are
  zeros, so its routing leaves the preferences as they are. We follow the
  paper (the aggregation at the user); `--grcn_routing=0` reproduces the
  code's effective computation.
- Everything else follows the code: the LeakyReLU and the normalisations
  (has_norm=True, has_act=False), the two softmax directions of the final
  attention convolution (GATConv: the softmax over the target's incoming
  edges), the confidence weighting and max over modalities
  (weight_mode=confid), relu pruning, the add-aggregated ID GCN whose
  layers are summed with the normalised ID rows (EGCN; 2 layers in the
  code: `flags/office_grcn.flags` sets --gcn_layers=2), the concatenation
  (fusion_mode=concat), T = 3 (num_routing), d = 64 for dim_E and dim_C.
  The code's edge dropout defaults to 0: not built.
- Initialisation, as the code: the ID tables ~ N(0, 2 / (U + I + d)) (its
  xavier_normal of the joint [U + I, d] table), the preferences and the
  confidences GlorotNormal (the same standard deviation as PyTorch's
  xavier_normal; Keras's is a rescaled normal truncated at two). OURS: W_m GlorotNormal (MMRec's choice; the
  authors' code keeps PyTorch's default), b_m zeros.
- The regulariser: the code's is reg_weight * (mean of the squared entries
  of the batch's ID rows + of its users' preference rows), with the
  confidences not regularised; ours is the same rows under the package's
  sum ||row||^2 / (2 B) (the weight is therefore not the code's
  weight_decay = 1e-5 as such). OURS: `--l2_reg`, shared with mf/lightgcn.

Recomputed when: the whole refinement and propagation runs once per train
step over the whole graph (O(E d (T + 2) M + E d L)); on a large graph
its edge products run by blocks of edges with their own gradients
(`edge_products`), so a step keeps [E] vectors, not [E, d] blocks. Full-ranking
evaluation reads the representations stored by `prepare_scoring`
(`lightgcn.ScoringCache`: recomputed if a train step made them stale); the
export bakes them in, so serving is a dot product of two stored tables.

`table_variables` (what --network_lr_scale leaves at --learning_rate): the
ID tables, the preference tables and the confidences; the projections W_m,
b_m are scaled.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.models import graph
from maml_tf.models import lightgcn
from maml_tf.models import mf
from maml_tf.models.edge_products import edge_dot, edge_sum

WEIGHT_MODES = ("confid", "max", "mean")
LEAKY_SLOPE = 0.01  # PyTorch's F.leaky_relu default, as the authors' code


def segment_softmax(logits, segments, n_segments):
  """softmax of logits [E] over each group of entries sharing segments[e]."""
  top = tf.stop_gradient(tf.math.unsorted_segment_max(logits, segments, n_segments))
  e = tf.exp(logits - tf.gather(top, segments))
  return e / tf.gather(tf.math.unsorted_segment_sum(e, segments, n_segments),
                       segments)


def _normalize(x):
  return tf.math.l2_normalize(x, axis=-1)


def edge_lists(train_pairs, n_users, n_items):
  """(users [E], items [E]) int32 of the distinct (user, item) train pairs."""
  pairs = np.unique(np.asarray(train_pairs, np.int64).reshape(-1, 2), axis=0)
  if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= n_users or
                     pairs[:, 1].max() >= n_items):
    raise ValueError(f"`train_pairs` must be (user, item) ids in [0, {n_users}) "
                     f"x [0, {n_items}). Received: max user {pairs[:, 0].max()}, "
                     f"max item {pairs[:, 1].max()}, min id {pairs.min()}")
  return (tf.constant(pairs[:, 0], tf.int32), tf.constant(pairs[:, 1], tf.int32))


@keras.saving.register_keras_serializable(package="maml_tf")
class GRCN(lightgcn.TableCache, mf.MF):
  """GRCN; see the module docstring.

  Call `set_item_features({modality: [n_items, d_m]})` after construction;
  the train edges come as `train_pairs` (or `set_train_edges`), which a
  model rebuilt from `get_config()` needs again.
  """

  NAME = "grcn"
  SCORING_ITEMS_TENSOR = "grcn_items"
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      # Around the authors' weight in our units, 1e-5 / d (module docstring).
      "l2_reg": ("float", 1e-8, 1e-4, "log"),
      "embed_dim": ("choice", [32, 64]),
      "gcn_layers": ("int", 1, 3),
      "grcn_routing": ("int", 1, 5),
  }

  def __init__(self, n_users, n_items, modalities: Sequence[str] = (),
               feature_dims: Sequence[int] = (), train_pairs=None,
               gcn_layers=2, routing=3, weight_mode="confid", embed_dim=64,
               l2_reg=1e-4, init_stddev=None, seed=None, **kwargs):
    modalities, feature_dims = graph.check_modalities(
        modalities, feature_dims, "GRCN refines the graph from item content")
    if weight_mode not in WEIGHT_MODES:
      raise ValueError(f"`weight_mode` must be one of {', '.join(WEIGHT_MODES)}."
                       f" Received: weight_mode={weight_mode!r}")
    gcn_layers = lightgcn.check_layers(gcn_layers)
    routing = graph.check_int("routing", routing, 0)
    if init_stddev is None:  # xavier_normal of the authors' joint table
      init_stddev = math.sqrt(2.0 / (int(n_users) + int(n_items) + int(embed_dim)))
    super().__init__(n_users, n_items, embed_dim=embed_dim, l2_reg=l2_reg,
                     init_stddev=init_stddev, seed=seed, **kwargs)
    self.modalities, self.feature_dims = modalities, feature_dims
    self.gcn_layers, self.routing, self.weight_mode = gcn_layers, routing, weight_mode
    d, n_mod = self.embed_dim, len(modalities)
    glorot = lambda: keras.initializers.GlorotNormal(seed=seed)  # noqa: E731
    self.projections = {}
    for m, dm in zip(modalities, feature_dims):
      setattr(self, f"features_{m}", self.add_weight(
          shape=(self.n_items, dm), initializer="zeros", trainable=False,
          name=f"features_{m}"))
      # An attribute each (the checkpoint names variables by attribute).
      setattr(self, f"preference_{m}", self.add_weight(
          shape=(self.n_users, d), initializer=glorot(), name=f"preference_{m}"))
      layer = keras.layers.Dense(d, kernel_initializer=glorot(),
                                 bias_initializer="zeros", name=f"projection_{m}")
      layer.build((None, dm))
      self.projections[m] = layer
    # One confidence per node (users first, then items) and modality.
    self.confidence = self.add_weight(
        shape=(self.n_users + self.n_items, n_mod), initializer=glorot(),
        name="confidence")
    width = d * (1 + n_mod)
    self.init_table_cache(width)
    self.edges = None
    if train_pairs is not None:
      self.set_train_edges(train_pairs)
    self.finish_init()

  # ------------------------------------------------------------ setup
  @property
  def score_width(self):
    return self.embed_dim * (1 + len(self.modalities))

  def feature_table(self, modality):
    return getattr(self, f"features_{modality}")

  def preference(self, modality):
    """The preference table P^m [n_users, d] of a modality."""
    return getattr(self, f"preference_{modality}")

  def table_variables(self):
    return ([self.user_embeddings, self.item_embeddings, self.confidence]
            + [self.preference(m) for m in self.modalities])

  def set_train_edges(self, train_pairs):
    """The refined graph's edges: the distinct train pairs."""
    self.edges = edge_lists(train_pairs, self.n_users, self.n_items)

  def set_item_features(self, features: Dict[str, np.ndarray]):
    """Stores the fixed [n_items, d_m] features of every content modality."""
    for m, x in graph.checked_features(features, self.modalities,
                                       self.feature_dims, self.n_items):
      self.feature_table(m).assign(x)
    self.after_restore()

  def _edges(self):
    if self.edges is None:
      raise ValueError("`train_pairs` must be given (GRCN refines the train "
                       "graph): call set_train_edges(pairs). Received: "
                       "train_pairs=None")
    return self.edges

  # ------------------------------------------------------------ forward
  def content(self, modality):
    """f^m [n_items, d]: the normalised LeakyReLU projection of x^m."""
    x = tf.convert_to_tensor(self.feature_table(modality))
    return _normalize(tf.nn.leaky_relu(self.projections[modality](x), LEAKY_SLOPE))

  def refine(self, modality):
    """One modality's refinement: (c_users [U, d], c_items [I, d],
    a(i -> u) [E], a(u -> i) [E]) on the edge list."""
    eu, ei = self._edges()
    f = self.content(modality)
    p = _normalize(tf.convert_to_tensor(self.preference(modality)))
    for _ in range(self.routing):
      a = segment_softmax(edge_dot(p, f, eu, ei), eu, self.n_users)
      p = _normalize(p + edge_sum(a, f, ei, eu, self.n_users))
    s = edge_dot(p, f, eu, ei)
    to_user = segment_softmax(s, eu, self.n_users)
    to_item = segment_softmax(s, ei, self.n_items)
    users = p + edge_sum(to_user, f, ei, eu, self.n_users)
    items = f + edge_sum(to_item, p, eu, ei, self.n_items)
    return users, items, to_user, to_item

  def edge_weights(self, to_user, to_item):
    """(w(i -> u) [E], w(u -> i) [E]) from the per-modality affinities
    [E, M] of each direction: the weight mode, then relu."""
    if self.weight_mode == "confid":
      eu, ei = self._edges()
      conf = tf.convert_to_tensor(self.confidence)
      w_user = tf.reduce_max(to_user * tf.gather(conf, ei + self.n_users), -1)
      w_item = tf.reduce_max(to_item * tf.gather(conf, eu), -1)
    elif self.weight_mode == "max":
      w_user, w_item = tf.reduce_max(to_user, -1), tf.reduce_max(to_item, -1)
    else:
      w_user, w_item = tf.reduce_mean(to_user, -1), tf.reduce_mean(to_item, -1)
    return tf.nn.relu(w_user), tf.nn.relu(w_item)

  def id_propagation(self, w_user, w_item):
    """The GCN of the normalised ID rows on the refined graph: (users, items)
    = sum over l = 0..L of x^l."""
    eu, ei = self._edges()
    x_u = _normalize(tf.convert_to_tensor(self.user_embeddings))
    x_i = _normalize(tf.convert_to_tensor(self.item_embeddings))
    total_u, total_i = x_u, x_i
    for _ in range(self.gcn_layers):
      x_u, x_i = (edge_sum(w_user, x_i, ei, eu, self.n_users),
                  edge_sum(w_item, x_u, eu, ei, self.n_items))
      total_u, total_i = total_u + x_u, total_i + x_i
    return total_u, total_i

  def final_tables(self):
    """(users [U, d (1 + M)], items [I, d (1 + M)]): [e; c^1; ...; c^M]."""
    parts = [self.refine(m) for m in self.modalities]
    w_user, w_item = self.edge_weights(tf.stack([p[2] for p in parts], -1),
                                       tf.stack([p[3] for p in parts], -1))
    id_u, id_i = self.id_propagation(w_user, w_item)
    return (tf.concat([id_u] + [p[0] for p in parts], -1),
            tf.concat([id_i] + [p[1] for p in parts], -1))

  def loss_terms(self, users, items, training=False):
    bpr, rows = self.table_bpr(self.final_tables(), users, items)
    rows += [tf.gather(self.preference(m), users) for m in self.modalities]
    l2 = self.l2_reg * mf.batch_l2(*rows)
    return {"loss": bpr + l2, "bpr_loss": bpr, "l2_loss": l2}

  # ------------------------------------------------------------ scoring
  def scoring_ready(self):
    return self.edges is not None

  def describe(self):
    out = super().describe()
    out.update(modalities=list(self.modalities), gcn_layers=self.gcn_layers,
               routing=self.routing, weight_mode=self.weight_mode)
    return out

  def get_config(self):
    config = super().get_config()
    config.update(modalities=list(self.modalities),
                  feature_dims=list(self.feature_dims), gcn_layers=self.gcn_layers,
                  routing=self.routing, weight_mode=self.weight_mode)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    return graph.from_dataset(
        cls, config, dataset, "it refines the graph from item content; "
        "without one use --model=lightgcn", gcn_layers=config.gcn_layers,
        routing=config.grcn_routing, weight_mode=config.grcn_weight_mode)
