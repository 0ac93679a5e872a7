"""The benchmark's dataset sizes, and synthetic data of their shapes.

A size is a real dataset's shape: its users, items and interactions, its
degree distributions, its item feature widths. `office` is the real Office
data in this repository (the release's split) with random features of the
release's widths; every other size is synthetic (`synthetic_pairs`), drawn
with the size's degree distributions, and split 8:1:1 per user (train /
validation / test, as MARIO's and MMRec's protocol), so that every user is
a test user.

How the synthetic interactions are drawn (a configuration model): each side
(users, items) gets a degree sequence `minimum + extra`, the extra
interactions shared out multinomially with probability proportional to
(rank + b)^-s, rank a random permutation of the ids (Zipf-like: s the
exponent, b = b_frac x n flattens the head); the user slots and item slots
are paired at random and repeated pairs dropped (the count left is what the
size reports). The parameters of each size are fitted to the real dataset's
minimum, median, mean and maximum degree per side (`SIZES` says which).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Side:
  """One side's degree distribution: minimum + Zipf-like extra."""
  minimum: int
  exponent: float
  b_frac: float


@dataclasses.dataclass(frozen=True)
class Size:
  name: str
  n_users: int
  n_items: int
  interactions: int  # before repeated pairs are dropped
  users: Side
  items: Side
  features: Tuple[Tuple[str, int], ...]  # (modality, width) for feature models
  about: str


# Office's shape (Amazon 5-core): users min 5 / median 7 / mean 10.9 /
# max 92, items min 4 / median 10 / mean 22 / max 311 (the real data here).
AMAZON_USERS = Side(5, 0.95, 0.0142)
AMAZON_ITEMS = Side(4, 1.0, 0.0133)

SIZES: Dict[str, Size] = {s.name: s for s in (
    Size("office", 4874, 2406, 53257, AMAZON_USERS, AMAZON_ITEMS,
         (("text", 512), ("image", 4096)),
         "the real Office data (release split), random 512-d text + 4096-d "
         "image features (the release's example widths)"),
    Size("clothing", 39387, 23033, 278677, AMAZON_USERS, dataclasses.replace(AMAZON_ITEMS, minimum=5),
         (("image", 4096), ("text", 384)),
         "Amazon Clothing's shape (MMRec's 5-core): Office's degree shapes, "
         "4096-d image + 384-d text features"),
    Size("ml20m", 138493, 26744, 24000000, Side(20, 0.9, 0.0014),
         Side(1, 2.35, 0.0152), (("image", 4096), ("text", 384)),
         "MovieLens-20M's shape: users min 20 / median ~68 / max ~9k, items "
         "median ~18 / max ~67k"),
    Size("items100k", 202577, 100000, 2213500, AMAZON_USERS, AMAZON_ITEMS,
         (("text", 512), ("meta", 381)),
         "100,000 items with Office's densities and degree shapes, Office's "
         "512-d text + 381-d meta feature widths"),
)}

# --quick: the same kinds of data, small enough for a smoke run.
QUICK: Dict[str, Size] = {s.name: s for s in (
    dataclasses.replace(SIZES["office"], n_users=1000, n_items=500,
                        interactions=12000, features=(("text", 64), ("image", 512)),
                        about="quick: synthetic, Office's shapes"),
    dataclasses.replace(SIZES["clothing"], n_users=1500, n_items=900,
                        interactions=12000, features=(("image", 512), ("text", 48)),
                        about="quick: synthetic, Clothing's shapes"),
    dataclasses.replace(SIZES["ml20m"], n_users=1500, n_items=300,
                        interactions=60000, features=(("image", 512), ("text", 48)),
                        about="quick: synthetic, MovieLens-20M's shapes"),
    dataclasses.replace(SIZES["items100k"], n_users=4000, n_items=2000,
                        interactions=44000, features=(("text", 64), ("meta", 48)),
                        about="quick: synthetic, the 100k-item case's shapes"),
)}


def get(name: str, quick: bool = False) -> Size:
  table = QUICK if quick else SIZES
  if name not in table:
    raise ValueError(f"`size` must be one of {', '.join(table)}. Received: {name!r}")
  return table[name]


