"""NGCF: one propagation layer and the whole model (scores, BPR, L2) against
a numpy oracle written node by node from the paper's message form on a
hand-built graph (4 users, 5 items); gradients against finite differences of
that oracle; node and message dropout (training only; evaluation is
deterministic); the served tables equal the evaluation's scores; the config
round trip; one-line errors; the CLI end to end with export; the committed
Office flagfile."""

from maml_tf.export import saved_model as export_lib  # noqa: F401  first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.config import Config
from maml_tf.errors import UsageError
from maml_tf.models import ngcf as ngcf_lib
from maml_tf.models.ngcf import NGCF
from tests.helpers import (HAND_NEIGHBOURS, HAND_PAIRS, check_cli_export,
                           check_round_trip_needs_the_edges, check_served_top_k,
                           check_xla_train_steps, export_info, office_config)

N_USERS, N_ITEMS, D = 4, 5, 4
SIZES = (3, 2)
PAIRS, NEIGHBOURS_BY_HAND = HAND_PAIRS, HAND_NEIGHBOURS
SLOPE = 0.2


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


# ------------------------------------------------------------ the oracle


def leaky(x):
  return np.where(x > 0, x, SLOPE * x)


def laplacian_weight(a, b):
  """p_ab = 1 / sqrt(|N_a| |N_b|) (the paper's eq. 3 decay factor)."""
  return 1.0 / np.sqrt(len(NEIGHBOURS_BY_HAND[a]) * len(NEIGHBOURS_BY_HAND[b]))


def oracle_layer(E, W1, b1, W2, b2):
  """One layer in the paper's message form (eq. 3-4), node by node: the
  self-message W1 e_n, plus for every neighbour j the message
  p_nj (W1 e_j + W2 (e_j * e_n)); the biases once; LeakyReLU(0.2)."""
  out = []
  for n in range(len(E)):
    total = E[n] @ W1
    for j in NEIGHBOURS_BY_HAND[n]:
      total = total + laplacian_weight(n, j) * (E[j] @ W1 + (E[j] * E[n]) @ W2)
    out.append(leaky(total + b1.reshape(-1) + b2.reshape(-1)))
  return np.array(out)


def oracle_tables(E0, weights):
  """[E0, l2norm(E1), ...] split into (users, items)."""
  parts, x = [E0], E0
  for W1, b1, W2, b2 in weights:
    x = oracle_layer(x, W1, b1, W2, b2)
    parts.append(x / np.linalg.norm(x, axis=1, keepdims=True))
  final = np.concatenate(parts, 1)
  return final[:N_USERS], final[N_USERS:]


def oracle_loss(E0, weights, users, pos, neg, l2_reg):
  """(bpr, l2): mean -ln sigmoid(r_ui - r_uj); l2_reg sum ||ego row||^2 / 2B."""
  U, I = oracle_tables(E0, weights)
  diff = np.sum(U[users] * I[pos], 1) - np.sum(U[users] * I[neg], 1)
  bpr = float(np.mean(np.log1p(np.exp(-diff))))
  rows = [E0[users], E0[N_USERS + pos], E0[N_USERS + neg]]
  l2 = l2_reg * sum(float(np.sum(r * r)) for r in rows) / (2 * len(users))
  return bpr, l2


# ------------------------------------------------------------ the model


def _weights(m):
  p = m.propagation
  return [(_np(p.sum_kernels[k]), _np(p.sum_biases[k]), _np(p.bi_kernels[k]),
           _np(p.bi_biases[k])) for k in range(len(p.layer_sizes))]


def _ego(m):
  return np.concatenate([_np(m.user_embeddings), _np(m.item_embeddings)])


def _model(sizes=SIZES, node_dropout=0.0, message_dropout=0.0, l2_reg=0.3, seed=0):
  m = NGCF(N_USERS, N_ITEMS, train_pairs=PAIRS, layer_sizes=sizes,
           node_dropout=node_dropout, message_dropout=message_dropout,
           embed_dim=D, l2_reg=l2_reg, seed=seed)
  # Rows and weights large enough that LeakyReLU's two sides and the
  # sigmoids' curvature all matter.
  rng = np.random.default_rng(seed + 3)
  for v in [m.user_embeddings, m.item_embeddings] + list(m.propagation.weights):
    v.assign(rng.normal(size=v.shape).astype(np.float32))
  m.prepare_scoring()
  return m


def _batch(seed=1, b=10):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, N_USERS, b).astype(np.int32),
          rng.integers(0, N_ITEMS, (b, 2)).astype(np.int32))


