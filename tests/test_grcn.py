"""GRCN: the refined edge weights, the content and ID representations, the
scores and the loss against an independent numpy oracle on a hand-built
graph (4 users, 6 items, 2 modalities), edge weights checked by hand where
a node has one neighbour, gradients against finite differences of the
oracle, the evaluation's cache and the served tables, the config round
trip, one-line errors, the CLI end to end with export, and the flagfile."""

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import data as data_lib
from maml_tf.config import Config
from maml_tf.errors import UsageError
from maml_tf.models.grcn import GRCN
from tests.helpers import (check_cli_export, check_export,
                           check_round_trip_needs_the_edges, check_served_tables,
                           check_served_top_k, check_tables_ignore_a_modalitys_scale,
                           check_xla_train_steps,
                           export_dataset, export_info, office_config)

N_USERS, N_ITEMS, D = 4, 6, 4
DIMS = {"text": 3, "meta": 5}
MODS = ("text", "meta")
# u0: i0 i1 i2; u1: i1 i3; u2: i0 i3 i4; u3: i5 only (and i5 has u3 only);
# (u0, i1) given twice.
PAIRS = np.array([[0, 0], [0, 1], [0, 2], [1, 1], [1, 3], [2, 0], [2, 3],
                  [2, 4], [3, 5], [0, 1]])


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


# ---------------------------------------------------------------- oracle
def _unit(x):
  return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), 1e-6)


def _softmax(v):
  v = np.asarray(v, np.float64)
  e = np.exp(v - v.max())
  return e / e.sum()


def oracle(params, pairs, T, L, mode, n_users=N_USERS, n_items=N_ITEMS):
  """GRCN from the paper's and the authors' code's description, in plain
  loops: returns users, items [.., D(1 + M)] and the dense refined weights
  to_user [U, I] (item i's message to u) and to_item [I, U]."""
  edges = sorted(set(map(tuple, np.asarray(pairs).tolist())))
  of_user = {u: [i for v, i in edges if v == u] for u in range(n_users)}
  of_item = {i: [u for u, j in edges if j == i] for i in range(n_items)}
  cu, ci, a_user, a_item = [], [], [], []
  for m in MODS:
    x = params[f"features_{m}"]
    z = x @ params[f"kernel_{m}"] + params[f"bias_{m}"]
    f = _unit(np.where(z > 0, z, 0.01 * z))
    p = _unit(params[f"preference_{m}"])
    for _ in range(T):
      new = p.copy()
      for u in range(n_users):
        if of_user[u]:
          a = _softmax([p[u] @ f[i] for i in of_user[u]])
          new[u] = _unit(p[u] + sum(a[k] * f[i] for k, i in enumerate(of_user[u])))
      p = new
    Au, Ai = np.zeros((n_users, n_items)), np.zeros((n_items, n_users))
    for u in range(n_users):
      if of_user[u]:
        a = _softmax([p[u] @ f[i] for i in of_user[u]])
        for k, i in enumerate(of_user[u]):
          Au[u, i] = a[k]
    for i in range(n_items):
      if of_item[i]:
        a = _softmax([p[u] @ f[i] for u in of_item[i]])
        for k, u in enumerate(of_item[i]):
          Ai[i, u] = a[k]
    cu.append(p + Au @ f)
    ci.append(f + Ai @ p)
    a_user.append(Au)
    a_item.append(Ai)
  conf = params["confidence"]
  Wu, Wi = np.zeros((n_users, n_items)), np.zeros((n_items, n_users))
  for u, i in edges:
    if mode == "confid":
      wu = max(a_user[k][u, i] * conf[n_users + i, k] for k in range(len(MODS)))
      wi = max(a_item[k][i, u] * conf[u, k] for k in range(len(MODS)))
    elif mode == "max":
      wu = max(a[u, i] for a in a_user)
      wi = max(a[i, u] for a in a_item)
    else:
      wu = np.mean([a[u, i] for a in a_user])
      wi = np.mean([a[i, u] for a in a_item])
    Wu[u, i], Wi[i, u] = max(wu, 0.0), max(wi, 0.0)
  xu, xi = _unit(params["users"]), _unit(params["items"])
  tu, ti = xu.copy(), xi.copy()
  for _ in range(L):
    xu, xi = Wu @ xi, Wi @ xu
    tu, ti = tu + xu, ti + xi
  return (np.concatenate([tu] + cu, 1), np.concatenate([ti] + ci, 1), Wu, Wi)


