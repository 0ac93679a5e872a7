"""VBPR: scores and loss terms against a numpy oracle written here from the
paper's eq. 2 and 5 (plus our two L2 terms), every gradient against the
hand-derived one, the dot-product scoring and its exact retrieval, a
subset of modalities, the config round trip, bad arguments, the export in
an isolated process, and the CLI end to end."""

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import data as data_lib
from maml_tf.config import Config
from maml_tf.errors import UsageError
from maml_tf.models.vbpr import VBPR
from tests.helpers import (check_cli_export, check_export, export_dataset,
                           office_config, served_and_retrieved)

N_USERS, N_ITEMS, D, FEAT = 6, 8, 3, 5


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _model(l2_reg=0.2, l2_e=0.3, seed=0):
  rng = np.random.default_rng(seed + 7)
  m = VBPR(N_USERS, N_ITEMS, feature_dim=FEAT, embed_dim=D, l2_reg=l2_reg,
           l2_e=l2_e, seed=seed)
  for v in m.trainable_variables:
    v.assign(rng.normal(scale=0.6, size=v.shape).astype(np.float32))
  m.set_item_features(rng.normal(size=(N_ITEMS, FEAT)).astype(np.float32))
  return m


def _params(m):
  return {"gu": _np(m.user_embeddings), "gi": _np(m.item_embeddings),
          "theta": _np(m.theta), "beta": _np(m.item_bias),
          "E": _np(m.projection), "bv": _np(m.visual_bias),
          "f": _np(m.item_features)}


def oracle_score(p, u, i):
  """beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i, with E
  stored [F, d] (so E f_i is f_i @ E)."""
  return float(p["beta"][i] + p["gu"][u] @ p["gi"][i] +
               p["theta"][u] @ (p["f"][i] @ p["E"]) + p["bv"] @ p["f"][i])


def oracle_loss_and_grads(p, users, pos, neg, l2_reg, l2_e):
  """(bpr, l2, l2_e, grads): BPR's mean -ln sigmoid(r_ui - r_uj); l2_reg
  sum over the batch of (||gu||^2 + ||theta_u||^2 + ||gi||^2 + ||gj||^2 +
  beta_i^2 + beta_j^2) / (2B); l2_e (||E||^2 + ||beta'||^2) / 2; the
  gradient of their sum by hand, one triple at a time."""
  B = len(users)
  g = {k: np.zeros_like(v) for k, v in p.items() if k != "f"}
  bpr = l2 = 0.0
  for u, i, j in zip(users, pos, neg):
    x = oracle_score(p, u, i) - oracle_score(p, u, j)
    bpr += -np.log(_sigmoid(x)) / B
    c = (_sigmoid(x) - 1.0) / B  # d(-ln sigmoid(x))/dx, over B
    df = p["f"][i] - p["f"][j]
    g["gu"][u] += c * (p["gi"][i] - p["gi"][j])
    g["theta"][u] += c * (df @ p["E"])
    g["gi"][i] += c * p["gu"][u]
    g["gi"][j] -= c * p["gu"][u]
    g["beta"][i] += c
    g["beta"][j] -= c
    g["E"] += c * np.outer(df, p["theta"][u])
    g["bv"] += c * df
    rows = (p["gu"][u], p["theta"][u], p["gi"][i], p["gi"][j])
    l2 += l2_reg * (sum(np.sum(r ** 2) for r in rows) + p["beta"][i] ** 2 +
                    p["beta"][j] ** 2) / (2 * B)
    g["gu"][u] += l2_reg * p["gu"][u] / B
    g["theta"][u] += l2_reg * p["theta"][u] / B
    g["gi"][i] += l2_reg * p["gi"][i] / B
    g["gi"][j] += l2_reg * p["gi"][j] / B
    g["beta"][i] += l2_reg * p["beta"][i] / B
    g["beta"][j] += l2_reg * p["beta"][j] / B
  le = l2_e * (np.sum(p["E"] ** 2) + np.sum(p["bv"] ** 2)) / 2
  g["E"] += l2_e * p["E"]
  g["bv"] += l2_e * p["bv"]
  return bpr, l2, le, g


def _batch(seed=3, b=10):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, N_USERS, b).astype(np.int32),
          rng.integers(0, N_ITEMS, (b, 2)).astype(np.int32))