def test_the_graph_is_the_hand_built_one():
  m = _model()
  L = tf.sparse.to_dense(m.adjacency).numpy()
  for n, neighbours in NEIGHBOURS_BY_HAND.items():
    for j in range(N_USERS + N_ITEMS):
      want = laplacian_weight(n, j) if j in neighbours else 0.0
      assert L[n, j] == pytest.approx(want, rel=1e-6)
  assert L[0, 5] == pytest.approx(0.5)  # u0 (2 items), i1 (2 users)
  assert L[3, 8] == pytest.approx(1.0)  # u3 and i4 only know each other


def test_one_layer_matches_the_message_form_oracle():
  m = _model(sizes=(3,))
  E0 = _ego(m)
  (W1, b1, W2, b2), = _weights(m)
  got = m.propagation.layer(0, m.adjacency, tf.constant(E0, tf.float32)).numpy()
  want = oracle_layer(E0, W1, b1, W2, b2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert (want < 0).any() and (want > 0).any()  # both LeakyReLU sides
  # Item 4 (node 8) by hand: its only neighbour is u3, weight 1.
  e, u = E0[8], E0[3]
  by_hand = leaky(e @ W1 + (u @ W1 + (u * e) @ W2) + b1[0] + b2[0])
  np.testing.assert_allclose(got[8], by_hand, rtol=1e-5, atol=1e-5)


def test_final_tables_scores_and_loss_match_the_oracle():
  m = _model()
  U, I = oracle_tables(_ego(m), _weights(m))
  users_t, items_t = m.final_tables()
  assert users_t.shape == (N_USERS, D + sum(SIZES)) == (N_USERS, m.score_width)
  np.testing.assert_allclose(users_t.numpy(), U, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(items_t.numpy(), I, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.score_items(tf.range(N_USERS)).numpy(), U @ I.T,
                             rtol=1e-4, atol=1e-4)
  users, items = _batch()
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  bpr, l2 = oracle_loss(_ego(m), _weights(m), users, items[:, 0], items[:, 1], 0.3)
  assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-4)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  assert float(terms["loss"]) == pytest.approx(bpr + l2, rel=1e-4)
  got = m.score_pairs(tf.constant(users), tf.constant(items)).numpy()
  np.testing.assert_allclose(got, np.einsum("bd,bnd->bn", U[users], I[items]),
                             rtol=1e-4, atol=1e-4)


def test_gradients_match_finite_differences_of_the_oracle():
  m = _model(l2_reg=0.3)
  for v in m.trainable_variables:  # smaller values: a smoother loss
    v.assign(v * 0.5)
  users, items = _batch(b=8)
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  variables = m.trainable_variables
  grads = tape.gradient(loss, variables)
  values = [_np(v) for v in variables]
  n_weights = 4 * len(SIZES)

  def oracle(vals):
    E0 = np.concatenate(vals[:2])
    w = [tuple(vals[2 + 4 * k: 6 + 4 * k]) for k in range(len(SIZES))]
    return sum(oracle_loss(E0, w, users, items[:, 0], items[:, 1], 0.3))

  assert len(values) == 2 + n_weights
  eps = 1e-6
  for k, (g, v) in enumerate(zip(grads, values)):
    fd = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
      up = [x.copy() for x in values]
      down = [x.copy() for x in values]
      up[k][idx] += eps
      down[k][idx] -= eps
      fd[idx] = (oracle(up) - oracle(down)) / (2 * eps)
    np.testing.assert_allclose(_np(tf.convert_to_tensor(g)), fd, rtol=2e-3,
                               atol=2e-5, err_msg=variables[k].path)
    assert np.abs(fd).max() > 1e-4 or k < 2  # every weight gets a gradient


def test_dropout_acts_in_training_only_and_evaluation_is_deterministic():
  m = _model(node_dropout=0.4, message_dropout=0.3)
  eval_a = [t.numpy() for t in m.final_tables()]
  eval_b = [t.numpy() for t in m.final_tables(training=False)]
  np.testing.assert_array_equal(eval_a[0], eval_b[0])
  np.testing.assert_array_equal(eval_a[1], eval_b[1])
  # Evaluation and the served tables are the oracle's (no dropout).
  U, I = oracle_tables(_ego(m), _weights(m))
  np.testing.assert_allclose(eval_a[1], I, rtol=1e-5, atol=1e-5)
  first = m.score_items(tf.range(N_USERS)).numpy()
  np.testing.assert_array_equal(first, m.score_items(tf.range(N_USERS)).numpy())
  train_a = m.final_tables(training=True)[1].numpy()
  train_b = m.final_tables(training=True)[1].numpy()
  assert not np.allclose(train_a, eval_a[1]) and not np.allclose(train_a, train_b)
  # E^0 is never dropped: the first D columns stay the ego table.
  np.testing.assert_array_equal(train_a[:, :D], eval_a[1][:, :D])
  # Zero rates: training equals evaluation.
  plain = _model(node_dropout=0.0, message_dropout=0.0)
  np.testing.assert_allclose(plain.final_tables(training=True)[1].numpy(),
                             plain.final_tables()[1].numpy(), rtol=1e-6)


def test_node_dropout_drops_entries_of_the_adjacency_and_rescales_the_rest():
  rng = np.random.default_rng(0)
  pairs = np.stack([rng.integers(0, 60, 2000), rng.integers(0, 80, 2000)], 1)
  layer = ngcf_lib.BiInteractionPropagation(4, (4,), node_dropout=0.25,
                                            message_dropout=0.0, seed=1)
  layer.build()
  from maml_tf.models import lightgcn
  adj = lightgcn.normalized_adjacency(pairs, 60, 80)
  before = adj.values.numpy()
  after = layer.dropped_values(adj).numpy()
  dropped = after == 0
  np.testing.assert_allclose(after[~dropped], before[~dropped] / 0.75, rtol=1e-6)
  assert dropped.mean() == pytest.approx(0.25, abs=0.03)
  # Message dropout: each entry 0 or x / (1 - p).
  x = tf.ones((200, 50))
  out = ngcf_lib.inverted_dropout(x, 0.3, keras.random.SeedGenerator(2)).numpy()
  np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.7], rtol=1e-6)
  assert (out == 0).mean() == pytest.approx(0.3, abs=0.02)


