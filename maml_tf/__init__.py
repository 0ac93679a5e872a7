"""maml-tf: MAML (Liu et al., ACM MM 2019) in TensorFlow 2 / Keras 3, and the
metric-learning and multimodal recommenders compared with it.

The public API, importable from the top level (loaded on first use, so
`import maml_tf` stays light):

- the models, ordinary `keras.Model`s over `RankingModel`: `MAML`, `CML`,
  `LRML`, ... (`maml_tf.models.NAMES` lists the registered names;
  `maml_tf.models.get(name)` returns a class);
- data: `load_dataset`, `from_arrays`, `Dataset`, `PairSampler` (the
  seeded `(users, items [B, 1 + W])` batches every model trains on);
- runs: `Config`, `train_and_evaluate` (the whole run the CLI does);
- evaluation: `Evaluator` (full-ranking top-k metrics), `RankingMetrics`
  (a Keras callback putting them into the epoch logs for `EarlyStopping`
  and friends);
- serving: `export_saved_model`.

See the README's "From Python" section for a complete run.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Config": ("maml_tf.config", "Config"),
    "train_and_evaluate": ("maml_tf.train", "train_and_evaluate"),
    "load_dataset": ("maml_tf.data", "load_dataset"),
    "from_arrays": ("maml_tf.data", "from_arrays"),
    "Dataset": ("maml_tf.data", "Dataset"),
    "PairSampler": ("maml_tf.data.sampler", "PairSampler"),
    "Evaluator": ("maml_tf.evaluate", "Evaluator"),
    "RankingMetrics": ("maml_tf.evaluate", "RankingMetrics"),
    "RankingModel": ("maml_tf.models.base", "RankingModel"),
    "export_saved_model": ("maml_tf.export", "export_saved_model"),
}


def _model_classes():
  models = importlib.import_module("maml_tf.models")
  return {spec.cls: spec.name for spec in models.SPECS}


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  classes = _model_classes()
  if name in classes:
    return importlib.import_module("maml_tf.models").get(classes[name])
  raise AttributeError(f"module 'maml_tf' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY) | set(_model_classes()))


__all__ = sorted(set(_LAZY) | set(_model_classes()))
