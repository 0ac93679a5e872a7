"""Full-ranking top-k evaluation, the paper's protocol (docs/spec.md §5).

For every user with at least one target (test or validation) item: score all
|I| items, drop the items the user is known to have (train, plus validation
when the target is test), take the top k. With hits = target items among
them: Recall = hits / |target_u|, Precision = hits / k, HR = [hits > 0],
NDCG = DCG / IDCG with binary gains, DCG = sum over hit positions (0-based,
after dropping) of 1 / log2(pos + 2), IDCG over the first min(|target_u|, k)
positions. Metrics are averaged over users and kept as fractions (the paper
prints them x100).

Ties in score go to the lower item id (`tf.math.top_k`'s rule).

The hits need only each target's position: where users have few targets
for the catalogue's size, the evaluator counts the unseen items ranked
above each target instead of taking a top k (`ranks_targets`), with the
same values. A large catalogue's top k is taken by blocks of items (`top_k_by_blocks`):
`tf.math.top_k`'s answer, ties included, in a fraction of its time; the
evaluator takes the block maxima inside its compiled scoring.
"""

from __future__ import annotations

import contextlib
from typing import Dict

import keras
import numpy as np
import tensorflow as tf
from maml_tf.evaluate.metrics import (Targets, group_by_user, hit_metrics,
                                     hits, mean_metrics)
from maml_tf.models.base import cache_item_chunk


# Items a block in `top_k_by_blocks`. Measured inside the evaluator's
# compiled scoring (273 users x 23,033 items a chunk, MF at Clothing's size,
# a whole evaluation): 3.5 / 3.4 / 3.0 / 5.5 / 7.7 s at blocks of 4 / 8 / 16
# / 32 / 64 items, against 6.0 s for the scatter and blocks of 128 outside
# XLA before (2026-12-07, a probe not in the repository).
TOPK_BLOCK = 16


# ids of the models inside `same_weights`: their scoring is prepared.
_PREPARED = set()


@contextlib.contextmanager
def same_weights(models):
  """Evaluations inside share one `prepare_scoring()` per model: the caller
  promises the weights do not change inside (a round evaluates validation
  and test on the same weights). Each evaluation outside prepares its own
  (the tables derived from the weights: LightGCN's propagation, LATTICE's
  learned kNN graphs, 5.5 minutes at 100k items)."""
  entered = []
  try:
    for model in models:
      if id(model) not in _PREPARED:
        model.prepare_scoring()
        _PREPARED.add(id(model))
        entered.append(id(model))
    yield
  finally:
    _PREPARED.difference_update(entered)


def prepare(model) -> None:
  """`model.prepare_scoring()`, unless inside `same_weights` of it."""
  if id(model) not in _PREPARED:
    model.prepare_scoring()


def blocked(n_items, k, block=TOPK_BLOCK) -> bool:
  """Whether the top k of `n_items` scores goes by blocks: only past 2 x k
  blocks' items (below that, the plain top k is as fast)."""
  return n_items > 2 * k * block