def oracle_loss(params, pairs, T, L, mode, users, items, l2_reg):
  U, I, _, _ = oracle(params, pairs, T, L, mode)
  r_pos = (U[users] * I[items[:, 0]]).sum(1)
  r_neg = (U[users] * I[items[:, 1]]).sum(1)
  bpr = np.mean(np.log1p(np.exp(r_neg - r_pos)))
  rows = [params["users"][users], params["items"][items[:, 0]],
          params["items"][items[:, 1]]]
  rows += [params[f"preference_{m}"][users] for m in MODS]
  l2 = l2_reg * sum((r * r).sum() for r in rows) / (2 * len(users))
  return bpr, l2


# ---------------------------------------------------------------- model
def _model(T=3, L=2, mode="confid", l2_reg=0.1, seed=0, pairs=PAIRS):
  m = GRCN(N_USERS, N_ITEMS, modalities=MODS, feature_dims=[DIMS[k] for k in MODS],
           train_pairs=pairs, gcn_layers=L, routing=T, weight_mode=mode,
           embed_dim=D, l2_reg=l2_reg, seed=seed)
  rng = np.random.default_rng(seed + 7)
  m.user_embeddings.assign(rng.normal(size=(N_USERS, D)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(N_ITEMS, D)).astype(np.float32))
  for k in MODS:  # preferences and projections large enough to matter
    m.preference(k).assign(rng.normal(size=(N_USERS, D)).astype(np.float32))
    m.projections[k].kernel.assign(rng.normal(size=(DIMS[k], D)).astype(np.float32))
    m.projections[k].bias.assign(rng.normal(size=(D,)).astype(np.float32) * 0.3)
  m.confidence.assign(rng.normal(size=(N_USERS + N_ITEMS, 2)).astype(np.float32))
  m.set_item_features({k: rng.normal(size=(N_ITEMS, DIMS[k])).astype(np.float32)
                       for k in MODS})
  return m


def _params(m):
  p = {"users": _np(m.user_embeddings), "items": _np(m.item_embeddings),
       "confidence": _np(m.confidence)}
  for k in MODS:
    p[f"features_{k}"] = _np(m.feature_table(k))
    p[f"preference_{k}"] = _np(m.preference(k))
    p[f"kernel_{k}"] = _np(m.projections[k].kernel)
    p[f"bias_{k}"] = _np(m.projections[k].bias)
  return p


def _model_weights(m):
  """The model's refined weights as dense [U, I] and [I, U] matrices."""
  parts = [m.refine(k) for k in MODS]
  w_user, w_item = m.edge_weights(tf.stack([p[2] for p in parts], -1),
                                  tf.stack([p[3] for p in parts], -1))
  eu, ei = (t.numpy() for t in m.edges)
  Wu, Wi = np.zeros((N_USERS, N_ITEMS)), np.zeros((N_ITEMS, N_USERS))
  Wu[eu, ei] = w_user.numpy()
  Wi[ei, eu] = w_item.numpy()
  return Wu, Wi


def test_the_edge_list_is_the_distinct_train_pairs():
  m = _model()
  eu, ei = (t.numpy() for t in m.edges)
  assert len(eu) == 9  # (u0, i1) once
  assert set(zip(eu.tolist(), ei.tolist())) == set(map(tuple, PAIRS.tolist()))


@pytest.mark.parametrize("mode", ["confid", "max", "mean"])
@pytest.mark.parametrize("T", [0, 1, 3])
def test_refined_edge_weights_match_the_oracle(mode, T):
  m = _model(T=T, mode=mode)
  _, _, Wu, Wi = oracle(_params(m), PAIRS, T, 2, mode)
  got_u, got_i = _model_weights(m)
  np.testing.assert_allclose(got_u, Wu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_i, Wi, rtol=1e-5, atol=1e-6)
  if mode != "confid":  # softmax weights of one modality sum to 1 a node
    assert (Wu.sum(1) > 0).all()


