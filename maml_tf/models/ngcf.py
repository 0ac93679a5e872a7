"""NGCF (Wang, He, Wang, Feng, Chua; SIGIR 2019, "Neural Graph
Collaborative Filtering"): BPR over tables propagated on the user-item graph
by embedding propagation layers that also pass the interaction of a node
with its neighbours ("bi-interaction").

Nodes are the users (0..U-1) then the items (U..U+I-1); L = D^-1/2 A D^-1/2
is the normalised adjacency of the TRAIN pairs (the paper's Laplacian,
eq. 8; `lightgcn.normalized_adjacency`, the same graph LightGCN uses). With
E^0 = [P; Q] (the "ego" tables, d = `--embed_dim`) each layer k computes
(eq. 7, with the biases of the authors' code):

  S       = L E^k                                     (neighbour sum)
  E^{k+1} = LeakyReLU( (S + E^k) W1_k + b1_k + (S * E^k) W2_k + b2_k )

(`*` elementwise; (L + I) E^k = S + E^k), LeakyReLU's negative slope 0.2
(TensorFlow's default, the authors' code). Layer k's output E^{k+1} feeds the
next layer as it is; what the model keeps of it is its rows l2-normalised
(the authors' code). The final tables concatenate the layers (eq. 9):

  E* = [E^0, l2norm(E^1), ..., l2norm(E^K)]   width d + sum(layer sizes)

and r_ui = <e*_u, e*_i> (eq. 10). The loss is `mf.MF`'s: BPR (eq. 11, the
mean of -ln sigmoid(r_ui - r_uj) over the batch) plus `--l2_reg` * sum over
the batch's ego rows (P_u, Q_i, Q_j) of ||row||^2 / (2 B).

Dropout, in training only (the paper's section 2.4.2):
- node dropout (`--ngcf_node_dropout`, p): every non-zero entry of L is
  dropped with probability p and the kept ones scaled by 1/(1 - p), one
  mask per train step shared by all layers. This is what the authors' code
  does under the name ("_dropout_sparse" on the entries of the adjacency),
  not the paper's "block a node's outgoing messages"; the identity part of
  (L + I) is never dropped (OURS: in the authors' code the self-loops live
  inside their matrix and can be dropped too).
- message dropout (`--ngcf_message_dropout`, p): inverted dropout on each
  layer's output E^{k+1}, before its normalisation and before it feeds the
  next layer (the authors' code).
In evaluation (and in the exported tables) neither acts: scores are
deterministic.

The authors' defaults (README, Gowalla): embed_size 64, layer_size
[64,64,64], lr 1e-4, batch 1024, regs 1e-5, node dropout 0.1 and message
dropout 0.1 per layer; Adam. Note that their README command leaves node
dropout off (its `--node_dropout_flag` defaults to 0); we default to 0.1,
the value it would use, and 0 turns it off.

Where we differ from the authors' code, written down (OURS):
- L is the paper's symmetric D^-1/2 A D^-1/2 plus an explicit identity;
  the authors' code multiplies by one matrix, D^-1 (A + I) (their
  `--adj_type norm`), for both the sum and the bi-interaction term.
- the LeakyReLU is applied once, to the sum of the two terms (eq. 7, as the
  PyTorch port huangtinglin/NGCF-PyTorch does); the authors' TF code
  applies it to each term and adds.
- the L2 is on the batch's ego rows (as LightGCN and this package's mf,
  lightgcn and mario models); the authors' code puts it on the batch's rows
  of the final concatenated tables E*. The weights W, b are not regularised
  (as theirs).
- one message dropout rate for every layer (theirs is a list, 0.1 each).
Initialisation as the authors' code: every table, kernel and bias Xavier
(Glorot) uniform, the biases as [1, d] matrices.

Propagation runs over the whole graph once per train step (as LightGCN's;
`lightgcn.sparse_product`, XLA-compilable). Full-ranking evaluation reads
the propagated tables from `lightgcn.ScoringCache`; the export bakes the
eval-mode tables in (no graph at serving time), scored by dot product.

`BiInteractionPropagation` is a layer of its own so that a model with an
NGCF backbone (MARIO's) can hold one.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.models import lightgcn
from maml_tf.models import mf

LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu's default, the authors' code's


def check_rate(name, value):
  """A dropout rate: a number in [0, 1)."""
  if isinstance(value, bool) or not 0 <= value < 1:
    raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
  return float(value)


def check_layer_sizes(layer_sizes):
  """One width >= 1 per propagation layer, at least one layer."""
  sizes = tuple(layer_sizes) if isinstance(layer_sizes, (list, tuple)) else None
  if not sizes or any(isinstance(s, bool) or int(s) != s or s < 1 for s in sizes):
    raise ValueError("`layer_sizes` must be one integer >= 1 per layer (at "
                     f"least one). Received: layer_sizes={layer_sizes!r}")
  return tuple(int(s) for s in sizes)


@tf.function(jit_compile=True)
def _dropout_mask_kernel(x, seed, rate):
  keep = tf.random.stateless_uniform(tf.shape(x), seed, alg="threefry") >= rate
  return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))


def inverted_dropout(x, rate, seed_generator):
  """x / (1 - rate) where a uniform draw is >= rate, else 0; the draw is a
  stateless ThreeFry stream seeded from `seed_generator` (a tracked
  variable, so a resumed run draws the same masks), in its own small XLA
  kernel (ThreeFry has no eager CPU kernel; the same form as
  `maml_tf.layers.stateless_dropout`, not imported here)."""
  seed = tf.cast(seed_generator.next(), tf.int32)
  return _dropout_mask_kernel(x, seed, float(rate))


@keras.saving.register_keras_serializable(package="maml_tf")
class BiInteractionPropagation(keras.layers.Layer):
  """NGCF's embedding propagation: `propagate(adjacency, ego, training)` maps the
  ego tables [n, d] to the concatenation [n, d + sum(layer_sizes)] of E^0
  and every layer's l2-normalised output (see the module docstring)."""

  def __init__(self, input_dim=64, layer_sizes=(64, 64, 64), node_dropout=0.1,
               message_dropout=0.1, seed=None, **kwargs):
    super().__init__(**kwargs)
    if isinstance(input_dim, bool) or int(input_dim) != input_dim or input_dim < 1:
      raise ValueError(f"`input_dim` must be an integer >= 1. Received: "
                       f"input_dim={input_dim!r}")
    self.input_dim = int(input_dim)
    self.layer_sizes = check_layer_sizes(layer_sizes)
    self.node_dropout = check_rate("node_dropout", node_dropout)
    self.message_dropout = check_rate("message_dropout", message_dropout)
    self.seed = seed
    self.dropout_seeds = keras.random.SeedGenerator(
        None if seed is None else int(seed) + 1)

  @property
  def output_dim(self):
    return self.input_dim + sum(self.layer_sizes)

  def build(self, input_shape=None):
    # One stream for every initial value, so no two weights start equal.
    xavier = keras.initializers.GlorotUniform(seed=keras.random.SeedGenerator(self.seed))
    widths = (self.input_dim,) + self.layer_sizes
    self.sum_kernels, self.sum_biases = [], []
    self.bi_kernels, self.bi_biases = [], []
    for k in range(len(self.layer_sizes)):
      d_in, d_out = widths[k], widths[k + 1]
      self.sum_kernels.append(self.add_weight(
          shape=(d_in, d_out), initializer=xavier, name=f"sum_kernel_{k}"))
      self.sum_biases.append(self.add_weight(
          shape=(1, d_out), initializer=xavier, name=f"sum_bias_{k}"))
      self.bi_kernels.append(self.add_weight(
          shape=(d_in, d_out), initializer=xavier, name=f"bi_kernel_{k}"))
      self.bi_biases.append(self.add_weight(
          shape=(1, d_out), initializer=xavier, name=f"bi_bias_{k}"))
    self.built = True

  def dropped_values(self, adjacency):
    """L's values with each entry dropped with probability p and the rest
    scaled by 1/(1 - p) (node dropout, the authors' code's form), in the
    order of L's indices."""
    return inverted_dropout(adjacency.values, self.node_dropout, self.dropout_seeds)

  def layer(self, k, adjacency, x, values=None):
    """E^{k+1} of layer k (before message dropout) from E^k = x; `values`
    (node dropout's) in place of L's own."""
    side = lightgcn.sparse_product(adjacency, x, values)
    summed = tf.matmul(side + x, self.sum_kernels[k]) + self.sum_biases[k]
    bi = tf.matmul(side * x, self.bi_kernels[k]) + self.bi_biases[k]
    return tf.nn.leaky_relu(summed + bi, alpha=LEAKY_SLOPE)

  def call(self, adjacency, ego, training=False):
    return self.propagate(adjacency, ego, training=training)

  def propagate(self, adjacency, ego, training=False):
    """The concatenated tables; callers use this, not `__call__`, which
    would turn the SparseTensor `adjacency` into a dense one."""
    values = None
    if training and self.node_dropout > 0:
      values = self.dropped_values(adjacency)
    x, outputs = ego, [ego]
    for k in range(len(self.layer_sizes)):
      x = self.layer(k, adjacency, x, values)
      if training and self.message_dropout > 0:
        x = inverted_dropout(x, self.message_dropout, self.dropout_seeds)
      outputs.append(tf.nn.l2_normalize(x, axis=1, epsilon=1e-12))
    return tf.concat(outputs, 1)

  def get_config(self):
    config = super().get_config()
    config.update(input_dim=self.input_dim, layer_sizes=list(self.layer_sizes),
                  node_dropout=self.node_dropout,
                  message_dropout=self.message_dropout, seed=self.seed)
    return config


