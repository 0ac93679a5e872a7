"""NeuMF (GMF, MLP, both): scores and loss against a numpy oracle written
here from the NCF paper (eq. 7, 9-12), gradients against finite differences
of that oracle and against the hand-derived output-layer gradient, the split
full-ranking scoring, pre-training (section 3.4.1), the config round trip,
bad arguments, the export in an isolated process, and the CLI end to end."""

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.models.neumf import NeuMF, mlp_widths
from tests.helpers import check_cli_export, check_export, export_dataset, office_config

N_USERS, N_ITEMS, F, L = 5, 7, 2, 2
TOWERS = ("both", "gmf", "mlp")


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


# ------------------------------------------------------------ the oracle


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def oracle_params(m):
  """Every weight of a NeuMF as float64 numpy, by role."""
  out = {"h": _np(m.output_kernel), "b": float(_np(m.output_bias))}
  if m.towers in ("both", "gmf"):
    out["PG"], out["QG"] = _np(m.user_embeddings), _np(m.item_embeddings)
  if m.towers == "mlp":
    out["PM"], out["QM"] = _np(m.user_embeddings), _np(m.item_embeddings)
  if m.towers == "both":
    out["PM"] = _np(m.mlp_user_table.embeddings)
    out["QM"] = _np(m.mlp_item_table.embeddings)
  out["W"] = [_np(layer.kernel) for layer in m.mlp_layers]
  out["c"] = [_np(layer.bias) for layer in m.mlp_layers]
  return out


def oracle_logit(p, u, i):
  """h . [phi_G; phi_M] + b, the towers present in p (eq. 9-12)."""
  parts = []
  if "PG" in p:
    parts.append(p["PG"][u] * p["QG"][i])
  if "PM" in p:
    z = np.concatenate([p["PM"][u], p["QM"][i]])
    for W, c in zip(p["W"], p["c"]):
      z = np.maximum(z @ W + c, 0.0)
    parts.append(z)
  return float(np.concatenate(parts) @ p["h"] + p["b"])


def oracle_loss(p, users, items, l2_reg):
  """(bce, l2): the mean over the B (1 + W) instances (u, i, label) of
  -label ln y - (1 - label) ln(1 - y), and of l2_reg (||user rows||^2 +
  ||item rows||^2) / 2."""
  bce = l2 = 0.0
  count = 0
  for u, row in zip(users, items):
    for n, i in enumerate(row):
      y = _sigmoid(oracle_logit(p, u, i))
      bce += -np.log(y) if n == 0 else -np.log(1.0 - y)
      for pu, qi in (("PG", "QG"), ("PM", "QM")):
        if pu in p:
          l2 += 0.5 * (np.sum(p[pu][u] ** 2) + np.sum(p[qi][i] ** 2))
      count += 1
  return bce / count, l2_reg * l2 / count


def _model(towers="both", l2_reg=0.2, seed=0, layers=L):
  m = NeuMF(N_USERS, N_ITEMS, embed_dim=F, towers=towers, mlp_layers=layers,
            l2_reg=l2_reg, seed=seed)
  rng = np.random.default_rng(seed + 3)
  # Larger than the 0.01 initialisation, so the towers and sigmoids matter.
  for v in m.trainable_variables:
    v.assign(rng.normal(scale=0.7, size=v.shape).astype(np.float32))
  return m


def _batch(seed=1, b=6, w=3):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, N_USERS, b).astype(np.int32),
          rng.integers(0, N_ITEMS, (b, 1 + w)).astype(np.int32))


# ------------------------------------------------------------ shapes


