"""LATTICE: the kNN item-item graph (by hand on six items, and against a
numpy oracle), the chunked kNN against the unchunked one, the learned
graph and its mixing with the raw one, the fusion and the item-item
convolution, the scores and the loss against the oracle on a hand-built
graph (4 users, 6 items, 2 modalities), gradients against finite
differences of the oracle, the rebuild schedule of the learned graphs in
training, the served tables against the evaluation's scores, the config
round trip, one-line errors, the CLI end to end with export, and the
flagfile."""

import math

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import data as data_lib
from maml_tf.config import Config
from maml_tf.errors import UsageError
from maml_tf.models import lattice as lattice_lib
from maml_tf.models.lattice import LATTICE
from tests import oracles
from tests.helpers import (check_cli_export, check_export,
                           check_round_trip_needs_the_edges, check_served_tables,
                           check_served_top_k, check_tables_ignore_a_modalitys_scale,
                           export_dataset, export_info, office_config)

N_USERS, N_ITEMS, D, K = 4, 6, 4, 3
DIMS = {"text": 3, "meta": 5}
MODS = ("text", "meta")
PAIRS = np.array([[0, 0], [0, 1], [0, 2], [1, 1], [1, 3], [2, 0], [2, 3],
                  [2, 4], [3, 5], [0, 1]])


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


# ---------------------------------------------------------------- oracle
def knn_oracle(X, k):
  """Dense normalised kNN graph [n, n]: per row the k largest cosine
  similarities (ties: lower index), D^-1/2 S D^-1/2 with D the row sums."""
  X = np.asarray(X, np.float64)
  Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-6)
  S = Xn @ Xn.T
  n = len(X)
  out = np.zeros((n, n))
  for i in range(n):
    keep = sorted(range(n), key=lambda j: (-S[i, j], j))[:k]
    out[i, keep] = S[i, keep]
  deg = out.sum(1)
  inv = np.array([1 / math.sqrt(x) if x > 0 else 0.0 for x in deg])
  return inv[:, None] * out * inv[None, :]


def fused_oracle(params, k, lam):
  """A = sum_m softmax(w)_m ((1 - lam) learned^m + lam raw^m)."""
  w = np.exp(params["modal_logits"]) / np.exp(params["modal_logits"]).sum()
  A = 0.0
  for j, m in enumerate(MODS):
    X = params[f"features_{m}"]
    raw = knn_oracle(X, k)
    learned = knn_oracle(X @ params[f"kernel_{m}"] + params[f"bias_{m}"], k)
    A = A + w[j] * ((1 - lam) * learned + lam * raw)
  return A


def tables_oracle(params, k=K, lam=0.9, layers=2, item_layers=1, A=None):
  if A is None:
    A = fused_oracle(params, k, lam)
  h = params["items"]
  for _ in range(item_layers):
    h = A @ h
  adj = oracles.lightgcn_adjacency(PAIRS, N_USERS, N_ITEMS)
  users, items = oracles.lightgcn_propagate(adj, params["users"], params["items"], layers)
  return users, items + h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-6)


def loss_oracle(params, users, items, l2_reg, **kwargs):
  U, I = tables_oracle(params, **kwargs)
  u, p, n = U[users], I[items[:, 0]], I[items[:, 1]]
  bpr = np.mean(np.log1p(np.exp((u * n).sum(1) - (u * p).sum(1))))
  l2 = l2_reg * ((u * u).sum() + (p * p).sum() + (n * n).sum()) / (2 * len(users))
  return bpr, l2


