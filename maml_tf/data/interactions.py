"""Interaction rows of every split -> merged, filtered indices.

What every format shares once its files are read into `Rows`: raw ids mapped
to indices (`map_raw_ids`), the `min_rating` and `kcore` filters, duplicate
(user, item) rows merged (`merge_duplicates`), the item -> asin map, and the
train/test overlap report (`finish_interactions` runs them in that order).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from maml_tf.errors import DataError, UsageError

logger = logging.getLogger("maml_tf")

RATING_COLUMNS = ("rating", "overall")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class Rows:
  """One interaction file's rows, in file order, before any merging.

  users / items are int64 indices when `raw` is False, else object arrays of
  raw id strings (mapped later, over all splits together).
  """
  path: str
  users: np.ndarray
  items: np.ndarray
  lines: np.ndarray
  asins: Optional[np.ndarray] = None
  times: Optional[np.ndarray] = None
  ratings: Optional[np.ndarray] = None
  raw: bool = False


def first_true(mask: np.ndarray) -> Optional[int]:
  return int(np.argmax(mask)) if len(mask) and mask.any() else None


@dataclasses.dataclass
class Interactions:
  """The splits' pairs after mapping, filtering and merging."""
  train: np.ndarray
  test: np.ndarray
  train_time: Optional[np.ndarray]
  test_time: Optional[np.ndarray]
  n_users: int
  n_items: int
  item_asins: Optional[List[Optional[str]]]
  valid: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 2), np.int64))
  user_ids: Optional[np.ndarray] = None
  item_ids: Optional[np.ndarray] = None
  notes: Tuple[str, ...] = ()


def map_raw_ids(splits: Mapping[str, Rows], n_users: Optional[int] = None,
                n_items: Optional[int] = None):
  """Index columns for every split, and the vocabularies.

  Splits whose rows hold integer indices keep them (index = the integer,
  vocabulary None = identity); raw id strings are numbered 0..n-1 in order
  of first appearance over the splits in `SPLITS` order. Users and items
  are decided separately. All splits of one dataset must agree.

  Returns:
    ({split: (users int64, items int64)}, n_users, n_items, user_ids,
    item_ids).
  """
  names = [s for s in SPLITS if s in splits]
  kinds = {splits[s].raw for s in names}
  if len(kinds) > 1:
    paths = ", ".join(f"{splits[s].path} ({'raw' if splits[s].raw else 'integer'}"
                      f" ids)" for s in names)
    raise DataError(f"the splits must all use integer userID/itemID or all "
                    f"reviewerID/asin: {paths}")
  out = {s: [None, None] for s in names}
  vocabs, sizes = [], []
  for col, given in ((0, n_users), (1, n_items)):
    arrays = [(splits[s].users, splits[s].items)[col] for s in names]
    if kinds == {True}:
      codes, uniques = pd.factorize(np.concatenate(arrays), sort=False)
      uniques = np.asarray(uniques, dtype=object)
      start = 0
      for s, a in zip(names, arrays):
        out[s][col] = codes[start:start + len(a)].astype(np.int64)
        start += len(a)
      vocabs.append(uniques)
      sizes.append(len(uniques))
    else:
      for s, a in zip(names, arrays):
        out[s][col] = np.asarray(a, np.int64)
      top = max((int(a.max()) + 1 for a in arrays if len(a)), default=0)
      vocabs.append(None)
      sizes.append(max(top, given or 0))
  return ({s: tuple(v) for s, v in out.items()}, sizes[0], sizes[1],
          vocabs[0], vocabs[1])


def finish_interactions(
    splits: Mapping[str, Rows], *, min_rating: Optional[float] = None,
    kcore: int = 0, n_users: Optional[int] = None,
    n_items: Optional[int] = None, compact: Optional[bool] = None,
    asins: bool = True) -> Interactions:
  """Rows of each split -> merged, filtered `Interactions`.

  Order: ids mapped (`map_raw_ids`); `min_rating` keeps rows rated at least
  that; duplicate (user, item) rows merged per split (first kept); `kcore`
  drops, until none is left, users and items with fewer than k distinct
  interactions over all splits together; with raw ids (or `compact`) the
  surviving ids are renumbered 0..n-1 keeping their order. Integer ids keep
  their numbers (feature files are indexed by them).

  Raises:
    DataError: no train rows left, an asin clash. UsageError: min_rating
      without a rating column.
  """
  names = [s for s in SPLITS if s in splits]
  train_path = splits["train"].path
  mapped, n_u, n_i, user_ids, item_ids = map_raw_ids(splits, n_users, n_items)
  raw = user_ids is not None or item_ids is not None
  compact = raw if compact is None else compact
  item_asins = (_item_asins(splits, names, mapped, n_i) if asins else None)
  pairs, times = _pairs_and_times(splits, names, mapped)
  if len(pairs["train"]) == 0:
    raise DataError(f"{train_path}: has no interactions (only a header)")
  notes = _filter_and_merge(splits, names, pairs, times, min_rating, kcore,
                            n_u, n_i)
  if len(pairs["train"]) == 0:
    raise DataError(f"{train_path}: no train interactions are left after "
                    f"filtering ({'; '.join(notes)})")
  if compact and (min_rating is not None or kcore):
    n_u, n_i, user_ids, item_ids, item_asins = _compact_ids(
        pairs, names, n_u, n_i, user_ids, item_ids, item_asins)
  empty = np.zeros((0, 2), np.int64)
  if "test" in splits:
    report_overlap(pairs["train"], pairs["test"], splits["test"].path)
  return Interactions(
      train=pairs["train"], test=pairs.get("test", empty),
      train_time=times["train"], test_time=times.get("test"),
      n_users=n_u, n_items=n_i, item_asins=item_asins,
      valid=pairs.get("valid", empty), user_ids=user_ids, item_ids=item_ids,
      notes=tuple(notes))