def score_blocks(scores, block=TOPK_BLOCK):
  """Scores [U, n] as [U, ceil(n / block), block]: blocks of `block`
  consecutive items, the last one padded with -inf. It compiles with XLA,
  where it fuses with what made the scores."""
  n = scores.shape[-1]
  n_blocks = -(-n // block)
  padded = tf.pad(scores, [[0, 0], [0, n_blocks * block - n]],
                  constant_values=-np.inf)
  return tf.reshape(padded, [-1, n_blocks, block])


def top_k_of_blocks(blocks, maxima, k):
  """`tf.math.top_k(scores, k)` of scores [U, n], given as their
  `score_blocks` [U, n_blocks, block] and those blocks' maxima [U, n_blocks]
  (`tf.reduce_max(blocks, -1)`, taken where the scores are made).

  Every item of the top k lies in one of the k blocks whose maxima rank
  highest (maximum descending, then block index ascending): each block
  ranked before an item's own block holds an item ranked before it (a
  greater value, or an equal one at a lower id), and fewer than k items
  rank before a top-k item. The chosen blocks are gathered whole, in item
  order, so the final top k breaks ties by the lower item id, as
  `tf.math.top_k` does. The padding past the last item reads -inf and comes
  last in that order, after at least k real items (k - 1 whole blocks and
  one more item), so it is never taken while a real item, -inf or not, is
  left: the answer is `tf.math.top_k`'s, ties and -inf included. Gathering
  whole blocks (k indices a row, not k x block) was 30% faster than
  gathering their items one by one (MF at Office's and Clothing's sizes,
  2026-12-07, a probe not in the repository).
  """
  block = blocks.shape[-1]
  _, best = tf.math.top_k(maxima, k=k)
  best = tf.sort(best, -1)  # item order among the candidates
  candidates = tf.reshape(tf.gather(blocks, best, batch_dims=1), [-1, k * block])
  values, at = tf.math.top_k(candidates, k=k)
  return values, tf.gather(best, at // block, batch_dims=1) * block + at % block


def top_k_by_blocks(scores, k, block=TOPK_BLOCK):
  """`tf.math.top_k(scores, k)` of scores [U, n] (values, indices), by
  blocks when the catalogue is large (`blocked`): the maxima of blocks of
  `block` items, the top k of those, the top k of the k chosen blocks'
  items (`top_k_of_blocks` says why that is exact)."""
  n = scores.shape[-1]
  if n is None or not blocked(n, k, block):
    return tf.math.top_k(scores, k=k)
  blocks = score_blocks(scores, block)
  return top_k_of_blocks(blocks, tf.reduce_max(blocks, -1), k)


# Floats of one chunk's [users, n_items] scores for a model whose scores are
# one product of tables: the block the scores are masked and scanned in
# stays in the CPU's last-level cache (24 MB). Measured (before the masking
# moved into the compiled scoring) with LightGCN at Clothing's size (23k
# items), 68 / 128 / 256 / 512 users a chunk: 0.122 / 0.091 / 0.100 / 0.265
# ms a user; NGCF at 100k items (256-wide tables), 17 / 41 / 64 / 128 users:
# 1.59 / 1.12 / 0.92 / 1.52 ms a user.
SCORE_BLOCK_FLOATS = 6 << 20


def default_chunks(n_items, width, budget=1 << 25, pair_width=0):
  """(users per chunk, items per chunk), at most 512 users a chunk.

  A model whose scores are one product of tables (`pair_width` 0) scores the
  whole catalogue at once: its users fill `SCORE_BLOCK_FLOATS` of scores.
  A model with per-pair activations (`pair_width` floats a pair) keeps
  users x item chunk x `width` <= ~budget, with items in chunks of at most
  8,192 cut further by `cache_item_chunk` to keep its activations in cache.
  """
  n_item_chunks = -(-n_items // 8192)
  item_chunk = -(-n_items // n_item_chunks)
  if not pair_width:
    return int(max(1, min(512, SCORE_BLOCK_FLOATS // n_items))), item_chunk
  user_chunk = int(max(1, min(512, budget // (item_chunk * width))))
  return user_chunk, cache_item_chunk(n_items, item_chunk, user_chunk, pair_width)


# The metrics need only where each target lands: its rank is the number of
# unseen items that score above it (or level with it at a lower id, the top
# k's rule), one compare an item for each target. Measured (MF, d = 64, one
# thread, the chunks `default_chunks` gives, 1 / 3.3 / 8 / 20 targets a
# user; 2026-12-07, a probe not in the repository): the compares cost ~0.15
# ns each at 2,406 items and ~0.4 ns from 8,000 on (their 0/1 matrix no
# longer in cache), a user's top k 9-14 us at 2,406 and 8,000 items, 31-36
# at 23,033, 42-48 at 100,000; the two break even near 28, 3.7, 3.1 and 1.7
# targets a user. The ranks are taken below `RANK_COMPARES +
# RANK_COMPARES_PER_ITEM x items` compares a user (break-even at 100,000
# items, on the safe side below).
RANK_COMPARES = 20_000
RANK_COMPARES_PER_ITEM = 1.5


def ranks_targets(n_items, mean_targets) -> bool:
  """Whether an evaluation with `mean_targets` targets a user ranks its
  targets (compares) rather than taking every user's top k."""
  return mean_targets * n_items <= RANK_COMPARES + RANK_COMPARES_PER_ITEM * n_items


class Evaluator:
  """Ranks every target user's unseen items with a model and scores top-k.

  The metrics come from where the targets land: by each target's rank among
  the unseen items (`ranks_targets`: few targets a user) or by every user's
  top k, the same values either way (ties to the lower item id; a target
  scored -inf is never a hit, nor, by ranks, one scored NaN).
  """

  def __init__(self, model, exclude_pairs, target_pairs, ks=(10,),
               user_chunk=None, item_chunk=None, jit_compile=True):
    n_users, n_items = model.n_users, model.n_items
    self.model, self.ks, self.kmax = model, tuple(ks), max(ks)
    auto_users, auto_items = default_chunks(
        n_items, model.score_width, pair_width=getattr(model, "pair_width", 0))
    self.user_chunk = user_chunk or auto_users
    self.item_chunk = item_chunk or auto_items
    self.excl_ptr, self.excl_items = group_by_user(exclude_pairs, n_users)
    ptr, items = group_by_user(target_pairs, n_users)
    self.users = np.flatnonzero(np.diff(ptr))
    self.targets = [items[ptr[u]:ptr[u + 1]] for u in self.users]
    self._target_index = None  # (the targets list, its Targets)
    k = min(self.kmax, n_items)
    item_chunk = self.item_chunk

    # The compiled functions score a chunk, set its known items to -inf
    # and take the block maxima or the targets' ranks, over the scores
    # while they are in cache (the scatter outside XLA copied them, as much
    # time as the scoring). Users are padded to one chunk, the exclusion
    # and target lists to the longest chunk's (padding exclusions update by
    # +inf, a min that changes nothing; padding targets are dropped after),
    # so each compiles once.
    by_blocks = blocked(n_items, k)
    chunk_spec = [tf.TensorSpec([None], tf.int32),
                  tf.TensorSpec([None, 2], tf.int32),
                  tf.TensorSpec([], tf.int32)]

    def masked(users, excl, count):
      # A model that scores by item chunks may leave the width unknown.
      scores = tf.ensure_shape(model.score_items(users, item_chunk), [None, n_items])
      updates = tf.cast(tf.where(tf.range(tf.shape(excl)[0]) < count,
                                 -np.inf, np.inf), scores.dtype)
      return tf.tensor_scatter_nd_min(scores, excl, updates)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True,
                 input_signature=chunk_spec)
    def masked_scores(users, excl, count):
      scores = masked(users, excl, count)
      if by_blocks:
        blocks = score_blocks(scores)
        return blocks, tf.reduce_max(blocks, -1)
      return scores, scores[:, :0]

    @tf.function(input_signature=chunk_spec)
    def rank(users, excl, count):
      scores, maxima = masked_scores(users, excl, count)
      if by_blocks:
        return top_k_of_blocks(scores, maxima, k)
      return tf.math.top_k(scores, k=k)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True,
                 input_signature=chunk_spec + [tf.TensorSpec([None, 2], tf.int32)])
    def target_ranks(users, excl, count, targets):
      # targets: (row in the chunk, item). A target's rank: the items above
      # it, an item at a lower id counting when level.
      scores = masked(users, excl, count)
      values = tf.gather_nd(scores, targets)
      rows = tf.gather(scores, targets[:, 0])
      lower = tf.range(n_items)[None, :] < targets[:, 1:]
      above = tf.cast(tf.where(lower, rows >= values[:, None],
                               rows > values[:, None]), tf.float32)
      # Counted by a product with ones: XLA vectorises the product, not a
      # row reduce_sum of the comparisons (~2.5x slower in a probe). Exact:
      # float32 counts whole numbers up to 2^24.
      counts = tf.matmul(above, tf.ones([n_items, 1], tf.float32))[:, 0]
      return tf.cast(counts, tf.int32), values

    self._rank = rank
    self._target_ranks = target_ranks
    self._inputs = self._inputs_key = None  # each chunk's users and exclusions
    # The latest call's {"users": [U] ids, metric@k: [U] values}, or None.
    self.per_user = None

  @property
  def n_users(self):
    return len(self.users)

  @property
  def by_ranks(self) -> bool:
    """Whether `__call__` ranks the targets (`ranks_targets`) rather than
    taking every user's top k, for the current `users` and `targets`."""
    sizes = self.target_index.sizes
    return ranks_targets(self.model.n_items, sizes.mean() if len(sizes) else 0)

  def prepare_inputs(self) -> None:
    """Builds what every evaluation of the same `users`, `targets` and
    `user_chunk` reuses (each chunk's users, exclusions and targets, the
    targets' index); the first evaluation does it otherwise."""
    self._chunk_inputs()
    self.target_index  # pylint: disable=pointless-statement

  @property
  def target_index(self) -> Targets:
    """`targets` indexed for the metrics, once for the same list."""
    if self._target_index is None or self._target_index[0] is not self.targets:
      self._target_index = (self.targets,
                            Targets(self.targets, self.model.n_items))
    return self._target_index[1]

  def _chunk_inputs(self):
    """[(users [chunk] int32, n real users, exclusions [m, 2] int32, targets
    [t, 2] int32 (row in the chunk, item))] of every chunk, built once for
    the same `users`, `targets` and `user_chunk` (the same at every
    evaluation of a run)."""
    key = (self.users, self.targets, self.user_chunk)
    if self._inputs is None or any(
        a is not b for a, b in zip(self._inputs_key[:2], key[:2])) or (
            self._inputs_key[2] != key[2]):
      chunk, inputs = self.user_chunk, []
      for start in range(0, len(self.users), chunk):
        users = self.users[start:start + chunk]
        n = len(users)
        if n < chunk:  # keep one traced shape
          users = np.concatenate([users, np.full(chunk - n, users[0])])
        lo, hi = self.excl_ptr[users], self.excl_ptr[users + 1]
        counts = hi - lo
        rows = np.repeat(np.arange(chunk), counts)
        # Position j of row r's run reads excl_items[lo[r] + j].
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = self.excl_items[np.repeat(lo, counts) + offsets]
        excl = np.stack([rows, cols], 1).astype(np.int32).reshape(-1, 2)
        targets = self.targets[start:start + n]
        targets = np.stack([np.repeat(np.arange(n), [len(t) for t in targets]),
                            np.concatenate(targets)], 1).astype(np.int32)
        inputs.append((tf.constant(users, tf.int32), n, excl, targets))
      self._inputs, self._inputs_key = inputs, key
      self._excl_width = max([len(e) for _, _, e, _ in inputs] + [1])
      self._target_width = max([len(t) for _, _, _, t in inputs] + [1])
    return self._inputs

  def _excl_args(self, excl):
    """`excl` padded to the longest chunk's length with (0, 0) entries the
    ranking leaves alone, and its true length."""
    count = len(excl)
    padded = np.zeros((self._excl_width, 2), np.int32)
    padded[:count] = excl
    return tf.constant(padded), tf.constant(count, tf.int32)

  def _rank_chunk(self, users, excl):
    """(values, ids) [chunk, k] of one chunk's top k."""
    return self._rank(users, *self._excl_args(excl))

  def _hits_by_ranks(self, users, n, excl, targets):
    """bool [n, kmax] hits of one chunk, from its targets' ranks."""
    padded = np.zeros((self._target_width, 2), np.int32)
    padded[:len(targets)] = targets
    ranks, values = self._target_ranks(users, *self._excl_args(excl),
                                       tf.constant(padded))
    ranks, values = ranks.numpy()[:len(targets)], values.numpy()[:len(targets)]
    hit = (ranks < self.kmax) & (values > -np.inf)  # NaN > -inf is False
    out = np.zeros((n, self.kmax), bool)
    out[targets[hit, 0], ranks[hit]] = True
    return out

  def _chunk_top_k(self, users, n, excl):
    """[n, kmax] best-first unseen item ids of a chunk's real users (-1: no
    candidate)."""
    values, idx = self._rank_chunk(users, excl)
    idx = np.where(np.isneginf(values.numpy()), -1, idx.numpy())[:n]
    return np.pad(idx, [(0, 0), (0, self.kmax - idx.shape[1])], constant_values=-1)

  def _chunk_hits(self, index, by_ranks):
    users, n, excl, targets = self._chunk_inputs()[index]
    if by_ranks:
      return self._hits_by_ranks(users, n, excl, targets)
    return hits(self._chunk_top_k(users, n, excl), self.target_index,
                index * self.user_chunk)

  def chunk_hits(self, index):
    """bool [real users of chunk `index`, kmax]: the positions of their
    targets in their ranked lists, computed as `__call__` computes them (at
    the whole evaluation's padded widths, so at the shape its compiled
    functions run: XLA compiles each new width again, seconds at 100k
    items). Call the model's `prepare_scoring()` first."""
    return self._chunk_hits(index, self.by_ranks)

  def _each_chunk(self, fn, progress):
    """[fn(index) for every chunk], the model's scoring prepared first."""
    prepare(self.model)  # tables derived from the weights, once
    bar = keras.utils.Progbar(len(self.users), unit_name="user") if progress else None
    out = []
    for index, (_, n, _, _) in enumerate(self._chunk_inputs()):
      out.append(fn(index))
      if bar is not None:
        bar.add(n)
    return out

  def top_k(self, progress=False) -> np.ndarray:
    """[n target users, kmax] best-first unseen item ids (-1: no candidate)."""
    inputs = self._chunk_inputs()
    out = self._each_chunk(lambda i: self._chunk_top_k(*inputs[i][:3]), progress)
    return np.concatenate(out) if out else np.zeros((0, self.kmax), np.int64)

  def __call__(self, progress=False) -> Dict[str, float]:
    """The metrics averaged over the target users; the latest call's values
    per user are kept in `per_user` (no extra pass: the averages are theirs).
    """
    if not len(self.users):
      self.per_user = None
      return {}
    by_ranks = self.by_ranks
    out = self._each_chunk(lambda i: self._chunk_hits(i, by_ranks), progress)
    values = hit_metrics(np.concatenate(out), self.target_index.sizes, self.ks)
    self.per_user = dict(values, users=self.users)
    return mean_metrics(values)
