"""`maml_tf.export.retrieval`: the Euclidean TFRS index against a numpy oracle.

The index must rank exactly by -||p - q||^2 (its scores are that value), and
`nearest_excluding` must return the n nearest items a user does not know.
Importing TFRS needs tf.keras = Keras 2; the module must say so clearly when
Keras 3 got there first.
"""

import os
import subprocess
import sys

from maml_tf.export import retrieval  # first: it routes tf.keras to Keras 2 for TFRS

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _neg_sq_dist(p, q):
  return -((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)


@pytest.fixture(scope="module")
def tables():
  rng = np.random.default_rng(0)
  p = rng.normal(size=(6, 5)).astype(np.float32) * 0.4
  q = rng.normal(size=(13, 5)).astype(np.float32) * 0.4
  return p, q


def test_augmented_dot_product_is_negative_squared_distance(tables):
  p, q = tables
  dots = tf.matmul(retrieval.euclidean_queries(p),
                   retrieval.euclidean_candidates(q), transpose_b=True).numpy()
  np.testing.assert_allclose(dots, _neg_sq_dist(p, q), rtol=1e-5, atol=1e-5)
  # Hand example, K = 2: p = (1, 0), q = (0, 2): -||p - q||^2 = -5.
  hand = tf.matmul(retrieval.euclidean_queries([[1.0, 0.0]]),
                   retrieval.euclidean_candidates([[0.0, 2.0]]), transpose_b=True)
  assert float(hand[0, 0]) == pytest.approx(-5.0)


def test_index_is_a_tfrs_brute_force_with_exact_ranking(tables):
  p, q = tables
  index = retrieval.build_index(q)
  assert isinstance(index, retrieval.tfrs.layers.factorized_top_k.BruteForce)
  scores, ids = retrieval.nearest(index, p, 4)
  oracle = _neg_sq_dist(p, q)
  want = np.argsort(-oracle, axis=1, kind="stable")[:, :4]
  np.testing.assert_array_equal(ids.numpy(), want)
  np.testing.assert_allclose(scores.numpy(), np.take_along_axis(oracle, want, 1),
                             rtol=1e-5, atol=1e-5)
  # k beyond the catalogue is clipped to it.
  scores, ids = retrieval.nearest(index, p, 100)
  assert ids.shape == (6, 13)


def _known(lists, n_items):
  width = max(len(l) for l in lists) + 1
  out = np.full((len(lists), width), n_items, np.int32)
  for r, l in enumerate(lists):
    out[r, :len(l)] = sorted(l)
  return tf.constant(out)


def test_nearest_excluding_matches_the_oracle(tables):
  p, q = tables
  n_items = len(q)
  index = retrieval.build_index(q)
  oracle = _neg_sq_dist(p, q)
  order = np.argsort(-oracle, axis=1, kind="stable")
  known = [list(order[0, :3]),            # the 3 nearest are known
           [],                            # nothing known
           list(range(0, 13, 2)),         # every even item
           list(order[3, :11]),           # all but 2 items known
           [12],
           list(range(13))]               # everything known
  scores, ids = retrieval.nearest_excluding(index, p, _known(known, n_items), 4)
  scores, ids = scores.numpy(), ids.numpy()
  assert scores.shape == ids.shape == (6, 4)
  for u in range(6):
    free = [i for i in order[u] if i not in set(known[u])][:4]
    n = len(free)
    np.testing.assert_array_equal(ids[u, :n], free)
    np.testing.assert_allclose(scores[u, :n], oracle[u, free], rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(scores[u, n:]))
  assert np.all(np.isneginf(scores[5]))


def test_keras3_keeps_working_beside_tfrs():
  assert keras.__version__.startswith("3.")
  assert tf.keras.__name__.startswith("tf_keras.")  # Keras 2, for TFRS
  layer = keras.layers.Dense(2)
  assert layer(np.ones((1, 3), np.float32)).shape == (1, 2)


def _python(code):
  env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"),
         "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
  return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_import_leaves_the_environment_as_it_was():
  proc = _python("import os\n"
                 "import maml_tf.export.retrieval\n"
                 "import tensorflow as tf\n"
                 "print(os.environ.get('TF_USE_LEGACY_KERAS'), tf.keras.__name__)\n")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["None", "tf_keras.api._v2.keras"]


def test_clear_error_when_tf_keras_is_already_keras3():
  code = ("import tensorflow as tf\n"
          "tf.keras.layers  # resolves tf.keras to Keras 3\n"
          "import maml_tf.export.retrieval\n")
  proc = _python(code)
  assert proc.returncode != 0
  assert "ImportError" in proc.stderr
  assert "already resolved to Keras 3." in proc.stderr
  assert "TF_USE_LEGACY_KERAS=1" in proc.stderr
