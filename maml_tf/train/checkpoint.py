"""Checkpoints of a run: one per evaluation round, the best kept apart.

Layout under <workdir>/checkpoints/:

  ckpt-<step>.index, ckpt-<step>.data-*   the last `keep_checkpoints` rounds
  checkpoint                               tf.train.CheckpointManager's state
  best/best.json                           the best round: step, metric, path
  best/ckpt-<step>/ckpt-<step>.*           a copy of that round's checkpoint

A checkpoint holds every variable of the model under a stable name (the
embedding tables, the item features and their fusion F, the fusion and
attention networks, the dropout seed states), the optimizer (Adam's moments,
iteration count and learning rate) and the global step.

Nothing is ever half-written: CheckpointManager writes its files and then
swaps its state file in atomically; the best copy is written to a temporary
folder, renamed into place, and only then named in best.json (itself
replaced atomically), so a reader always finds a complete checkpoint.

`restore(model, workdir)` is the one call exporters and notebooks need.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
from typing import Dict, Optional

from absl import logging as absl_logging
import keras
import tensorflow as tf

from maml_tf import fileio
from maml_tf.errors import UsageError

CHECKPOINTS = "checkpoints"
BEST = "best"
BEST_JSON = "best.json"
PREFIX = "ckpt"
STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS)


def _layer_variables(layer, prefix, out, depth=0):
  """Adds a layer's variables to `out`, named by their attribute path.

  E.g. "fusion/dense1/kernel", "attention/seed_generator": the layer's own
  weights, then the weights of the layers and the states of the
  SeedGenerators (dropout) held in its attributes (also inside dicts and
  lists of layers, as "encoders/text/..."), recursively.
  """
  own = (getattr(layer, "_trainable_variables", []) +
         getattr(layer, "_non_trainable_variables", []))
  for var in own:
    out.setdefault(f"{prefix}/{var.name}", var)
  if depth > 3:
    return
  for attr, value in sorted(vars(layer).items()):
    _attribute_variables(value, f"{prefix}/{attr}", attr, out, depth + 1)


def _attribute_variables(value, name, attr, out, depth):
  if attr.startswith("_"):
    return
  if isinstance(value, keras.random.SeedGenerator):
    out.setdefault(name, value.state)
  elif isinstance(value, keras.layers.Layer):
    _layer_variables(value, name, out, depth)
  elif isinstance(value, dict):
    for key, item in sorted(value.items()):
      if isinstance(item, keras.layers.Layer):
        _layer_variables(item, f"{name}/{key}", out, depth)
  elif isinstance(value, (list, tuple)):
    for i, item in enumerate(value):
      if isinstance(item, keras.layers.Layer):
        _layer_variables(item, f"{name}/{i}", out, depth)


def model_variables(model) -> Dict[str, tf.Variable]:
  """Every variable of a model, under a stable name.

  The names do not depend on the order in which Keras numbered layers in
  this process, so any process that builds the same model can restore:
  the tables are "user_embeddings" and "item_embeddings", a variable the
  model holds itself is named by its attribute ("item_features"), a layer's
  variables by the attribute path ("fusion/dense1/kernel",
  "attention/seed_generator", the dropout's random state).

  Args:
    model: a `maml_tf.models.base.RankingModel`.
  """
  out = {"user_embeddings": model.user_embeddings,
         "item_embeddings": model.item_embeddings}
  tables = {id(model.user_table), id(model.item_table)}
  for attr, value in sorted(vars(model).items()):
    if attr.startswith("_") or id(value) in tables:
      continue
    if isinstance(value, keras.Variable):
      out.setdefault(attr, value)
    else:
      _attribute_variables(value, attr, attr, out, 0)
  missing = {id(v) for v in model.variables} - {id(v) for v in out.values()}
  if missing:
    names = [v.path for v in model.variables if id(v) in missing]
    raise ValueError(f"variables not reached for the checkpoint: {names}")
  return out


def make_checkpoint(model, step: tf.Variable, optimizer=None) -> tf.train.Checkpoint:
  """A tf.train.Checkpoint of the model's variables, the step and optimizer.

  The optimizer is left out when None (enough to restore weights).
  """
  weights = tf.train.Checkpoint(**model_variables(model))
  if optimizer is None:
    return tf.train.Checkpoint(model=weights, step=step)
  return tf.train.Checkpoint(model=weights, optimizer=optimizer, step=step)


# ----------------------------------------------------------------- locating
def last_prefix(workdir: str) -> Optional[str]:
  """The newest round's checkpoint prefix in a workdir, or None."""
  folder = checkpoints_dir(workdir)
  if not os.path.isdir(folder):
    return None
  return tf.train.latest_checkpoint(folder)


def read_best(workdir: str) -> Optional[dict]:
  """best.json of a workdir (with "prefix" made absolute), or None."""
  best_dir = os.path.join(checkpoints_dir(workdir), BEST)
  try:
    with open(os.path.join(best_dir, BEST_JSON)) as f:
      info = json.load(f)
  except (OSError, ValueError):
    return None
  prefix = os.path.join(best_dir, info["folder"], info["name"])
  if not os.path.exists(prefix + ".index"):
    return None
  return dict(info, prefix=prefix)


def best_prefix(workdir: str) -> Optional[str]:
  info = read_best(workdir)
  return None if info is None else info["prefix"]


def checkpoint_step(prefix: str) -> int:
  """The global step stored in a checkpoint."""
  return int(tf.train.load_variable(prefix, STEP_KEY))


def latest_step(workdir: str) -> Optional[int]:
  """The step of the newest checkpoint in a workdir; None when it has none."""
  prefix = last_prefix(workdir)
  return None if prefix is None else checkpoint_step(prefix)


def resolve(path: str, which: str = "best") -> str:
  """The checkpoint prefix that `path` names.

  Args:
    path: a checkpoint prefix (".../ckpt-400"), a run's workdir, its
      checkpoints folder, or its checkpoints/best folder.
    which: "best" or "last", for a workdir or checkpoints folder.

  Raises:
    UsageError: nothing there, or `which` unknown.
  """
  if which not in ("best", "last"):
    raise UsageError(f"`which` must be best or last. Received: {which!r}")
  path = os.fspath(path)
  if os.path.exists(path + ".index"):
    return path
  stripped = path.rstrip(os.sep)
  if os.path.basename(stripped) == BEST and os.path.exists(
      os.path.join(stripped, BEST_JSON)):
    workdir, which = os.path.dirname(os.path.dirname(stripped)), "best"
  elif os.path.isdir(os.path.join(path, CHECKPOINTS)):
    workdir = path
  elif os.path.exists(os.path.join(path, "checkpoint")) or os.path.isdir(
      os.path.join(path, BEST)):
    workdir = os.path.dirname(stripped)
  else:
    raise UsageError(f"no checkpoint found at {path!r}: expected a checkpoint "
                     "prefix (<workdir>/checkpoints/ckpt-<step>), a workdir or "
                     "its checkpoints folder")
  prefix = best_prefix(workdir) if which == "best" else last_prefix(workdir)
  if prefix is None:
    raise UsageError(f"{checkpoints_dir(workdir)}: holds no {which} checkpoint "
                     "(no evaluation round finished yet?)")
  return prefix


def restore(model, path_or_workdir: str, which: str = "best",
            optimizer: bool = False) -> int:
  """Loads a checkpoint into a model built like the one that wrote it.

  Build the model first with `maml_tf.train.run.build_model(config, dataset)`.
  The stored fused features F are recomputed from the restored fusion
  network (`model.after_restore()`).

  Args:
    model: a `RankingModel` of the same shape as the saved one.
    path_or_workdir: see `resolve`.
    which: "best" (the selected round) or "last", for a workdir.
    optimizer: also restore the optimizer state (to continue training).

  Returns:
    The global step of the checkpoint.

  Raises:
    UsageError: no checkpoint there, or it does not fit the model.
  """
  prefix = resolve(path_or_workdir, which)
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  opt = None
  if optimizer:
    opt = model.optimizer
    if not opt.built:
      opt.build(model.trainable_variables)
  ckpt = make_checkpoint(model, step, opt)
  try:
    status = ckpt.read(prefix)
    status.assert_existing_objects_matched()
    if not optimizer:
      status.expect_partial()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UsageError(f"{prefix}: does not fit this model (different dataset, "
                     f"modalities or sizes?): {detail[:300]}") from None
  model.after_restore()
  return int(step.numpy())


# ----------------------------------------------------------------- writing
@contextlib.contextmanager
def quiet_tf_logs():
  """Hides TensorFlow's INFO lines (one per checkpoint write) meanwhile."""
  loggers = [tf.get_logger(), absl_logging.get_absl_logger()]
  levels = [logger.level for logger in loggers]
  for logger, level in zip(loggers, levels):
    logger.setLevel(max(level, logging.WARNING))
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)




