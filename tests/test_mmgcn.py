"""MMGCN: the neighbour graph, one layer (every aggregation and combination)
and the whole model (two modalities, scores, BPR, L2) against a numpy oracle
written node by node on a hand-built graph (4 users, 5 items); gradients
against finite differences of that oracle; the features' scale does not
reach the scores; evaluation is deterministic and the served tables equal
its scores; the config round trip; one-line errors; the CLI end to end with
export; the committed Office flagfile."""

import types

from maml_tf.export import saved_model as export_lib  # noqa: F401  first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.config import Config
from maml_tf.errors import UsageError
from maml_tf.models import mmgcn as mmgcn_lib
from maml_tf.models.mmgcn import MMGCN
from tests.helpers import (HAND_NEIGHBOURS, HAND_PAIRS, check_cli_export,
                           check_round_trip_needs_the_edges, check_served_top_k,
                           check_xla_train_steps, export_info, office_config)

N_USERS, N_ITEMS, D = 4, 5, 4
DIMS = {"text": 3, "meta": 2}
PAIRS, NEIGHBOURS_BY_HAND = HAND_PAIRS, HAND_NEIGHBOURS
SLOPE = 0.01


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


# ------------------------------------------------------------ the oracle


def leaky(x):
  return np.where(x > 0, x, SLOPE * x)


def l2norm(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def oracle_layer(X, ids, conv, lin_w, lin_b, comb_w, comb_b, aggregation, combination,
                 neighbours=NEIGHBOURS_BY_HAND):
  """One MMGCN layer, node by node: aggregation, then combination."""
  out = []
  for n in range(len(X)):
    messages = [X[j] @ conv for j in neighbours.get(n, [])]
    if not messages:
      agg = np.zeros(conv.shape[1])
    elif aggregation == "mean":
      agg = np.mean(messages, 0)
    elif aggregation == "sum":
      agg = np.sum(messages, 0)
    else:
      agg = np.max(messages, 0)
    h = leaky(agg)
    own = leaky(X[n] @ lin_w + lin_b) + ids[n]
    if combination == "concat":
      out.append(leaky(np.concatenate([h, own]) @ comb_w + comb_b))
    else:
      out.append(leaky(h @ comb_w + comb_b + own))
  return np.array(out)


def oracle_branch(params, features, ids, aggregation, combination):
  """X^L of one modality: params = dict(preference, projection (W, b) or
  None, layers [(conv, lin_w, lin_b, comb_w, comb_b)])."""
  items = features if params["projection"] is None else (
      features @ params["projection"][0] + params["projection"][1])
  X = l2norm(np.concatenate([params["preference"], items]))
  for layer in params["layers"]:
    X = oracle_layer(X, ids, *layer, aggregation, combination)
  return X


def oracle_tables(m_params, ids, features, aggregation, combination):
  total = sum(oracle_branch(m_params[k], features[k], ids, aggregation, combination)
              for k in m_params)
  return total[:N_USERS], total[N_USERS:]


def oracle_loss(m_params, ids, features, aggregation, combination, users, pos, neg,
                l2_reg):
  U, I = oracle_tables(m_params, ids, features, aggregation, combination)
  diff = np.sum(U[users] * I[pos], 1) - np.sum(U[users] * I[neg], 1)
  bpr = float(np.mean(np.log1p(np.exp(-diff))))
  rows = [ids[users], ids[N_USERS + pos], ids[N_USERS + neg]]
  rows += [m_params[k]["preference"][users] for k in m_params]
  l2 = l2_reg * sum(float(np.sum(r * r)) for r in rows) / (2 * len(users))
  return bpr, l2


# ------------------------------------------------------------ the model


def _params(m):
  out = {}
  for k in m.modalities:
    b = m.branches[k]
    out[k] = dict(
        preference=_np(b.preference),
        projection=None if b.projection_kernel is None else (
            _np(b.projection_kernel), _np(b.projection_bias)),
        layers=[(_np(b.conv_kernels[l]), _np(b.linear_kernels[l]),
                 _np(b.linear_biases[l]), _np(b.combine_kernels[l]),
                 _np(b.combine_biases[l])) for l in range(b.n_layers)])
  return out


def _ids(m):
  return np.concatenate([_np(m.user_embeddings), _np(m.item_embeddings)])


def _features(m):
  return {k: _np(m.feature_table(k)) for k in m.modalities}


def _model(aggregation="mean", combination="concat", latent=3, layers=2,
           l2_reg=0.3, seed=0, scale=1.0):
  m = MMGCN(N_USERS, N_ITEMS, modalities=("text", "meta"),
            feature_dims=(DIMS["text"], DIMS["meta"]), train_pairs=PAIRS,
            gcn_layers=layers, latent_dim=latent, aggregation=aggregation,
            combination=combination, embed_dim=D, l2_reg=l2_reg, seed=seed)
  rng = np.random.default_rng(seed + 3)
  for v in m.trainable_variables:  # biases too: every term matters
    v.assign((0.7 * rng.normal(size=v.shape)).astype(np.float32))
  m.set_item_features({k: rng.normal(size=(N_ITEMS, d)) for k, d in DIMS.items()})
  return m


def _batch(seed=1, b=10):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, N_USERS, b).astype(np.int32),
          rng.integers(0, N_ITEMS, (b, 2)).astype(np.int32))