def test_tower_widths_halve_down_to_the_predictive_factors():
  assert mlp_widths(8, 3) == (32, [32, 16, 8])  # the authors' [64,32,16,8]
  assert mlp_widths(16, 4) == (128, [128, 64, 32, 16])
  m = NeuMF(N_USERS, N_ITEMS, embed_dim=8, towers="both", mlp_layers=3, seed=0)
  assert m.user_embeddings.shape == (N_USERS, 8)
  assert m.mlp_user_table.embeddings.shape == (N_USERS, 32)
  assert [tuple(layer.kernel.shape) for layer in m.mlp_layers] == [
      (64, 32), (32, 16), (16, 8)]
  assert m.output_kernel.shape == (16,)
  only_mlp = NeuMF(N_USERS, N_ITEMS, embed_dim=8, towers="mlp", mlp_layers=3, seed=0)
  assert only_mlp.user_embeddings.shape == (N_USERS, 32)
  assert only_mlp.output_kernel.shape == (8,) and only_mlp.embed_dim == 32
  assert only_mlp.get_config()["embed_dim"] == 8
  gmf = NeuMF(N_USERS, N_ITEMS, embed_dim=8, towers="gmf", seed=0)
  assert gmf.mlp_layers == [] and len(gmf.trainable_variables) == 4


def test_initialisation_is_the_authors():
  m = NeuMF(300, 400, embed_dim=16, towers="both", seed=1)
  for table in m.table_variables():
    assert _np(table).std() == pytest.approx(0.01, rel=0.05)
  assert float(_np(m.output_bias)) == 0.0
  # LeCun-uniform: |h| <= sqrt(3 / fan_in), fan_in = 2F.
  assert np.abs(_np(m.output_kernel)).max() <= np.sqrt(3.0 / 32) + 1e-6


# ------------------------------------------------------------ oracle checks


@pytest.mark.parametrize("towers", TOWERS)
def test_scores_match_the_oracle(towers):
  m = _model(towers)
  p = oracle_params(m)
  users = np.array([0, 2, 4, 1], np.int32)
  want = np.array([[oracle_logit(p, u, i) for i in range(N_ITEMS)] for u in users])
  assert np.abs(want).max() > 0.5  # not a degenerate case
  for chunk in (None, 3):
    np.testing.assert_allclose(m.score_items(tf.constant(users), chunk).numpy(),
                               want, rtol=1e-5, atol=1e-5)
  items = np.tile(np.arange(N_ITEMS, dtype=np.int32), (len(users), 1))
  np.testing.assert_allclose(m.score_pairs(tf.constant(users), tf.constant(items)),
                             want, rtol=1e-5, atol=1e-5)
  tables = m.serving_tables()
  np.testing.assert_allclose(m.serve_items(tables, tf.constant(users), 2), want,
                             rtol=1e-5, atol=1e-5)
  scores, explanation = m.serve_pairs(tables, tf.constant(users),
                                      tf.constant(items[:, 3]))
  assert explanation is None and not m.explains
  np.testing.assert_allclose(scores, want[:, 3], rtol=1e-5, atol=1e-5)


# A batch with at least as many item rows as the catalogue (7) takes the
# MLP's item half of every item once; a smaller one, of its own rows.
BATCH_SHAPES = [pytest.param((6, 3), id="catalogue-once"),
                pytest.param((2, 2), id="batch-rows")]


@pytest.mark.parametrize("shape", BATCH_SHAPES)
@pytest.mark.parametrize("towers", TOWERS)
def test_loss_terms_match_the_oracle(towers, shape):
  m = _model(towers)
  users, items = _batch(b=shape[0], w=shape[1])
  assert (items.size >= N_ITEMS) == (shape == (6, 3))
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  bce, l2 = oracle_loss(oracle_params(m), users, items, 0.2)
  assert set(terms) == {"loss", "bce_loss", "l2_loss"}
  assert float(terms["bce_loss"]) == pytest.approx(bce, rel=1e-5)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  assert float(terms["loss"]) == pytest.approx(bce + l2, rel=1e-5)
  assert bce > 0 and l2 > 0


