"""`maml_tf.models.metric_losses` against the numpy oracles (docs/spec.md §3).

Hand cases first (numbers worked out in the comments), then seeded random
batches in float32 compared with the float64 oracle.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.models import metric_losses as losses

try:
  from tests import oracles
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir mode)
  import oracles

RTOL = 1e-5


def _f32(x):
  return tf.constant(np.asarray(x, dtype=np.float32))


def _random_distances(rng, batch, n_neg, margin):
  """d_pos [B], d_neg [B, W] >= 0, none within 1e-3 of a hinge boundary.

  Keeping d_pos - d_neg + m away from 0 means float32 and float64 agree on
  every violation indicator, so the comparison tests the formula, not
  rounding at the boundary.
  """
  d_pos = rng.uniform(0.0, 4.0, size=batch)
  d_neg = rng.uniform(0.0, 4.0, size=(batch, n_neg))
  gap = d_pos[:, None] - d_neg + margin
  d_neg = np.where(np.abs(gap) < 1e-3, d_neg + 0.01, d_neg)
  return d_pos.astype(np.float32), d_neg.astype(np.float32)


# ------------------------------------------------------------- hand cases


def test_warp_rank_hand_and_strict_boundary():
  # m = 1, |I| = 10
  # pair 0: 2-1.5+1 = 1.5 > 0, 2-4+1 = -1 -> 1/2 * 10 = 5
  # pair 1: 1-2+1 = 0 is not > 0 (both negatives) -> 0
  # pair 2: 0.5-0.25+1 = 1.25 > 0, 0.5-0.5+1 = 1 > 0 -> 2/2 * 10 = 10
  d_pos = [2.0, 1.0, 0.5]
  d_neg = [[1.5, 4.0], [2.0, 2.0], [0.25, 0.5]]
  got = losses.warp_rank(_f32(d_pos), _f32(d_neg), 1.0, 10)
  np.testing.assert_allclose(np.asarray(got), [5.0, 0.0, 10.0], rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(got), oracles.warp_rank(d_pos, d_neg, 1.0, 10), rtol=1e-6)


def test_embedding_loss_two_pairs_hand():
  # m = 1, |I| = 10 (same arithmetic as test_oracles, exact in float32)
  # pair 0: d_pos 2, negs [1.5, 4]: rank 5, hinge 2 - 1.5 + 1 = 1.5
  # pair 1: d_pos 0.5, negs [0.25, 0.5]: rank 10, hinge 0.5 - 0.25 + 1 = 1.25
  # SUM = 1.5 ln 6 + 1.25 ln 11 = 2.687639 + 2.997388 = 5.685027
  d_pos = [2.0, 0.5]
  d_neg = [[1.5, 4.0], [0.25, 0.5]]
  expected = 1.5 * math.log(6.0) + 1.25 * math.log(11.0)
  got = float(losses.embedding_loss(_f32(d_pos), _f32(d_neg), 1.0, 10))
  assert got == pytest.approx(expected, rel=RTOL)
  assert got == pytest.approx(
      oracles.embedding_loss(d_pos, d_neg, 1.0, 10), rel=RTOL)


def test_embedding_loss_without_rank_weight_hand():
  # 1.5 + 1.25 = 2.75
  got = losses.embedding_loss(_f32([2.0, 0.5]), _f32([[1.5, 4.0], [0.25, 0.5]]),
                              1.0, 10, use_rank_weight=False)
  assert float(got) == pytest.approx(2.75, rel=RTOL)


def test_embedding_loss_is_a_sum_not_a_mean():
  # One active pair alone, then the same pair twice: the loss doubles.
  one = losses.embedding_loss(_f32([2.0]), _f32([[1.5, 4.0]]), 1.0, 10)
  two = losses.embedding_loss(_f32([2.0, 2.0]),
                              _f32([[1.5, 4.0], [1.5, 4.0]]), 1.0, 10)
  assert float(one) == pytest.approx(1.5 * math.log(6.0), rel=RTOL)
  assert float(two) == pytest.approx(2.0 * float(one), rel=RTOL)


def test_embedding_loss_inactive_pair_is_zero():
  # hinge = max(1 - 2.5 + 1, 0) = 0
  got = losses.embedding_loss(_f32([1.0]), _f32([[3.0, 2.5]]), 1.0, 10)
  assert float(got) == 0.0


def test_feature_loss_hand():
  # diffs [1, 0] and [-1, -1] -> 1 + 2 = 3; weight 5 -> 15
  got = losses.feature_loss(_f32([[1.0, 2.0], [0.0, 0.0]]),
                            _f32([[0.0, 2.0], [1.0, 1.0]]), 5.0)
  assert float(got) == pytest.approx(15.0, rel=RTOL)


def test_covariance_loss_three_rows_hand():
  # rows (1,0), (0,1), (2,2), mean (1,1), centred (0,-1), (-1,0), (1,1)
  # C01 = 1/3 -> sum - trace = 2/3; weight 5 -> 10/3
  got = losses.covariance_loss(_f32([[1.0, 0.0], [0.0, 1.0]]),
                               _f32([[2.0, 2.0]]), 5.0)
  assert float(got) == pytest.approx(10.0 / 3.0, rel=RTOL)


def test_covariance_loss_is_signed_hand():
  # rows (1,-1), (-1,1): C01 = -1 -> sum - trace = -2 (not squared)
  got = losses.covariance_loss(_f32([[1.0, -1.0]]), _f32([[-1.0, 1.0]]), 1.0)
  assert float(got) == pytest.approx(-2.0, rel=RTOL)


# --------------------------------------------------------- random, seeded


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_neg", [1, 4])
def test_warp_rank_random(seed, n_neg):
  rng = np.random.default_rng(seed)
  d_pos, d_neg = _random_distances(rng, 64, n_neg, 1.6)
  got = losses.warp_rank(_f32(d_pos), _f32(d_neg), 1.6, 2406)
  np.testing.assert_allclose(np.asarray(got),
                             oracles.warp_rank(d_pos, d_neg, 1.6, 2406),
                             rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_rank_weight", [True, False])
def test_embedding_loss_random(seed, use_rank_weight):
  rng = np.random.default_rng(seed)
  d_pos, d_neg = _random_distances(rng, 64, 4, 1.6)
  got = losses.embedding_loss(_f32(d_pos), _f32(d_neg), 1.6, 2406,
                              use_rank_weight=use_rank_weight)
  expected = oracles.embedding_loss(d_pos, d_neg, 1.6, 2406,
                                    use_rank_weight=use_rank_weight)
  assert expected > 0.0
  assert float(got) == pytest.approx(expected, rel=RTOL)


def test_warp_rank_has_no_gradient():
  rng = np.random.default_rng(3)
  d_pos, d_neg = _random_distances(rng, 16, 4, 1.0)
  dp, dn = tf.Variable(d_pos), tf.Variable(d_neg)
  with tf.GradientTape() as tape:
    rank = tf.reduce_sum(losses.warp_rank(dp, dn, 1.0, 100))
  grads = tape.gradient(rank, [dp, dn],
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  for g in grads:
    np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("use_rank_weight", [True, False])
def test_embedding_loss_gradient_holds_rank_fixed(seed, use_rank_weight):
  # d loss / d d_pos = log(rank + 1) on active pairs, minus that on the
  # closest negative: the rank weight itself must carry no gradient.
  rng = np.random.default_rng(seed)
  d_pos, d_neg = _random_distances(rng, 32, 4, 1.6)
  dp, dn = tf.Variable(d_pos), tf.Variable(d_neg)
  with tf.GradientTape() as tape:
    loss = losses.embedding_loss(dp, dn, 1.6, 2406,
                                 use_rank_weight=use_rank_weight)
  g_pos, g_neg = tape.gradient(
      loss, [dp, dn], unconnected_gradients=tf.UnconnectedGradients.ZERO)
  e_pos, e_neg = oracles.embedding_loss_grads(d_pos, d_neg, 1.6, 2406,
                                              use_rank_weight=use_rank_weight)
  np.testing.assert_allclose(np.asarray(g_pos), e_pos, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_neg), e_neg, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feature_loss_random(seed):
  rng = np.random.default_rng(seed)
  q = rng.normal(0.0, 0.125, size=(50, 8)).astype(np.float32)
  f = rng.normal(0.0, 0.125, size=(50, 8)).astype(np.float32)
  got = losses.feature_loss(_f32(q), _f32(f), 5.0)
  assert float(got) == pytest.approx(oracles.feature_loss(q, f, 5.0),
                                     rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covariance_loss_random(seed):
  rng = np.random.default_rng(seed)
  # A shared direction makes the off-diagonal sum clearly non-zero.
  shared = rng.normal(size=(1, 8))
  q = (rng.normal(0.0, 0.3, size=(30, 8)) +
       rng.normal(size=(30, 1)) * shared * 0.2).astype(np.float32)
  p = rng.normal(0.0, 0.3, size=(20, 8)).astype(np.float32)
  got = float(losses.covariance_loss(_f32(q), _f32(p), 5.0))
  expected = oracles.covariance_loss(q, p, 5.0)
  # The signed sum can cancel: scale the tolerance by the sum of |C|.
  x = np.concatenate([q, p]).astype(np.float64)
  x -= x.mean(axis=0)
  scale = 5.0 * np.abs(x.T @ x / x.shape[0]).sum()
  assert got == pytest.approx(expected, rel=RTOL, abs=RTOL * scale)


def test_covariance_loss_gradient_random():
  # d/dX of sum(C) - trace(C) with X centred: (2/n) (Xc 1 1^T - Xc)
  # (the centring term drops out because the columns of Xc sum to zero).
  rng = np.random.default_rng(4)
  q = rng.normal(0.0, 0.3, size=(6, 3)).astype(np.float32)
  p = rng.normal(0.0, 0.3, size=(4, 3)).astype(np.float32)
  qv, pv = tf.Variable(q), tf.Variable(p)
  with tf.GradientTape() as tape:
    loss = losses.covariance_loss(qv, pv, 2.0)
  g_q, g_p = tape.gradient(loss, [qv, pv])
  x = np.concatenate([q, p]).astype(np.float64)
  xc = x - x.mean(axis=0)
  expected = 2.0 * (2.0 / x.shape[0]) * (
      xc.sum(axis=1, keepdims=True) - xc)
  np.testing.assert_allclose(np.concatenate([np.asarray(g_q),
                                             np.asarray(g_p)]),
                             expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------- Adam


def test_keras_adam_matches_tf1_epsilon_hat_form():
  # docs/spec.md §3: Adam(1e-3, 0.9, 0.999, 1e-8) in the release's TF1 form. The port
  # uses keras.optimizers.Adam; check it is that form, step by step.
  rng = np.random.default_rng(5)
  init = rng.normal(size=(5, 3)).astype(np.float32)
  var = tf.Variable(init)
  opt = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999,
                              epsilon=1e-8)
  ref = init.astype(np.float64)
  m = np.zeros_like(ref)
  v = np.zeros_like(ref)
  for t in range(1, 6):
    grad = rng.normal(size=(5, 3)).astype(np.float32)
    opt.apply_gradients([(tf.constant(grad), var)])
    ref, m, v = oracles.adam_step(ref, grad, m, v, t, lr=1e-3, b1=0.9,
                                  b2=0.999, eps=1e-8)
  np.testing.assert_allclose(var.numpy(), ref, rtol=1e-5, atol=1e-6)
