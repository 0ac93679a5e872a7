"""One atomic write for every file a run keeps: a writer killed mid-write
leaves the old content or the new one, never a part.

Each case runs a real writer of the package in a forked child that SIGKILLs
itself at one point of the write: during the first write into the temporary
file ("mid-write"), after the content is written but before the rename
("before-rename"), or after the rename ("after-rename"). The parent then
reads the first file the writer writes, as the package reads it (a writer of
several files replaces each atomically, one after the other).
"""

import builtins
import json
import os
import signal
import types

import numpy as np
import pytest

from maml_tf import fileio
from maml_tf.config import Config
from maml_tf.data import vocab as vocab_lib
from maml_tf.data import from_arrays
from maml_tf.errors import UsageError

POINTS = ("mid-write", "before-rename", "after-rename")
EXPECTED = {"mid-write": "old", "before-rename": "old", "after-rename": "new"}


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


class _KillOnWrite:
  """A file whose first write() writes half of its text, then kills."""

  def __init__(self, f):
    self._f = f

  def write(self, data):
    self._f.write(data[:max(1, len(data) // 2)])
    self._f.flush()
    _die()

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return self._f.__exit__(*exc)


def _arm(point):
  """In the child: make the write die at `point`."""
  if point == "mid-write":
    real_open = builtins.open

    def killing_open(path, mode="r", *args, **kwargs):
      f = real_open(path, mode, *args, **kwargs)
      name = os.path.basename(str(path))
      if name.startswith(fileio.TMP_PREFIX) and ("w" in mode or "a" in mode):
        return _KillOnWrite(f)
      return f

    builtins.open = killing_open
  elif point == "before-rename":
    os.replace = lambda *a, **k: _die()
  else:
    real_replace = os.replace

    def replace_then_die(*args, **kwargs):
      real_replace(*args, **kwargs)
      _die()

    os.replace = replace_then_die


def _run_killed(write, point):
  """Runs write() in a forked child killed at `point`; asserts it was."""
  pid = os.fork()
  if pid == 0:  # the child: never returns to pytest
    try:
      _arm(point)
      write()
    finally:
      os._exit(3)  # reached only if the kill did not happen
  _, status = os.waitpid(pid, 0)
  assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
      f"the writer was not killed at {point} (status {status})")


@pytest.fixture
def ds():
  train = np.array([[0, 0], [0, 1], [1, 2], [2, 0]])
  test = np.array([[0, 2], [1, 0], [2, 1]])
  return from_arrays(train, test, n_users=3, n_items=3)


def _kinds(tmp_path, ds):
  """{kind: (setup_old, write_new, read)} over the package's real writers."""
  from maml_tf.evaluate.callback import EvaluationCallback
  from maml_tf.evaluate.records import read_records
  from maml_tf.train import checkpoint as checkpoint_lib
  from maml_tf.train import run as run_lib
  from maml_tf.tuning import loop as tuning_loop

  work = tmp_path / "w"
  work.mkdir()

  # metrics.jsonl: a round appended by the evaluation callback.
  cb = object.__new__(EvaluationCallback)
  cb.workdir = str(work)
  old_rounds = [{"step": 1, "test": {"ndcg@10": 0.1}}]

  def metrics_old():
    cb.records = []
    for r in old_rounds:
      cb.append_record(dict(r))

  def metrics_new():
    cb.records = [dict(r) for r in old_rounds]
    cb.append_record({"step": 2, "test": {"ndcg@10": 0.2}})

  # metrics.json: the summary.
  summary_cb = object.__new__(EvaluationCallback)
  summary_cb.workdir = str(work)

  def summary_write(rounds):
    summary_cb.summarize = lambda finished: {"finished": finished,
                                             "rounds": rounds}
    summary_cb.write_summary(finished=rounds == 2)

  # checkpoints/best/best.json and its copy: the index of the best round.
  ck = object.__new__(checkpoint_lib.Checkpointer)
  ck.best_dir = str(work / "checkpoints" / "best")
  src = work / "src"
  src.mkdir()

  def best_write(step):
    prefix = src / f"ckpt-{step}"
    (src / f"ckpt-{step}.index").write_bytes(b"index %d" % step)
    (src / f"ckpt-{step}.data-00000-of-00001").write_bytes(b"data" * 1000)
    ck.save_best(step, str(prefix), {"value": step / 10})

  def best_read():
    with open(os.path.join(ck.best_dir, "best.json")) as f:
      return json.load(f)["step"]

  # vocab/: the dataset's own ids.
  other = from_arrays(np.array([[0, 0], [1, 1]]), np.array([[0, 1], [1, 0]]),
                      n_users=2, n_items=2)

  def vocab_read():
    v = vocab_lib.load_vocab(str(work))
    return list(v["users"].raw_ids())

  # flags.txt: written by the run's first step.
  config_old = Config(workdir=str(work), margin=1.0)
  config_new = Config(workdir=str(work), margin=2.0)

  def flags_read():
    return (work / "flags.txt").read_text()

  # trials.jsonl and best.flags: the search's records.
  search = object.__new__(tuning_loop.Search)
  search.tune_dir = str(work)

  def trials_write(n):
    trials = {f"t{i}": i for i in range(n)}
    search.tuner = types.SimpleNamespace(oracle=types.SimpleNamespace(
        start_order=list(trials), trials=trials))
    search.record = lambda i: {"trial": i, "status": "COMPLETED",
                               "objective": {"value": float(i)},
                               "values": {}}
    search.best_flagfile = lambda best: f"--margin={best['trial']}\n"
    search.write_reports()

  def trials_read():  # the first file the search writes (best.flags next)
    with open(work / "trials.jsonl") as f:
      return len([l for l in f.read().splitlines() if l.strip()])

  return {
      "metrics.jsonl": (metrics_old, metrics_new,
                        lambda: [r["step"] for r in read_records(cb.path)]),
      "metrics.json": (lambda: summary_write(1), lambda: summary_write(2),
                       lambda: json.loads((work / "metrics.json").read_text())),
      "checkpoints/best": (lambda: best_write(3), lambda: best_write(6),
                           best_read),
      "vocab": (lambda: vocab_lib.write_vocab(str(work), other),
                lambda: vocab_lib.write_vocab(str(work), ds), vocab_read),
      "flags.txt": (lambda: run_lib._write_run_files(config_old, ds, 0),
                    lambda: run_lib._write_run_files(config_new, ds, 0),
                    flags_read),
      "tuning records": (lambda: trials_write(2), lambda: trials_write(3),
                         trials_read),
  }


KINDS = ("metrics.jsonl", "metrics.json", "checkpoints/best", "vocab",
         "flags.txt", "tuning records")


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_writer_leaves_the_old_or_the_new_content(tmp_path, ds, kind,
                                                           point):
  setup_old, write_new, read = _kinds(tmp_path, ds)[kind]
  setup_old()
  old = read()
  # What the new content reads as, from a writer that is not killed (in a
  # copy of the folder's state: run it, read, then restore the old).
  write_new()
  new = read()
  assert new != old, "the case must change the file"
  setup_old()
  assert read() == old
  _run_killed(write_new, point)
  assert read() == (old if EXPECTED[point] == "old" else new)


def test_atomic_path_removes_its_temporary_file_on_error(tmp_path):
  path = tmp_path / "f.txt"
  fileio.write_text_atomic(str(path), "old")
  with pytest.raises(RuntimeError):
    with fileio.atomic_writer(str(path)) as f:
      f.write("half")
      raise RuntimeError("boom")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["f.txt"]


def test_lock_folder_refuses_a_second_holder(tmp_path):
  lock = fileio.lock_folder(str(tmp_path / "w"), "workdir", "is in use")
  try:
    pid = os.fork()
    if pid == 0:
      try:
        fileio.lock_folder(str(tmp_path / "w"), "workdir", "is in use")
        os._exit(1)
      except UsageError as e:
        os._exit(0 if "`--workdir` is in use. Received:" in str(e) else 2)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
  finally:
    lock.close()
