"""The attention + distance block with a hand-derived gradient.

What it computes is exactly `AlphaAttention.combine` followed by
`attentive_distance` (tests/test_model.py checks values and gradients
against the autodiff of that plain path, and the training loss of
`hardest_attention_distance` against autodiff of the loss over all pairs).
Why it exists: on a CPU the block is bound by passes over [pairs, 5K]
tensors, not by arithmetic. Op-by-op TensorFlow makes ~15 such passes in
the backward pass; XLA fuses them but its CPU matmul is slower than
oneDNN's. So the elementwise work runs in small XLA-fused kernels
(`jit_compile=True`), the two [pairs, 5K] x [5K, K] matmuls run through
TensorFlow's oneDNN kernels outside XLA, and the gradients of the gathered
table rows are summed by XLA's kernel (`layers.sum_rows_into`), several
times faster here than TensorFlow's. Where XLA's CPU compiler splits a
work-plus-reduction that it should fuse, the kernels are written so that it
does not (`_sum_last`). docs/speed.md has the measurements.

Forward, for pairs of a user half (U, us) and an item half (I, is):
  x = U + I;  inv = rsqrt(max(us + is, eps));  t = tanh(x * inv + b1)
  r = rsqrt(max(sum t^2, eps));  g = (t W2) * r + b2      (= l2norm(t) W2 + b2)
  a = alpha * softmax(relu(g));  d = sum_k a_k^2 (p_k - q_k)^2
Only the embedding side gets gradients (U, us, I, is, p, q): the attention
weights are frozen in faithful mode; paper mode uses the autodiff path.
"""

from __future__ import annotations

import tensorflow as tf

from maml_tf.models.layers import sum_rows_into

EPS = 1e-12


def _gather(table, ids):
  return table if ids is None else tf.gather(table, ids)


def _sum_last(x, keepdims=False):
  """Sum over the last axis as a sum of reductions over 32-lane slices.

  XLA's CPU compiler rewrites a reduction over a longer axis into a windowed
  tree of 32-wide reductions, and the elementwise work feeding it (t * t,
  ds * x) then no longer fuses into it: it writes a whole [pairs, 5K]
  buffer first (in a profile of the step, 16 of ~100 ms). Slices of at most
  32 lanes are reduced where they are computed.
  """
  n = x.shape[-1]
  parts = [tf.reduce_sum(x[..., j:j + 32], -1, keepdims=keepdims)
           for j in range(0, n, 32)]
  return tf.add_n(parts)


def _pick(t, columns):
  """t [B, C, ...] at each row's `columns` [B, J] -> [B, J, ...]."""
  return t if columns is None else tf.gather(t, columns, batch_dims=1)


@tf.function(jit_compile=True)
def _hidden(u, i_table, ids, us, is_table, b1):
  """t, r of the forward pass (the item gather fused in), one kernel."""
  x = u + _gather(i_table, ids)
  inv = tf.math.rsqrt(tf.maximum(us + _gather(is_table, ids), EPS))
  t = tf.tanh(x * inv[..., None] + b1)
  ss = _sum_last(t * t)
  return t, tf.math.rsqrt(tf.maximum(ss, EPS)), ss


@tf.function(jit_compile=True)
def _head(m, r, b2, alpha, p, q, ids):
  """From m = t W2 to the distance d, one kernel (d alone: what the
  backward pass needs of the head it recomputes from m, which is cheaper on
  this memory-bound block than writing and reading it back)."""
  g = m * r[..., None] + b2
  a = alpha * tf.nn.softmax(tf.nn.relu(g), -1)
  return _sum_last(tf.square(a * (p - _gather(q, ids))))


@tf.function(jit_compile=True)
def _head_grad(dd, m, r, b2, alpha, p, q, ids, ss):
  """dL/dm, the part of dL/dt along t, and dL/d(p - q), from dL/dd."""
  g = m * r[..., None] + b2
  sm = tf.nn.softmax(tf.nn.relu(g), -1)
  a = alpha * sm
  diff = p - _gather(q, ids)
  da = (2.0 * dd)[..., None] * a * tf.square(diff)
  ddiff = (2.0 * dd)[..., None] * tf.square(a) * diff
  dsm = alpha * da
  da2 = sm * (dsm - _sum_last(dsm * sm, keepdims=True))
  dg = tf.where(g > 0, da2, 0.0)
  dm = dg * r[..., None]
  dr = _sum_last(dg * m)
  # r = max(ss, eps)^-1/2  =>  dr/dt = -r^3 t where ss > eps.
  coef = tf.where(ss > EPS, -dr * r * r * r, 0.0)
  return dm, coef, ddiff


@tf.function(jit_compile=True)
def _hidden_grad(dt_mm, coef, t, columns, u, i_table, ids, us, is_table):
  """From dL/dt to dL/dx (= dL/dI per pair) and dL/d(us + is), one kernel.

  x and inv are recomputed from the (cache-resident) item table rather than
  stored: one pass over [pairs, 5K] fewer each way. With `columns`, t is the
  forward pass's [B, C, 5K] and the pairs are its `columns` [B, J] (read in
  place, not copied out first); `ids` are then those pairs' item rows.
  """
  t = _pick(t, columns)
  x = u + _gather(i_table, ids)
  sq = us + _gather(is_table, ids)
  inv = tf.math.rsqrt(tf.maximum(sq, EPS))
  dt = dt_mm + coef[..., None] * t
  ds = dt * (1.0 - t * t)
  dx = ds * inv[..., None]
  dinv = _sum_last(ds * x)
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