def test_edge_weights_by_hand_where_a_node_has_one_neighbour():
  # u3's only item is i5 and i5's only user is u3: both softmaxes are 1 in
  # every modality, so w(i5 -> u3) = relu(max_m k_{i5}^m) and
  # w(u3 -> i5) = relu(max_m k_{u3}^m): 0.7, and 0 (pruned: all negative).
  m = _model(T=3)
  conf = m.confidence.numpy()
  conf[3] = [-0.5, -0.2]
  conf[N_USERS + 5] = [0.3, 0.7]
  m.confidence.assign(conf)
  Wu, Wi = _model_weights(m)
  assert Wu[3, 5] == pytest.approx(0.7, rel=1e-6)
  assert Wi[5, 3] == 0.0
  assert (Wu[3, :5] == 0).all() and (Wi[:5, 3] == 0).all()
  _, _, oWu, oWi = oracle(_params(m), PAIRS, 3, 2, "confid")
  np.testing.assert_allclose(Wu, oWu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(Wi, oWi, rtol=1e-5, atol=1e-6)
  # max mode: 1 on both, whatever the confidences.
  m = _model(T=3, mode="max")
  Wu, Wi = _model_weights(m)
  assert Wu[3, 5] == pytest.approx(1.0) and Wi[5, 3] == pytest.approx(1.0)


def test_routing_refines_the_preferences():
  # The routing moves the users' preferences, hence the affinities: the
  # weights after 3 iterations differ from those without routing.
  w0 = _model_weights(_model(T=0, mode="max"))[0]
  w3 = _model_weights(_model(T=3, mode="max"))[0]
  assert np.abs(w0 - w3).max() > 1e-3
  # u0's routed preference in modality text, one iteration, by hand.
  m = _model(T=1)
  p = _params(m)
  z = p["features_text"] @ p["kernel_text"] + p["bias_text"]
  f = _unit(np.where(z > 0, z, 0.01 * z))
  p0 = _unit(p["preference_text"][0])
  logits = np.array([p0 @ f[0], p0 @ f[1], p0 @ f[2]])
  a = np.exp(logits) / np.exp(logits).sum()
  want = _unit(p0 + a[0] * f[0] + a[1] * f[1] + a[2] * f[2])
  users, _, _, _ = m.refine("text")
  # c_u0 = p_u0 + sum_i softmax(p_u0 . f_i) f_i with the routed p_u0.
  logits = np.array([want @ f[0], want @ f[1], want @ f[2]])
  a = np.exp(logits) / np.exp(logits).sum()
  np.testing.assert_allclose(users.numpy()[0], want + a @ f[:3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["confid", "mean"])
def test_representations_scores_and_loss_match_the_oracle(mode):
  m = _model(mode=mode)
  U, I, _, _ = oracle(_params(m), PAIRS, 3, 2, mode)
  users, items = m.final_tables()
  assert users.shape == (N_USERS, 3 * D) and m.score_width == 3 * D
  np.testing.assert_allclose(users.numpy(), U, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(items.numpy(), I, rtol=1e-5, atol=1e-5)
  rng = np.random.default_rng(3)
  bu = rng.integers(0, N_USERS, 9).astype(np.int32)
  bi = rng.integers(0, N_ITEMS, (9, 2)).astype(np.int32)
  terms = m.loss_terms(tf.constant(bu), tf.constant(bi))
  bpr, l2 = oracle_loss(_params(m), PAIRS, 3, 2, mode, bu, bi, 0.1)
  assert set(terms) == {"loss", "bpr_loss", "l2_loss"}
  assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-5)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  assert float(terms["loss"]) == pytest.approx(bpr + l2, rel=1e-5)
  scores = m.score_pairs(tf.constant(bu), tf.constant(bi)).numpy()
  np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", U[bu], I[bi]),
                             rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences_of_the_oracle():
  m = _model(T=2, L=2, l2_reg=0.3)
  rng = np.random.default_rng(4)
  bu = rng.integers(0, N_USERS, 8).astype(np.int32)
  bi = rng.integers(0, N_ITEMS, (8, 2)).astype(np.int32)
  named = {"users": m.user_embeddings, "items": m.item_embeddings,
           "confidence": m.confidence}
  for k in MODS:
    named.update({f"preference_{k}": m.preference(k),
                  f"kernel_{k}": m.projections[k].kernel,
                  f"bias_{k}": m.projections[k].bias})
  assert len(named) == len(m.trainable_variables)
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(bu), tf.constant(bi))["loss"]
  grads = dict(zip(named, tape.gradient(loss, list(named.values()))))
  params = _params(m)
  eps = 1e-6
  for name in named:
    got = _np(tf.convert_to_tensor(grads[name]))
    want = np.zeros_like(params[name])
    for idx in np.ndindex(*params[name].shape):
      for sign in (1, -1):
        p = {k: v.copy() for k, v in params.items()}
        p[name][idx] += sign * eps
        want[idx] += sign * sum(oracle_loss(p, PAIRS, 2, 2, "confid", bu, bi, 0.3))
    want /= 2 * eps
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5, err_msg=name)
    assert np.abs(want).max() > 1e-4, name  # every variable reaches the loss


