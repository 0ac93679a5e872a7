"""Raw user and item ids <-> the dense indices 0..n-1 a model uses.

A Dataset carries two vocabularies, `user_ids` and `item_ids`: position i
holds the raw id (a string, as written in the data files) of index i. None
means the identity, raw id = str(index), which is what the release's integer
ids are. `write_vocab` stores both in a run's workdir:

    <workdir>/vocab/users.tsv    <workdir>/vocab/items.tsv

one `index<TAB>raw_id` line per index after an `index<TAB>raw_id` header;
a tab, newline, carriage return or backslash inside a raw id is written as
\\t, \\n, \\r or \\\\. Each file is written to a temporary name and renamed,
so a reader never sees half of one. `load_vocab` reads them back and
`Vocab.lookup` maps raw ids to indices, naming an unknown id.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from maml_tf import fileio
from maml_tf.errors import DataError

FOLDER = "vocab"
FILES = {"users": "users.tsv", "items": "items.tsv"}
_HEADER = "index\traw_id"
_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


def _escape(text: str) -> str:
  for raw, esc in _ESCAPES:
    text = text.replace(raw, esc)
  return text


def _unescape(text: str) -> str:
  out, i = [], 0
  table = {esc[1]: raw for raw, esc in _ESCAPES}
  while i < len(text):
    if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
      out.append(table[text[i + 1]])
      i += 2
    else:
      out.append(text[i])
      i += 1
  return "".join(out)


class Vocab:
  """index -> raw id, and raw id -> index.

  Args:
    kind: "users" or "items", named in errors.
    ids: raw ids in index order (unique), or None with `size` for the
      identity vocabulary (raw id = str(index)).
    size: the number of indices when `ids` is None.
    source: where it came from (a file), named in errors.
  """

  def __init__(self, kind: str, ids: Optional[Sequence[str]] = None,
               size: Optional[int] = None, source: str = ""):
    self.kind = kind
    self.source = source
    if ids is None:
      if size is None:
        raise ValueError("Vocab needs `ids` or `size`")
      self.ids = None
      self.size = int(size)
    else:
      self.ids = np.asarray(ids, dtype=object)
      self.size = len(self.ids)
    self._index: Optional[Dict[str, int]] = None

  def __len__(self) -> int:
    return self.size

  def raw(self, index: int) -> str:
    if not 0 <= index < self.size:
      raise DataError(f"{self.kind} index must be in [0, {self.size}). "
                      f"Received: {index}")
    return str(index) if self.ids is None else str(self.ids[index])

  def raw_ids(self) -> np.ndarray:
    """All raw ids, index order (object array of str)."""
    if self.ids is None:
      return np.arange(self.size).astype(str).astype(object)
    return self.ids

  def lookup(self, raw_ids: Iterable) -> np.ndarray:
    """int64 indices of the given raw ids (str, or int for integer ids).

    Raises:
      DataError: an id is not in the vocabulary (the first one is named).
    """
    raw = [str(r) for r in raw_ids]
    if self.ids is None:
      out = []
      for r in raw:
        text = r.strip()
        if not (text.isascii() and text.isdigit() and int(text) < self.size):
          self._unknown(r)
        out.append(int(text))
      return np.array(out, np.int64)
    if self._index is None:
      self._index = {str(r): i for i, r in enumerate(self.ids)}
    out = np.empty(len(raw), np.int64)
    for k, r in enumerate(raw):
      i = self._index.get(r)
      if i is None:
        self._unknown(r)
      out[k] = i
    return out

  def _unknown(self, raw):
    where = f" ({self.source})" if self.source else ""
    example = ", ".join(repr(self.raw(i)) for i in range(min(3, self.size)))
    raise DataError(f"unknown {self.kind[:-1]} id {raw!r}: not among the "
                    f"{self.size} {self.kind} of the vocabulary{where}, e.g. "
                    f"{example}")


def dataset_vocabs(ds) -> Dict[str, Vocab]:
  """{"users": Vocab, "items": Vocab} of a Dataset."""
  return {"users": Vocab("users", getattr(ds, "user_ids", None), ds.n_users),
          "items": Vocab("items", getattr(ds, "item_ids", None), ds.n_items)}


def write_vocab(workdir: str, ds) -> str:
  """Writes <workdir>/vocab/users.tsv and items.tsv atomically; returns the
  folder."""
  folder = os.path.join(workdir, FOLDER)
  os.makedirs(folder, exist_ok=True)
  for kind, v in dataset_vocabs(ds).items():
    path = os.path.join(folder, FILES[kind])
    with fileio.atomic_writer(path, "w", encoding="utf-8", newline="\n") as f:
      f.write(_HEADER + "\n")
      raw = v.raw_ids()
      for start in range(0, len(raw), 100_000):
        f.write("".join(f"{start + k}\t{_escape(str(r))}\n"
                        for k, r in enumerate(raw[start:start + 100_000])))
  return folder


def load_vocab(workdir: str) -> Dict[str, Vocab]:
  """Reads what `write_vocab` wrote: {"users": Vocab, "items": Vocab}.

  Raises:
    DataError: a file is missing or malformed (line named).
  """
  out = {}
  for kind, name in FILES.items():
    path = os.path.join(workdir, FOLDER, name)
    try:
      with open(path, "r", encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    except FileNotFoundError:
      raise DataError(f"{path}: file not found (vocabularies are written by "
                      f"training into <workdir>/{FOLDER}/)") from None
    except (OSError, UnicodeDecodeError) as e:
      raise DataError(f"{path}: cannot read ({e})") from e
    if lines and lines[-1] == "":
      lines.pop()
    if not lines or lines[0] != _HEADER:
      raise DataError(f"{path}: line 1: expected the header "
                      f"{_HEADER!r}. Received: {lines[0] if lines else ''!r}")
    ids = []
    for number, line in enumerate(lines[1:], 2):
      index, sep, raw = line.partition("\t")
      if not sep or index != str(number - 2):
        raise DataError(f"{path}: line {number}: must be "
                        f"'{number - 2}<TAB>raw id'. Received: {line!r}")
      ids.append(_unescape(raw))
    if len(set(ids)) != len(ids):
      raise DataError(f"{path}: a raw id appears twice")
    out[kind] = Vocab(kind, ids, source=path)
  return out


def check_workdir(workdir: str, ds) -> bool:
  """Checks that a run's saved vocabularies are the Dataset's.

  A checkpoint's indices mean the raw ids of <workdir>/vocab/; data loaded
  again (e.g. to export that checkpoint) must number them the same, else
  every answer by raw id would name other users and items.

  Returns:
    True when both vocabularies match, False when <workdir>/vocab/ does not
    exist (a run from before vocabularies were written: nothing to check).

  Raises:
    DataError: they differ (the file, the first index that differs and both
      raw ids are named), or a file is malformed.
  """
  if not os.path.isdir(os.path.join(workdir, FOLDER)):
    return False
  saved = load_vocab(workdir)
  for kind, now in dataset_vocabs(ds).items():
    old, new = saved[kind].raw_ids(), now.raw_ids()
    path = saved[kind].source
    if len(old) != len(new):
      raise DataError(f"{path}: the run has {len(old)} {kind}, the data loaded "
                      f"now {len(new)}: export with the data the run trained on")
    differ = np.flatnonzero(old.astype(str) != new.astype(str))
    if len(differ):
      i = int(differ[0])
      raise DataError(f"{path}: {kind[:-1]} index {i} is {str(old[i])!r} in the "
                      f"run, {str(new[i])!r} in the data loaded now: export with "
                      "the data the run trained on")
  return True


__all__ = ["FILES", "FOLDER", "Vocab", "check_workdir", "dataset_vocabs",
           "load_vocab", "write_vocab"]
