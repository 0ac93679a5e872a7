"""The random per-user split (`--protocol=split`), as MARIO and LATTICE
(MM 2021) evaluate.

Every (user, item) interaction of the dataset (train, test and any given
validation, pooled; a pair seen twice counts once) is assigned to train,
validation or test, 8:1:1 per user, at random, seeded by --seed. Rounding,
for a user with n interactions:

  n >= 3: n_valid = n_test = max(1, floor(n / 10 + 1/2)) (round half up),
          n_train = n - 2 n_test (>= 1 always: n_test <= n / 10 + 1/2);
  n == 2: one train, one test, no validation;
  n == 1: train only (nothing to test the user on).

So a 5-core user (n = 5..14) gives one validation and one test item, n =
15..24 two of each, and so on; the shares over a dataset are close to 0.1
each (a little over when many users have 5-9 items).

A dataset that already carries a validation split (Dataset.valid non-empty,
e.g. a given valid.csv) is used as is: its train / valid / test are not
re-split, and metrics.json says so ("split": "given").

Full ranking over every item (`maml_tf.evaluate.full_ranking.Evaluator`): validation
ranks exclude the user's train items; test ranks exclude train and
validation items (in two stages with --eval_candidates > 0, as the release
protocol: `release.full_ranking_evaluators`). The best round is chosen on
validation (--select_metric, recall@20 by default) and training stops after
--patience evaluations without improvement (20 by default).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maml_tf.protocols import release

RULE = ("per user of n interactions: n >= 3: valid = test = max(1, "
        "floor(n/10 + 1/2)), the rest train; n = 2: 1 train, 1 test; n = 1: "
        "train only")


def split_counts(n: np.ndarray):
  """(n_valid, n_test) per user, for interaction counts n (the rule above)."""
  n = np.asarray(n, np.int64)
  tenth = np.maximum(1, np.floor(n / 10 + 0.5).astype(np.int64))
  n_test = np.where(n >= 3, tenth, np.where(n == 2, 1, 0))
  n_valid = np.where(n >= 3, tenth, 0)
  return n_valid, n_test


def random_split(ds, seed: int):
  """Pools ds's train, valid and test pairs and splits them per user, 8:1:1.

  Deterministic for a seed (numpy's default_rng). Times are dropped (the
  split does not use them). Returns a new Dataset named "<name>-split".
  """
  pairs = np.concatenate([np.asarray(ds.train, np.int64).reshape(-1, 2),
                          np.asarray(ds.valid, np.int64).reshape(-1, 2),
                          np.asarray(ds.test, np.int64).reshape(-1, 2)])
  pairs = np.unique(pairs, axis=0)  # sorted by (user, item)
  users = pairs[:, 0]
  n_u = np.bincount(users, minlength=ds.n_users)
  n_valid, n_test = split_counts(n_u)
  rng = np.random.default_rng(seed)
  # A uniform random order inside each user's group: rank 0.. n_u - 1.
  order = np.lexsort((rng.random(len(pairs)), users))
  starts = np.concatenate([[0], np.cumsum(n_u)[:-1]])
  rank = np.empty(len(pairs), np.int64)
  rank[order] = np.arange(len(pairs)) - starts[users[order]]
  is_test = rank < n_test[users]
  is_valid = ~is_test & (rank < (n_test + n_valid)[users])
  is_train = ~is_test & ~is_valid
  return dataclasses.replace(
      ds, name=f"{ds.name}-split", train=pairs[is_train], valid=pairs[is_valid],
      test=pairs[is_test], train_time=None, test_time=None)


def prepare(config, ds):
  """(ds split 8:1:1 per user, or as given when it has a validation split;
  info)."""
  if len(ds.valid):
    out, how = ds, "given"
    detail = "the dataset's train / validation / test, used as given"
  else:
    out, how = random_split(ds, config.seed), "random"
    detail = f"random 8:1:1 per user, seed {config.seed}; {RULE}"
  return out, {"name": "split", "split": how, "detail": detail,
               "seed": config.seed if how == "random" else None,
               "sizes": release.sizes(out)}


def build_evaluators(config, ds, model, jit_compile):
  """{"valid": full ranking excluding train, "test": excluding train and
  validation}."""
  return release.full_ranking_evaluators(config, ds, model, jit_compile)
