"""The first stage of two-stage retrieval: a TFRS index over plain Euclid.

Full MAML scoring runs the attention MLP for every (user, item) pair, so its
cost grows with the catalogue. The `retrieve` serving signature (see
`maml_tf.export.signatures`) instead asks a cheap index for the N items nearest to the
user in the plain Euclidean geometry of the embeddings P and Q, drops the
user's known items, and lets the attention re-rank only those N.

Why plain Euclid: the attentive distance is sum_k a_k^2 (p_k - q_k)^2 with
a = alpha * softmax(.). With alpha = K ("scaled") a uniform attention gives
a_k = 1, i.e. exactly the plain squared distance, so the index ranks by the
attentive distance under uniform attention weights.

Why an inner-product index can rank by distance (exact, no approximation):
  -||p - q||^2 = 2 <p, q> - ||p||^2 - ||q||^2
               = < [p, -||p||^2, 1] , [2q, 1, -||q||^2] >.
Queries are phi(p) = [p, -||p||^2, 1] and candidates psi(q) = [2q, 1,
-||q||^2] (K + 2 dims), so the index's dot-product scores are the negative
squared distances themselves, not only in the same order
(tests/test_retrieval.py checks this against numpy).

This is the ONLY module that imports tensorflow-recommenders (TFRS). TFRS
0.7 is written for Keras 2 and refuses to import unless `tf.keras` is Keras 2
(tf_keras), which TensorFlow 2.16+ gives only when TF_USE_LEGACY_KERAS=1 is
set before `tf.keras` is first resolved. The rest of the project uses Keras 3
through `import keras`, which that variable does not affect, so both live in
one process. Keeping the import here keeps that switch in one place: the
variable is set for the import only and then restored;
`maml_tf.export.signatures` (which `saved_model` and `measures` import
first) imports this module at its top so that the switch happens as early
as possible. If `tf.keras` was already resolved to Keras 3 in this
process, importing this module fails with an ImportError saying what to do.
The exported SavedModel does not need TFRS (nor Keras) to load: the index is
plain MatMul / TopK ops and two variables.
"""

from __future__ import annotations

import os

import tensorflow as tf

LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"


def _keras3_under_tf_keras():
  """The Keras 3 version `tf.keras` already resolved to, else None.

  Until first used, `tf.keras` is TensorFlow's lazy loader, which picks
  Keras 2 or 3 from TF_USE_LEGACY_KERAS on first use and then replaces
  itself with the chosen module. Keras 3's module has `version()`, Keras 2's
  (tf_keras) has not: TFRS makes the same check.
  """
  loader = tf.keras
  if type(loader).__name__ == "KerasLazyLoader" and not vars(loader).get(
      "_tfll_initialized", True):
    return None  # not resolved yet: reading vars() resolves nothing
  version = getattr(loader, "version", None)
  if callable(version) and str(version()).startswith("3."):
    return str(version())
  return None


def _import_tfrs():
  """Imports TFRS with tf.keras routed to Keras 2 (see the module docstring)."""
  keras3 = _keras3_under_tf_keras()
  if keras3 is not None:
    raise ImportError(
        "maml_tf.export.retrieval needs tensorflow-recommenders, which needs "
        "`tf.keras` to be Keras 2 (tf_keras), but `tf.keras` was already "
        f"resolved to Keras {keras3} in this process. Import "
        "maml_tf.export.retrieval (or maml_tf.export.saved_model) before anything uses "
        f"`tf.keras`, or set {LEGACY_KERAS_ENV}=1 in the environment.")
  # Importing TFRS resolves tf.keras (it checks tf.keras.version), so the
  # variable is needed only for the import; it is then put back as it was,
  # so that child processes inherit the environment they would have had.
  before = os.environ.get(LEGACY_KERAS_ENV)
  os.environ[LEGACY_KERAS_ENV] = "1"
  try:
    import tensorflow_recommenders as tfrs  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"maml_tf.export.retrieval could not import tensorflow-recommenders ({e}). "
        "Install tensorflow-recommenders and tf-keras, and import "
        "maml_tf.export.retrieval before anything uses `tf.keras`.") from e
  finally:
    if before is None:
      del os.environ[LEGACY_KERAS_ENV]
    else:
      os.environ[LEGACY_KERAS_ENV] = before
  return tfrs


