"""LightGCN: A_hat on a hand-built graph, propagation and the loss and its
gradient against the numpy oracle, the per-evaluation cache of the
propagated tables, the XLA-compiled train step, the config round trip, the
CLI end to end and the export in an isolated process."""

import json

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.evaluate import full_ranking
from maml_tf.evaluate import metrics as metrics_lib
from maml_tf.models import lightgcn as lgcn
from maml_tf.models.lightgcn import LightGCN
from tests import oracles
from tests.helpers import check_export, check_round_trip_needs_the_edges, export_dataset

# 2 users, 3 items: u0-i0, u0-i1, u1-i1, u1-i2 (u0-i1 given twice).
PAIRS = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [0, 1]])
S2 = 1.0 / np.sqrt(2.0)
# Degrees: u0 2, u1 2, i0 1, i1 2, i2 1; nodes u0, u1, i0, i1, i2.
A_HAT_BY_HAND = np.array([
    [0.0, 0.0, S2, 0.5, 0.0],
    [0.0, 0.0, 0.0, 0.5, S2],
    [S2, 0.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.0, 0.0, 0.0],
    [0.0, S2, 0.0, 0.0, 0.0],
])


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def test_normalized_adjacency_of_a_hand_built_graph():
  adj = lgcn.normalized_adjacency(PAIRS, 2, 3)
  np.testing.assert_allclose(tf.sparse.to_dense(adj).numpy(), A_HAT_BY_HAND, rtol=1e-6)
  np.testing.assert_allclose(oracles.lightgcn_adjacency(PAIRS, 2, 3), A_HAT_BY_HAND,
                             rtol=1e-12)
  assert adj.indices.shape[0] == 8  # the duplicate pair counted once


