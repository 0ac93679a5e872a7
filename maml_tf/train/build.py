"""What a run builds from its config: the compiled model and the protocol's
evaluators.
"""

from __future__ import annotations

import contextlib

from maml_tf import models as models_lib
from maml_tf.train import optimizers as optimizers_lib
from maml_tf import protocols
from maml_tf.config import Config
from maml_tf.data.dataset import Dataset
from maml_tf.errors import UsageError


def build_model(config: Config, ds: Dataset, strategy=None):
  """The compiled model `config.model` names (`maml_tf.models`), its
  variables created under `strategy`'s scope
  (None: no tf.distribute strategy, one device).

  Under a tf.distribute strategy the train step is not XLA-compiled as a
  whole (XLA cannot read a replica's variables placed on another device);
  the fast path's fused kernels still are.
  """
  scope = contextlib.nullcontext() if strategy is None else strategy.scope()
  with scope:
    model = models_lib.build(config, ds)
    model.compile(
        optimizer=optimizers_lib.GroupedAdam(
            tables=model.table_variables(),
            network_scale=config.network_lr_scale,
            learning_rate=config.learning_rate, beta_1=0.9, beta_2=0.999,
            epsilon=1e-8),
        jit_compile=(config.jit_compile and strategy is None and
                     model.compiles_whole_step))
  return model


def build_evaluators(config: Config, ds: Dataset, model, jit_compile=None):
  """{"valid": ..., "test": ...} of --protocol: validation ranks exclude
  train items, test ranks train and validation items."""
  jit = config.jit_compile if jit_compile is None else jit_compile
  return protocols.get(config.protocol).build_evaluators(config, ds, model, jit)


def _require_tensorboard():
  try:
    import tensorboard  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise UsageError("`--tensorboard` needs the tensorboard package (pip "
                     "install tensorboard); pass --notensorboard to train "
                     "without it. Received: --tensorboard") from None