def test_one_negative_is_a_plain_logistic_pair():
  # W = 1, hand-checked: (-ln s(x+) - ln(1 - s(x-))) / 2.
  m = _model("gmf", l2_reg=0.0)
  users, items = np.array([1], np.int32), np.array([[2, 5]], np.int32)
  p = oracle_params(m)
  x_pos, x_neg = oracle_logit(p, 1, 2), oracle_logit(p, 1, 5)
  want = (np.log1p(np.exp(-x_pos)) + np.log1p(np.exp(x_neg))) / 2
  got = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  assert float(got) == pytest.approx(want, rel=1e-5)


def _flat_oracle_loss(m, users, items, values):
  """The oracle's total loss with the model's trainable variables replaced
  by the float64 `values` (a list aligned with m.trainable_variables)."""
  by_id = {id(v): x for v, x in zip(m.trainable_variables, values)}
  p = {"h": by_id[id(m.output_kernel)], "b": float(by_id[id(m.output_bias)]),
       "W": [by_id[id(layer.kernel)] for layer in m.mlp_layers],
       "c": [by_id[id(layer.bias)] for layer in m.mlp_layers]}
  tables = (by_id[id(m.user_embeddings)], by_id[id(m.item_embeddings)])
  if m.towers in ("both", "gmf"):
    p["PG"], p["QG"] = tables
  if m.towers == "mlp":
    p["PM"], p["QM"] = tables
  if m.towers == "both":
    p["PM"] = by_id[id(m.mlp_user_table.embeddings)]
    p["QM"] = by_id[id(m.mlp_item_table.embeddings)]
  bce, l2 = oracle_loss(p, users, items, m.l2_reg)
  return bce + l2


@pytest.mark.parametrize("shape", BATCH_SHAPES)
@pytest.mark.parametrize("towers", TOWERS)
def test_gradients_match_finite_differences_of_the_oracle(towers, shape):
  m = _model(towers, l2_reg=0.3)
  users, items = _batch(seed=4, b=shape[0], w=shape[1])
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  grads = tape.gradient(loss, m.trainable_variables)
  values = [_np(v) for v in m.trainable_variables]
  eps = 1e-6
  for k, (v, g) in enumerate(zip(m.trainable_variables, grads)):
    g = _np(tf.convert_to_tensor(g))
    numeric = np.zeros_like(values[k])
    for idx in np.ndindex(values[k].shape):
      plus = [x.copy() for x in values]
      minus = [x.copy() for x in values]
      plus[k][idx] += eps
      minus[k][idx] -= eps
      numeric[idx] = (_flat_oracle_loss(m, users, items, plus) -
                      _flat_oracle_loss(m, users, items, minus)) / (2 * eps)
    np.testing.assert_allclose(g, numeric, rtol=2e-3, atol=2e-5, err_msg=v.path)
  assert max(np.abs(_np(tf.convert_to_tensor(g))).max() for g in grads) > 1e-3


def test_output_layer_gradient_is_the_hand_derived_one():
  # d bce / d logit = sigmoid(logit) - label; the logit is h . phi + b, so
  # dL/dh = mean (s - y) phi and dL/db = mean (s - y) (no L2 on h, b).
  m = _model("both", l2_reg=0.5)
  users, items = _batch(seed=6)
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  g_h, g_b = tape.gradient(loss, [m.output_kernel, m.output_bias])
  p = oracle_params(m)
  want_h, want_b, n = np.zeros_like(p["h"]), 0.0, items.size
  for u, row in zip(users, items):
    for col, i in enumerate(row):
      z = np.concatenate([p["PM"][u], p["QM"][i]])
      for W, c in zip(p["W"], p["c"]):
        z = np.maximum(z @ W + c, 0.0)
      phi = np.concatenate([p["PG"][u] * p["QG"][i], z])
      residual = _sigmoid(oracle_logit(p, u, i)) - (1.0 if col == 0 else 0.0)
      want_h += residual * phi / n
      want_b += residual / n
  np.testing.assert_allclose(_np(g_h), want_h, rtol=1e-4, atol=1e-7)
  assert float(_np(g_b)) == pytest.approx(want_b, rel=1e-4, abs=1e-7)


