"""One way to write a file and one way to lock a folder, for every writer.

`atomic_path(path)` yields a temporary path in the same folder; when the
block ends without an error, the temporary file is flushed to disk (fsync),
renamed over `path` (one `os.replace`, atomic on POSIX) and the folder's
entry is flushed too (fsync of the folder). A reader therefore sees either
the old content or the new one, never a part, even after a crash or a kill
mid-write; on an error the temporary file is removed and `path` is left as
it was. `atomic_writer`, `write_text_atomic` and `write_json_atomic` are
built on it.

`lock_folder(folder, flag, busy)` holds `<folder>/.lock` with an exclusive
`flock` for one process (a killed process releases it), so two runs or two
searches never write into one folder at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from maml_tf.errors import UsageError

try:
  import fcntl
except ImportError:  # not POSIX: no lock
  fcntl = None

LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"


def fsync_file(path: str) -> None:
  """Flushes a written file's content to disk."""
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def fsync_dir(path: str) -> None:
  """Flushes a folder's entries (a rename into it) to disk, where the
  platform allows it."""
  try:
    fd = os.open(path or ".", os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; on success it replaces `path`
  (fsync of the file, rename, fsync of the folder); on an error it is
  removed and `path` is untouched."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + ".",
                             dir=folder)
  os.close(fd)
  try:
    yield tmp
    fsync_file(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(folder)


@contextlib.contextmanager
def atomic_writer(path: str, mode: str = "w", **open_kwargs):
  """`open(path, mode)` whose content appears at `path` only when the block
  ends without an error (see `atomic_path`)."""
  with atomic_path(path) as tmp:
    with open(tmp, mode, **open_kwargs) as f:
      yield f


def write_text_atomic(path: str, text: str) -> None:
  with atomic_writer(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_json_atomic(path: str, obj, indent: int = 2) -> None:
  with atomic_writer(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=indent)


def lock_folder(folder: str, flag: str, busy: str):
  """Creates `folder` and takes its lock for this process; returns the open
  lock file (close it to release; a killed process releases it too).

  Args:
    folder: the folder to lock.
    flag: the flag that named it, for messages (e.g. "workdir").
    busy: the rule a held lock breaks, e.g. "is in use by another run".

  Raises:
    UsageError: the folder is not writable, or another process holds it.
  """
  try:
    os.makedirs(folder, exist_ok=True)
    lock = open(os.path.join(folder, LOCK_FILE), "a")
  except OSError as e:
    raise UsageError(f"`--{flag}` must be a writable folder. Received: "
                     f"{folder!r} ({e.strerror})") from None
  if fcntl is not None:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      lock.close()
      raise UsageError(f"`--{flag}` {busy}. Received: {folder!r}") from None
  return lock
