"""The MAML model: forward values vs the numpy oracle, the fast path vs the
plain computation, and what one train_step changes in each mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.models.maml import MAML
from tests import oracles
from tests.helpers import MAML_ITEMS, MAML_USERS
from tests.helpers import maml_batch as _batch, maml_model as _model

N_USERS, N_ITEMS = MAML_USERS, MAML_ITEMS


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def _oracle_loss(m, users, items):
  """Every loss term from the numpy oracles and the model's weights."""
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  F = None
  if m.feature_dim:
    f = m.fusion
    F = oracles.fusion(_np(m.item_features), [
        (_np(d.kernel), _np(d.bias)) for d in (f.dense1, f.dense2, f.dense3, f.out)])
  u, it = users.numpy(), items.numpy()
  p = np.repeat(P[u], it.shape[1], 0)
  q = Q[it.ravel()]
  if m.attention is None:
    a = None
  else:
    att = m.attention
    a = oracles.attention(p, q, None if F is None else F[it.ravel()],
                          _np(att.dense1.kernel), _np(att.dense1.bias),
                          _np(att.dense2.kernel), _np(att.dense2.bias), att.alpha)
  d = oracles.distance(a, p, q).reshape(it.shape)
  terms = {"embedding_loss": oracles.embedding_loss(
      d[:, 0], d[:, 1:], m.margin, N_ITEMS, m.use_rank_weight)}
  if F is not None:
    terms["feature_loss"] = oracles.feature_loss(Q, F, m.feature_l2_reg)
  terms["cov_loss"] = oracles.covariance_loss(Q, P, m.cov_loss_weight)
  return terms, F


@pytest.mark.parametrize("attention", ["scaled", "softmax", "none"])
@pytest.mark.parametrize("features", [True, False])
def test_loss_terms_match_the_oracle(attention, features):
  m = _model(attention=attention, features=features)
  users, items = _batch()
  expected, F = _oracle_loss(m, users, items)
  got = {k: float(v) for k, v in m.loss_terms(users, items).items()}
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=2e-5, atol=1e-4, err_msg=name)
  assert got["loss"] == pytest.approx(sum(got[k] for k in expected), rel=1e-6)
  if F is not None:  # Q starts at F (docs/spec.md §2.1)
    np.testing.assert_allclose(_np(m.item_embeddings), F, atol=1e-6)


def test_initial_embeddings_are_normal_with_std_one_over_sqrt_k():
  keras.utils.set_random_seed(0)
  m = MAML(4000, 10, embed_dim=16, seed=0, clip_norm=100.0)
  P = _np(m.user_embeddings)
  assert abs(P.std() - 1 / 4) < 0.005 and abs(P.mean()) < 0.005


