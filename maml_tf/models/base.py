"""`RankingModel`: what every recommender of this package shares.

A model is a `keras.Model` over two embedding tables, users P [n_users, d]
and items Q [n_items, d] (`TableEmbedding` layers, optionally clipped to a
ball after every update). A subclass adds only its own scoring and loss
terms; everything else (sampler, training loop, evaluation, checkpoints,
TensorBoard, export) talks to this interface and never to a particular
model:

- `loss_terms(users, items, training)` -> {name: scalar}, "loss" the total.
  The batch is `(users [B], items [B, 1 + W])`, the positive item in column
  0 and W sampled negatives after it (`maml_tf.data.sampler`).
- `score_items(users, item_chunk)` -> [U, n_items], for full-ranking
  evaluation (may use XLA kernels; it is compiled by the evaluator).
- `score_pairs(users, items, explain=False)` -> scores [B, C] of users [B]
  against their own items [B, C]; with `explain`, (scores, explanation) for
  items [B]: the model's per-pair explanation ([B, E], see
  `explanation_name` / `explanation_labels`) or None.
- Serving (`maml_tf.export.signatures`): `serving_tables()` computes, eagerly, every
  tensor that is constant at serving time (e.g. LightGCN's propagated
  tables, MAML's item half of the attention); `serve_items(t, users)`,
  `serve_pairs(t, users, items)` and `serve_queries(t, users)` compute from
  those tables with plain TensorFlow ops (no XLA clusters, which TF
  Serving's CPU build refuses); `retrieval_space(t)` names the geometry of
  the first stage of two-stage retrieval ("euclidean" or "dot") and its
  item vectors.

The short `train_step` is shared: gradients of the total, dense (as the
MAML release's whole-table loss terms make them), one optimizer update,
after which Keras applies each table's constraint. Under tf.distribute each
replica holds 1/n of the global batch and the optimizer sums the replicas'
gradients: terms summed over the batch (`BATCH_SUM_TERMS`) add up as they
are; every other term (a mean over the batch, or a whole-table term) is
divided by n on each replica, so the summed gradient is one device's
gradient on the global batch.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import keras
import tensorflow as tf

from maml_tf.errors import UsageError
from maml_tf.models import layers as layers_lib

# Floats of per-pair activations one block of pairs may hold (4 MB): a block
# that stays in the CPU's cache between a per-pair network's layers. A
# catalogue-wide block (132 MB for MAML at Office's size) makes scoring wait
# on memory, 3x slower (docs/speed.md, "Per-pair activations in cache").
PAIR_CACHE_FLOATS = 1 << 20


def cache_item_chunk(n_items, item_chunk, users, pair_width,
                     cache=PAIR_CACHE_FLOATS):
  """Items per chunk for `users` users at a time: `item_chunk` (at most the
  catalogue), or, for a model with per-pair activations (`pair_width` floats
  a pair) where that is more, the equal chunks that keep users x items x
  pair_width <= ~cache (8 items at least)."""
  item_chunk = max(1, min(int(item_chunk), n_items))
  if pair_width:
    most = max(8, cache // (max(1, users) * pair_width))
    if most < item_chunk:
      n_chunks = -(-n_items // most)
      return -(-n_items // n_chunks)
  return item_chunk


def map_item_chunks(block, item_tensors, n_items, chunk=None):
  """Scores [U, n_items] from `block`, run on the catalogue chunk by chunk.

  `item_tensors` are per-item tensors [n_items, ...], padded to whole chunks
  of `chunk` items (default: one chunk); `block(chunk_tensors)` returns the
  [U, chunk] scores of one chunk. Memory stays at one chunk's intermediates.
  """
  chunk = chunk or n_items
  n_chunks = -(-n_items // chunk)
  pad = n_chunks * chunk - n_items

  def split(t):
    t = tf.pad(t, [[0, pad]] + [[0, 0]] * (len(t.shape) - 1))
    return tf.reshape(t, [n_chunks, chunk] + t.shape[1:].as_list())

  scores = tf.map_fn(block, tuple(split(t) for t in item_tensors),
                     fn_output_signature=tf.float32)
  scores = tf.reshape(tf.transpose(scores, [1, 0, 2]), [tf.shape(scores)[1], -1])
  return scores[:, :n_items]


def check_positive(name, value, integer=False, allow_zero=False):
  """Raises ValueError "`name` must be > 0. Received: name=value"."""
  ok = value >= 0 if allow_zero else value > 0
  if integer and int(value) != value:
    ok = False
  if not ok:
    rule = ">= 0" if allow_zero else "> 0"
    kind = "an integer " if integer else ""
    raise ValueError(f"`{name}` must be {kind}{rule}. Received: {name}={value!r}")


def require_content(config, present, model, reason):
  """Refuses `--model=model` without a content modality (`present` false):
  one UsageError naming `--modalities`, the reason and the value."""
  if not present:
    raise UsageError(
        "`--modalities` must name at least one content modality with "
        f"--model={model} ({reason}). Received: "
        f"{','.join(config.modalities or ())!r}")


class RankingModel(keras.Model):
  """Base of every model: the two tables, the train step, the interface.

  Class attributes a subclass sets:
    BATCH_SUM_TERMS: loss terms that are sums over the batch (see above).
    SEARCH_SPACE: {flag: spec} the tuner searches for this model, spec one
      of ("float", lo, hi, "log"|"linear"), ("int", lo, hi),
      ("choice", [values]).
    explanation_name: the `score` signature's name for the explanation.
  """

  BATCH_SUM_TERMS: Sequence[str] = ()
  SEARCH_SPACE: Dict[str, tuple] = {}
  explanation_name = "attention"

  def __init__(self, n_users, n_items, embed_dim=64, clip_norm=None,
               init_stddev=None, seed=None, **kwargs):
    super().__init__(**kwargs)
    check_positive("n_users", n_users, integer=True)
    check_positive("n_items", n_items, integer=True)
    check_positive("embed_dim", embed_dim, integer=True)
    if clip_norm is not None:
      check_positive("clip_norm", clip_norm)
    self.n_users, self.n_items = int(n_users), int(n_items)
    self.embed_dim = int(embed_dim)
    self.clip_norm = None if clip_norm is None else float(clip_norm)
    self.seed = seed
    stddev = 1.0 / math.sqrt(self.embed_dim) if init_stddev is None else float(init_stddev)
    # One generator for both tables, users drawn first (the MAML release's
    # order); other layers of a model take `seed` itself.
    seeds = keras.random.SeedGenerator(seed) if seed is not None else None
    self.table_seeds = seeds  # tracked by Keras: checkpointed with the model
    self.user_table = layers_lib.TableEmbedding(
        self.n_users, self.embed_dim, stddev=stddev, clip_norm=self.clip_norm,
        seed=seeds, name="user_embeddings")
    self.item_table = layers_lib.TableEmbedding(
        self.n_items, self.embed_dim, stddev=stddev, clip_norm=self.clip_norm,
        seed=seeds, name="item_embeddings")
    self.user_table.build()
    self.item_table.build()

  def finish_init(self):
    """Call at the end of a subclass's __init__: trackers, built."""
    self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}
    self.built = True

  # ------------------------------------------------------------ tables
  def table_variables(self):
    """The user and item tables: what --network_lr_scale leaves at
    --learning_rate (every other trained weight is scaled)."""
    return [self.user_embeddings, self.item_embeddings]

  @property
  def user_embeddings(self):
    return self.user_table.embeddings

  @property
  def item_embeddings(self):
    return self.item_table.embeddings

  @property
  def model_kind(self) -> str:
    """The registry name of this model (the `--model` flag)."""
    return getattr(type(self), "NAME", type(self).__name__.lower())

  # ------------------------------------------------------------ interface
  @property
  def loss_names(self):
    return ["loss"]

  @property
  def score_width(self) -> int:
    """Floats held per (user, item) pair by `score_items` (chunk sizing)."""
    return self.embed_dim

  @property
  def compiles_whole_step(self) -> bool:
    """Whether `--jit_compile` compiles the whole train step with XLA; a
    model whose fast path compiles its own kernels may run faster without."""
    return True

  @property
  def pair_width(self) -> int:
    """Floats `score_items` materialises per (user, item) pair beyond its
    score (a per-pair network's activations); 0 when the scores are one
    product of tables. Evaluation sizes its item chunks by it, to keep those
    activations in cache."""
    return 0

  @property
  def explains(self) -> bool:
    """Whether `score_pairs(..., explain=True)` has a meaningful explanation."""
    return False

  @property
  def explanation_labels(self) -> Optional[Sequence[str]]:
    """Names of the explanation's columns when they are named (e.g. the
    modalities); None when they are positions (K dimensions, N slots)."""
    return None

  @property
  def metrics(self):
    return list(self.trackers.values())

  def loss_terms(self, users, items, training=False) -> Dict[str, tf.Tensor]:
    raise NotImplementedError

  def score_items(self, users, item_chunk=None):
    raise NotImplementedError

  def score_pairs(self, users, items, explain=False):
    raise NotImplementedError

  def call(self, inputs, training=False):
    """Scores of (users [B], items [B, N]) -> [B, N]."""
    users, items = inputs
    return self.score_pairs(users, items)

  def after_restore(self):
    """Recomputes what derives from restored weights (a checkpoint holds
    the weights only)."""

  def prepare_scoring(self):
    """Called eagerly before each full-ranking evaluation (`score_items`).

    A model whose scoring needs tensors derived from its weights (LightGCN's
    propagated tables, MARIO's item half of the attention) recomputes them
    here, once, instead of once per chunk of users inside the compiled
    `score_items`. The default does nothing."""

  def diagnostics(self, pairs) -> Dict[str, float]:
    """Scalars about the model's state measured every evaluation round on a
    fixed sample of train pairs [n, 2] (metrics.jsonl's "diagnostics",
    TensorBoard's `diagnostics/<name>`); {} (nothing recorded) by default."""
    del pairs
    return {}

  def item_representation(self) -> tf.Tensor:
    """The model's final item embeddings [n_items, d] (e.g. for measuring
    how well they preserve the item features): the item table by default."""
    return tf.convert_to_tensor(self.item_embeddings)

  def projector_tensors(self) -> Dict[str, object]:
    """Item-indexed tables shown in TensorBoard's projector: variables, or
    tensors computed on each call (saved through copies at each round)."""
    return {"item_embeddings": self.item_embeddings}

  def describe(self) -> Dict[str, object]:
    """Facts about the model recorded beside an export."""
    return {"model": self.model_kind, "n_users": self.n_users,
            "n_items": self.n_items, "embed_dim": self.embed_dim}

  # ------------------------------------------------------------ serving
  def serving_tables(self) -> Dict[str, tf.Tensor]:
    """Tensors constant at serving time (computed eagerly, stored)."""
    return {"users": tf.convert_to_tensor(self.user_embeddings),
            "items": tf.convert_to_tensor(self.item_embeddings)}

  def serve_items(self, tables, users, item_chunk=None):
    """[b, n_items] scores from `serving_tables()` with plain ops."""
    raise NotImplementedError

  def serve_pairs(self, tables, users, items):
    """(scores [B] or [B, N], explanation [B, E] or None) from the tables."""
    raise NotImplementedError

  def serve_queries(self, tables, users):
    """The retrieval query vectors of users [b]."""
    return tf.gather(tables["users"], users)

  def retrieval_space(self, tables):
    """("euclidean" | "dot", item vectors [n_items, d]) of the first stage."""
    return "dot", tables["items"]

  @property
  def serving_width(self) -> int:
    """Floats a serving request holds per (user, item) pair."""
    return self.score_width

  # ------------------------------------------------------------ training
  def train_step(self, data):
    # (users, items) from the sampler; (x, y, sample_weight) from
    # train_on_batch(users, items).
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    users, items = x if y is None else (x, y)
    n = tf.distribute.get_replica_context().num_replicas_in_sync
    with tf.GradientTape() as tape:
      terms = self.loss_terms(users, items, training=True)
      objective = terms["loss"]
      if n > 1:
        summed = [terms[k] for k in self.BATCH_SUM_TERMS if k in terms]
        local = tf.add_n(summed) if summed else 0.0
        objective = local + (terms["loss"] - local) / n
    variables = self.trainable_variables
    grads = tape.gradient(objective, variables)
    if n > 1:
      # Reported values are averaged over replicas: n x a replica's batch
      # sum averages to the global sum.
      for k in self.BATCH_SUM_TERMS:
        if k in terms:
          terms[k] = terms[k] * n
      terms["loss"] = tf.add_n([v for k, v in terms.items() if k != "loss"])
    grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
             for g, v in zip(grads, variables)]
    self.optimizer.apply(grads, variables)
    for name, value in terms.items():
      self.trackers[name].update_state(value)
    logs = {name: tracker.result() for name, tracker in self.trackers.items()}
    if isinstance(tf.distribute.get_strategy(),
                  tf.distribute.MultiWorkerMirroredStrategy):
      # Keras averages the logs over all workers' replicas with a reduce
      # along axis 0, which needs at least one dimension: one value each.
      logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    # Under a tf.distribute strategy Keras's fit() first averages one input
    # batch over the replicas to build the model symbolically; that reduce
    # fails under MultiWorkerMirroredStrategy for integer batches. These
    # models build every layer at construction, so there is nothing to infer
    # from data: only the optimizer is left to build.
    if all(layer.built for layer in self._flatten_layers()):
      iterator, data_batch = None, None
    return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

  # ------------------------------------------------------------ config
  def base_config(self) -> dict:
    return {"n_users": self.n_users, "n_items": self.n_items,
            "embed_dim": self.embed_dim, "seed": self.seed, "name": self.name}