def _item_asins(splits, names, mapped, n_items):
  """`asin_map` over every row with an asin (None when no split has any)."""
  if not any(splits[s].asins is not None for s in names):
    return None
  # The asin map reads every row, duplicates included, so that a repeated
  # pair carrying another asin is caught before merging drops it.
  parts = [(mapped[s][1], splits[s].asins,
            np.full(len(splits[s].asins), splits[s].path, object))
           for s in names if splits[s].asins is not None]
  return asin_map(np.concatenate([p[0] for p in parts]),
                  np.concatenate([p[1] for p in parts]),
                  np.concatenate([p[2] for p in parts]), n_items)


def _pairs_and_times(splits, names, mapped):
  """{split: int64 [n, 2] pairs}, {split: times or None}.

  A split without rows misses no time: when another split has times, its
  times are an empty array, not None (a single RecBole `.inter` file is all
  train and an empty test; its times must survive for `--protocol=loo`).
  """
  pairs, times = {}, {}
  timed = any(splits[s].times is not None for s in names)
  for s in names:
    r = splits[s]
    pairs[s] = np.stack(mapped[s], 1) if len(r.lines) else np.zeros(
        (0, 2), np.int64)
    times[s] = r.times
    if times[s] is None and timed and not len(r.lines):
      times[s] = np.zeros(0, np.int64)
  return pairs, times


def _filter_and_merge(splits, names, pairs, times, min_rating, kcore, n_u,
                      n_i) -> List[str]:
  """`min_rating`, duplicates merged, then `kcore`, in place on `pairs` and
  `times`; returns the filters' notes."""
  notes = []
  if min_rating is not None:
    before = _filter_rating(splits, names, pairs, times, min_rating)
  n_rows = sum(len(p) for p in pairs.values())
  for s in names:
    pairs[s], keep = merge_duplicates(pairs[s], splits[s].path)
    times[s] = None if times[s] is None else times[s][keep]
  if min_rating is not None:
    n_dup = n_rows - sum(len(p) for p in pairs.values())
    merged = f" ({n_dup:,} duplicate rows merged)" if n_dup else ""
    notes.append(f"--min_rating={min_rating:g}: {before} -> "
                 f"{counts(pairs)}{merged}")
  if kcore:
    before = counts(pairs)
    _, _, rounds = kcore_filter(pairs, times, kcore, n_u, n_i)  # in place
    notes.append(f"--kcore={kcore} ({rounds} rounds): {before} -> "
                 f"{counts(pairs)}")
  return notes


def _filter_rating(splits, names, pairs, times, min_rating) -> str:
  """Keeps rows rated at least `min_rating`; returns the counts before."""
  lacking = [splits[s].path for s in names
             if splits[s].ratings is None and len(pairs[s])]
  if lacking:
    raise UsageError(f"`--min_rating` needs a rating column ({', '.join(RATING_COLUMNS)}"
                     f" or the format's own); {lacking[0]} has none. "
                     f"Received: {min_rating}")
  before = counts(pairs)
  for s in names:
    if splits[s].ratings is not None and len(pairs[s]):
      keep = splits[s].ratings >= min_rating
      pairs[s] = pairs[s][keep]
      times[s] = None if times[s] is None else times[s][keep]
  return before


def _compact_ids(pairs, names, n_u, n_i, user_ids, item_ids, item_asins):
  """Renumbers the surviving users and items 0..n-1 (in place on `pairs`),
  keeping their order; returns the new sizes and vocabularies."""
  every = np.concatenate([pairs[s] for s in names])
  for col in (0, 1):
    kept = np.unique(every[:, col])
    remap = np.full((n_u, n_i)[col], -1, np.int64)
    remap[kept] = np.arange(len(kept))
    for s in names:
      if len(pairs[s]):
        pairs[s][:, col] = remap[pairs[s][:, col]]
    if col == 0:
      user_ids = (kept.astype(str).astype(object) if user_ids is None
                  else user_ids[kept])
      n_u = len(kept)
    else:
      item_ids = (kept.astype(str).astype(object) if item_ids is None
                  else item_ids[kept])
      if item_asins is not None:
        item_asins = [item_asins[i] for i in kept]
      n_i = len(kept)
  return n_u, n_i, user_ids, item_ids, item_asins


