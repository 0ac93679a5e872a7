"""Blocked edge products (maml_tf/models/edge_products.py) against the
plain expressions and their autodiff."""

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.models import edge_products


def _plain_dot(a, b, ia, ib):
  return tf.reduce_sum(tf.gather(a, ia) * tf.gather(b, ib), -1)


def _plain_sum(w, x, src, dst, n_dst):
  return tf.math.unsorted_segment_sum(w[:, None] * tf.gather(x, src), dst, n_dst)


def _case(seed, n_edges=23):
  rng = np.random.default_rng(seed)
  a = tf.constant(rng.normal(size=(7, 4)), tf.float32)
  b = tf.constant(rng.normal(size=(5, 4)), tf.float32)
  ia = tf.constant(rng.integers(0, 7, n_edges), tf.int32)
  ib = tf.constant(rng.integers(0, 5, n_edges), tf.int32)
  w = tf.constant(rng.normal(size=n_edges), tf.float32)
  return a, b, ia, ib, w


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("block_bytes", [16 * 6, 16 * 23, 1 << 20])
def test_blocked_products_and_gradients_equal_the_plain_ones(monkeypatch, jit_compile,
                                                             block_bytes):
  # 23 edges of 4 floats: blocks of 6 (4 blocks, the last padded), of 23
  # (one block: the plain path) and of 65,536 (plain).
  monkeypatch.setattr(edge_products, "BLOCK_BYTES", block_bytes)
  a, b, ia, ib, w = _case(0)
  g_dot = tf.constant(np.random.default_rng(1).normal(size=23), tf.float32)
  g_sum = tf.constant(np.random.default_rng(2).normal(size=(5, 4)), tf.float32)

  def run(dot, total):
    @tf.function(jit_compile=jit_compile)
    def f(a, b, w):
      with tf.GradientTape() as tape:
        tape.watch([a, b, w])
        d = dot(a, b, ia, ib)
        s = total(w, a, ia, ib, 5)
        loss = tf.reduce_sum(d * g_dot) + tf.reduce_sum(s * g_sum)
      return [d, s] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, [a, b, w])]
    return f(a, b, w)

  got = run(edge_products.edge_dot, edge_products.edge_sum)
  want = run(_plain_dot, _plain_sum)
  for x, y in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-6)


def test_blocks_are_used_past_the_budget(monkeypatch):
  # Past BLOCK_BYTES the products run in a loop (a While op in the graph).
  a, b, ia, ib, w = _case(3)
  for block_bytes, loops in ((16 * 6, True), (1 << 20, False)):
    monkeypatch.setattr(edge_products, "BLOCK_BYTES", block_bytes)
    graph = tf.function(lambda a, b: edge_products.edge_dot(a, b, ia, ib)
                        ).get_concrete_function(a, b).graph
    ops = {op.type for op in graph.get_operations()}
    assert ("While" in ops or "StatelessWhile" in ops) is loops


def test_grcn_by_blocks_trains_as_in_one_block(monkeypatch):
  # A GRCN loss and its gradients with every edge product in blocks of 8
  # edges equal those of the plain products.
  from maml_tf.models import grcn
  rng = np.random.default_rng(4)
  pairs = np.stack([rng.integers(0, 9, 60), rng.integers(0, 11, 60)], 1)
  m = grcn.GRCN(9, 11, modalities=("text", "meta"), feature_dims=(6, 5),
                train_pairs=pairs, embed_dim=4, seed=0)
  m.set_item_features({"text": rng.normal(size=(11, 6)).astype(np.float32),
                       "meta": rng.normal(size=(11, 5)).astype(np.float32)})
  users = tf.constant([0, 3, 8], tf.int32)
  items = tf.constant([[1, 2], [4, 10], [7, 0]], tf.int32)

  def step():
    with tf.GradientTape() as tape:
      loss = m.loss_terms(users, items, training=True)["loss"]
    return [loss] + [tf.convert_to_tensor(g) for g in
                     tape.gradient(loss, m.trainable_variables)]

  want = step()
  monkeypatch.setattr(edge_products, "BLOCK_BYTES", 4 * 4 * 8)
  got = step()
  for x, y in zip(got, want):
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-7)


def test_lattice_knn_product_by_blocks_trains_as_in_one_block(monkeypatch):
  # LATTICE's item-item convolution over its kNN graphs (raw and learned,
  # the learned ones rebuilt on this step, so W_m gets its gradient through
  # them): loss and gradients with its products in blocks of 8 entries
  # equal those of the plain gather.
  from maml_tf.models import lattice
  rng = np.random.default_rng(5)
  pairs = np.stack([rng.integers(0, 9, 60), rng.integers(0, 13, 60)], 1)
  m = lattice.LATTICE(9, 13, modalities=("text", "meta"), feature_dims=(6, 5),
                      train_pairs=pairs, embed_dim=4, knn_k=3, seed=0)
  m.set_item_features({"text": rng.normal(size=(13, 6)).astype(np.float32),
                       "meta": rng.normal(size=(13, 5)).astype(np.float32)})
  users = tf.constant([0, 3, 8], tf.int32)
  items = tf.constant([[1, 2], [4, 12], [7, 0]], tf.int32)
  calls = []
  plain_sum = edge_products.edge_sum

  def counted(*args):
    calls.append(1)
    return plain_sum(*args)

  monkeypatch.setattr(edge_products, "edge_sum", counted)

  def step():
    with tf.GradientTape() as tape:
      loss = m.loss_terms(users, items, training=True)["loss"]
    grads = tape.gradient(loss, m.trainable_variables)
    assert all(g is not None for g in grads)
    return [loss] + [tf.convert_to_tensor(g) for g in grads]

  want = step()
  assert not calls  # 13 x 3 x 4 floats: one block, the plain gather
  monkeypatch.setattr(edge_products, "BLOCK_BYTES", 4 * 4 * 8)
  got = step()
  assert calls  # the blocked edge list
  for x, y in zip(got, want):
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-7)
