"""The numpy oracles checked on tiny cases worked out by hand.

Every expected number below is written from the arithmetic in its comment,
not from the oracle, so a slip in `oracles.py` shows up here before it can
make a package test pass or fail for the wrong reason.
"""

import math

import numpy as np
import pytest

try:
  from tests import oracles
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir mode)
  import oracles


# ----------------------------------------------------------------- norms


def test_l2norm_rows_hand():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]])
  got = oracles.l2norm_rows(x)
  # [3, 4] / 5 = [0.6, 0.8]
  # a zero row stays zero (divided by sqrt(1e-12) = 1e-6)
  # [1e-7, 0]: sum of squares 1e-14 < 1e-12, so divided by 1e-6 -> [0.1, 0]
  np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [0.1, 0.0]],
                             rtol=1e-12, atol=1e-15)


def test_clip_by_norm_rows_hand():
  x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [0.0, -2.0]])
  got = oracles.clip_by_norm_rows(x, 1.0)
  # [3, 4]: norm 5 > 1 -> [3, 4] * 1 / 5 = [0.6, 0.8]
  # [0.3, 0.4]: norm 0.5 <= 1 -> unchanged
  # [0, 0]: stays zero
  # [0, -2]: norm 2 -> [0, -1]
  np.testing.assert_allclose(
      got, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [0.0, -1.0]], rtol=1e-12)


def test_clip_by_norm_rows_other_norm():
  # c = 2: [3, 4] -> [3, 4] * 2 / 5 = [1.2, 1.6]; [1, 1] (norm 1.414) kept
  got = oracles.clip_by_norm_rows(np.array([[3.0, 4.0], [1.0, 1.0]]), 2.0)
  np.testing.assert_allclose(got, [[1.2, 1.6], [1.0, 1.0]], rtol=1e-12)


# ---------------------------------------------------------------- fusion


def _hand_fusion_weights():
  # d = 2 (1 text + 1 image column), H = 2, H/2 = 1, K = 2.
  k1 = np.eye(2)
  b1 = np.array([0.0, -1.0])
  k2 = np.array([[2.0], [5.0]])
  b2 = np.array([0.5])
  k3 = np.array([[-1.0]])
  b3 = np.array([3.0])
  k4 = np.array([[1.0, -2.0]])
  b4 = np.array([0.0, 0.0])
  return [(k1, b1), (k2, b2), (k3, b3), (k4, b4)]


def test_fusion_hand():
  x = np.array([[3.0, 4.0]])
  # x = l2norm([3, 4]) = [0.6, 0.8]
  # h1 = relu([0.6, 0.8] @ I + [0, -1]) = relu([0.6, -0.2]) = [0.6, 0]
  # l2norm(h1) = [1, 0]
  # h2 = relu(1 * 2 + 0 * 5 + 0.5) = 2.5;  l2norm(h2) = [1]
  # h3 = relu(1 * -1 + 3) = 2
  # out = 2 * [1, -2] + 0 = [2, -4], norm sqrt(20) > 1
  # F = [2, -4] / sqrt(20) = [0.4472136, -0.8944272]
  got = oracles.fusion(x, _hand_fusion_weights())
  s20 = math.sqrt(20.0)
  np.testing.assert_allclose(got, [[2.0 / s20, -4.0 / s20]], rtol=1e-12)


def test_fusion_hand_scaling_keeps_short_rows():
  # Same as above but s = 0.1: out * s = [0.2, -0.4], norm 0.447 <= 1, kept.
  got = oracles.fusion(np.array([[3.0, 4.0]]), _hand_fusion_weights(),
                       scaling=0.1)
  np.testing.assert_allclose(got, [[0.2, -0.4]], rtol=1e-12)


def test_fusion_input_normalised_jointly():
  # [6, 8] and [3, 4] are the same after the joint normalisation.
  w = _hand_fusion_weights()
  np.testing.assert_allclose(oracles.fusion(np.array([[6.0, 8.0]]), w),
                             oracles.fusion(np.array([[3.0, 4.0]]), w),
                             rtol=1e-12)


