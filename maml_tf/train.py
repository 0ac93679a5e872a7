"""`train_and_evaluate(config)`: the whole run, as plain function calls.

flags -> Config -> Dataset -> PairSampler -> MAML.fit with the evaluation
callback -> metrics.jsonl / metrics.json / flags.txt in the workdir.

One Keras "epoch" is one evaluation round of `eva_batches` steps; the release
trained forever and printed test metrics each round, the port trains
`train_steps` steps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional

import keras
import numpy as np

from maml_tf import data as data_lib
from maml_tf import evaluate as eval_lib
from maml_tf import model as model_lib
from maml_tf.config import Config
from maml_tf.dataset_types import Dataset
from maml_tf.errors import UsageError
from maml_tf.sampler import PairSampler

log = logging.getLogger("maml_tf")


def load_data(config: Config) -> Dataset:
  """The dataset of a config, its modalities chosen and validation split."""
  ds = data_lib.load_dataset(
      config.dataset, config.data_dir, config.modalities, config.feature_paths,
      config.text_dim, config.seed, config.cache_dir)
  return data_lib.split_validation(ds, config.validation_fraction, config.seed)


def prepare_workdir(config: Config):
  """Creates the workdir; refuses to reuse a finished one unless --overwrite."""
  workdir = config.workdir
  summary_path = os.path.join(workdir, "metrics.json")
  if os.path.exists(summary_path) or os.path.exists(
      os.path.join(workdir, "metrics.jsonl")):
    if not config.overwrite:
      raise UsageError(
          f"`--workdir` already holds a run ({summary_path}); pass --overwrite "
          f"to replace it or choose another folder. Received: {workdir!r}")
    for name in ("metrics.json", "metrics.jsonl", "flags.txt"):
      path = os.path.join(workdir, name)
      if os.path.exists(path):
        os.remove(path)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"`--workdir` must be a writable folder. Received: "
                     f"{workdir!r} ({e.strerror})") from None


def build_model(config: Config, ds: Dataset) -> model_lib.MAML:
  features = ds.feature_matrix()
  model = model_lib.from_config(
      config, ds.n_users, ds.n_items, 0 if features is None else features.shape[1])
  if features is not None:
    model.set_item_features(features)
  model.compile(
      optimizer=keras.optimizers.Adam(
          learning_rate=config.learning_rate, beta_1=0.9, beta_2=0.999,
          epsilon=1e-8),
      jit_compile=config.jit_compile)
  return model


def build_evaluators(config: Config, ds: Dataset, model, jit_compile=None):
  """{"valid": ..., "test": ...}: test excludes train and validation items."""
  jit = config.jit_compile if jit_compile is None else jit_compile
  known = np.concatenate([ds.train, ds.valid]) if len(ds.valid) else ds.train
  evaluators = {}
  if len(ds.valid):
    evaluators["valid"] = eval_lib.Evaluator(model, ds.train, ds.valid,
                                             config.topk, jit_compile=jit)
  evaluators["test"] = eval_lib.Evaluator(model, known, ds.test, config.topk,
                                          jit_compile=jit)
  return evaluators


def train_and_evaluate(config: Config, dataset: Optional[Dataset] = None,
                       verbose: int = 1) -> dict:
  """Trains and evaluates one run; returns the summary written to metrics.json.

  Args:
    config: the run's settings (validated here).
    dataset: an already loaded Dataset (e.g. from `data.from_arrays`); when
      None, the one the config names is loaded.
    verbose: Keras verbosity (0 silent, 1 progress bar, 2 a line a round).
  """
  config.validate()
  prepare_workdir(config)
  keras.utils.set_random_seed(config.seed)
  ds = load_data(config) if dataset is None else data_lib.split_validation(
      dataset, config.validation_fraction, config.seed)
  if config.batch_size > len(ds.train):
    raise UsageError(f"`--batch_size` must be <= the number of train pairs "
                     f"({len(ds.train)}). Received: {config.batch_size}")
  with open(os.path.join(config.workdir, "flags.txt"), "w") as f:
    f.write(config.to_flagfile())
  if verbose:
    print(ds.summary(), flush=True)
    for name, source in ds.feature_sources.items():
      print(f"  {name}: {source}", flush=True)

  model = build_model(config, ds)
  sampler = PairSampler(ds.train, config.batch_size, config.num_neg, config.seed)
  callback = eval_lib.EvaluationCallback(
      build_evaluators(config, ds, model), config.eva_batches, config.workdir,
      config.select_metric, modalities=ds.modalities)
  rounds = config.train_steps // config.eva_batches
  start = time.perf_counter()
  model.fit(sampler.dataset(0), epochs=rounds, steps_per_epoch=config.eva_batches,
            callbacks=[callback], verbose=verbose)
  summary = callback.summarize(finished=True)
  summary["train_seconds"] = round(time.perf_counter() - start, 1)
  summary["dataset"] = ds.summary()
  summary["feature_sources"] = dict(ds.feature_sources)
  eval_lib.write_json_atomic(os.path.join(config.workdir, "metrics.json"), summary)
  if verbose:
    print(eval_lib.metrics_table(summary, config.topk), flush=True)
  return summary