def test_train_steps_lower_the_loss():
  m = _model("both", l2_reg=1e-3)
  m.compile(optimizer=keras.optimizers.Adam(3e-2))
  users, items = _batch(seed=2, b=10, w=4)
  batch = (tf.constant(users), tf.constant(items))
  first = float(m.loss_terms(*batch)["loss"])
  for _ in range(40):
    logs = m.train_step(batch)
  assert set(logs) == {"loss", "bce_loss", "l2_loss"}
  assert float(m.loss_terms(*batch)["loss"]) < 0.5 * first


# ------------------------------------------------------------ pre-training


def test_load_towers_is_the_authors_concatenation_with_alpha():
  gmf, mlp = _model("gmf", seed=1), _model("mlp", seed=2)
  m = NeuMF(N_USERS, N_ITEMS, embed_dim=F, towers="both", mlp_layers=L,
            alpha=0.3, seed=3)
  m.load_towers(gmf, mlp)
  np.testing.assert_array_equal(_np(m.user_embeddings), _np(gmf.user_embeddings))
  np.testing.assert_array_equal(_np(m.mlp_item_table.embeddings),
                                _np(mlp.item_embeddings))
  for mine, theirs in zip(m.mlp_layers, mlp.mlp_layers):
    np.testing.assert_array_equal(_np(mine.kernel), _np(theirs.kernel))
  np.testing.assert_allclose(
      _np(m.output_kernel),
      np.concatenate([0.3 * _np(gmf.output_kernel), 0.7 * _np(mlp.output_kernel)]),
      rtol=1e-6)
  assert float(_np(m.output_bias)) == pytest.approx(
      0.3 * float(_np(gmf.output_bias)) + 0.7 * float(_np(mlp.output_bias)), rel=1e-6)
  # So the fused logit is the alpha-mix of the two towers' logits.
  users = tf.constant([0, 1, 3], tf.int32)
  np.testing.assert_allclose(
      m.score_items(users).numpy(),
      0.3 * gmf.score_items(users).numpy() + 0.7 * mlp.score_items(users).numpy(),
      rtol=1e-5, atol=1e-5)


def test_load_towers_refuses_mismatched_models():
  m = NeuMF(N_USERS, N_ITEMS, embed_dim=F, towers="both", mlp_layers=L, seed=0)
  gmf = _model("gmf")
  with pytest.raises(ValueError, match=r"`mlp` must be a NeuMF with towers=mlp. "
                     r"Received: 'gmf'"):
    m.load_towers(gmf, gmf)
  wide = NeuMF(N_USERS, N_ITEMS, embed_dim=F, towers="mlp", mlp_layers=L + 1)
  with pytest.raises(ValueError, match=r"`mlp` must have the same"):
    m.load_towers(gmf, wide)
  with pytest.raises(ValueError, match=r"`towers` must be both"):
    gmf.load_towers(gmf, wide)


# ------------------------------------------------------------ config, errors


@pytest.mark.parametrize("towers", TOWERS)
def test_get_config_round_trip(towers):
  m = NeuMF(N_USERS, N_ITEMS, embed_dim=4, towers=towers, mlp_layers=3,
            l2_reg=0.01, alpha=0.4, seed=3, name="neumf")
  config = m.get_config()
  clone = NeuMF.from_config(config)
  assert clone.get_config() == config
  clone.set_weights(m.get_weights())
  users = tf.constant([0, 4], tf.int32)
  np.testing.assert_allclose(clone.score_items(users), m.score_items(users), rtol=1e-6)
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
  assert isinstance(restored, NeuMF) and restored.towers == towers


@pytest.mark.parametrize("kwargs,message", [
    ({"towers": "ncf"}, r"`towers` must be one of both, gmf, mlp. Received: towers='ncf'"),
    ({"mlp_layers": 0}, r"`mlp_layers` must be an integer >= 1. Received: mlp_layers=0"),
    ({"alpha": 1.5}, r"`alpha` must be in \[0, 1\]. Received: alpha=1.5"),
    ({"l2_reg": -1.0}, r"`l2_reg` must be >= 0. Received: l2_reg=-1.0"),
    ({"embed_dim": 0}, r"`embed_dim` must be an integer > 0. Received: embed_dim=0"),
])
def test_bad_arguments_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    NeuMF(N_USERS, N_ITEMS, **kwargs)


