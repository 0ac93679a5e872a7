"""How concentrated a model's explanation weights are, measured per round.

A model that explains its scores (`model.explains`) returns, for each
(user, item) pair, non-negative weights over E columns: attention over
embedding dimensions, memory slots or modalities. Whether training makes
those weights selective or leaves them near uniform is the first question
to ask of an attention that does not help, so every evaluation round of such
a model records, over a fixed sample of train pairs:

  p = w / sum(w)                 each pair's weights as a distribution
  entropy       mean of -sum p ln p          (ln E when uniform)
  entropy_ratio mean of entropy / ln E       (1 uniform, 0 one column)
  max_weight    mean of max p                (1/E uniform, 1 one column)
  l1_from_uniform mean of sum |p - 1/E|      (0 uniform, 2 (1 - 1/E) one column)
  pair_spread   mean over columns of the sd of p over pairs (0: the same
                weights for every pair, i.e. no personalisation)
  share/<label> mean of p in that column, for models whose columns are named

`explanation_report(model, pairs)` computes it ({} for an explanation of
one column, which has nothing to measure); the training loop records it
in `metrics.jsonl` as each round's "explanation" and in TensorBoard as
`explanation/<key>`.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

SAMPLE_PAIRS = 2048
SAMPLE_SEED = 0


def concentration(weights) -> Dict[str, float]:
  """The statistics above of weights [n, E] (non-negative, rows not all 0)."""
  w = np.asarray(weights, np.float64)
  if w.ndim != 2 or w.shape[1] < 2 or not len(w):
    raise ValueError(f"`weights` must have shape [n >= 1, E >= 2]. Received: "
                     f"shape={w.shape}")
  if (w < 0).any() or not np.isfinite(w).all():
    raise ValueError("`weights` must be finite and non-negative")
  total = w.sum(1, keepdims=True)
  if (total <= 0).any():
    raise ValueError("`weights`: every row must have a positive sum")
  e = w.shape[1]
  p = w / total
  logp = np.log(np.where(p > 0, p, 1.0))
  entropy = -(p * logp).sum(1)
  return {
      "entropy": float(entropy.mean()),
      "entropy_ratio": float((entropy / np.log(e)).mean()),
      "max_weight": float(p.max(1).mean()),
      "l1_from_uniform": float(np.abs(p - 1.0 / e).sum(1).mean()),
      "pair_spread": float(p.std(0).mean()),
  }


def sample_pairs(pairs, n=SAMPLE_PAIRS, seed=SAMPLE_SEED) -> np.ndarray:
  """A fixed sample (the same every round) of at most n rows of pairs."""
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  if len(pairs) <= n:
    return pairs
  rng = np.random.default_rng(seed)
  return pairs[np.sort(rng.choice(len(pairs), n, replace=False))]


def explanation_report(model, pairs) -> Dict[str, float]:
  """`concentration` of the model's explanation of `pairs` [n, 2], plus the
  mean share of each named column ("share/<label>")."""
  _, weights = model.score_pairs(tf.constant(pairs[:, 0], tf.int32),
                                 tf.constant(pairs[:, 1], tf.int32),
                                 explain=True)
  weights = np.asarray(weights)
  if weights.ndim != 2 or weights.shape[1] < 2:
    return {}  # one column (e.g. a single memory slot): nothing to measure
  out = concentration(weights)
  labels = model.explanation_labels
  if labels:
    p = weights / weights.sum(1, keepdims=True)
    for j, label in enumerate(labels):
      out[f"share/{label}"] = float(p[:, j].mean())
  return out