tfrs = _import_tfrs()


def euclidean_queries(p):
  """phi(p) = [p, -||p||^2, 1] for user embeddings p [B, K] -> [B, K + 2]."""
  p = tf.convert_to_tensor(p, tf.float32)
  sq = tf.reduce_sum(tf.square(p), -1, keepdims=True)
  return tf.concat([p, -sq, tf.ones_like(sq)], -1)


def euclidean_candidates(q):
  """psi(q) = [2q, 1, -||q||^2] for item embeddings q [n, K] -> [n, K + 2]."""
  q = tf.convert_to_tensor(q, tf.float32)
  sq = tf.reduce_sum(tf.square(q), -1, keepdims=True)
  return tf.concat([2.0 * q, tf.ones_like(sq), -sq], -1)


METRICS = ("euclidean", "dot")


def build_index(item_embeddings, name="euclidean_index", metric="euclidean"):
  """A TFRS BruteForce index over the item vectors.

  Args:
    item_embeddings: float [n_items, K], row i = item i (its identifier).
    name: the layer's name.
    metric: "euclidean" (scores -||p - q||^2, through the augmented vectors
      above) or "dot" (scores <p, q>, the dot-product models' own score).

  Returns:
    A `tfrs.layers.factorized_top_k.BruteForce`; query it with `nearest`.
  """
  if metric not in METRICS:
    raise ValueError(f"`metric` must be one of {', '.join(METRICS)}. "
                     f"Received: metric={metric!r}")
  q = tf.convert_to_tensor(item_embeddings, tf.float32)
  if q.shape.rank != 2:
    raise ValueError("`item_embeddings` must have shape [n_items, K]. "
                     f"Received: shape={q.shape}")
  index = tfrs.layers.factorized_top_k.BruteForce(name=name)
  candidates = euclidean_candidates(q) if metric == "euclidean" else q
  index.index(candidates, identifiers=tf.range(q.shape[0], dtype=tf.int32))
  index.n_items = int(q.shape[0])
  index.metric = metric
  return index


def nearest(index, p, k):
  """(scores [B, k'], item ids [B, k'] int32), best first: -||p - q||^2 for
  a euclidean index, <p, q> for a dot one.

  k' = min(k, n_items); `k` may be a tensor.
  """
  k = tf.minimum(tf.cast(k, tf.int32), index.n_items)
  queries = euclidean_queries(p) if index.metric == "euclidean" else p
  return index(queries, k=k)


def nearest_excluding(index, p, known, n):
  """The n nearest items per user that are not among the user's known items.

  Asks the index for n + M items (M = known items of the batch's heaviest
  user, at most the catalogue), so that n unknown ones are among them
  whenever the user has n unknown items at all, then drops the known ones.

  Args:
    index: from `build_index`.
    p: float [B, K] the users' query vectors.
    known: int32 [B, M + 1]: each user's known item ids sorted ascending,
      padded at the end with n_items (at least one padding column).
    n: how many candidates to keep (a Python int).

  Returns:
    (scores [B, n'], ids [B, n']) with n' = min(n, n_items), best first;
    where a user has fewer than n' unknown items the tail has score -inf
    (its id is then meaningless).
  """
  n_known = tf.shape(known)[1] - 1
  scores, ids = nearest(index, p, n + n_known)
  # `known` rows are sorted and end with n_items > any id: searchsorted
  # lands on the id itself when it is known, on a larger value otherwise.
  pos = tf.searchsorted(known, ids, side="left")
  is_known = tf.equal(tf.gather(known, pos, batch_dims=1), ids)
  scores = tf.where(is_known, tf.constant(-float("inf")), scores)
  n_keep = tf.minimum(n, tf.shape(scores)[1])
  scores, order = tf.math.top_k(scores, k=n_keep)
  return scores, tf.gather(ids, order, batch_dims=1)
