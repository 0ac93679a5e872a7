"""The serving graphs of an export: six signatures, each a plain-TensorFlow
function over the model's own `serve_*` methods (`ServingGraphs`);
`maml_tf.export.saved_model` writes them into a SavedModel.

Signatures (method `tensorflow/serving/predict`; ids are int64, scores
float32; k = `topk` and N = `retrieve_candidates` are fixed at export):

- `serving_default` (recommend): `user_ids` [B] -> `item_ids` [B, k],
  `scores` [B, k]. The model's full scoring of every item, the user's known
  items (train, plus validation when the run held some out) excluded; ties go
  to the lower item id; where a user has fewer than k unknown items the tail
  is item -1 with score -inf.
- `score`: `user_ids` [B], `item_ids` [B] -> `scores` [B] (known items not
  excluded) and, for a model with an explanation, that explanation under the
  model's `explanation_name` (e.g. `attention` [B, K], the pair's attention
  weights; see the model's module, and `export_info.json` for its name and
  column labels).
- `retrieve` (two-stage): a TFRS BruteForce index over the model's
  `retrieval_space` (plain Euclid over P and Q for the metric models, the
  dot product for the dot-product ones; `maml_tf.export.retrieval`) picks the N
  best unknown items, then the model's own score re-ranks them: `user_ids`
  [B] -> `item_ids` [B, k], `scores` [B, k] (the same scores as
  `serving_default`).

The same three by raw id (the user and item ids as written in the data
files, the Dataset's `user_ids` / `item_ids`, stored in a run's
`<workdir>/vocab/`; see `maml_tf.data.vocab`), keys tf.string:

- `recommend_by_id`: `user_keys` [B] -> `item_keys` [B, k] (raw item ids;
  "" in an empty slot), `item_ids` [B, k], `scores` [B, k]: exactly
  `serving_default`'s answer for the users' indices.
- `score_by_id`: `user_keys` [B], `item_keys` [B] -> `score`'s outputs.
- `retrieve_by_id`: `user_keys` [B] -> as `recommend_by_id`, from `retrieve`.

A dataset whose ids are integers (vocabulary None, the identity) has keys
str(index): "0", "1", ... The maps are `tf.lookup.StaticHashTable`s in the
graph (raw id -> index) and a string variable (index -> raw id). An unknown
key fails with InvalidArgumentError naming the input and the first unknown
key; it is never answered as another user. (The table's keys are constants
of the graph: a vocabulary of many millions of ids would approach the 2 GB
limit of a GraphDef.)

An id outside [0, n) fails inside the graph with InvalidArgumentError naming
the input, the rule and the range (checked before any cast or gather, so a
large int64 never wraps onto another user); an empty batch gives empty
outputs. Large batches run in blocks of users, so a request's memory stays
bounded.

The serving graphs are the model's own `serve_*` methods, plain TensorFlow
ops: nothing is reimplemented here. They must not go through XLA-compiled
kernels (`jit_compile=True` would put `_XlaMustCompile` clusters into the
SavedModel, which TF Serving's CPU build refuses unless started with the
experimental `--xla_cpu_compilation_enabled`).
"""

from __future__ import annotations

# Before keras / anything that could resolve tf.keras: see maml_tf/export/retrieval.py.
from maml_tf.export import retrieval  # pylint: disable=g-bad-import-order

import numpy as np
import tensorflow as tf

from maml_tf.evaluate import full_ranking
from maml_tf.evaluate import metrics as metrics_lib
from maml_tf.data import vocab as vocab_lib
from maml_tf.models.base import cache_item_chunk

INT_SIGNATURES = ("serving_default", "score", "retrieve")
# The same three by raw id (the strings of the data files): the int
# signature each one answers through.
BY_ID = {"recommend_by_id": "serving_default", "score_by_id": "score",
         "retrieve_by_id": "retrieve"}
SIGNATURES = INT_SIGNATURES + tuple(BY_ID)
KEY_DTYPE = tf.string
EMPTY_KEY = ""  # the item key of an empty slot (item id -1)
ID_DTYPE = tf.int64


# --------------------------------------------------------------- the graphs


def known_pairs(dataset) -> np.ndarray:
  """The (user, item) pairs a recommendation must not repeat: train + valid."""
  if len(dataset.valid):
    return np.concatenate([dataset.train, dataset.valid])
  return np.asarray(dataset.train)


