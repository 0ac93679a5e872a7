"""Keras callbacks to watch a run: TensorBoard summaries, a non-finite guard.

`NonFiniteGuard` stops training at the first NaN or infinite loss.

`RankingMetrics` evaluates at the end of every Keras epoch and puts the
metrics into the epoch logs as `<split>_<metric>` (`valid_ndcg@10`), so that
stock Keras callbacks after it (`EarlyStopping`, `ModelCheckpoint`,
`TensorBoard`, `CSVLogger`) can watch them; it writes no files.

`TensorBoardCallback` writes under <workdir>/tensorboard, always at the
global training step (so a resumed run continues its curves):

- scalars `train/<term>` for the total loss and each of its terms
  (embedding_loss, feature_loss, cov_loss, l2_loss in paper mode), averaged
  over the last `every` steps, and `train/steps_per_second`;
- scalars `<split>/<metric>` (e.g. `test/ndcg@10`, `valid/recall@10`) after
  every evaluation, from the `<split>_<metric>` entries the
  EvaluationCallback put into the epoch logs;
- images `<explanation>/user` and `<explanation>/item` after every
  evaluation, for a model whose explanation is positional (MAML's K
  attention weights, LRML's memory attention): the weights of one fixed user
  over the items they interacted with, and of one fixed item across its
  users (MAML's Figure 3);
- for a model whose explanation has named columns (MARIO's modality
  weights), a histogram and the mean of each column over a fixed sample of
  train pairs after every evaluation;
- the embedding projector: the model's item tables (`projector_tensors()`:
  Q, and MAML's fused features F) labelled with the dataset's item labels
  (product titles for Office), refreshed after every evaluation.
"""

from __future__ import annotations

import glob
import io
import math
import os
import time
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from maml_tf.train import checkpoint as checkpoint_lib
from maml_tf import fileio
from maml_tf.errors import MamlError

TERMS = ("loss", "embedding_loss", "feature_loss", "cov_loss", "l2_loss")
SPLITS = ("valid", "test")
EVENTS_GLOB = "events.out.tfevents.*"


class NonFiniteLossError(MamlError):
  """Training produced a NaN or infinite loss (or weights); the run stopped.

  The message names the step and the loss term; the checkpoints written
  before that step are kept.
  """


class NonFiniteGuard(keras.callbacks.Callback):
  """Stops training at the first step whose loss is NaN or infinite.

  Keras' logs hold each term's mean over the round so far, which turns
  non-finite at exactly the step where the term itself first does. After
  each round, before it is evaluated and saved, the trainable weights are
  checked too, so no checkpoint ever holds non-finite weights.

  Args:
    eva_batches: steps per Keras epoch, to turn (epoch, batch) into the
      global step.
  """

  def __init__(self, eva_batches):
    super().__init__()
    self.eva_batches = int(eva_batches)
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    bad = {name: value for name, value in (logs or {}).items()
           if isinstance(value, (int, float)) and not math.isfinite(value)}
    if not bad:
      return
    step = self._epoch * self.eva_batches + batch + 1
    terms = [t for t in bad if t != "loss"] or ["loss"]
    named = ", ".join(f"{t} = {bad[t]}" for t in terms)
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {named}; training stopped")

  def on_epoch_end(self, epoch, logs=None):
    step = (epoch + 1) * self.eva_batches
    for variable in self.model.trainable_variables:
      if not bool(tf.reduce_all(tf.math.is_finite(variable))):
        raise NonFiniteLossError(
            f"non-finite weights `{variable.path}` after step {step}; "
            "training stopped")


# ---------------------------------------------------------------- attention
def attention_weights(model, users, items) -> np.ndarray:
  """The model's explanation of each (users[j], items[j]) pair: [n, E].

  MAML: the K attention weights a(u, i) (rows sum to alpha); LRML: the
  memory attention over its slots; MARIO: the modality weights. None when
  the model has no explanation.
  """
  users = tf.constant(np.asarray(users, np.int32))
  items = tf.constant(np.asarray(items, np.int32))
  _, explanation = model.score_pairs(users, items, explain=True)
  return None if explanation is None else np.asarray(explanation)


