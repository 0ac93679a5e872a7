"""The one immutable container every stage after loading works on."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Interactions and item features, ids 0-based and dense.

  Attributes:
    name: a short label used in outputs ("office", "custom", ...).
    n_users: 1 + the largest user id in train, valid and test.
    n_items: 1 + the largest item id in train, valid and test; every feature
      matrix has exactly this many rows (row i = item i).
    train: int64 [n, 2] array of (user, item) pairs, duplicates removed.
    test: int64 [m, 2] array of (user, item) pairs.
    valid: int64 [v, 2] pairs held out of train for model selection, or an
      empty [0, 2] array when there is no validation split.
    features: ordered mapping modality name -> float32 [n_items, d] matrix.
      Empty means no item features (CML).
    feature_sources: modality name -> one line saying what it really is (e.g.
      "meta: one-hot of category id and brand id from item_meta.tsv"), shown
      in outputs so no modality is mistaken for another.
    item_labels: optional tuple of n_items strings (product titles) used to
      label plots and the embedding projector.
    train_time / test_time: optional int64 timestamps aligned with the rows
      of train / test (unix seconds), for time-based protocols.
    user_ids / item_ids: the raw ids (object arrays of str, as written in
      the data files): position i is the raw id of index i. None means the
      identity, raw id = str(index) (the release's integer ids). See
      `maml_tf.vocab`.
    notes: lines the loader wants the user to see (filter counts, a split
      left to the protocol, ...), printed with the summary.
  """

  name: str
  n_users: int
  n_items: int
  train: np.ndarray
  test: np.ndarray
  valid: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 2), np.int64))
  features: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  feature_sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
  item_labels: Optional[Tuple[str, ...]] = None
  train_time: Optional[np.ndarray] = None
  test_time: Optional[np.ndarray] = None
  user_ids: Optional[np.ndarray] = None
  item_ids: Optional[np.ndarray] = None
  notes: Tuple[str, ...] = ()

  @property
  def modalities(self) -> Tuple[str, ...]:
    return tuple(self.features)

  def feature_matrix(self) -> Optional[np.ndarray]:
    """Modalities concatenated in order (text first, as the release did)."""
    if not self.features:
      return None
    return np.concatenate([self.features[m] for m in self.features], axis=1)

  def summary(self) -> str:
    mods = ", ".join(f"{k} ({v.shape[1]}-d)" for k, v in self.features.items())
    return (f"{self.name}: {self.n_users} users, {self.n_items} items, "
            f"{len(self.train)} train / {len(self.valid)} valid / "
            f"{len(self.test)} test pairs; modalities: {mods or 'none'}")
