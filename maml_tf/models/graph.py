"""What the multimodal graph models share: checking their arguments
(integers, modalities) and the per-modality item features they store, and
building one from a run's dataset (every content modality, the train graph
and the run's embedding flags)."""

from __future__ import annotations

from typing import Dict, Iterator, Sequence, Tuple

import numpy as np

from maml_tf.models import base


def check_int(name, value, low):
  """int(value), refused unless an integer (not a bool) >= low."""
  if isinstance(value, bool) or int(value) != value or value < low:
    raise ValueError(f"`{name}` must be an integer >= {low}. Received: "
                     f"{name}={value!r}")
  return int(value)


def check_modalities(modalities, feature_dims, why, distinct_rule="distinct"):
  """(modalities, feature_dims) as tuples, refused unless there is at least
  one modality (`why` the model needs one), they are distinct and each has
  one size >= 1."""
  modalities, feature_dims = tuple(modalities), tuple(int(d) for d in feature_dims)
  if not modalities:
    raise ValueError("`modalities` must name at least one content modality "
                     f"({why}). Received: modalities=()")
  if len(set(modalities)) != len(modalities):
    raise ValueError(f"`modalities` must be {distinct_rule}. Received: "
                     f"modalities={modalities}")
  if len(feature_dims) != len(modalities) or min(feature_dims) < 1:
    raise ValueError("`feature_dims` must give one size >= 1 per modality. "
                     f"Received: feature_dims={feature_dims}")
  return modalities, feature_dims


def checked_features(features: Dict[str, np.ndarray], modalities: Sequence[str],
                     feature_dims: Sequence[int],
                     n_items: int) -> Iterator[Tuple[str, np.ndarray]]:
  """Yields (modality, float32 [n_items, d_m] features) in the model's
  order, each checked (present, of its shape) just before it is yielded."""
  for m, dm in zip(modalities, feature_dims):
    if m not in features:
      raise ValueError(f"`features` must have the modality {m!r}. Received: "
                       f"{sorted(features)}")
    x = np.asarray(features[m], np.float32)
    if x.shape != (n_items, dm):
      raise ValueError(f"`features[{m!r}]` must have shape {(n_items, dm)}."
                       f" Received: shape={x.shape}")
    yield m, x


def from_dataset(cls, config, dataset, reason, **kwargs):
  """`cls` on the dataset's content modalities and train graph, with the
  run's embed_dim, l2_reg and seed (`kwargs`: the model's own arguments),
  its features set; refuses a dataset without content (`reason` says why
  the model needs it)."""
  base.require_content(config, dataset.features, cls.NAME, reason)
  model = cls(
      dataset.n_users, dataset.n_items, modalities=dataset.modalities,
      feature_dims=[dataset.features[m].shape[1] for m in dataset.modalities],
      train_pairs=dataset.train, embed_dim=config.embed_dim,
      l2_reg=config.l2_reg, seed=config.seed, name=cls.NAME, **kwargs)
  model.set_item_features(dict(dataset.features))
  return model