def test_the_served_tables_equal_the_evaluations_scores():
  m = _model()
  _, served = check_served_tables(m, PAIRS, N_USERS, N_ITEMS)
  U, I, _, _ = oracle(_params(m), PAIRS, 3, 2, "confid")
  np.testing.assert_allclose(served, U @ I.T, rtol=1e-5, atol=1e-5)


def test_xla_compiled_train_step_lowers_the_loss_and_refreshes_the_cache():
  m = _model(l2_reg=1e-3)
  m.compile(optimizer=keras.optimizers.Adam(2e-2), jit_compile=True)
  rng = np.random.default_rng(5)
  batch = (tf.constant(rng.integers(0, N_USERS, 16).astype(np.int32)),
           tf.constant(rng.integers(0, N_ITEMS, (16, 2)).astype(np.int32)))
  before = {v.path: _np(v) for v in m.trainable_variables}
  check_xla_train_steps(m, batch, 15, N_USERS)
  for v in m.trainable_variables:
    assert not np.allclose(_np(v), before[v.path]), v.path


def test_a_modalitys_scale_does_not_reach_the_tables_at_a_zero_bias():
  """Issue 22 item 8 (one modality's features 10x another's): GRCN uses a
  modality through f^m = l2norm(LeakyReLU(W_m x^m + b_m)), and LeakyReLU
  is positively homogeneous, so with b_m = 0 (its initial value) x^m x10 or
  x0.1 gives the same tables, and the same loss as a function of W_m; a
  trained bias lets the scale in, weighed against it (below)."""
  m = _model()
  features = check_tables_ignore_a_modalitys_scale(m, "text")
  # With a bias, x10 shrinks the bias's share of W x + b: the tables move.
  m.projections["text"].bias.assign(tf.fill([D], 0.5))
  m.set_item_features(features)
  biased = m.final_tables()[1].numpy()
  m.set_item_features(dict(features, text=features["text"] * 10.0))
  assert np.abs(m.final_tables()[1].numpy() - biased).max() > 1e-3


def test_authors_initialisation_scales():
  m = GRCN(300, 500, modalities=("text",), feature_dims=(7,), train_pairs=PAIRS,
           embed_dim=32, seed=1)
  assert m.init_stddev == pytest.approx(np.sqrt(2 / (300 + 500 + 32)))
  assert _np(m.item_embeddings).std() == pytest.approx(m.init_stddev, rel=0.05)
  # The preferences: GlorotNormal of [U, d], sd sqrt(2 / (U + d)) as
  # PyTorch's xavier_normal (Keras truncates at 2 sd and rescales).
  assert _np(m.preference("text")).std() == pytest.approx(
      np.sqrt(2 / (300 + 32)), rel=0.05)