def heatmap_png(weights, row_labels, title, ylabel) -> bytes:
  """A [rows, K] attention heatmap as PNG bytes (matplotlib, Agg)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  weights = np.asarray(weights, np.float32)
  rows, k = weights.shape
  fig = Figure(figsize=(min(4.5 + 0.11 * k, 14.0), 1.6 + 0.24 * rows), dpi=100)
  ax = fig.add_subplot(1, 1, 1)
  image = ax.imshow(weights, aspect="auto", cmap="viridis",
                    interpolation="nearest")
  ax.set_yticks(np.arange(rows))
  ax.set_yticklabels(row_labels, fontsize=7)
  step = max(1, int(math.ceil(k / 16)))
  ax.set_xticks(np.arange(0, k, step))
  ax.set_xticklabels([str(i) for i in range(0, k, step)], fontsize=7)
  ax.set_xlabel("embedding dimension k")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
  bar.set_label("attention weight a_k", fontsize=8)
  bar.ax.tick_params(labelsize=7)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def _short(text, width=32):
  text = " ".join(str(text).split())
  return text if len(text) <= width else text[:width - 1] + "\u2026"


def item_label(item, labels=None, width=32):
  """A heatmap row label: "item 7", or "7: <title>" with labels."""
  if labels is None:
    return f"item {item}"
  return f"{item}: {_short(labels[item], width)}"


def pick_most_active(pairs, column):
  """The id with the most pairs in `column` (0 user, 1 item), or None.

  The lowest id wins among equals.
  """
  pairs = np.asarray(pairs)
  if not len(pairs):
    return None
  return int(np.argmax(np.bincount(pairs[:, column])))


# ---------------------------------------------------------------- events
def truncate_events(logdir, step) -> int:
  """Drops the summaries written after `step` from the event files in logdir.

  A resumed run calls this with its checkpoint's step: the interrupted run's
  summaries after that step are about to be written again. A record cut
  short by a crash is dropped too. Returns how many events were dropped.
  """
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top

  dropped_total = 0
  for path in sorted(glob.glob(os.path.join(glob.escape(logdir), EVENTS_GLOB))):
    kept, dropped, damaged = [], 0, False
    try:
      for raw in tf.data.TFRecordDataset(path):
        raw = raw.numpy()
        event = event_pb2.Event.FromString(raw)
        if event.step > step and event.WhichOneof("what") == "summary":
          dropped += 1
        else:
          kept.append(raw)
    except tf.errors.DataLossError:
      damaged = True
    if not dropped and not damaged:
      continue
    with fileio.atomic_path(path) as tmp:
      with tf.io.TFRecordWriter(tmp) as writer:
        for raw in kept:
          writer.write(raw)
    dropped_total += dropped
  return dropped_total


class TensorBoardCallback(keras.callbacks.Callback):
  """TensorBoard summaries of a run (see the module docstring).

  Args:
    logdir: the event files' folder, <workdir>/tensorboard.
    eva_batches: steps per Keras epoch (one evaluation round).
    every: write the loss scalars every this many steps (averaged over them).
    train_pairs: the train (user, item) pairs, to pick the heatmaps' fixed
      user (most items) and item (most users).
    item_labels: n_items strings for the heatmaps and the projector, or None.
    max_rows: at most this many items (users) in a heatmap.
  """

  def __init__(self, logdir, eva_batches, every=1, train_pairs=None,
               item_labels: Optional[Sequence[str]] = None, max_rows=20):
    super().__init__()
    self.logdir, self.eva_batches = logdir, int(eva_batches)
    self.every, self.max_rows = max(1, int(every)), int(max_rows)
    self.train_pairs = (np.zeros((0, 2), np.int64) if train_pairs is None
                        else np.asarray(train_pairs, np.int64))
    self.item_labels = None if item_labels is None else tuple(item_labels)
    self.writer = None
    self._epoch, self._window = 0, (0, {}, 0.0)
    self._projector, self._projector_copies = None, {}

  # ------------------------------------------------------------ lifecycle
  def on_train_begin(self, logs=None):
    os.makedirs(self.logdir, exist_ok=True)
    if self.writer is None:
      self.writer = tf.summary.create_file_writer(self.logdir)
    self._setup_projector()

  def on_train_end(self, logs=None):
    self.close()

  def close(self):
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
      self.writer = None

  # ------------------------------------------------------------ scalars
  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    self._window = (0, {}, time.perf_counter())

  def on_train_batch_end(self, batch, logs=None):
    n = batch + 1
    steps = (self.params or {}).get("steps") or self.eva_batches
    if n % self.every and n != steps:
      return
    # logs hold each term's mean over the round so far: n * mean is the sum.
    terms = set(getattr(self.model, "loss_names", TERMS))
    sums = {k: n * float(v) for k, v in (logs or {}).items() if k in terms}
    prev_n, prev_sums, prev_time = self._window
    now = time.perf_counter()
    step = self._epoch * self.eva_batches + n
    with self.writer.as_default(step=step):
      for name, total in sums.items():
        tf.summary.scalar(f"train/{name}",
                          (total - prev_sums.get(name, 0.0)) / (n - prev_n))
      if now > prev_time:
        tf.summary.scalar("train/steps_per_second", (n - prev_n) / (now - prev_time))
    self._window = (n, sums, now)

  # ------------------------------------------------------------ evaluations
  def on_epoch_end(self, epoch, logs=None):
    step = (epoch + 1) * self.eva_batches
    with self.writer.as_default(step=step):
      for key, value in (logs or {}).items():
        split, _, metric = key.partition("_")
        if split in SPLITS and metric:
          tf.summary.scalar(f"{split}/{metric}", float(value))
        elif "/" in key:  # a measure of the evaluation callback's extras
          tf.summary.scalar(key, float(value))
      if self.model.explains and self.model.explanation_labels:
        self._write_explanation_histograms(step)
      elif self.model.explains:
        self._write_heatmaps(step)
    self._save_projector(step)
    self.writer.flush()

  def _write_heatmaps(self, step):
    pairs = self.train_pairs
    user = pick_most_active(pairs, 0)
    if user is None:
      return
    items = np.unique(pairs[pairs[:, 0] == user, 1])
    shown = items[:self.max_rows]
    weights = attention_weights(self.model, np.full(len(shown), user), shown)
    title = (f"attention of user {user} over the items they interacted with "
             f"({len(shown)} of {len(items)}), step {step}")
    png = heatmap_png(weights, [item_label(i, self.item_labels) for i in shown],
                      title, "item")
    tf.summary.image(f"{self.model.explanation_name}/user", tf.image.decode_png(png, 3)[None])

    item = pick_most_active(pairs, 1)
    users = np.unique(pairs[pairs[:, 1] == item, 0])
    shown = users[:self.max_rows]
    weights = attention_weights(self.model, shown, np.full(len(shown), item))
    name = f"item {item}" + ("" if self.item_labels is None else
                             f" ({_short(self.item_labels[item], 40)})")
    title = (f"attention of {name} across its users ({len(shown)} of "
             f"{len(users)}), step {step}")
    png = heatmap_png(weights, [f"user {u}" for u in shown], title, "user")
    tf.summary.image(f"{self.model.explanation_name}/item", tf.image.decode_png(png, 3)[None])

  def _write_explanation_histograms(self, step):
    """Per named column (e.g. each modality), the distribution of its
    weight over a fixed sample of train pairs."""
    pairs = self.train_pairs
    if not len(pairs):
      return
    rng = np.random.default_rng(0)
    sample = pairs[rng.choice(len(pairs), min(len(pairs), 4096), replace=False)]
    weights = attention_weights(self.model, sample[:, 0], sample[:, 1])
    name = self.model.explanation_name
    for j, label in enumerate(self.model.explanation_labels):
      tf.summary.histogram(f"{name}/{label}", weights[:, j])
      tf.summary.scalar(f"{name}/{label}_mean", float(weights[:, j].mean()))

  # ------------------------------------------------------------ projector
  def _setup_projector(self):
    from tensorboard.plugins import projector  # pylint: disable=g-import-not-at-top

    model = self.model
    tensors = model.projector_tensors()
    with fileio.atomic_writer(os.path.join(self.logdir, "metadata.tsv"), "w",
                              encoding="utf-8") as f:
      if self.item_labels is None:
        f.writelines(f"{i}\n" for i in range(model.n_items))
      else:
        f.write("item\tlabel\n")
        f.writelines(f"{i}\t{' '.join(str(label).split())}\n"
                     for i, label in enumerate(self.item_labels))
    config = projector.ProjectorConfig()
    for name in tensors:
      embedding = config.embeddings.add()
      embedding.tensor_name = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
      embedding.metadata_path = "metadata.tsv"
    # The checkpoint is found through the "checkpoint" file beside it, so the
    # workdir can be moved.
    projector.visualize_embeddings(self.logdir, config)
    # A table the model computes (a tensor, not a variable) is saved through
    # a variable of the callback's own, refreshed before each save.
    self._projector_copies = {
        name: tf.Variable(value, trainable=False, name=name)
        for name, value in tensors.items() if isinstance(value, tf.Tensor)}
    self._projector = tf.train.CheckpointManager(
        tf.train.Checkpoint(**dict(tensors, **self._projector_copies)),
        self.logdir, max_to_keep=1, checkpoint_name="projector")

  def _save_projector(self, step):
    if self._projector is not None:
      if self._projector_copies:
        fresh = self.model.projector_tensors()
        for name, copy in self._projector_copies.items():
          copy.assign(fresh[name])
      with checkpoint_lib.quiet_tf_logs():
        self._projector.save(checkpoint_number=step)