class Checkpointer:
  """Saves and restores a run's checkpoints in <workdir>/checkpoints.

  Args:
    model: the compiled model being trained.
    workdir: the run's folder.
    keep: how many of the latest rounds to keep (the best is kept apart).
  """

  def __init__(self, model, workdir, keep=3):
    self.model, self.workdir = model, workdir
    self.dir = checkpoints_dir(workdir)
    self.best_dir = os.path.join(self.dir, BEST)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.checkpoint = make_checkpoint(model, self.step, model.optimizer)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self.dir, max_to_keep=int(keep), checkpoint_name=PREFIX)

  def _build_optimizer(self):
    if not self.model.optimizer.built:
      # Under tf.distribute the slots must be created in the model's scope.
      with self.model.distribute_strategy.scope():
        self.model.optimizer.build(self.model.trainable_variables)

  def restore(self, prefix) -> int:
    """Restores weights, optimizer state and step; returns the step."""
    self._build_optimizer()
    try:
      status = self.checkpoint.read(prefix)
      status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise UsageError(f"{prefix}: does not fit this model (different dataset, "
                       f"modalities or sizes?): {detail[:300]}") from None
    self.model.after_restore()
    return int(self.step.numpy())

  def save(self, step) -> str:
    """Saves round `step` (rotating the oldest out); returns its prefix."""
    self._build_optimizer()
    if getattr(self.model, "paper_mode", False):
      # Training recomputes F in paper mode and leaves the stored copy stale;
      # store the F of the saved fusion weights (a restore recomputes it too).
      self.model.after_restore()
    self.step.assign(int(step))
    with quiet_tf_logs():
      return self.manager.save(checkpoint_number=int(step))

  def save_best(self, step, source_prefix, info=None) -> str:
    """Copies the checkpoint `source_prefix` to best/ and points best.json at it.

    Returns the new prefix. The copy goes to a temporary folder that is
    renamed into place once complete, and best.json is replaced atomically
    after that, so a crash at any point leaves the previous best or the new
    one, never a mix.
    """
    os.makedirs(self.best_dir, exist_ok=True)
    name = f"{PREFIX}-{int(step)}"
    tmp = os.path.join(self.best_dir, f".tmp-{name}-{os.getpid()}")
    final = os.path.join(self.best_dir, name)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for src in glob.glob(glob.escape(source_prefix) + ".*"):
      suffix = os.path.basename(src)[len(os.path.basename(source_prefix)):]
      dst = os.path.join(tmp, name + suffix)
      shutil.copyfile(src, dst)
      fileio.fsync_file(dst)
    fileio.fsync_dir(tmp)
    if os.path.exists(final):
      shutil.rmtree(final)
    os.rename(tmp, final)
    fileio.fsync_dir(self.best_dir)
    record = dict(info or {}, step=int(step), folder=name, name=name)
    fileio.write_json_atomic(os.path.join(self.best_dir, BEST_JSON), record)
    self._clean_best(keep=name)
    return os.path.join(final, name)

  def _clean_best(self, keep):
    for entry in os.listdir(self.best_dir):
      path = os.path.join(self.best_dir, entry)
      if entry != keep and entry != BEST_JSON and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)

  def reconcile_best(self, step, info=None):
    """Makes best/ hold round `step` after a resume; True if it does.

    Needed when a crash came between saving that round and copying it to
    best/ (the round is then the last checkpoint).
    """
    current = read_best(self.workdir)
    if current is not None and current["step"] == int(step):
      return True
    for prefix in self.manager.checkpoints:
      if checkpoint_step(prefix) == int(step):
        self.save_best(step, prefix, info)
        return True
    return False

  def info(self) -> dict:
    """{"last": {step, path}, "best": {step, path}}, paths relative to workdir.

    Entries that do not exist yet are left out.
    """
    out = {}
    last = self.manager.latest_checkpoint
    if last:
      out["last"] = {"step": checkpoint_step(last),
                     "path": os.path.relpath(last, self.workdir)}
    best = read_best(self.workdir)
    if best is not None:
      out["best"] = {"step": best["step"],
                     "path": os.path.relpath(best["prefix"], self.workdir)}
    return out


class CheckpointCallback(keras.callbacks.Callback):
  """Saves a checkpoint after every evaluation, and the best round apart.

  Put it right after the `EvaluationCallback` it reads: that callback has
  already appended (and fsynced) the round's record to metrics.jsonl when
  this one saves, so the order on disk within a round is
  metrics.jsonl record -> checkpoint -> best copy -> metrics.json. A resumed
  run drops every record after the checkpoint it resumes from.

  Args:
    checkpointer: a `Checkpointer`.
    evaluation: the run's `maml_tf.evaluate.callback.EvaluationCallback`.
  """

  def __init__(self, checkpointer, evaluation):
    super().__init__()
    self.checkpointer, self.evaluation = checkpointer, evaluation

  def on_epoch_end(self, epoch, logs=None):
    record = self.evaluation.records[-1]
    step = record["step"]
    prefix = self.checkpointer.save(step)
    best = self.evaluation.best_record()
    if best is not None and best["step"] == step:
      self.checkpointer.save_best(step, prefix, self.evaluation.best_info())
    self.evaluation.extra_summary["checkpoints"] = self.checkpointer.info()
    self.evaluation.write_summary(finished=False)
