"""The sampler: docs/spec.md §4 (shuffle, full batches, uniform negatives not in train)."""

import numpy as np
import pytest

from maml_tf.data import sampler
from maml_tf.data.sampler import PairSampler


def _pairs(seed=0, n_users=30, n_items=40, n=300):
  rng = np.random.default_rng(seed)
  pairs = np.stack([rng.integers(0, n_users, n), rng.integers(0, n_items, n)], 1)
  return np.unique(pairs, axis=0)


def test_epoch_is_a_permutation_cut_into_full_batches():
  pairs = _pairs()
  s = PairSampler(pairs, batch_size=32, num_neg=3, seed=1)
  users, items = s.epoch(0)
  assert s.steps_per_epoch == len(pairs) // 32
  assert users.shape == (s.steps_per_epoch, 32)
  assert items.shape == (s.steps_per_epoch, 32, 4)
  got = np.stack([users.ravel(), items[..., 0].ravel()], 1)
  # Every drawn positive is a train pair, none twice (remainder dropped).
  keys = set(map(tuple, pairs))
  assert all(tuple(p) in keys for p in got)
  assert len(set(map(tuple, got))) == len(got) == s.steps_per_epoch * 32


@pytest.fixture(params=["bitmap", "binary search"])
def lookup(request, monkeypatch):
  """Both ways the sampler tests (user, item) membership."""
  if request.param == "binary search":
    monkeypatch.setattr(sampler, "BITMAP_MAX_BITS", 0)
  return request.param


def test_negatives_are_never_train_items_and_stay_in_range(lookup):
  pairs = _pairs(n=600)
  s = PairSampler(pairs, batch_size=50, num_neg=4, seed=2)
  train = {}
  for u, i in pairs:
    train.setdefault(u, set()).add(i)
  for epoch in range(3):
    users, items = s.epoch(epoch)
    negs = items[..., 1:]
    assert negs.min() >= 0 and negs.max() < pairs[:, 1].max() + 1
    for u, row in zip(users.ravel(), negs.reshape(-1, 4)):
      assert not set(row.tolist()) & train[u]
  assert (s._bitmap is not None) == (lookup == "bitmap")


def test_both_lookups_draw_the_same_stream(monkeypatch):
  # Dense enough that many negatives are redrawn, some more than once.
  pairs = _pairs(seed=3, n_users=12, n_items=20, n=150)
  a = PairSampler(pairs, batch_size=20, num_neg=6, seed=4)
  monkeypatch.setattr(sampler, "BITMAP_MAX_BITS", 0)
  b = PairSampler(pairs, batch_size=20, num_neg=6, seed=4)
  assert a._bitmap is not None and b._bitmap is None
  for epoch in range(4):
    for x, y in zip(a.epoch(epoch), b.epoch(epoch)):
      np.testing.assert_array_equal(x, y)


def test_negatives_are_uniform_over_the_allowed_items():
  # One user with items {0, 1}; negatives must be uniform over 2..9.
  pairs = np.array([[0, 0], [0, 1], [1, 9]])
  s = PairSampler(pairs, batch_size=3, num_neg=2000, seed=3)
  users, items = s.epoch(0)
  row = int(np.flatnonzero(users[0] == 0)[0])
  counts = np.bincount(items[0, row, 1:], minlength=10)
  assert counts[:2].sum() == 0
  expected = 2000 / 8
  assert np.all(np.abs(counts[2:] - expected) < 5 * np.sqrt(expected))


def test_stream_is_a_pure_function_of_seed_and_step():
  pairs = _pairs()
  a = PairSampler(pairs, 16, 2, seed=5)
  b = PairSampler(pairs, 16, 2, seed=5)
  c = PairSampler(pairs, 16, 2, seed=6)
  for step in (0, 3, s := a.steps_per_epoch + 1):
    np.testing.assert_array_equal(a.batch(step)[1], b.batch(step)[1])
  assert not np.array_equal(a.batch(0)[1], c.batch(0)[1])
  # Resuming at a step gives the same batches as running through.
  through = list(a.batches(0, s + 2))[s:]
  resumed = list(b.batches(s, 2))
  for x, y in zip(through, resumed):
    np.testing.assert_array_equal(x[1], y[1])
  # Two epochs are shuffled differently.
  assert not np.array_equal(a.epoch(0)[0], a.epoch(1)[0])


def test_dataset_yields_the_same_batches():
  pairs = _pairs()
  s = PairSampler(pairs, 16, 2, seed=5)
  spe = s.steps_per_epoch
  # Within an epoch, and from mid-epoch across two epoch boundaries.
  for start, n in ((3, 4), (spe - 2, spe + 3)):
    got = list(s.dataset(start, n))
    assert len(got) == n
    for step, (u, i) in enumerate(got, start=start):
      np.testing.assert_array_equal(u.numpy(), s.batch(step)[0])
      np.testing.assert_array_equal(i.numpy(), s.batch(step)[1])


def test_rejects_impossible_settings():
  with pytest.raises(ValueError, match="batch_size"):
    PairSampler(_pairs(), batch_size=10_000, num_neg=1)
  with pytest.raises(ValueError, match="every item"):
    PairSampler(np.array([[0, 0], [0, 1], [1, 1]]), batch_size=1, num_neg=1)
