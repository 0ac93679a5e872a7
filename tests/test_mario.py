"""MARIO: the attention layer, every fusion's scores and loss terms against
numpy oracles (mf, lightgcn and ngcf backbones), the split full-ranking
scoring against the plain per-pair computation, explanations, the modality-
preserving loss and its gradient, the ngcf backbone against NGCF's own
tables and its dropout (training only), the features' rescaling and a
modality's global scale not reaching the model, the config round trip,
errors, the CLI end to end (TensorBoard histograms per modality; the ngcf
backbone with its export) and the export in an isolated process."""

import glob
import json

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import data as data_lib
from maml_tf.models.mario import MARIO, ModalityAttention, normalize_features
from maml_tf.models.ngcf import NGCF
from tests import oracles
from tests.helpers import check_export, check_served_top_k, export_dataset

N_USERS, N_ITEMS, D, H = 5, 7, 6, 5
DIMS = {"text": 4, "meta": 3}
FUSIONS = ("attention", "mean", "max", "fc")
BACKBONES = ("mf", "lightgcn", "ngcf")
NGCF_SIZES = (3, 2)  # the ngcf backbone's width: D + 5 = 11


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def _pairs(seed=0):
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, N_USERS, 25), rng.integers(0, N_ITEMS, 25)], 1)


def _model(fusion="attention", backbone="mf", mp_weight=0.3, l2_reg=0.2,
           modalities=("text", "meta"), seed=0, node_dropout=0.3,
           message_dropout=0.2):
  rng = np.random.default_rng(seed + 10)
  m = MARIO(N_USERS, N_ITEMS, modalities=modalities,
            feature_dims=[DIMS[k] for k in modalities], backbone=backbone,
            gcn_layers=2, train_pairs=_pairs(seed), fusion=fusion, embed_dim=D,
            hidden_dim=H, mp_weight=mp_weight, l2_reg=l2_reg,
            ngcf_layers=NGCF_SIZES, ngcf_node_dropout=node_dropout,
            ngcf_message_dropout=message_dropout, seed=seed)
  m.user_embeddings.assign(rng.normal(size=(N_USERS, D)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(N_ITEMS, D)).astype(np.float32))
  if m.propagation is not None:  # both sides of the LeakyReLU matter
    for v in m.propagation.weights:
      v.assign(rng.normal(size=v.shape).astype(np.float32))
  if m.attention is not None:  # peaked weights, so the modalities differ
    m.attention.score_vector.assign(m.attention.score_vector * 4.0)
  m.set_item_features({k: rng.normal(size=(N_ITEMS, DIMS[k])).astype(np.float32)
                       for k in modalities})
  return m


def _ngcf_oracle(A, P, Q, propagation):
  """NGCF's eval-mode tables in numpy, dense: E^{k+1} = LeakyReLU_0.2(
  (A E + E) W1 + b1 + (A E * E) W2 + b2), [E^0, l2norm(E^1), ...]."""
  x = np.concatenate([P, Q])
  parts = [x]
  for k in range(len(propagation.layer_sizes)):
    side = A @ x
    z = ((side + x) @ _np(propagation.sum_kernels[k]) + _np(propagation.sum_biases[k])
         + (side * x) @ _np(propagation.bi_kernels[k]) + _np(propagation.bi_biases[k]))
    x = np.where(z > 0, z, 0.2 * z)
    parts.append(x / np.linalg.norm(x, axis=1, keepdims=True))
  final = np.concatenate(parts, 1)
  return final[:len(P)], final[len(P):]


def _oracle_parts(m):
  """(users [U, D], modality embeddings [I, M, D]) computed in numpy."""
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  if m.backbone == "lightgcn":
    A = oracles.lightgcn_adjacency(_pairs(m.seed), N_USERS, N_ITEMS)
    P, Q = oracles.lightgcn_propagate(A, P, Q, 2)
  if m.backbone == "ngcf":
    A = oracles.lightgcn_adjacency(_pairs(m.seed), N_USERS, N_ITEMS)
    P, Q = _ngcf_oracle(A, P, Q, m.propagation)
  rows = [Q]
  for k in m.modalities:
    enc = m.encoders[k]
    rows.append(oracles.dense(_np(m.feature_table(k)), _np(enc.kernel), _np(enc.bias)))
  return P, np.stack(rows, 1)


