"""Every setting of a run, built once from flags and checked before any work.

The field names are the command-line flag names, so `Config.to_flagfile()`
writes a flagfile that reruns the experiment exactly. Defaults are the
release's Office settings (docs/spec.md §6) and its hard-coded constants.

Each field is declared once, with `setting(...)`, and carries every fact
about its flag: the help line, the group `--help` lists it under, its
choices or its range (checked by `Config.validate`), and whether a resumed
run or search may change it. The command line (`maml_tf.cli`), the
resume check (`maml_tf.train.run`) and the tuner (`maml_tf.tuning`) read those
facts from here; nothing else lists flag names. A new flag is one
`setting(...)` line (plus a rule in `validate` only if it involves other
flags).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from maml_tf import models as models_lib
from maml_tf.data.formats import DATA_FORMATS, DATASETS
from maml_tf import config_rules
from maml_tf import settings
from maml_tf.settings import (GROUPS, RESUME_ANY, RESUME_RUN, check_field,
                              setting)
from maml_tf.protocols import DEFAULTS as PROTOCOL_DEFAULTS
from maml_tf.protocols import NAMES as PROTOCOLS

MODES = ("faithful", "paper")
ATTENTIONS = ("scaled", "softmax", "none")
STRATEGIES = ("default", "mirrored", "multi_worker")
TEST_ROUNDS = ("all", "last")
MODELS = models_lib.NAMES
NEGATIVE_RELATIONS = ("positive", "own")
LRML_DISTANCES = ("l2", "l1", "squared")
BACKBONES = ("mf", "lightgcn", "ngcf")
MARIO_FUSIONS = ("attention", "mean", "max", "fc")
MARIO_FEATURE_NORMS = ("scale", "row", "none")
NEUMF_TOWERS = ("both", "gmf", "mlp")
MMGCN_AGGREGATIONS = ("mean", "sum", "max")
MMGCN_COMBINATIONS = ("concat", "add")
GRCN_WEIGHT_MODES = ("confid", "max", "mean")


def _model_help() -> str:
  return "the model: " + "; ".join(
      f"{spec.name} ({spec.help})" for spec in models_lib.SPECS)


_FIXED = dict(searchable=False)
_IO = dict(resume=RESUME_ANY, searchable=False)


@dataclasses.dataclass(frozen=True)
class Config:
  """A run's settings; `maml-tf train --help` lists them with their help."""

  # ------------------------------------------------------------- data
  dataset: str = setting(
      "office", "office (the embedded Office data) or custom (--data_dir in "
      "the release's layout)", group="data", choices=DATASETS, **_FIXED)
  data_dir: Optional[str] = setting(
      None, "folder with train.csv and test.csv (release layout)",
      group="data", kind="string", **_FIXED)
  text_features: Optional[str] = setting(
      None, "text modality file: a gensim Doc2Vec model whose tags are asins, "
      "or a .npy (asin->vector dict, or [n_items, d] matrix)", group="data",
      kind="string", **_FIXED)
  image_features: Optional[str] = setting(
      None, "image modality file: .npy asin->vector dict or [n_items, d] "
      "matrix", group="data", kind="string", **_FIXED)
  extra_features: Tuple[str, ...] = setting(
      (), "further modalities as name=path (.npy matrix or dict)",
      group="data", kind="list", **_FIXED)
  modalities: Optional[Tuple[str, ...]] = setting(
      None, "modalities to use, in order (e.g. text,meta); empty for none "
      "(CML); default: all the dataset has", group="data", kind="list",
      **_FIXED)
  text_dim: int = setting(
      512, "Doc2Vec size when the project builds text features", group="data",
      low=1, integer=True)
  cache_dir: Optional[str] = setting(
      None, "where built text features are cached (default $MAML_TF_CACHE or "
      "~/.cache/maml_tf)", group="data", kind="string", **_IO)
  validation_fraction: float = setting(
      0.0, "share of each user's train items held out to select the best "
      "round (0: the release's protocol)", group="data", low=0, high=1,
      **_FIXED)
  data_format: str = setting(
      "auto", "format of --data_dir: release (train.csv, test.csv, optional "
      "valid.csv), recbole (<name>.inter, optional <name>.item, or "
      "<name>.train/.valid/.test.inter), mmrec (<name>.inter with x_label, "
      "image_feat.npy, text_feat.npy), npz (train.npz, test.npz, optional "
      "valid.npz scipy sparse user x item matrices) or auto (detected from "
      "the files)", group="data", choices=DATA_FORMATS, **_FIXED)
  min_rating: Optional[float] = setting(
      None, "keep only interactions rated at least this (needs a rating "
      "column); unset keeps all", group="data", kind="float", **_FIXED)
  kcore: int = setting(
      0, "iterated k-core filter: drop users and items with fewer than k "
      "interactions until none is left (0: off)", group="data", low=0,
      integer=True, **_FIXED)

  # ------------------------------------------------------------- model
  model: str = setting("maml", _model_help(), group="model", choices=MODELS,
                       **_FIXED)
  mode: str = setting(
      "faithful", "faithful (the release: only P and Q train) or paper (the "
      "networks train, dropout and L2 active)", group="model", choices=MODES)
  attention: str = setting(
      "scaled", "scaled (alpha=K), softmax (alpha=1) or none (plain CML "
      "distance)", group="model", choices=ATTENTIONS)
  embed_dim: int = setting(64, "embedding size K", group="model", low=1,
                           integer=True)
  hidden_layer_dim: int = setting(
      256, "fusion MLP width H", group="model", low=2, integer=True)
  dropout: float = setting(
      0.2, "fusion dropout rate (active only in paper mode)", group="model",
      low=0, high=1)
  attention_dropout: float = setting(
      0.05, "attention dropout rate (active only in paper mode)",
      group="model", low=0, high=1)
  attention_l2: float = setting(
      100.0, "L2 weight on the attention kernels (counted only in paper "
      "mode)", group="model", low=0)
  paper_trains: Tuple[str, ...] = setting(
      ("fusion", "attention"), "--mode=paper: which networks train with P "
      "and Q: fusion, attention or both (the paper's); the others keep their "
      "initial weights as in faithful mode", group="model", kind="list")
  feature_scaling: float = setting(
      1.0, "scale of the fusion output before clipping", group="model", low=0,
      low_open=True)
  clip_norm: float = setting(
      1.0, "radius of the unit ball for embeddings and fusion output",
      group="model", low=0, low_open=True)
  memory_slots: int = setting(
      10, "LRML: number of memory slots N (keys and slices)", group="model",
      low=1, integer=True)
  negative_relation: str = setting(
      "positive", "LRML: the negative pair reuses the positive pair's "
      "relation (positive, the authors' code) or gets its own", group="model",
      choices=NEGATIVE_RELATIONS)
  lrml_distance: str = setting(
      "l2", "LRML: D(u, i) = sqrt(||p + r - q||^2 + 1e-3) (l2, the authors' "
      "code's default here) or ||p + r - q||_1 (l1, its other option) or "
      "||p + r - q||^2 (squared, as the paper writes it)", group="model",
      choices=LRML_DISTANCES)
  backbone: str = setting(
      "mf", "MARIO: the CF backbone giving the user and interaction "
      "embeddings: mf (plain tables), lightgcn (--gcn_layers of "
      "propagation) or ngcf (NGCF's layers from --ngcf_layers, "
      "--ngcf_node_dropout, --ngcf_message_dropout; the model is then "
      "--embed_dim + sum(--ngcf_layers) wide)", group="model", choices=BACKBONES)
  gcn_layers: int = setting(
      3, "LightGCN (and MARIO's lightgcn backbone): propagation layers L over "
      "the normalised train graph (>= 1)", group="model", low=1, integer=True)
  l2_reg: float = setting(
      1e-4, "mf, lightgcn, mario: weight lambda of the L2 on the batch's ego "
      "embeddings, lambda * sum ||row||^2 / (2 B)", group="model", low=0)
  mp_weight: float = setting(
      0.1, "MARIO: weight mu of the modality-preserving loss, the decoders' "
      "L1 error relative to the features' mean |x| (0: the mu = 0 ablation)",
      group="model", low=0)
  mario_fusion: str = setting(
      "attention", "MARIO: how the modality embeddings are combined: "
      "attention (modality-aware), mean, max or fc (a dense layer on their "
      "concatenation)", group="model", choices=MARIO_FUSIONS)
  mario_hidden: int = setting(
      64, "MARIO: hidden width of the modality attention MLP", group="model",
      low=1, integer=True)
  mario_feature_norm: str = setting(
      "scale", "MARIO: each modality's features rescaled once so that its "
      "rows have mean L2 norm 1 (scale, ours: a modality's global scale then "
      "cannot dominate the attention), each row to norm 1 (row), or as given "
      "(none)", group="model", choices=MARIO_FEATURE_NORMS)

  # NeuMF (--model=neumf); also reads --embed_dim (the predictive factors),
  # --l2_reg and --num_neg.
  neumf_towers: str = setting(
      "both", "NeuMF: the towers trained: gmf or mlp (the NCF paper's GMF and "
      "MLP models alone, e.g. to pre-train) or both (NeuMF)", group="model",
      choices=NEUMF_TOWERS)
  neumf_layers: int = setting(
      3, "NeuMF: hidden layers L of the MLP tower, widths halving down to "
      "--embed_dim; its tables are --embed_dim * 2^(L-1) wide", group="model",
      low=1, integer=True)
  neumf_alpha: float = setting(
      0.5, "NeuMF: with --neumf_pretrain, the GMF tower's share alpha of the "
      "fused output layer, h = [alpha h_G; (1 - alpha) h_M]", group="model",
      low=0, high=1, high_open=False)
  neumf_pretrain: Tuple[str, ...] = setting(
      (), "NeuMF: GMF_RUN,MLP_RUN -- initialise --neumf_towers=both from a "
      "trained gmf run and mlp run (workdirs, read at their selected round, "
      "or checkpoint prefixes) with the same data, --embed_dim and "
      "--neumf_layers; empty: random initialisation", group="model",
      kind="list", searchable=False)
  # VBPR (--model=vbpr); lambda_Theta is --l2_reg.
  vbpr_l2_e: float = setting(
      0.0, "VBPR: weight lambda_E of the L2 on the feature projection E and "
      "the feature bias beta', lambda_E (||E||^2 + ||beta'||^2) / 2",
      group="model", low=0)
  # NGCF (--model=ngcf); also reads --embed_dim (the ego tables' width) and
  # --l2_reg.
  ngcf_layers: Tuple[int, ...] = setting(
      (64, 64, 64), "NGCF: output width of each embedding propagation layer, "
      "one per layer (the authors' 64,64,64)", group="model", kind="list")
  ngcf_node_dropout: float = setting(
      0.1, "NGCF: node dropout rate p in training: each entry of the "
      "normalised adjacency dropped with probability p (the authors' code's "
      "form); 0: off", group="model", low=0, high=1)
  ngcf_message_dropout: float = setting(
      0.1, "NGCF: message dropout rate on every propagation layer's output, "
      "in training; 0: off", group="model", low=0, high=1)
  # MMGCN (--model=mmgcn); also reads --embed_dim, --gcn_layers (its layers)
  # and --l2_reg.
  mmgcn_latent: int = setting(
      256, "MMGCN: width the item features are projected to (a dense layer), "
      "also the width of the users' per-modality preferences; 0: the raw "
      "features, no projection", group="model", low=0, integer=True)
  mmgcn_aggregation: str = setting(
      "mean", "MMGCN: how a node aggregates its neighbours' messages: mean, "
      "sum or max (elementwise)", group="model", choices=MMGCN_AGGREGATIONS)
  mmgcn_combination: str = setting(
      "concat", "MMGCN: how a node's aggregate and its own representation "
      "combine: concat (the paper's concatenation, what the authors' code "
      "runs) or add (its element-wise sum)", group="model",
      choices=MMGCN_COMBINATIONS)
  # GRCN (--model=grcn); also reads --embed_dim (the ID and content widths),
  # --gcn_layers (the ID GCN's layers on the refined graph) and --l2_reg.
  grcn_routing: int = setting(
      3, "GRCN: routing iterations T refining each user's per-modality "
      "preference from its items' content (the authors' 3; 0: no refinement, "
      "what the authors' code computes in effect)", group="model", low=0,
      integer=True)
  grcn_weight_mode: str = setting(
      "confid", "GRCN: an edge's weight from its per-modality affinities: "
      "confid (the max over modalities of affinity x the source node's learned "
      "confidence, the authors' default), max or mean; then relu (pruning)",
      group="model", choices=GRCN_WEIGHT_MODES)
  # LATTICE (--model=lattice); also reads --embed_dim, --gcn_layers (the
  # LightGCN backbone's layers) and --l2_reg (on the batch's final rows).
  lattice_knn_k: int = setting(
      10, "LATTICE: neighbours k per item in each modality's kNN item-item "
      "graph, the item itself included (the paper's 10)", group="model", low=1,
      integer=True)
  lattice_lambda: float = setting(
      0.9, "LATTICE: weight lambda of the raw-feature graph in each modality's "
      "(1 - lambda) learned + lambda raw graph (the authors' 0.9)",
      group="model", low=0, high=1, high_open=False)
  lattice_item_layers: int = setting(
      1, "LATTICE: convolution layers of the item ID embeddings over the "
      "fused item-item graph (the authors' 1)", group="model", low=1,
      integer=True)
  lattice_graph_every: int = setting(
      0, "LATTICE: train steps between rebuilds of the learned item-item "
      "graphs (1: every step; 0: once per pass over the train pairs, the "
      "authors' once an epoch); evaluation and export always rebuild them",
      group="model", low=0, integer=True)

  # ------------------------------------------------------------- training
  margin: float = setting(1.6, "hinge margin", group="training", low=0,
                          low_open=True)
  feature_l2_reg: float = setting(
      5.0, "weight of the feature loss sum ||q_i - F_i||^2", group="training",
      low=0)
  use_rank_weight: bool = setting(
      True, "weight the hinge by log(rank + 1) (WARP)", group="training")
  use_cov_loss: bool = setting(True, "add the covariance loss",
                               group="training")
  cov_loss_weight: float = setting(
      5.0, "weight of the covariance loss", group="training", low=0)
  learning_rate: float = setting(
      1e-3, "Adam learning rate", group="training", low=0, low_open=True)
  network_lr_scale: float = setting(
      1.0, "multiplies --learning_rate for every trained weight but the user "
      "and item tables (MAML's attention and fusion networks in paper mode, "
      "LRML's memory, MARIO's encoders, attention and decoders)",
      group="training", low=0, low_open=True)
  num_neg: int = setting(
      4, "negatives sampled per positive pair", group="training", low=1,
      integer=True)
  batch_size: int = setting(
      5000, "positive pairs per step", group="training", low=1, integer=True)
  train_steps: int = setting(
      4000, "training steps in all (a multiple of --eva_batches)",
      group="training", low=1, integer=True, resume=RESUME_RUN,
      searchable=False)
  eva_batches: int = setting(
      400, "steps between evaluations", group="evaluation", low=1,
      integer=True, searchable=False)
  # topk, select_metric and patience: None = the protocol's default
  # (PROTOCOL_DEFAULTS), filled in by __post_init__.
  topk: Optional[Tuple[int, ...]] = setting(
      None, "cutoffs k for the metrics, e.g. 10,20", group="evaluation",
      kind="list", searchable=False, protocol_default=True)
  select_metric: Optional[str] = setting(
      None, "metric that picks the best round, e.g. ndcg@10",
      group="evaluation", kind="string", searchable=False,
      protocol_default=True)
  protocol: str = setting(
      "release", "evaluation protocol: release (full ranking on the "
      "release's split), loo (leave the last interaction out by time, ranked "
      "among --loo_negatives sampled items; HR and nDCG) or split (each "
      "user's interactions split 8:1:1 at random, seeded, into train, "
      "validation and test; full ranking; MARIO/LATTICE's)",
      group="evaluation", choices=PROTOCOLS, **_FIXED)
  loo_negatives: int = setting(
      100, "items sampled per test user under --protocol=loo",
      group="evaluation", low=1, integer=True, searchable=False)
  eval_candidates: int = setting(
      0, "full ranking in two stages, for large catalogues: the N items "
      "nearest to the user in the model's retrieval space (the retrieve "
      "signature's first stage) are re-ranked by its full score; 0: score "
      "every item; N above the catalogue is clamped to it; refused with "
      "--protocol=loo", group="evaluation", low=0, integer=True,
      searchable=False)
  test_rounds: str = setting(
      "all", "rounds that evaluate the test split: all (every round, as the "
      "release does) or last (the last round only, for speed: a run that "
      "selects on validation reports its selected round's test metrics "
      "from that round's weights, restored after training, either way; "
      "needs a validation split)", group="evaluation", choices=TEST_ROUNDS,
      resume=RESUME_ANY, searchable=False)
  seed: int = setting(
      0, "seed for initialisation, sampling and the validation split (and "
      "--protocol=split's split)", group="training", low=0, integer=True,
      searchable=False)
  patience: Optional[int] = setting(
      None, "early stopping: evaluations without improvement of "
      "--select_metric on validation before training stops and the best "
      "round is restored (0: off; needs a validation split)",
      group="evaluation", kind="int", low=0, integer=True, resume=RESUME_RUN,
      protocol_default=True)
  refit: bool = setting(
      False, "after choosing the best round on validation, train a fresh "
      "model (same seed and flags) on train + validation for that many steps "
      "in <workdir>/refit, report its test metrics beside the selected "
      "round's, and export it", group="training", resume=RESUME_RUN)
  preservation_modalities: Tuple[str, ...] = setting(
      (), "modalities whose preservation (mean |cosine gap| between the "
      "model's item embeddings and the features, all items and the top 10% "
      "by degree) is measured every evaluation into metrics.jsonl and "
      "TensorBoard; empty: off", group="evaluation", kind="list")

  # ------------------------------------------------------------- outputs
  workdir: str = setting(
      "runs/office", "output folder (metrics.jsonl, metrics.json, flags.txt, "
      "checkpoints/, tensorboard/); rerun the same command to resume an "
      "interrupted run", group="outputs", **_IO)
  overwrite: bool = setting(
      False, "replace the results of a finished run in --workdir (or of an "
      "unfinished one with other flags); an unfinished run with the same "
      "flags is resumed from its last checkpoint either way", group="outputs",
      **_IO)
  restore_from: Optional[str] = setting(
      None, "start from this checkpoint (weights, optimizer, step): a "
      "<workdir>/checkpoints/ckpt-<step> prefix, a workdir (its last) or "
      "<workdir>/checkpoints/best", group="outputs", kind="string",
      resume=RESUME_RUN, searchable=False)
  init_from: Optional[str] = setting(
      None, "initialise the model's weights from this checkpoint (same forms "
      "as --restore_from; e.g. a faithful run's, to train --mode=paper from "
      "it) and train from step 0 with a fresh optimizer; a resumed run "
      "ignores it", group="outputs", kind="string", resume=RESUME_RUN)
  keep_checkpoints: int = setting(
      3, "how many of the latest checkpoints to keep (the best is kept too)",
      group="outputs", low=1, integer=True, **_IO)
  tensorboard: bool = setting(
      True, "write TensorBoard logs under <workdir>/tensorboard",
      group="outputs", **_IO)

  # ------------------------------------------------------------- export
  export: bool = setting(
      True, "export a SavedModel for TF Serving at the end of training",
      group="export", **_IO)
  export_dir: str = setting(
      "saved_models", "base folder of exports: "
      "<export_dir>/<export_name>/<version>/", group="export", **_IO)
  export_name: Optional[str] = setting(
      None, "exported model name (default maml_<dataset>)", group="export",
      kind="string", **_IO)
  export_topk: int = setting(
      10, "k of the serving_default and retrieve signatures", group="export",
      low=1, integer=True, **_IO)
  retrieve_candidates: int = setting(
      200, "candidates the retrieve signature's index passes to re-ranking",
      group="export", low=1, integer=True, **_IO)

  # ------------------------------------------------------------- distribution
  jit_compile: bool = setting(
      True, "compile the train step and evaluation with XLA (the train step "
      "only with --strategy=default, and not where a model's fast path "
      "compiles its own kernels)", group="distribution", **_IO)
  strategy: str = setting(
      "default", "tf.distribute strategy: default (one device), mirrored "
      "(this machine's devices) or multi_worker (a cluster from TF_CONFIG)",
      group="distribution", choices=STRATEGIES, **_IO)

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
    """Raises UsageError naming the first flag that breaks a rule: first
    each field's own rule (its choices, its range), then the rules that
    involve several flags or the file system."""
    for field in dataclasses.fields(self):
      check_field(field, getattr(self, field.name))
    config_rules.check_lists(self)
    config_rules.check_combinations(self)
    config_rules.check_paths(self)
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


def fields():
  """The Config fields, in declaration order (each with its metadata)."""
  return dataclasses.fields(Config)


def names(resume=None, searchable=None):
  """Config's flag names whose facts match (see `settings.names`)."""
  return settings.names(Config, resume, searchable)


__all__ = ["Config", "GROUPS", "RESUME_ANY", "RESUME_RUN", "fields", "names",
           "setting"]
