"""The models, one a file over `base.RankingModel`, and their registry.

`--model=NAME` picks one. The registry knows, without importing TensorFlow,
what the command line needs before any work starts (the names, whether a
model reads item features, whether it trains on one negative per positive,
its one-line help); `get(name)` imports the model's module. A new model is
one file plus one `Spec` line here.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  module: str  # maml_tf.models.<module>
  cls: str
  help: str
  uses_features: bool = False
  one_negative: bool = False  # trains on exactly one negative per positive


SPECS: Tuple[Spec, ...] = (
    Spec("maml", "maml", "MAML", "attention over user, item and item features "
         "(Liu et al., MM 2019)", uses_features=True),
    Spec("lrml", "lrml", "LRML", "memory-based latent relation, no features "
         "(Tay et al., WWW 2018)", one_negative=True),
    Spec("cml", "cml", "CML", "plain squared distance, no features (Hsieh et "
         "al., WWW 2017); the same as maml --attention=none --modalities="),
    Spec("mf", "mf", "MF", "BPR matrix factorisation, dot product, no features "
         "(Rendle et al., UAI 2009)", one_negative=True),
    Spec("lightgcn", "lightgcn", "LightGCN", "BPR over tables propagated on "
         "the train graph, no features (He et al., SIGIR 2020)",
         one_negative=True),
    Spec("mario", "mario", "MARIO", "modality-aware attention and "
         "modality-preserving decoders over an mf or lightgcn backbone (Kim "
         "et al., CIKM 2022)", uses_features=True, one_negative=True),
)
_BY_NAME = {spec.name: spec for spec in SPECS}
NAMES = tuple(spec.name for spec in SPECS)


def spec(name: str) -> Spec:
  try:
    return _BY_NAME[name]
  except KeyError:
    raise ValueError(f"`model` must be one of {', '.join(NAMES)}. "
                     f"Received: {name!r}") from None


def get(name: str):
  """The model class registered as `name`."""
  s = spec(name)
  module = importlib.import_module(f"{__name__}.{s.module}")
  return getattr(module, s.cls)


def build(config, dataset):
  """The model `config.model` names, built for `dataset` (a `Dataset`)."""
  return get(config.model).from_run_config(config, dataset)