@pytest.mark.parametrize("aggregation", mmgcn_lib.AGGREGATIONS)
def test_the_neighbour_graph_is_the_hand_built_one(aggregation):
  graph, degrees = mmgcn_lib.neighbour_graph(PAIRS, N_USERS, N_ITEMS, aggregation)
  G = tf.sparse.to_dense(graph).numpy()
  for n, neighbours in NEIGHBOURS_BY_HAND.items():
    assert degrees[n] == len(neighbours)
    for j in range(N_USERS + N_ITEMS):
      weight = (1.0 / len(neighbours) if aggregation == "mean" else 1.0)
      assert G[n, j] == pytest.approx(weight if j in neighbours else 0.0)


@pytest.mark.parametrize("aggregation", mmgcn_lib.AGGREGATIONS)
@pytest.mark.parametrize("combination", mmgcn_lib.COMBINATIONS)
def test_one_layer_matches_the_node_by_node_oracle(aggregation, combination):
  m = _model(aggregation, combination)
  branch = m.branches["text"]
  ids = _ids(m)
  rng = np.random.default_rng(9)
  X = rng.normal(size=(N_USERS + N_ITEMS, 3))
  got = branch.layer(0, m.graph, m.degrees, tf.constant(X, tf.float32),
                     tf.constant(ids, tf.float32)).numpy()
  want = oracle_layer(X, ids, *_params(m)["text"]["layers"][0], aggregation,
                      combination)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A node without neighbours aggregates to 0 (mean, sum and max alike).
  lonely = oracle_layer(X, ids, *_params(m)["text"]["layers"][0], aggregation,
                        combination, neighbours={})
  graph, degrees = mmgcn_lib.neighbour_graph(np.zeros((0, 2), int), N_USERS,
                                             N_ITEMS, aggregation)
  got = branch.layer(0, graph, degrees, tf.constant(X, tf.float32),
                     tf.constant(ids, tf.float32)).numpy()
  np.testing.assert_allclose(got, lonely, rtol=1e-5, atol=1e-5)


def test_one_mean_layer_by_hand_for_item_4():
  """Item 4 (node 8) has one neighbour, u3: its mean is u3's message."""
  m = _model("mean", "add")
  (conv, lin_w, lin_b, comb_w, comb_b) = _params(m)["meta"]["layers"][0]
  ids = _ids(m)
  X = np.random.default_rng(2).normal(size=(N_USERS + N_ITEMS, 3))
  h = leaky(X[3] @ conv)
  want = leaky(h @ comb_w + comb_b + leaky(X[8] @ lin_w + lin_b) + ids[8])
  got = m.branches["meta"].layer(0, m.graph, m.degrees, tf.constant(X, tf.float32),
                                 tf.constant(ids, tf.float32)).numpy()[8]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("latent", [3, 0])
def test_tables_scores_and_loss_match_the_oracle(latent):
  m = _model(latent=latent)
  U, I = oracle_tables(_params(m), _ids(m), _features(m), "mean", "concat")
  users_t, items_t = m.final_tables()
  np.testing.assert_allclose(users_t.numpy(), U, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(items_t.numpy(), I, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.score_items(tf.range(N_USERS)).numpy(), U @ I.T,
                             rtol=1e-4, atol=1e-4)
  users, items = _batch()
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  bpr, l2 = oracle_loss(_params(m), _ids(m), _features(m), "mean", "concat", users,
                        items[:, 0], items[:, 1], 0.3)
  assert set(terms) == {"loss", "bpr_loss", "l2_loss"}
  assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-4)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  got = m.score_pairs(tf.constant(users), tf.constant(items)).numpy()
  np.testing.assert_allclose(got, np.einsum("bd,bnd->bn", U[users], I[items]),
                             rtol=1e-4, atol=1e-4)
  # The sum over modalities, not the mean: each branch alone adds up.
  one = {k: _params(m)[k] for k in ("text",)}
  U1, _ = oracle_tables(one, _ids(m), _features(m), "mean", "concat")
  assert not np.allclose(U, U1) and not np.allclose(U, U / 2)


