"""Independent numpy oracles for what the MAML release computes.

Written from `SPEC.md` alone (sections 2, 3 and 5), never from the package's
code, so that the tests comparing the two catch a misreading on either side.
Everything is float64 and deliberately plain: loops where they make the
arithmetic easy to check by eye, no vectorisation tricks.

Conventions (TensorFlow semantics, which the release relies on):
- `l2norm_rows`: x / sqrt(max(sum x^2, 1e-12)), as `tf.math.l2_normalize`.
- `clip_by_norm_rows`: x * c / max(||x||, c) per row, as `tf.clip_by_norm`
  applied to each row; a zero row stays zero.
- Dense layers compute x @ kernel + bias with kernel of shape [in, out].
"""

import math

import numpy as np

L2_EPSILON = 1e-12


def _as_f64(x):
  return np.asarray(x, dtype=np.float64)


def l2norm_rows(x):
  """Each row (last axis) divided by sqrt(max(sum of squares, 1e-12))."""
  x = _as_f64(x)
  square_sum = np.sum(x * x, axis=-1, keepdims=True)
  return x / np.sqrt(np.maximum(square_sum, L2_EPSILON))


def clip_by_norm_rows(x, clip_norm):
  """Each row scaled by c / max(||row||, c): rows already inside are kept."""
  x = _as_f64(x)
  out = np.empty_like(x)
  rows = x.reshape(-1, x.shape[-1])
  flat_out = out.reshape(-1, x.shape[-1])
  for r in range(rows.shape[0]):
    norm = math.sqrt(float(np.sum(rows[r] * rows[r])))
    flat_out[r] = rows[r] * clip_norm / max(norm, clip_norm)
  return out


def relu(x):
  return np.maximum(_as_f64(x), 0.0)


def softmax_rows(x):
  x = _as_f64(x)
  shifted = x - np.max(x, axis=-1, keepdims=True)
  e = np.exp(shifted)
  return e / np.sum(e, axis=-1, keepdims=True)


def dense(x, kernel, bias):
  """x @ kernel + bias, kernel [in, out]."""
  return _as_f64(x) @ _as_f64(kernel) + _as_f64(bias)


def fusion(x_text_and_image_concat, weights, scaling=1.0, clip_norm=1.0):
  """docs/spec.md §2.2: the feature-fusion MLP over all items.

  Args:
    x_text_and_image_concat: [n, d] raw features, text columns first.
    weights: four (kernel, bias) pairs, for Dense_H, Dense_H/2, Dense_H/2 and
      the linear Dense_K output layer, in that order.
    scaling: s, the output is multiplied by it before clipping.
    clip_norm: c, rows of the result have norm <= c.

  Returns:
    F, [n, K].
  """
  (k1, b1), (k2, b2), (k3, b3), (k4, b4) = weights
  x = l2norm_rows(x_text_and_image_concat)  # one joint normalisation
  h1 = relu(dense(x, k1, b1))
  h2 = relu(dense(l2norm_rows(h1), k2, b2))
  h3 = relu(dense(l2norm_rows(h2), k3, b3))
  out = dense(h3, k4, b4)  # linear
  return clip_by_norm_rows(out * scaling, clip_norm)


def attention(p, q, f, W1, b1, W2, b2, alpha):
  """docs/spec.md §2.3: per-pair attention vectors a [N, K].

  z = l2norm([p; q; f]) (or l2norm([p; q]) when f is None),
  a1 = tanh(Dense_5K(z)), a2 = relu(Dense_K(l2norm(a1))),
  a = alpha * softmax(a2) over the K components.
  """
  parts = [_as_f64(p), _as_f64(q)]
  if f is not None:
    parts.append(_as_f64(f))
  z = l2norm_rows(np.concatenate(parts, axis=-1))
  a1 = np.tanh(dense(z, W1, b1))
  a2 = relu(dense(l2norm_rows(a1), W2, b2))
  return alpha * softmax_rows(a2)


def distance(a, p, q):
  """docs/spec.md §2.4: d = sum_k (a_k p_k - a_k q_k)^2 per row; a=None is CML."""
  p = _as_f64(p)
  q = _as_f64(q)
  if a is None:
    diff = p - q
  else:
    a = _as_f64(a)
    diff = a * p - a * q
  return np.sum(diff * diff, axis=-1)