def counts(pairs: Mapping[str, np.ndarray]) -> str:
  every = np.concatenate(list(pairs.values()))
  return (f"{len(np.unique(every[:, 0])):,} users, "
          f"{len(np.unique(every[:, 1])):,} items, {len(every):,} "
          f"interactions")


def kcore_filter(pairs, times, k, n_users, n_items):
  """Iterated k-core over the union of the splits (distinct pairs)."""
  names = list(pairs)
  rounds = 0
  while True:
    every = np.concatenate([pairs[s] for s in names])
    codes = np.unique(pair_codes(every, n_items))
    u, i = codes // n_items, codes % n_items
    deg_u = np.bincount(u, minlength=n_users)
    deg_i = np.bincount(i, minlength=n_items)
    ok_u, ok_i = deg_u >= k, deg_i >= k
    bad = (~ok_u[u]) | (~ok_i[i])
    if not bad.any():
      return pairs, times, rounds
    rounds += 1
    for s in names:
      keep = ok_u[pairs[s][:, 0]] & ok_i[pairs[s][:, 1]]
      pairs[s] = pairs[s][keep]
      times[s] = None if times[s] is None else times[s][keep]


def merge_duplicates(pairs: np.ndarray,
                      path: str) -> Tuple[np.ndarray, np.ndarray]:
  """Drops repeated (user, item) rows, keeping first occurrences in order.

  Returns:
    (unique pairs, indices of the kept rows).
  """
  if len(pairs) == 0:
    return pairs, np.zeros(0, np.int64)
  _, first = np.unique(pair_codes(pairs, int(pairs[:, 1].max()) + 1),
                       return_index=True)
  keep = np.sort(first)
  n_dup = len(pairs) - len(keep)
  if n_dup:
    logger.warning("%s: merged %d duplicate (user, item) rows", path, n_dup)
  return pairs[keep], keep


def pair_codes(pairs: np.ndarray, n_items: int) -> np.ndarray:
  return pairs[:, 0].astype(np.int64) * int(n_items) + pairs[:, 1]


def report_overlap(train: np.ndarray, test: np.ndarray, test_path: str):
  """Warns about test pairs also in train; counts cold users/items."""
  if len(test) == 0:
    return
  n_items = int(max(train[:, 1].max(), test[:, 1].max())) + 1
  in_train = np.isin(pair_codes(test, n_items), pair_codes(train, n_items))
  if in_train.any():
    logger.warning("%s: %d test pairs also occur in train; kept", test_path,
                   int(in_train.sum()))
  cold_users = np.setdiff1d(test[:, 0], train[:, 0])
  cold_items = np.setdiff1d(test[:, 1], train[:, 1])
  if len(cold_users) or len(cold_items):
    logger.info("%s: %d test users and %d test items never occur in train",
                test_path, len(cold_users), len(cold_items))


def asin_map(items: np.ndarray, asins: np.ndarray, files: np.ndarray,
              n_items: int) -> List[Optional[str]]:
  """item id -> asin from interaction rows (None where never given).

  Raises:
    DataError: an item id carries two different asins.
  """
  has = np.array([a is not None for a in asins], bool)
  items, asins, files = items[has], asins[has], files[has]
  out: List[Optional[str]] = [None] * n_items
  if len(items) == 0:
    return out
  order = np.argsort(items, kind="stable")
  items, asins, files = items[order], asins[order], files[order]
  same_item = items[1:] == items[:-1]
  clash = same_item & (asins[1:] != asins[:-1])
  if clash.any():
    j = int(np.argmax(clash))
    first = int(np.searchsorted(items, items[j + 1]))
    raise DataError(
        f"{files[j + 1]}: item {items[j + 1]} has asin {asins[j + 1]!r}, but "
        f"{files[first]} gives it {asins[first]!r}; an item id must map to "
        f"one asin")
  starts = np.concatenate([[True], ~same_item])
  for item, asin in zip(items[starts], asins[starts]):
    out[int(item)] = str(asin)
  uniq, counts = np.unique(np.asarray(asins[starts], str), return_counts=True)
  if (counts > 1).any():
    logger.warning("%d asins are shared by more than one item id (e.g. %r); "
                   "such items get identical asin-keyed features",
                   int((counts > 1).sum()), str(uniq[counts > 1][0]))
  return out


def empty_rows(path: str, raw: bool = True) -> Rows:
  kind = object if raw else np.int64
  return Rows(path, np.zeros(0, kind), np.zeros(0, kind),
              np.zeros(0, np.int64), raw=raw)
