"""BPR-MF's initialisation: Xavier-normal per table by default (RecBole's
BPR; docs/recbole_comparison.md), N(0, s^2) for a given `init_stddev`, and
LightGCN (a subclass) still at its own 0.1.

The expected stddevs are computed here from the definition,
sqrt(2 / (fan_in + fan_out)) with fan_in = d and fan_out = rows of an
[rows, d] table, not read from the model code.
"""

import types

import keras
import numpy as np
import pytest

from maml_tf.models import mf as mf_lib
from maml_tf.models.lightgcn import LightGCN
from maml_tf.models.mf import MF


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def _glorot_std(rows, d):
  return np.sqrt(2.0 / (rows + d))


def _excess_kurtosis(x):
  x = x.ravel() - x.mean()
  return float(np.mean(x ** 4) / np.mean(x ** 2) ** 2 - 3.0)


def test_default_init_is_xavier_normal_on_each_tables_own_shape():
  m = MF(3000, 1000, embed_dim=32, seed=1)
  users, items = _np(m.user_embeddings), _np(m.item_embeddings)
  assert users.std() == pytest.approx(_glorot_std(3000, 32), rel=0.02)
  assert items.std() == pytest.approx(_glorot_std(1000, 32), rel=0.02)
  # The two tables differ in scale: users 0.0257, items 0.0440.
  assert items.std() / users.std() == pytest.approx(
      np.sqrt(3032 / 1032), rel=0.03)
  for table in (users, items):
    assert abs(table.mean()) < 0.05 * table.std()
    # A plain normal (torch's xavier_normal_), not a 2-sigma truncated one
    # (excess kurtosis ~ -0.6 there, as Keras's glorot_normal).
    assert abs(_excess_kurtosis(table)) < 0.1
  assert m.init_stddev is None
  assert m.user_table.embeddings_constraint is None


def test_a_float_init_stddev_draws_both_tables_with_it():
  m = MF(300, 400, embed_dim=32, init_stddev=0.1, seed=1)
  for table in (m.user_embeddings, m.item_embeddings):
    assert _np(table).std() == pytest.approx(0.1, rel=0.05)
  assert m.init_stddev == 0.1


def test_init_is_a_function_of_the_seed():
  a, b = (MF(50, 60, embed_dim=8, seed=5) for _ in range(2))
  c = MF(50, 60, embed_dim=8, seed=6)
  np.testing.assert_array_equal(_np(a.item_embeddings), _np(b.item_embeddings))
  np.testing.assert_array_equal(_np(a.user_embeddings), _np(b.user_embeddings))
  assert not np.allclose(_np(a.item_embeddings), _np(c.item_embeddings))


def test_the_run_config_builds_the_xavier_default():
  config = types.SimpleNamespace(embed_dim=16, l2_reg=1e-4, seed=0)
  dataset = types.SimpleNamespace(n_users=2000, n_items=800)
  m = MF.from_run_config(config, dataset)
  assert m.init_stddev is None
  assert _np(m.user_embeddings).std() == pytest.approx(
      _glorot_std(2000, 16), rel=0.03)
  assert _np(m.item_embeddings).std() == pytest.approx(
      _glorot_std(800, 16), rel=0.03)


def test_get_config_round_trip_keeps_the_default_and_a_float():
  for init in (None, 0.05):
    m = MF(40, 30, embed_dim=8, init_stddev=init, seed=3, name="mf")
    clone = MF.from_config(m.get_config())
    assert clone.get_config() == m.get_config()
    assert clone.init_stddev == init


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_bad_init_stddev_is_refused(bad):
  with pytest.raises(ValueError) as err:
    MF(10, 10, embed_dim=4, init_stddev=bad)
  assert str(err.value) == (
      f"`init_stddev` must be > 0. Received: init_stddev={bad!r}")


def test_lightgcn_keeps_its_own_normal_0_1():
  m = LightGCN(300, 400, embed_dim=32, seed=1)
  assert mf_lib.INIT_STDDEV == 0.1
  for table in (m.user_embeddings, m.item_embeddings):
    assert _np(table).std() == pytest.approx(0.1, rel=0.05)
