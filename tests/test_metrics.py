"""`maml_tf.evaluate.full_ranking` ranking and metrics vs the oracles (docs/spec.md §5).

Hand cases, seeded random users, and Hypothesis properties of the metrics.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from maml_tf.evaluate import metrics as metrics_lib

try:
  from tests import oracles
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir mode)
  import oracles

NAMES = ("ndcg", "recall", "hr", "precision")
TOL = 1e-6


def _metrics(topk, tests, ks):
  got = metrics_lib.ranking_metrics(np.asarray(topk, dtype=np.int64),
                                 [np.asarray(t, dtype=np.int64) for t in tests],
                                 ks=ks)
  return {key: float(value) for key, value in got.items()}


def _assert_matches(got, expected, k):
  for name in NAMES:
    assert got[f"{name}@{k}"] == pytest.approx(expected[name], rel=TOL,
                                               abs=TOL), name


def _oracle_mean(rankings, tests, k):
  per_user = [oracles.user_metrics(r, t, k) for r, t in zip(rankings, tests)]
  return {name: float(np.mean([m[name] for m in per_user])) for name in NAMES}


# ------------------------------------------------------------- hand cases


def test_hits_at_0_and_2_of_3_test_items():
  # ranked [5, 9, 7, 1, ...], test {5, 7, 8}, k = 10: hits at 0 and 2
  # DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.1309298
  # NDCG = 0.7039180; recall 2/3; precision 2/10; hr 1
  topk = [[5, 9, 7, 1, 2, 3, 4, 6, 10, 11]]
  got = _metrics(topk, [[5, 7, 8]], ks=(10,))
  assert got["ndcg@10"] == pytest.approx(
      1.5 / (1.0 + 1.0 / math.log2(3.0) + 0.5), rel=TOL)
  assert got["recall@10"] == pytest.approx(2.0 / 3.0, rel=TOL)
  assert got["precision@10"] == pytest.approx(0.2, rel=TOL)
  assert got["hr@10"] == pytest.approx(1.0)


def test_several_cutoffs_from_one_topk():
  # topk [4, 1, 3, 0, 2], test {3, 2}
  # @2: [4, 1] no hit -> all 0
  # @5: hits at 2 and 4: DCG = 1/log2(4) + 1/log2(6) = 0.5 + 0.3868528
  #     IDCG = 1 + 1/log2(3) = 1.6309298; recall 1; precision 2/5; hr 1
  got = _metrics([[4, 1, 3, 0, 2]], [[3, 2]], ks=(2, 5))
  for name in NAMES:
    assert got[f"{name}@2"] == 0.0
  dcg = 0.5 + 1.0 / math.log2(6.0)
  assert got["ndcg@5"] == pytest.approx(dcg / (1.0 + 1.0 / math.log2(3.0)),
                                        rel=TOL)
  assert got["recall@5"] == pytest.approx(1.0)
  assert got["precision@5"] == pytest.approx(0.4)
  assert got["hr@5"] == pytest.approx(1.0)


def test_average_over_users_hand():
  # user 0: test {0}, top-2 [0, 1] -> ndcg 1, recall 1, precision 1/2, hr 1
  # user 1: test {9}, top-2 [3, 4] -> all 0
  # means: ndcg 1/2, recall 1/2, precision 1/4, hr 1/2
  got = _metrics([[0, 1], [3, 4]], [[0], [9]], ks=(2,))
  assert got["ndcg@2"] == pytest.approx(0.5)
  assert got["recall@2"] == pytest.approx(0.5)
  assert got["precision@2"] == pytest.approx(0.25)
  assert got["hr@2"] == pytest.approx(0.5)


def test_evaluate_hand_through_top_k_excluding():
  # Same as test_oracles.test_evaluate_hand, users with tests only:
  # user 0 scores [0.9, 0.8, 0.7, 0.1, 0.5], train {0}, test {2, 3}
  #   -> top-2 [1, 2], hit at 1: ndcg (1/log2 3) / (1 + 1/log2 3), recall 1/2
  # user 1 all tied, train {1}, test {3} -> top-2 [0, 2], nothing
  scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.5],
                     [0.5, 0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
  train = [np.array([0]), np.array([1])]
  test = [np.array([2, 3]), np.array([3])]
  topk = metrics_lib.top_k_excluding(scores, train, 2)
  np.testing.assert_array_equal(topk, [[1, 2], [0, 2]])
  got = _metrics(topk, test, ks=(2,))
  _assert_matches(got, oracles.evaluate(scores, train, test, 2), 2)
  c = 1.0 / math.log2(3.0)
  assert got["ndcg@2"] == pytest.approx(c / (1.0 + c) / 2.0, rel=TOL)


# ---------------------------------------------------------- top_k_excluding


def test_top_k_excluding_never_returns_excluded():
  # The two best-scored items are excluded: the next three come back.
  scores = np.array([[0.1, 9.0, 0.3, 8.0, 0.2, 0.4]], dtype=np.float32)
  topk = metrics_lib.top_k_excluding(scores, [np.array([1, 3])], 3)
  np.testing.assert_array_equal(topk, [[5, 2, 4]])


def test_top_k_excluding_ties_to_lower_id():
  # Convention of the oracle: equal scores rank the lower item id first.
  scores = np.array([[1.0, 2.0, 1.0, 1.0, 2.0, 1.0]], dtype=np.float32)
  topk = metrics_lib.top_k_excluding(scores, [np.array([0])], 4)
  np.testing.assert_array_equal(topk, [[1, 4, 2, 3]])


def test_top_k_excluding_empty_exclusion():
  scores = np.array([[0.3, 0.1, 0.2]], dtype=np.float32)
  topk = metrics_lib.top_k_excluding(scores, [np.array([], dtype=np.int64)], 2)
  np.testing.assert_array_equal(topk, [[0, 2]])


def test_fewer_candidates_than_k_padded_and_scored_over_k():
  # 3 items, item 1 excluded, k = 3: only [2, 0] remain -> padded with -1.
  # test {0}: hit at position 1 -> DCG = 1/log2(3);
  #   IDCG over min(1, 3) = 1 slot = 1/log2(2) = 1 -> ndcg 0.6309298
  #   recall 1, hr 1, precision = hits / k = 1/3 (SPEC: over k, not over 2)
  scores = np.array([[1.0, 3.0, 2.0]], dtype=np.float32)
  topk = metrics_lib.top_k_excluding(scores, [np.array([1])], 3)
  np.testing.assert_array_equal(topk, [[2, 0, -1]])
  got = _metrics(topk, [[0]], ks=(3,))
  assert got["ndcg@3"] == pytest.approx(1.0 / math.log2(3.0), rel=TOL)
  assert got["recall@3"] == pytest.approx(1.0)
  assert got["hr@3"] == pytest.approx(1.0)
  assert got["precision@3"] == pytest.approx(1.0 / 3.0, rel=TOL)
  _assert_matches(got, oracles.user_metrics([2, 0], [0], 3), 3)

def _random_split(rng, n_users, n_items):
  train, test = [], []
  for _ in range(n_users):
    items = rng.permutation(n_items)
    n_train = int(rng.integers(0, n_items // 2))
    n_test = int(rng.integers(1, n_items // 4))
    train.append(np.sort(items[:n_train]))
    test.append(np.sort(items[n_train:n_train + n_test]))
  return train, test


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_users_match_oracle(seed):
  rng = np.random.default_rng(seed)
  n_users, n_items = 40, 60
  # Distinct in float32, so the ranking has no ties to break.
  scores = np.stack([rng.permutation(n_items) for _ in range(n_users)]
                    ).astype(np.float32) * 0.01 - 0.3
  train, test = _random_split(rng, n_users, n_items)
  kmax = 10
  topk = metrics_lib.top_k_excluding(scores, train, kmax)
  assert topk.shape == (n_users, kmax)
  for u in range(n_users):
    ranked = oracles.rank_excluding(scores[u], train[u])
    np.testing.assert_array_equal(topk[u], ranked[:kmax])
    assert not set(topk[u].tolist()) & set(train[u].tolist())
  got = _metrics(topk, test, ks=(1, 5, 10))
  for k in (1, 5, 10):
    _assert_matches(got, oracles.evaluate(scores, train, test, k), k)


def test_indexed_targets_give_the_lists_metrics():
  # An evaluator indexes its targets once (`Targets`); the metrics from the
  # index are those from the lists, and a top-k item past the index's
  # catalogue is refused rather than read as another user's target.
  rng = np.random.default_rng(4)
  n_items = 30
  _, test = _random_split(rng, 25, n_items)
  topk = np.stack([rng.permutation(n_items)[:6] for _ in test])
  topk[3, 5] = -1  # fewer candidates than k
  index = metrics_lib.Targets(test, n_items)
  assert len(index) == 25
  from_lists = metrics_lib.per_user_metrics(topk, test, ks=(3, 6))
  from_index = metrics_lib.per_user_metrics(topk, index, ks=(3, 6))
  assert from_index.keys() == from_lists.keys()
  for name, values in from_lists.items():
    np.testing.assert_array_equal(from_index[name], values)
  with pytest.raises(ValueError, match="past the `Targets`' items"):
    metrics_lib.per_user_metrics(np.array([[0, 7], [1, 2]]),
                                 metrics_lib.Targets([np.array([1]),
                                                      np.array([0, 2])], 5),
                                 ks=(2,))
  with pytest.raises(ValueError, match="at least one item"):
    metrics_lib.Targets([np.array([1]), np.array([], np.int64)])


@pytest.mark.parametrize("seed", [0, 1])
def test_random_real_scores_with_ties(seed):
  # Scores on a coarse grid: many ties, all resolved towards the lower id.
  rng = np.random.default_rng(seed)
  n_users, n_items = 20, 30
  scores = rng.integers(0, 5, size=(n_users, n_items)).astype(np.float32)
  train, test = _random_split(rng, n_users, n_items)
  topk = metrics_lib.top_k_excluding(scores, train, 10)
  for u in range(n_users):
    np.testing.assert_array_equal(
        topk[u], oracles.rank_excluding(scores[u], train[u])[:10])
  _assert_matches(_metrics(topk, test, ks=(10,)),
                  oracles.evaluate(scores, train, test, 10), 10)


# -------------------------------------------------------------- Hypothesis


@st.composite
def user_cases(draw, k=None):
  """(k, ranking of all items, non-empty test set) for one user."""
  if k is None:
    k = draw(st.integers(1, 10))
  n_items = draw(st.integers(k, 25))
  ranking = draw(st.permutations(list(range(n_items))))
  test = draw(st.sets(st.integers(0, n_items - 1), min_size=1,
                      max_size=n_items))
  return k, list(ranking), sorted(test)


@settings(max_examples=150, deadline=None)
@given(user_cases())
def test_property_single_user(case):
  k, ranking, test = case
  got = _metrics([ranking[:k]], [test], ks=(k,))
  values = {name: got[f"{name}@{k}"] for name in NAMES}
  for value in values.values():
    assert -TOL <= value <= 1.0 + TOL
  hits = len(set(ranking[:k]) & set(test))
  assert values["hr"] == (1.0 if hits > 0 else 0.0)
  # precision * k = hits = recall * |test|
  assert values["precision"] * k == pytest.approx(hits, abs=1e-5)
  assert values["recall"] * len(test) == pytest.approx(hits, abs=1e-5)
  if set(test) <= set(ranking[:k]):  # implies |test| <= k
    assert values["recall"] == pytest.approx(1.0)
  if set(ranking[:min(len(test), k)]) <= set(test):  # ideal ordering
    assert values["ndcg"] == pytest.approx(1.0)
  _assert_matches(got, oracles.user_metrics(ranking, test, k), k)


@settings(max_examples=75, deadline=None)
@given(st.integers(1, 10).flatmap(
    lambda k: st.lists(user_cases(k=k), min_size=1, max_size=6)))
def test_property_mean_over_users(cases):
  k = cases[0][0]
  rankings = [ranking for _, ranking, _ in cases]
  tests = [test for _, _, test in cases]
  got = _metrics([r[:k] for r in rankings], tests, ks=(k,))
  _assert_matches(got, _oracle_mean(rankings, tests, k), k)


@st.composite
def exclusion_cases(draw):
  k = draw(st.integers(1, 8))
  n_items = draw(st.integers(k, 30))
  n_users = draw(st.integers(1, 4))
  scores, excludes = [], []
  for _ in range(n_users):
    # Small integer scores: ties are common and must go to the lower id.
    scores.append(draw(st.lists(st.integers(-3, 3), min_size=n_items,
                                max_size=n_items)))
    excludes.append(sorted(draw(st.sets(st.integers(0, n_items - 1),
                                        max_size=n_items - k))))
  return k, np.array(scores, dtype=np.float32), excludes


@settings(max_examples=100, deadline=None)
@given(exclusion_cases())
def test_property_top_k_excluding(case):
  k, scores, excludes = case
  topk = metrics_lib.top_k_excluding(
      scores, [np.asarray(e, dtype=np.int64) for e in excludes], k)
  assert topk.shape == (scores.shape[0], k)
  for u in range(scores.shape[0]):
    assert not set(topk[u].tolist()) & set(excludes[u])
    assert len(set(topk[u].tolist())) == k
    np.testing.assert_array_equal(
        topk[u], oracles.rank_excluding(scores[u], excludes[u])[:k])