def test_sparse_product_equals_sparse_dense_matmul():
  rng = np.random.default_rng(0)
  pairs = np.stack([rng.integers(0, 6, 25), rng.integers(0, 8, 25)], 1)
  adj = lgcn.normalized_adjacency(pairs, 6, 8)
  x = tf.constant(rng.normal(size=(14, 5)).astype(np.float32))
  np.testing.assert_allclose(lgcn.sparse_product(adj, x).numpy(),
                             tf.sparse.sparse_dense_matmul(adj, x).numpy(),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("budget_entries", [1, 7, 20])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("own_values", [True, False])
def test_blocked_sparse_product_and_its_gradient_match_numpy(monkeypatch,
                                                              budget_entries, jit,
                                                              own_values):
  # A rectangular A [5, 9] with unsorted entries: the blocked path (a loop
  # over blocks of `budget_entries` entries, a custom gradient with A's
  # transpose) against the dense product and its gradient in numpy; with A's
  # own values, or with others passed as `values` (node dropout's), inside
  # the traced function too.
  rng = np.random.default_rng(1)
  d = 3
  monkeypatch.setattr(lgcn, "PRODUCT_CHUNK_BYTES", 4 * d * budget_entries)
  blocked_calls = []
  blocked_product = lgcn._blocked_product
  monkeypatch.setattr(lgcn, "_blocked_product", lambda *a: blocked_calls.append(1)
                      or blocked_product(*a))
  cells = rng.choice(45, size=23, replace=False)
  rows, cols = np.divmod(cells, 9)
  values = rng.normal(size=23).astype(np.float32)
  adj = tf.sparse.SparseTensor(np.stack([rows, cols], 1), values, [5, 9])
  other = rng.normal(size=23).astype(np.float32)
  dense = np.zeros((5, 9))
  dense[rows, cols] = values if own_values else other
  assert lgcn._block_plan(adj, d) is not None
  x = tf.Variable(rng.normal(size=(9, d)).astype(np.float32))
  weights = rng.normal(size=(5, d))

  def loss():
    if own_values:
      return tf.reduce_sum(tf.square(lgcn.sparse_product(adj, x)) * weights)
    y = lgcn.sparse_product(adj, x, tf.identity(tf.constant(other)))
    return tf.reduce_sum(tf.square(y) * weights)

  def value_and_grad():
    with tf.GradientTape() as tape:
      value = loss()
    return value, tf.convert_to_tensor(tape.gradient(value, x))

  if jit:
    value_and_grad = tf.function(value_and_grad, jit_compile=True)
  value, grad = value_and_grad()
  y = dense @ x.numpy()
  assert float(value) == pytest.approx(np.sum(y * y * weights), rel=1e-5)
  np.testing.assert_allclose(grad.numpy(), dense.T @ (2 * y * weights),
                             rtol=1e-5, atol=1e-5)
  assert blocked_calls  # the loss went through the blocks, traced or not
  if own_values:
    np.testing.assert_allclose(lgcn.sparse_product(adj, x).numpy(), y,
                               rtol=1e-5, atol=1e-6)


def test_a_graph_under_the_budget_takes_the_one_block_path():
  adj = lgcn.normalized_adjacency(PAIRS, 2, 3)
  assert lgcn._block_plan(adj, 4) is None  # 8 entries x 4 floats << 64 MB


def test_lightgcn_trains_the_same_in_blocks(monkeypatch):
  # Ten XLA-compiled steps with the graph in blocks of 5 entries and in one
  # block end at the same tables.
  finals = []
  for budget in (lgcn.PRODUCT_CHUNK_BYTES, 4 * 4 * 5):
    monkeypatch.setattr(lgcn, "PRODUCT_CHUNK_BYTES", budget)
    m, step, users, items = _compiled_step()
    for _ in range(10):
      step((users, items))
    finals.append([v.numpy() for v in m.trainable_variables])
  assert lgcn._block_plan(m.adjacency, 4) is not None
  for one, blocked in zip(*finals):
    np.testing.assert_allclose(blocked, one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_propagation_matches_the_hand_built_graph(layers):
  m = LightGCN(2, 3, train_pairs=PAIRS, gcn_layers=layers, embed_dim=4, seed=0)
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  users, items = m.final_tables()
  want_u, want_i = oracles.lightgcn_propagate(A_HAT_BY_HAND, P, Q, layers)
  np.testing.assert_allclose(users.numpy(), want_u, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(items.numpy(), want_i, rtol=1e-5, atol=1e-7)
  # One layer by hand: item 0's only neighbour is u0 (weight 1/sqrt 2).
  if layers == 1:
    np.testing.assert_allclose(items.numpy()[0], (Q[0] + S2 * P[0]) / 2, rtol=1e-5)


def _random_model(n_users=6, n_items=8, layers=2, l2_reg=0.2, seed=0):
  rng = np.random.default_rng(seed)
  pairs = np.stack([rng.integers(0, n_users, 30), rng.integers(0, n_items, 30)], 1)
  m = LightGCN(n_users, n_items, train_pairs=pairs, gcn_layers=layers,
               embed_dim=4, l2_reg=l2_reg, seed=seed)
  m.user_embeddings.assign(rng.normal(size=(n_users, 4)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(n_items, 4)).astype(np.float32))
  return m, pairs


def test_loss_and_gradient_match_the_oracle():
  m, pairs = _random_model()
  rng = np.random.default_rng(3)
  users = rng.integers(0, 6, 10).astype(np.int32)
  items = rng.integers(0, 8, (10, 2)).astype(np.int32)
  with tf.GradientTape() as tape:
    terms = m.loss_terms(tf.constant(users), tf.constant(items))
  gP, gQ = tape.gradient(terms["loss"], [m.user_embeddings, m.item_embeddings])
  A = oracles.lightgcn_adjacency(pairs, 6, 8)
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  Pf, Qf = oracles.lightgcn_propagate(A, P, Q, 2)
  # BPR on the propagated tables; L2 on the ego rows.
  bpr, _, gPf, gQf = oracles.mf_loss_and_grads(Pf, Qf, users, items[:, 0],
                                               items[:, 1], 0.0)
  l2 = oracles.batch_l2(P, Q, users, items[:, 0], items[:, 1], 0.2)
  assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-5)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  # Chain rule through the mean of the layers (A_hat symmetric):
  # dL/dE0 = sum_l A^l dL/dE / (L + 1), plus the L2's lambda E0_row / B.
  G = np.concatenate([gPf, gQf])
  G0, x = G.copy(), G
  for _ in range(2):
    x = A @ x
    G0 = G0 + x
  G0 = G0 / 3.0
  _, _, lP, lQ = oracles.mf_loss_and_grads(P, Q, users, items[:, 0], items[:, 1], 0.2)
  _, _, bP, bQ = oracles.mf_loss_and_grads(P, Q, users, items[:, 0], items[:, 1], 0.0)
  G0 = G0 + np.concatenate([lP - bP, lQ - bQ])  # the L2 part alone
  np.testing.assert_allclose(_np(tf.convert_to_tensor(gP)), G0[:6], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_np(tf.convert_to_tensor(gQ)), G0[6:], rtol=1e-4, atol=1e-6)


def test_score_items_reads_the_cache_that_prepare_scoring_refreshes():
  m, pairs = _random_model()
  users = tf.constant([0, 2, 5], tf.int32)
  A = oracles.lightgcn_adjacency(pairs, 6, 8)

  def oracle_scores():
    Pf, Qf = oracles.lightgcn_propagate(A, _np(m.user_embeddings),
                                        _np(m.item_embeddings), 2)
    return Pf[[0, 2, 5]] @ Qf.T

  m.prepare_scoring()
  np.testing.assert_allclose(m.score_items(users).numpy(), oracle_scores(),
                             rtol=1e-5, atol=1e-6)
  stale = m.score_items(users).numpy()
  m.item_embeddings.assign(m.item_embeddings * 2.0)
  np.testing.assert_allclose(m.score_items(users).numpy(), stale)  # the cache
  # The evaluator refreshes it before ranking.
  evaluator = full_ranking.Evaluator(m, pairs, np.array([[0, 3], [2, 4], [5, 1]]),
                                 ks=(3,), jit_compile=True)
  top = evaluator.top_k()
  fresh = oracle_scores()
  np.testing.assert_allclose(m.score_items(users).numpy(), fresh, rtol=1e-5, atol=1e-6)
  known = [np.unique(pairs[pairs[:, 0] == u, 1]) for u in (0, 2, 5)]
  np.testing.assert_array_equal(top, metrics_lib.top_k_excluding(fresh, known, 3))
  # score_pairs propagates afresh, whatever the cache holds.
  got = m.score_pairs(users, tf.constant([[1, 2]] * 3, tf.int32)).numpy()
  np.testing.assert_allclose(got, fresh[:, 1:3], rtol=1e-5, atol=1e-6)


def _compiled_step():
  """(model, its XLA-compiled train step, a fixed batch's users and items)."""
  m, _ = _random_model(l2_reg=1e-3)
  m.compile(optimizer=keras.optimizers.Adam(5e-2), jit_compile=True)
  rng = np.random.default_rng(4)
  users = tf.constant(rng.integers(0, 6, 16).astype(np.int32))
  items = tf.constant(rng.integers(0, 8, (16, 2)).astype(np.int32))
  return m, tf.function(m.train_step, jit_compile=True), users, items


def test_xla_compiled_train_step_runs_and_lowers_the_loss():
  m, step, users, items = _compiled_step()
  first = float(m.loss_terms(users, items)["loss"])
  for _ in range(20):
    logs = step((users, items))
  assert set(logs) == {"loss", "bpr_loss", "l2_loss"}
  assert float(m.loss_terms(users, items)["loss"]) < first
  # The train steps made the cache stale: the compiled score_items
  # recomputes it (no prepare_scoring call), then reads it.
  score = tf.function(m.score_items, jit_compile=True)
  want = m.serve_items(m.serving_tables(), tf.range(6)).numpy()
  np.testing.assert_allclose(score(tf.range(6)).numpy(), want, rtol=1e-5, atol=1e-6)
  assert int(m.cache_version) == int(m.weights_version) == 20
  np.testing.assert_allclose(m.scoring_items.numpy(), m.final_tables()[1].numpy(),
                             rtol=1e-6)


def test_config_round_trip_needs_the_edges_again():
  m, pairs = _random_model()
  config = m.get_config()
  assert config["gcn_layers"] == 2 and "train_pairs" not in config
  check_round_trip_needs_the_edges(m, pairs)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_gcn_layers_are_refused(value):
  with pytest.raises(ValueError, match=r"`gcn_layers` must be an integer >= 1. "
                     r"Received: gcn_layers="):
    LightGCN(2, 3, train_pairs=PAIRS, gcn_layers=value)


def test_export_bakes_the_propagated_tables_in(tmp_path):
  ds = export_dataset(False, 0.2, seed=1)
  m = LightGCN(ds.n_users, ds.n_items, train_pairs=ds.train, gcn_layers=2,
               embed_dim=8, seed=0)
  rng = np.random.default_rng(2)
  m.user_embeddings.assign(rng.normal(size=(ds.n_users, 8)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(ds.n_items, 8)).astype(np.float32))
  tables = m.serving_tables()
  np.testing.assert_allclose(tables["items"].numpy(), m.final_tables()[1].numpy())
  assert not np.allclose(tables["items"].numpy(), _np(m.item_embeddings))
  out = check_export(m, ds, tmp_path, "lightgcn")
  assert export_lib.load_info(out["path"])["gcn_layers"] == 2


def test_lightgcn_from_the_cli_trains_and_exports(tmp_path):
  from tests.helpers import run_in_process, write_release_layout
  data = tmp_path / "data"
  write_release_layout(str(data))
  workdir = tmp_path / "run"
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}", "--model=lightgcn",
      "--num_neg=1", "--gcn_layers=2", "--embed_dim=8", "--batch_size=16",
      "--learning_rate=0.01", "--train_steps=6", "--eva_batches=3",
      "--notensorboard", f"--export_dir={tmp_path / 'exports'}",
      f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["finished"] is True and summary["rounds"] == 2
  path = tmp_path / "exports" / "lightgcn_custom" / "1"
  info = json.loads((path / "assets.extra" / "export_info.json").read_text())
  assert info["model"] == "lightgcn" and info["gcn_layers"] == 2


def test_table_bpr_reads_a_node_table_as_its_two_tables():
  # One [users + items, w] node table read at the items' offset: the same
  # loss, rows and gradient as the two tables sliced from it.
  m = LightGCN(2, 3, train_pairs=PAIRS, gcn_layers=1, embed_dim=4, seed=0)
  nodes = tf.Variable(np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32))
  users, items = tf.constant([0, 1, 1]), tf.constant([[0, 2], [1, 0], [2, 1]])
  results = []
  for split in (True, False):
    with tf.GradientTape() as tape:
      tables = (nodes[:2], nodes[2:]) if split else nodes
      bpr, rows = m.table_bpr(tables, users, items)
    results.append((float(bpr), [r.numpy() for r in rows],
                    tf.convert_to_tensor(tape.gradient(bpr, nodes)).numpy()))
  (bpr_a, rows_a, grad_a), (bpr_b, rows_b, grad_b) = results
  assert bpr_b == pytest.approx(bpr_a, rel=1e-6)
  for a, b in zip(rows_a, rows_b):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(grad_b, grad_a, rtol=1e-6, atol=1e-7)
  assert np.abs(grad_a).sum() > 0
