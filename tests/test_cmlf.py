"""CMLF (CML with item features, Hsieh et al. 2017, section 3.4): the
feature MLP against a numpy oracle, the loss terms against the oracles of
tests/oracles.py, the feature loss's gradient against the hand-derived
one, dropout only while training, the initialisation Q = f(x), why no
--model=maml flag combination is the same model (the shared terms agree,
the networks differ), the config round trip, bad arguments, the export in
an isolated process, and the CLI end to end."""

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.config import Config
from maml_tf.errors import UsageError
from maml_tf.models.cml import CML
from maml_tf.models.cmlf import CMLF, FeatureMLP
from maml_tf.models.maml import MAML
from tests import oracles
from tests.helpers import (check_cli_export, check_export, export_dataset,
                           office_config, served_and_retrieved)

N_USERS, N_ITEMS, D, H, FEAT = 6, 9, 4, 7, 5
LAMBDA_F, LAMBDA_C, MARGIN = 0.7, 2.0, 1.1


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def oracle_mlp(x, W1, b1, W2, b2, scaling, clip_norm):
  """clip(s * (relu(x W1 + b1) W2 + b2)), every row to norm <= c."""
  h = oracles.relu(oracles.dense(x, W1, b1))
  return oracles.clip_by_norm_rows(oracles.dense(h, W2, b2) * scaling, clip_norm)


def _mlp_weights(m):
  mlp = m.feature_mlp
  return (_np(mlp.hidden.kernel), _np(mlp.hidden.bias), _np(mlp.out.kernel),
          _np(mlp.out.bias))


def _features(seed=0):
  return np.random.default_rng(seed).normal(size=(N_ITEMS, FEAT)).astype(np.float32)


def _model(dropout=0.0, scaling=1.0, seed=0, spread=True):
  m = CMLF(N_USERS, N_ITEMS, feature_dim=FEAT, embed_dim=D, hidden_dim=H,
           dropout=dropout, feature_l2_reg=LAMBDA_F, feature_scaling=scaling,
           margin=MARGIN, cov_loss_weight=LAMBDA_C, seed=seed)
  m.set_item_features(_features(seed))
  if spread:  # tables away from f(x), inside the unit ball
    rng = np.random.default_rng(seed + 4)
    for table in (m.user_embeddings, m.item_embeddings):
      rows = rng.normal(size=table.shape)
      table.assign((0.9 * rows / np.linalg.norm(rows, axis=1, keepdims=True)
                    ).astype(np.float32))
  return m


def _batch(seed=1, b=8, w=3):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, N_USERS, b).astype(np.int32),
          rng.integers(0, N_ITEMS, (b, 1 + w)).astype(np.int32))


def test_feature_mlp_matches_the_oracle_with_and_without_clipping():
  m = _model(scaling=3.0)
  x = _features()
  want = oracle_mlp(x, *_mlp_weights(m), 3.0, 1.0)
  got = m.projected_features(training=False).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  W1, b1, W2, b2 = _mlp_weights(m)
  unclipped = 3.0 * oracles.dense(oracles.relu(oracles.dense(x, W1, b1)), W2, b2)
  norms = np.linalg.norm(unclipped, axis=1)
  assert (norms > 1).any() and (norms < 1).any()  # both cases exercised
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.minimum(norms, 1.0),
                             rtol=1e-5)


def test_items_start_at_the_projected_features():
  m = _model(spread=False)
  np.testing.assert_allclose(_np(m.item_embeddings),
                             oracle_mlp(_features(), *_mlp_weights(m), 1.0, 1.0),
                             rtol=1e-5, atol=1e-6)


def test_loss_terms_match_the_oracles():
  m = _model()
  users, items = _batch()
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  d = np.array([[np.sum((P[u] - Q[i]) ** 2) for i in row]
                for u, row in zip(users, items)])
  emb = oracles.embedding_loss(d[:, 0], d[:, 1:], MARGIN, N_ITEMS)
  cov = oracles.covariance_loss(Q, P, LAMBDA_C)
  F = oracle_mlp(_features(), *_mlp_weights(m), 1.0, 1.0)
  feat = oracles.feature_loss(Q, F, LAMBDA_F)
  assert list(terms) == ["loss", "embedding_loss", "feature_loss", "cov_loss"]
  assert float(terms["embedding_loss"]) == pytest.approx(emb, rel=1e-5)
  assert float(terms["cov_loss"]) == pytest.approx(cov, rel=1e-4, abs=1e-6)
  assert float(terms["feature_loss"]) == pytest.approx(feat, rel=1e-5)
  assert float(terms["loss"]) == pytest.approx(emb + cov + feat, rel=1e-5)
  assert emb > 0 and feat > 0