def test_scores_match_the_oracle_and_serving_is_one_dot_product():
  m = _model()
  p = _params(m)
  users = np.array([0, 5, 2], np.int32)
  want = np.array([[oracle_score(p, u, i) for i in range(N_ITEMS)] for u in users])
  assert np.abs(want).max() > 0.5
  m.prepare_scoring()
  np.testing.assert_allclose(m.score_items(tf.constant(users)), want, rtol=1e-5,
                             atol=1e-5)
  items = np.tile(np.arange(N_ITEMS, dtype=np.int32), (3, 1))
  np.testing.assert_allclose(m.score_pairs(tf.constant(users), tf.constant(items)),
                             want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.pair_scores(tf.constant(users), tf.constant(items)),
                             want, rtol=1e-5, atol=1e-5)
  tables = m.serving_tables()
  metric, vectors = m.retrieval_space(tables)
  assert metric == "dot" and vectors.shape == (N_ITEMS, 2 * D + 1)
  first = m.serve_queries(tables, tf.constant(users)).numpy() @ vectors.numpy().T
  np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5)  # exact
  # The item side: [gamma_i; E f_i] (the item bias column dropped).
  rep = m.item_representation().numpy()
  np.testing.assert_allclose(rep, np.concatenate([p["gi"], p["f"] @ p["E"]], 1),
                             rtol=1e-5, atol=1e-6)


# 2 b item rows against N_ITEMS = 8: b = 3 projects the batch's rows, b = 10
# every item once.
@pytest.mark.parametrize("b", [3, 10])
def test_loss_terms_match_the_oracle(b):
  m = _model()
  users, items = _batch(b=b)
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  bpr, l2, le, _ = oracle_loss_and_grads(_params(m), users, items[:, 0],
                                         items[:, 1], 0.2, 0.3)
  assert set(terms) == {"loss", "bpr_loss", "l2_loss", "l2_e_loss"}
  assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-5)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  assert float(terms["l2_e_loss"]) == pytest.approx(le, rel=1e-5)
  assert float(terms["loss"]) == pytest.approx(bpr + l2 + le, rel=1e-5)
  assert min(bpr, l2, le) > 0


@pytest.mark.parametrize("b", [3, 12])
def test_gradients_match_the_hand_derived_ones(b):
  m = _model()
  users, items = _batch(seed=5, b=b)
  names = {"gu": m.user_embeddings, "gi": m.item_embeddings, "theta": m.theta,
           "beta": m.item_bias, "E": m.projection, "bv": m.visual_bias}
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  grads = tape.gradient(loss, list(names.values()))
  _, _, _, want = oracle_loss_and_grads(_params(m), users, items[:, 0],
                                        items[:, 1], 0.2, 0.3)
  for (name, _), g in zip(names.items(), grads):
    np.testing.assert_allclose(_np(tf.convert_to_tensor(g)), want[name],
                               rtol=1e-4, atol=1e-6, err_msg=name)
  assert {v.path for v in m.trainable_variables} == {v.path for v in names.values()}


def test_l2_e_zero_leaves_only_the_bpr_gradient_on_e():
  m = _model(l2_e=0.0)
  users, items = _batch(seed=8)
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  assert float(terms["l2_e_loss"]) == 0.0


