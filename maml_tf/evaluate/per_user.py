"""Each test user's metrics of a run's selected round, last round and refit
model: <workdir>/per_user.npz, for paired significance tests between runs.

The file (numpy .npz, compressed, written atomically):
  users               int32 [n]: the test users (the dataset's user indices),
                      one entry per evaluated target (full ranking: each user
                      with a test item, ascending; leave-one-out: each test
                      pair, one a user);
  <label>/step        int64 scalar: the step of the weights evaluated;
  <label>/<metric>@k  float32 [n]: that user's value (the run's metrics.json
                      test metrics are their means);
for each label present: "best" (the selected round), "last" (the last
round) and "refit" (the --refit model; its own workdir's "last").

Where the values come from (no extra scoring pass for a round evaluated in
this process: the evaluators keep the latest call's per-user values):
  last: the last round's test evaluation. A resumed run that trained no
    round after the resume takes it from the per_user.npz the workdir
    already holds for that step (a finished run resumed to add --refit, or
    one killed after writing it), else evaluates its restored (last)
    weights once.
  best: a run that selects on validation: the test evaluation of the
    restored best checkpoint that gives metrics.json's results.best. A run
    that selects on test: the best round's own evaluation; when that round
    was before a resume, the workdir's per_user.npz for that step, else the
    best checkpoint restored and evaluated once at the end.
  refit: <workdir>/refit/per_user.npz's "last".
"""

from __future__ import annotations

import os
import zipfile
from typing import Dict, Mapping, Optional

import numpy as np

from maml_tf import fileio
from maml_tf.errors import DataError

FILE = "per_user.npz"
LABELS = ("best", "last", "refit")


def block(per_user: Mapping[str, np.ndarray], step: int) -> dict:
  """A kept copy of an evaluator's `per_user` (users and metric arrays) for
  the weights of `step`."""
  out = {name: np.asarray(values) for name, values in per_user.items()}
  out["step"] = int(step)
  return out


def write(workdir: str, blocks: Mapping[str, dict]) -> Optional[dict]:
  """Writes <workdir>/per_user.npz from {label: block}; returns what
  metrics.json says of it ({"file", "steps"}), or None when there is no
  block. The blocks must share their users (one test set)."""
  blocks = {label: b for label, b in blocks.items() if b is not None}
  if not blocks:
    return None
  unknown = set(blocks) - set(LABELS)
  if unknown:
    raise ValueError(f"per-user labels must be in {LABELS}. Received: {sorted(unknown)}")
  users = None
  arrays = {}
  for label in LABELS:
    if label not in blocks:
      continue
    b = blocks[label]
    these = np.asarray(b["users"], np.int32)
    if users is None:
      users = these
    elif not np.array_equal(users, these):
      raise ValueError(f"per-user block {label!r} has other test users than "
                       "the first block")
    arrays[f"{label}/step"] = np.int64(b["step"])
    for name, values in b.items():
      if name not in ("users", "step"):
        arrays[f"{label}/{name}"] = np.asarray(values, np.float32)
  arrays["users"] = users
  with fileio.atomic_writer(os.path.join(workdir, FILE), "wb") as f:
    np.savez_compressed(f, **arrays)
  return {"file": FILE, "steps": {label: int(blocks[label]["step"])
                                  for label in LABELS if label in blocks}}


def read(path: str) -> Dict[str, object]:
  """{"users": int32 [n], label: {"step": int, metric@k: float64 [n]}} of a
  per_user.npz.

  Raises:
    DataError: the file is missing or is not a per_user.npz.
  """
  try:
    with np.load(path) as z:
      arrays = {name: z[name] for name in z.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(f"{path}: cannot read per-user results ({e})") from None
  if "users" not in arrays:
    raise DataError(f"{path}: not a per-user results file (no `users`)")
  out = {"users": arrays.pop("users")}
  for name, values in arrays.items():
    label, _, metric = name.partition("/")
    entry = out.setdefault(label, {})
    entry[metric] = int(values) if metric == "step" else values.astype(np.float64)
  return out


def read_blocks(path: str) -> Dict[str, dict]:
  """{label: block as `block` makes it} of a per_user.npz; {} when the file
  is absent or unreadable."""
  try:
    data = read(path)
  except DataError:
    return {}
  users = data.pop("users")
  return {label: dict(values, users=users) for label, values in data.items()}


def read_block(path: str, label: str) -> Optional[dict]:
  """The block `label` of a per_user.npz, or None when the file or the block
  is absent."""
  return read_blocks(path).get(label)
