"""LATTICE (Zhang, Zhu, Liu, Wu, Wang, Wang; ACM MM 2021, "Mining Latent
Structures for Multimedia Recommendation"): item-item graphs mined from
the content modalities, a convolution of the item ID embeddings over them,
added to the item embeddings of a LightGCN backbone.

For every content modality m (`--modalities`, in the dataset's order), with
x_i^m the fixed pre-trained features of item i and k = `--lattice_knn_k`:

- kNN graph (the paper's Eq. 1-3). S_ij = cos(x_i, x_j) over all item
  pairs; each row keeps its k largest entries (the item itself included,
  its similarity being 1, as the authors' code's topk over the full row),
  the others 0; then S~ = D^-1/2 S D^-1/2 with D the ROW sums of the
  sparsified S (which is not symmetric: i may be among j's k and not j
  among i's), as the code's compute_normalized_laplacian. This is the raw
  graph S~^m, built once from the features.
- Learned graph (Eq. 4): the same construction on the projected features
  x'_i^m = W_m x_i^m + b_m (a trained Dense to d): A^m_learned.
- Skip connection (Eq. 5): A^m = (1 - lambda) A^m_learned + lambda S~^m,
  lambda = `--lattice_lambda` (0.9 in the authors' code: mostly the raw
  graph).
- Fusion (Eq. 6): A = sum_m alpha_m A^m, alpha = softmax of a trained
  vector (initialised equal: the code's [0.5, 0.5]).
- Item-item convolution (Eq. 7): h^0 = the item ID table Q, h^l = A h^{l-1},
  L' = `--lattice_item_layers` layers (1 in the code).
- The backbone (Eq. 8): LightGCN's propagated tables over the normalised
  train graph (`lightgcn.propagate` and `lightgcn.normalized_adjacency`,
  the code of `--model=lightgcn`; `--gcn_layers` layers, 2 in the code):
    users = e_u,   items = e_i + h_i^{L'} / ||h_i^{L'}||.
  Scores: their dot product.
- Loss: bpr_loss = mean over the batch of -ln sigmoid(r_ui - r_uj) (one
  sampled negative); l2_loss = `--l2_reg` * sum ||row||^2 / (2 B) over the
  batch's FINAL user, positive and negative rows (as the authors' code,
  whose regulariser is on the propagated embeddings, decay 1e-5; not on the
  ID rows as our lightgcn).

What we checked in the authors' code (github.com/CRIPAC-DIG/LATTICE,
codes/Models.py, main.py, utility/parser.py, load_data.py; MMRec's
lattice.py is a port) and where we follow what:
- Order of skip connection and fusion. The paper mixes each modality's
  learned and raw graphs and then fuses (Eq. 5-6), each graph normalised
  on its own. The code fuses the modalities first and normalises the FUSED
  learned graph: (1 - lambda) N(sum_m alpha_m L^m) + lambda sum_m alpha_m
  N(R^m). We follow the paper (the two agree with one modality).
- The features: the code fine-tunes the raw feature tables
  (`from_pretrained(freeze=False)`); the paper and our spec treat them as
  fixed: ours are fixed, so the raw graph never changes.
- The backbone's graph: the code's LightGCN propagates over
  D^-1 (A + I) (row-normalised, with self-loops); ours is LightGCN's own
  D^-1/2 A D^-1/2 (the brief: reuse our LightGCN).
- The code's learning-rate decay (0.96^(epoch / 50)) is not built.
- OURS: a zero feature row (cosine undefined: NaN in the code) has
  similarity 0 with every item; a row whose kept similarities sum to <= 0
  (NaN in the code) gets weight 0. Initialisation: the ID tables
  N(0, 0.1^2) (our lightgcn's; the code: xavier_uniform), W_m GlorotUniform,
  b_m zeros (the code: PyTorch's default Linear); d' = d for the projection
  (the code: feat_embed_dim = embed_size = 64).

Recomputed when (what the authors' code does: it rebuilds the learned
graphs on the FIRST batch of every epoch, with gradients to W_m and alpha
flowing on that step only, and reuses the graph, detached, for the epoch's
other batches; it rebuilds them again at every evaluation):
- the raw graphs: once, when the features are set (`set_item_features`);
- the learned graphs in training: every `graph_every` train steps
  (`--lattice_graph_every`; 0, the default, means once per pass over the
  train pairs, ceil(n_train / batch_size) steps: the authors' schedule;
  1 means every step). A rebuild stores them ([n_items, k] neighbour ids
  and weights per modality, `learned_neighbours_<m>`, `learned_weights_<m>`)
  and W_m gets its gradient through them on that step; the steps in between
  read the stored graphs with no gradient to W_m. alpha, the ID tables and
  the backbone get their gradients on every step (alpha is applied to the
  stored per-modality graphs, not baked into them: OURS);
- evaluation (`prepare_scoring`), `score_pairs`, `item_representation` and
  the export (`serving_tables`) rebuild the learned graphs from the current
  weights, as the code's evaluation, without touching the stored training
  graphs; the export bakes the final user and item tables in, so serving is
  a dot product of two stored tables, with no graph.

Memory: the kNN over all item pairs is computed by blocks of rows of the
similarity matrix, each [rows, n_items], the rows chosen so that a block
holds at most KNN_BUDGET_BYTES (64 MiB: 16.7M float32 similarities; on
Office, 2,406 items, one block; at 100k items, blocks of 167 rows); never
the full n_items x n_items matrix once it exceeds the budget. The kept
similarities are recomputed from the kept pairs ([n_items, k, d]), the path
of the gradient (see `knn_graph`). Each graph is held as [n_items, k]
neighbour ids and weights; A h is a gather of [n_items, k, d] rows where
that is at most 64 MB (Office: one), else a sum over the n_items k
entries by blocks with its own gradient (`edge_products.edge_sum`), so a
step does not keep every graph's gathered rows for its backward pass.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.errors import UsageError
from maml_tf.models import base
from maml_tf.models import edge_products
from maml_tf.models import graph
from maml_tf.models import lightgcn
from maml_tf.models import mf

KNN_BUDGET_BYTES = 64 * 2 ** 20  # one block of float32 similarities


def knn_block_rows(n_items, budget_bytes=KNN_BUDGET_BYTES):
  """Rows of the [rows, n_items] float32 similarity block within budget."""
  return max(1, min(int(n_items), int(budget_bytes) // (4 * int(n_items))))


def kept_similarities(unit, ids, neighbours):
  """[r, k] dot products of rows `unit` [r, f] with their neighbours' rows
  (`ids` [r, k] into `neighbours` [n, f])."""
  return tf.reduce_sum(unit[:, None, :] * tf.gather(neighbours, ids), -1)


def knn_graph(x, k, block_rows=None, differentiable=True):
  """Each row's k most cosine-similar rows of x [n, f] (itself included).

  Returns (neighbours [n, k] int32, similarities [n, k]), the neighbours in
  decreasing similarity (ties: the lower index first). The neighbours are
  chosen by blocks of `block_rows` rows (default: `knn_block_rows(n)`),
  each a [block_rows, n] product and its top k; no gradient passes through
  that selection. The kept similarities are then computed again as the dot
  products of the kept pairs ([n, k, f]), which is where the gradient to x
  flows: the same gradient as through the top k of the full product, and
  no loop to differentiate (XLA cannot compile the gradient of a loop
  inside the train step's conditional rebuild). `differentiable=False`
  (the raw graphs of fixed features) computes them inside the blocks
  instead, so no [n, k, f] tensor is formed (2 GB for 100k items of 512-d
  text and k = 10).
  """
  x = tf.convert_to_tensor(x, tf.float32)
  n = int(x.shape[0])
  rows = knn_block_rows(n) if block_rows is None else int(block_rows)
  unit = tf.math.l2_normalize(x, axis=1)
  fixed = tf.stop_gradient(unit)
  if rows >= n:
    ids = tf.math.top_k(tf.matmul(fixed, fixed, transpose_b=True), k).indices
  else:
    n_blocks = -(-n // rows)
    padded = tf.pad(fixed, [[0, n_blocks * rows - n], [0, 0]])
    blocks = tf.reshape(padded, [n_blocks, rows, -1])
    top = lambda b: tf.math.top_k(tf.matmul(b, fixed, transpose_b=True), k).indices  # noqa: E731
    if not differentiable:
      def block(b):
        ids = top(b)
        return ids, kept_similarities(b, ids, fixed)
      ids, sims = tf.map_fn(
          block, blocks, fn_output_signature=(tf.TensorSpec([rows, k], tf.int32),
                                              tf.TensorSpec([rows, k], tf.float32)))
      return tf.reshape(ids, [-1, k])[:n], tf.reshape(sims, [-1, k])[:n]
    ids = tf.map_fn(top, blocks, fn_output_signature=tf.TensorSpec([rows, k], tf.int32))
    ids = tf.reshape(ids, [-1, k])[:n]
  return ids, kept_similarities(unit, ids, unit)


def normalize_knn(neighbours, sims):
  """The entries of D^-1/2 S D^-1/2 for S held as (neighbours, sims) [n, k],
  D the row sums of S; a row whose sum is <= 0 gets 0."""
  degree = tf.reduce_sum(sims, 1)
  positive = degree > 0
  inv = tf.where(positive, tf.math.rsqrt(tf.where(positive, degree, 1.0)), 0.0)
  return sims * inv[:, None] * tf.gather(inv, neighbours)


def knn_product(neighbours, weights, h):
  """(A h)_i = sum_j A_ij h_j for A held as (neighbours, weights) [n, k].
  Past `edge_products.BLOCK_BYTES` of gathered [n, k, d] rows, the n k
  entries are an edge list summed by blocks (`edge_products.edge_sum`, its
  own blocked gradient), so a training step does not keep the gathered rows
  of each graph for its backward pass; below, the plain expression."""
  n, k = (int(x) for x in neighbours.shape)
  d = int(h.shape[-1])
  if n * k * d * 4 <= edge_products.BLOCK_BYTES:
    return tf.reduce_sum(weights[:, :, None] * tf.gather(h, neighbours), 1)
  rows = tf.repeat(tf.range(n, dtype=tf.int32), k)
  return edge_products.edge_sum(tf.reshape(weights, [-1]), h,
                                tf.reshape(neighbours, [-1]), rows, n)


@keras.saving.register_keras_serializable(package="maml_tf")
class LATTICE(lightgcn.TableCache, mf.MF):
  """LATTICE over a LightGCN backbone; see the module docstring.

  Call `set_item_features({modality: [n_items, d_m]})` after construction
  (it builds the raw graphs); the train edges come as `train_pairs` (or
  `set_train_edges`), which a model rebuilt from `get_config()` needs again.
  """

  NAME = "lattice"
  SCORING_ITEMS_TENSOR = "lattice_items"
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "l2_reg": ("float", 1e-6, 1e-2, "log"),
      "embed_dim": ("choice", [32, 64]),
      "lattice_knn_k": ("choice", [5, 10, 20]),
      "lattice_lambda": ("float", 0.5, 0.99, "linear"),
  }

  def __init__(self, n_users, n_items, modalities: Sequence[str] = (),
               feature_dims: Sequence[int] = (), train_pairs=None,
               gcn_layers=2, item_layers=1, knn_k=10, mix_lambda=0.9,
               graph_every=1, embed_dim=64, l2_reg=1e-5,
               init_stddev=mf.INIT_STDDEV, knn_block=None, seed=None, **kwargs):
    modalities, feature_dims = graph.check_modalities(
        modalities, feature_dims,
        "LATTICE mines item-item graphs from item content")
    gcn_layers = lightgcn.check_layers(gcn_layers)
    item_layers = graph.check_int("item_layers", item_layers, 1)
    knn_k = graph.check_int("knn_k", knn_k, 1)
    if knn_k > n_items:
      raise ValueError(f"`knn_k` must be <= n_items ({n_items}). Received: "
                       f"knn_k={knn_k}")
    if not 0.0 <= mix_lambda <= 1.0:
      raise ValueError(f"`mix_lambda` must be in [0, 1]. Received: "
                       f"mix_lambda={mix_lambda!r}")
    graph_every = graph.check_int("graph_every", graph_every, 1)
    if knn_block is not None:
      knn_block = graph.check_int("knn_block", knn_block, 1)
    super().__init__(n_users, n_items, embed_dim=embed_dim, l2_reg=l2_reg,
                     init_stddev=init_stddev, seed=seed, **kwargs)
    self.modalities, self.feature_dims = modalities, feature_dims
    self.gcn_layers, self.item_layers, self.knn_k = gcn_layers, item_layers, knn_k
    self.mix_lambda, self.graph_every = float(mix_lambda), graph_every
    self.knn_block = knn_block
    d, k = self.embed_dim, knn_k
    self.projections = {}
    for m, dm in zip(modalities, feature_dims):
      setattr(self, f"features_{m}", self.add_weight(
          shape=(self.n_items, dm), initializer="zeros", trainable=False,
          name=f"features_{m}"))
      for kind in ("raw", "learned"):
        setattr(self, f"{kind}_neighbours_{m}", self.add_weight(
            shape=(self.n_items, k), dtype="int32", initializer="zeros",
            trainable=False, name=f"{kind}_neighbours_{m}"))
        setattr(self, f"{kind}_weights_{m}", self.add_weight(
            shape=(self.n_items, k), initializer="zeros", trainable=False,
            name=f"{kind}_weights_{m}"))
      layer = keras.layers.Dense(
          d, kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
          bias_initializer="zeros", name=f"projection_{m}")
      layer.build((None, dm))
      self.projections[m] = layer
    self.modal_logits = self.add_weight(
        shape=(len(modalities),), initializer=keras.initializers.Constant(0.5),
        name="modal_logits")
    self.init_table_cache(d)
    self.adjacency = None
    self.features_set = False
    if train_pairs is not None:
      self.set_train_edges(train_pairs)
    self.finish_init()

  # ------------------------------------------------------------ setup
  def feature_table(self, modality):
    return getattr(self, f"features_{modality}")

  def graph_variables(self, kind, modality):
    """(neighbours, weights) variables of the "raw" or "learned" graph."""
    return (getattr(self, f"{kind}_neighbours_{modality}"),
            getattr(self, f"{kind}_weights_{modality}"))

  def set_train_edges(self, train_pairs):
    """The backbone's normalised train graph (LightGCN's)."""
    self.adjacency = lightgcn.normalized_adjacency(train_pairs, self.n_users,
                                                   self.n_items)
    self.after_restore()

  def set_item_features(self, features: Dict[str, np.ndarray]):
    """Stores the fixed features and builds each modality's raw graph and a
    first learned graph from them."""
    for m, x in graph.checked_features(features, self.modalities,
                                       self.feature_dims, self.n_items):
      self.feature_table(m).assign(x)
      ids, sims = knn_graph(x, self.knn_k, self.knn_block, differentiable=False)
      ids_v, weights_v = self.graph_variables("raw", m)
      ids_v.assign(ids)
      weights_v.assign(normalize_knn(ids, sims))
    self.store_learned(self.learned_graphs())
    self.features_set = True
    self.after_restore()

  # ------------------------------------------------------------ graphs
  def projected(self, modality):
    """x'^m = W_m x^m + b_m [n_items, d]."""
    return self.projections[modality](tf.convert_to_tensor(self.feature_table(modality)))

  def learned_graphs(self):
    """[(neighbours, weights)] per modality, built from the current W_m."""
    graphs = []
    for m in self.modalities:
      ids, sims = knn_graph(self.projected(m), self.knn_k, self.knn_block)
      graphs.append((ids, normalize_knn(ids, sims)))
    return graphs

  def store_learned(self, graphs):
    """Assigns the graphs to the learned-graph variables; returns them."""
    ops = []
    for m, (ids, weights) in zip(self.modalities, graphs):
      ids_v, weights_v = self.graph_variables("learned", m)
      ops += [ids_v.assign(ids), weights_v.assign(weights)]
    with tf.control_dependencies(ops):
      return [(tf.identity(i), tf.identity(w)) for i, w in graphs]

  def stored_learned(self):
    """The learned graphs of the last rebuild (no gradient)."""
    return [tuple(tf.stop_gradient(tf.convert_to_tensor(v))
                  for v in self.graph_variables("learned", m))
            for m in self.modalities]

  def training_graphs(self):
    """The learned graphs a train step uses: rebuilt (and stored) when the
    step count is a multiple of `graph_every`, else the stored ones."""
    if self.graph_every == 1:
      return self.learned_graphs()
    step = tf.convert_to_tensor(self.weights_version)
    return tf.cond(tf.equal(step % self.graph_every, 0),
                   lambda: self.store_learned(self.learned_graphs()),
                   self.stored_learned)

  def modal_weights(self):
    """alpha = softmax of the trained modality logits [M]."""
    return tf.nn.softmax(tf.convert_to_tensor(self.modal_logits))

  def item_convolution(self, learned):
    """h^{L'} = A^{L'} Q, A = sum_m alpha_m ((1 - lambda) learned^m +
    lambda raw^m), applied graph by graph."""
    alpha = self.modal_weights()
    lam = self.mix_lambda
    h = tf.convert_to_tensor(self.item_embeddings)
    for _ in range(self.item_layers):
      out = []
      for k, m in enumerate(self.modalities):
        raw_ids, raw_w = (tf.convert_to_tensor(v) for v in self.graph_variables("raw", m))
        ids, w = learned[k]
        mixed = (1.0 - lam) * knn_product(ids, w, h) + lam * knn_product(raw_ids, raw_w, h)
        out.append(alpha[k] * mixed)
      h = tf.add_n(out)
    return h

  def tables(self, learned):
    """(users, items) final tables with the given learned graphs."""
    if self.adjacency is None:
      raise ValueError("`train_pairs` must be given (LATTICE's LightGCN "
                       "backbone propagates over the train graph): call "
                       "set_train_edges(pairs). Received: train_pairs=None")
    users, items = lightgcn.propagate(
        self.adjacency, tf.convert_to_tensor(self.user_embeddings),
        tf.convert_to_tensor(self.item_embeddings), self.gcn_layers)
    h = self.item_convolution(learned)
    return users, items + tf.math.l2_normalize(h, axis=1)

  def final_tables(self):
    """The tables of evaluation and serving: learned graphs rebuilt."""
    return self.tables(self.learned_graphs())

  # ------------------------------------------------------------ loss
  def loss_terms(self, users, items, training=False):
    """BPR and the L2 on the batch's final rows; in training the learned
    graphs follow the rebuild schedule, otherwise they are rebuilt."""
    learned = self.training_graphs() if training else self.learned_graphs()
    users_t, items_t = self.tables(learned)
    u = tf.gather(users_t, users)
    q_pos, q_neg = tf.gather(items_t, items[:, 0]), tf.gather(items_t, items[:, 1])
    bpr = mf.bpr_loss(tf.reduce_sum(u * q_pos, -1), tf.reduce_sum(u * q_neg, -1))
    l2 = self.l2_reg * mf.batch_l2(u, q_pos, q_neg)
    return {"loss": bpr + l2, "bpr_loss": bpr, "l2_loss": l2}

  # ------------------------------------------------------------ scoring
  def scoring_ready(self):
    return self.adjacency is not None and self.features_set

  def describe(self):
    out = super().describe()
    out.update(modalities=list(self.modalities), gcn_layers=self.gcn_layers,
               item_layers=self.item_layers, knn_k=self.knn_k,
               mix_lambda=self.mix_lambda, graph_every=self.graph_every,
               modal_weights=[float(a) for a in self.modal_weights().numpy()])
    return out

  def get_config(self):
    config = super().get_config()
    config.update(modalities=list(self.modalities),
                  feature_dims=list(self.feature_dims), gcn_layers=self.gcn_layers,
                  item_layers=self.item_layers, knn_k=self.knn_k,
                  mix_lambda=self.mix_lambda, graph_every=self.graph_every,
                  knn_block=self.knn_block)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    reason = ("it mines item-item graphs from item content; without one "
              "use --model=lightgcn")
    base.require_content(config, dataset.features, cls.NAME, reason)
    if config.lattice_knn_k > dataset.n_items:
      raise UsageError(f"`--lattice_knn_k` must be <= the number of items "
                       f"({dataset.n_items}). Received: {config.lattice_knn_k}")
    every = config.lattice_graph_every or max(
        1, math.ceil(len(dataset.train) / config.batch_size))
    return graph.from_dataset(
        cls, config, dataset, reason, gcn_layers=config.gcn_layers,
        item_layers=config.lattice_item_layers, knn_k=config.lattice_knn_k,
        mix_lambda=config.lattice_lambda, graph_every=every)