def degrees(rng, n: int, total: int, side: Side) -> np.ndarray:
  """[n] degrees >= side.minimum summing to max(total, n x minimum)."""
  extra = max(0, int(total) - n * side.minimum)
  ranks = rng.permutation(n)
  weight = (ranks + side.b_frac * n + 1.0) ** -side.exponent
  return side.minimum + rng.multinomial(extra, weight / weight.sum())


def sorted_unique(keys: np.ndarray) -> np.ndarray:
  """np.unique(keys) by a sort (numpy 2.4's np.unique of 20M int64 keys
  takes ~60 s here, a sort ~1.5 s)."""
  keys = np.sort(keys)
  return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


def synthetic_pairs(size: Size, seed: int = 0, rounds: int = 8) -> np.ndarray:
  """[m, 2] distinct (user, item) pairs with the size's degree shapes: user
  and item slots paired at random, repeated pairs dropped, then the slots
  left open on both sides paired again (`rounds` times at most)."""
  rng = np.random.default_rng(seed)
  user_deg = degrees(rng, size.n_users, size.interactions, size.users)
  item_deg = degrees(rng, size.n_items, int(user_deg.sum()), size.items)
  keys = np.zeros(0, np.int64)
  for _ in range(rounds):
    got = keys // size.n_items, keys % size.n_items
    open_u = user_deg - np.bincount(got[0], minlength=size.n_users)
    open_i = item_deg - np.bincount(got[1], minlength=size.n_items)
    users = np.repeat(np.arange(size.n_users, dtype=np.int64), open_u)
    items = rng.permutation(np.repeat(np.arange(size.n_items, dtype=np.int64),
                                      open_i))
    n = min(len(users), len(items))
    if n <= len(keys) // 1000:
      break
    users = users[rng.permutation(len(users))[:n]]
    keys = sorted_unique(np.concatenate([keys, users * size.n_items + items[:n]]))
  return np.stack([keys // size.n_items, keys % size.n_items], 1)


def split_per_user(pairs: np.ndarray, n_users: int, seed: int = 0,
                   fractions=(0.8, 0.1, 0.1)):
  """(train, valid, test): each user's pairs shuffled and cut 8:1:1, at
  least one test and (with 3+) one validation pair per user."""
  rng = np.random.default_rng([seed, 1])
  order = np.lexsort((rng.random(len(pairs)), pairs[:, 0]))
  pairs = pairs[order]
  counts = np.bincount(pairs[:, 0], minlength=n_users)
  start = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.arange(len(pairs)) - np.repeat(start, counts)
  deg = np.repeat(counts, counts)
  n_test = np.maximum(1, np.round(deg * fractions[2])).astype(np.int64)
  n_valid = np.where(deg >= 3, np.maximum(1, np.round(deg * fractions[1])), 0)
  test = rank < n_test
  valid = ~test & (rank < n_test + n_valid)
  return pairs[~test & ~valid], pairs[valid], pairs[test]


def degree_summary(pairs: np.ndarray, column: int) -> Dict[str, float]:
  """min / median / mean / max degree and the top 10%'s share of one side."""
  d = np.sort(np.bincount(pairs[:, column]))[::-1]
  d = d[d > 0]
  return {"min": int(d.min()), "median": float(np.median(d)),
          "mean": float(d.mean()), "max": int(d.max()),
          "top10_share": float(d[:max(1, len(d) // 10)].sum() / d.sum())}


def dataset(name: str, quick: bool = False, with_features: bool = False,
            seed: int = 0):
  """The size's `Dataset` (features only when asked: they cost memory)."""
  from maml_tf import data
  size = get(name, quick)
  rng = np.random.default_rng([seed, 2])
  features: Optional[Dict[str, np.ndarray]] = None
  if with_features:
    features = {m: rng.standard_normal((size.n_items, d), np.float32)
                for m, d in size.features}
  if name == "office" and not quick:
    office = data.load_office(modalities=())
    return data.from_arrays(office.train, office.test, features=features,
                            n_users=office.n_users, n_items=office.n_items,
                            name="office")
  train, valid, test = split_per_user(synthetic_pairs(size, seed), size.n_users, seed)
  return data.from_arrays(train, test, valid=valid, features=features,
                          n_users=size.n_users, n_items=size.n_items,
                          name=f"synthetic-{name}")