def warp_rank(d_pos, d_neg, margin, n_items):
  """docs/spec.md §3: rank = mean_j[d_pos - d_neg_j + m > 0] * |I| (strict >)."""
  d_pos = _as_f64(d_pos)
  d_neg = _as_f64(d_neg)
  batch, n_neg = d_neg.shape
  rank = np.zeros(batch)
  for b in range(batch):
    violations = 0
    for j in range(n_neg):
      if d_pos[b] - d_neg[b, j] + margin > 0:
        violations += 1
    rank[b] = violations / n_neg * n_items
  return rank


def embedding_loss(d_pos, d_neg, margin, n_items, use_rank_weight=True):
  """docs/spec.md §3: sum over the batch of hinge(closest negative) * log(rank + 1)."""
  d_pos = _as_f64(d_pos)
  d_neg = _as_f64(d_neg)
  ranks = warp_rank(d_pos, d_neg, margin, n_items)
  total = 0.0
  for b in range(d_pos.shape[0]):
    hinge = max(d_pos[b] - np.min(d_neg[b]) + margin, 0.0)
    weight = math.log(ranks[b] + 1.0) if use_rank_weight else 1.0
    total += hinge * weight
  return total


def embedding_loss_grads(d_pos, d_neg, margin, n_items, use_rank_weight=True):
  """Gradients of `embedding_loss` w.r.t. d_pos and d_neg, rank held fixed.

  Only the closest negative (first one on ties, as argmin) receives gradient;
  pairs whose hinge is inactive receive none.
  """
  d_pos = _as_f64(d_pos)
  d_neg = _as_f64(d_neg)
  ranks = warp_rank(d_pos, d_neg, margin, n_items)
  g_pos = np.zeros_like(d_pos)
  g_neg = np.zeros_like(d_neg)
  for b in range(d_pos.shape[0]):
    j = int(np.argmin(d_neg[b]))
    if d_pos[b] - d_neg[b, j] + margin > 0:
      weight = math.log(ranks[b] + 1.0) if use_rank_weight else 1.0
      g_pos[b] = weight
      g_neg[b, j] = -weight
  return g_pos, g_neg


def feature_loss(Q, F, weight):
  """docs/spec.md §3: lambda_f * sum over all items of ||q_i - F_i||^2."""
  diff = _as_f64(Q) - _as_f64(F)
  return weight * float(np.sum(diff * diff))


def covariance_loss(Q, P, weight):
  """docs/spec.md §3: lambda_c * (sum(C) - trace(C)), C the covariance of [Q; P]."""
  X = np.concatenate([_as_f64(Q), _as_f64(P)], axis=0)
  n_rows, dim = X.shape
  X = X - X.mean(axis=0, keepdims=True)
  C = np.zeros((dim, dim))
  for r in range(n_rows):
    C += np.outer(X[r], X[r])
  C /= n_rows
  return weight * (float(np.sum(C)) - float(np.trace(C)))


