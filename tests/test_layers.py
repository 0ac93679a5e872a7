"""`maml_tf.models.layers` and `maml_tf.models.maml.attentive_distance` vs the oracles.

docs/spec.md §2: the fusion MLP, the alpha-attention and the attentive distance, fed
the package layers' own (random) weights; docs/spec.md §3: the unit-ball clip.
Also the Keras config / serialization round trip of every custom object.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.models import maml_layers
from maml_tf.models import layers
from maml_tf.models import maml as model

try:
  from tests import oracles
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir mode)
  import oracles

RTOL = 1e-5
ATOL = 1e-6


def _f32(x):
  return tf.constant(np.asarray(x, dtype=np.float32))


def _fusion_weights(layer):
  return [(d.kernel.numpy(), d.bias.numpy())
          for d in (layer.dense1, layer.dense2, layer.dense3, layer.out)]


def _attention_weights(layer):
  return (layer.dense1.kernel.numpy(), layer.dense1.bias.numpy(),
          layer.dense2.kernel.numpy(), layer.dense2.bias.numpy())


def _randomise_biases(dense_layers, rng, scale=0.3):
  # Biases start at zero; random ones make sure each is used where it should.
  for d in dense_layers:
    d.bias.assign(rng.normal(0.0, scale, size=d.bias.shape).astype(np.float32))


# ------------------------------------------------------------ clip / ball


def test_sum_rows_into_hand():
  """Rows 0 and 2 land in table row 1 (summed), row 1 in table row 3."""
  rows = tf.constant([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
  table = tf.zeros([4, 2])
  got = layers.sum_rows_into(rows, tf.constant([1, 3, 1]), table).numpy()
  np.testing.assert_array_equal(got, [[0, 0], [101, 202], [0, 0], [10, 20]])


@pytest.mark.parametrize("shape", [(6,), (2, 3), (2, 3, 4)])
def test_gather_rows_values_and_dense_gradient_against_numpy(shape):
  """gather_rows gives tf.gather's values; its gradient is the dense table
  that numpy's np.add.at builds, for ids of any rank (repeated ids too)."""
  rng = np.random.default_rng(0)
  table = tf.Variable(rng.standard_normal((5, 3)).astype(np.float32))
  ids = rng.integers(0, 5, shape).astype(np.int32)
  ids.flat[0] = ids.flat[-1]  # at least one repeat
  upstream = rng.standard_normal(shape + (3,)).astype(np.float32)
  with tf.GradientTape() as tape:
    out = layers.gather_rows(table, tf.constant(ids))
    loss = tf.reduce_sum(out * upstream)
  grad = tape.gradient(loss, table)
  assert isinstance(grad, tf.Tensor)  # dense, not IndexedSlices
  np.testing.assert_array_equal(out.numpy(), table.numpy()[ids])
  expected = np.zeros((5, 3), np.float32)
  np.add.at(expected, ids.reshape(-1), upstream.reshape(-1, 3))
  np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_clip_rows_to_norm_hand():
  x = [[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [0.0, -2.0]]
  # [3,4] -> [0.6,0.8]; [0.3,0.4] kept; zero row kept; [0,-2] -> [0,-1]
  got = layers.clip_rows_to_norm(_f32(x), 1.0)
  np.testing.assert_allclose(np.asarray(got),
                             [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [0.0, -1.0]],
                             rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("clip_norm", [1.0, 0.5, 2.0])
def test_clip_rows_to_norm_random(seed, clip_norm):
  rng = np.random.default_rng(seed)
  # Norms spread around the threshold, so some rows clip and some do not.
  x = (rng.normal(size=(40, 6)) * rng.uniform(0.05, 1.0, size=(40, 1))
       ).astype(np.float32)
  got = layers.clip_rows_to_norm(_f32(x), clip_norm)
  expected = oracles.clip_by_norm_rows(x, clip_norm)
  norms = np.linalg.norm(x, axis=1)
  assert (norms > clip_norm).any() and (norms < clip_norm).any()
  np.testing.assert_allclose(np.asarray(got), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("clip_norm", [1.0, 0.5])
def test_unit_ball_constraint_random(clip_norm):
  rng = np.random.default_rng(7)
  x = (rng.normal(size=(30, 4)) * 0.6).astype(np.float32)
  constraint = layers.UnitBall(clip_norm=clip_norm)
  assert isinstance(constraint, keras.constraints.Constraint)
  got = constraint(_f32(x))
  np.testing.assert_allclose(np.asarray(got),
                             oracles.clip_by_norm_rows(x, clip_norm),
                             rtol=RTOL, atol=ATOL)


def test_unit_ball_default_is_norm_one():
  got = layers.UnitBall()(_f32([[3.0, 4.0]]))
  np.testing.assert_allclose(np.asarray(got), [[0.6, 0.8]], rtol=RTOL)


# ---------------------------------------------------------------- fusion


def test_feature_fusion_shapes_and_release_init():
  # docs/spec.md §2.2: Dense_H, Dense_H/2, Dense_H/2, Dense_K; glorot-uniform kernel,
  # zero bias.
  layer = maml_layers.FeatureFusion(hidden_dim=8, embed_dim=4)
  out = layer(_f32(np.ones((3, 10))))
  assert tuple(out.shape) == (3, 4)
  shapes = [(10, 8), (8, 4), (4, 4), (4, 4)]
  for (kernel, bias), shape in zip(_fusion_weights(layer), shapes):
    assert kernel.shape == shape
    np.testing.assert_array_equal(bias, 0.0)
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    assert np.abs(kernel).max() <= limit + 1e-7
    assert np.abs(kernel).max() > 0.3 * limit  # not a tiny / zero init


def test_feature_fusion_hand():
  # Same hand case as test_oracles: d = 2, H = 2, K = 2, input [3, 4]
  # -> [0.6, 0.8] -> h1 [0.6, 0] -> h2 2.5 -> h3 2 -> out [2, -4]
  # -> clipped to [2, -4] / sqrt(20)
  layer = maml_layers.FeatureFusion(hidden_dim=2, embed_dim=2)
  layer(_f32(np.ones((1, 2))))
  layer.dense1.kernel.assign(np.eye(2, dtype=np.float32))
  layer.dense1.bias.assign(np.array([0.0, -1.0], np.float32))
  layer.dense2.kernel.assign(np.array([[2.0], [5.0]], np.float32))
  layer.dense2.bias.assign(np.array([0.5], np.float32))
  layer.dense3.kernel.assign(np.array([[-1.0]], np.float32))
  layer.dense3.bias.assign(np.array([3.0], np.float32))
  layer.out.kernel.assign(np.array([[1.0, -2.0]], np.float32))
  layer.out.bias.assign(np.zeros(2, np.float32))
  got = layer(_f32([[3.0, 4.0]]))
  s20 = math.sqrt(20.0)
  np.testing.assert_allclose(np.asarray(got), [[2.0 / s20, -4.0 / s20]],
                             rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scaling,clip_norm", [(1.0, 1.0), (3.0, 0.5),
                                               (0.2, 1.0)])
def test_feature_fusion_random(seed, scaling, clip_norm):
  rng = np.random.default_rng(seed)
  text = rng.normal(size=(12, 6))
  image = rng.uniform(0.0, 5.0, size=(12, 4))
  x = np.concatenate([text, image], axis=1).astype(np.float32)
  # dropout > 0 on purpose: the release never activates it (docs/spec.md §2.2)
  layer = maml_layers.FeatureFusion(hidden_dim=16, embed_dim=4, dropout=0.2,
                               scaling=scaling, clip_norm=clip_norm)
  layer(_f32(x))
  _randomise_biases([layer.dense1, layer.dense2, layer.dense3, layer.out], rng)
  expected = oracles.fusion(x, _fusion_weights(layer), scaling=scaling,
                            clip_norm=clip_norm)
  for got in (layer(_f32(x)), layer(_f32(x), training=False)):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=RTOL,
                               atol=ATOL)
  assert np.all(np.linalg.norm(expected, axis=1) <= clip_norm + 1e-9)


# ------------------------------------------------------------- attention


def test_alpha_attention_hand():
  # Same hand case as test_oracles: K = 2, no features, p = [3, 0], q = [0, 4]
  # z = [0.6, 0, 0, 0.8]; a1 = [tanh 0.6, tanh 0.8, 0, ...]
  # a2 = l2norm(a1)[:2] = [n1, n2]; a = 4 * softmax([n1, n2])
  layer = maml_layers.AlphaAttention(embed_dim=2, alpha=4.0, use_features=False)
  p, q = _f32([[3.0, 0.0]]), _f32([[0.0, 4.0]])
  layer(p, q)
  w1 = np.zeros((4, 10), np.float32)
  w1[0, 0] = 1.0
  w1[3, 1] = 1.0
  w2 = np.zeros((10, 2), np.float32)
  w2[0, 0] = 1.0
  w2[1, 1] = 1.0
  layer.dense1.kernel.assign(w1)
  layer.dense2.kernel.assign(w2)
  t1, t2 = math.tanh(0.6), math.tanh(0.8)
  norm = math.sqrt(t1 * t1 + t2 * t2)
  e = math.exp((t2 - t1) / norm)
  got = layer(p, q)
  np.testing.assert_allclose(np.asarray(got),
                             [[4.0 / (1.0 + e), 4.0 * e / (1.0 + e)]],
                             rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_features", [True, False])
@pytest.mark.parametrize("alpha_is_k", [True, False])
def test_alpha_attention_random(seed, use_features, alpha_is_k):
  rng = np.random.default_rng(seed)
  k, n = 4, 9
  alpha = float(k) if alpha_is_k else 1.0
  p = rng.normal(0.0, 0.5, size=(n, k)).astype(np.float32)
  q = rng.normal(0.0, 0.5, size=(n, k)).astype(np.float32)
  f = rng.normal(0.0, 0.5, size=(n, k)).astype(np.float32)
  layer = maml_layers.AlphaAttention(embed_dim=k, alpha=alpha,
                                use_features=use_features)
  fin = _f32(f) if use_features else None
  layer(_f32(p), _f32(q), fin)
  assert layer.dense1.kernel.shape == ((3 if use_features else 2) * k, 5 * k)
  assert layer.dense2.kernel.shape == (5 * k, k)
  _randomise_biases([layer.dense1, layer.dense2], rng)
  expected = oracles.attention(p, q, f if use_features else None,
                               *_attention_weights(layer), alpha=alpha)
  for got in (layer(_f32(p), _f32(q), fin),
              layer(_f32(p), _f32(q), fin, training=False)):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=RTOL,
                               atol=ATOL * alpha)
  np.testing.assert_allclose(expected.sum(axis=1), alpha, rtol=1e-12)


def _lead(t, axis):
  return tf.expand_dims(t, axis)


@pytest.mark.parametrize("use_features", [True, False])
def test_alpha_attention_split_path_all_pairs(use_features):
  # user_part / item_part / combine, broadcast users x items, vs the oracle
  # run pair by pair.
  rng = np.random.default_rng(11)
  k, n_users, n_items = 4, 3, 5
  P = rng.normal(0.0, 0.5, size=(n_users, k)).astype(np.float32)
  Q = rng.normal(0.0, 0.5, size=(n_items, k)).astype(np.float32)
  F = rng.normal(0.0, 0.5, size=(n_items, k)).astype(np.float32)
  layer = maml_layers.AlphaAttention(embed_dim=k, alpha=float(k),
                                use_features=use_features)
  layer(_f32(P[:1]), _f32(Q[:1]), _f32(F[:1]) if use_features else None)
  _randomise_biases([layer.dense1, layer.dense2], rng)
  user = tf.nest.map_structure(lambda t: _lead(t, 1),
                               layer.user_part(_f32(P)))
  item = tf.nest.map_structure(
      lambda t: _lead(t, 0),
      layer.item_part(_f32(Q), _f32(F) if use_features else None))
  got = np.asarray(layer.combine(user, item))
  assert got.shape == (n_users, n_items, k)
  weights = _attention_weights(layer)
  for u in range(n_users):
    expected = oracles.attention(np.repeat(P[u:u + 1], n_items, axis=0), Q,
                                 F if use_features else None, *weights,
                                 alpha=float(k))
    np.testing.assert_allclose(got[u], expected, rtol=RTOL, atol=ATOL * k)


# -------------------------------------------------------------- distance


def test_attentive_distance_hand():
  # a [1, 2], p [1, 1], q [0, 3]: 1 + (2 - 6)^2 = 17; CML: 1 + 4 = 5
  a, p, q = _f32([[1.0, 2.0]]), _f32([[1.0, 1.0]]), _f32([[0.0, 3.0]])
  np.testing.assert_allclose(np.asarray(model.attentive_distance(a, p, q)),
                             [17.0], rtol=RTOL)
  np.testing.assert_allclose(np.asarray(model.attentive_distance(None, p, q)),
                             [5.0], rtol=RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_attentive_distance_random(seed):
  rng = np.random.default_rng(seed)
  a = (rng.dirichlet(np.ones(8), size=20) * 8).astype(np.float32)
  p = rng.normal(0.0, 0.4, size=(20, 8)).astype(np.float32)
  q = rng.normal(0.0, 0.4, size=(20, 8)).astype(np.float32)
  got = model.attentive_distance(_f32(a), _f32(p), _f32(q))
  assert tuple(got.shape) == (20,)
  np.testing.assert_allclose(np.asarray(got), oracles.distance(a, p, q),
                             rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(model.attentive_distance(
      None, _f32(p), _f32(q))), oracles.distance(None, p, q), rtol=RTOL,
                             atol=ATOL)


# ------------------------------------------------------------ full forward


@pytest.mark.parametrize("seed", [0, 1])
def test_full_forward_fusion_attention_distance(seed):
  # n_items 7, K 4, hidden 8, text dim 5 + image dim 3; 6 (user, item) pairs.
  rng = np.random.default_rng(seed)
  n_items, k = 7, 4
  text = rng.normal(size=(n_items, 5))
  image = rng.uniform(0.0, 3.0, size=(n_items, 3))
  x = np.concatenate([text, image], axis=1).astype(np.float32)
  P = rng.normal(0.0, 1.0 / math.sqrt(k), size=(3, k)).astype(np.float32)
  Q = rng.normal(0.0, 1.0 / math.sqrt(k), size=(n_items, k)).astype(np.float32)
  users = np.array([0, 1, 2, 0, 1, 2])
  items = np.array([0, 3, 6, 2, 5, 1])

  fusion = maml_layers.FeatureFusion(hidden_dim=8, embed_dim=k)
  attention = maml_layers.AlphaAttention(embed_dim=k, alpha=float(k))
  F = fusion(_f32(x))
  p, q = tf.gather(_f32(P), users), tf.gather(_f32(Q), items)
  attention(p, q, tf.gather(F, items))
  _randomise_biases([fusion.dense1, fusion.dense2, fusion.dense3, fusion.out,
                     attention.dense1, attention.dense2], rng, scale=0.1)
  F = fusion(_f32(x))
  a = attention(p, q, tf.gather(F, items))
  d = model.attentive_distance(a, p, q)

  F_o = oracles.fusion(x, _fusion_weights(fusion))
  a_o = oracles.attention(P[users], Q[items], F_o[items],
                          *_attention_weights(attention), alpha=float(k))
  d_o = oracles.distance(a_o, P[users], Q[items])
  np.testing.assert_allclose(np.asarray(F), F_o, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(a), a_o, rtol=RTOL, atol=ATOL * k)
  np.testing.assert_allclose(np.asarray(d), d_o, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------- serialization


def _custom_objects():
  return [
      maml_layers.FeatureFusion(hidden_dim=8, embed_dim=4, dropout=0.2,
                           scaling=2.0, clip_norm=0.5),
      maml_layers.AlphaAttention(embed_dim=4, alpha=1.0, dropout=0.1, l2=3.0,
                            use_features=False),
      maml_layers.AlphaAttention(embed_dim=3, alpha=3.0),
      layers.UnitBall(clip_norm=0.5),
  ]


def _round_trips(obj):
  cfg = obj.get_config()
  yield type(obj).from_config(cfg)
  yield keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(obj))


@pytest.mark.parametrize("index", range(4))
def test_config_round_trip(index):
  obj = _custom_objects()[index]
  cfg = obj.get_config()
  for clone in _round_trips(obj):
    assert type(clone) is type(obj)
    assert clone.get_config() == cfg


def test_unit_ball_round_trip_keeps_behaviour():
  obj = layers.UnitBall(clip_norm=0.5)
  x = _f32([[3.0, 4.0], [0.1, 0.1]])
  for clone in _round_trips(obj):
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(obj(x)))


def test_layer_round_trip_keeps_behaviour():
  rng = np.random.default_rng(3)
  x = _f32(rng.normal(size=(5, 6)))
  fusion = maml_layers.FeatureFusion(hidden_dim=8, embed_dim=4, scaling=2.0,
                                clip_norm=0.5)
  ref = fusion(x)
  for clone in _round_trips(fusion):
    clone(x)
    clone.set_weights(fusion.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(ref),
                               rtol=1e-6, atol=1e-7)
  p, q = _f32(rng.normal(size=(5, 4))), _f32(rng.normal(size=(5, 4)))
  attention = maml_layers.AlphaAttention(embed_dim=4, alpha=4.0,
                                    use_features=False)
  ref = attention(p, q)
  for clone in _round_trips(attention):
    clone(p, q)
    clone.set_weights(attention.get_weights())
    np.testing.assert_allclose(np.asarray(clone(p, q)), np.asarray(ref),
                               rtol=1e-6, atol=1e-7)