# ------------------------------------------------------------- attention


def test_attention_hand_tail_only():
  # K = 2, f None: W1 = 0, b1 = 0 -> a1 = tanh(0) = 0 -> l2norm(0) = 0
  # a2 = relu(0 @ W2 + [ln 3, 0]) = [ln 3, 0]
  # softmax = [3, 1] / 4 = [0.75, 0.25]; alpha = 2 -> [1.5, 0.5]
  p = np.array([[1.0, 0.0]])
  q = np.array([[0.0, 1.0]])
  W1 = np.zeros((4, 10))
  b1 = np.zeros(10)
  W2 = np.zeros((10, 2))
  b2 = np.array([math.log(3.0), 0.0])
  got = oracles.attention(p, q, None, W1, b1, W2, b2, alpha=2.0)
  np.testing.assert_allclose(got, [[1.5, 0.5]], rtol=1e-12)


def _hand_attention_case():
  # K = 2, f None, p = [3, 0], q = [0, 4]
  # z = [3, 0, 0, 4] / 5 = [0.6, 0, 0, 0.8]
  # W1 [4, 10]: W1[0, 0] = 1, W1[3, 1] = 1 -> a1 = [tanh 0.6, tanh 0.8, 0...]
  p = np.array([[3.0, 0.0]])
  q = np.array([[0.0, 4.0]])
  W1 = np.zeros((4, 10))
  W1[0, 0] = 1.0
  W1[3, 1] = 1.0
  b1 = np.zeros(10)
  W2 = np.zeros((10, 2))
  W2[0, 0] = 1.0
  W2[1, 1] = 1.0
  b2 = np.zeros(2)
  return p, q, W1, b1, W2, b2


def test_attention_hand_full_path():
  p, q, W1, b1, W2, b2 = _hand_attention_case()
  # t1 = tanh(0.6) = 0.53705, t2 = tanh(0.8) = 0.66404
  # l2norm(a1) = [t1, t2] / sqrt(t1^2 + t2^2) = [0.62884, 0.77753]
  # a2 = relu([n1, n2]) = [n1, n2]  (W2 picks components 0 and 1)
  # a = 4 * softmax([n1, n2]) = 4 * [1, e^(n2 - n1)] / (1 + e^(n2 - n1))
  t1, t2 = math.tanh(0.6), math.tanh(0.8)
  norm = math.sqrt(t1 * t1 + t2 * t2)
  n1, n2 = t1 / norm, t2 / norm
  e = math.exp(n2 - n1)
  expected = [[4.0 / (1.0 + e), 4.0 * e / (1.0 + e)]]
  assert expected[0][0] == pytest.approx(1.85159, abs=1e-4)
  got = oracles.attention(p, q, None, W1, b1, W2, b2, alpha=4.0)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_attention_hand_relu_zeroes():
  p, q, W1, b1, W2, b2 = _hand_attention_case()
  W2[1, 1] = -1.0
  # a2 = relu([n1, -n2]) = [n1, 0]; a = 4 * [e^n1, 1] / (e^n1 + 1)
  t1, t2 = math.tanh(0.6), math.tanh(0.8)
  n1 = t1 / math.sqrt(t1 * t1 + t2 * t2)
  e = math.exp(n1)
  got = oracles.attention(p, q, None, W1, b1, W2, b2, alpha=4.0)
  np.testing.assert_allclose(got, [[4.0 * e / (e + 1.0), 4.0 / (e + 1.0)]],
                             rtol=1e-12)