def _check_ids(ids, name, upper):
  """ids as int32 once they are known to lie in [0, upper), else an error."""
  rule = f"`{name}` must be ids in [0, {upper})"
  checks = [
      tf.debugging.assert_non_negative(
          ids, message=f"{rule}; received a negative id"),
      tf.debugging.assert_less(
          ids, tf.constant(upper, ids.dtype),
          message=f"{rule}; received an id >= {upper}"),
  ]
  with tf.control_dependencies(checks):
    return tf.cast(tf.identity(ids), tf.int32)


def _key_table(keys, name):
  """A raw id -> index StaticHashTable over `keys` (index order), default -1."""
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(list(keys), KEY_DTYPE),
          tf.range(len(keys), dtype=ID_DTYPE)),
      default_value=-1, name=name)


def _lookup_keys(table, keys, name, kind):
  """int64 indices of raw ids, once all are known, else an error.

  The first unknown key is named in the error; it never becomes an index.
  """
  ids = table.lookup(keys)
  known = tf.greater_equal(ids, 0)
  check = tf.debugging.Assert(
      tf.reduce_all(known),
      [f"`{name}` must be known {kind} ids (the raw ids of the training data);"
       " received an unknown id:", tf.boolean_mask(keys, tf.logical_not(known))[:1]])
  with tf.control_dependencies([check]):
    return tf.identity(ids)


def _pad_columns(x, k, value):
  """Pads [B, m] (m <= k) on the right to [B, k]."""
  x = tf.pad(x, [[0, 0], [0, k - tf.shape(x)[1]]], constant_values=value)
  return tf.reshape(x, [-1, k])