def test_the_served_tables_equal_the_evaluations_scores():
  m = _model(node_dropout=0.5, message_dropout=0.5)
  tables = m.serving_tables()
  users = tf.range(N_USERS)
  np.testing.assert_allclose(m.serve_items(tables, users).numpy(),
                             m.score_items(users).numpy(), rtol=1e-5, atol=1e-5)
  pairs_u, pairs_i = _batch(seed=5)
  served, explanation = m.serve_pairs(tables, tf.constant(pairs_u),
                                      tf.constant(pairs_i))
  np.testing.assert_allclose(served.numpy(), m.score_pairs(
      tf.constant(pairs_u), tf.constant(pairs_i)).numpy(), rtol=1e-5, atol=1e-5)
  assert explanation is None
  space, vectors = m.retrieval_space(tables)
  assert space == "dot" and vectors.shape == (N_ITEMS, D + sum(SIZES))
  np.testing.assert_allclose(vectors.numpy(), oracle_tables(_ego(m), _weights(m))[1],
                             rtol=1e-5, atol=1e-5)


def test_xla_compiled_train_step_with_dropout_lowers_the_loss():
  m = _model(node_dropout=0.1, message_dropout=0.1, l2_reg=1e-3)
  m.compile(optimizer=keras.optimizers.Adam(2e-2), jit_compile=True)
  users, items = _batch(b=16)
  batch = (tf.constant(users), tf.constant(items))
  # The steps make the cache stale; the compiled scoring refreshes it.
  check_xla_train_steps(m, batch, 40, N_USERS)


def test_node_dropout_keeps_a_large_graph_in_blocks(monkeypatch):
  # The dropped values go with L's own (eager) indices into the product, so
  # a graph past the block budget takes the blocked path inside the traced,
  # XLA-compiled step too (a SparseTensor rebuilt there had symbolic indices
  # and took the one-block path); the same seed, the same masks: ten steps
  # end at the same weights in blocks of 7 entries and in one block.
  from maml_tf.models import lightgcn
  in_blocks = []  # per product: whether it went by blocks
  block_plan = lightgcn._block_plan
  monkeypatch.setattr(lightgcn, "_block_plan", lambda *a: in_blocks.append(
      block_plan(*a) is not None) or block_plan(*a))
  finals, one_block = [], lightgcn.PRODUCT_CHUNK_BYTES
  for budget in (one_block, 4 * D * 7):
    monkeypatch.setattr(lightgcn, "PRODUCT_CHUNK_BYTES", budget)
    in_blocks.clear()
    m = _model(node_dropout=0.3, message_dropout=0.0, l2_reg=1e-3)
    m.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    step = tf.function(m.train_step, jit_compile=True)
    users, items = _batch(b=16)
    for _ in range(10):
      step((tf.constant(users), tf.constant(items)))
    finals.append([v.numpy() for v in m.trainable_variables])
    # Every product, the traced train step's with dropped values included.
    assert in_blocks and set(in_blocks) == {budget != one_block}
  for one, blocked in zip(*finals):
    np.testing.assert_allclose(blocked, one, rtol=1e-4, atol=1e-5)