def test_attention_with_features_joint_norm():
  # f is part of the one normalisation: p = [3, 0], q = [0, 0], f = [0, 4]
  # z = [3, 0, 0, 0, 0, 4] / 5; W1[0, 0] = 1, W1[5, 1] = 1 gives the same
  # a1 as the f=None case above, so the same attention comes out.
  p, _, W1_, b1, W2, b2 = _hand_attention_case()
  W1 = np.zeros((6, 10))
  W1[0, 0] = 1.0
  W1[5, 1] = 1.0
  got = oracles.attention(p, np.zeros((1, 2)), np.array([[0.0, 4.0]]),
                          W1, b1, W2, b2, alpha=4.0)
  expected = oracles.attention(p, np.array([[0.0, 4.0]]), None, W1_, b1, W2,
                               b2, alpha=4.0)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_attention_sums_to_alpha():
  rng = np.random.default_rng(0)
  K = 3
  p, q, f = (rng.normal(size=(5, K)) for _ in range(3))
  W1, b1 = rng.normal(size=(3 * K, 5 * K)), rng.normal(size=5 * K)
  W2, b2 = rng.normal(size=(5 * K, K)), rng.normal(size=K)
  a = oracles.attention(p, q, f, W1, b1, W2, b2, alpha=float(K))
  np.testing.assert_allclose(a.sum(axis=1), np.full(5, 3.0), rtol=1e-12)
  assert np.all(a > 0)


# -------------------------------------------------------------- distance


def test_distance_hand():
  a = np.array([[1.0, 2.0]])
  p = np.array([[1.0, 1.0]])
  q = np.array([[0.0, 3.0]])
  # (1*1 - 1*0)^2 + (2*1 - 2*3)^2 = 1 + 16 = 17
  np.testing.assert_allclose(oracles.distance(a, p, q), [17.0])
  # CML: (1 - 0)^2 + (1 - 3)^2 = 1 + 4 = 5
  np.testing.assert_allclose(oracles.distance(None, p, q), [5.0])


# ---------------------------------------------------------------- losses


def test_warp_rank_hand_and_strict_boundary():
  # m = 1, |I| = 10
  # pair 0: d_pos 2, negs [1.5, 4]: 2-1.5+1 = 1.5 > 0 yes; 2-4+1 = -1 no
  #         -> 1/2 * 10 = 5
  # pair 1: d_pos 1, negs [2, 2]: 1-2+1 = 0, not > 0 -> 0
  # pair 2: d_pos 0.5, negs [0.2, 0.4]: 1.3 and 1.1 -> 2/2 * 10 = 10
  d_pos = np.array([2.0, 1.0, 0.5])
  d_neg = np.array([[1.5, 4.0], [2.0, 2.0], [0.2, 0.4]])
  np.testing.assert_allclose(oracles.warp_rank(d_pos, d_neg, 1.0, 10),
                             [5.0, 0.0, 10.0])


def test_embedding_loss_two_pairs_hand():
  # m = 1, |I| = 10
  # pair 0: d_pos 2, negs [1.5, 4] -> rank 5 (above);
  #         hinge = max(2 - min(1.5, 4) + 1, 0) = 1.5; loss 1.5 * ln(6)
  # pair 1: d_pos 0.5, negs [0.2, 0.4] -> rank 10;
  #         hinge = 0.5 - 0.2 + 1 = 1.3; loss 1.3 * ln(11)
  # SUM = 1.5 ln 6 + 1.3 ln 11 = 2.68763 + 3.11728 = 5.80491
  d_pos = np.array([2.0, 0.5])
  d_neg = np.array([[1.5, 4.0], [0.2, 0.4]])
  expected = 1.5 * math.log(6.0) + 1.3 * math.log(11.0)
  assert expected == pytest.approx(5.80491, abs=1e-4)
  assert oracles.embedding_loss(d_pos, d_neg, 1.0, 10) == pytest.approx(
      expected, rel=1e-12)
  # Without the rank weight: 1.5 + 1.3 = 2.8
  assert oracles.embedding_loss(d_pos, d_neg, 1.0, 10,
                                use_rank_weight=False) == pytest.approx(2.8)