def test_feature_loss_gradient_is_the_hand_derived_one():
  # Unclipped rows (small scaling, checked): f = s (relu(x W1 + b1) W2 + b2)
  # and L_f = lambda sum ||f - Q||^2, so with G = 2 lambda (f - Q):
  # dQ = -G, dW2 = s h^T G, db2 = s sum G, dW1 = x^T ((s G W2^T) * [pre > 0]).
  m = _model(scaling=0.05)
  users, items = _batch(seed=2)
  mlp = m.feature_mlp
  variables = [m.item_embeddings, mlp.hidden.kernel, mlp.hidden.bias,
               mlp.out.kernel, mlp.out.bias]
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["feature_loss"]
  got = [_np(tf.convert_to_tensor(g)) for g in tape.gradient(loss, variables)]
  W1, b1, W2, b2 = _mlp_weights(m)
  x = _features().astype(np.float64)
  pre = x @ W1 + b1
  h = np.maximum(pre, 0.0)
  f = 0.05 * (h @ W2 + b2)
  assert np.linalg.norm(f, axis=1).max() < 1.0  # no row clipped
  G = 2 * LAMBDA_F * (f - _np(m.item_embeddings))
  dh = (0.05 * G @ W2.T) * (pre > 0)
  want = [-G, x.T @ dh, dh.sum(0), 0.05 * h.T @ G, 0.05 * G.sum(0)]
  for name, g, w in zip(["Q", "W1", "b1", "W2", "b2"], got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7, err_msg=name)


