"""A run's folder: its lock, whether it resumes, refuses or starts afresh, and
what a resume may change (each Config field says whether it may).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Optional

from maml_tf.train import checkpoint as checkpoint_lib
from maml_tf.data import vocab as vocab_lib
from maml_tf.evaluate import per_user as per_user_lib
from maml_tf import config as config_lib
from maml_tf import fileio
from maml_tf.config import Config
from maml_tf.errors import UsageError


# Flags a resumed run may change: they do not change what is computed
# (each Config field says so itself).
RESUMABLE_CHANGES = config_lib.names(
    resume={config_lib.RESUME_ANY, config_lib.RESUME_RUN})


REFIT = "refit"  # <workdir>/refit: the --refit run, a workdir of its own


RUN_FILES = ("metrics.json", "metrics.jsonl", "flags.txt", per_user_lib.FILE)


RUN_DIRS = (checkpoint_lib.CHECKPOINTS, "tensorboard", REFIT, vocab_lib.FOLDER)


def read_flagfile(text: str) -> dict:
  """`--name=value` / `--name` / `--noname` lines -> {name: value string}."""
  names = {f.name for f in dataclasses.fields(Config)}
  values = {}
  for line in text.splitlines():
    line = line.strip()
    if not line.startswith("--"):
      continue
    name, sep, value = line[2:].partition("=")
    if sep:
      values[name] = value
    elif name in names:
      values[name] = "true"
    elif name.startswith("no") and name[2:] in names:
      values[name[2:]] = "false"
  return values


def changed_flags(workdir: str, config: Config) -> list:
  """The flags whose values differ from the run recorded in workdir/flags.txt
  (those a resume may change left out), as (name, there, here) tuples."""
  try:
    with open(os.path.join(workdir, "flags.txt")) as f:
      there = read_flagfile(f.read())
  except OSError:
    return []
  # A flag added after the run was recorded ran with today's default.
  there = dict(read_flagfile(Config().to_flagfile()), **there)
  here = read_flagfile(config.to_flagfile())
  return [(name, there.get(name), here.get(name))
          for name in sorted(set(there) | set(here))
          if name not in RESUMABLE_CHANGES and there.get(name) != here.get(name)]


def clear_workdir(workdir: str):
  """Removes a run's files (metrics, per-user results, flags, checkpoints,
  TensorBoard logs)."""
  for name in RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)
  for name in RUN_DIRS:
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def lock_workdir(workdir: str):
  """Creates the workdir and takes its lock (<workdir>/.lock) for this process;
  returns the open lock file (close it to release; a killed process releases
  it too).

  Raises:
    UsageError: the folder is not writable, or another run holds the lock.
  """
  return fileio.lock_folder(workdir, "workdir", "is in use by another run; "
                            "wait for it to end or choose another folder")


def prepare_workdir(config: Config, read_only: bool = False) -> Optional[str]:
  """Readies the workdir; returns the checkpoint to resume from, or None.

  With `read_only` (a non-chief worker asking about the chief's workdir)
  nothing is written or cleared: it only decides, or refuses, the same way.

  - A finished run (metrics.json says "finished": true) is refused unless
    --overwrite, which clears it, or --refit when it has no refit yet: it is
    resumed from its last checkpoint (nothing more is trained up to its
    train_steps) and the refit is added.
  - An unfinished run with a checkpoint is resumed from its last checkpoint
    when its flags match (train_steps, keep_checkpoints, tensorboard, export
    and jit_compile may change); with other flags it is refused unless
    --overwrite, which clears it.
  - An unfinished run without a checkpoint is cleared and started afresh.

  Raises:
    UsageError: refused, or the folder is not writable.
  """
  workdir = config.workdir
  if not read_only:
    try:
      os.makedirs(workdir, exist_ok=True)
      probe = os.path.join(workdir, f".write-test-{os.getpid()}")
      with open(probe, "w"):
        pass
      os.remove(probe)
    except OSError as e:
      raise UsageError(f"`--workdir` must be a writable folder. Received: "
                       f"{workdir!r} ({e.strerror})") from None
  clear = (lambda _: None) if read_only else clear_workdir
  summary_path = os.path.join(workdir, "metrics.json")
  try:
    with open(summary_path) as f:
      summary = json.load(f)
    finished = summary.get("finished") is True
  except (OSError, ValueError, AttributeError):
    summary, finished = {}, False
  adds_refit = (finished and config.refit and not config.overwrite
                and "refit" not in summary.get("results", {}))
  if finished and not adds_refit:
    if not config.overwrite:
      raise UsageError(
          f"`--workdir` holds a finished run ({summary_path}); pass --overwrite"
          f" to replace it or choose another folder. Received: {workdir!r}")
    clear(workdir)
    return None
  last = checkpoint_lib.last_prefix(workdir)
  if last is None and adds_refit:
    raise UsageError(
        f"`--refit` on a finished run needs its checkpoints; {workdir} has "
        f"none. Pass --overwrite to train it again. Received: {workdir!r}")
  if last is None:
    clear(workdir)
    return None
  changed = changed_flags(workdir, config)
  if changed:
    if config.overwrite:
      clear(workdir)
      return None
    shown = ", ".join(f"--{name}: {there} there, {here} here"
                      for name, there, here in changed[:3])
    raise UsageError(
        f"`--workdir` holds {'a finished' if adds_refit else 'an unfinished'}"
        f" run with other settings ({shown}); "
        f"rerun with --flagfile={os.path.join(workdir, 'flags.txt')} to resume "
        f"it, or pass --overwrite to start afresh. Received: {workdir!r}")
  return last
