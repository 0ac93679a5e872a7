"""What a run trains and is measured on: the dataset its config names, split by
the protocol, and the features its preservation measure reads.
"""

from __future__ import annotations

import dataclasses
import logging

from maml_tf.data import formats as formats_lib
from maml_tf import protocols
from maml_tf.config import Config
from maml_tf.data.dataset import Dataset
from maml_tf.errors import DataError, UsageError

log = logging.getLogger("maml_tf")


def load_data(config: Config, with_info: bool = False):
  """The dataset of a config: its modalities chosen (none for CML and LRML),
  split by the protocol (see `prepare_data`)."""
  modalities, paths = config.modalities, config.feature_paths
  if not config.uses_features:
    if paths or modalities:
      log.warning("--model=%s uses no item features; ignoring %s", config.model,
                  ", ".join(sorted(paths) or modalities))
    modalities, paths = (), {}
  ds = formats_lib.load_dataset(
      config.dataset, config.data_dir, modalities, paths,
      config.text_dim, config.seed, config.cache_dir,
      data_format=config.data_format, min_rating=config.min_rating,
      kcore=config.kcore)
  return prepare_data(config, ds, with_info)


def prepare_data(config: Config, ds: Dataset, with_info: bool = False):
  """The dataset split by --protocol (maml_tf/protocols/): train, valid, test.

  Returns the Dataset, or (Dataset, info) with `with_info`, info being the
  protocol's description of the split (metrics.json's "protocol").
  """
  if not config.uses_features and ds.features:
    ds = dataclasses.replace(ds, features={}, feature_sources={})
  if len(ds.valid) and config.validation_fraction > 0:
    raise UsageError(f"`--validation_fraction` must be 0 when the data gives a "
                     f"validation split ({ds.name} has {len(ds.valid)} "
                     f"validation pairs, e.g. from valid.csv). Received: "
                     f"{config.validation_fraction}")
  if config.protocol == "release" and not len(ds.test):
    raise UsageError(f"`--protocol=release` needs test pairs and {ds.name} has "
                     f"none; give a split (test file) or use --protocol=split "
                     f"(a per-user 8:1:1 split). Received: {config.protocol}")
  ds, info = protocols.get(config.protocol).prepare(config, ds)
  return (ds, info) if with_info else ds


def preservation_dataset(config: Config, ds: Dataset) -> Dataset:
  """`ds` with the features of --preservation_modalities, for measuring
  modality preservation: the run's own when it has them, else read from the
  data (a model that uses no features is measured against them too)."""
  wanted = tuple(config.preservation_modalities)
  have = {m: ds.features[m] for m in wanted if m in ds.features}
  missing = [m for m in wanted if m not in have]
  if missing:
    try:
      extra = formats_lib.load_dataset(
          config.dataset, config.data_dir, tuple(missing), config.feature_paths,
          config.text_dim, config.seed, config.cache_dir,
          data_format=config.data_format, min_rating=config.min_rating,
          kcore=config.kcore)
    except (DataError, UsageError) as e:
      raise UsageError(f"`--preservation_modalities` names a modality the data "
                       f"cannot give ({e}). Received: {','.join(wanted)}") from None
    if extra.n_items != ds.n_items:
      raise UsageError(f"`--preservation_modalities`: the features have "
                       f"{extra.n_items} item rows, the run {ds.n_items}. "
                       f"Received: {','.join(wanted)}")
    have.update({m: extra.features[m] for m in missing})
  return dataclasses.replace(ds, features={m: have[m] for m in wanted},
                             feature_sources={})