def test_total_gradient_is_cmls_plus_the_feature_term():
  m = _model()
  users, items = _batch(seed=3)
  plain = CML(N_USERS, N_ITEMS, embed_dim=D, margin=MARGIN,
              cov_loss_weight=LAMBDA_C, seed=0)
  plain.user_embeddings.assign(m.user_embeddings)
  plain.item_embeddings.assign(m.item_embeddings)
  with tf.GradientTape() as tape:
    total = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  g_p, g_q = tape.gradient(total, [m.user_embeddings, m.item_embeddings])
  with tf.GradientTape() as tape:
    base = plain.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  c_p, c_q = tape.gradient(base, [plain.user_embeddings, plain.item_embeddings])
  F = m.projected_features().numpy()
  np.testing.assert_allclose(_np(tf.convert_to_tensor(g_p)),
                             _np(tf.convert_to_tensor(c_p)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      _np(tf.convert_to_tensor(g_q)) - _np(tf.convert_to_tensor(c_q)),
      2 * LAMBDA_F * (_np(m.item_embeddings) - F), rtol=1e-4, atol=1e-5)


def test_dropout_acts_only_while_training():
  users, items = _batch(seed=4)
  args = (tf.constant(users), tf.constant(items))
  m = _model(dropout=0.5)
  evals = {float(m.loss_terms(*args)["feature_loss"]) for _ in range(2)}
  trains = {float(m.loss_terms(*args, training=True)["feature_loss"]) for _ in range(3)}
  assert len(evals) == 1 and len(trains) == 3  # fresh masks each call
  assert evals.isdisjoint(trains)
  m0 = _model(dropout=0.0)
  assert float(m0.loss_terms(*args, training=True)["feature_loss"]) == pytest.approx(
      float(m0.loss_terms(*args)["feature_loss"]), rel=1e-6)


def test_train_steps_move_tables_and_mlp_and_keep_the_ball():
  m = _model(dropout=0.2)
  m.compile(optimizer=keras.optimizers.Adam(5e-2))
  users, items = _batch(seed=5, b=16)
  batch = (tf.constant(users), tf.constant(items))
  before = {v.path: _np(v) for v in m.trainable_variables}
  first = float(m.loss_terms(*batch)["loss"])
  for _ in range(20):
    logs = m.train_step(batch)
  assert set(logs) == {"loss", "embedding_loss", "feature_loss", "cov_loss"}
  for v in m.trainable_variables:
    assert not np.allclose(_np(v), before[v.path]), v.path
  assert {v.path.split("/")[0] for v in m.trainable_variables} >= {"feature_mlp"}
  for table in (m.user_embeddings, m.item_embeddings):
    assert np.linalg.norm(_np(table), axis=1).max() <= 1.0 + 1e-5
  assert float(m.loss_terms(*batch)["loss"]) < first


# ------------------------------------------------------------ vs --model=maml


def test_no_maml_flag_combination_is_cmlf():
  """MAML --attention=none shares CML's hinge and covariance terms with
  CMLF, but its feature network is not CML's trained MLP: frozen in faithful
  mode, and a different (3 hidden layers, l2-normalised) network in paper
  mode."""
  m = _model()
  x = _features()
  users, items = _batch(seed=6)
  for mode in ("faithful", "paper"):
    maml = MAML(N_USERS, N_ITEMS, feature_dim=FEAT, embed_dim=D, hidden_dim=H,
                attention="none", mode=mode, margin=MARGIN,
                feature_l2_reg=LAMBDA_F, cov_loss_weight=LAMBDA_C,
                paper_trains=("fusion",), seed=0)
    maml.set_item_features(x)
    maml.user_embeddings.assign(m.user_embeddings)
    maml.item_embeddings.assign(m.item_embeddings)
    a = maml.loss_terms(tf.constant(users), tf.constant(items))
    b = m.loss_terms(tf.constant(users), tf.constant(items))
    for term in ("embedding_loss", "cov_loss"):  # the shared CML part
      assert float(a[term]) == pytest.approx(float(b[term]), rel=1e-6)
    kernels = [v for v in maml.fusion.weights if v.name == "kernel"]
    assert len(kernels) == 4  # CMLF's f has 2
    trained = {v.path.split("/")[0] for v in maml.trainable_variables}
    if mode == "faithful":
      assert trained == {"user_embeddings", "item_embeddings"}  # f frozen
    else:
      assert "fusion" in trained
  assert len([v for v in m.feature_mlp.weights if v.name == "kernel"]) == 2


# ------------------------------------------------------------ config, errors


def test_get_config_round_trip():
  m = _model(dropout=0.3, scaling=0.5)
  config = m.get_config()
  clone = CMLF.from_config(config)
  assert clone.get_config() == config
  clone.set_weights(m.get_weights())
  users = tf.constant([0, 5], tf.int32)
  np.testing.assert_allclose(clone.score_items(users), m.score_items(users), rtol=1e-6)
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
  assert isinstance(restored, CMLF) and restored.feature_mlp.dropout == 0.3
  layer = FeatureMLP(6, 3, dropout=0.1, seed=2, name="f")
  assert FeatureMLP.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize("kwargs,message", [
    ({"feature_dim": 0}, r"`feature_dim` must be an integer > 0. Received: feature_dim=0"),
    ({"feature_l2_reg": -1.0}, r"`feature_l2_reg` must be >= 0. Received: "
     r"feature_l2_reg=-1.0"),
    ({"dropout": 1.0}, r"`dropout` must be in \[0, 1\). Received: dropout=1.0"),
    ({"hidden_dim": 0}, r"`hidden_dim` must be an integer > 0. Received: hidden_dim=0"),
    ({"margin": 0.0}, r"`margin` must be > 0. Received: margin=0.0"),
])
def test_bad_arguments_are_refused(kwargs, message):
  args = dict(feature_dim=FEAT)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    CMLF(N_USERS, N_ITEMS, **args)


def test_cmlf_without_a_content_modality_is_a_usage_error():
  ds = export_dataset(False, 0.0, seed=0)
  with pytest.raises(UsageError, match=r"^`--modalities` must name at least one "
                     r"content modality with --model=cmlf .*Received: ''$"):
    CMLF.from_run_config(Config(model="cmlf", modalities=()), ds)


def test_export_loads_in_an_isolated_process_and_matches(tmp_path):
  ds = export_dataset(True, 0.2, seed=0)
  config = Config(model="cmlf", embed_dim=4, hidden_layer_dim=8, seed=0)
  m = CMLF.from_run_config(config, ds)
  rng = np.random.default_rng(1)
  for table in (m.user_embeddings, m.item_embeddings):
    rows = rng.normal(size=table.shape)
    table.assign((rng.uniform(0.3, 1.0, (len(rows), 1)) * rows /
                  np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
  out = check_export(m, ds, tmp_path, "cmlf", exact_retrieve=True)
  info = export_lib.load_info(out["path"])
  assert info["model"] == "cmlf" and info["retrieval_metric"] == "euclidean"


# ------------------------------------------------------------ CLI


def test_cmlf_from_the_cli_trains_and_exports(tmp_path):
  summary, _, path = check_cli_export(tmp_path, "cmlf", [
      "--num_neg=3", "--embed_dim=4", "--hidden_layer_dim=8",
      "--dropout=0.1", "--feature_l2_reg=1.0", "--batch_size=16",
      "--learning_rate=0.01"])
  assert summary["modalities"] == ["meta"]
  train = summary["last"]["train"]
  assert set(train) >= {"loss", "embedding_loss", "feature_loss", "cov_loss"}
  assert train["feature_loss"] > 0
  rec, got = served_and_retrieved(path)
  np.testing.assert_array_equal(got["item_ids"], rec["item_ids"])  # plain Euclid


def test_the_office_flagfile_parses_and_validates():
  c = office_config("cmlf")
  # The MAML release's Office settings (office.flags).
  assert (c.modalities, c.embed_dim, c.num_neg, c.margin, c.feature_l2_reg,
          c.cov_loss_weight, c.hidden_layer_dim, c.dropout, c.batch_size) == (
              ("text", "meta"), 64, 4, 1.6, 5.0, 5.0, 256, 0.2, 5000)
  assert c.train_steps % c.eva_batches == 0