@pytest.mark.parametrize("aggregation,combination", [("mean", "concat"), ("max", "add")])
def test_gradients_match_finite_differences_of_the_oracle(aggregation, combination):
  m = _model(aggregation, combination, l2_reg=0.3)
  users, items = _batch(b=8)
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  variables = m.trainable_variables
  grads = tape.gradient(loss, variables)
  values = [_np(v) for v in variables]
  features = _features(m)
  by_path = {v.path: k for k, v in enumerate(variables)}

  def oracle_from(vals):
    ids = np.concatenate(vals[:2])
    params = {}
    for k in m.modalities:
      b = m.branches[k]
      get = lambda w: vals[by_path[w.path]]  # noqa: E731
      params[k] = dict(
          preference=get(b.preference),
          projection=(get(b.projection_kernel), get(b.projection_bias)),
          layers=[(get(b.conv_kernels[l]), get(b.linear_kernels[l]),
                   get(b.linear_biases[l]), get(b.combine_kernels[l]),
                   get(b.combine_biases[l])) for l in range(b.n_layers)])
    return sum(oracle_loss(params, ids, features, aggregation, combination, users,
                           items[:, 0], items[:, 1], 0.3))

  eps = 1e-6
  checked = 0
  for k, (g, v) in enumerate(zip(grads, values)):
    fd = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
      up = [x.copy() for x in values]
      down = [x.copy() for x in values]
      up[k][idx] += eps
      down[k][idx] -= eps
      fd[idx] = (oracle_from(up) - oracle_from(down)) / (2 * eps)
    np.testing.assert_allclose(_np(tf.convert_to_tensor(g)), fd, rtol=2e-3,
                               atol=3e-5, err_msg=variables[k].path)
    checked += int(np.abs(fd).max() > 1e-5)
  assert checked >= len(values) - 2  # (nearly) every weight gets a gradient


def test_the_features_scale_does_not_reach_the_scores():
  """X^0's rows are l2-normalised: features x10 (or x0.1) in one modality
  give the same tables, raw (latent 0) or linearly projected with a zero
  bias (the initial state); a trained bias makes it approximate."""
  for latent in (0, 3):
    m = _model(latent=latent)
    if latent:
      for k in m.modalities:
        m.branches[k].projection_bias.assign(tf.zeros_like(m.branches[k].projection_bias))
    base = m.final_tables()[1].numpy()
    for factor in (10.0, 0.1):
      scaled = _features(m)
      scaled["text"] = scaled["text"] * factor
      m.set_item_features(scaled)
      np.testing.assert_allclose(m.final_tables()[1].numpy(), base, rtol=1e-4,
                                 atol=1e-5)
      m.set_item_features({k: v / (factor if k == "text" else 1.0)
                           for k, v in scaled.items()})


def test_evaluation_is_deterministic_and_the_served_tables_equal_its_scores():
  m = _model()
  users = tf.range(N_USERS)
  first = m.score_items(users).numpy()
  np.testing.assert_array_equal(first, m.score_items(users).numpy())
  np.testing.assert_array_equal(m.final_tables(training=True)[1].numpy(),
                                m.final_tables()[1].numpy())  # no dropout
  tables = m.serving_tables()
  np.testing.assert_allclose(m.serve_items(tables, users).numpy(), first,
                             rtol=1e-5, atol=1e-5)
  pairs_u, pairs_i = _batch(seed=5)
  served, explanation = m.serve_pairs(tables, tf.constant(pairs_u), tf.constant(pairs_i))
  np.testing.assert_allclose(served.numpy(), m.score_pairs(
      tf.constant(pairs_u), tf.constant(pairs_i)).numpy(), rtol=1e-5, atol=1e-5)
  assert explanation is None
  space, vectors = m.retrieval_space(tables)
  assert space == "dot"
  np.testing.assert_allclose(vectors.numpy(), oracle_tables(
      _params(m), _ids(m), _features(m), "mean", "concat")[1], rtol=1e-5, atol=1e-5)


def test_xla_compiled_train_step_lowers_the_loss_and_refreshes_the_cache():
  m = _model(l2_reg=1e-3)
  m.compile(optimizer=keras.optimizers.Adam(2e-2), jit_compile=True)
  users, items = _batch(b=16)
  batch = (tf.constant(users), tf.constant(items))
  check_xla_train_steps(m, batch, 30, N_USERS)


def test_initialisation_as_the_authors_code():
  m = MMGCN(300, 500, modalities=("text",), feature_dims=(40,), train_pairs=[[0, 0]],
            embed_dim=64, latent_dim=32, seed=1)
  ids = np.concatenate([_np(m.user_embeddings), _np(m.item_embeddings)])
  assert ids.std() == pytest.approx(np.sqrt(2.0 / (800 + 64)), rel=0.05)
  pref = _np(m.branches["text"].preference)
  assert pref.shape == (300, 32)
  assert pref.std() == pytest.approx(np.sqrt(2.0 / (300 + 32)), rel=0.05)
  b = m.branches["text"]
  assert not np.allclose(_np(b.linear_kernels[0])[:32], _np(b.combine_kernels[0])[:32])


