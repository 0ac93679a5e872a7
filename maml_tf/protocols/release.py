"""The MAML release's protocol (`--protocol=release`, the default).

The dataset's own train/test split is kept. With --validation_fraction > 0 a
random share of each user's train items is held out as validation
(`maml_tf.data.splits.split_validation`: stochastic rounding, every user keeps a
train item) and the best round is chosen on it; with 0 (the release) there
is no validation and the best round is chosen on test, as the release did.

Full ranking (`maml_tf.evaluate.full_ranking.Evaluator`): every item is scored; a user's
train items are excluded when ranking validation, train and validation items
when ranking test.
"""

from __future__ import annotations

import numpy as np

from maml_tf.data import splits as splits_lib
from maml_tf.evaluate import full_ranking


def sizes(ds) -> dict:
  return {"train": int(len(ds.train)), "valid": int(len(ds.valid)),
          "test": int(len(ds.test))}


def prepare(config, ds):
  """(ds with --validation_fraction of train held out, info)."""
  given = len(ds.valid) > 0
  out = splits_lib.split_validation(ds, config.validation_fraction, config.seed)
  if given:
    how = "the dataset's train / validation / test, as given"
  elif config.validation_fraction:
    how = (f"the dataset's train / test; validation: a share "
           f"{config.validation_fraction:g} of each user's train items, "
           f"seed {config.seed}")
  else:
    how = "the dataset's train / test, no validation"
  return out, {"name": "release", "split": how, "sizes": sizes(out)}


def full_ranking_evaluators(config, ds, model, jit_compile):
  """{"valid": ranks excluding train, "test": ranks excluding train and
  validation}; "valid" only when ds has a validation split."""
  known = np.concatenate([ds.train, ds.valid]) if len(ds.valid) else ds.train
  evaluators = {}
  if len(ds.valid):
    evaluators["valid"] = full_ranking.Evaluator(model, ds.train, ds.valid,
                                             config.topk, jit_compile=jit_compile)
  evaluators["test"] = full_ranking.Evaluator(model, known, ds.test, config.topk,
                                          jit_compile=jit_compile)
  return evaluators


def build_evaluators(config, ds, model, jit_compile):
  return full_ranking_evaluators(config, ds, model, jit_compile)