def test_train_steps_lower_the_loss_and_refresh_the_scoring_cache():
  m = _model(l2_reg=1e-3, l2_e=0.0)
  m.compile(optimizer=keras.optimizers.Adam(5e-2))
  users, items = _batch(seed=9, b=24)
  batch = (tf.constant(users), tf.constant(items))
  first = float(m.loss_terms(*batch)["loss"])
  for _ in range(30):
    logs = m.train_step(batch)
  assert set(logs) == {"loss", "bpr_loss", "l2_loss", "l2_e_loss"}
  assert float(m.loss_terms(*batch)["loss"]) < 0.5 * first
  # score_items never reads a stale cache after training.
  p = _params(m)
  got = m.score_items(tf.constant([1], tf.int32)).numpy()[0]
  want = [oracle_score(p, 1, i) for i in range(N_ITEMS)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_get_config_round_trip():
  m = _model()
  config = m.get_config()
  clone = VBPR.from_config(config)
  assert clone.get_config() == config
  clone.set_weights(m.get_weights())
  clone.prepare_scoring()
  users = tf.constant([0, 3], tf.int32)
  np.testing.assert_allclose(clone.score_items(users), m.score_items(users), rtol=1e-6)
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
  assert isinstance(restored, VBPR) and restored.l2_e == 0.3


@pytest.mark.parametrize("kwargs,message", [
    ({"feature_dim": 0}, r"`feature_dim` must be an integer > 0. Received: feature_dim=0"),
    ({"l2_e": -1.0}, r"`l2_e` must be >= 0. Received: l2_e=-1.0"),
    ({"l2_reg": -1.0}, r"`l2_reg` must be >= 0. Received: l2_reg=-1.0"),
])
def test_bad_arguments_are_refused(kwargs, message):
  args = dict(feature_dim=FEAT)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    VBPR(N_USERS, N_ITEMS, **args)


def test_features_of_the_wrong_shape_are_refused():
  m = VBPR(N_USERS, N_ITEMS, feature_dim=FEAT, embed_dim=D)
  with pytest.raises(ValueError, match=r"`features` must have shape \(8, 5\)"):
    m.set_item_features(np.zeros((N_ITEMS, FEAT + 1)))


def _dataset(seed=3):
  ds = export_dataset(True, 0.2, seed=seed)
  rng = np.random.default_rng(seed)
  feats = {"text": rng.normal(size=(ds.n_items, 4)).astype(np.float32),
           "meta": ds.features["meta"]}
  return data_lib.from_arrays(ds.train, ds.test, features=feats, n_users=ds.n_users,
                              n_items=ds.n_items)


def test_features_are_the_modalities_concatenated_in_order():
  ds = _dataset()
  m = VBPR.from_run_config(Config(model="vbpr", num_neg=1, embed_dim=4), ds)
  assert m.feature_dim == 4 + 6
  np.testing.assert_array_equal(
      _np(m.item_features), np.concatenate([ds.features["text"], ds.features["meta"]], 1))
  only = data_lib.from_arrays(ds.train, ds.test, features={"meta": ds.features["meta"]},
                              n_users=ds.n_users, n_items=ds.n_items)
  assert VBPR.from_run_config(Config(model="vbpr", num_neg=1, embed_dim=4),
                              only).feature_dim == 6


def test_vbpr_without_a_content_modality_is_a_usage_error():
  ds = export_dataset(False, 0.0, seed=0)
  with pytest.raises(UsageError, match=r"^`--modalities` must name at least one "
                     r"content modality with --model=vbpr .*Received: ''$"):
    VBPR.from_run_config(Config(model="vbpr", num_neg=1, modalities=()), ds)


def test_export_loads_in_an_isolated_process_and_matches(tmp_path):
  ds = _dataset()
  m = VBPR(ds.n_users, ds.n_items, feature_dim=10, embed_dim=4, seed=0)
  rng = np.random.default_rng(1)
  for v in m.trainable_variables:
    v.assign(rng.normal(scale=0.5, size=v.shape).astype(np.float32))
  m.set_item_features(np.concatenate([ds.features[k] for k in ds.modalities], 1))
  out = check_export(m, ds, tmp_path, "vbpr", exact_retrieve=True)
  info = export_lib.load_info(out["path"])
  assert info["model"] == "vbpr" and info["retrieval_metric"] == "dot"
  assert info["feature_dim"] == 10


# ------------------------------------------------------------ flags, CLI


@pytest.mark.parametrize("value,message", [
    (-1e-3, "`--vbpr_l2_e` must be >= 0. Received: -0.001"),
    (float("nan"), "`--vbpr_l2_e` must be finite. Received: nan"),
])
def test_the_new_flag_has_a_one_line_error(value, message):
  with pytest.raises(UsageError) as e:
    Config(model="vbpr", num_neg=1, vbpr_l2_e=value).validate()
  assert str(e.value) == message


def test_one_negative_is_required():
  with pytest.raises(UsageError, match="`--num_neg` must be 1 with --model=vbpr"):
    Config(model="vbpr", num_neg=4).validate()


def test_vbpr_from_the_cli_trains_and_exports(tmp_path):
  summary, workdir, path = check_cli_export(tmp_path, "vbpr", [
      "--num_neg=1", "--embed_dim=4", "--l2_reg=1e-3", "--vbpr_l2_e=0.01",
      "--batch_size=16", "--learning_rate=0.01"])
  assert summary["modalities"] == ["meta"]
  assert set(summary["last"]["train"]) >= {"loss", "bpr_loss", "l2_loss", "l2_e_loss"}
  assert summary["last"]["train"]["l2_e_loss"] > 0
  assert "--vbpr_l2_e=0.01" in (workdir / "flags.txt").read_text()
  rec, got = served_and_retrieved(path)
  # The first stage is the exact score: retrieve finds the same top k.
  np.testing.assert_array_equal(got["item_ids"], rec["item_ids"])


def test_the_office_flagfile_parses_and_validates():
  c = office_config("vbpr")
  assert (c.modalities, c.embed_dim, c.num_neg, c.l2_reg, c.vbpr_l2_e) == (
      ("text", "meta"), 64, 1, 1e-4, 0.0)
  assert c.train_steps % c.eva_batches == 0