def _oracle_args(m):
  args = {}
  if m.attention is not None:
    att = m.attention
    args.update(W=np.concatenate([_np(att.user_kernel), _np(att.item_kernel)]),
                b=_np(att.bias), v=_np(att.score_vector)[:, 0])
  if m.fc is not None:
    args.update(fc_kernel=_np(m.fc.kernel), fc_bias=_np(m.fc.bias))
  return args


def _oracle_score(m, P, E, u, i):
  return float(P[u] @ oracles.mario_fuse(P[u], E[i], m.fusion, **_oracle_args(m)))


def test_attention_layer_round_trip_and_oracle():
  layer = ModalityAttention(embed_dim=D, hidden_dim=H, seed=3, name="att")
  layer.build()
  clone = ModalityAttention.from_config(layer.get_config())
  clone.build()
  assert clone.get_config() == layer.get_config()
  clone.set_weights(layer.get_weights())
  rng = np.random.default_rng(0)
  u = rng.normal(size=(4, D)).astype(np.float32)
  e = rng.normal(size=(4, 3, D)).astype(np.float32)
  np.testing.assert_allclose(clone(u, e), layer(u, e), rtol=1e-6)
  layer.score_vector.assign(layer.score_vector * 3.0)
  W = np.concatenate([_np(layer.user_kernel), _np(layer.item_kernel)])
  got = layer(u, e).numpy()
  for b in range(4):
    np.testing.assert_allclose(got[b], oracles.mario_attention(
        u[b], e[b], W, _np(layer.bias), _np(layer.score_vector)[:, 0]), rtol=1e-5)
  np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
  assert isinstance(restored, ModalityAttention) and restored.hidden_dim == H
  with pytest.raises(ValueError, match=r"`hidden_dim` must be an integer >= 1. "
                     r"Received: hidden_dim=0"):
    ModalityAttention(D, 0)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_loss_terms_match_the_oracle(fusion, backbone):
  m = _model(fusion, backbone)
  rng = np.random.default_rng(5)
  users = rng.integers(0, N_USERS, 9).astype(np.int32)
  items = rng.integers(0, N_ITEMS, (9, 2)).astype(np.int32)
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  P, E = _oracle_parts(m)
  r_pos = [_oracle_score(m, P, E, u, i) for u, i in zip(users, items[:, 0])]
  r_neg = [_oracle_score(m, P, E, u, j) for u, j in zip(users, items[:, 1])]
  l2 = oracles.batch_l2(_np(m.user_embeddings), _np(m.item_embeddings), users,
                        items[:, 0], items[:, 1], 0.2)
  mp = 0.0
  for k, name in enumerate(m.modalities):
    dec = m.decoders[name]
    emb = E[items.reshape(-1), 1 + k]
    x_hat = oracles.dense(emb, _np(dec.kernel), _np(dec.bias))
    X = _np(m.feature_table(name))
    mp += oracles.l1_mean(x_hat, X[items.reshape(-1)]) / np.abs(X).mean()
  assert set(terms) == {"loss", "bpr_loss", "l2_loss", "mp_loss"}
  assert float(terms["bpr_loss"]) == pytest.approx(oracles.bpr_loss(r_pos, r_neg), rel=1e-5)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  assert float(terms["mp_loss"]) == pytest.approx(0.3 * mp, rel=1e-5)
  assert float(terms["loss"]) == pytest.approx(
      oracles.bpr_loss(r_pos, r_neg) + l2 + 0.3 * mp, rel=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("chunk", [None, 3])
def test_split_full_ranking_equals_the_plain_per_pair_scores(fusion, backbone, chunk):
  m = _model(fusion, backbone)
  m.prepare_scoring()
  users = np.array([0, 2, 4, 1], np.int32)
  got = m.score_items(tf.constant(users), item_chunk=chunk).numpy()
  P, E = _oracle_parts(m)
  want = np.array([[_oracle_score(m, P, E, u, i) for i in range(N_ITEMS)] for u in users])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  items = np.tile(np.arange(N_ITEMS, dtype=np.int32), (len(users), 1))
  pairs = m.score_pairs(tf.constant(users), tf.constant(items)).numpy()
  np.testing.assert_allclose(pairs, want, rtol=1e-5, atol=1e-6)


def test_score_width_is_per_pair_floats_of_the_split_attention():
  assert _model("attention").score_width == 3 * (H + 2)
  assert _model("mean").score_width == D
  assert _model("mean", "ngcf").score_width == D + sum(NGCF_SIZES)


def test_the_ngcf_backbone_is_ngcfs_own_tables_sized_through_the_model():
  m = _model("attention", "ngcf")
  width = D + sum(NGCF_SIZES)
  assert m.width == width
  # Initialised as NGCF(seed=s) is, and for the same weights, the same tables.
  fresh = MARIO(N_USERS, N_ITEMS, modalities=("text",), feature_dims=(4,),
                backbone="ngcf", train_pairs=_pairs(0), embed_dim=D,
                ngcf_layers=NGCF_SIZES, seed=4)
  twin = NGCF(N_USERS, N_ITEMS, train_pairs=_pairs(0), layer_sizes=NGCF_SIZES,
              embed_dim=D, seed=4)
  for a, b in zip([fresh.user_embeddings, fresh.item_embeddings] + fresh.propagation.weights,
                  [twin.user_embeddings, twin.item_embeddings] + twin.propagation.weights):
    np.testing.assert_array_equal(_np(a), _np(b))
  for v, w in zip([twin.user_embeddings, twin.item_embeddings] + twin.propagation.weights,
                  [m.user_embeddings, m.item_embeddings] + m.propagation.weights):
    v.assign(w)
  users, items = m.backbone_tables()
  want_u, want_i = twin.final_tables()
  np.testing.assert_allclose(users.numpy(), want_u.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(items.numpy(), want_i.numpy(), rtol=1e-6, atol=1e-6)
  assert items.shape == (N_ITEMS, width)
  # Every part of the model is D wide: encoders, attention, decoders, cache.
  assert m.encoders["text"].kernel.shape == (DIMS["text"], width)
  assert m.decoders["meta"].kernel.shape == (width, DIMS["meta"])
  assert m.attention.item_kernel.shape == (width, H)
  assert m.scoring_modalities.shape == (N_ITEMS, 3, width)
  assert _model("fc", "ngcf").fc.kernel.shape == (3 * width, width)
  # The mean fusion over the interaction modality alone would score as NGCF:
  # e^IN is NGCF's item row, u NGCF's user row.
  twin.prepare_scoring()
  e = m.serving_tables()["item_modalities"].numpy()
  np.testing.assert_allclose(np.einsum("ud,id->ui", users.numpy(), e[:, 0]),
                             twin.score_items(tf.range(N_USERS)).numpy(), rtol=1e-5,
                             atol=1e-5)


def test_the_ngcf_backbones_dropout_acts_in_training_only():
  m = _model("attention", "ngcf", node_dropout=0.4, message_dropout=0.3)
  users = tf.constant([0, 1, 2, 3], tf.int32)
  items = tf.constant([[0, 1], [2, 3], [4, 5], [6, 0]], tf.int32)
  evals = [float(m.loss_terms(users, items)["bpr_loss"]) for _ in range(2)]
  trains = [float(m.loss_terms(users, items, training=True)["bpr_loss"])
            for _ in range(2)]
  assert evals[0] == evals[1]
  assert trains[0] != trains[1] and evals[0] not in trains
  first = m.score_items(tf.range(N_USERS)).numpy()
  np.testing.assert_array_equal(first, m.score_items(tf.range(N_USERS)).numpy())
  # The E^0 columns are never dropped; the ego tables carry the L2.
  t_users, _ = m.backbone_tables(training=True)
  np.testing.assert_array_equal(t_users.numpy()[:, :D], _np(m.user_embeddings))
  plain = _model("attention", "ngcf", node_dropout=0.0, message_dropout=0.0)
  assert float(plain.loss_terms(users, items, training=True)["loss"]) == pytest.approx(
      float(plain.loss_terms(users, items)["loss"]), rel=1e-6)
  # A train step moves NGCF's layer weights too.
  before = [_np(v) for v in m.propagation.weights]
  _train(m, steps=2)
  assert all(not np.allclose(_np(v), b) for v, b in zip(m.propagation.weights, before))


def test_feature_norm_rescales_as_documented():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(6, 4)) * rng.uniform(0.5, 30, (6, 1))
  x[3] = 0.0
  norms = np.sqrt((x ** 2).sum(1))
  np.testing.assert_allclose(normalize_features(x, "scale"), x / norms.mean(), rtol=1e-6)
  row = normalize_features(x, "row")
  kept = [0, 1, 2, 4, 5]
  np.testing.assert_allclose(row[kept], x[kept] / norms[kept, None], rtol=1e-6)
  np.testing.assert_array_equal(row[3], 0.0)
  np.testing.assert_allclose(normalize_features(x, "none"), x, rtol=1e-6)
  np.testing.assert_array_equal(normalize_features(np.zeros((3, 2)), "scale"), 0.0)
  # The model stores the rescaled features, and L_MP's unit is theirs.
  m = _model("mean")
  raw = np.random.default_rng(10).normal(size=(N_ITEMS, 4)) * 40.0
  m.set_item_features({"text": raw, "meta": np.ones((N_ITEMS, 3))})
  np.testing.assert_allclose(_np(m.feature_table("text")),
                             raw / np.sqrt((raw ** 2).sum(1)).mean(), rtol=1e-5)
  np.testing.assert_allclose(_np(m.feature_scales), [
      np.abs(raw / np.sqrt((raw ** 2).sum(1)).mean()).mean(), 1 / np.sqrt(3)], rtol=1e-5)


def _scaled_pair(feature_norm, factor, backbone="lightgcn"):
  """Two models from one seed whose text features differ by `factor`."""
  rng = np.random.default_rng(11)
  feats = {"text": rng.normal(size=(N_ITEMS, 4)).astype(np.float32) * 3.0,
           "meta": rng.normal(size=(N_ITEMS, 3)).astype(np.float32)}
  models = []
  for f in (1.0, factor):
    m = MARIO(N_USERS, N_ITEMS, modalities=("text", "meta"), feature_dims=(4, 3),
              backbone=backbone, gcn_layers=2, train_pairs=_pairs(0), embed_dim=D,
              hidden_dim=H, mp_weight=0.5, feature_norm=feature_norm, seed=1)
    m.set_item_features(dict(feats, text=feats["text"] * np.float32(f)))
    models.append(m)
  return models


def _weights_and_norms(m):
  users = tf.constant(np.repeat(np.arange(N_USERS), N_ITEMS), tf.int32)
  items = tf.constant(np.tile(np.arange(N_ITEMS), N_USERS), tf.int32)
  scores, a = m.score_pairs(users, items, explain=True)
  e = m.serving_tables()["item_modalities"].numpy()
  return scores.numpy(), a.numpy(), np.linalg.norm(e, axis=-1).mean(0)


@pytest.mark.parametrize("feature_norm", ["scale", "row"])
def test_a_modalitys_global_scale_does_not_reach_the_model(feature_norm):
  # Issue 22 item 8: one modality x10 (a user's 30-50 row norms against
  # 1-11). With the features rescaled at load, the two models are the same
  # model: the same encoder outputs, attention and scores, at init and
  # after training.
  one, ten = _scaled_pair(feature_norm, 10.0)
  np.testing.assert_allclose(_np(one.feature_table("text")), _np(ten.feature_table("text")),
                             rtol=1e-6)
  for step in range(2):
    s1, a1, n1 = _weights_and_norms(one)
    s10, a10, n10 = _weights_and_norms(ten)
    np.testing.assert_allclose(s10, s1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a10, a1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(n10, n1, rtol=1e-4)
    assert n10[1] < 3.0  # rows of mean norm 1: the encoder's output is O(1)
    if step == 0:
      _train(one, steps=20)
      _train(ten, steps=20)


def test_without_rescaling_the_scale_reaches_the_encoders_and_the_scores():
  # What `feature_norm=none` does (the features as given): the x10
  # modality's embeddings are 10x longer at init (a linear encoder), and the
  # scores and weights differ from the x1 model's.
  one, ten = _scaled_pair("none", 10.0)
  s1, a1, n1 = _weights_and_norms(one)
  s10, a10, n10 = _weights_and_norms(ten)
  assert n10[1] / n1[1] == pytest.approx(10.0, rel=1e-4)
  np.testing.assert_allclose(n10[[0, 2]], n1[[0, 2]], rtol=1e-6)
  assert np.abs(s10 - s1).max() > 0.1 and np.abs(a10 - a1).max() > 0.01


@pytest.mark.parametrize("fusion", FUSIONS)
def test_explanations(fusion):
  m = _model(fusion)
  assert m.explanation_name == "modality_weights"
  assert m.explanation_labels == ("interaction", "text", "meta")
  users = np.array([0, 1, 3], np.int32)
  items = np.array([2, 6, 0], np.int32)
  scores, a = m.score_pairs(tf.constant(users), tf.constant(items), explain=True)
  if fusion == "fc":
    assert a is None and not m.explains
    return
  assert m.explains and a.shape == (3, 3)
  a = a.numpy()
  np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-5)
  P, E = _oracle_parts(m)
  for row, (u, i) in enumerate(zip(users, items)):
    if fusion == "attention":
      want = oracles.mario_attention(P[u], E[i], **_oracle_args(m))
    elif fusion == "mean":
      want = np.full(3, 1 / 3)
    else:  # the share of the d dimensions each modality wins
      want = np.bincount(E[i].argmax(0), minlength=3) / D
    np.testing.assert_allclose(a[row], want, rtol=1e-5, atol=1e-7)
  if fusion == "attention":
    assert np.abs(a - 1 / 3).max() > 0.05  # not uniform: a real test


def test_mp_loss_gradient_matches_the_analytic_one():
  m = _model("mean", mp_weight=0.5)
  rng = np.random.default_rng(6)
  users = rng.integers(0, N_USERS, 8).astype(np.int32)
  items = rng.integers(0, N_ITEMS, (8, 2)).astype(np.int32)
  dec = m.decoders["text"]
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  g_kernel, g_bias = tape.gradient(loss, [dec.kernel, dec.bias])
  _, E = _oracle_parts(m)
  ids = items.reshape(-1)
  emb = E[ids, 1]
  diff = oracles.dense(emb, _np(dec.kernel), _np(dec.bias)) - _np(m.feature_table("text"))[ids]
  # d/dV of 0.5 * mean |e V + c - x| / s = 0.5 e^T sign(.) / (n s), s the
  # modality's mean |x| over all items.
  n = diff.size * np.abs(_np(m.feature_table("text"))).mean()
  np.testing.assert_allclose(_np(g_kernel), 0.5 * emb.T @ np.sign(diff) / n, rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(_np(g_bias), 0.5 * np.sign(diff).sum(0) / n, rtol=1e-4,
                             atol=1e-7)


def _train(m, steps=5):
  m.compile(optimizer=keras.optimizers.Adam(1e-2))
  rng = np.random.default_rng(7)
  batch = (tf.constant(rng.integers(0, N_USERS, 12).astype(np.int32)),
           tf.constant(rng.integers(0, N_ITEMS, (12, 2)).astype(np.int32)))
  for _ in range(steps):
    logs = m.train_step(batch)
  return logs


def test_mp_weight_zero_leaves_the_decoders_untouched():
  for mu, moved in ((0.0, False), (0.5, True)):
    m = _model("attention", mp_weight=mu)
    before = {v.path: _np(v) for v in m.trainable_variables}
    logs = _train(m)
    assert set(logs) == {"loss", "bpr_loss", "l2_loss", "mp_loss"}
    for v in m.trainable_variables:
      changed = not np.allclose(_np(v), before[v.path])
      if "decoder" in v.path:
        assert changed == moved, v.path
      else:
        assert changed, v.path  # tables, encoders, attention all train
    if mu == 0.0:
      assert float(logs["mp_loss"]) == 0.0


def test_a_subset_of_modalities_is_w_o_the_others():
  m = _model("attention", modalities=("text",))
  assert m.explanation_labels == ("interaction", "text")
  assert set(m.encoders) == {"text"}
  _, a = m.score_pairs(tf.constant([0]), tf.constant([1]), explain=True)
  assert a.shape == (1, 2)


@pytest.mark.parametrize("kwargs,message", [
    ({"modalities": (), "feature_dims": ()},
     r"`modalities` must name at least one content modality"),
    ({"fusion": "sum"}, r"`fusion` must be one of attention, mean, max, fc. "
     r"Received: fusion='sum'"),
    ({"backbone": "gcn"}, r"`backbone` must be one of mf, lightgcn, ngcf. "
     r"Received: backbone='gcn'"),
    ({"feature_norm": "l2"}, r"`feature_norm` must be one of scale, row, none. "
     r"Received: feature_norm='l2'"),
    ({"ngcf_layers": ()}, r"`layer_sizes` must be one integer >= 1 per layer"),
    ({"ngcf_node_dropout": 1.0}, r"`ngcf_node_dropout` must be in \[0, 1\). "
     r"Received: ngcf_node_dropout=1.0"),
    ({"mp_weight": -1.0}, r"`mp_weight` must be >= 0. Received: mp_weight=-1.0"),
    ({"feature_dims": (4,)}, r"`feature_dims` must give one size >= 1 per modality"),
    ({"gcn_layers": 0}, r"`gcn_layers` must be an integer >= 1. Received: gcn_layers=0"),
])
def test_bad_arguments_are_refused(kwargs, message):
  args = dict(modalities=("text", "meta"), feature_dims=(4, 3))
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    MARIO(N_USERS, N_ITEMS, **args)


@pytest.mark.parametrize("backbone", ["lightgcn", "ngcf"])
def test_get_config_round_trip(backbone):
  m = _model("fc", backbone)
  config = m.get_config()
  clone = MARIO.from_config(config)
  assert clone.get_config() == config
  clone.set_train_edges(_pairs(0))
  clone.set_weights(m.get_weights())
  np.testing.assert_allclose(clone.item_representation().numpy(),
                             m.item_representation().numpy(), rtol=1e-6)


def _dataset(seed=3):
  ds = export_dataset(True, 0.2, seed=seed)
  rng = np.random.default_rng(seed)
  feats = dict(ds.features, text=rng.normal(size=(ds.n_items, 5)).astype(np.float32))
  return data_lib.from_arrays(ds.train, ds.test, features=feats, n_users=ds.n_users,
                              n_items=ds.n_items)


@pytest.mark.parametrize("backbone", ["lightgcn", "ngcf"])
def test_export_loads_in_an_isolated_process_and_matches(tmp_path, backbone):
  # The attention on a graph backbone: the serving path that differs most
  # from training (the split attention, baked propagated tables; NGCF's
  # in eval mode, its dropouts on); the other fusions' serve_pairs are
  # checked against the oracle above.
  fusion = "attention"
  ds = _dataset()
  m = MARIO(ds.n_users, ds.n_items, modalities=ds.modalities,
            feature_dims=[ds.features[k].shape[1] for k in ds.modalities],
            backbone=backbone, gcn_layers=2, train_pairs=ds.train, fusion=fusion,
            embed_dim=8, hidden_dim=6, ngcf_layers=(4, 3), ngcf_node_dropout=0.3,
            ngcf_message_dropout=0.3, seed=0)
  rng = np.random.default_rng(1)
  m.user_embeddings.assign(rng.normal(size=(ds.n_users, 8)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(ds.n_items, 8)).astype(np.float32))
  if m.attention is not None:
    m.attention.score_vector.assign(m.attention.score_vector * 4.0)
  m.set_item_features(dict(ds.features))
  out = check_export(m, ds, tmp_path, "mario", exact_retrieve=fusion != "attention")
  info = export_lib.load_info(out["path"])
  assert info["explanation"] == {"output": "modality_weights",
                                 "labels": ["interaction"] + list(ds.modalities)}
  assert info["backbone"] == backbone and info["fusion"] == fusion


def test_mario_from_the_cli_trains_exports_and_logs_modality_histograms(tmp_path):
  from tests.helpers import run_in_process, write_release_layout
  data = tmp_path / "data"
  features = write_release_layout(str(data))
  workdir = tmp_path / "run"
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}",
      f"--extra_features=meta={features}", "--model=mario",
      "--backbone=lightgcn", "--gcn_layers=2", "--mp_weight=0.5",
      "--num_neg=1", "--embed_dim=8", "--mario_hidden=4", "--batch_size=16",
      "--learning_rate=0.01", "--train_steps=6", "--eva_batches=3",
      "--tensorboard", f"--export_dir={tmp_path / 'exports'}",
      f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["finished"] is True and summary["modalities"] == ["meta"]
  assert summary["last"]["train"]["mp_loss"] > 0
  events = b"".join(open(f, "rb").read() for f in
                    glob.glob(str(workdir / "tensorboard" / "**" / "events*"),
                              recursive=True))
  for label in ("interaction", "meta"):
    assert f"modality_weights/{label}".encode() in events
  path = tmp_path / "exports" / "mario_custom" / "1"
  loaded = tf.saved_model.load(str(path))
  out = loaded.signatures["score"](user_ids=tf.constant([0, 1], tf.int64),
                                   item_ids=tf.constant([2, 3], tf.int64))
  assert out["modality_weights"].shape == (2, 2)


def test_mario_on_the_ngcf_backbone_from_the_cli_trains_and_exports(tmp_path):
  from tests.helpers import run_in_process, write_release_layout
  data = tmp_path / "data"
  features = write_release_layout(str(data))
  workdir, exports = tmp_path / "run", tmp_path / "exports"
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}", f"--extra_features=meta={features}",
      "--model=mario", "--backbone=ngcf", "--ngcf_layers=4,3",
      "--ngcf_node_dropout=0.2", "--ngcf_message_dropout=0.1", "--mp_weight=0.5",
      "--num_neg=1", "--embed_dim=8", "--mario_hidden=4", "--batch_size=16",
      "--learning_rate=0.01", "--train_steps=6", "--eva_batches=3",
      "--notensorboard", f"--export_dir={exports}", f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["finished"] is True and summary["rounds"] == 2
  assert summary["last"]["train"]["mp_loss"] > 0
  path = exports / "mario_custom" / "1"
  info = json.loads((path / "assets.extra" / "export_info.json").read_text())
  assert info["backbone"] == "ngcf" and info["ngcf_layers"] == [4, 3]
  assert info["interaction_width"] == 8 + 4 + 3 and info["feature_norm"] == "scale"
  assert info["ngcf_node_dropout"] == 0.2
  # The baked tables serve: the top-k scores are the `score` signature's.
  check_served_top_k(path)
  pair = tf.saved_model.load(str(path)).signatures["score"](
      user_ids=tf.constant([0, 1, 2], tf.int64),
      item_ids=tf.constant([3, 4, 5], tf.int64))
  assert pair["modality_weights"].shape == (3, 2)


def test_mario_without_a_content_modality_is_a_usage_error():
  from maml_tf.config import Config
  from maml_tf.errors import UsageError
  ds = export_dataset(False, 0.0, seed=0)
  with pytest.raises(UsageError, match=r"^`--modalities` must name at least one "
                     r"content modality with --model=mario .*Received: ''$"):
    MARIO.from_run_config(Config(model="mario", num_neg=1, modalities=()), ds)


def test_the_flags_choices_are_the_models_own():
  """config.py cannot import the model (TensorFlow); the two lists agree."""
  from maml_tf import config as config_lib
  from maml_tf.models import mario as mario_lib
  assert config_lib.BACKBONES == mario_lib.BACKBONES
  assert config_lib.MARIO_FEATURE_NORMS == mario_lib.FEATURE_NORMS
  assert config_lib.MARIO_FUSIONS == mario_lib.FUSIONS
