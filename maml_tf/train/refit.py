"""--refit: after selection on validation, a fresh model trained on train +
validation for the selected round's steps, in <workdir>/refit.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from maml_tf.config import Config
from maml_tf.data.dataset import Dataset
from maml_tf.train.workdir import REFIT, lock_workdir, prepare_workdir


def refit_dataset(ds: Dataset) -> Dataset:
  """Train + validation as the train split; no validation; test as is."""
  return dataclasses.replace(
      ds, name=f"{ds.name}+valid", train=np.concatenate([ds.train, ds.valid]),
      valid=np.zeros((0, 2), np.int64), train_time=None)


def refit(config: Config, ds: Dataset, protocol_info: dict, steps: int,
          verbose: int, strategy, train) -> dict:
  """--refit: a fresh model, same config, seed and --init_from, trained on
  train + validation for `steps` steps in <workdir>/refit (a workdir of its
  own: checkpoints, metrics, resumable). Returns the "refit" block of metrics.json:
  its test metrics at that step. `train` is the run's own training function
  (`run._train`), called for the refit's workdir.
  """
  workdir = os.path.join(config.workdir, REFIT)
  # --init_from is kept: the refit starts from the weights the selected run
  # started from (--restore_from is a run's own history: not carried over).
  refit_config = dataclasses.replace(
      config, workdir=workdir, train_steps=steps, patience=0, refit=False,
      export=False, overwrite=False, restore_from=None)
  refit_ds = refit_dataset(ds)
  info = dict(protocol_info, refit="train + validation pooled as train",
              sizes={"train": int(len(refit_ds.train)), "valid": 0,
                     "test": int(len(refit_ds.test))})
  summary = None
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      previous = json.load(f)
    if previous.get("finished") is True:
      if previous.get("last", {}).get("step") == steps:
        summary = previous  # finished before the main run was interrupted
      else:  # a refit of another best round: replace it
        refit_config = dataclasses.replace(refit_config, overwrite=True)
  except (OSError, ValueError, AttributeError):
    pass  # none yet, or an interrupted one: prepare_workdir resumes it
  if summary is None:
    if verbose:
      print(f"Refit: training a fresh model on train + validation "
            f"({len(refit_ds.train)} pairs) for {steps} steps in {workdir}",
            flush=True)
    lock = lock_workdir(workdir)
    try:
      resume_from = prepare_workdir(refit_config)
      summary = train(refit_config, None, verbose, strategy, resume_from,
                       prepared=(refit_ds, info))
    finally:
      lock.close()
  last = summary["last"]
  return {"step": last["step"], "trained_on": "train+valid",
          "train_pairs": int(len(refit_ds.train)), "workdir": workdir,
          "test": last["test"]}
