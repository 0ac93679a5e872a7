"""MMGCN (Wei, Wang, Nie, He, Hong, Chua; ACM MM 2019, "Multi-modal Graph
Convolution Network for Personalized Recommendation of Micro-video"): one
graph convolution per content modality over the user-item graph, with
modality-specific user preferences; the final representation is the sum of
the modalities' outputs, scored by dot product and trained with BPR.

The graph: users (0..U-1) then items (U..U+I-1), an edge each way for every
distinct TRAIN pair (the authors' code's edge_index, both directions), no
self-loops; N(n) are node n's neighbours.

One branch per content modality m (`--modalities`, e.g. text, meta), with
x_i^m the item's fixed features [d_m], d = `--embed_dim` and
d' = `--mmgcn_latent` (0: d' = d_m, no projection):
- Input (the authors' code): every user has a trainable preference vector
  p_u^m [d'] (the modality-specific user preference); every item the
  projection W_p x_i^m + b_p [d'] of its features (a Dense layer; with
  d' = 0 the features themselves). Both kinds of rows are l2-normalised:
  X^0 = l2norm([P^m; X^m W_p + b_p]). (This removes the features' scale:
  modalities whose features differ in scale by 10x enter alike.)
- Layer l (of L = `--gcn_layers`), the paper's aggregation and combination
  layers, as the code (which marks h as the paper's eq. 1, x^ as eq. 5):
    aggregation  h_n = LeakyReLU( agg_{j in N(n)} (X^l W_c)_j )
                   (W_c [d_in, d_in], no bias; agg = `--mmgcn_aggregation`:
                   mean (what the authors' main.py runs), sum, or max,
                   elementwise; a node without neighbours gets 0)
    combination  x^_n = LeakyReLU(X^l_n W_l + b_l) + e_n
                 concat: X^{l+1}_n = LeakyReLU([h_n; x^_n] W_g + b_g)
                 add:    X^{l+1}_n = LeakyReLU(h_n W_g + b_g + x^_n)
                 (`--mmgcn_combination`: the paper's concatenation and
                 element-wise combinations)
  with e_n the node's ID embedding (E = [P; Q], [U + I, d], shared by every
  modality: the code's `id_embedding`), LeakyReLU's slope 0.01 (PyTorch's
  default, the code's). d_in = d' in layer 0, d after.
- Final: u* = sum_m X^L_u (m), i* = sum_m X^L_i (m); r_ui = <u*, i*>.

Loss: BPR (`mf.bpr_loss`, the mean of -ln sigmoid(r_ui - r_uj) over the
batch, one sampled negative j) + `--l2_reg` * sum over the batch's rows of
the ID table (P_u, Q_i, Q_j) and of every modality's preferences (p_u^m) of
||row||^2 / (2 B) (`mf.batch_l2`).

The authors' code (weiyinwei/MMGCN, also MMRec's mmgcn.py) where it differs
from the paper, and which we follow:
- it averages the modalities (/ M); the paper sums them: we SUM (a factor
  1/M on each side, 1/M^2 on the scores, i.e. a BPR temperature).
- its ID embeddings and user preferences are plain tensors, not
  `nn.Parameter`s, so its optimiser never updates them (they stay at their
  random initial values); the paper learns them: we TRAIN them.
- its layer count is fixed at 3 whatever `num_layer` says: --gcn_layers
  (default 3).
- its `concate` argument is the string 'False', which Python reads as true:
  the released runs use the concatenation combination, also the
  README's stated default: `--mmgcn_combination` defaults to concat.
- it projects only the visual modality (to 256) and feeds the acoustic and
  textual features as they are; we project every modality to d' = 256 by
  default (OURS; 0 reproduces "as they are").
- its L2 is reg_weight * (the mean of the squared entries of the batch's ID
  rows + the mean of the whole visual preference table); ours is the
  package's per-batch sum above (OURS).
Initialisation (as the code where it says): the ID table and preferences
~ N(0, 2 / (rows + cols)) (Xavier normal), kernels Xavier normal, biases
zero (OURS: PyTorch's default small uniform biases).
Authors' defaults (main.py): dim_E 64, lr 1e-4, weight_decay (the L2
weight) 1e-5, batch 1024, mean aggregation; Adam.

Propagation runs over the whole graph once per train step and modality;
full-ranking evaluation reads u*, i* from `lightgcn.ScoringCache`; the
export bakes them in (no graph or features at serving time).
"""