class ServingGraphs:
  """The serving functions of one model (three by index, three by raw id),
  and the tables they need.

  Construction computes, in eager mode, everything that is fixed at serving
  time: the known items as a CSR, the model's `serving_tables()` (e.g. the
  attention's item half, propagated graph tables), the TFRS index over the
  model's `retrieval_space`. The methods are traced into the SavedModel;
  they compute through the model's plain-ops `serve_*` methods.

  Args:
    model: a `maml_tf.models.base.RankingModel`.
    dataset: its Dataset; train + valid pairs are the known items, its
      `user_ids` / `item_ids` (None = identity) the keys of the *_by_id
      signatures.
    topk: k of `recommend` and `retrieve`.
    retrieve_candidates: N, the candidates `retrieve` re-ranks.
    budget: the most floats a request's largest intermediate may hold
      (full scoring and re-ranking run over blocks of users to stay under).
    item_chunk: full scoring goes over the catalogue this many items at a time.
  """

  def __init__(self, model, dataset, topk=10, retrieve_candidates=200,
               budget=1 << 23, item_chunk=8192):
    if model.n_users != dataset.n_users or model.n_items != dataset.n_items:
      raise ValueError(
          f"`dataset` ({dataset.n_users} users, {dataset.n_items} items) does "
          f"not match `model` ({model.n_users} users, {model.n_items} items)")
    self.model = model
    self.n_users, self.n_items = model.n_users, model.n_items
    self.topk, self.n_candidates = int(topk), int(retrieve_candidates)
    indptr, items = metrics_lib.group_by_user(known_pairs(dataset), self.n_users)
    self.max_known = int(np.diff(indptr).max(initial=0))
    self.known_ptr = tf.Variable(indptr, trainable=False, name="known_indptr")
    self.known_items = tf.Variable(items.astype(np.int32), trainable=False,
                                   name="known_items")
    self.tables = {name: tf.Variable(value, trainable=False, name=f"serving_{name}")
                   for name, value in model.serving_tables().items()}
    # A request's largest tensors hold ~`budget` floats at most: full scoring
    # [users, item chunk, width], re-ranking [users, N, width].
    # A model with per-pair activations then scores in item chunks small
    # enough to keep them in cache (`cache_item_chunk`).
    width = max(1, int(model.serving_width))
    self.item_chunk = max(1, min(int(item_chunk), self.n_items))
    self.user_chunk = max(1, min(512, budget // (self.item_chunk * width)))
    pair_width = int(getattr(model, "pair_width", 0))
    self.item_chunk = cache_item_chunk(self.n_items, self.item_chunk,
                                       self.user_chunk, pair_width)
    if not pair_width:
      # Scores that are one product of tables hold [users, items] floats,
      # not x width: as many users as keep them in cache, at most 128. MF
      # at Clothing's size (23,033 items), 256 users a request: 82 / 55 /
      # 79 ms at 16 (the width rule) / 128 / 256 users a block.
      self.user_chunk = max(1, min(
          128, min(budget, full_ranking.SCORE_BLOCK_FLOATS) // self.n_items))
    self.retrieve_chunk = max(1, min(512, budget // (self.n_candidates * width)))
    metric, vectors = model.retrieval_space(self.tables)
    self.index = retrieval.build_index(np.asarray(vectors), metric=metric)
    # Raw ids: the Dataset's vocabularies (None = identity, keys str(index)).
    vocabs = vocab_lib.dataset_vocabs(dataset)
    self.identity = {kind: v.ids is None for kind, v in vocabs.items()}
    keys = {kind: [str(k) for k in v.raw_ids()] for kind, v in vocabs.items()}
    for kind, n in (("users", self.n_users), ("items", self.n_items)):
      if len(keys[kind]) != n:
        raise ValueError(f"`dataset` has {len(keys[kind])} raw {kind[:-1]} "
                         f"ids for {n} {kind}")
      if len(set(keys[kind])) != n:
        raise ValueError(f"`dataset` {kind[:-1]} raw ids must be unique")
    self.user_table = _key_table(keys["users"], "user_key_table")
    self.item_table = _key_table(keys["items"], "item_key_table")
    # index -> raw id, with the empty slot's key last (item -1 reads it).
    self.item_keys = tf.Variable(
        tf.constant(keys["items"] + [EMPTY_KEY], KEY_DTYPE), trainable=False,
        name="item_keys")

  # ------------------------------------------------------------- helpers
  def _known_lists(self, users):
    """[B, M + 1] sorted known items per user, padded with n_items."""
    start = tf.gather(self.known_ptr, users)
    length = tf.gather(self.known_ptr, users + 1) - start
    where = tf.ragged.range(start, start + length).flat_values
    ragged = tf.RaggedTensor.from_row_lengths(
        tf.gather(self.known_items, where), length)
    return tf.concat([ragged.to_tensor(default_value=self.n_items),
                      tf.fill([tf.shape(users)[0], 1], self.n_items)], 1)

  def _pairs(self, users, items):
    """(scores [...], explanation [..., E] or None) for users [B], items [B] / [B, N]."""
    return self.model.serve_pairs(self.tables, users, items)

  def _all_scores(self, users):
    """[b, n_items] scores of a block of users against every item."""
    item_chunk = None if self.item_chunk >= self.n_items else self.item_chunk
    return self.model.serve_items(self.tables, users, item_chunk)

  def _by_blocks(self, fn, users, block):
    """fn(users [b]) -> {name: [b, k]} over blocks of at most `block` users.

    Bounds the memory of a request whatever its batch size; blocks are of
    even size, so padding (with user 0) costs less than one user a block.
    """
    n = tf.shape(users)[0]
    n_blocks = tf.maximum((n + block - 1) // block, 1)
    size = (n + n_blocks - 1) // n_blocks
    blocks = tf.reshape(tf.pad(users, [[0, n_blocks * size - n]]), [n_blocks, size])
    spec = {"item_ids": tf.TensorSpec([None, self.topk], ID_DTYPE),
            "scores": tf.TensorSpec([None, self.topk], tf.float32)}
    out = tf.map_fn(fn, blocks, fn_output_signature=spec)
    return {name: tf.reshape(t, [-1, self.topk])[:n] for name, t in out.items()}

  def _best(self, scores, ids=None):
    """Top k of [B, m] scores (ids: [B, m] item ids, or None for columns)."""
    k = tf.minimum(self.topk, tf.shape(scores)[1])
    values, order = tf.math.top_k(scores, k=k)
    return self._output(values, order, ids)

  def _output(self, values, order, ids=None):
    """{item_ids, scores} [B, topk] from a top k's values and positions
    (ids: [B, m] item ids at those positions, or None: the positions are
    the items); -1 and -inf where a user has fewer unknown items."""
    items = order if ids is None else tf.gather(ids, order, batch_dims=1)
    empty = tf.equal(values, -float("inf"))
    items = tf.where(empty, tf.constant(-1, ID_DTYPE), tf.cast(items, ID_DTYPE))
    return {"item_ids": _pad_columns(items, self.topk, tf.constant(-1, ID_DTYPE)),
            "scores": _pad_columns(values, self.topk, -float("inf"))}

  def _recommend_block(self, users):
    # The catalogue's width, static for the blocked top k (a model scoring
    # by item chunks leaves it unknown in the graph).
    scores = tf.ensure_shape(self._all_scores(users), [None, self.n_items])
    known = tf.gather(self.known_ptr, tf.stack([users, users + 1], 1))
    where = tf.ragged.range(known[:, 0], known[:, 1])
    cells = tf.stack([tf.cast(where.value_rowids(), tf.int32),
                      tf.gather(self.known_items, where.flat_values)], 1)
    scores = tf.tensor_scatter_nd_update(
        scores, cells, tf.fill([tf.shape(cells)[0]], -float("inf")))
    return self._output(*full_ranking.top_k_by_blocks(
        scores, min(self.topk, self.n_items)))

  def _retrieve_block(self, users):
    queries = self.model.serve_queries(self.tables, users)
    first, candidates = retrieval.nearest_excluding(
        self.index, queries, self._known_lists(users), self.n_candidates)
    scores, _ = self._pairs(users, candidates)
    scores = tf.where(tf.equal(first, -float("inf")), -float("inf"), scores)
    return self._best(scores, candidates)

  # ---------------------------------------------------- the signatures
  def recommend(self, user_ids):
    """serving_default: top k unknown items by full attentive scoring."""
    users = _check_ids(user_ids, "user_ids", self.n_users)
    return self._by_blocks(self._recommend_block, users, self.user_chunk)

  def score(self, user_ids, item_ids):
    """score: -d(u, i) and the attention weights of each (user, item) pair."""
    same = tf.debugging.assert_equal(
        tf.size(user_ids), tf.size(item_ids),
        message="`user_ids` and `item_ids` must have the same length")
    with tf.control_dependencies([same]):
      users = _check_ids(user_ids, "user_ids", self.n_users)
      items = _check_ids(item_ids, "item_ids", self.n_items)
    scores, explanation = self._pairs(users, items)
    out = {"scores": scores}
    if explanation is not None:
      out[self.model.explanation_name] = explanation
    return out

  def retrieve(self, user_ids):
    """retrieve: N Euclidean candidates from the TFRS index, re-ranked."""
    users = _check_ids(user_ids, "user_ids", self.n_users)
    return self._by_blocks(self._retrieve_block, users, self.retrieve_chunk)

  # ------------------------------------------------ the same by raw id
  def _users_by_key(self, user_keys):
    return _lookup_keys(self.user_table, user_keys, "user_keys", "user")

  def _with_item_keys(self, out):
    """Adds `item_keys` [B, k] (raw ids; "" where item_ids is -1)."""
    ids = out["item_ids"]
    where = tf.where(tf.less(ids, 0), tf.constant(self.n_items, ID_DTYPE), ids)
    return {"item_keys": tf.gather(self.item_keys, where), **out}

  def recommend_by_id(self, user_keys):
    """recommend_by_id: serving_default, by and to raw ids."""
    return self._with_item_keys(self.recommend(self._users_by_key(user_keys)))

  def score_by_id(self, user_keys, item_keys):
    """score_by_id: score, for raw user and item ids."""
    same = tf.debugging.assert_equal(
        tf.size(user_keys), tf.size(item_keys),
        message="`user_keys` and `item_keys` must have the same length")
    with tf.control_dependencies([same]):
      users = self._users_by_key(user_keys)
      items = _lookup_keys(self.item_table, item_keys, "item_keys", "item")
    return self.score(users, items)

  def retrieve_by_id(self, user_keys):
    """retrieve_by_id: retrieve, by and to raw ids."""
    return self._with_item_keys(self.retrieve(self._users_by_key(user_keys)))

  def endpoints(self) -> dict:
    """{signature name: tf.function with its input signature}, the six
    signatures in their order (`serving_default` first)."""
    ids = lambda name: tf.TensorSpec([None], ID_DTYPE, name=name)
    keys = lambda name: tf.TensorSpec([None], KEY_DTYPE, name=name)
    specs = {"serving_default": (self.recommend, [ids("user_ids")]),
             "score": (self.score, [ids("user_ids"), ids("item_ids")]),
             "retrieve": (self.retrieve, [ids("user_ids")]),
             "recommend_by_id": (self.recommend_by_id, [keys("user_keys")]),
             "score_by_id": (self.score_by_id, [keys("user_keys"), keys("item_keys")]),
             "retrieve_by_id": (self.retrieve_by_id, [keys("user_keys")])}
    return {name: tf.function(fn, input_signature=spec, autograph=False)
            for name, (fn, spec) in specs.items()}

  def resources(self) -> list:
    """What the SavedModel must hold besides the variables its functions
    read: the raw-id lookup tables (resources, not variables)."""
    return [self.user_table, self.item_table]