def test_config_round_trip_needs_the_edges_again():
  m = _model(T=2, mode="max")
  config = m.get_config()
  assert config["routing"] == 2 and config["weight_mode"] == "max"
  assert config["modalities"] == list(MODS) and "train_pairs" not in config
  restored = check_round_trip_needs_the_edges(m, PAIRS)
  assert isinstance(restored, GRCN) and restored.routing == 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(modalities=(), feature_dims=()),
     r"`modalities` must name at least one content modality"),
    (dict(feature_dims=(3,)), r"`feature_dims` must give one size >= 1 per modality"),
    (dict(weight_mode="sum"), r"`weight_mode` must be one of confid, max, mean. "
     r"Received: weight_mode='sum'"),
    (dict(routing=-1), r"`routing` must be an integer >= 0. Received: routing=-1"),
    (dict(routing=1.5), r"`routing` must be an integer >= 0. Received: routing=1.5"),
    (dict(gcn_layers=0), r"`gcn_layers` must be an integer >= 1. Received: gcn_layers=0"),
    (dict(l2_reg=-1), r"`l2_reg` must be >= 0. Received: l2_reg=-1"),
    (dict(train_pairs=[[0, 6]]), r"`train_pairs` must be \(user, item\) ids in"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
  args = dict(modalities=MODS, feature_dims=(3, 5), train_pairs=PAIRS)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    GRCN(N_USERS, N_ITEMS, **args)


def test_features_of_the_wrong_shape_are_refused():
  m = _model()
  with pytest.raises(ValueError, match=r"`features\['meta'\]` must have shape \(6, 5\)"):
    m.set_item_features({"text": np.zeros((6, 3)), "meta": np.zeros((6, 4))})
  with pytest.raises(ValueError, match=r"`features` must have the modality 'meta'"):
    m.set_item_features({"text": np.zeros((6, 3))})


@pytest.mark.parametrize("flag,value,message", [
    ("grcn_routing", -1, "`--grcn_routing` must be >= 0. Received: -1"),
    ("grcn_weight_mode", "sum",
     "`--grcn_weight_mode` must be one of confid, max, mean. Received: 'sum'"),
])
def test_each_new_flag_has_a_one_line_error(flag, value, message):
  with pytest.raises(UsageError) as e:
    Config(model="grcn", num_neg=1, **{flag: value}).validate()
  assert str(e.value) == message


def test_one_negative_is_required_and_features_too():
  with pytest.raises(UsageError, match="`--num_neg` must be 1 with --model=grcn"):
    Config(model="grcn", num_neg=4).validate()
  ds = export_dataset(False, 0.0, seed=0)
  with pytest.raises(UsageError, match=r"^`--modalities` must name at least one "
                     r"content modality with --model=grcn .*Received: ''$"):
    GRCN.from_run_config(Config(model="grcn", num_neg=1, modalities=()), ds)


def _dataset(seed=3):
  ds = export_dataset(True, 0.2, seed=seed)
  rng = np.random.default_rng(seed)
  feats = dict(ds.features, text=rng.normal(size=(ds.n_items, 5)).astype(np.float32))
  return data_lib.from_arrays(ds.train, ds.test, features=feats, n_users=ds.n_users,
                              n_items=ds.n_items)


def test_export_bakes_the_representations_in(tmp_path):
  ds = _dataset()
  m = GRCN(ds.n_users, ds.n_items, modalities=ds.modalities,
           feature_dims=[ds.features[k].shape[1] for k in ds.modalities],
           train_pairs=ds.train, embed_dim=6, seed=0)
  m.set_item_features(dict(ds.features))
  rng = np.random.default_rng(2)
  m.user_embeddings.assign(rng.normal(size=(ds.n_users, 6)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(ds.n_items, 6)).astype(np.float32))
  out = check_export(m, ds, tmp_path, "grcn")
  info = export_lib.load_info(out["path"])
  assert info["model"] == "grcn" and info["routing"] == 3
  assert info["modalities"] == list(ds.modalities)


def test_grcn_from_the_cli_trains_and_exports(tmp_path):
  summary, workdir, path = check_cli_export(tmp_path, "grcn", [
      "--num_neg=1", "--grcn_routing=2", "--grcn_weight_mode=max",
      "--gcn_layers=2", "--embed_dim=8", "--l2_reg=1e-4", "--batch_size=16",
      "--learning_rate=0.01"])
  assert summary["rounds"] == 2
  assert summary["modalities"] == ["meta"]
  assert set(summary["last"]["train"]) >= {"loss", "bpr_loss", "l2_loss"}
  assert "--grcn_routing=2" in (workdir / "flags.txt").read_text()
  info = export_info(path)
  assert info["model"] == "grcn" and info["weight_mode"] == "max"
  check_served_top_k(path)


def test_the_office_flagfile_parses_and_validates():
  c = office_config("grcn")
  # The authors' code's defaults.
  assert (c.embed_dim, c.gcn_layers, c.grcn_routing, c.grcn_weight_mode) == (
      64, 2, 3, "confid")
  assert (c.learning_rate, c.batch_size, c.num_neg) == (1e-4, 1024, 1)
  assert c.modalities == ("text", "meta")