from __future__ import annotations

from typing import Dict, Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.models import graph as graph_lib
from maml_tf.models import lightgcn
from maml_tf.models import mf

LEAKY_SLOPE = 0.01  # torch.nn.functional.leaky_relu's default, the code's
AGGREGATIONS = ("mean", "sum", "max")
COMBINATIONS = ("concat", "add")
DEFAULT_LATENT = 256  # the authors' code's dim_latent


def neighbour_graph(train_pairs, n_users, n_items, aggregation="mean"):
  """(graph, degrees): the bipartite graph of the distinct train pairs as a
  SparseTensor [U + I, U + I] (users first) with weight 1 / deg(row) for
  the mean, 1 for the sum and the max; deg [U + I] the node degrees."""
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"`aggregation` must be one of {', '.join(AGGREGATIONS)}. "
                     f"Received: aggregation={aggregation!r}")
  # The normalised adjacency's entries are exactly the graph's (checked,
  # deduplicated, sorted); only the weights differ.
  entries = lightgcn.normalized_adjacency(train_pairs, n_users, n_items)
  indices = entries.indices.numpy()
  n = n_users + n_items
  degrees = np.bincount(indices[:, 0], minlength=n).astype(np.float32)
  if aggregation == "mean":
    values = 1.0 / degrees[indices[:, 0]]
  else:
    values = np.ones(len(indices), np.float32)
  graph = tf.sparse.SparseTensor(indices, values.astype(np.float32), [n, n])
  return graph, degrees


def aggregate(graph, degrees, x, aggregation):
  """agg over each node's neighbours of the rows of x [U + I, k]."""
  if aggregation != "max":
    return lightgcn.sparse_product(graph, x)
  rows, cols = graph.indices[:, 0], graph.indices[:, 1]
  top = tf.math.unsorted_segment_max(tf.gather(x, cols), rows, graph.dense_shape[0])
  return tf.where(tf.convert_to_tensor(degrees)[:, None] > 0, top, tf.zeros_like(top))