@pytest.mark.parametrize("by_table", [True, False])
def test_fast_path_equals_plain_computation_values_and_gradients(by_table):
  m = _model()
  # 5 x 4 = 20 pairs > 7 items projects the whole table; 1 x 2 gathers rows.
  users, items = _batch(b=5, w=3) if by_table else _batch(b=1, w=1)
  variables = [m.user_embeddings, m.item_embeddings]
  out = {}
  for fast in (True, False):
    m.use_fastpath = fast
    with tf.GradientTape() as tape:
      d = m.pair_distances(users, items, m.item_fusion())
      loss = tf.reduce_sum(tf.sin(3.0 * d))  # any smooth function of d
    out[fast] = [d.numpy()] + [tf.convert_to_tensor(g).numpy()
                               for g in tape.gradient(loss, variables)]
  for a, b in zip(out[True], out[False]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      out[True][0], m.plain_pair_distances(users, items).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("use_rank_weight", [True, False])
@pytest.mark.parametrize("duplicate_negative", [False, True])
@pytest.mark.parametrize("rows", [6, 1])
def test_hardest_negative_backward_equals_full_autodiff(use_rank_weight,
                                                        duplicate_negative, rows):
  """The fast path's loss (all pairs scored once, the backward pass through
  the positive and the closest negative only) against plain autodiff of the
  loss over all pairs: same terms, same gradients. 6 rows x 5 pairs > 7
  items projects the whole catalogue; 1 row x 5 pairs < 7 items projects
  the pairs' own rows."""
  m = _model(use_rank_weight=use_rank_weight)
  users, items = _batch(seed=4, b=rows, w=4)
  if duplicate_negative:  # a negative drawn twice: an exact tie in the min
    items = items.numpy()
    items[:, 2] = items[:, 1]
    items = tf.constant(items)
  variables = [m.user_embeddings, m.item_embeddings]
  out = {}
  for fast in (True, False):
    m.use_fastpath = fast
    assert m._hardest_negative_path(items) == fast
    with tf.GradientTape() as tape:
      terms = m.loss_terms(users, items)
    out[fast] = ({k: float(v) for k, v in terms.items()},
                 [tf.convert_to_tensor(g).numpy()
                  for g in tape.gradient(terms["loss"], variables)])
  assert out[True][0]["embedding_loss"] > 0  # the hinge is active somewhere
  for name, value in out[False][0].items():
    assert out[True][0][name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
  for a, b in zip(out[True][1], out[False][1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["scaled", "none"])
def test_score_items_is_minus_distance_to_every_item(attention):
  m = _model(attention=attention)
  users = tf.constant([0, 3, 8], tf.int32)
  all_items = tf.constant(np.tile(np.arange(N_ITEMS), (3, 1)), tf.int32)
  expected = -m.plain_pair_distances(users, all_items).numpy()
  for chunk in (None, 3, 4):  # padding of the last item chunk included
    np.testing.assert_allclose(m.score_items(users, chunk).numpy(), expected,
                               rtol=1e-5, atol=1e-6)


def _weights(m):
  return {v.path: _np(v) for v in m.weights}


def test_faithful_step_trains_only_the_embeddings_and_matches_oracle_adam():
  m = _model()
  users, items = _batch()
  before = _weights(m)
  # Reference gradient: autodiff of the plain computation.
  m.use_fastpath = False
  with tf.GradientTape() as tape:
    loss = m.loss_terms(users, items)["loss"]
  grads = [tf.convert_to_tensor(g).numpy() for g in
           tape.gradient(loss, [m.user_embeddings, m.item_embeddings])]
  m.use_fastpath = True
  m.train_step((users, items))
  after = _weights(m)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed == {m.user_embeddings.path, m.item_embeddings.path}
  for var, g in zip((m.user_embeddings, m.item_embeddings), grads):
    expected, _, _ = oracles.adam_step(before[var.path], g, 0.0, 0.0, 1)
    expected = oracles.clip_by_norm_rows(expected, 1.0)
    # Adam's first step moves each entry by ~lr * sign(g): where g is ~0 its
    # sign is rounding noise, so there the two may differ by up to 2 lr.
    tiny = np.abs(g) < 1e-6 * np.abs(g).max()
    tiny = np.broadcast_to(tiny.any(axis=1, keepdims=True), g.shape)
    np.testing.assert_allclose(after[var.path][~tiny], expected[~tiny], atol=1e-6)
    assert np.abs(after[var.path] - expected).max() <= 2e-3 + 1e-6
  # Gradients are dense: rows of users not in the batch moved too (Adam on
  # the covariance and feature terms).
  untouched = np.setdiff1d(np.arange(N_USERS), users.numpy())
  assert not np.allclose(after[m.user_embeddings.path][untouched],
                         before[m.user_embeddings.path][untouched])


def test_paper_step_trains_everything_with_l2_and_dropout():
  m = _model(mode="paper", dropout=0.5, attention_dropout=0.5)
  users, items = _batch()
  before = _weights(m)
  logs = m.train_step((users, items))
  assert "l2_loss" in logs and float(logs["l2_loss"]) > 0
  after = _weights(m)
  trainable = {v.path for v in m.trainable_variables}
  assert len(trainable) == 2 + 8 + 4  # P, Q, fusion 4 x (W, b), attention 2 x (W, b)
  for path in trainable:
    assert not np.array_equal(before[path], after[path]), path
  # Dropout acts only when training.
  f = m.fusion
  x = m.item_features
  assert not np.allclose(f(x, training=True), f(x, training=True))
  np.testing.assert_array_equal(f(x, training=False), f(x, training=False))
  # The L2 term is attention_l2 * sum of squared kernels (Keras' L2 form).
  att = m.attention
  expected = 100.0 * (np.sum(_np(att.dense1.kernel) ** 2) + np.sum(_np(att.dense2.kernel) ** 2))
  assert float(att.regularization_loss()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("trains", [("attention",), ("fusion",)])
def test_paper_trains_one_network_and_leaves_the_other_as_faithful(trains):
  m = _model(mode="paper", paper_trains=trains)
  users, items = _batch()
  before = _weights(m)
  fused = _np(m.fused_features)
  logs = m.train_step((users, items))
  after = _weights(m)
  names = {"fusion": {v.path for v in m.fusion.weights},
           "attention": {v.path for v in m.attention.weights}}
  trainable = {v.path for v in m.trainable_variables}
  for network, paths in names.items():
    for path in paths:
      moved = not np.array_equal(before[path], after[path])
      assert moved == (network in trains), (network, path)
      assert (path in trainable) == (network in trains), (network, path)
  assert ("l2_loss" in logs) == ("attention" in trains)
  if trains == ("attention",):  # the stored F of faithful mode, unchanged
    np.testing.assert_array_equal(_np(m.item_fusion(training=True)), fused)
  clone = MAML.from_config(m.get_config())
  assert clone.paper_trains == trains
  with pytest.raises(ValueError, match="`paper_trains` must name one or both"):
    _model(mode="paper", paper_trains=("attention", "embeddings"))


def test_paper_trains_flag_is_checked():
  from maml_tf.config import Config
  from maml_tf.errors import UsageError
  for bad in ((), ("fusion", "fusion"), ("tables",)):
    with pytest.raises(UsageError, match=r"^`--paper_trains` must name fusion, "
                       r"attention or both, once each"):
      Config(mode="paper", paper_trains=bad).validate()


def test_rows_stay_in_the_unit_ball_after_steps():
  m = _model()
  m.optimizer.learning_rate.assign(0.5)  # big steps push rows outward
  for seed in range(3):
    m.train_step(_batch(seed))
  for table in (m.user_embeddings, m.item_embeddings):
    assert np.linalg.norm(_np(table), axis=1).max() <= 1.0 + 1e-6


def test_cml_has_random_items_and_no_feature_loss():
  m = _model(attention="none", features=False)
  terms = m.loss_terms(*_batch())
  assert set(terms) == {"loss", "embedding_loss", "cov_loss"}
  assert m.fusion is None and m.attention is None
  m2 = _model(attention="none", features=False, use_cov_loss=False)
  assert set(m2.loss_terms(*_batch())) == {"loss", "embedding_loss"}


def test_model_config_round_trip():
  m = _model(mode="paper", attention="softmax")
  clone = MAML.from_config(m.get_config())
  assert clone.get_config() == m.get_config()


def test_only_the_fast_path_keeps_its_step_out_of_one_xla_cluster():
  """Faithful MAML with attention compiles its own kernels, and its step is
  not XLA-compiled whole (measured faster, docs/speed.md); paper mode and
  MAML without attention are, like every other model."""
  from maml_tf.config import Config
  from maml_tf.models.mf import MF
  from maml_tf.train import build
  from tests.helpers import tiny_dataset
  assert _model().compiles_whole_step is False
  assert _model(mode="paper").compiles_whole_step is True
  assert _model(attention="none").compiles_whole_step is True
  assert MF(4, 5, embed_dim=3).compiles_whole_step is True
  ds = tiny_dataset()
  for model, whole in (("maml", False), ("mf", True)):
    config = Config(model=model, modalities=(), embed_dim=4, jit_compile=True)
    assert build.build_model(config, ds).jit_compile is whole, model
  config = Config(model="mf", modalities=(), embed_dim=4, jit_compile=False)
  assert build.build_model(config, ds).jit_compile is False
