"""Products over a graph's edge list whose weights are learned, in blocks.

A model that computes a value per edge from its two end nodes' rows
(`edge_dot`) or sums learned-weight messages along the edges (`edge_sum`)
gathers an [edges, d] block of rows for each such product, and autodiff
keeps those blocks for the backward pass: a GRCN training step at ~2M
edges held ~28 of them at its peak (docs/speed.md). Here, past
`BLOCK_BYTES` of gathered rows, each product runs over blocks of edges in
a loop (a loop keeps one block alive, under XLA too; unrolled, XLA
schedules the blocks together) and has its own gradient, the same blocked
loops recomputing the gathers, so a step keeps only [edges] vectors and
the tables. Below it, the plain expression and its autodiff, unchanged.
`lightgcn.sparse_product` does the same for a graph whose weights are
constants.
"""

from __future__ import annotations

import tensorflow as tf

# At most this many bytes in one [edges, d] block of gathered rows.
BLOCK_BYTES = 64 << 20


def _edges_a_block(d) -> int:
  return max(1, BLOCK_BYTES // (4 * int(d)))


def _blocks(v, per_block):
  """[n] as [blocks, per_block], the last block padded with zeros."""
  n = int(v.shape[0])
  blocks = -(-n // per_block)
  return tf.reshape(tf.pad(v, [[0, blocks * per_block - n]]), [blocks, per_block])


def _dots(a, at_a, b, at_b, n_edges):
  """[n_edges]: a[at_a] . b[at_b] row by row, over the blocked edge ends
  at_a, at_b [blocks, per_block], one block at a time in a loop (a loop
  keeps one block's gathered rows alive, under XLA too)."""
  n_blocks, per_block = int(at_a.shape[0]), int(at_a.shape[1])

  def body(k, acc):
    dots = tf.reduce_sum(tf.gather(a, at_a[k]) * tf.gather(b, at_b[k]), -1)
    return k + 1, tf.tensor_scatter_nd_update(acc, [[k]], dots[None])

  _, out = tf.while_loop(lambda k, _: k < n_blocks, body,
                         (tf.constant(0), tf.zeros([n_blocks, per_block], a.dtype)))
  return tf.reshape(out, [-1])[:n_edges]


def weighted_sum(weights, x, at, into, n_rows):
  """[n_rows, d]: the sum of weights[e] x[at[e]] into row into[e], over the
  blocked weights and edge ends [blocks, per_block], one block at a time
  (also `lightgcn.sparse_product`'s loop)."""
  def body(k, acc):
    return k + 1, acc + tf.math.unsorted_segment_sum(
        weights[k][:, None] * tf.gather(x, at[k]), into[k], n_rows)

  _, out = tf.while_loop(lambda k, _: k < int(at.shape[0]), body,
                         (tf.constant(0), tf.zeros([n_rows, tf.shape(x)[1]], x.dtype)))
  return out


def edge_dot(a, b, ia, ib):
  """[E]: a[ia[e]] . b[ib[e]] for every edge e, for tables a [n_a, d] and
  b [n_b, d] and int32 edge ends ia, ib [E] of static length."""
  n_edges = int(ia.shape[0])
  per_block = _edges_a_block(a.shape[-1])
  if n_edges <= per_block:
    return tf.reduce_sum(tf.gather(a, ia) * tf.gather(b, ib), -1)
  ends_a, ends_b = _blocks(ia, per_block), _blocks(ib, per_block)

  @tf.custom_gradient
  def product(a, b):
    def grad(g):
      weights = _blocks(g, per_block)  # padding edges weigh 0
      return (weighted_sum(weights, b, ends_b, ends_a, tf.shape(a)[0]),
              weighted_sum(weights, a, ends_a, ends_b, tf.shape(b)[0]))

    return _dots(a, ends_a, b, ends_b, n_edges), grad

  return product(a, b)


def edge_sum(w, x, src, dst, n_dst):
  """[n_dst, d]: the sum over edges e of w[e] x[src[e]] into row dst[e],
  for learned weights w [E], a table x [n_src, d] and int32 edge ends src,
  dst [E] of static length."""
  n_edges = int(src.shape[0])
  per_block = _edges_a_block(x.shape[-1])
  if n_edges <= per_block:
    return tf.math.unsorted_segment_sum(w[:, None] * tf.gather(x, src), dst, n_dst)
  sources, targets = _blocks(src, per_block), _blocks(dst, per_block)

  @tf.custom_gradient
  def product(w, x):
    weights = _blocks(w, per_block)  # padding edges weigh 0

    def grad(g):
      return (_dots(g, targets, x, sources, n_edges),
              weighted_sum(weights, g, targets, sources, tf.shape(x)[0]))

    return weighted_sum(weights, x, sources, targets, n_dst), grad

  return product(w, x)