# ---------------------------------------------------------------- model
def _model(k=K, lam=0.9, graph_every=1, item_layers=1, l2_reg=0.1, seed=0,
           knn_block=None):
  m = LATTICE(N_USERS, N_ITEMS, modalities=MODS, feature_dims=[DIMS[x] for x in MODS],
              train_pairs=PAIRS, gcn_layers=2, item_layers=item_layers, knn_k=k,
              mix_lambda=lam, graph_every=graph_every, embed_dim=D, l2_reg=l2_reg,
              knn_block=knn_block, seed=seed)
  rng = np.random.default_rng(seed + 7)
  m.user_embeddings.assign(rng.normal(size=(N_USERS, D)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(N_ITEMS, D)).astype(np.float32))
  m.modal_logits.assign(np.array([0.9, -0.4], np.float32))
  for x in MODS:
    m.projections[x].bias.assign(rng.normal(size=(D,)).astype(np.float32) * 0.3)
  m.set_item_features({x: rng.normal(size=(N_ITEMS, DIMS[x])).astype(np.float32)
                       for x in MODS})
  return m


def _params(m):
  p = {"users": _np(m.user_embeddings), "items": _np(m.item_embeddings),
       "modal_logits": _np(m.modal_logits)}
  for x in MODS:
    p[f"features_{x}"] = _np(m.feature_table(x))
    p[f"kernel_{x}"] = _np(m.projections[x].kernel)
    p[f"bias_{x}"] = _np(m.projections[x].bias)
  return p


def _dense(ids, weights, n=N_ITEMS):
  A = np.zeros((n, n))
  ids, weights = np.asarray(ids), np.asarray(weights, np.float64)
  for i in range(n):
    for j, w in zip(ids[i], weights[i]):
      A[i, j] += w
  return A


def test_knn_graph_by_hand_on_six_directions():
  # Unit vectors at 0, 10, 30, 90, 100 and 180 degrees, k = 2: each item
  # keeps itself (1) and its nearest other; item 5 (180) keeps item 4
  # (80 degrees away), item 2 keeps item 1 (20 degrees).
  deg = np.radians([0, 10, 30, 90, 100, 180])
  X = np.stack([np.cos(deg), np.sin(deg)], 1).astype(np.float32)
  ids, sims = lattice_lib.knn_graph(X, 2)
  np.testing.assert_array_equal(ids.numpy(), [[0, 1], [1, 0], [2, 1], [3, 4],
                                              [4, 3], [5, 4]])
  c10, c20, c80 = (math.cos(math.radians(a)) for a in (10, 20, 80))
  np.testing.assert_allclose(sims.numpy()[:, 1], [c10, c10, c20, c10, c10, c80],
                             rtol=1e-5)
  A = _dense(ids.numpy(), lattice_lib.normalize_knn(ids, sims).numpy())
  # Row sums of the kept similarities: 1 + cos 10 for items 0, 1, 3, 4.
  assert A[5, 4] == pytest.approx(c80 / math.sqrt((1 + c80) * (1 + c10)), rel=1e-5)
  assert A[2, 1] == pytest.approx(c20 / math.sqrt((1 + c20) * (1 + c10)), rel=1e-5)
  assert A[5, 5] == pytest.approx(1 / (1 + c80), rel=1e-5)
  assert A[1, 2] == 0.0  # not symmetric: 2 keeps 1, 1 does not keep 2
  np.testing.assert_allclose(A, knn_oracle(X, 2), rtol=1e-5, atol=1e-7)


def test_knn_graph_of_random_features_matches_the_oracle():
  rng = np.random.default_rng(0)
  X = rng.normal(size=(13, 4)).astype(np.float32)
  X[3] = 0.0  # a zero row: similarity 0 with everything, weight 0
  ids, sims = lattice_lib.knn_graph(X, 4)
  A = _dense(ids.numpy(), lattice_lib.normalize_knn(ids, sims).numpy(), 13)
  np.testing.assert_allclose(A, knn_oracle(X, 4), rtol=1e-5, atol=1e-6)
  assert not A[3].any()