def adam_step(var, grad, m, v, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
  """One Adam update in the TF1 / Keras "epsilon hat" form.

  t is the 1-based index of this step. Returns (var, m, v) after the step.
  """
  var = _as_f64(var)
  grad = _as_f64(grad)
  m = b1 * _as_f64(m) + (1.0 - b1) * grad
  v = b2 * _as_f64(v) + (1.0 - b2) * grad * grad
  lr_t = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
  var = var - lr_t * m / (np.sqrt(v) + eps)
  return var, m, v


def user_metrics(ranked_items_after_exclusion, test_items, k):
  """docs/spec.md §5 for one user.

  Args:
    ranked_items_after_exclusion: item ids best first, train items already
      dropped (at least the first k are used).
    test_items: the user's test item ids (non-empty).
    k: cut-off.

  Returns:
    dict with ndcg, recall, hr, precision.
  """
  test = set(int(i) for i in test_items)
  top = [int(i) for i in ranked_items_after_exclusion][:k]
  dcg = 0.0
  hits = 0
  for pos, item in enumerate(top):
    if item in test:
      hits += 1
      dcg += 1.0 / math.log2(pos + 2)
  idcg = 0.0
  for pos in range(min(len(test), k)):
    idcg += 1.0 / math.log2(pos + 2)
  return {
      "ndcg": dcg / idcg,
      "recall": hits / len(test),
      "hr": 1.0 if hits > 0 else 0.0,
      "precision": hits / k,
  }


def rank_excluding(scores_row, exclude):
  """Item ids by descending score, ties to the lower id, `exclude` dropped."""
  excluded = set(int(i) for i in exclude)
  order = sorted(range(len(scores_row)),
                 key=lambda i: (-float(scores_row[i]), i))
  return [i for i in order if i not in excluded]


def evaluate(scores, train_items, test_items, k):
  """docs/spec.md §5 over all users: mean of `user_metrics` over users with tests.

  Args:
    scores: [U, I], higher is better (the model's -d).
    train_items: per user, the ids to drop before ranking.
    test_items: per user, the held-out ids (users with none are skipped).
    k: cut-off.
  """
  scores = _as_f64(scores)
  totals = {"ndcg": 0.0, "recall": 0.0, "hr": 0.0, "precision": 0.0}
  n_users = 0
  for u in range(scores.shape[0]):
    if len(test_items[u]) == 0:
      continue
    ranked = rank_excluding(scores[u], train_items[u])
    for name, value in user_metrics(ranked, test_items[u], k).items():
      totals[name] += value
    n_users += 1
  return {name: total / n_users for name, total in totals.items()}


# ------------------------------------------------------------------- LRML
# Written from SPEC_LRML.md: s = p * q, beta = softmax(s K^T) over the N
# memory slots, r = beta M, D = ||p + r - q||^2; the hinge
# max(0, m + D(u, i+) - D(u, i-)) summed, the negative reusing the positive
# pair's r in the authors' code.


def lrml_relation(p, q, keys, memory):
  """r for one pair: p, q [d]; keys, memory [N, d]."""
  p, q, keys, memory = map(_as_f64, (p, q, keys, memory))
  logits = [float(np.dot(p * q, keys[n])) for n in range(len(keys))]
  top = max(logits)
  weights = [math.exp(x - top) for x in logits]
  total = sum(weights)
  beta = [w / total for w in weights]
  r = np.zeros(len(p))
  for n, b in enumerate(beta):
    r = r + b * memory[n]
  return r, np.array(beta)


def lrml_distance(p, q, r, distance="l2"):
  """sqrt(||p + r - q||^2 + 1e-3) for one pair (the authors' code);
  "squared": ||p + r - q||^2; "l1": the sum of |p + r - q|."""
  diff = _as_f64(p) + _as_f64(r) - _as_f64(q)
  if distance == "l1":
    return float(sum(abs(x) for x in diff))
  squared = float(sum(x * x for x in diff))
  return math.sqrt(squared + 1e-3) if distance == "l2" else squared


def lrml_loss(P, Q, keys, memory, users, pos, neg, margin, shared_relation=True,
              distance="l2"):
  """Sum over the batch of max(0, m + D(u, i+) - D(u, i-))."""
  total = 0.0
  for u, i, j in zip(users, pos, neg):
    r_pos, _ = lrml_relation(P[u], Q[i], keys, memory)
    r_neg = r_pos if shared_relation else lrml_relation(P[u], Q[j], keys, memory)[0]
    d_pos = lrml_distance(P[u], Q[i], r_pos, distance)
    d_neg = lrml_distance(P[u], Q[j], r_neg, distance)
    total += max(0.0, margin + d_pos - d_neg)
  return total


# ------------------------------------------------ BPR-MF, LightGCN, MARIO
# Written from MARIO's talk and the definitions (BPR = mean over the
# batch of -ln sigmoid(r_pos - r_neg); L2 = lambda * sum of the batch's
# squared ego rows / (2 B); LightGCN: A_hat = D^-1/2 A D^-1/2 over the
# deduplicated train pairs, the mean of the L + 1 layer outputs).


def log_sigmoid(x):
  x = float(x)
  return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x):
  return 1.0 / (1.0 + math.exp(-float(x)))


