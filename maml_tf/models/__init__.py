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
         "modality-preserving decoders over an mf, lightgcn or ngcf backbone (Kim "
         "et al., CIKM 2022)", uses_features=True, one_negative=True),
    Spec("neumf", "neumf", "NeuMF", "neural collaborative filtering: GMF and "
         "MLP towers fused into one logit, cross-entropy over the sampled "
         "negatives, no features (He et al., WWW 2017)"),
    Spec("vbpr", "vbpr", "VBPR", "BPR-MF plus the users' preference for a "
         "learned projection of the item features and a feature bias (He & "
         "McAuley, AAAI 2016)", uses_features=True, one_negative=True),
    Spec("cmlf", "cmlf", "CMLF", "CML plus the feature loss pulling items "
         "towards a trained MLP of their features (Hsieh et al., WWW 2017, "
         "section 3.4)", uses_features=True),
    Spec("ngcf", "ngcf", "NGCF", "BPR over tables propagated on the train "
         "graph by bi-interaction layers, concatenated, no features (Wang et "
         "al., SIGIR 2019)", one_negative=True),
    Spec("mmgcn", "mmgcn", "MMGCN", "a graph convolution per content "
         "modality with modality-specific user preferences, summed, BPR (Wei "
         "et al., MM 2019)", uses_features=True, one_negative=True),
    Spec("grcn", "grcn", "GRCN", "the train graph refined per content "
         "modality by routing user preferences over item content, a GCN of ID "
         "embeddings on it, concatenated with the content representations, BPR "
         "(Wei et al., MM 2020)", uses_features=True, one_negative=True),
    Spec("lattice", "lattice", "LATTICE", "item-item kNN graphs mined from "
         "raw and learned item features, fused, convolving the item "
         "embeddings added to a LightGCN backbone's, BPR (Zhang et al., MM "
         "2021)", uses_features=True, one_negative=True),
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
