"""The modality-preservation measure against a plain double-loop oracle."""

import math
import os
import re

import numpy as np
import pytest

from maml_tf import data as data_lib
from maml_tf.evaluate import preservation


def _cos(a, b):
  na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
  return 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def _oracle_gap(E, X):
  n = len(E)
  out = []
  for i in range(n):
    total = sum(abs(_cos(E[i], E[j]) - _cos(X[i], X[j])) for j in range(n) if j != i)
    out.append(total / (n - 1))
  return np.array(out)


@pytest.mark.parametrize("budget", [1 << 22, 20, 1])  # one block, 2 rows, 1 row
def test_gap_matches_the_double_loop(budget):
  rng = np.random.default_rng(0)
  E = rng.normal(size=(11, 4))
  X = rng.normal(size=(11, 6))
  X[3] = 0.0  # a zero feature row has cosine 0 with everything
  got = preservation.similarity_gap(E, X, budget=budget)
  np.testing.assert_allclose(got, _oracle_gap(E, X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gap_is_zero_for_features_themselves_and_scale_free():
  rng = np.random.default_rng(1)
  X = rng.normal(size=(9, 5))
  scaled = X * rng.uniform(0.5, 3.0, (9, 1))
  assert np.abs(preservation.similarity_gap(scaled, X)).max() < 1e-6
  assert preservation.similarity_gap(rng.normal(size=(9, 5)), X).mean() > 0.1


def test_high_degree_items_are_the_top_tenth_by_distinct_users():
  pairs = np.array([[0, 4], [1, 4], [2, 4], [0, 7], [1, 7], [0, 2], [0, 2], [0, 2]])
  # Item 4: 3 users; item 7: 2; item 2: 1 user (repeats counted once).
  np.testing.assert_array_equal(preservation.high_degree_items(pairs, 20), [4, 7])
  np.testing.assert_array_equal(preservation.high_degree_items(pairs, 5), [4])
  np.testing.assert_array_equal(preservation.high_degree_items(pairs, 20, 0.15), [2, 4, 7])


class _Fixed:
  def __init__(self, rows):
    self.rows = rows

  def item_representation(self):
    return self.rows


def test_report_per_modality_all_and_high_degree():
  rng = np.random.default_rng(2)
  n = 30
  train = np.stack([rng.integers(0, 12, 80), rng.integers(0, n, 80)], 1)
  feats = {"text": rng.normal(size=(n, 5)).astype(np.float32),
           "meta": rng.normal(size=(n, 3)).astype(np.float32)}
  ds = data_lib.from_arrays(train, None, features=feats, n_items=n)
  E = rng.normal(size=(n, 4)).astype(np.float32)
  report = preservation.preservation_report(_Fixed(E), ds)
  assert list(report) == ["text", "meta"]
  high = preservation.high_degree_items(ds.train, n)
  for name in feats:
    gap = _oracle_gap(E.astype(np.float64), feats[name].astype(np.float64))
    assert report[name]["all"] == pytest.approx(gap.mean(), rel=1e-5)
    assert report[name]["high_degree"] == pytest.approx(gap[high].mean(), rel=1e-5)
  # The text features themselves preserve text perfectly.
  assert preservation.preservation_report(_Fixed(feats["text"]), ds)["text"]["all"] < 1e-6


def test_the_module_names_no_model():
  path = os.path.join(os.path.dirname(preservation.__file__), "preservation.py")
  text = open(path).read().lower()
  for name in ("maml", "cml", "lrml", "lightgcn", "mario", "bpr"):
    assert not re.search(rf"\b{name}\b", text), name
