"""TensorBoard output of a run (maml_tf/callbacks.py), read back from the
event files: loss terms per step, metrics per evaluation at the training
step, attention heatmaps, and the embedding projector."""

import dataclasses
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.train import callbacks
from maml_tf.train import checkpoint
from maml_tf import data
from maml_tf import train
from maml_tf.config import Config

EVA, STEPS = 2, 4
METRICS = ("ndcg@10", "recall@10", "hr@10", "precision@10")


def _dataset(seed=0, n_users=24, n_items=30, n=260, features=True):
  rng = np.random.default_rng(seed)
  pairs = np.unique(np.stack([rng.integers(0, n_users, n),
                              rng.integers(0, n_items, n)], 1), axis=0)
  pairs = pairs[rng.permutation(len(pairs))]
  cut = int(0.75 * len(pairs))
  feats = ({"text": rng.normal(size=(n_items, 6)).astype(np.float32)}
           if features else None)
  ds = data.from_arrays(pairs[:cut], pairs[cut:], features=feats,
                        n_users=n_users, n_items=n_items)
  labels = tuple(f"Product\t{i}\nwith a long title" for i in range(n_items))
  return dataclasses.replace(ds, item_labels=labels)


def _config(workdir, **overrides):
  flags = dict(embed_dim=8, hidden_layer_dim=8, batch_size=32, num_neg=2,
               train_steps=STEPS, eva_batches=EVA, jit_compile=False,
               tensorboard=True, export=False, workdir=workdir,
               validation_fraction=0.2)
  return Config(**dict(flags, **overrides))


def _events(logdir):
  """{tag: [(step, value or PNG bytes), ...]} over every event file."""
  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        kind = value.metadata.plugin_data.plugin_name
        item = array[2] if kind == "images" else float(array)
        out.setdefault(value.tag, []).append((event.step, item))
  return out


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("paper"))
  summary = train.train_and_evaluate(_config(workdir, mode="paper"),
                                     dataset=_dataset(), verbose=0)
  return workdir, summary


def test_loss_terms_are_scalars_at_every_step(paper_run):
  workdir, _ = paper_run
  events = _events(os.path.join(workdir, "tensorboard"))
  for term in ("loss", "embedding_loss", "feature_loss", "cov_loss", "l2_loss"):
    steps = [s for s, _ in events[f"train/{term}"]]
    assert steps == list(range(1, STEPS + 1)), term
  # Per-step values: the total is the sum of its terms at each step.
  for i in range(STEPS):
    parts = sum(events[f"train/{t}"][i][1] for t in
                ("embedding_loss", "feature_loss", "cov_loss", "l2_loss"))
    assert events["train/loss"][i][1] == pytest.approx(parts, rel=1e-4)
  # The mean of a round's per-step values is Keras' mean for that round.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  for record in records:
    step = record["step"]
    values = [v for s, v in events["train/loss"] if step - EVA < s <= step]
    assert np.mean(values) == pytest.approx(record["train"]["loss"], rel=1e-4)


def test_metrics_are_scalars_at_the_training_step(paper_run):
  workdir, _ = paper_run
  events = _events(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  for split in ("valid", "test"):
    for metric in METRICS:
      got = events[f"{split}/{metric}"]
      assert [s for s, _ in got] == [EVA, 2 * EVA]
      want = [r[split][metric] for r in records]
      np.testing.assert_allclose([v for _, v in got], want, rtol=1e-6)


def test_attention_heatmaps_are_images_each_evaluation(paper_run):
  workdir, _ = paper_run
  events = _events(os.path.join(workdir, "tensorboard"))
  for tag in ("attention/user", "attention/item"):
    assert [s for s, _ in events[tag]] == [EVA, 2 * EVA]
    image = tf.image.decode_png(events[tag][-1][1]).numpy()
    assert image.shape[0] > 150 and image.shape[1] > 300
    assert image.std() > 10  # not blank


def test_projector_has_labelled_item_embeddings(paper_run):
  workdir, _ = paper_run
  logdir = os.path.join(workdir, "tensorboard")
  with open(os.path.join(logdir, "projector_config.pbtxt")) as f:
    config = f.read()
  assert 'tensor_name: "item_embeddings/.ATTRIBUTES/VARIABLE_VALUE"' in config
  assert 'metadata_path: "metadata.tsv"' in config
  with open(os.path.join(logdir, "metadata.tsv"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0] == "item\tlabel" and len(lines) == 31
  assert lines[8] == "7\tProduct 7 with a long title"
  prefix = tf.train.latest_checkpoint(logdir)
  saved = tf.train.load_variable(prefix,
                                 "item_embeddings/.ATTRIBUTES/VARIABLE_VALUE")
  final = tf.train.load_variable(checkpoint.last_prefix(workdir),
                                 "model/item_embeddings/.ATTRIBUTES/VARIABLE_VALUE")
  np.testing.assert_array_equal(saved, final)


def test_without_attention_or_features_no_heatmaps(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(
      _config(workdir, attention="none", train_steps=EVA,
              validation_fraction=0.0),
      dataset=_dataset(features=False), verbose=0)
  events = _events(os.path.join(workdir, "tensorboard"))
  assert "train/embedding_loss" in events and "test/ndcg@10" in events
  assert "train/feature_loss" not in events
  assert not [tag for tag in events if tag.startswith("attention/")]
  assert os.path.exists(os.path.join(workdir, "tensorboard", "metadata.tsv"))


def test_truncate_events_drops_later_steps_and_a_cut_record(tmp_path):
  logdir = str(tmp_path)
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for step in range(1, 6):
      tf.summary.scalar("train/loss", float(step), step=step)
  writer.close()
  (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  with open(path, "ab") as f:
    f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00half a record")
  assert callbacks.truncate_events(logdir, 3) == 2
  assert [s for s, _ in _events(logdir)["train/loss"]] == [1, 2, 3]


@pytest.mark.parametrize("name", [s.name for s in __import__(
    "maml_tf.models", fromlist=["SPECS"]).SPECS])
def test_every_models_projector_saves_its_current_tables(tmp_path, name):
  # Tables a model computes (CMLF's f(x), ...) are tensors, not variables:
  # each save writes their values at that round.
  ds = _dataset()
  config = _config(str(tmp_path), model=name, num_neg=1, gcn_layers=1,
                   modalities=("text",))
  model = train.build_model(config, ds)
  callback = callbacks.TensorBoardCallback(str(tmp_path), EVA)
  callback.set_model(model)
  callback._setup_projector()
  for step in (1, 2):
    for table in model.trainable_variables:
      table.assign(table + 0.5)
    if hasattr(model, "prepare_scoring"):
      model.prepare_scoring()
    callback._save_projector(step)
    prefix = tf.train.latest_checkpoint(str(tmp_path))
    assert prefix.endswith(f"projector-{step}")
    for key, value in model.projector_tensors().items():
      saved = tf.train.load_variable(prefix, f"{key}/.ATTRIBUTES/VARIABLE_VALUE")
      np.testing.assert_allclose(saved, np.asarray(value), rtol=1e-6, err_msg=key)