def test_config_round_trip_needs_the_edges_and_features_again():
  m = _model(aggregation="max", combination="add", latent=0)
  config = m.get_config()
  assert (config["aggregation"], config["combination"], config["latent_dim"],
          config["gcn_layers"], config["modalities"]) == ("max", "add", 0, 2,
                                                          ["text", "meta"])
  restored = check_round_trip_needs_the_edges(m, PAIRS)
  assert isinstance(restored, MMGCN) and restored.modalities == ("text", "meta")


@pytest.mark.parametrize("kwargs,message", [
    (dict(modalities=(), feature_dims=()), r"`modalities` must name at least one"),
    (dict(feature_dims=(3,)), r"`feature_dims` must give one size >= 1 per modality"),
    (dict(aggregation="median"), r"`aggregation` must be one of mean, sum, max. "
     r"Received: aggregation='median'"),
    (dict(combination="mul"), r"`combination` must be one of concat, add. "
     r"Received: combination='mul'"),
    (dict(latent_dim=-1), r"`latent_dim` must be an integer >= 0. Received: latent_dim=-1"),
    (dict(gcn_layers=0), r"`gcn_layers` must be an integer >= 1"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
  args = dict(modalities=("text", "meta"), feature_dims=(3, 2), train_pairs=PAIRS)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    MMGCN(N_USERS, N_ITEMS, **args)


def test_bad_features_are_refused():
  m = _model()
  with pytest.raises(ValueError, match=r"`features\['text'\]` must have shape \(5, 3\)"):
    m.set_item_features({"text": np.zeros((5, 4)), "meta": np.zeros((5, 2))})
  with pytest.raises(ValueError, match="`features` must have the modality 'meta'"):
    m.set_item_features({"text": np.zeros((5, 3))})


@pytest.mark.parametrize("flag,value,message", [
    ("mmgcn_latent", -1, "`--mmgcn_latent` must be >= 0. Received: -1"),
    ("mmgcn_latent", 2.5, "`--mmgcn_latent` must be an integer. Received: 2.5"),
    ("mmgcn_aggregation", "median", "`--mmgcn_aggregation` must be one of mean, "
     "sum, max. Received: 'median'"),
    ("mmgcn_combination", "mul", "`--mmgcn_combination` must be one of concat, "
     "add. Received: 'mul'"),
])
def test_each_new_flag_has_a_one_line_error(flag, value, message):
  with pytest.raises(UsageError) as e:
    Config(model="mmgcn", num_neg=1, **{flag: value}).validate()
  assert str(e.value) == message


def test_without_a_content_modality_is_a_usage_error():
  with pytest.raises(UsageError, match="`--num_neg` must be 1 with --model=mmgcn"):
    Config(model="mmgcn", num_neg=4).validate()
  ds = types.SimpleNamespace(n_users=N_USERS, n_items=N_ITEMS, train=PAIRS,
                             features={}, modalities=())
  with pytest.raises(UsageError, match=r"^`--modalities` must name at least one "
                     r"content modality with --model=mmgcn .*Received: ''$"):
    MMGCN.from_run_config(Config(model="mmgcn", num_neg=1, modalities=()), ds)


def test_mmgcn_from_the_cli_trains_and_exports(tmp_path):
  summary, _, path = check_cli_export(tmp_path, "mmgcn", [
      "--num_neg=1", "--gcn_layers=2", "--mmgcn_latent=6",
      "--mmgcn_aggregation=mean", "--mmgcn_combination=concat", "--embed_dim=8",
      "--l2_reg=1e-4", "--batch_size=16", "--learning_rate=0.01"])
  assert summary["modalities"] == ["meta"]
  assert set(summary["last"]["train"]) >= {"loss", "bpr_loss", "l2_loss"}
  info = export_info(path)
  assert info["model"] == "mmgcn" and info["latent_dim"] == 6
  assert info["aggregation"] == "mean" and info["gcn_layers"] == 2
  check_served_top_k(path)


def test_the_office_flagfile_parses_and_validates():
  c = office_config("mmgcn")
  assert c.modalities == ("text", "meta")
  # The authors' code's settings.
  assert (c.embed_dim, c.gcn_layers, c.mmgcn_latent) == (64, 3, 256)
  assert (c.mmgcn_aggregation, c.mmgcn_combination) == ("mean", "concat")
  assert (c.learning_rate, c.batch_size, c.l2_reg, c.num_neg) == (1e-4, 1024, 1e-5, 1)
