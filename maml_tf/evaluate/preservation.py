"""How well a model's item embeddings preserve the item features.

The measure of Kim et al.'s talk (CIKM 2022, "modality preservation"):
for every item i, the cosine similarities with every other item
j != i from the model's final item embeddings (f-similarities) and from the
pre-trained features of one modality (p-similarities); the item's gap is the
mean over j of |f(i, j) - p(i, j)|. Reported: the mean gap over all items,
and over the high-degree items. Smaller is better.

Our choices, written down:
- "final item embeddings" are whatever the model's `item_representation()`
  returns (the item table by default; each model says what it returns);
- cosines of the raw vectors (no centring); a zero vector has cosine 0 with
  everything;
- high-degree items: the top 10% of the catalogue by train degree (number
  of distinct train users), at least one item, ties to the lower id.

Computed in blocks of rows: memory is a few [block, n_items] float32
matrices (`budget` floats each), never n_items x n_items, so 2,406 items take
a fraction of a second and 100k items stream through.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

HIGH_DEGREE_FRACTION = 0.1


def unit_rows(x) -> np.ndarray:
  """Rows scaled to norm 1 (zero rows stay zero), float32."""
  x = np.asarray(x, np.float32)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(norms > 0, norms, 1.0)


def similarity_gap(embeddings, features, budget=1 << 22) -> np.ndarray:
  """Per item: mean over j != i of |cos(e_i, e_j) - cos(x_i, x_j)|, [n].

  Args:
    embeddings: [n, d] item embeddings.
    features: [n, d_m] item features of one modality (same row order).
    budget: the most floats one block's similarity matrix holds.
  """
  e, x = unit_rows(embeddings), unit_rows(features)
  n = e.shape[0]
  if x.shape[0] != n:
    raise ValueError(f"`features` must have one row per item ({n}). Received: "
                     f"{x.shape[0]} rows")
  if n < 2:
    raise ValueError(f"`embeddings` must have at least 2 items. Received: {n}")
  block = int(max(1, min(n, budget // n)))
  gap = np.empty(n, np.float64)
  for start in range(0, n, block):
    stop = min(n, start + block)
    diff = np.abs(e[start:stop] @ e.T - x[start:stop] @ x.T)
    rows = np.arange(stop - start)
    diff[rows, start + rows] = 0.0  # j != i
    gap[start:stop] = diff.sum(1, dtype=np.float64) / (n - 1)
  return gap


def high_degree_items(train_pairs, n_items, fraction=HIGH_DEGREE_FRACTION) -> np.ndarray:
  """Ids of the top `fraction` of items by train degree (distinct users)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
  pairs = np.unique(np.asarray(train_pairs, np.int64).reshape(-1, 2), axis=0)
  degree = np.bincount(pairs[:, 1], minlength=n_items)
  count = max(1, int(round(fraction * n_items)))
  return np.sort(np.argsort(-degree, kind="stable")[:count])


def preservation_report(model, dataset, fraction=HIGH_DEGREE_FRACTION
                        ) -> Dict[str, Dict[str, float]]:
  """{modality: {"all": mean gap, "high_degree": mean gap of the top
  `fraction` items by train degree}} for every modality of `dataset`."""
  embeddings = np.asarray(model.item_representation(), np.float32)
  high = high_degree_items(dataset.train, dataset.n_items, fraction)
  report = {}
  for name, features in dataset.features.items():
    gap = similarity_gap(embeddings, features)
    report[name] = {"all": float(gap.mean()), "high_degree": float(gap[high].mean())}
  return report
