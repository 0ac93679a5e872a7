"""LightGCN (He et al., SIGIR 2020): BPR-MF whose scores come from tables
propagated over the user-item graph.

Nodes are the users (0..U-1) then the items (U..U+I-1); A is the bipartite
adjacency of the TRAIN pairs (duplicates counted once) and
A_hat = D^-1/2 A D^-1/2 with D the node degrees (a node without train
edges has no entries). With E^0 = [P; Q] (the "ego" tables):

  E^{l+1} = A_hat E^l,   E = mean(E^0, ..., E^L)     (L = `--gcn_layers`)

the mean being LightGCN's 1/(L+1) layer combination. Scores are
<e_u, e_i> from E; the loss is `mf.MF`'s: BPR on E, and the L2 on the
batch's rows of E^0, as LightGCN's code does.

How the product is computed (measured, not assumed): A_hat is held as a
`tf.sparse.SparseTensor` built once from the train pairs, but
`tf.sparse.sparse_dense_matmul` has no XLA kernel (tf2xla conversion fails)
and the train step is XLA-compiled; the same product as a gather of the
source rows, a scaling by the edge weights and `tf.math.unsorted_segment_sum`
onto the destination rows compiles, and on an Office-sized graph (7,280
nodes, 84k entries, d = 64, 3 layers, forward and backward) took 27 ms
under XLA against 82 ms for sparse_dense_matmul without it (2 shared CPU
cores). Propagation runs once per training step, over the whole graph.

Full-ranking evaluation does not propagate per chunk of users:
`prepare_scoring()` (the evaluator calls it, eagerly, before each
evaluation) stores the propagated tables in two non-trainable variables
that the compiled `score_items` reads (`ScoringCache`: a version counter
bumped by every train step makes `score_items` recompute if the cache is
stale, so it is never read out of date after training). `score_pairs` and
`serving_tables` propagate afresh; the export bakes the propagated tables in, so no graph is
needed at serving time.

`propagate` and `normalized_adjacency` are shared with MARIO's LightGCN
backbone.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from maml_tf.models import mf
from maml_tf.models.edge_products import weighted_sum


def normalized_adjacency(train_pairs, n_users, n_items) -> tf.sparse.SparseTensor:
  """A_hat = D^-1/2 A D^-1/2 [U + I, U + I] of the (user, item) train pairs."""
  pairs = np.unique(np.asarray(train_pairs, np.int64).reshape(-1, 2), axis=0)
  if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= n_users or
                     pairs[:, 1].max() >= n_items):
    raise ValueError(f"`train_pairs` must be (user, item) ids in [0, {n_users}) "
                     f"x [0, {n_items}). Received: max user {pairs[:, 0].max()}, "
                     f"max item {pairs[:, 1].max()}")
  users, items = pairs[:, 0], pairs[:, 1] + n_users
  n = n_users + n_items
  deg = np.bincount(np.concatenate([users, items]), minlength=n).astype(np.float64)
  weight = 1.0 / np.sqrt(deg[users] * deg[items])
  rows = np.concatenate([users, items])
  cols = np.concatenate([items, users])
  values = np.concatenate([weight, weight]).astype(np.float32)
  order = np.lexsort((cols, rows))
  indices = np.stack([rows[order], cols[order]], 1)
  return tf.sparse.SparseTensor(indices, values[order], [n, n])


# At most this many bytes in one [entries, d] block of `sparse_product`.
PRODUCT_CHUNK_BYTES = 64 << 20


def sparse_product(adjacency, x, values=None):
  """A x for a SparseTensor A [n, m] and dense x [m, d], XLA-compilable:
  sum over the entries (r, c, w) of w x[c] into row r. `values` [entries],
  in the order of A's indices, replace A's own (NGCF's node dropout): pass
  them here rather than a new SparseTensor built inside a traced function,
  whose indices would be symbolic and take the one-block path whatever the
  graph's size.

  The gathered rows w x[c] are a block [entries, d]; where that block would
  exceed `PRODUCT_CHUNK_BYTES` (a 100k-item graph: 3.4M entries x 64 floats
  = 870 MB, in the forward and again in the backward pass), a loop sums
  blocks of entries under that budget one at a time into the result (a loop,
  so that XLA keeps one block alive: unrolled blocks it schedules together),
  and the gradient is the same blocked product with A's transpose (a custom
  gradient: a loop's autodiff would keep every block). A's values are
  constants there: no gradient flows to them. Measured at the benchmark's
  100k-item size (LightGCN, 3 layers, d = 64, XLA, one thread, a shared
  machine): the training steps' peak RSS rose ~1,030 MB above the built
  model's, against 1,530 MB in one block, and the eager propagation before
  each evaluation no longer peaks at 2.9 GB; the step took 2.6 s against
  2.8 s. Smaller graphs take the one-block path, unchanged.
  """
  if values is None:
    values = adjacency.values
  plan = _block_plan(adjacency, x.shape[-1])
  if plan is None:
    rows, cols = adjacency.indices[:, 0], adjacency.indices[:, 1]
    contrib = tf.gather(x, cols) * values[:, None]
    return tf.math.unsorted_segment_sum(contrib, rows, adjacency.dense_shape[0])
  forward, backward = plan

  @tf.custom_gradient
  def product(x):
    def grad(dy):
      return _blocked_product(dy, backward, values)
    return _blocked_product(x, forward, values), grad

  return product(x)


def _block_plan(adjacency, d):
  """None for the one-block path, else the plans of A and of its transpose
  (`_one_plan`), built once per graph and kept."""
  indices = adjacency.indices
  if d is None or not hasattr(indices, "numpy"):  # symbolic: no plan
    return None
  per_block = max(1, PRODUCT_CHUNK_BYTES // (4 * int(d)))
  if int(indices.shape[0]) <= per_block:
    return None
  key = (id(indices), per_block)
  if key not in _PLANS:  # the indices kept with it: their id stays theirs
    idx = indices.numpy()
    shape = [int(v) for v in adjacency.dense_shape.numpy()]
    with tf.init_scope():  # eager constants, usable from every later trace
      _PLANS[key] = (indices, (
          _one_plan(idx[:, 0], idx[:, 1], shape[0], per_block),
          _one_plan(idx[:, 1], idx[:, 0], shape[1], per_block)))
  return _PLANS[key][1]


_PLANS = {}  # (id(indices), entries a block) -> (indices, plans)


def _one_plan(dst, src, n, per_block):
  """(dst, src) [blocks, per_block] int32, the last block padded with
  entries (0, 0) that `_blocked_product` weighs 0, and n."""
  blocks = -(-len(dst) // per_block)
  pad = blocks * per_block - len(dst)
  shaped = lambda a: tf.constant(np.pad(a, (0, pad)).astype(np.int32)  # noqa: E731
                                 .reshape(blocks, per_block))
  return shaped(dst), shaped(src), int(n)


def _blocked_product(x, plan, values):
  """One block of entries at a time in a loop (a loop keeps one block's
  [per_block, d] alive, under XLA too), summed into the [n, d] result."""
  dst, src, n = plan
  pad = tf.size(dst) - tf.size(values)
  weights = tf.reshape(tf.pad(values, [[0, pad]]), tf.shape(dst))
  return weighted_sum(weights, x, src, dst, n)


def propagate(adjacency, users, items, layers):
  """LightGCN's final tables from the ego tables users [U, d], items [I, d]:
  mean over l = 0..L of A_hat^l [users; items], split back."""
  x = tf.concat([users, items], 0)
  total = x
  for _ in range(int(layers)):
    x = sparse_product(adjacency, x)
    total = total + x
  final = total / float(int(layers) + 1)
  n_users = tf.shape(users)[0]
  return final[:n_users], final[n_users:]


class ScoringCache:
  """Mixin for a `RankingModel` whose full-ranking scoring reads tensors
  derived from its weights (propagated tables, an attention's item half),
  stored in variables by `store_scoring(tables)`.

  A counter bumped after every train step (`weights_version`) and the value
  it had when the cache was stored (`cache_version`) tell whether the cache
  is current; `cached_scoring(variables, compute, use)` applies `use` to the
  cache when it is and else to tables computed and stored afresh (inside
  the compiled `score_items` too), so a stale cache is never read after
  training. The evaluator calls `prepare_scoring()` eagerly first, so in an
  evaluation every chunk of users reads the cache. Weights assigned by hand
  (not through a train step or a checkpoint restore) need
  `prepare_scoring()`.
  """

  def init_scoring_cache(self):
    # ONLY_FIRST_REPLICA: a replica-context update under tf.distribute.
    self.weights_version = self.add_weight(
        shape=(), dtype="int64", initializer="zeros", trainable=False,
        aggregation="only_first_replica", name="weights_version")
    self.cache_version = self.add_weight(
        shape=(), dtype="int64", initializer=keras.initializers.Constant(-1),
        trainable=False, aggregation="only_first_replica", name="cache_version")

  def train_step(self, data):
    logs = super().train_step(data)
    self.weights_version.assign_add(1)
    return logs

  def store_scoring(self, variables, tables):
    """Assigns tables to the cache variables (same structure); returns
    the tables once stored."""
    ops = [v.assign(t) for v, t in zip(tf.nest.flatten(variables),
                                       tf.nest.flatten(tables))]
    ops.append(self.cache_version.assign(tf.convert_to_tensor(self.weights_version)))
    with tf.control_dependencies(ops):
      return tf.nest.map_structure(tf.identity, tables)

  def cached_scoring(self, variables, compute, use):
    """use(tables) on the cache when current, else on compute(), stored.

    `use` runs inside each branch, so the branches return its (small)
    result: a branch that returned the tables themselves would have XLA
    copy them out of the conditional on every call (measured at 100k
    items x 256 floats: 221 against 19 ms a chunk of 17 users)."""
    read = lambda: use(tf.nest.map_structure(tf.convert_to_tensor, variables))  # noqa: E731
    fresh = lambda: use(self.store_scoring(variables, compute()))  # noqa: E731
    return tf.cond(tf.equal(tf.convert_to_tensor(self.cache_version),
                            tf.convert_to_tensor(self.weights_version)), read, fresh)


class TableCache(ScoringCache):
  """`ScoringCache` of a dot-product model whose `score_items` reads the
  two tables of `final_tables()`: users [n_users, width] and items
  [n_items, width], cached in `scoring_users` and `scoring_items`.

  `init_table_cache(width)` makes the variables; `scoring_ready()` says
  whether `final_tables()` can run yet (the graph or the features set), and
  `after_restore` refreshes the cache only then.
  """

  SCORING_ITEMS_TENSOR = "propagated_items"  # its name in the projector

  def init_table_cache(self, width):
    # The eval-mode tables `score_items` reads, refreshed by prepare_scoring.
    self.scoring_users = self.add_weight(
        shape=(self.n_users, width), initializer="zeros", trainable=False,
        name="scoring_users")
    self.scoring_items = self.add_weight(
        shape=(self.n_items, width), initializer="zeros", trainable=False,
        name="scoring_items")
    self.init_scoring_cache()

  def scoring_ready(self):
    """Whether `final_tables()` has what it needs (default: the graph)."""
    return self.adjacency is not None

  def with_scoring_tables(self, use):
    return self.cached_scoring((self.scoring_users, self.scoring_items),
                               self.final_tables, use)

  def prepare_scoring(self):
    self.store_scoring((self.scoring_users, self.scoring_items),
                       self.final_tables())

  def after_restore(self):
    if self.scoring_ready():
      self.prepare_scoring()

  def projector_tensors(self):
    tensors = super().projector_tensors()
    tensors[self.SCORING_ITEMS_TENSOR] = self.scoring_items
    return tensors

  def table_bpr(self, tables, users, items):
    """(BPR of item column 0 against column 1 on the final `tables`, the
    batch's rows of the ID tables: users, positives, negatives).

    `tables`: (users [n_users, w], items [n_items, w]), or one node table
    [n_users + n_items, w] (users first) read at the items' offset: its
    gradient is one scatter into the node table, where slicing it into two
    tables first made XLA keep a padded [nodes, w] gradient per slice (two
    such blocks at NGCF's 256-wide tables' peak)."""
    pos, neg = items[:, 0], items[:, 1]
    if isinstance(tables, (tuple, list)):
      users_t, items_t = tables
      offset = 0
    else:
      users_t, items_t, offset = tables, tables, self.n_users
    u = tf.gather(users_t, users)
    bpr = mf.bpr_loss(tf.reduce_sum(u * tf.gather(items_t, pos + offset), -1),
                      tf.reduce_sum(u * tf.gather(items_t, neg + offset), -1))
    rows = [tf.gather(self.user_embeddings, users),
            tf.gather(self.item_embeddings, pos),
            tf.gather(self.item_embeddings, neg)]
    return bpr, rows


def check_layers(gcn_layers):
  if isinstance(gcn_layers, bool) or int(gcn_layers) != gcn_layers or gcn_layers < 1:
    raise ValueError(f"`gcn_layers` must be an integer >= 1. Received: "
                     f"gcn_layers={gcn_layers!r}")
  return int(gcn_layers)


@keras.saving.register_keras_serializable(package="maml_tf")
class LightGCN(TableCache, mf.MF):
  """BPR-MF over LightGCN's propagated tables.

  `train_pairs` ([n, 2] user, item) are the graph's edges; a model rebuilt
  from `get_config()` (which does not hold the graph) needs
  `set_train_edges(pairs)` before it scores or trains.
  """

  NAME = "lightgcn"
  SEARCH_SPACE = {
      "learning_rate": ("float", 1e-4, 1e-2, "log"),
      "l2_reg": ("float", 1e-6, 1e-2, "log"),
      "embed_dim": ("choice", [32, 64, 128]),
      "gcn_layers": ("int", 1, 4),
  }

  def __init__(self, n_users, n_items, train_pairs=None, gcn_layers=3,
               embed_dim=64, l2_reg=1e-4, init_stddev=mf.INIT_STDDEV, seed=None,
               **kwargs):
    gcn_layers = check_layers(gcn_layers)
    super().__init__(n_users, n_items, embed_dim=embed_dim, l2_reg=l2_reg,
                     init_stddev=init_stddev, seed=seed, **kwargs)
    self.gcn_layers = gcn_layers
    self.adjacency = None
    self.init_table_cache(self.embed_dim)
    if train_pairs is not None:
      self.set_train_edges(train_pairs)
    self.finish_init()

  def set_train_edges(self, train_pairs):
    """Builds A_hat from the train pairs (once) and refreshes the cache."""
    self.adjacency = normalized_adjacency(train_pairs, self.n_users, self.n_items)
    self.prepare_scoring()

  def final_tables(self):
    if self.adjacency is None:
      raise ValueError("`train_pairs` must be given (LightGCN propagates over "
                       "the train graph): call set_train_edges(pairs). "
                       "Received: train_pairs=None")
    return propagate(self.adjacency, tf.convert_to_tensor(self.user_embeddings),
                     tf.convert_to_tensor(self.item_embeddings), self.gcn_layers)

  def describe(self):
    out = super().describe()
    out.update(gcn_layers=self.gcn_layers)
    return out

  def get_config(self):
    config = super().get_config()
    config.update(gcn_layers=self.gcn_layers)
    return config

  @classmethod
  def from_run_config(cls, config, dataset):
    return cls(dataset.n_users, dataset.n_items, train_pairs=dataset.train,
               gcn_layers=config.gcn_layers, embed_dim=config.embed_dim,
               l2_reg=config.l2_reg, seed=config.seed, name="lightgcn")
