"""Data: from files (or arrays) to a checked `Dataset`.

The flow: a format reader (`maml_tf.data.formats`, one file per format behind
a registry) reads a folder's interaction files into `Rows`;
`interactions.py` maps their ids, filters and merges them (what every format
shares); `modalities.py` names and orders the item modalities,
`features.py` and `feature_files.py` build or read their matrices; the
result is a checked `Dataset` (`dataset.py`), or one from plain arrays
(`arrays.py`). `splits.py` holds out a validation split, `sampler.py` draws
the training batches, `vocab.py` keeps the dataset's own ids beside a run.

The public names below import without TensorFlow (`PairSampler`, which
needs it, loads on first use).
"""

from __future__ import annotations

import importlib

from maml_tf.data.arrays import from_arrays
from maml_tf.data.dataset import Dataset, validate_dataset
from maml_tf.data.formats import DATASETS, load_dataset
from maml_tf.data.formats.office import OFFICE_DIR, load_office
from maml_tf.data.formats.release import load_release_layout, read_interactions
from maml_tf.data.splits import split_validation

_LAZY = {"PairSampler": "maml_tf.data.sampler"}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'maml_tf.data' has no attribute {name!r}")


__all__ = [
    "DATASETS", "Dataset", "OFFICE_DIR", "PairSampler", "from_arrays",
    "load_dataset", "load_office", "load_release_layout", "read_interactions",
    "split_validation", "validate_dataset",
]