@pytest.mark.parametrize("rows", [1, 4, 5, 13, 50])
def test_chunked_knn_equals_the_unchunked(rows):
  rng = np.random.default_rng(1)
  X = tf.constant(rng.normal(size=(13, 6)).astype(np.float32))
  want_ids, want_sims = lattice_lib.knn_graph(X, 5, block_rows=13)
  ids, sims = lattice_lib.knn_graph(X, 5, block_rows=rows)
  np.testing.assert_array_equal(ids.numpy(), want_ids.numpy())
  np.testing.assert_allclose(sims.numpy(), want_sims.numpy(), rtol=1e-6, atol=1e-7)
  # The gradients through the kept similarities agree too.
  g = []
  for r in (13, rows):
    with tf.GradientTape() as tape:
      tape.watch(X)
      _, s = lattice_lib.knn_graph(X, 5, block_rows=r)
      total = tf.reduce_sum(s * tf.range(5, dtype=tf.float32))
    g.append(tape.gradient(total, X).numpy())
  np.testing.assert_allclose(g[1], g[0], rtol=1e-5, atol=1e-6)
  # Without a gradient (the raw graphs): the same graph, the similarities
  # computed inside the blocks.
  ids, sims = lattice_lib.knn_graph(X, 5, block_rows=rows, differentiable=False)
  np.testing.assert_array_equal(ids.numpy(), want_ids.numpy())
  np.testing.assert_allclose(sims.numpy(), want_sims.numpy(), rtol=1e-6, atol=1e-7)


def test_knn_without_gradient_never_forms_the_kept_rows_of_every_item():
  # [n, k, f] (the kept neighbours' features of every row) stays inside
  # the loop's blocks when no gradient is needed.
  n, rows, f = 50, 8, 4
  shapes = {}
  for differentiable in (True, False):
    fn = tf.function(lambda x, d=differentiable: lattice_lib.knn_graph(
        x, 3, block_rows=rows, differentiable=d))
    graph = fn.get_concrete_function(tf.TensorSpec([n, f], tf.float32)).graph
    shapes[differentiable] = {tuple(t.shape.as_list()) for op in graph.get_operations()
                              for t in op.outputs if t.shape.rank is not None}
  assert (n, 3, f) in shapes[True]
  assert (n, 3, f) not in shapes[False] and (rows, 3, f) not in shapes[True]


def test_chunked_knn_never_forms_the_full_similarity_matrix():
  n, rows = 50, 8
  fn = tf.function(lambda x: lattice_lib.knn_graph(x, 3, block_rows=rows))
  graph = fn.get_concrete_function(tf.TensorSpec([n, 4], tf.float32)).graph
  shapes = [tuple(t.shape.as_list()) for op in graph.get_operations()
            for t in op.outputs if t.shape.rank is not None]
  types = {op.type for op in graph.get_operations()}
  assert (n, n) not in shapes
  # The products run inside the loop over blocks, none outside it.
  assert types & {"While", "StatelessWhile"} and "MatMul" not in types
  # The memory budget: 64 MiB of float32 similarities a block.
  assert lattice_lib.KNN_BUDGET_BYTES == 64 * 2 ** 20
  assert lattice_lib.knn_block_rows(2406) == 2406  # Office: one block
  assert lattice_lib.knn_block_rows(100_000) == 167
  assert 167 * 100_000 * 4 <= lattice_lib.KNN_BUDGET_BYTES < 168 * 100_000 * 4


def test_raw_and_learned_graphs_match_the_oracle():
  m = _model()
  p = _params(m)
  for j, x in enumerate(MODS):
    raw = _dense(*(v.numpy() for v in m.graph_variables("raw", x)))
    np.testing.assert_allclose(raw, knn_oracle(p[f"features_{x}"], K), rtol=1e-5,
                               atol=1e-6)
    ids, w = m.learned_graphs()[j]
    learned = _dense(ids.numpy(), w.numpy())
    np.testing.assert_allclose(
        learned, knn_oracle(p[f"features_{x}"] @ p[f"kernel_{x}"] + p[f"bias_{x}"], K),
        rtol=1e-5, atol=1e-6)
    assert not np.allclose(raw, learned)  # the projection changes the graph