def test_xavier_initialisation_as_the_authors_code():
  m = NGCF(300, 500, train_pairs=[[0, 0]], embed_dim=64, seed=3)
  for table, rows in ((m.user_embeddings, 300), (m.item_embeddings, 500)):
    limit = np.sqrt(6.0 / (rows + 64))
    values = _np(table)
    assert np.abs(values).max() <= limit and values.std() == pytest.approx(
        limit / np.sqrt(3), rel=0.05)
  kernel = _np(m.propagation.sum_kernels[0])
  assert np.abs(kernel).max() <= np.sqrt(6.0 / 128)
  assert not np.allclose(kernel, _np(m.propagation.bi_kernels[0]))


def test_config_round_trip_needs_the_edges_again():
  m = _model(node_dropout=0.2, message_dropout=0.3)
  config = m.get_config()
  assert config["layer_sizes"] == list(SIZES) and "train_pairs" not in config
  assert (config["node_dropout"], config["message_dropout"]) == (0.2, 0.3)
  restored = check_round_trip_needs_the_edges(m, PAIRS)
  assert isinstance(restored, NGCF) and restored.layer_sizes == SIZES


@pytest.mark.parametrize("kwargs,message", [
    (dict(layer_sizes=()), r"`layer_sizes` must be one integer >= 1 per layer"),
    (dict(layer_sizes=(64, 0)), r"`layer_sizes` must be one integer >= 1 per layer"),
    (dict(node_dropout=1.0), r"`node_dropout` must be in \[0, 1\). Received: node_dropout=1.0"),
    (dict(message_dropout=-0.1),
     r"`message_dropout` must be in \[0, 1\). Received: message_dropout=-0.1"),
    (dict(l2_reg=-1), r"`l2_reg` must be >= 0. Received: l2_reg=-1"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message):
    NGCF(N_USERS, N_ITEMS, train_pairs=PAIRS, **kwargs)


@pytest.mark.parametrize("flag,value,message", [
    ("ngcf_node_dropout", 1.0, "`--ngcf_node_dropout` must be < 1. Received: 1.0"),
    ("ngcf_node_dropout", -0.1, "`--ngcf_node_dropout` must be >= 0. Received: -0.1"),
    ("ngcf_message_dropout", 1.5, "`--ngcf_message_dropout` must be < 1. Received: 1.5"),
    ("ngcf_layers", ("64", "0"), "`--ngcf_layers` must be positive integers, one "
     "width per layer. Received: '64,0'"),
    ("ngcf_layers", ("64", "x"), "`--ngcf_layers` must be positive integers, one "
     "width per layer. Received: '64,x'"),
    ("ngcf_layers", (), "`--ngcf_layers` must be positive integers, one width "
     "per layer. Received: ''"),
])
def test_each_new_flag_has_a_one_line_error(flag, value, message):
  with pytest.raises(UsageError) as e:
    Config(model="ngcf", num_neg=1, **{flag: value}).validate()
  assert str(e.value) == message


def test_one_negative_is_required():
  with pytest.raises(UsageError, match="`--num_neg` must be 1 with --model=ngcf"):
    Config(model="ngcf", num_neg=4).validate()


def test_ngcf_from_the_cli_trains_and_exports(tmp_path):
  summary, workdir, path = check_cli_export(tmp_path, "ngcf", [
      "--num_neg=1", "--modalities=", "--ngcf_layers=8,4",
      "--ngcf_node_dropout=0.2", "--ngcf_message_dropout=0.2", "--embed_dim=8",
      "--l2_reg=1e-4", "--batch_size=16", "--learning_rate=0.01"],
      features=False)
  assert summary["rounds"] == 2
  assert set(summary["last"]["train"]) >= {"loss", "bpr_loss", "l2_loss"}
  assert "--ngcf_layers=8,4" in (workdir / "flags.txt").read_text()
  info = export_info(path)
  assert info["model"] == "ngcf" and info["layer_sizes"] == [8, 4]
  assert info["node_dropout"] == 0.2
  check_served_top_k(path)


def test_the_office_flagfile_parses_and_validates():
  c = office_config("ngcf")
  # The authors' defaults.
  assert (c.embed_dim, tuple(int(s) for s in c.ngcf_layers)) == (64, (64, 64, 64))
  assert (c.learning_rate, c.batch_size, c.l2_reg) == (1e-4, 1024, 1e-5)
  assert (c.ngcf_node_dropout, c.ngcf_message_dropout, c.num_neg) == (0.1, 0.1, 1)