def _to_table(t, ids, table):
  """Gradient of a gather: per-pair rows summed into their table rows."""
  if ids is None:
    return _reduce_to(t, tf.shape(table))
  return sum_rows_into(t, ids, table)


def _forward(u, us, i, is_, p, q, b1, w2, b2, alpha, ids):
  """(d, and what the backward pass reads: t, m, r, ss)."""
  t, r, ss = _hidden(u, i, ids, us, is_, b1)
  m = _matmul_last(t, w2)
  return _head(m, r, b2, alpha, p, q, ids), (t, m, r, ss)


def _backward(dd, saved, columns, ids, inputs, w2, b2, alpha):
  """Gradients for the inputs (u, us, i, is, p, q) from dL/dd of the pairs
  at `columns` (all pairs when None) whose item rows are `ids`."""
  u, us, i, is_, p, q = inputs
  t, m, r, ss = saved
  dm, coef, ddiff = _head_grad(dd, _pick(m, columns), _pick(r, columns), b2,
                               alpha, p, q, ids, _pick(ss, columns))
  dt_mm = _matmul_last(dm, w2, transpose_b=True)
  dx, dsq = _hidden_grad(dt_mm, coef, t, columns, u, i, ids, us, is_)
  return (_reduce_to(dx, tf.shape(u)), _reduce_to(dsq, tf.shape(us)),
          _to_table(dx, ids, i), _to_table(dsq, ids, is_),
          _reduce_to(ddiff, tf.shape(p)), _to_table(-ddiff, ids, q))


def _block(user, item, p, q, b1, w2, b2, alpha, item_ids, hardest):
  """The block with its hand-derived gradient: d, or with `hardest` (d2, d)
  and the backward pass through the two pairs of d2 only."""
  b1, w2, b2 = (tf.convert_to_tensor(v) for v in (b1, w2, b2))

  @tf.custom_gradient
  def block(u, us, i, is_, p, q):
    d, saved = _forward(u, us, i, is_, p, q, b1, w2, b2, alpha, item_ids)
    inputs = (u, us, i, is_, p, q)
    if not hardest:
      return d, lambda dd: _backward(dd, saved, None, item_ids, inputs, w2,
                                     b2, alpha)
    closest = tf.argmin(d[:, 1:], axis=1, output_type=tf.int32) + 1
    columns = tf.stack([tf.zeros_like(closest), closest], 1)

    def grad(dd2, unused_dd):
      # d leaves through stop_gradient (hardest_attention_distance): its
      # upstream is zero.
      return _backward(dd2, saved, columns, _pick(item_ids, columns), inputs,
                       w2, b2, alpha)

    return (_pick(d, columns), d), grad

  return block(*user, *item, p, q)


def attention_distance(user, item, p, q, b1, w2, b2, alpha, item_ids=None):
  """d(u, i) for broadcastable halves; gradients flow to user, item, p, q.

  Args:
    user: (U [..., H], us [...]) the user half, broadcastable against item.
    item: (I, is) the item half: per pair ([..., H], [...]) when `item_ids`
      is None, else whole tables ([n, H], [n]) that `item_ids` [...] index
      (the gather then runs inside the fused kernels).
    p: [..., K] user embeddings, broadcastable against the items'.
    q: the items' embeddings: per pair [..., K] when `item_ids` is None,
      else a table [n, K] that `item_ids` index.
    b1, w2, b2: the attention's first bias, second kernel and bias (frozen).
    alpha: the softmax scale.
    item_ids: optional int [...] rows of the item tables.

  Returns:
    d [...]: the attentive squared distances.
  """
  return _block(user, item, p, q, b1, w2, b2, alpha, item_ids, hardest=False)


def hardest_attention_distance(user, item, p, q, b1, w2, b2, alpha, item_ids):
  """Every pair's d once, and the gradient of the two pairs a row's loss uses.

  For rows of a positive (column 0) and W negatives: the hinge of the
  embedding loss carries gradient through the positive and the closest
  negative only (`metric_losses.embedding_loss_hardest`). So the forward pass
  scores all 1 + W pairs, keeps its activations, and the backward pass runs
  for those two pairs alone, reading their activations in place.

  Args:
    user: (U [B, 1, H], us [B, 1]) the user half.
    item: (I [n, H], is [n]) item-half tables that `item_ids` index.
    p: [B, 1, K] user embeddings.
    q: [n, K] the items' embeddings, a table that `item_ids` index.
    b1, w2, b2, alpha: as in `attention_distance`.
    item_ids: int [B, 1 + W] rows of the item tables.

  Returns:
    d2 [B, 2]: d of the positive and of the closest negative, with gradient
      to user, item, p and q;
    d [B, 1 + W]: every pair's d, without gradient.
  """
  d2, d = _block(user, item, p, q, b1, w2, b2, alpha, item_ids, hardest=True)
  return d2, tf.stop_gradient(d)


def attention_distance_nograd(user, item, p, q, b1, w2, b2, alpha):
  """The same forward pass for scoring (no gradient bookkeeping)."""
  b1, w2, b2 = (tf.convert_to_tensor(v) for v in (b1, w2, b2))
  return _forward(*user, *item, p, q, b1, w2, b2, alpha, None)[0]