@keras.saving.register_keras_serializable(package="maml_tf")
class ModalityGraphConvolution(keras.layers.Layer):
  """One modality's branch: `propagate(graph, degrees, features, ids)` ->
  X^L [U + I, d] from the items' features [I, d_m] and the ID table
  [U + I, d] (see the module docstring)."""

  def __init__(self, n_users, feature_dim, embed_dim=64, latent_dim=DEFAULT_LATENT,
               layers=3, aggregation="mean", combination="concat", seed=None,
               **kwargs):
    super().__init__(**kwargs)
    for name, value, low in (("n_users", n_users, 1), ("feature_dim", feature_dim, 1),
                             ("embed_dim", embed_dim, 1), ("latent_dim", latent_dim, 0),
                             ("layers", layers, 1)):
      if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}. Received: "
                         f"{name}={value!r}")
    if aggregation not in AGGREGATIONS:
      raise ValueError(f"`aggregation` must be one of {', '.join(AGGREGATIONS)}. "
                       f"Received: aggregation={aggregation!r}")
    if combination not in COMBINATIONS:
      raise ValueError(f"`combination` must be one of {', '.join(COMBINATIONS)}. "
                       f"Received: combination={combination!r}")
    self.n_users, self.feature_dim = int(n_users), int(feature_dim)
    self.embed_dim, self.latent_dim = int(embed_dim), int(latent_dim)
    self.n_layers, self.aggregation = int(layers), aggregation
    self.combination, self.seed = combination, seed

  @property
  def input_width(self):
    """d': the width of the preferences and of the layer-0 rows."""
    return self.latent_dim or self.feature_dim

  def build(self, input_shape=None):
    stream = keras.random.SeedGenerator(self.seed)
    xavier = keras.initializers.GlorotNormal(seed=stream)
    d, d0 = self.embed_dim, self.input_width
    # Xavier normal of a [U, d'] matrix, as the code's preference.
    self.preference = self.add_weight(
        shape=(self.n_users, d0), name="preference",
        initializer=keras.initializers.RandomNormal(
            stddev=float(np.sqrt(2.0 / (self.n_users + d0))), seed=stream))
    self.projection_kernel = self.projection_bias = None
    if self.latent_dim:
      self.projection_kernel = self.add_weight(
          shape=(self.feature_dim, d0), initializer=xavier, name="projection_kernel")
      self.projection_bias = self.add_weight(
          shape=(d0,), initializer="zeros", name="projection_bias")
    self.conv_kernels, self.linear_kernels, self.linear_biases = [], [], []
    self.combine_kernels, self.combine_biases = [], []
    for l in range(self.n_layers):
      d_in = d0 if l == 0 else d
      d_combine = d_in + d if self.combination == "concat" else d_in
      self.conv_kernels.append(self.add_weight(
          shape=(d_in, d_in), initializer=xavier, name=f"conv_kernel_{l}"))
      self.linear_kernels.append(self.add_weight(
          shape=(d_in, d), initializer=xavier, name=f"linear_kernel_{l}"))
      self.linear_biases.append(self.add_weight(
          shape=(d,), initializer="zeros", name=f"linear_bias_{l}"))
      self.combine_kernels.append(self.add_weight(
          shape=(d_combine, d), initializer=xavier, name=f"combine_kernel_{l}"))
      self.combine_biases.append(self.add_weight(
          shape=(d,), initializer="zeros", name=f"combine_bias_{l}"))
    self.built = True

  def inputs(self, features):
    """X^0 = l2norm([P^m; projected features]) [U + I, d']."""
    items = tf.convert_to_tensor(features)
    if self.latent_dim:
      items = tf.matmul(items, self.projection_kernel) + self.projection_bias
    x = tf.concat([tf.convert_to_tensor(self.preference), items], 0)
    return tf.nn.l2_normalize(x, axis=1, epsilon=1e-12)

  def layer(self, l, graph, degrees, x, ids):
    """X^{l+1} from X^l = x and the ID table ids [U + I, d]."""
    act = lambda t: tf.nn.leaky_relu(t, alpha=LEAKY_SLOPE)  # noqa: E731
    h = act(aggregate(graph, degrees, tf.matmul(x, self.conv_kernels[l]),
                      self.aggregation))
    own = act(tf.matmul(x, self.linear_kernels[l]) + self.linear_biases[l]) + ids
    if self.combination == "concat":
      return act(tf.matmul(tf.concat([h, own], 1), self.combine_kernels[l])
                 + self.combine_biases[l])
    return act(tf.matmul(h, self.combine_kernels[l]) + self.combine_biases[l] + own)

  def propagate(self, graph, degrees, features, ids):
    """X^L [U + I, d]. Callers use this, not `__call__`, which would turn
    the SparseTensor `graph` into a dense one."""
    x = self.inputs(features)
    for l in range(self.n_layers):
      x = self.layer(l, graph, degrees, x, ids)
    return x

  def call(self, graph, degrees, features, ids):
    return self.propagate(graph, degrees, features, ids)

  def get_config(self):
    config = super().get_config()
    config.update(n_users=self.n_users, feature_dim=self.feature_dim,
                  embed_dim=self.embed_dim, latent_dim=self.latent_dim,
                  layers=self.n_layers, aggregation=self.aggregation,
                  combination=self.combination, seed=self.seed)
    return config


