"""Checkpoints, resume and restore (maml_tf/checkpoint.py, train.py).

One tiny run in the release layout (24 users, 30 items, a 6-d .npy feature
file) trained uninterrupted is the reference; runs interrupted in several ways
and resumed must end with exactly the same checkpoint (weights, Adam state,
step) and the same metrics.jsonl, on the CPU bit for bit.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.train import checkpoint
from maml_tf.models import metric_losses as losses
from maml_tf import train
from maml_tf.train.callbacks import NonFiniteLossError
from maml_tf.config import Config
from maml_tf.errors import MamlError, UsageError
from tests.helpers import run_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVA, STEPS = 3, 12
FLAGS = dict(embed_dim=8, hidden_layer_dim=8, batch_size=32, num_neg=2,
             train_steps=STEPS, eva_batches=EVA, keep_checkpoints=10,
             jit_compile=False, tensorboard=False, export=False, seed=3)


def _write_layout(folder, seed=0, n_users=24, n_items=30, n=260):
  """train.csv, test.csv and text.npy in the release's layout."""
  rng = np.random.default_rng(seed)
  pairs = np.unique(np.stack([rng.integers(0, n_users, n),
                              rng.integers(0, n_items, n)], 1), axis=0)
  pairs = pairs[rng.permutation(len(pairs))]
  cut = int(0.75 * len(pairs))
  header = "itemID,userID,reviewerID,asin\n"
  for name, rows in (("train.csv", pairs[:cut]), ("test.csv", pairs[cut:])):
    with open(os.path.join(folder, name), "w") as f:
      f.write(header + "".join(f"{i},{u},R{u},A{i}\n" for u, i in rows))
  n_items = int(pairs[:, 1].max()) + 1
  path = os.path.join(folder, "text.npy")
  np.save(path, rng.normal(size=(n_items, 6)).astype(np.float32))
  return path


def _config(layout, workdir, **overrides):
  folder, features = layout
  return Config(dataset="custom", data_dir=folder,
                extra_features=(f"text={features}",), workdir=workdir,
                **dict(FLAGS, **overrides))


def _flags(config):
  """The command line of a Config, for scripts/train.py."""
  return [line for line in config.to_flagfile().splitlines() if line]


def _tensors(prefix):
  """Every saved tensor (the object graph, which holds Keras' process-wide
  variable names, left out)."""
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_checkpoint(a, b):
  ta, tb = _tensors(a), _tensors(b)
  assert sorted(ta) == sorted(tb)
  for name in ta:
    np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  for r in records:  # timings differ from run to run
    for key in [k for k in r if k.endswith("_seconds")]:
      del r[key]
  return records


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  folder = tmp_path_factory.mktemp("layout")
  return str(folder), _write_layout(str(folder))


