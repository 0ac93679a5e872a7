"""The one immutable container every stage after loading works on."""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Optional, Tuple

import numpy as np

from maml_tf.data.feature_files import check_feature_matrix
from maml_tf.data.interactions import Interactions
from maml_tf.errors import DataError

logger = logging.getLogger("maml_tf")


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
      `maml_tf.data.vocab`.
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


def make_dataset(name: str, inter: Interactions,
                  feats: Mapping[str, np.ndarray], sources: Mapping[str, str],
                  labels: Optional[Tuple[str, ...]]) -> Dataset:
  ds = Dataset(name=name, n_users=inter.n_users, n_items=inter.n_items,
               train=inter.train, test=inter.test, features=dict(feats),
               feature_sources=dict(sources), item_labels=labels,
               train_time=inter.train_time, test_time=inter.test_time,
               valid=inter.valid, user_ids=inter.user_ids,
               item_ids=inter.item_ids, notes=tuple(inter.notes))
  for note in ds.notes:
    logger.info("%s: %s", name, note)
  validate_dataset(ds)
  return ds


def validate_dataset(ds: Dataset) -> None:
  """Checks every invariant of the Dataset contract.

  Raises:
    DataError: ids out of range, bad shapes/dtypes, feature rows != n_items,
      non-finite features, misaligned times/labels/sources.
  """
  for what in ("train", "test", "valid"):
    arr = getattr(ds, what)
    if (not isinstance(arr, np.ndarray) or arr.dtype != np.int64 or
        arr.ndim != 2 or arr.shape[1] != 2):
      raise DataError(f"{ds.name}: `{what}` must be int64 [n, 2]")
    if len(arr) == 0:
      continue
    if arr.min() < 0:
      raise DataError(f"{ds.name}: `{what}` has a negative id")
    for col, who, limit in ((0, "user", ds.n_users), (1, "item", ds.n_items)):
      top = int(arr[:, col].max())
      if top >= limit:
        raise DataError(f"{ds.name}: `{what}` has {who} id {top}, but "
                        f"n_{who}s = {limit}")
  for m, mat in ds.features.items():
    check_feature_matrix(mat, f"{ds.name}: modality `{m}`",
                         n_rows=ds.n_items)
    if mat.dtype != np.float32:
      raise DataError(f"{ds.name}: modality `{m}` must be float32")
    if m not in ds.feature_sources:
      raise DataError(f"{ds.name}: modality `{m}` has no feature_sources line")
  for what, pairs in (("train_time", ds.train), ("test_time", ds.test)):
    t = getattr(ds, what)
    if t is not None and (t.ndim != 1 or len(t) != len(pairs)):
      raise DataError(f"{ds.name}: `{what}` has {t.shape} entries for "
                      f"{len(pairs)} pairs")
  for what, ids, n in (("user_ids", ds.user_ids, ds.n_users),
                       ("item_ids", ds.item_ids, ds.n_items)):
    if ids is not None and len(ids) != n:
      raise DataError(f"{ds.name}: `{what}` has {len(ids)} raw ids for "
                      f"{n} indices")
  if ds.item_labels is not None and len(ds.item_labels) != ds.n_items:
    raise DataError(f"{ds.name}: {len(ds.item_labels)} item labels for "
                    f"{ds.n_items} items")