def test_embedding_loss_inactive_pair_is_zero():
  # d_pos 1, negs [3, 2.5], m 1: hinge = max(1 - 2.5 + 1, 0) = 0, rank 0
  assert oracles.embedding_loss(np.array([1.0]), np.array([[3.0, 2.5]]), 1.0,
                                10) == 0.0


def test_embedding_loss_grads_hand():
  # pair 0 above: weight ln 6 on d_pos, -ln 6 on the closest negative (j=0)
  # pair 1: weight ln 11, closest negative j=0 (0.2)
  g_pos, g_neg = oracles.embedding_loss_grads(
      np.array([2.0, 0.5]), np.array([[1.5, 4.0], [0.2, 0.4]]), 1.0, 10)
  np.testing.assert_allclose(g_pos, [math.log(6.0), math.log(11.0)])
  np.testing.assert_allclose(g_neg, [[-math.log(6.0), 0.0],
                                     [-math.log(11.0), 0.0]])


def test_feature_loss_hand():
  Q = np.array([[1.0, 2.0], [0.0, 0.0]])
  F = np.array([[0.0, 2.0], [1.0, 1.0]])
  # diffs [1, 0] and [-1, -1] -> 1 + 2 = 3; weight 5 -> 15
  assert oracles.feature_loss(Q, F, 5.0) == pytest.approx(15.0)


def test_covariance_loss_three_rows_hand():
  Q = np.array([[1.0, 0.0], [0.0, 1.0]])
  P = np.array([[2.0, 2.0]])
  # rows (1,0), (0,1), (2,2); column mean (1, 1)
  # centred (0,-1), (-1,0), (1,1)
  # C00 = (0 + 1 + 1)/3 = 2/3, C11 = (1 + 0 + 1)/3 = 2/3
  # C01 = (0*-1 + -1*0 + 1*1)/3 = 1/3
  # sum(C) - trace(C) = 2 * 1/3 = 2/3; weight 5 -> 10/3
  assert oracles.covariance_loss(Q, P, 5.0) == pytest.approx(10.0 / 3.0)


def test_covariance_loss_is_signed():
  # rows (1,-1), (-1,1): mean 0, C01 = (-1 + -1)/2 = -1 -> sum - trace = -2
  assert oracles.covariance_loss(np.array([[1.0, -1.0]]),
                                 np.array([[-1.0, 1.0]]), 1.0) == (
                                     pytest.approx(-2.0))


# ------------------------------------------------------------------ adam


def test_adam_two_steps_hand():
  # lr 0.1, defaults b1 0.9, b2 0.999, eps 1e-8; var 1
  # step 1, g = 0.5: m = 0.05, v = 0.001 * 0.25 = 2.5e-4
  #   lr_t = 0.1 * sqrt(1 - 0.999) / (1 - 0.9) = sqrt(0.001) = 0.0316228
  #   var = 1 - 0.0316228 * 0.05 / (0.0158114 + 1e-8) = 1 - 0.1 = 0.9
  var, m, v = oracles.adam_step(1.0, 0.5, 0.0, 0.0, 1, lr=0.1)
  assert float(m) == pytest.approx(0.05)
  assert float(v) == pytest.approx(2.5e-4)
  step1 = math.sqrt(0.001) * 0.05 / (math.sqrt(2.5e-4) + 1e-8)
  assert step1 == pytest.approx(0.1, rel=1e-6)
  assert float(var) == pytest.approx(1.0 - step1, rel=1e-12)
  # step 2, g = -1: m = 0.9 * 0.05 - 0.1 = -0.055
  #   v = 0.999 * 2.5e-4 + 0.001 * 1 = 1.24975e-3
  #   lr_t = 0.1 * sqrt(1 - 0.999^2) / (1 - 0.9^2)
  #        = 0.1 * sqrt(0.001999) / 0.19 = 0.0235317
  #   var = 0.9 + 0.0235317 * 0.055 / 0.0353518 = 0.9 + 0.036611 = 0.936611
  var, m, v = oracles.adam_step(var, -1.0, m, v, 2, lr=0.1)
  assert float(m) == pytest.approx(-0.055)
  assert float(v) == pytest.approx(1.24975e-3)
  lr_t = 0.1 * math.sqrt(0.001999) / 0.19
  expected = (1.0 - step1) + lr_t * 0.055 / (math.sqrt(1.24975e-3) + 1e-8)
  assert expected == pytest.approx(0.936611, abs=1e-6)
  assert float(var) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------- metrics