# ------------------------------------------------------------ export


def _spread(m, seed=1):
  rng = np.random.default_rng(seed)
  for v in m.trainable_variables:
    v.assign(rng.normal(scale=0.5, size=v.shape).astype(np.float32))


@pytest.mark.parametrize("towers", TOWERS)
def test_export_loads_in_an_isolated_process_and_matches(tmp_path, towers):
  ds = export_dataset(False, 0.2, seed=0)
  m = NeuMF(ds.n_users, ds.n_items, embed_dim=4, towers=towers, mlp_layers=2, seed=0)
  _spread(m)
  # GMF alone: the first stage is the score itself (up to the constant b);
  # with an MLP tower it is a surrogate, re-ranked by the full logit.
  out = check_export(m, ds, tmp_path, f"neumf_{towers}",
                     exact_retrieve=towers == "gmf")
  info = export_lib.load_info(out["path"])
  assert info["model"] == "neumf" and info["retrieval_metric"] == "dot"
  assert info["towers"] == towers and info["explanation"] is None


def test_retrieval_first_stage_is_the_gmf_term():
  m = _model("both")
  tables = m.serving_tables()
  metric, items = m.retrieval_space(tables)
  users = tf.constant([0, 3], tf.int32)
  first = m.serve_queries(tables, users).numpy() @ items.numpy().T
  p = oracle_params(m)
  h_g = p["h"][:F]
  want = np.array([[(p["PG"][u] * p["QG"][i]) @ h_g for i in range(N_ITEMS)]
                   for u in (0, 3)])
  assert metric == "dot"
  np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ run config, CLI


def _tower_checkpoint(ds, towers, folder, seed):
  """A checkpoint prefix holding a randomly spread tower model."""
  from maml_tf.train import checkpoint as checkpoint_lib
  m = NeuMF(ds.n_users, ds.n_items, embed_dim=4, towers=towers, mlp_layers=2,
            seed=seed)
  _spread(m, seed)
  step = tf.Variable(3, dtype=tf.int64)
  (folder / towers).mkdir()
  prefix = checkpoint_lib.make_checkpoint(m, step).write(str(folder / towers / "ckpt-3"))
  return m, prefix


def test_from_run_config_loads_the_pretrained_towers(tmp_path):
  from maml_tf.config import Config
  from maml_tf.errors import UsageError
  ds = export_dataset(False, 0.0, seed=0)
  gmf, gmf_path = _tower_checkpoint(ds, "gmf", tmp_path, 1)
  mlp, mlp_path = _tower_checkpoint(ds, "mlp", tmp_path, 2)
  config = Config(model="neumf", embed_dim=4, neumf_layers=2, neumf_alpha=0.25,
                  neumf_pretrain=(gmf_path, mlp_path)).validate()
  m = NeuMF.from_run_config(config, ds)
  users = tf.range(ds.n_users, dtype=tf.int32)
  np.testing.assert_allclose(
      m.score_items(users).numpy(),
      0.25 * gmf.score_items(users).numpy() + 0.75 * mlp.score_items(users).numpy(),
      rtol=1e-5, atol=1e-5)
  fresh = NeuMF.from_run_config(Config(model="neumf", embed_dim=4, neumf_layers=2), ds)
  assert np.abs(_np(fresh.user_embeddings)).max() < 0.1  # N(0, 0.01^2): not loaded
  swapped = Config(model="neumf", embed_dim=4, neumf_layers=2,
                   neumf_pretrain=(mlp_path, gmf_path))
  with pytest.raises(UsageError, match=r"^`--neumf_pretrain` must be a gmf run then "
                     r"an mlp run .*the gmf run failed: .*Received: '"):
    NeuMF.from_run_config(swapped, ds)