@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("item_layers", [1, 2])
def test_mixing_fusion_and_item_convolution_match_the_oracle(lam, item_layers):
  m = _model(lam=lam, item_layers=item_layers)
  p = _params(m)
  A = fused_oracle(p, K, lam)
  h = p["items"]
  for _ in range(item_layers):
    h = A @ h
  np.testing.assert_allclose(m.item_convolution(m.learned_graphs()).numpy(), h,
                             rtol=1e-5, atol=1e-6)
  alpha = m.modal_weights().numpy()
  np.testing.assert_allclose(alpha, np.exp([0.9, -0.4]) / np.exp([0.9, -0.4]).sum(),
                             rtol=1e-6)
  # One entry by hand: A_00 = sum_m alpha_m ((1 - lam) L^m_00 + lam R^m_00).
  by_hand, w = 0.0, np.exp(p["modal_logits"]) / np.exp(p["modal_logits"]).sum()
  for j, x in enumerate(MODS):
    raw = knn_oracle(p[f"features_{x}"], K)[0, 0]
    learned = knn_oracle(p[f"features_{x}"] @ p[f"kernel_{x}"] + p[f"bias_{x}"], K)[0, 0]
    by_hand += w[j] * ((1 - lam) * learned + lam * raw)
  assert A[0, 0] == pytest.approx(by_hand, rel=1e-12)


def test_tables_scores_and_loss_match_the_oracle():
  m = _model(item_layers=2)
  p = _params(m)
  U, I = tables_oracle(p, item_layers=2)
  users, items = m.final_tables()
  np.testing.assert_allclose(users.numpy(), U, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(items.numpy(), I, rtol=1e-5, atol=1e-6)
  rng = np.random.default_rng(3)
  bu = rng.integers(0, N_USERS, 9).astype(np.int32)
  bi = rng.integers(0, N_ITEMS, (9, 2)).astype(np.int32)
  for training in (False, True):  # graph_every=1: the same graphs
    terms = m.loss_terms(tf.constant(bu), tf.constant(bi), training=training)
    bpr, l2 = loss_oracle(p, bu, bi, 0.1, item_layers=2)
    assert set(terms) == {"loss", "bpr_loss", "l2_loss"}
    assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-5)
    assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(bpr + l2, rel=1e-5)
  scores = m.score_pairs(tf.constant(bu), tf.constant(bi)).numpy()
  np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", U[bu], I[bi]),
                             rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences_of_the_oracle():
  m = _model(l2_reg=0.3, lam=0.6)
  rng = np.random.default_rng(4)
  bu = rng.integers(0, N_USERS, 8).astype(np.int32)
  bi = rng.integers(0, N_ITEMS, (8, 2)).astype(np.int32)
  named = {"users": m.user_embeddings, "items": m.item_embeddings,
           "modal_logits": m.modal_logits}
  for x in MODS:
    named.update({f"kernel_{x}": m.projections[x].kernel,
                  f"bias_{x}": m.projections[x].bias})
  assert len(named) == len(m.trainable_variables)
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(bu), tf.constant(bi), training=True)["loss"]
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
        want[idx] += sign * sum(loss_oracle(p, bu, bi, 0.3, lam=0.6))
    want /= 2 * eps
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5, err_msg=name)
    assert np.abs(want).max() > 1e-5, name  # every variable reaches the loss


