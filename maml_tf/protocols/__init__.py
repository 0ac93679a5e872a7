"""Evaluation protocols: how a Dataset is split, and how a model is scored.

Each protocol is a module of this package with two functions:

  prepare(config, ds) -> (Dataset, info): the loaded dataset re-split the
    protocol's way (train / valid / test), and a JSON-able description of the
    split for metrics.json ("protocol" block: name, how it was split, sizes).
  build_evaluators(config, ds, model, jit_compile) -> {"valid": ...,
    "test": ...}: callables returning {metric@k: value}; "valid" only when
    there is a validation split.

`release` (the MAML release's train/test split, optionally a
--validation_fraction hold-out; full ranking), `loo` (leave the latest
interaction out, sampled candidates) and `split` (a random 8:1:1 split of
every user's interactions, full ranking, as MARIO and LATTICE evaluate).

This file stays free of TensorFlow so that Config can read DEFAULTS cheaply.
"""

from __future__ import annotations

import importlib

NAMES = ("release", "loo", "split")

# The per-protocol defaults of the flags left unset (None in Config); Config
# resolves them once, in __post_init__.
DEFAULTS = {
    "release": {"topk": (10,), "select_metric": "ndcg@10", "patience": 0},
    "loo": {"topk": (10,), "select_metric": "ndcg@10", "patience": 0},
    "split": {"topk": (10, 20), "select_metric": "recall@20", "patience": 20},
}


def get(name: str):
  """The module of protocol `name` (one of NAMES)."""
  if name not in NAMES:
    raise ValueError(f"`protocol` must be one of {', '.join(NAMES)}. "
                     f"Received: {name!r}")
  return importlib.import_module(f"{__name__}.{name}")
