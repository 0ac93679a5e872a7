"""The MAML release's protocol (`--protocol=release`, the default).

The dataset's own train/test split is kept. With --validation_fraction > 0 a
random share of each user's train items is held out as validation
(`maml_tf.data.splits.split_validation`: stochastic rounding, every user keeps a
train item) and the best round is chosen on it; with 0 (the release) there
is no validation and the best round is chosen on test, as the release did.

Full ranking (`maml_tf.evaluate.full_ranking.Evaluator`): every item is scored; a user's
train items are excluded when ranking validation, train and validation items
when ranking test. With --eval_candidates=N > 0 both splits rank in two
stages instead (`maml_tf.evaluate.two_stage`: the N best items of the
model's retrieval space, re-ranked by its full score), and the test split's
evaluator compares itself with full ranking on a sample of its users every
round (metrics.json's "ranking").
"""

from __future__ import annotations

import numpy as np

from maml_tf.data import splits as splits_lib
from maml_tf.evaluate import full_ranking, two_stage


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
  validation}; "valid" only when ds has a validation split. Two-stage with
  --eval_candidates > 0 (the test split also measuring its agreement with
  full ranking on `two_stage.AGREEMENT_USERS` users)."""
  known = np.concatenate([ds.train, ds.valid]) if len(ds.valid) else ds.train
  n = config.eval_candidates

  def evaluator(exclude, target, check_users=0):
    if n:
      return two_stage.TwoStageEvaluator(
          model, exclude, target, config.topk, n_candidates=n,
          check_users=check_users, seed=config.seed, jit_compile=jit_compile)
    return full_ranking.Evaluator(model, exclude, target, config.topk,
                                  jit_compile=jit_compile)

  evaluators = {}
  if len(ds.valid):
    evaluators["valid"] = evaluator(ds.train, ds.valid)
  evaluators["test"] = evaluator(known, ds.test, two_stage.AGREEMENT_USERS)
  return evaluators


def build_evaluators(config, ds, model, jit_compile):
  return full_ranking_evaluators(config, ds, model, jit_compile)