def test_between_rebuilds_training_reads_the_stored_graph_without_gradient():
  m = _model(graph_every=3)
  rng = np.random.default_rng(5)
  bu = tf.constant(rng.integers(0, N_USERS, 8).astype(np.int32))
  bi = tf.constant(rng.integers(0, N_ITEMS, (8, 2)).astype(np.int32))
  old = _params(m)
  kernel = m.projections["text"].kernel
  kernel.assign(kernel * -2.0 + 0.5)  # a different learned graph
  new = _params(m)
  A_old = fused_oracle(dict(new, kernel_text=old["kernel_text"]), K, 0.9)
  m.weights_version.assign(1)  # not a rebuild step: the stored graphs
  with tf.GradientTape() as tape:
    terms = m.loss_terms(bu, bi, training=True)
  g = tape.gradient(terms["loss"], [kernel, m.modal_logits])
  assert g[0] is None or not np.any(_np(tf.convert_to_tensor(g[0])))
  assert np.abs(_np(tf.convert_to_tensor(g[1]))).max() > 0  # alpha every step
  bpr, _ = loss_oracle(new, bu.numpy(), bi.numpy(), 0.1, A=A_old)
  assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-5)
  # Evaluation rebuilds from the current weights.
  evaluation = m.loss_terms(bu, bi, training=False)
  bpr_new, _ = loss_oracle(new, bu.numpy(), bi.numpy(), 0.1)
  assert float(evaluation["bpr_loss"]) == pytest.approx(bpr_new, rel=1e-5)
  assert abs(bpr_new - bpr) > 1e-4
  # A rebuild step (3) builds afresh, stores, and the gradient reaches W.
  m.weights_version.assign(3)
  with tf.GradientTape() as tape:
    terms = m.loss_terms(bu, bi, training=True)
  g = tape.gradient(terms["loss"], kernel)
  assert np.abs(_np(tf.convert_to_tensor(g))).max() > 0
  assert float(terms["bpr_loss"]) == pytest.approx(bpr_new, rel=1e-5)
  ids, w = (v.numpy() for v in m.graph_variables("learned", "text"))
  np.testing.assert_allclose(
      _dense(ids, w), knn_oracle(new["features_text"] @ new["kernel_text"]
                                 + new["bias_text"], K), rtol=1e-5, atol=1e-6)


def test_xla_train_steps_rebuild_the_learned_graph_on_schedule():
  # Blocks of 4 rows: the chunked kNN (a loop) inside the XLA-compiled step.
  m = _model(graph_every=3, l2_reg=1e-3, knn_block=4)
  m.compile(optimizer=keras.optimizers.Adam(5e-2), jit_compile=True)
  rng = np.random.default_rng(6)
  batch = (tf.constant(rng.integers(0, N_USERS, 16).astype(np.int32)),
           tf.constant(rng.integers(0, N_ITEMS, (16, 2)).astype(np.int32)))
  step = tf.function(m.train_step, jit_compile=True)
  first = float(m.loss_terms(*batch)["loss"])
  stored, kernels = [], []
  for _ in range(7):
    kernels.append((_np(m.projections["text"].kernel), _np(m.projections["text"].bias)))
    step(batch)
    stored.append(tuple(v.numpy().copy() for v in m.graph_variables("learned", "text")))
  assert int(m.weights_version) == 7
  # Rebuilt at steps 0, 3 and 6, each from the kernel W had at that step;
  # kept unchanged on the steps between.
  for a, b in ((1, 0), (2, 0), (4, 3), (5, 3)):
    np.testing.assert_array_equal(stored[a][1], stored[b][1])
  p = _params(m)
  for s in (0, 3, 6):
    want = knn_oracle(p["features_text"] @ kernels[s][0] + kernels[s][1], K)
    np.testing.assert_allclose(_dense(*stored[s]), want, rtol=1e-4, atol=1e-6)
  assert not np.allclose(_dense(*stored[3]), _dense(*stored[0]))
  assert float(m.loss_terms(*batch)["loss"]) < first


