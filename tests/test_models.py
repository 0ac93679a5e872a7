"""The model frame: the registry, the shared base, and CML vs MAML.

Every registered model is built from a run Config, trains a step through
the shared `train_step`, round-trips through `.keras`, reaches every
variable for the checkpoint, and scores items consistently between
`score_items` (evaluation), `score_pairs` and the serving tables.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import models
from maml_tf.train import checkpoint
from maml_tf import data
from maml_tf.models import layers
from maml_tf.config import Config
from maml_tf.models.cml import CML
from maml_tf.models.maml import MAML


def _dataset(n_users=12, n_items=9, seed=0):
  rng = np.random.default_rng(seed)
  pairs = np.unique(np.stack([rng.integers(0, n_users, 80),
                              rng.integers(0, n_items, 80)], 1), axis=0)
  pairs = pairs[rng.permutation(len(pairs))]
  feats = {"text": rng.normal(size=(n_items, 6)).astype(np.float32),
           "meta": rng.normal(size=(n_items, 3)).astype(np.float32)}
  return data.from_arrays(pairs[:50], pairs[50:], features=feats,
                          n_users=n_users, n_items=n_items)


def _config(name):
  spec = models.spec(name)
  return Config(model=name, embed_dim=4, hidden_layer_dim=8, batch_size=8,
                num_neg=1 if spec.one_negative else 3, memory_slots=3, seed=0,
                lattice_knn_k=3)  # the tiny catalogue has 9 items


def _batch(ds, num_neg, seed=0):
  rng = np.random.default_rng(seed)
  rows = ds.train[rng.choice(len(ds.train), 8, replace=False)]
  negs = rng.integers(0, ds.n_items, (8, num_neg))
  return (tf.constant(rows[:, 0], tf.int32),
          tf.constant(np.concatenate([rows[:, 1:], negs], 1), tf.int32))


def test_registry_names_and_errors():
  assert set(models.NAMES) >= {"maml", "cml", "lrml"}
  for name in models.NAMES:
    cls = models.get(name)
    assert issubclass(cls, models.base.RankingModel)
    assert cls.NAME == name
  with pytest.raises(ValueError, match=r"`model` must be one of .*Received: 'bpr'"):
    models.spec("bpr")


@pytest.mark.parametrize("name", models.NAMES)
def test_every_model_trains_saves_and_scores(name, tmp_path):
  ds = _dataset()
  config = _config(name)
  model = models.build(config, ds)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  users, items = _batch(ds, config.num_neg)
  before = [np.array(v) for v in model.trainable_variables]
  logs = model.train_on_batch(users, items, return_dict=True)
  assert set(model.loss_names) <= set(logs) and np.isfinite(logs["loss"])
  moved = [not np.array_equal(b, np.array(v))
           for b, v in zip(before, model.trainable_variables)]
  assert any(moved)
  if model.clip_norm is not None:  # the constraint ran after the update
    for table in (model.user_embeddings, model.item_embeddings):
      assert np.linalg.norm(np.array(table), axis=1).max() <= model.clip_norm + 1e-5

  # Every variable reached by the checkpoint, under unique names.
  names = checkpoint.model_variables(model)
  assert len({id(v) for v in names.values()}) == len(names)

  # Scoring agrees: evaluation, pairs, serving tables.
  all_users = tf.range(ds.n_users, dtype=tf.int32)
  full = np.asarray(model.score_items(all_users))
  grid = tf.tile(tf.range(ds.n_items, dtype=tf.int32)[None], [ds.n_users, 1])
  pairs = np.asarray(model.score_pairs(all_users, grid))
  np.testing.assert_allclose(full, pairs, rtol=1e-4, atol=1e-5)
  tables = model.serving_tables()
  np.testing.assert_allclose(np.asarray(model.serve_items(tables, all_users)), full,
                             rtol=1e-4, atol=1e-5)
  scores, explanation = model.score_pairs(all_users[:5], tf.constant([0, 1, 2, 3, 4]),
                                          explain=True)
  np.testing.assert_allclose(np.asarray(scores), full[np.arange(5), np.arange(5)],
                             rtol=1e-4, atol=1e-5)
  assert explanation is None or explanation.shape[0] == 5

  # .keras round trip: same class, config and scores.
  path = str(tmp_path / f"{name}.keras")
  model.save(path)
  again = keras.models.load_model(path)
  assert type(again) is type(model) and again.get_config() == model.get_config()
  np.testing.assert_allclose(np.asarray(again.score_items(all_users)), full, rtol=1e-6)


def test_cml_equals_maml_without_attention_or_features():
  ds = _dataset()
  config = _config("cml")
  cml = models.build(config, ds)
  maml = MAML(ds.n_users, ds.n_items, feature_dim=0, embed_dim=4,
              attention="none", seed=0)
  # Same seed, same table draws in the same order: the same initial tables.
  np.testing.assert_array_equal(np.array(cml.user_embeddings), np.array(maml.user_embeddings))
  np.testing.assert_array_equal(np.array(cml.item_embeddings), np.array(maml.item_embeddings))
  users, items = _batch(ds, 3)
  a, b = cml.loss_terms(users, items), maml.loss_terms(users, items)
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-6)
  u = tf.range(ds.n_users, dtype=tf.int32)
  np.testing.assert_allclose(np.asarray(cml.score_items(u)), np.asarray(maml.score_items(u)),
                             rtol=1e-6)


def test_table_embedding_layer():
  layer = layers.TableEmbedding(5, 3, stddev=0.5, clip_norm=1.0, seed=3)
  layer.build()
  clone = layers.TableEmbedding.from_config(layer.get_config())
  clone.build()
  np.testing.assert_array_equal(np.array(layer.embeddings), np.array(clone.embeddings))
  big = np.full((5, 3), 10.0, np.float32)
  clipped = np.asarray(layer.embeddings_constraint(big))
  np.testing.assert_allclose(np.linalg.norm(clipped, axis=1), 1.0, rtol=1e-6)
  free = layers.TableEmbedding(5, 3, clip_norm=None)
  assert free.embeddings_constraint is None
  with pytest.raises(ValueError, match=r"`rows` and `dim` must be >= 1. Received: rows=0"):
    layers.TableEmbedding(0, 3)
  with pytest.raises(ValueError, match=r"`stddev` must be > 0. Received: stddev=0"):
    layers.TableEmbedding(2, 3, stddev=0)


def test_base_rejects_bad_sizes():
  with pytest.raises(ValueError, match=r"`embed_dim` must be an integer > 0. Received: embed_dim=0"):
    CML(3, 4, embed_dim=0)
  with pytest.raises(ValueError, match=r"`margin` must be > 0. Received: margin=-1"):
    CML(3, 4, margin=-1)


def test_uses_features_comes_from_the_registry():
  assert Config(model="maml").uses_features
  assert not Config(model="cml").uses_features
  assert not dataclasses.replace(Config(), model="lrml").uses_features