@keras.saving.register_keras_serializable(package="maml_tf")
class MMGCN(lightgcn.TableCache, mf.MF):
  """MMGCN over the content modalities; see the module docstring.

  Call `set_item_features({modality: [n_items, d_m]})` after construction;
  the train edges come as `train_pairs` (or `set_train_edges`). A model
  rebuilt from `get_config()` needs both again.
  """

  NAME = "mmgcn"
  SEARCH_SPACE = {
      # MMRec's MMGCN grid: lr in {1e-4, ..., 1e-2}, reg_weight in
      # {0, 1e-5, ..., 0.1}.
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "l2_reg": ("float", 1e-6, 1e-1, "log"),
  }

  def __init__(self, n_users, n_items, modalities: Sequence[str] = (),
               feature_dims: Sequence[int] = (), train_pairs=None, gcn_layers=3,
               latent_dim=DEFAULT_LATENT, aggregation="mean",
               combination="concat", embed_dim=64, l2_reg=1e-5, seed=None,
               **kwargs):
    modalities, feature_dims = graph_lib.check_modalities(
        modalities, feature_dims, "MMGCN convolves per modality",
        distinct_rule="distinct names")
    gcn_layers = lightgcn.check_layers(gcn_layers)
    if aggregation not in AGGREGATIONS:
      raise ValueError(f"`aggregation` must be one of {', '.join(AGGREGATIONS)}. "
                       f"Received: aggregation={aggregation!r}")
    # Xavier normal of the code's [U + I, d] id_embedding.
    stddev = float(np.sqrt(2.0 / (int(n_users) + int(n_items) + int(embed_dim))))
    super().__init__(n_users, n_items, embed_dim=embed_dim, l2_reg=l2_reg,
                     init_stddev=stddev, seed=seed, **kwargs)
    self.modalities, self.feature_dims = modalities, feature_dims
    self.gcn_layers, self.latent_dim = gcn_layers, int(latent_dim)
    self.aggregation, self.combination = aggregation, combination
    self.branches = {}
    for k, (m, dm) in enumerate(zip(modalities, feature_dims)):
      setattr(self, f"features_{m}", self.add_weight(
          shape=(self.n_items, dm), initializer="zeros", trainable=False,
          name=f"features_{m}"))
      branch = ModalityGraphConvolution(
          self.n_users, dm, self.embed_dim, latent_dim=self.latent_dim,
          layers=gcn_layers, aggregation=aggregation, combination=combination,
          seed=None if seed is None else int(seed) + 1 + k, name=f"branch_{m}")
      branch.build()
      self.branches[m] = branch
    self.init_table_cache(self.embed_dim)
    self.graph = self.degrees = None
    if train_pairs is not None:
      self.set_train_edges(train_pairs)
    self.finish_init()

  # ------------------------------------------------------------ setup
  def feature_table(self, modality):
    return getattr(self, f"features_{modality}")

  def set_item_features(self, features: Dict[str, np.ndarray]):
    """Stores the fixed [n_items, d_m] features of every modality."""
    for m, x in graph_lib.checked_features(features, self.modalities,
                                           self.feature_dims, self.n_items):
      self.feature_table(m).assign(x)
    self.after_restore()

  def set_train_edges(self, train_pairs):
    """Builds the neighbour graph from the train pairs (once)."""
    self.graph, self.degrees = neighbour_graph(train_pairs, self.n_users,
                                               self.n_items, self.aggregation)
    self.after_restore()

  # ------------------------------------------------------------ tables
  def final_nodes(self):
    """[u*; i*] [n_users + n_items, d]: the sum over the modalities."""
    if self.graph is None:
      raise ValueError("`train_pairs` must be given (MMGCN convolves over the "
                       "train graph): call set_train_edges(pairs). Received: "
                       "train_pairs=None")
    ids = tf.concat([tf.convert_to_tensor(self.user_embeddings),
                     tf.convert_to_tensor(self.item_embeddings)], 0)
    return tf.add_n([
        self.branches[m].propagate(self.graph, self.degrees,
                                   self.feature_table(m), ids)
        for m in self.modalities])

  def final_tables(self, training=False):
    """(u* [n_users, d], i* [n_items, d])."""
    del training  # MMGCN has no dropout
    total = self.final_nodes()
    return total[:self.n_users], total[self.n_users:]

  def scoring_ready(self):
    return self.graph is not None

  # ------------------------------------------------------------ loss
  def loss_terms(self, users, items, training=False):
    """BPR on (u*, i*); L2 on the batch's ID rows and user preferences."""
    del training  # MMGCN has no dropout
    bpr, rows = self.table_bpr(self.final_nodes(), users, items)
    rows += [tf.gather(self.branches[m].preference, users) for m in self.modalities]
    l2 = self.l2_reg * mf.batch_l2(*rows)
    return {"loss": bpr + l2, "bpr_loss": bpr, "l2_loss": l2}

  # ------------------------------------------------------------ records
  def describe(self):
    out = super().describe()
    out.update(modalities=list(self.modalities), gcn_layers=self.gcn_layers,
               latent_dim=self.latent_dim, aggregation=self.aggregation,
               combination=self.combination)
    return out

  def get_config(self):
    config = self.base_config()
    config.update(modalities=list(self.modalities),
                  feature_dims=list(self.feature_dims), gcn_layers=self.gcn_layers,
                  latent_dim=self.latent_dim, aggregation=self.aggregation,
                  combination=self.combination, l2_reg=self.l2_reg)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    return graph_lib.from_dataset(
        cls, config, dataset, "it convolves per modality",
        gcn_layers=config.gcn_layers, latent_dim=config.mmgcn_latent,
        aggregation=config.mmgcn_aggregation,
        combination=config.mmgcn_combination)