@pytest.fixture(scope="module")
def reference(layout, tmp_path_factory):
  """The uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  summary = train.train_and_evaluate(_config(layout, workdir), verbose=0)
  return workdir, summary


def _last(workdir):
  return checkpoint.last_prefix(workdir)


def test_reference_run_layout(reference):
  workdir, summary = reference
  assert summary["finished"] is True
  assert [r["step"] for r in _records(workdir)] == list(range(EVA, STEPS + 1, EVA))
  assert checkpoint.latest_step(workdir) == STEPS
  best = summary["best_checkpoint"]
  assert best["selected_by"] == "test" and best["metric"] == "ndcg@10"
  assert best["step"] == summary["best"]["step"]
  assert os.path.exists(os.path.join(workdir, best["path"]) + ".index")
  best_path = os.path.join(workdir, best["path"])
  assert checkpoint.checkpoint_step(best_path) == best["step"]
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["best_checkpoint"] == best


def test_sigkill_mid_round_then_rerun_matches_uninterrupted(layout, reference,
                                                            tmp_path, monkeypatch):
  """scripts/train.py is killed with SIGKILL in round 2 (after the first
  evaluation and checkpoint, with TensorBoard events already past it); the
  same command run again (its main, in this process, in the same folder)
  finishes with the reference's checkpoint, metrics and one TensorBoard
  point per step."""
  workdir = str(tmp_path / "run")
  config = _config(layout, workdir, tensorboard=True)
  marker = str(tmp_path / "paused")
  # scripts/train.py itself, paused (by a patch in this wrapper only) right
  # after step EVA + 2 has been written to TensorBoard, waiting to be killed.
  wrapper = tmp_path / "paused_train.py"
  wrapper.write_text(textwrap.dedent(f"""
      import runpy, sys, time
      sys.argv = [{os.path.join(ROOT, "scripts", "train.py")!r}] + sys.argv[1:]
      sys.path.insert(0, {ROOT!r})
      from maml_tf.train import callbacks
      original = callbacks.TensorBoardCallback.on_train_batch_end
      def on_train_batch_end(self, batch, logs=None):
        original(self, batch, logs)
        if self._epoch == 1 and batch == 1:
          self.writer.flush()
          open({marker!r}, "w").close()
          time.sleep(120)
      callbacks.TensorBoardCallback.on_train_batch_end = on_train_batch_end
      runpy.run_path(sys.argv[0], run_name="__main__")
      """))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  proc = subprocess.Popen([sys.executable, str(wrapper)] + _flags(config),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=env, cwd=str(tmp_path))
  try:
    deadline = time.monotonic() + 120
    while not os.path.exists(marker):
      assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
      assert time.monotonic() < deadline, "the run never reached step 5"
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert checkpoint.latest_step(workdir) == EVA
  assert [r["step"] for r in _records(workdir)] == [EVA]

  monkeypatch.chdir(tmp_path)
  rerun = run_in_process(_flags(config))
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"Resuming from step {EVA}" in rerun.stdout

  ref_dir, _ = reference
  assert _records(workdir) == _records(ref_dir)
  _assert_same_checkpoint(_last(workdir), _last(ref_dir))
  _assert_same_checkpoint(checkpoint.best_prefix(workdir),
                          checkpoint.best_prefix(ref_dir))
  with open(os.path.join(workdir, "metrics.json")) as f:
    summary = json.load(f)
  assert summary["finished"] is True and summary["started_from_step"] == EVA

  # TensorBoard: the killed run's steps EVA+1, EVA+2 were dropped and
  # written again once: one point per step for every loss term.
  steps = {}
  logdir = os.path.join(workdir, "tensorboard")
  for name in sorted(os.listdir(logdir)):
    if name.startswith("events.out.tfevents."):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
        for value in event.summary.value:
          steps.setdefault(value.tag, []).append(event.step)
  assert steps["train/loss"] == list(range(1, STEPS + 1))
  assert steps["test/ndcg@10"] == list(range(EVA, STEPS + 1, EVA))


class _Interrupt(Exception):
  pass


@pytest.mark.parametrize("method, step", [("save", 2 * EVA),
                                          ("save_best", EVA)])
def test_crash_inside_a_round_resumes_cleanly(layout, reference, tmp_path,
                                              monkeypatch, method, step):
  """A crash after the round's record reached metrics.jsonl but before its
  checkpoint ("save"): the resumed run drops that record, trains the round
  again and logs it once. A crash after the checkpoint but before its copy
  to best/ ("save_best"): the resume copies it."""
  workdir = str(tmp_path / "run")
  original = getattr(checkpoint.Checkpointer, method)

  def crash(self, at, *args):
    if at == step:
      raise _Interrupt()
    return original(self, at, *args)

  monkeypatch.setattr(checkpoint.Checkpointer, method, crash)
  with pytest.raises(_Interrupt):
    train.train_and_evaluate(_config(layout, workdir), verbose=0)
  assert [r["step"] for r in _records(workdir)] == list(range(EVA, step + 1, EVA))
  assert checkpoint.best_prefix(workdir) is None or method == "save"

  monkeypatch.setattr(checkpoint.Checkpointer, method, original)
  summary = train.train_and_evaluate(_config(layout, workdir), verbose=0)
  ref_dir, ref_summary = reference
  assert _records(workdir) == _records(ref_dir)
  _assert_same_checkpoint(_last(workdir), _last(ref_dir))
  _assert_same_checkpoint(checkpoint.best_prefix(workdir),
                          checkpoint.best_prefix(ref_dir))
  assert summary["best_checkpoint"] == ref_summary["best_checkpoint"]


def test_paper_mode_resumes_exactly(layout, tmp_path, monkeypatch):
  """Paper mode also trains the networks and draws dropout masks: the
  checkpoint holds their weights, Adam state and the dropout seed states."""
  paper = dict(mode="paper", dropout=0.3, train_steps=2 * EVA)
  ref_dir, workdir = str(tmp_path / "ref"), str(tmp_path / "run")
  train.train_and_evaluate(_config(layout, ref_dir, **paper), verbose=0)
  original = checkpoint.Checkpointer.save

  def crash(self, at):
    if at == 2 * EVA:
      raise _Interrupt()
    return original(self, at)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", crash)
  with pytest.raises(_Interrupt):
    train.train_and_evaluate(_config(layout, workdir, **paper), verbose=0)
  monkeypatch.setattr(checkpoint.Checkpointer, "save", original)
  train.train_and_evaluate(_config(layout, workdir, **paper), verbose=0)
  assert _records(workdir) == _records(ref_dir)
  _assert_same_checkpoint(_last(workdir), _last(ref_dir))
  names = _tensors(_last(workdir))
  assert "model/fusion.Sseed_generator/.ATTRIBUTES/VARIABLE_VALUE" in names


def test_killed_after_the_last_checkpoint_just_finishes(layout, reference,
                                                         tmp_path):
  ref_dir, ref_summary = reference
  copy = str(tmp_path / "copy")
  shutil.copytree(ref_dir, copy)
  path = os.path.join(copy, "metrics.json")
  with open(path) as f:
    summary = json.load(f)
  with open(path, "w") as f:
    json.dump(dict(summary, finished=False), f)
  summary = train.train_and_evaluate(_config(layout, copy), verbose=0)
  assert summary["finished"] is True and summary["started_from_step"] == STEPS
  assert _records(copy) == _records(ref_dir)
  assert summary["best"] == ref_summary["best"]


def test_a_workdir_in_use_is_refused(layout, tmp_path):
  workdir = str(tmp_path / "run")
  lock = train.lock_workdir(workdir)
  try:
    with pytest.raises(UsageError, match="in use by another run"):
      train.train_and_evaluate(_config(layout, workdir), verbose=0)
  finally:
    lock.close()


def test_finished_workdir_is_refused_unless_overwrite(layout, reference,
                                                      tmp_path):
  ref_dir, _ = reference
  with pytest.raises(UsageError, match="finished run.*--overwrite"):
    train.train_and_evaluate(_config(layout, ref_dir), verbose=0)
  # --overwrite clears it (checked on a copy, the reference stays intact).
  copy = str(tmp_path / "copy")
  shutil.copytree(ref_dir, copy)
  assert train.prepare_workdir(_config(layout, copy, overwrite=True)) is None
  assert sorted(os.listdir(copy)) == [".lock"]  # the run lock stays


def test_unfinished_workdir_with_other_flags_is_refused(layout, reference,
                                                        tmp_path):
  ref_dir, _ = reference
  copy = str(tmp_path / "copy")
  shutil.copytree(ref_dir, copy)
  path = os.path.join(copy, "metrics.json")
  with open(path) as f:
    summary = json.load(f)
  with open(path, "w") as f:
    json.dump(dict(summary, finished=False), f)
  # Same flags (train_steps and tensorboard may change): resume.
  assert train.prepare_workdir(_config(layout, copy, train_steps=24,
                                       tensorboard=True)) == _last(copy)
  with pytest.raises(UsageError, match="--learning_rate: 0.001 there, 0.5 here"):
    train.prepare_workdir(_config(layout, copy, learning_rate=0.5))
  assert train.prepare_workdir(_config(layout, copy, learning_rate=0.5,
                                       overwrite=True)) is None
  # Unfinished without a checkpoint: started afresh.
  with open(os.path.join(copy, "metrics.jsonl"), "w") as f:
    f.write('{"step": 3}\n')
  assert train.prepare_workdir(_config(layout, copy)) is None
  assert not os.path.exists(os.path.join(copy, "metrics.jsonl"))


def test_restore_from_continues_another_runs_checkpoint(layout, reference,
                                                        tmp_path):
  ref_dir, _ = reference
  start = os.path.join(ref_dir, "checkpoints", f"ckpt-{EVA}")
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(
      _config(layout, workdir, restore_from=start), verbose=0)
  assert summary["started_from_step"] == EVA
  assert [r["step"] for r in _records(workdir)] == list(
      range(2 * EVA, STEPS + 1, EVA))
  assert _records(workdir) == _records(ref_dir)[1:]
  _assert_same_checkpoint(_last(workdir), _last(ref_dir))
  with pytest.raises(UsageError, match="multiple of --eva_batches"):
    train.train_and_evaluate(
        _config(layout, str(tmp_path / "other"), restore_from=start,
                eva_batches=2, train_steps=12), verbose=0)


def test_init_from_starts_a_paper_mode_run_from_faithful_weights(layout, reference,
                                                                   tmp_path):
  ref_dir, _ = reference
  start = os.path.join(ref_dir, "checkpoints", f"ckpt-{EVA}")
  workdir = str(tmp_path / "paper")
  # A learning rate too small to move anything: the weights the run trained
  # from are then its checkpoint's, to float precision.
  summary = train.train_and_evaluate(
      _config(layout, workdir, init_from=start, mode="paper",
              learning_rate=1e-12, train_steps=EVA), verbose=0)
  assert "started_from_step" not in summary
  assert [r["step"] for r in _records(workdir)] == [EVA]  # from step 0
  # The weights (float); integer state such as dropout's seed counter moves.
  before = {k: v for k, v in _tensors(start).items()
            if k.startswith("model/") and np.issubdtype(v.dtype, np.floating)}
  after = _tensors(_last(workdir))
  assert len(before) > 4  # tables and the fusion / attention networks
  for name, value in before.items():
    np.testing.assert_allclose(after[name], value, rtol=0, atol=1e-6, err_msg=name)
  with pytest.raises(UsageError, match="`--init_from` must not be given with "
                     "--restore_from"):
    _config(layout, workdir, init_from=start, restore_from=start).validate()
  with pytest.raises(UsageError, match="`--init_from` must name an existing checkpoint"):
    _config(layout, workdir, init_from=str(tmp_path / "nothing")).validate()


def test_restore_api(layout, reference):
  ref_dir, summary = reference
  config = _config(layout, ref_dir)
  ds = train.load_data(config)
  model = train.build_model(config, ds)
  step = checkpoint.restore(model, ref_dir, which="best")
  assert step == summary["best_checkpoint"]["step"]
  saved = _tensors(checkpoint.best_prefix(ref_dir))
  np.testing.assert_array_equal(
      model.item_embeddings.numpy(),
      saved["model/item_embeddings/.ATTRIBUTES/VARIABLE_VALUE"])
  assert checkpoint.restore(model, ref_dir, which="last") == STEPS
  np.testing.assert_array_equal(
      model.user_embeddings.numpy(),
      _tensors(_last(ref_dir))["model/user_embeddings/.ATTRIBUTES/VARIABLE_VALUE"])
  np.testing.assert_allclose(model.fused_features.numpy(),
                             model.fusion(model.item_features).numpy(), atol=1e-6)
  assert checkpoint.restore(model, _last(ref_dir)) == STEPS
  assert checkpoint.restore(model, os.path.join(ref_dir, "checkpoints"),
                            which="last") == STEPS
  assert checkpoint.latest_step(ref_dir) == STEPS
  # A model of another shape is refused with one line.
  other = train.build_model(_config(layout, ref_dir, embed_dim=4), ds)
  with pytest.raises(UsageError, match="does not fit this model"):
    checkpoint.restore(other, ref_dir)
  with pytest.raises(UsageError, match="no checkpoint found"):
    checkpoint.restore(model, os.path.join(ref_dir, "nothing"))


def test_nan_loss_stops_with_step_and_term(layout, reference, tmp_path,
                                           monkeypatch):
  """cov_loss turns NaN at step EVA + 2: the run stops naming both, the
  checkpoint of step EVA stays the reference's, and the error reaches the
  command line as one line and a non-zero exit (a MamlError)."""
  calls = tf.Variable(0, dtype=tf.int64)
  original = losses.covariance_loss

  def covariance_loss(*args, **kwargs):
    calls.assign_add(1)
    nan = tf.constant(float("nan"))
    return original(*args, **kwargs) + tf.where(calls >= EVA + 2, nan, 0.0)

  monkeypatch.setattr(losses, "covariance_loss", covariance_loss)
  workdir = str(tmp_path / "run")
  with pytest.raises(NonFiniteLossError) as info:
    train.train_and_evaluate(_config(layout, workdir), verbose=0)
  message = str(info.value)
  assert isinstance(info.value, MamlError)
  assert f"step {EVA + 2}" in message and "cov_loss = nan" in message
  assert f"last good checkpoint, step {EVA}" in message
  assert "\n" not in message
  assert checkpoint.latest_step(workdir) == EVA
  assert [r["step"] for r in _records(workdir)] == [EVA]
  ref_dir, _ = reference
  _assert_same_checkpoint(_last(workdir),
                          os.path.join(ref_dir, "checkpoints", f"ckpt-{EVA}"))
  with open(os.path.join(workdir, "metrics.json")) as f:
    summary = json.load(f)
  assert summary["finished"] is False and "cov_loss = nan" in summary["error"]


def test_guard_names_the_term_and_checks_weights():
  from maml_tf.train.callbacks import NonFiniteGuard
  from maml_tf.models.maml import MAML
  guard = NonFiniteGuard(eva_batches=3)
  guard.on_epoch_begin(2)
  guard.on_train_batch_end(0, {"loss": 1.0, "embedding_loss": 1.0})
  with pytest.raises(NonFiniteLossError,
                     match=r"step 7: embedding_loss = inf; training stopped"):
    guard.on_train_batch_end(0, {"loss": float("inf"),
                                 "embedding_loss": float("inf")})
  with pytest.raises(NonFiniteLossError, match=r"step 8: loss = nan"):
    guard.on_train_batch_end(1, {"loss": float("nan"), "cov_loss": -1.0})
  model = MAML(4, 5, embed_dim=2, attention="none")
  guard.set_model(model)
  guard.on_epoch_end(2)
  model.item_embeddings.assign(np.full((5, 2), np.nan, np.float32))
  with pytest.raises(NonFiniteLossError, match="item_embeddings.*after step 9"):
    guard.on_epoch_end(2)