def bpr_loss(r_pos, r_neg):
  """mean over the batch of -ln sigmoid(r_pos - r_neg)."""
  terms = [-log_sigmoid(a - b) for a, b in zip(r_pos, r_neg)]
  return sum(terms) / len(terms)


def batch_l2(P, Q, users, pos, neg, weight):
  """weight * sum_b (||P_u||^2 + ||Q_i||^2 + ||Q_j||^2) / (2 B)."""
  P, Q = _as_f64(P), _as_f64(Q)
  total = 0.0
  for u, i, j in zip(users, pos, neg):
    total += float(P[u] @ P[u] + Q[i] @ Q[i] + Q[j] @ Q[j])
  return weight * total / (2.0 * len(users))


def mf_loss_and_grads(P, Q, users, pos, neg, weight):
  """(bpr, l2, dLoss/dP, dLoss/dQ) of BPR-MF, the gradient by hand:
  d/dr_pos of -ln sigmoid(r_pos - r_neg) = -(1 - sigmoid(r_pos - r_neg))."""
  P, Q = _as_f64(P), _as_f64(Q)
  B = len(users)
  gP, gQ = np.zeros_like(P), np.zeros_like(Q)
  r_pos = [float(P[u] @ Q[i]) for u, i in zip(users, pos)]
  r_neg = [float(P[u] @ Q[j]) for u, j in zip(users, neg)]
  for b, (u, i, j) in enumerate(zip(users, pos, neg)):
    c = -(1.0 - sigmoid(r_pos[b] - r_neg[b])) / B
    gP[u] += c * (Q[i] - Q[j])
    gQ[i] += c * P[u]
    gQ[j] -= c * P[u]
    gP[u] += weight * P[u] / B
    gQ[i] += weight * Q[i] / B
    gQ[j] += weight * Q[j] / B
  return (bpr_loss(r_pos, r_neg), batch_l2(P, Q, users, pos, neg, weight),
          gP, gQ)


def lightgcn_adjacency(pairs, n_users, n_items):
  """Dense A_hat [U + I, U + I] (users first), duplicates counted once."""
  n = n_users + n_items
  A = np.zeros((n, n))
  for u, i in pairs:
    A[u, n_users + i] = 1.0
    A[n_users + i, u] = 1.0
  deg = A.sum(1)
  inv = np.array([1.0 / math.sqrt(d) if d > 0 else 0.0 for d in deg])
  return inv[:, None] * A * inv[None, :]


def lightgcn_propagate(A_hat, P, Q, layers):
  """(users, items) = mean over l = 0..L of A_hat^l [P; Q]."""
  E = np.concatenate([_as_f64(P), _as_f64(Q)])
  total, x = E.copy(), E
  for _ in range(layers):
    x = A_hat @ x
    total = total + x
  total = total / (layers + 1)
  return total[:len(P)], total[len(P):]


def mario_attention(u, E, W, b, v):
  """Softmax over m of v . tanh(W^T [u; e_m] + b) for one pair:
  u [d], E [M, d], W [2d, h] (user rows first), b [h], v [h]."""
  logits = []
  for e in _as_f64(E):
    h = np.tanh(np.concatenate([_as_f64(u), e]) @ _as_f64(W) + _as_f64(b))
    logits.append(float(h @ _as_f64(v)))
  return softmax_rows(np.array(logits))


def mario_fuse(u, E, fusion, W=None, b=None, v=None, fc_kernel=None, fc_bias=None):
  """e_ij [d] of one pair under the fusion (attention, mean, max, fc)."""
  E = _as_f64(E)
  if fusion == "attention":
    a = mario_attention(u, E, W, b, v)
    return sum(a[m] * E[m] for m in range(len(E)))
  if fusion == "mean":
    return E.mean(0)
  if fusion == "max":
    return E.max(0)
  return dense(E.reshape(-1), fc_kernel, fc_bias)


def l1_mean(x_hat, x):
  """mean over every entry of |x_hat - x|."""
  return float(np.mean(np.abs(_as_f64(x_hat) - _as_f64(x))))
