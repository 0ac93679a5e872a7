"""Every setting of a run, built once from flags and checked before any work.

The field names are the command-line flag names, so `Config.to_flagfile()`
writes a flagfile that reruns the experiment exactly. Defaults are the
release's Office settings (SPEC §6) and its hard-coded constants.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Optional, Tuple

from maml_tf import models as models_lib
from maml_tf.errors import UsageError
from maml_tf.protocols import DEFAULTS as PROTOCOL_DEFAULTS
from maml_tf.protocols import NAMES as PROTOCOLS

MODES = ("faithful", "paper")
ATTENTIONS = ("scaled", "softmax", "none")
DATASETS = ("office", "custom")
STRATEGIES = ("default", "mirrored", "multi_worker")
MODELS = models_lib.NAMES
NEGATIVE_RELATIONS = ("positive", "own")
LRML_DISTANCES = ("l2", "l1", "squared")
DATA_FORMATS = ("auto", "release", "recbole", "mmrec", "npz")
BACKBONES = ("mf", "lightgcn")
MARIO_FUSIONS = ("attention", "mean", "max", "fc")
MODALITY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Config:
  """A run's settings. See scripts/train.py for the help text of each."""

  # Data.
  dataset: str = "office"
  data_dir: Optional[str] = None
  text_features: Optional[str] = None
  image_features: Optional[str] = None
  extra_features: Tuple[str, ...] = ()  # "name=path" items
  modalities: Optional[Tuple[str, ...]] = None  # None: the dataset's default
  text_dim: int = 512
  cache_dir: Optional[str] = None
  validation_fraction: float = 0.0
  data_format: str = "auto"
  min_rating: Optional[float] = None  # None: keep every rating
  kcore: int = 0  # 0: no k-core filter

  # Model.
  model: str = "maml"
  mode: str = "faithful"
  attention: str = "scaled"
  embed_dim: int = 64
  hidden_layer_dim: int = 256
  dropout: float = 0.2
  attention_dropout: float = 0.05
  attention_l2: float = 100.0
  paper_trains: Tuple[str, ...] = ("fusion", "attention")
  feature_scaling: float = 1.0
  clip_norm: float = 1.0
  memory_slots: int = 10
  negative_relation: str = "positive"
  lrml_distance: str = "l2"

  # Model: BPR, graph and multimodal models.
  backbone: str = "mf"
  gcn_layers: int = 3
  l2_reg: float = 1e-4
  mp_weight: float = 0.1
  mario_fusion: str = "attention"
  mario_hidden: int = 64

  # Loss and optimiser.
  margin: float = 1.6
  feature_l2_reg: float = 5.0
  use_rank_weight: bool = True
  use_cov_loss: bool = True
  cov_loss_weight: float = 5.0
  learning_rate: float = 1e-3
  # Multiplies learning_rate for every weight but the user and item tables.
  network_lr_scale: float = 1.0

  # Sampling, schedule, evaluation.
  num_neg: int = 4
  batch_size: int = 5000
  train_steps: int = 4000
  eva_batches: int = 400
  # topk, select_metric and patience: None = the protocol's default
  # (PROTOCOL_DEFAULTS), filled in by __post_init__.
  topk: Optional[Tuple[int, ...]] = None
  select_metric: Optional[str] = None
  protocol: str = "release"
  loo_negatives: int = 100
  seed: int = 0
  patience: Optional[int] = None
  refit: bool = False
  preservation_modalities: Tuple[str, ...] = ()  # measured every round

  # Outputs.
  workdir: str = "runs/office"
  overwrite: bool = False
  restore_from: Optional[str] = None
  init_from: Optional[str] = None  # weights only; step 0, a fresh optimizer
  keep_checkpoints: int = 3
  tensorboard: bool = True
  export: bool = True
  export_dir: str = "saved_models"
  export_name: Optional[str] = None  # default: maml_<dataset>
  export_topk: int = 10
  retrieve_candidates: int = 200
  jit_compile: bool = True
  strategy: str = "default"

  def __post_init__(self):
    # The one place the protocol-dependent defaults are resolved. An unknown
    # protocol gets the release's (validate() then refuses it).
    defaults = PROTOCOL_DEFAULTS.get(self.protocol, PROTOCOL_DEFAULTS["release"])
    for name, value in defaults.items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)

  @property
  def alpha(self) -> float:
    """The attention's softmax scale: K ("scaled"), 1 ("softmax")."""
    return float(self.embed_dim) if self.attention == "scaled" else 1.0

  @property
  def model_name(self) -> str:
    """The exported model's name: saved_models/<model_name>/<version>/."""
    return self.export_name or f"{self.model}_{self.dataset}"

  @property
  def uses_features(self) -> bool:
    """Whether the model reads item features (the registry says)."""
    return models_lib.spec(self.model).uses_features

  @property
  def feature_paths(self) -> dict:
    paths = {}
    if self.text_features:
      paths["text"] = self.text_features
    if self.image_features:
      paths["image"] = self.image_features
    for item in self.extra_features:
      name, _, path = item.partition("=")
      paths[name.strip()] = path.strip()
    return paths

  def validate(self) -> "Config":
    """Raises UsageError naming the first flag that breaks a rule."""

    def fail(flag, rule, value):
      raise UsageError(f"`--{flag}` {rule}. Received: {value!r}")

    def choice(flag, options):
      value = getattr(self, flag)
      if value not in options:
        fail(flag, "must be one of " + ", ".join(options), value)

    def number(flag, low=None, high=None, low_open=False, high_open=True,
               integer=False):
      value = getattr(self, flag)
      if integer and (isinstance(value, bool) or not isinstance(value, int)):
        fail(flag, "must be an integer", value)
      if not isinstance(value, (int, float)) or isinstance(value, bool):
        fail(flag, "must be a number", value)
      if not math.isfinite(value):
        fail(flag, "must be finite", value)
      if low is not None and (value <= low if low_open else value < low):
        fail(flag, f"must be {'>' if low_open else '>='} {low}", value)
      if high is not None and (value >= high if high_open else value > high):
        fail(flag, f"must be {'<' if high_open else '<='} {high}", value)

    choice("dataset", DATASETS)
    choice("mode", MODES)
    choice("attention", ATTENTIONS)
    choice("strategy", STRATEGIES)
    choice("model", MODELS)
    choice("negative_relation", NEGATIVE_RELATIONS)
    choice("lrml_distance", LRML_DISTANCES)
    choice("protocol", PROTOCOLS)
    choice("backbone", BACKBONES)
    choice("mario_fusion", MARIO_FUSIONS)
    number("gcn_layers", 1, integer=True)
    number("mario_hidden", 1, integer=True)
    for flag in ("l2_reg", "mp_weight"):
      number(flag, 0)
    for flag in ("embed_dim", "hidden_layer_dim", "text_dim", "num_neg",
                 "batch_size", "train_steps", "eva_batches", "keep_checkpoints",
                 "export_topk", "retrieve_candidates", "memory_slots",
                 "loo_negatives"):
      number(flag, 1, integer=True)
    number("hidden_layer_dim", 2, integer=True)
    for flag in ("dropout", "attention_dropout"):
      number(flag, 0, 1)
    for flag in ("margin", "learning_rate", "clip_norm", "feature_scaling",
                 "network_lr_scale"):
      number(flag, 0, low_open=True)
    for flag in ("attention_l2", "feature_l2_reg", "cov_loss_weight"):
      number(flag, 0)
    number("validation_fraction", 0, 1)
    number("seed", 0, integer=True)
    number("patience", 0, integer=True)
    if (not self.paper_trains
        or set(self.paper_trains) - {"fusion", "attention"}
        or len(set(self.paper_trains)) != len(self.paper_trains)):
      fail("paper_trains", "must name fusion, attention or both, once each",
           ",".join(self.paper_trains))
    for name in self.preservation_modalities:
      if not MODALITY_NAME.match(name):
        fail("preservation_modalities", "must be modality names like text, "
             "meta", ",".join(self.preservation_modalities))
    if not self.topk:
      fail("topk", "must name at least one cutoff", "")
    for k in self.topk:
      if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        fail("topk", "must be positive integers", ",".join(map(str, self.topk)))
    if models_lib.spec(self.model).one_negative and self.num_neg != 1:
      fail("num_neg", f"must be 1 with --model={self.model} (it trains on one "
           "negative per positive)", self.num_neg)
    if self.train_steps % self.eva_batches:
      fail("train_steps", f"must be a multiple of --eva_batches "
           f"({self.eva_batches}), one evaluation per round", self.train_steps)
    metric, _, k = self.select_metric.partition("@")
    if (metric not in ("ndcg", "recall", "hr", "precision") or not k.isdigit()
        or int(k) not in self.topk):
      fail("select_metric", "must be ndcg|recall|hr|precision@k with k in "
           "--topk", self.select_metric)
    if self.protocol == "loo" and metric not in ("ndcg", "hr"):
      fail("select_metric", "must be ndcg@k or hr@k with --protocol=loo (its "
           "only metrics)", self.select_metric)
    if self.protocol == "split" and self.validation_fraction:
      fail("validation_fraction", "must be 0 with --protocol=split (it holds "
           "out its own validation split)", self.validation_fraction)
    if self.modalities is not None:
      for name in self.modalities:
        if not MODALITY_NAME.match(name):
          fail("modalities", "must be names like text, image, meta",
               ",".join(self.modalities))
      if len(set(self.modalities)) != len(self.modalities):
        fail("modalities", "must not repeat a name", ",".join(self.modalities))
    for item in self.extra_features:
      name, sep, path = item.partition("=")
      if not sep or not MODALITY_NAME.match(name.strip()) or not path.strip():
        fail("extra_features", "items must look like name=path", item)
    choice("data_format", DATA_FORMATS)
    if self.dataset == "office" and self.data_format not in ("auto", "release"):
      fail("data_format", "must be auto or release with --dataset=office (built"
           " in, the release's layout)", self.data_format)
    if self.min_rating is not None:
      number("min_rating")
    number("kcore", 0, integer=True)
    if self.dataset == "custom":
      if not self.data_dir:
        fail("data_dir", "is required with --dataset=custom", self.data_dir)
      if not os.path.isdir(self.data_dir):
        fail("data_dir", "must be an existing folder", self.data_dir)
    for flag, path in (("text_features", self.text_features),
                       ("image_features", self.image_features)):
      if path and not os.path.exists(path):
        fail(flag, "must name an existing file", path)
    if not self.workdir:
      fail("workdir", "must be a folder path", self.workdir)
    for flag in ("restore_from", "init_from"):
      path = getattr(self, flag)
      if path and not os.path.exists(path) and not os.path.exists(path + ".index"):
        fail(flag, "must name an existing checkpoint", path)
    if self.restore_from and self.init_from:
      fail("init_from", "must not be given with --restore_from (one starting "
           "point)", self.init_from)
    if self.export_name is not None and not MODALITY_NAME.match(self.export_name):
      fail("export_name", "must be a name like maml_office (a-z, 0-9, _)",
           self.export_name)
    return self

  def to_flagfile(self) -> str:
    """One `--flag=value` a line; reading it back gives this Config."""
    lines = []
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is None or field.name == "overwrite":  # never replay a replace
        continue
      if isinstance(value, bool):
        lines.append(f"--{field.name}" if value else f"--no{field.name}")
      elif isinstance(value, tuple):
        lines.append(f"--{field.name}=" + ",".join(map(str, value)))
      else:
        lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"
