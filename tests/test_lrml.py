"""LRML: the memory layer's round trip, its distance and loss against the
numpy oracle, a train step, and the CLI end to end (train, export, serve)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.models.lrml import LRML, MemoryRelation, relation_distance
from tests import oracles

N_USERS, N_ITEMS, K, SLOTS = 7, 9, 4, 3


def _model(negative_relation="positive", seed=0, distance=None):
  keras.utils.set_random_seed(seed)
  extra = {} if distance is None else {"distance": distance}  # None: the default
  m = LRML(N_USERS, N_ITEMS, embed_dim=K, memory_slots=SLOTS, margin=0.5,
           negative_relation=negative_relation, seed=seed, **extra)
  m.compile(optimizer=keras.optimizers.Adam(1e-2, epsilon=1e-8))
  return m


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def test_memory_layer_round_trip():
  layer = MemoryRelation(slots=SLOTS, embed_dim=K, seed=3, name="rel")
  layer.build()
  clone = MemoryRelation.from_config(layer.get_config())
  clone.build()
  assert clone.get_config() == layer.get_config()
  clone.set_weights(layer.get_weights())
  p = np.random.default_rng(0).normal(size=(5, K)).astype(np.float32)
  q = np.random.default_rng(1).normal(size=(5, K)).astype(np.float32)
  np.testing.assert_allclose(clone(p, q), layer(p, q), rtol=1e-6)
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
  assert isinstance(restored, MemoryRelation) and restored.slots == SLOTS


def test_distance_and_attention_match_the_oracle():
  m = _model()
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  keys, memory = _np(m.relation.keys), _np(m.relation.memory)
  users = np.array([0, 3, 6], np.int32)
  items = np.array([[1, 2, 8], [0, 4, 5], [7, 7, 3]], np.int32)
  d = m.pair_distances(tf.constant(users), tf.constant(items)).numpy()
  scores = m.score_items(tf.constant(users), item_chunk=4).numpy()
  beta = m.pair_attention(tf.constant(users), tf.constant(items[:, 0])).numpy()
  for row, u in enumerate(users):
    for col, i in enumerate(items[row]):
      r, b = oracles.lrml_relation(P[u], Q[i], keys, memory)
      assert d[row, col] == pytest.approx(oracles.lrml_distance(P[u], Q[i], r), rel=1e-5)
      if col == 0:
        np.testing.assert_allclose(beta[row], b, rtol=1e-5)
    for i in range(N_ITEMS):
      r, _ = oracles.lrml_relation(P[u], Q[i], keys, memory)
      assert scores[row, i] == pytest.approx(-oracles.lrml_distance(P[u], Q[i], r),
                                             rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("negative_relation, distance", [
    ("positive", None), ("own", None), ("positive", "squared"),
    ("own", "squared"), ("positive", "l1")])
def test_loss_matches_the_oracle(negative_relation, distance):
  m = _model(negative_relation, distance=distance)
  rng = np.random.default_rng(2)
  users = rng.integers(0, N_USERS, 12).astype(np.int32)
  items = rng.integers(0, N_ITEMS, (12, 2)).astype(np.int32)
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  expected = oracles.lrml_loss(
      _np(m.user_embeddings), _np(m.item_embeddings), _np(m.relation.keys),
      _np(m.relation.memory), users, items[:, 0], items[:, 1], 0.5,
      shared_relation=negative_relation == "positive", distance=distance or "l2")
  assert expected > 0
  assert float(terms["embedding_loss"]) == pytest.approx(expected, rel=1e-5)
  assert float(terms["loss"]) == float(terms["embedding_loss"])
  assert set(terms) == {"loss", "embedding_loss"}


@pytest.mark.parametrize("distance", ["squared", "l1"])
def test_the_other_distances_score_against_the_oracle(distance):
  m = _model(distance=distance)
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  keys, memory = _np(m.relation.keys), _np(m.relation.memory)
  users = np.array([0, 4], np.int32)
  scores = m.score_items(tf.constant(users), item_chunk=4).numpy()
  pairs, _ = m.score_pairs(tf.constant(users), tf.constant([3, 8], tf.int32),
                           explain=True)
  for row, u in enumerate(users):
    for i in range(N_ITEMS):
      r, _ = oracles.lrml_relation(P[u], Q[i], keys, memory)
      assert scores[row, i] == pytest.approx(
          -oracles.lrml_distance(P[u], Q[i], r, distance), rel=1e-5)
  assert pairs.numpy()[1] == pytest.approx(scores[1, 8], rel=1e-5)
  clone = LRML.from_config(m.get_config())
  assert clone.distance == distance
  with pytest.raises(ValueError, match="`distance` must be l2, l1 or squared"):
    LRML(3, 3, distance="cosine")


def test_the_two_negative_relations_differ():
  users = tf.constant([0, 1, 2, 3], tf.int32)
  items = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]], tf.int32)
  a = float(_model("positive").loss_terms(users, items)["loss"])
  b = float(_model("own").loss_terms(users, items)["loss"])
  assert a != pytest.approx(b, rel=1e-6)


def test_train_step_moves_embeddings_and_memory_and_clips_rows():
  m = _model()
  before = {v.path: _np(v) for v in m.trainable_variables}
  assert len(before) == 4  # P, Q, keys, memory
  users = tf.constant([0, 1, 2, 3, 4, 5], tf.int32)
  items = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8], [0, 1], [2, 3]], tf.int32)
  for _ in range(5):
    logs = m.train_step((users, items))
  assert set(logs) == {"loss", "embedding_loss"}
  for v in m.trainable_variables:
    assert not np.allclose(_np(v), before[v.path]), v.path
  for table in (m.user_embeddings, m.item_embeddings):
    assert np.linalg.norm(_np(table), axis=1).max() <= 1.0 + 1e-6


def test_diagnostics_match_numpy():
  m = _model()
  pairs = np.array([[0, 1], [2, 7], [5, 3], [6, 0]])
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  keys, memory = _np(m.relation.keys), _np(m.relation.memory)
  r = np.stack([oracles.lrml_relation(P[u], Q[i], keys, memory)[0] for u, i in pairs])
  out = m.diagnostics(pairs)
  assert out["relation_norm"] == pytest.approx(np.linalg.norm(r, axis=1).mean(), rel=1e-5)
  assert out["mean_relation_norm"] == pytest.approx(np.linalg.norm(r.mean(0)), rel=1e-5)
  assert out["user_norm"] == pytest.approx(np.linalg.norm(P[pairs[:, 0]], axis=1).mean(), rel=1e-5)
  assert out["item_norm"] == pytest.approx(np.linalg.norm(Q[pairs[:, 1]], axis=1).mean(), rel=1e-5)
  assert out["max_slice_norm"] == pytest.approx(np.linalg.norm(memory, axis=1).max(), rel=1e-5)


def test_lrml_from_the_cli_trains_exports_and_serves(tmp_path):
  from tests.helpers import run_in_process, write_release_layout
  data = tmp_path / "data"
  write_release_layout(str(data))
  workdir = tmp_path / "run"
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}", "--model=lrml",
      "--num_neg=1", "--margin=0.5", "--memory_slots=5", "--embed_dim=8",
      "--batch_size=16", "--train_steps=6", "--eva_batches=3",
      "--notensorboard", f"--export_dir={tmp_path / 'exports'}",
      f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["finished"] is True and summary["modalities"] == []
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  for r in records:  # every round: the memory attention's and relation's state
    assert 0.0 < r["explanation"]["entropy_ratio"] <= 1.0 + 1e-9
    assert set(r["diagnostics"]) == {"relation_norm", "mean_relation_norm", "user_norm",
                                     "item_norm", "max_slice_norm"}
  path = tmp_path / "exports" / "lrml_custom" / "1"
  loaded = tf.saved_model.load(str(path))
  out = loaded.signatures["score"](user_ids=tf.constant([0, 1], tf.int64),
                                   item_ids=tf.constant([2, 3], tf.int64))
  assert out["attention"].shape == (2, 5)  # the memory attention over 5 slots
  np.testing.assert_allclose(out["attention"].numpy().sum(1), 1.0, rtol=1e-5)
  rec = loaded.signatures["serving_default"](user_ids=tf.constant([0], tf.int64))
  assert rec["item_ids"].shape == (1, 10)
  info = json.loads((path / "assets.extra" / "export_info.json").read_text())
  assert info["model"] == "lrml"


def test_lrml_distance_flag_is_checked_and_reaches_the_model():
  from maml_tf import config as config_lib
  from maml_tf.errors import UsageError
  from maml_tf.models import lrml
  assert config_lib.LRML_DISTANCES == lrml.DISTANCES
  with pytest.raises(UsageError, match=r"^`--lrml_distance` must be one of l2, l1, "
                     r"squared. Received: 'cosine'$"):
    config_lib.Config(model="lrml", num_neg=1, lrml_distance="cosine").validate()
  ds = type("DS", (), {"n_users": 3, "n_items": 4})()
  config = config_lib.Config(model="lrml", num_neg=1, lrml_distance="l1").validate()
  assert LRML.from_run_config(config, ds).distance == "l1"


def test_the_default_distance_cannot_be_gamed_by_the_shared_relation():
  """The defect the squared distance had (the README's LRML diagnosis): with
  the negative reusing the positive's relation r, growing r along q+ - q-
  lowers D(u, i+) - D(u, i-) without bound for ||.||^2, so the hinge is met
  by one offset instead of by the embeddings. With the default (the
  authors' code's sqrt), |D(u, i+) - D(u, i-)| <= ||q+ - q-|| for any r."""
  users = tf.constant([0, 1, 2, 3, 4, 5], tf.int32)
  items = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8], [0, 1], [2, 3]], tf.int32)
  for distance, bounded in ((None, True), ("squared", False)):
    m = _model(distance=distance)
    q = _np(m.item_embeddings)
    bound = np.linalg.norm(q[items.numpy()[:, 0]] - q[items.numpy()[:, 1]], axis=1)
    m.relation.memory.assign(m.relation.memory * 1000.0)
    p = tf.gather(m.user_embeddings, users)
    qq = tf.gather(m.item_embeddings, items)
    r = m.relation(p, qq[:, 0])[:, None, :]
    d = relation_distance(p[:, None, :], qq, r, m.distance).numpy()
    gap = np.abs(d[:, 0] - d[:, 1])
    assert (gap <= bound + 1e-3).all() == bounded, (distance, gap, bound)