def test_a_modalitys_scale_does_not_reach_the_graphs_at_a_zero_bias():
  """Issue 22 item 8 (one modality's features 10x another's): LATTICE uses
  the features only through kNN graphs of cosine similarity, of x^m (raw)
  and of W_m x^m + b_m (learned), so with b_m = 0 (its initial value) x^m
  x10 or x0.1 gives the same graphs and tables; a trained bias lets the
  scale in (the learned graph's similarities move)."""
  m = _model()
  features = check_tables_ignore_a_modalitys_scale(m, "text")
  m.projections["text"].bias.assign(tf.fill([D], 0.5))
  m.set_item_features(features)
  biased = [(i.numpy(), w.numpy()) for i, w in m.learned_graphs()][0]
  m.set_item_features(dict(features, text=features["text"] * 10.0))
  scaled = [(i.numpy(), w.numpy()) for i, w in m.learned_graphs()][0]
  assert (not np.array_equal(scaled[0], biased[0])
          or np.abs(scaled[1] - biased[1]).max() > 1e-3)


def test_the_served_tables_equal_the_evaluations_scores():
  m = _model(graph_every=1000)
  m.compile(optimizer=keras.optimizers.Adam(5e-2))
  rng = np.random.default_rng(8)
  batch = (tf.constant(rng.integers(0, N_USERS, 16).astype(np.int32)),
           tf.constant(rng.integers(0, N_ITEMS, (16, 2)).astype(np.int32)))
  for _ in range(3):  # W moved, the stored training graph is stale
    m.train_step(batch)
  _, served = check_served_tables(m, PAIRS, N_USERS, N_ITEMS)
  U, I = tables_oracle(_params(m))  # rebuilt from the current weights
  np.testing.assert_allclose(served, U @ I.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.item_representation().numpy(), I, rtol=1e-5, atol=1e-6)


def test_config_round_trip_needs_the_edges_again():
  m = _model(graph_every=4, lam=0.8, knn_block=2)
  config = m.get_config()
  assert (config["knn_k"], config["mix_lambda"], config["graph_every"],
          config["knn_block"]) == (K, 0.8, 4, 2)
  assert "train_pairs" not in config
  restored = check_round_trip_needs_the_edges(m, PAIRS)
  assert isinstance(restored, LATTICE) and restored.mix_lambda == 0.8