def test_user_metrics_hits_at_0_and_2_of_3_tests():
  # ranked [5, 9, 7, 1, ...], test {5, 7, 8}, k = 10: hits at 0 and 2
  # DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
  # IDCG over min(3, 10) = 3: 1 + 1/log2(3) + 1/log2(4) = 2.1309298
  # NDCG = 1.5 / 2.1309298 = 0.7039180
  # recall 2/3, precision 2/10, hr 1
  ranked = [5, 9, 7, 1, 2, 3, 4, 6, 10, 11, 8]  # 8 at position 10: outside
  got = oracles.user_metrics(ranked, [5, 7, 8], 10)
  expected_ndcg = 1.5 / (1.0 + 1.0 / math.log2(3.0) + 0.5)
  assert expected_ndcg == pytest.approx(0.7039180, abs=1e-6)
  assert got["ndcg"] == pytest.approx(expected_ndcg, rel=1e-12)
  assert got["recall"] == pytest.approx(2.0 / 3.0)
  assert got["precision"] == pytest.approx(0.2)
  assert got["hr"] == 1.0


def test_user_metrics_idcg_capped_at_k():
  # 3 test items, k = 2, both top slots hit: DCG = IDCG = 1 + 1/log2(3)
  # -> ndcg 1, recall 2/3, precision 1
  got = oracles.user_metrics([4, 2, 0], [0, 2, 4], 2)
  assert got["ndcg"] == pytest.approx(1.0)
  assert got["recall"] == pytest.approx(2.0 / 3.0)
  assert got["precision"] == pytest.approx(1.0)
  assert got["hr"] == 1.0


def test_user_metrics_no_hit():
  got = oracles.user_metrics([0, 1, 2], [7], 3)
  assert got == {"ndcg": 0.0, "recall": 0.0, "hr": 0.0, "precision": 0.0}


def test_rank_excluding_ties_go_to_lower_id():
  # scores [0.5, 0.9, 0.5, 0.5]; exclude {2}: 1 first, then ties 0, 3
  assert oracles.rank_excluding([0.5, 0.9, 0.5, 0.5], [2]) == [1, 0, 3]


def test_evaluate_hand():
  scores = np.array([
      [0.9, 0.8, 0.7, 0.1, 0.5],
      [0.5, 0.5, 0.5, 0.5, 0.5],
      [0.1, 0.2, 0.3, 0.4, 0.5],
  ])
  train = [np.array([0]), np.array([1]), np.array([], dtype=int)]
  test = [np.array([2, 3]), np.array([3]), np.array([], dtype=int)]
  # user 0: drop item 0 -> ranking 1 (0.8), 2 (0.7), 4 (0.5), 3 (0.1)
  #   top-2 [1, 2]: hit at position 1 -> DCG = 1/log2(3)
  #   IDCG (min(2, 2) = 2) = 1 + 1/log2(3); recall 1/2, precision 1/2, hr 1
  # user 1: all tied, drop 1 -> 0, 2, 3, 4; top-2 [0, 2]: no hit -> zeros
  # user 2: no test items -> not averaged
  got = oracles.evaluate(scores, train, test, 2)
  c = 1.0 / math.log2(3.0)
  assert got["ndcg"] == pytest.approx(c / (1.0 + c) / 2.0)
  assert got["recall"] == pytest.approx(0.25)
  assert got["precision"] == pytest.approx(0.25)
  assert got["hr"] == pytest.approx(0.5)