@pytest.mark.parametrize("flags,message", [
    ({"neumf_towers": "ncf"}, "`--neumf_towers` must be one of both, gmf, mlp. "
     "Received: 'ncf'"),
    ({"neumf_layers": 0}, "`--neumf_layers` must be >= 1. Received: 0"),
    ({"neumf_layers": 1.5}, "`--neumf_layers` must be an integer. Received: 1.5"),
    ({"neumf_alpha": 1.5}, "`--neumf_alpha` must be <= 1. Received: 1.5"),
    ({"neumf_alpha": -0.1}, "`--neumf_alpha` must be >= 0. Received: -0.1"),
    ({"neumf_pretrain": ("a",)}, "`--neumf_pretrain` must name two runs, "
     "GMF_RUN,MLP_RUN. Received: 'a'"),
    ({"neumf_pretrain": ("a", "b"), "neumf_towers": "gmf"}, "`--neumf_pretrain` "
     "must be empty unless --neumf_towers=both (it loads a GMF and an MLP "
     "tower). Received: 'a,b'"),
    ({"neumf_pretrain": ("/no/run", "/no/run2")}, "`--neumf_pretrain` must name "
     "existing runs or checkpoints. Received: '/no/run,/no/run2'"),
])
def test_each_new_flag_has_a_one_line_error(flags, message):
  from maml_tf.config import Config
  from maml_tf.errors import UsageError
  with pytest.raises(UsageError) as e:
    Config(model="neumf", **flags).validate()
  assert str(e.value) == message


def test_a_run_recorded_before_the_neumf_flags_resumes_unchanged(tmp_path):
  from maml_tf import train as train_lib
  from maml_tf.config import Config
  new = ("--neumf_towers", "--neumf_layers", "--neumf_alpha", "--neumf_pretrain",
         "--vbpr_l2_e")
  config = Config(workdir=str(tmp_path))
  lines = config.to_flagfile().splitlines()
  old = [line for line in lines if not line.startswith(new)]
  assert len(old) == len(lines) - len(new)
  (tmp_path / "flags.txt").write_text("\n".join(old) + "\n")
  assert train_lib.changed_flags(str(tmp_path), config) == []
  other = Config(workdir=str(tmp_path), neumf_layers=2)
  assert [n for n, _, _ in train_lib.changed_flags(str(tmp_path), other)] == [
      "neumf_layers"]


def test_neumf_from_the_cli_trains_and_exports(tmp_path):
  summary, workdir, path = check_cli_export(tmp_path, "neumf", [
      "--num_neg=2", "--embed_dim=4", "--neumf_layers=2", "--l2_reg=1e-4",
      "--batch_size=16", "--learning_rate=0.01"], features=False)
  assert summary["modalities"] == []
  assert set(summary["last"]["train"]) >= {"loss", "bce_loss", "l2_loss"}
  flags = (workdir / "flags.txt").read_text()
  assert "--neumf_layers=2" in flags and "--neumf_towers=both" in flags
  loaded = tf.saved_model.load(str(path))
  users = tf.constant([0, 1], tf.int64)
  rec = loaded.signatures["serving_default"](user_ids=users)
  got = loaded.signatures["retrieve"](user_ids=users)
  assert rec["item_ids"].shape == (2, 10) == got["item_ids"].shape
  score = loaded.signatures["score"](user_ids=users, item_ids=rec["item_ids"][:, 0])
  np.testing.assert_allclose(score["scores"], rec["scores"][:, 0], rtol=1e-5)


def test_the_office_flagfile_parses_and_validates():
  c = office_config("neumf")
  assert (c.neumf_towers, c.neumf_layers, c.neumf_alpha, c.neumf_pretrain) == (
      "both", 3, 0.5, ())
  assert (c.embed_dim, c.num_neg, c.batch_size, c.l2_reg, c.learning_rate) == (
      64, 4, 256, 0.0, 1e-3)
  assert c.train_steps % c.eva_batches == 0
