"""The concentration statistics of explanation weights (maml_tf.evaluate.explanation):
hand-computed cases, invariance to each row's scale (MAML's attention rows
sum to alpha, not 1), bad input, and the report of a real explaining model
(LRML's memory attention) against numpy."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.evaluate import explanation
from maml_tf.models.lrml import LRML
from tests import oracles


def test_uniform_and_one_hot_rows_are_the_two_ends():
  uniform = explanation.concentration(np.ones((3, 4)))
  assert uniform["entropy"] == pytest.approx(math.log(4))
  assert uniform["entropy_ratio"] == pytest.approx(1.0)
  assert uniform["max_weight"] == pytest.approx(0.25)
  assert uniform["l1_from_uniform"] == pytest.approx(0.0, abs=1e-12)
  assert uniform["pair_spread"] == pytest.approx(0.0, abs=1e-12)
  one_hot = explanation.concentration(np.eye(4)[[0, 0, 2]])
  assert one_hot["entropy"] == pytest.approx(0.0, abs=1e-12)
  assert one_hot["entropy_ratio"] == pytest.approx(0.0, abs=1e-12)
  assert one_hot["max_weight"] == pytest.approx(1.0)
  assert one_hot["l1_from_uniform"] == pytest.approx(2 * (1 - 1 / 4))


def test_a_hand_computed_pair_of_rows():
  # Rows (1, 3) and (2, 2): p = (1/4, 3/4) and (1/2, 1/2).
  out = explanation.concentration([[1.0, 3.0], [2.0, 2.0]])
  h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
  h2 = math.log(2)
  assert out["entropy"] == pytest.approx((h1 + h2) / 2)
  assert out["entropy_ratio"] == pytest.approx((h1 / h2 + 1) / 2)
  assert out["max_weight"] == pytest.approx((0.75 + 0.5) / 2)
  assert out["l1_from_uniform"] == pytest.approx((0.5 + 0.0) / 2)
  # Column sds over the two rows: |1/4 - 1/2| / 2 = 1/8 for both columns.
  assert out["pair_spread"] == pytest.approx(0.125)


def test_each_rows_scale_does_not_matter():
  w = np.random.default_rng(0).uniform(0.1, 1.0, size=(6, 5))
  scaled = w * np.arange(1, 7)[:, None] * 5
  a, b = explanation.concentration(w), explanation.concentration(scaled)
  for key in a:
    assert a[key] == pytest.approx(b[key])


@pytest.mark.parametrize("weights, message", [
    (np.ones((3,)), "must have shape"),
    (np.ones((3, 1)), "must have shape"),
    (np.zeros((0, 3)), "must have shape"),
    ([[1.0, -1.0]], "non-negative"),
    ([[1.0, np.nan]], "finite"),
    ([[0.0, 0.0], [1.0, 1.0]], "positive sum"),
])
def test_bad_weights_are_refused(weights, message):
  with pytest.raises(ValueError, match=message):
    explanation.concentration(weights)


def test_the_sample_is_fixed_and_bounded():
  pairs = np.stack([np.arange(5000), np.arange(5000) % 7], 1)
  a, b = explanation.sample_pairs(pairs, 100), explanation.sample_pairs(pairs, 100)
  assert a.shape == (100, 2) and (a == b).all()
  assert len(np.unique(a[:, 0])) == 100
  np.testing.assert_array_equal(explanation.sample_pairs(pairs[:10], 100), pairs[:10])


def test_the_report_of_lrml_is_its_memory_attention_s_concentration():
  keras.utils.set_random_seed(0)
  m = LRML(6, 8, embed_dim=4, memory_slots=3, seed=0)
  pairs = np.array([[0, 1], [2, 7], [5, 3], [1, 1]])
  report = explanation.explanation_report(m, pairs)
  P = np.asarray(m.user_embeddings, np.float64)
  Q = np.asarray(m.item_embeddings, np.float64)
  keys = np.asarray(m.relation.keys, np.float64)
  memory = np.asarray(m.relation.memory, np.float64)
  beta = np.stack([oracles.lrml_relation(P[u], Q[i], keys, memory)[1]
                   for u, i in pairs])
  entropy = -(beta * np.log(beta)).sum(1)
  assert report["entropy"] == pytest.approx(entropy.mean(), rel=1e-5)
  assert report["max_weight"] == pytest.approx(beta.max(1).mean(), rel=1e-5)
  assert not any(k.startswith("share/") for k in report)  # slots are unnamed


@pytest.mark.parametrize("mode", ["faithful", "paper"])
def test_the_report_of_maml_normalises_its_attention_rows(mode):
  from tests.helpers import MAML_ITEMS, MAML_USERS, maml_model
  m = maml_model(mode=mode)
  pairs = np.stack([np.arange(MAML_USERS) % MAML_USERS, np.arange(MAML_USERS) % MAML_ITEMS], 1)
  _, a = m.score_pairs(tf.constant(pairs[:, 0], tf.int32),
                       tf.constant(pairs[:, 1], tf.int32), explain=True)
  p = np.asarray(a, np.float64) / np.asarray(a, np.float64).sum(1, keepdims=True)
  report = explanation.explanation_report(m, pairs)
  assert report["max_weight"] == pytest.approx(p.max(1).mean(), rel=1e-5)
  assert report["entropy_ratio"] == pytest.approx(
      (-(p * np.log(p)).sum(1) / np.log(p.shape[1])).mean(), rel=1e-5)


def test_an_explanation_of_one_column_has_nothing_to_report():
  keras.utils.set_random_seed(0)
  m = LRML(6, 8, embed_dim=4, memory_slots=1, seed=0)
  assert explanation.explanation_report(m, np.array([[0, 1], [2, 7]])) == {}
