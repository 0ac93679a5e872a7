"""MAML's three loss terms as pure functions (docs/spec.md §3).

- `embedding_loss`: the WARP-weighted hinge against the closest of the W
  sampled negatives, SUMMED over the batch (the release's reduction).
- `feature_loss`: lambda_f * sum over all items of ||q_i - F_i||^2.
- `covariance_loss`: lambda_c * (sum of all entries of C - trace C) for the
  covariance C of the rows of [Q; P]; a signed sum, as released (the paper
  writes a squared Frobenius norm of the off-diagonal).
"""

import tensorflow as tf


def warp_rank(d_pos, d_neg, margin, n_items):
  """Estimated rank of the positive: share of violating negatives * |I|.

  Args:
    d_pos: [B] distances to the positive items.
    d_neg: [B, W] distances to the sampled negatives.
    margin: the hinge margin m.
    n_items: |I|, the number of item ids.

  Returns:
    [B] float rank estimates, with no gradient.
  """
  violating = tf.cast(d_pos[:, None] - d_neg + margin > 0, d_pos.dtype)
  return tf.stop_gradient(tf.reduce_mean(violating, axis=1) *
                          tf.cast(n_items, d_pos.dtype))


def embedding_loss(d_pos, d_neg, margin, n_items, use_rank_weight=True):
  """sum_b max(d_pos - min_j d_neg + m, 0) * log(rank + 1)."""
  hinge = tf.nn.relu(d_pos - tf.reduce_min(d_neg, axis=1) + margin)
  if use_rank_weight:
    hinge = hinge * tf.math.log(warp_rank(d_pos, d_neg, margin, n_items) + 1.0)
  return tf.reduce_sum(hinge)


def embedding_loss_hardest(d_pos, d_hardest, d_all, margin, n_items,
                           use_rank_weight=True):
  """`embedding_loss`, given the distance to the closest negative.

  Only the positive and the closest negative of a row carry gradient through
  the hinge, so the training fast path scores every pair once (`d_all`
  [B, 1 + W] without gradient, which also gives the rank), picks the closest
  negative, and back-propagates through `d_pos` and `d_hardest` [B] only. Equal
  to `embedding_loss(d_all[:, 0], d_all[:, 1:], ...)` in value and gradient
  (where two negatives tie exactly, autodiff splits the gradient between
  them; here the first takes it all, the same thing when, as with a negative
  sampled twice, the tied pairs are the same pair).
  """
  hinge = tf.nn.relu(d_pos - d_hardest + margin)
  if use_rank_weight:
    d_all = tf.stop_gradient(d_all)
    hinge = hinge * tf.math.log(
        warp_rank(d_all[:, 0], d_all[:, 1:], margin, n_items) + 1.0)
  return tf.reduce_sum(hinge)


def feature_loss(q, f, weight):
  """weight * sum_i ||q_i - f_i||^2 over all items."""
  return weight * tf.reduce_sum(tf.square(q - f))


def covariance_loss(q, p, weight):
  """weight * (sum(C) - trace(C)), C the covariance of the rows of [Q; P]."""
  x = tf.concat([q, p], axis=0)
  x = x - tf.reduce_mean(x, axis=0, keepdims=True)
  cov = tf.matmul(x, x, transpose_a=True) / tf.cast(tf.shape(x)[0], x.dtype)
  return weight * (tf.reduce_sum(cov) - tf.linalg.trace(cov))
