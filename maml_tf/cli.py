"""The command-line layer: absl flags -> Config, and clean exits.

Kept apart from the library (which never imports absl flags) so that
`train_and_evaluate` can be called directly with a Config.
Usage and data errors exit with status 2 and one line on stderr; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback

from absl import flags

from maml_tf.config import (ATTENTIONS, BACKBONES, DATA_FORMATS, DATASETS,
                            LRML_DISTANCES, MARIO_FUSIONS, MODELS, MODES,
                            NEGATIVE_RELATIONS,
                            PROTOCOL_DEFAULTS, PROTOCOLS, STRATEGIES, Config)
from maml_tf import models as models_lib
from maml_tf.errors import MamlError, UsageError

FLAGS = flags.FLAGS
_D = Config()
PROTOCOL_DEFAULTED = ("topk", "select_metric", "patience")
# TensorFlow's C++ start-up lines (the CUDA probe, oneDNN and CPU-feature
# notices, "Unable to register cuDNN factory", ...) are written to the
# process's stderr before TF_CPP_MIN_LOG_LEVEL takes effect. They are hidden
# unless the user set TF_CPP_MIN_LOG_LEVEL themselves (then TF's own knob
# decides) or passed --debug.
TF_LOG_SET_BY_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HELP = {
    "dataset": "office (the embedded Office data) or custom (--data_dir in the "
               "release's layout)",
    "data_dir": "folder with train.csv and test.csv (release layout)",
    "text_features": "text modality file: a gensim Doc2Vec model whose tags are "
                     "asins, or a .npy (asin->vector dict, or [n_items, d] matrix)",
    "image_features": "image modality file: .npy asin->vector dict or [n_items, d] matrix",
    "extra_features": "further modalities as name=path (.npy matrix or dict)",
    "modalities": "modalities to use, in order (e.g. text,meta); empty for none "
                  "(CML); default: all the dataset has",
    "text_dim": "Doc2Vec size when the project builds text features",
    "cache_dir": "where built text features are cached (default $MAML_TF_CACHE "
                 "or ~/.cache/maml_tf)",
    "validation_fraction": "share of each user's train items held out to select "
                           "the best round (0: the release's protocol)",
    "data_format": "format of --data_dir: release (train.csv, test.csv, "
                   "optional valid.csv), recbole (<name>.inter, optional "
                   "<name>.item, or <name>.train/.valid/.test.inter), mmrec "
                   "(<name>.inter with x_label, image_feat.npy, text_feat.npy), "
                   "npz (train.npz, test.npz, optional valid.npz scipy sparse "
                   "user x item matrices) or auto (detected from the files)",
    "min_rating": "keep only interactions rated at least this (needs a rating "
                  "column); unset keeps all",
    "kcore": "iterated k-core filter: drop users and items with fewer than k "
             "interactions until none is left (0: off)",
    "model": "the model: " + "; ".join(
        f"{spec.name} ({spec.help})" for spec in models_lib.SPECS),
    "memory_slots": "LRML: number of memory slots N (keys and slices)",
    "negative_relation": "LRML: the negative pair reuses the positive pair's "
                         "relation (positive, the authors' code) or gets its own",
    "lrml_distance": "LRML: D(u, i) = sqrt(||p + r - q||^2 + 1e-3) (l2, the "
                     "authors' code's default here) or ||p + r - q||_1 (l1, "
                     "its other option) or ||p + r - q||^2 (squared, as the "
                     "paper writes it)",
    "backbone": "MARIO: the CF backbone giving the user and interaction "
                "embeddings: mf (plain tables) or lightgcn (--gcn_layers of "
                "propagation)",
    "gcn_layers": "LightGCN (and MARIO's lightgcn backbone): propagation "
                  "layers L over the normalised train graph (>= 1)",
    "l2_reg": "mf, lightgcn, mario: weight lambda of the L2 on the batch's "
              "ego embeddings, lambda * sum ||row||^2 / (2 B)",
    "mp_weight": "MARIO: weight mu of the modality-preserving loss, the "
                 "decoders' L1 error relative to the features' mean |x| (0: "
                 "the mu = 0 ablation)",
    "mario_fusion": "MARIO: how the modality embeddings are combined: "
                    "attention (modality-aware), mean, max or fc (a dense "
                    "layer on their concatenation)",
    "mario_hidden": "MARIO: hidden width of the modality attention MLP",
    "protocol": "evaluation protocol: release (full ranking on the release's "
                "split), loo (leave the last interaction out by time, ranked "
                "among --loo_negatives sampled items; HR and nDCG) or split "
                "(each user's interactions split 8:1:1 at random, seeded, into "
                "train, validation and test; full ranking; MARIO/LATTICE's)",
    "loo_negatives": "items sampled per test user under --protocol=loo",
    "mode": "faithful (the release: only P and Q train) or paper (the networks "
            "train, dropout and L2 active)",
    "attention": "scaled (alpha=K), softmax (alpha=1) or none (plain CML distance)",
    "embed_dim": "embedding size K",
    "hidden_layer_dim": "fusion MLP width H",
    "dropout": "fusion dropout rate (active only in paper mode)",
    "attention_dropout": "attention dropout rate (active only in paper mode)",
    "network_lr_scale": "multiplies --learning_rate for every trained weight "
                        "but the user and item tables (MAML's attention and "
                        "fusion networks in paper mode, LRML's memory, "
                        "MARIO's encoders, attention and decoders)",
    "attention_l2": "L2 weight on the attention kernels (counted only in paper mode)",
    "feature_scaling": "scale of the fusion output before clipping",
    "clip_norm": "radius of the unit ball for embeddings and fusion output",
    "margin": "hinge margin",
    "feature_l2_reg": "weight of the feature loss sum ||q_i - F_i||^2",
    "use_rank_weight": "weight the hinge by log(rank + 1) (WARP)",
    "use_cov_loss": "add the covariance loss",
    "cov_loss_weight": "weight of the covariance loss",
    "learning_rate": "Adam learning rate",
    "num_neg": "negatives sampled per positive pair",
    "batch_size": "positive pairs per step",
    "train_steps": "training steps in all (a multiple of --eva_batches)",
    "eva_batches": "steps between evaluations",
    "topk": "cutoffs k for the metrics, e.g. 10,20",
    "select_metric": "metric that picks the best round, e.g. ndcg@10",
    "seed": "seed for initialisation, sampling and the validation split "
            "(and --protocol=split's split)",
    "patience": "early stopping: evaluations without improvement of "
                "--select_metric on validation before training stops and the "
                "best round is restored (0: off; needs a validation split)",
    "preservation_modalities": "modalities whose preservation (mean |cosine "
                               "gap| between the model's item embeddings and "
                               "the features, all items and the top 10% by "
                               "degree) is measured every evaluation into "
                               "metrics.jsonl and TensorBoard; empty: off",
    "refit": "after choosing the best round on validation, train a fresh model "
             "(same seed and flags) on train + validation for that many steps "
             "in <workdir>/refit, report its test metrics beside the selected "
             "round's, and export it",
    "workdir": "output folder (metrics.jsonl, metrics.json, flags.txt, "
               "checkpoints/, tensorboard/); rerun the same command to resume "
               "an interrupted run",
    "overwrite": "replace the results of a finished run in --workdir (or of an "
                 "unfinished one with other flags); an unfinished run with the "
                 "same flags is resumed from its last checkpoint either way",
    "restore_from": "start from this checkpoint (weights, optimizer, step): a "
                    "<workdir>/checkpoints/ckpt-<step> prefix, a workdir (its "
                    "last) or <workdir>/checkpoints/best",
    "paper_trains": "--mode=paper: which networks train with P and Q: fusion, "
                    "attention or both (the paper's); the others keep their "
                    "initial weights as in faithful mode",
    "init_from": "initialise the model's weights from this checkpoint (same "
                 "forms as --restore_from; e.g. a faithful run's, to train "
                 "--mode=paper from it) and train from step 0 with a fresh "
                 "optimizer; a resumed run ignores it",
    "keep_checkpoints": "how many of the latest checkpoints to keep (the best is kept too)",
    "tensorboard": "write TensorBoard logs under <workdir>/tensorboard",
    "export": "export a SavedModel for TF Serving at the end of training",
    "export_dir": "base folder of exports: <export_dir>/<export_name>/<version>/",
    "export_name": "exported model name (default maml_<dataset>)",
    "export_topk": "k of the serving_default and retrieve signatures",
    "retrieve_candidates": "candidates the retrieve signature's index passes to re-ranking",
    "jit_compile": "compile the train step and evaluation with XLA (the "
                   "train step only with --strategy=default)",
    "strategy": "tf.distribute strategy: default (one device), mirrored (this "
                "machine's devices) or multi_worker (a cluster from TF_CONFIG)",
}


def define_flags():
  """Defines one flag per Config field, same name, same default."""
  for field in dataclasses.fields(Config):
    name, default, help_ = field.name, getattr(_D, field.name), HELP[field.name]
    if name in PROTOCOL_DEFAULTED:
      # Unset (None) means the protocol's default, which Config fills in.
      shown = []
      for protocol, defaults in PROTOCOL_DEFAULTS.items():
        value = defaults[name]
        if isinstance(value, tuple):
          value = ",".join(map(str, value))
        shown.append(f"{protocol}: {value}")
      help_ = f"{help_} (default per --protocol, {'; '.join(shown)})"
      if name == "patience":
        flags.DEFINE_integer(name, None, help_)
      elif name == "topk":
        flags.DEFINE_list(name, None, help_)
      else:
        flags.DEFINE_string(name, None, help_)
      continue
    enums = {"dataset": DATASETS, "mode": MODES, "attention": ATTENTIONS,
             "strategy": STRATEGIES, "model": MODELS, "protocol": PROTOCOLS,
             "negative_relation": NEGATIVE_RELATIONS, "data_format": DATA_FORMATS,
             "lrml_distance": LRML_DISTANCES,
             "backbone": BACKBONES, "mario_fusion": MARIO_FUSIONS}
    if name in enums:
      options = enums[name]
      flags.DEFINE_string(name, default, f"{help_}. One of: {', '.join(options)}")
    elif name == "min_rating":
      flags.DEFINE_float(name, default, help_)
    elif isinstance(default, bool):
      flags.DEFINE_boolean(name, default, help_)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_)
    elif name in ("extra_features", "modalities", "topk", "preservation_modalities",
                  "paper_trains"):
      flags.DEFINE_list(name, None if default is None else list(map(str, default)), help_)
    else:
      flags.DEFINE_string(name, default, help_)
  flags.DEFINE_boolean("debug", False, "show tracebacks for usage and data errors")


def usage_error(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing, with flag errors as one line and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    usage_error(str(e).splitlines()[0])


def config_from_flags() -> Config:
  values = {}
  for field in dataclasses.fields(Config):
    value = FLAGS[field.name].value
    if field.name == "topk" and value is not None:
      try:
        value = tuple(int(k) for k in value)
      except ValueError:
        raise UsageError(f"`--topk` must be integers. Received: {','.join(value)!r}") from None
    elif field.name in ("extra_features", "preservation_modalities", "paper_trains"):
      value = tuple(v.strip() for v in (value or ()) if v.strip())
    elif field.name == "modalities":
      value = None if value is None else tuple(v.strip() for v in value if v.strip())
    values[field.name] = value
  return Config(**values).validate()


@contextlib.contextmanager
def native_stderr_hidden(hide: bool):
  """Points file descriptor 2 at /dev/null inside the block (C++ writes go
  there directly, past sys.stderr); restores it on the way out."""
  if not hide:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def import_tensorflow_quietly():
  """Imports TF and probes its devices with the start-up lines hidden."""
  with native_stderr_hidden(not TF_LOG_SET_BY_USER and not FLAGS.debug):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()


def config_from_workdir(argv, what="the run"):
  """A finished or running run's Config, for a script that works on its
  workdir: <workdir>/flags.txt first, then this command line on top."""
  if not FLAGS["workdir"].present:
    raise UsageError(f"`--workdir` is required: the folder of {what}")
  flagfile = os.path.join(FLAGS.workdir, "flags.txt")
  if not os.path.isfile(flagfile):
    raise UsageError(f"`--workdir` must hold a run's flags.txt. Received: "
                     f"{FLAGS.workdir!r} ({flagfile} not found)")
  FLAGS.unparse_flags()
  try:
    FLAGS([argv[0], f"--flagfile={flagfile}"] + list(argv[1:]))
  except flags.Error as e:
    FLAGS.unparse_flags()
    FLAGS(list(argv))  # parsed before: keeps FLAGS usable for the error path
    raise UsageError(f"{flagfile}: {str(e).splitlines()[0]}") from None
  FLAGS.restore_from = None  # the run's starting point is irrelevant here
  FLAGS.init_from = None
  FLAGS.overwrite = False
  return config_from_flags()


def train_main():
  import_tensorflow_quietly()
  from maml_tf.train import train_and_evaluate  # heavy import after flag checks
  # The live progress bar on a terminal; one line per round when the output
  # goes to a file or a pipe (the bar's redraws would flood a log).
  verbose = 1 if sys.stdout.isatty() else 2
  train_and_evaluate(config_from_flags(), verbose=verbose)
  return 0


def run(fn):
  """Calls fn(); MamlError -> one line on stderr and exit status 2."""
  try:
    return fn()
  except MamlError as e:
    if FLAGS.debug:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