def xavier_table(rows, dim, seed):
  """A [rows, dim] table ~ U(+-sqrt(6 / (rows + dim))), the authors' code's
  tf.contrib xavier_initializer."""
  limit = np.sqrt(6.0 / (rows + dim))
  rng = np.random.default_rng(seed)
  return rng.uniform(-limit, limit, size=(rows, dim)).astype(np.float32)


@keras.saving.register_keras_serializable(package="maml_tf")
class NGCF(lightgcn.TableCache, mf.MF):
  """BPR over NGCF's propagated, concatenated tables.

  `train_pairs` ([n, 2] user, item) are the graph's edges; a model rebuilt
  from `get_config()` (which does not hold the graph) needs
  `set_train_edges(pairs)` before it scores or trains.
  """

  NAME = "ngcf"
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "l2_reg": ("float", 1e-6, 1e-2, "log"),
      # The paper tunes both rates in {0.0, 0.1, ..., 0.8}.
      "ngcf_node_dropout": ("float", 0.0, 0.5, "linear"),
      "ngcf_message_dropout": ("float", 0.0, 0.5, "linear"),
  }

  def __init__(self, n_users, n_items, train_pairs=None,
               layer_sizes: Sequence[int] = (64, 64, 64), node_dropout=0.1,
               message_dropout=0.1, embed_dim=64, l2_reg=1e-5, seed=None,
               **kwargs):
    layer_sizes = check_layer_sizes(layer_sizes)
    node_dropout = check_rate("node_dropout", node_dropout)
    message_dropout = check_rate("message_dropout", message_dropout)
    super().__init__(n_users, n_items, embed_dim=embed_dim, l2_reg=l2_reg,
                     seed=seed, **kwargs)
    # Xavier uniform tables (the authors' code), in place of MF's N(0, 0.1^2).
    base_seed = None if seed is None else int(seed)
    self.user_embeddings.assign(xavier_table(self.n_users, self.embed_dim, base_seed))
    self.item_embeddings.assign(xavier_table(
        self.n_items, self.embed_dim, None if seed is None else base_seed + 7))
    self.propagation = BiInteractionPropagation(
        self.embed_dim, layer_sizes, node_dropout, message_dropout,
        seed=None if seed is None else base_seed + 13, name="propagation")
    self.propagation.build()
    width = self.propagation.output_dim
    self.init_table_cache(width)
    self.adjacency = None
    if train_pairs is not None:
      self.set_train_edges(train_pairs)
    self.finish_init()

  @property
  def layer_sizes(self):
    return self.propagation.layer_sizes

  @property
  def node_dropout(self):
    return self.propagation.node_dropout

  @property
  def message_dropout(self):
    return self.propagation.message_dropout

  @property
  def score_width(self):
    return self.propagation.output_dim

  def set_train_edges(self, train_pairs):
    """Builds L from the train pairs (once) and refreshes the cache."""
    self.adjacency = lightgcn.normalized_adjacency(train_pairs, self.n_users,
                                                   self.n_items)
    self.prepare_scoring()

  # ------------------------------------------------------------ tables
  def final_nodes(self, training=False):
    """E* [n_users + n_items, d + sum(layer_sizes)], users first; dropout
    only if training."""
    if self.adjacency is None:
      raise ValueError("`train_pairs` must be given (NGCF propagates over the "
                       "train graph): call set_train_edges(pairs). Received: "
                       "train_pairs=None")
    ego = tf.concat([tf.convert_to_tensor(self.user_embeddings),
                     tf.convert_to_tensor(self.item_embeddings)], 0)
    return self.propagation.propagate(self.adjacency, ego, training=training)

  def final_tables(self, training=False):
    """(users, items) [n, d + sum(layer_sizes)]; dropout only if training."""
    final = self.final_nodes(training=training)
    return final[:self.n_users], final[self.n_users:]

  # ------------------------------------------------------------ loss
  def loss_terms(self, users, items, training=False):
    """BPR on E* (column 0 positive, column 1 the negative); L2 on E^0."""
    bpr, rows = self.table_bpr(self.final_nodes(training=training), users,
                               items)
    l2 = self.l2_reg * mf.batch_l2(*rows)
    return {"loss": bpr + l2, "bpr_loss": bpr, "l2_loss": l2}

  # ------------------------------------------------------------ records
  def describe(self):
    out = super().describe()
    out.update(layer_sizes=list(self.layer_sizes), node_dropout=self.node_dropout,
               message_dropout=self.message_dropout)
    return out

  def get_config(self):
    config = self.base_config()
    config.update(layer_sizes=list(self.layer_sizes), node_dropout=self.node_dropout,
                  message_dropout=self.message_dropout, l2_reg=self.l2_reg)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    return cls(dataset.n_users, dataset.n_items, train_pairs=dataset.train,
               layer_sizes=[int(s) for s in config.ngcf_layers],
               node_dropout=config.ngcf_node_dropout,
               message_dropout=config.ngcf_message_dropout,
               embed_dim=config.embed_dim, l2_reg=config.l2_reg,
               seed=config.seed, name="ngcf")