@pytest.mark.parametrize("kwargs,message", [
    (dict(modalities=(), feature_dims=()),
     r"`modalities` must name at least one content modality"),
    (dict(feature_dims=(3,)), r"`feature_dims` must give one size >= 1 per modality"),
    (dict(knn_k=0), r"`knn_k` must be an integer >= 1. Received: knn_k=0"),
    (dict(knn_k=7), r"`knn_k` must be <= n_items \(6\). Received: knn_k=7"),
    (dict(mix_lambda=1.5), r"`mix_lambda` must be in \[0, 1\]. Received: mix_lambda=1.5"),
    (dict(item_layers=0), r"`item_layers` must be an integer >= 1. Received: item_layers=0"),
    (dict(graph_every=0), r"`graph_every` must be an integer >= 1. Received: graph_every=0"),
    (dict(knn_block=0), r"`knn_block` must be an integer >= 1. Received: knn_block=0"),
    (dict(gcn_layers=0), r"`gcn_layers` must be an integer >= 1. Received: gcn_layers=0"),
    (dict(l2_reg=-1), r"`l2_reg` must be >= 0. Received: l2_reg=-1"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
  args = dict(modalities=MODS, feature_dims=(3, 5), train_pairs=PAIRS, knn_k=K)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    LATTICE(N_USERS, N_ITEMS, **args)


@pytest.mark.parametrize("flag,value,message", [
    ("lattice_knn_k", 0, "`--lattice_knn_k` must be >= 1. Received: 0"),
    ("lattice_lambda", 1.5, "`--lattice_lambda` must be <= 1. Received: 1.5"),
    ("lattice_lambda", -0.1, "`--lattice_lambda` must be >= 0. Received: -0.1"),
    ("lattice_item_layers", 0, "`--lattice_item_layers` must be >= 1. Received: 0"),
    ("lattice_graph_every", -1, "`--lattice_graph_every` must be >= 0. Received: -1"),
])
def test_each_new_flag_has_a_one_line_error(flag, value, message):
  with pytest.raises(UsageError) as e:
    Config(model="lattice", num_neg=1, **{flag: value}).validate()
  assert str(e.value) == message


def test_run_config_errors_and_the_per_pass_schedule():
  with pytest.raises(UsageError, match="`--num_neg` must be 1 with --model=lattice"):
    Config(model="lattice", num_neg=4).validate()
  ds = export_dataset(False, 0.0, seed=0)
  with pytest.raises(UsageError, match=r"^`--modalities` must name at least one "
                     r"content modality with --model=lattice .*Received: ''$"):
    LATTICE.from_run_config(Config(model="lattice", num_neg=1, modalities=()), ds)
  ds = export_dataset(True, 0.0, seed=0)
  with pytest.raises(UsageError, match=r"^`--lattice_knn_k` must be <= the number "
                     r"of items \(30\). Received: 31$"):
    LATTICE.from_run_config(Config(model="lattice", num_neg=1, lattice_knn_k=31), ds)
  m = LATTICE.from_run_config(Config(model="lattice", num_neg=1, batch_size=7,
                                     embed_dim=4, lattice_knn_k=5), ds)
  assert m.graph_every == math.ceil(len(ds.train) / 7) and m.knn_k == 5


def _dataset(seed=3):
  ds = export_dataset(True, 0.2, seed=seed)
  rng = np.random.default_rng(seed)
  feats = dict(ds.features, text=rng.normal(size=(ds.n_items, 5)).astype(np.float32))
  return data_lib.from_arrays(ds.train, ds.test, features=feats, n_users=ds.n_users,
                              n_items=ds.n_items)


def test_export_bakes_the_final_tables_in(tmp_path):
  ds = _dataset()
  m = LATTICE(ds.n_users, ds.n_items, modalities=ds.modalities,
              feature_dims=[ds.features[x].shape[1] for x in ds.modalities],
              train_pairs=ds.train, knn_k=4, embed_dim=6, seed=0)
  m.set_item_features(dict(ds.features))
  rng = np.random.default_rng(2)
  m.user_embeddings.assign(rng.normal(size=(ds.n_users, 6)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(ds.n_items, 6)).astype(np.float32))
  out = check_export(m, ds, tmp_path, "lattice")
  info = export_lib.load_info(out["path"])
  assert info["model"] == "lattice" and info["knn_k"] == 4
  assert info["modalities"] == list(ds.modalities)


def test_lattice_from_the_cli_trains_and_exports(tmp_path):
  summary, workdir, path = check_cli_export(tmp_path, "lattice", [
      "--num_neg=1", "--lattice_knn_k=5", "--lattice_lambda=0.8",
      "--lattice_graph_every=0", "--gcn_layers=2", "--embed_dim=8",
      "--l2_reg=1e-4", "--batch_size=16", "--learning_rate=0.01"])
  assert summary["rounds"] == 2
  assert summary["modalities"] == ["meta"]
  assert set(summary["last"]["train"]) >= {"loss", "bpr_loss", "l2_loss"}
  assert "--lattice_knn_k=5" in (workdir / "flags.txt").read_text()
  info = export_info(path)
  # 24 users x 4 train pairs at batch 16: a pass is 6 steps.
  assert info["model"] == "lattice" and info["graph_every"] == 6
  assert info["mix_lambda"] == 0.8 and info["knn_k"] == 5
  check_served_top_k(path)


def test_the_office_flagfile_parses_and_validates():
  c = office_config("lattice")
  # The authors' code's defaults.
  assert (c.embed_dim, c.gcn_layers, c.lattice_knn_k, c.lattice_lambda,
          c.lattice_item_layers, c.lattice_graph_every) == (64, 2, 10, 0.9, 1, 0)
  assert (c.learning_rate, c.batch_size, c.l2_reg, c.num_neg) == (5e-4, 1024, 1e-5, 1)
  assert c.modalities == ("text", "meta")
