"""Two-stage full-ranking evaluation for large catalogues (`--eval_candidates`).

Full ranking (`maml_tf.evaluate.full_ranking`) scores every (user, item)
pair with the model's own score; for MAML that is the per-pair attention, so
an evaluation costs users x items evaluations of a 5K x K layer. The
two-stage evaluator ranks as the `retrieve` serving signature does
(`maml_tf.export.signatures`), in the same geometry and with the same score:

1. First stage: every item is scored in the model's retrieval space, read
   from the model's own hooks (`serving_tables`, `serve_queries`,
   `retrieval_space`): -||p - q||^2 for a "euclidean" space (plain Euclid
   over P and Q for the metric models), <p, q> for a "dot" one. The user's
   known items are dropped and the N best are kept.
2. Second stage: the model's full score (`serve_pairs`, the score `retrieve`
   re-ranks with and `recommend` serves) re-ranks those N; the top k is the
   user's list, scored exactly as full ranking's.

N is clamped to the catalogue: N >= n_items scores every item the user does
not know in the second stage, i.e. full ranking with one cheap pass in front.
For a model whose first stage is its score (the dot-product models, CML,
MAML with --attention=none) the two stages rank alike: the result equals full
ranking (up to float rounding of near-ties) and costs a little more.

Ties: in the first stage, at the N-th place, the lower item id is kept
(`tf.math.top_k`'s rule, which `full_ranking.top_k_by_blocks` keeps while
it takes a large catalogue's N best by blocks, ~3x faster at 100k items);
the N candidates are then put in item-id order, so
that ties in the full score go to the lower item id, full ranking's rule.
Wherever every unknown item is a candidate the two lists are the same list.

The first stage's score is the value the serving index computes (its
augmented dot product <[p, -||p||^2, 1], [2q, 1, -||q||^2]> =
-||p - q||^2, `maml_tf.export.retrieval`), written here as that expression:
that module imports TensorFlow Recommenders, which training runs do not load
(tests/test_two_stage.py checks that both give the same candidates).

Each chunk of users is one TensorFlow function (scores, exclusion, both
top-ks and the re-ranking; nothing goes through numpy inside it), chunked
over users so that the first stage's [users, n_items] scores and the
re-ranking's [users, N, width] intermediates stay within a budget of floats.

`agreement` (and, per call, `TwoStageEvaluator(check_users=...)`) compares
the two-stage top k with full ranking's on a sample of users: the mean
share of the full-ranking top k the two-stage list has (`overlap@k`, as
`maml_tf.export.measures.ranking_quality` measures `retrieve`) and both
lists' metrics.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from maml_tf.errors import UsageError
from maml_tf.evaluate import full_ranking
from maml_tf.evaluate.metrics import mean_metrics, per_user_metrics
from maml_tf.models.base import PAIR_CACHE_FLOATS

FLAG = "eval_candidates"
# Test users a run's two-stage test evaluator compares with full ranking on
# every call (`TwoStageEvaluator.agreement`, metrics.json's "ranking").
AGREEMENT_USERS = 500
# The hooks a model needs for the two stages (see maml_tf/models/base.py).
HOOKS = ("serving_tables", "serve_queries", "retrieval_space", "serve_pairs")


def require_first_stage(model, n_candidates):
  """Refuses a scorer without the retrieval hooks (UsageError, one line)."""
  missing = [h for h in HOOKS if not callable(getattr(model, h, None))]
  if missing:
    kind = getattr(model, "model_kind", type(model).__name__)
    raise UsageError(
        f"`--{FLAG}` needs a model with a retrieval first stage "
        f"({', '.join(HOOKS)}); {kind} has no {missing[0]} (use "
        f"--{FLAG}=0 for full ranking). Received: {n_candidates}")


def first_stage_scores(metric, queries, vectors):
  """[U, n] first-stage scores: -||p - q||^2 ("euclidean") or <p, q> ("dot")."""
  dots = tf.matmul(queries, vectors, transpose_b=True)
  if metric == "dot":
    return dots
  if metric != "euclidean":
    raise ValueError(f"`metric` must be euclidean or dot. Received: {metric!r}")
  sq_p = tf.reduce_sum(tf.square(queries), -1)
  sq_q = tf.reduce_sum(tf.square(vectors), -1)
  return 2.0 * dots - sq_p[:, None] - sq_q[None, :]


# Users a chunk keeps at least when its per-pair activations are cut to the
# cache budget: each chunk is one call from the host, whose fixed cost would
# outweigh a smaller block (MAML at Office's size, N = 200: 2.3-2.5 s an
# evaluation at 512 users a chunk, 1.5 s at 64, 1.9 s at 16).
MIN_PAIR_CHUNK_USERS = 64


def chunk_users(n_items, n_candidates, width, budget=1 << 25, pair_width=0):
  """Users per chunk keeping [users, n_items] and [users, N, width] <= budget,
  and, for a model with per-pair activations, [users, N, pair_width] near
  the cache budget (at least MIN_PAIR_CHUNK_USERS users)."""
  per_user = max(n_items, n_candidates * max(1, int(width)))
  users = int(max(1, min(512, budget // per_user)))
  if pair_width:
    fits = PAIR_CACHE_FLOATS // (n_candidates * int(pair_width))
    users = min(users, max(MIN_PAIR_CHUNK_USERS, fits))
  return users


def sample_targets(target_pairs, n_users, seed=0):
  """The target pairs of `n_users` users drawn without replacement (seeded)
  among those with a target; all of them when there are no more."""
  pairs = np.asarray(target_pairs, np.int64).reshape(-1, 2)
  users = np.unique(pairs[:, 0])
  if n_users is None or n_users >= len(users):
    return pairs
  chosen = np.random.default_rng(seed).choice(users, size=int(n_users),
                                              replace=False)
  return pairs[np.isin(pairs[:, 0], chosen)]


def compare(two_stage_topk, full_topk, targets, ks, n_candidates) -> Dict:
  """Two-stage vs full-ranking top-k lists of the same users (same order).

  overlap@k: per user, the share of the full-ranking top k (its filled
  slots) the two-stage top k also holds, averaged; "full" and "two_stage":
  each list's mean metrics; "difference": two_stage - full.
  """
  out = {"users": len(targets), "candidates": int(n_candidates)}
  for k in ks:
    shares = []
    for a, b in zip(two_stage_topk[:, :k], full_topk[:, :k]):
      b = b[b >= 0]
      shares.append(len(np.intersect1d(a[a >= 0], b)) / len(b) if len(b) else 1.0)
    out[f"overlap@{k}"] = float(np.mean(shares)) if shares else 1.0
  two = mean_metrics(per_user_metrics(two_stage_topk, targets, ks))
  full = mean_metrics(per_user_metrics(full_topk, targets, ks))
  out.update(full=full, two_stage=two,
             difference={name: two[name] - full[name] for name in full})
  return out


class TwoStageEvaluator(full_ranking.Evaluator):
  """Full-ranking evaluation through two stages (see the module docstring).

  The interface of `full_ranking.Evaluator`: calling it returns the mean
  metrics and keeps `per_user`; `top_k`, `users`, `targets`, `n_users`.

  Args:
    model: a `RankingModel` (it needs the hooks in HOOKS).
    exclude_pairs, target_pairs, ks: as `full_ranking.Evaluator`.
    n_candidates: N, the first stage's candidates (clamped to n_items).
    check_users: when > 0, every call also ranks a fixed sample of this
      many target users (seeded by `seed`) by full ranking and keeps the
      comparison (`compare`) in `agreement`.
    user_chunk: users per chunk (default: `chunk_users`).
    jit_compile: compile each stage's scoring with XLA.
  """

  def __init__(self, model, exclude_pairs, target_pairs, ks=(10,),
               n_candidates=200, check_users=0, seed=0, user_chunk=None,
               jit_compile=True):
    require_first_stage(model, n_candidates)
    if isinstance(n_candidates, bool) or int(n_candidates) != n_candidates or n_candidates < 1:
      raise ValueError("`n_candidates` must be an integer >= 1. Received: "
                       f"n_candidates={n_candidates!r}")
    super().__init__(model, exclude_pairs, target_pairs, ks,
                     user_chunk=user_chunk, jit_compile=jit_compile)
    self.requested = int(n_candidates)
    self.n_candidates = n = min(self.requested, model.n_items)
    width = getattr(model, "serving_width", model.score_width)
    self.user_chunk = user_chunk or chunk_users(
        model.n_items, n, width, pair_width=getattr(model, "pair_width", 0))
    # The tables the hooks read, refreshed from the weights on every call.
    self._tables = {name: tf.Variable(value, trainable=False)
                    for name, value in model.serving_tables().items()}
    self.metric = model.retrieval_space(self._read())[0]
    k = min(self.kmax, n)

    def first(users):
      tables = self._read()
      metric, vectors = model.retrieval_space(tables)
      return first_stage_scores(metric, model.serve_queries(tables, users),
                                vectors)

    def rerank(users, candidates):
      return model.serve_pairs(self._read(), users, candidates)[0]

    self._first = tf.function(
        first, jit_compile=jit_compile, reduce_retracing=True,
        input_signature=[tf.TensorSpec([None], tf.int32)])
    self._rerank = tf.function(
        rerank, jit_compile=jit_compile, reduce_retracing=True,
        input_signature=[tf.TensorSpec([None], tf.int32),
                         tf.TensorSpec([None, n], tf.int32)])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 2], tf.int32)])
    def rank(users, excl):
      scores = self._first(users)
      scores = tf.tensor_scatter_nd_update(
          scores, excl, tf.fill([tf.shape(excl)[0]], -np.inf))
      values, candidates = full_ranking.top_k_by_blocks(scores, n)
      order = tf.argsort(candidates, axis=1, stable=True)  # item-id order
      candidates = tf.gather(candidates, order, batch_dims=1)
      known = tf.equal(tf.gather(values, order, batch_dims=1), -np.inf)
      scores = tf.where(known, -np.inf, self._rerank(users, candidates))
      values, best = tf.math.top_k(scores, k=k)
      return values, tf.gather(candidates, best, batch_dims=1)

    self._rank_first = rank
    # Full ranking of a fixed sample of users, compared on every call.
    self.agreement: Optional[Dict] = None
    self._check = None
    if check_users and len(self.users):
      sample = sample_targets(target_pairs, check_users, seed)
      full = full_ranking.Evaluator(model, exclude_pairs, sample, ks,
                                    jit_compile=jit_compile)
      self._check = (np.searchsorted(self.users, full.users), full)

  def _rank_chunk(self, users, excl):
    return self._rank_first(users, tf.constant(excl))

  def _read(self):
    return {name: tf.convert_to_tensor(v) for name, v in self._tables.items()}

  @property
  def by_ranks(self) -> bool:
    """Never: the two stages rank by their own top k (`chunk_hits` reads
    it); the targets' ranks are a full ranking's shortcut."""
    return False

  def prepare_tables(self) -> None:
    """Reads the model's serving tables (the first stage's and the
    re-ranking's) from its current weights; every `top_k` does it first,
    and `chunk_hits` uses what the latest one read."""
    for name, value in self.model.serving_tables().items():
      self._tables[name].assign(value)

  def top_k(self, progress=False) -> np.ndarray:
    """[n target users, kmax] best-first unseen item ids (-1: no candidate)."""
    self.prepare_tables()
    return super().top_k(progress)

  def __call__(self, progress=False) -> Dict[str, float]:
    """The mean metrics (`per_user` kept); with `check_users`, `agreement`
    is measured on the same weights."""
    if not len(self.users):
      self.per_user = None
      return {}
    topk = self.top_k(progress)
    values = per_user_metrics(topk, self.target_index, self.ks)
    self.per_user = dict(values, users=self.users)
    if self._check is not None:
      rows, full = self._check
      self.agreement = compare(topk[rows], full.top_k(), full.targets,
                               self.ks, self.n_candidates)
    return mean_metrics(values)

  def describe(self) -> Dict:
    """How this split is ranked, for metrics.json's "ranking"."""
    out = {"ranking": "two_stage", "candidates": self.n_candidates,
           "first_stage": f"{self.metric} in the model's retrieval space "
                          "(the retrieve signature's), known items dropped",
           "second_stage": "the model's full score re-ranks the candidates"}
    if self.requested != self.n_candidates:
      out["requested_candidates"] = self.requested
    if self.agreement is not None:
      out["agreement_with_full_ranking"] = dict(
          self.agreement, measured="at this split's latest evaluation, on a "
          "fixed sample of its users")
    return out


def agreement(model, exclude_pairs, target_pairs, n_candidates, ks=(10,),
              n_users: Optional[int] = AGREEMENT_USERS, seed=0,
              jit_compile=True) -> Dict:
  """Two-stage vs full ranking of the current weights on `n_users` target
  users drawn (seeded) among `target_pairs`' (None: all); see `compare`."""
  sample = sample_targets(target_pairs, n_users, seed)
  two = TwoStageEvaluator(model, exclude_pairs, sample, ks, n_candidates,
                          jit_compile=jit_compile)
  full = full_ranking.Evaluator(model, exclude_pairs, sample, ks,
                                jit_compile=jit_compile)
  return compare(two.top_k(), full.top_k(), full.targets, ks, two.n_candidates)
