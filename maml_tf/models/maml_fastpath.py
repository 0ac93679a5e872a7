"""The attention + distance block with a hand-derived gradient.

What it computes is exactly `AlphaAttention.combine` followed by
`attentive_distance` (tests/test_model.py, test_fast_path_equals_plain_computation_values_and_gradients, checks values and gradients
against the autodiff of that plain path). Why it exists: on a CPU the block is
bound by memory traffic over [pairs, 5K] tensors, not by arithmetic.
Op-by-op TensorFlow makes ~15 passes over them in the backward pass; XLA
fuses the passes but its CPU matmul is several times slower than oneDNN's.
So the elementwise work runs in two XLA-fused kernels (`jit_compile=True`)
and the two [pairs, 5K] x [5K, K] matmuls run through TensorFlow's oneDNN
kernels, outside XLA.

Forward, for pairs of a user half (U, us) and an item half (I, is):
  x = U + I;  inv = rsqrt(max(us + is, eps));  t = tanh(x * inv + b1)
  r = rsqrt(max(sum t^2, eps));  g = (t W2) * r + b2      (= l2norm(t) W2 + b2)
  a = alpha * softmax(relu(g));  d = sum_k a_k^2 (p_k - q_k)^2
Only the embedding side gets gradients (U, us, I, is, p, q): the attention
weights are frozen in faithful mode; paper mode uses the autodiff path.
"""

from __future__ import annotations

import tensorflow as tf

EPS = 1e-12


def _gather(table, ids):
  return table if ids is None else tf.gather(table, ids)


@tf.function(jit_compile=True)
def _hidden(u, i_table, ids, us, is_table, b1):
  """t, r of the forward pass (the item gather fused in), one kernel."""
  x = u + _gather(i_table, ids)
  inv = tf.math.rsqrt(tf.maximum(us + _gather(is_table, ids), EPS))
  t = tf.tanh(x * inv[..., None] + b1)
  ss = tf.reduce_sum(t * t, -1)
  return t, tf.math.rsqrt(tf.maximum(ss, EPS)), ss


@tf.function(jit_compile=True)
def _head(m, r, b2, alpha, p, q):
  """From m = t W2 to the distance d, plus what the backward pass needs."""
  g = m * r[..., None] + b2
  sm = tf.nn.softmax(tf.nn.relu(g), -1)
  a = alpha * sm
  diff = p - q
  d = tf.reduce_sum(tf.square(a * diff), -1)
  return d, g, sm, a, diff


@tf.function(jit_compile=True)
def _head_grad(dd, m, r, g, sm, a, diff, alpha, ss):
  """dL/dm, and the part of dL/dt along t, from dL/dd."""
  da = (2.0 * dd)[..., None] * a * tf.square(diff)
  ddiff = (2.0 * dd)[..., None] * tf.square(a) * diff
  dsm = alpha * da
  da2 = sm * (dsm - tf.reduce_sum(dsm * sm, -1, keepdims=True))
  dg = tf.where(g > 0, da2, 0.0)
  dm = dg * r[..., None]
  dr = tf.reduce_sum(dg * m, -1)
  # r = max(ss, eps)^-1/2  =>  dr/dt = -r^3 t where ss > eps.
  coef = tf.where(ss > EPS, -dr * r * r * r, 0.0)
  return dm, coef, ddiff


@tf.function(jit_compile=True)
def _hidden_grad(dt_mm, coef, t, u, i_table, ids, us, is_table):
  """From dL/dt to dL/dx (= dL/dI per pair) and dL/d(us + is), one kernel.

  x and inv are recomputed from the (cache-resident) item table rather than
  stored: one pass over [pairs, 5K] fewer each way.
  """
  x = u + _gather(i_table, ids)
  sq = us + _gather(is_table, ids)
  inv = tf.math.rsqrt(tf.maximum(sq, EPS))
  dt = dt_mm + coef[..., None] * t
  ds = dt * (1.0 - t * t)
  dx = ds * inv[..., None]
  dinv = tf.reduce_sum(ds * x, -1)
  dsq = tf.where(sq > EPS, -0.5 * dinv * inv * inv * inv, 0.0)
  return dx, dsq


def _matmul_last(t, w, transpose_b=False):
  """[..., n] x [n, m] (or [m, n]^T) through a 2-D matmul."""
  flat = tf.reshape(t, [-1, t.shape[-1]])
  out = tf.matmul(flat, w, transpose_b=transpose_b)
  return tf.reshape(out, tf.concat([tf.shape(t)[:-1], tf.shape(out)[-1:]], 0))


def _reduce_to(t, shape):
  """Sums the broadcast dimensions of t so that it has `shape`."""
  axes = tf.raw_ops.BroadcastGradientArgs(s0=shape, s1=tf.shape(t))[0]
  return tf.reshape(tf.reduce_sum(t, axes), shape)


def _to_table(t, ids, table_shape):
  """Gradient of a gather: per-pair rows summed into their table rows."""
  if ids is None:
    return _reduce_to(t, table_shape)
  rows = tf.reshape(t, tf.concat([[-1], tf.shape(t)[tf.rank(ids):]], 0))
  return tf.math.unsorted_segment_sum(rows, tf.reshape(ids, [-1]),
                                      table_shape[0])


def attention_distance(user, item, p, q, b1, w2, b2, alpha, item_ids=None):
  """d(u, i) for broadcastable halves; gradients flow to user, item, p, q.

  Args:
    user: (U [..., H], us [...]) the user half, broadcastable against item.
    item: (I, is) the item half: per pair ([..., H], [...]) when `item_ids`
      is None, else whole tables ([n_items, H], [n_items]) that `item_ids`
      [...] index (the gather then runs inside the fused kernels).
    p, q: [..., K] user and item embeddings, broadcastable.
    b1, w2, b2: the attention's first bias, second kernel and bias (frozen).
    alpha: the softmax scale.
    item_ids: optional int [...] rows of the item tables.

  Returns:
    d [...]: the attentive squared distances.
  """
  u, us = user
  i, is_ = item
  b1, w2, b2 = (tf.convert_to_tensor(v) for v in (b1, w2, b2))

  @tf.custom_gradient
  def block(u, us, i, is_, p, q):
    t, r, ss = _hidden(u, i, item_ids, us, is_, b1)
    m = _matmul_last(t, w2)
    d, g, sm, a, diff = _head(m, r, b2, alpha, p, q)

    def grad(dd):
      dm, coef, ddiff = _head_grad(dd, m, r, g, sm, a, diff, alpha, ss)
      dt_mm = _matmul_last(dm, w2, transpose_b=True)
      dx, dsq = _hidden_grad(dt_mm, coef, t, u, i, item_ids, us, is_)
      return (_reduce_to(dx, tf.shape(u)), _reduce_to(dsq, tf.shape(us)),
              _to_table(dx, item_ids, tf.shape(i)),
              _to_table(dsq, item_ids, tf.shape(is_)),
              _reduce_to(ddiff, tf.shape(p)), _reduce_to(-ddiff, tf.shape(q)))

    return d, grad

  return block(u, us, i, is_, p, q)


def attention_distance_nograd(user, item, p, q, b1, w2, b2, alpha):
  """The same forward pass for scoring (no gradient bookkeeping)."""
  b1, w2, b2 = (tf.convert_to_tensor(v) for v in (b1, w2, b2))
  t, r, _ = _hidden(user[0], item[0], None, user[1], item[1], b1)
  return _head(_matmul_last(t, w2), r, b2, alpha, p, q)[0]
