"""`maml_tf.evaluate.two_stage` (`--eval_candidates`): two-stage full ranking.

With every item a candidate it is full ranking exactly; its first stage is
the plain-Euclid top N without the user's known items (numpy oracle); with
a small N its list is those N re-ranked by the model's full score (numpy
oracle over `score_items`), and it is the `retrieve` signature's answer.
The flag's rules, and the label a run writes into metrics.json.
"""

from maml_tf.export import signatures  # first: TFRS wants tf.keras = Keras 2

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.config import Config
from maml_tf.data.dataset import Dataset
from maml_tf.errors import UsageError
from maml_tf.evaluate import full_ranking, two_stage
from maml_tf.models.maml import MAML
from maml_tf.models.mf import MF
from tests.helpers import run_in_process, write_release_layout

N_USERS, N_ITEMS = 16, 40
HEAVY = 0  # knows all but 4 items: fewer than k to recommend


@pytest.fixture(scope="module")
def data():
  """(train, test): 8 train and 3 test items a user; user HEAVY knows 36."""
  rng = np.random.default_rng(3)
  train, test = [], []
  for u in range(N_USERS):
    items = rng.permutation(N_ITEMS)
    n_train = N_ITEMS - 4 if u == HEAVY else 8
    train += [(u, i) for i in items[:n_train]]
    test += [(u, i) for i in items[n_train:n_train + (2 if u == HEAVY else 3)]]
  return np.array(train, np.int64), np.array(test, np.int64)


@pytest.fixture(scope="module")
def maml():
  """MAML with features and attention (random networks, as faithful mode)."""
  keras.utils.set_random_seed(3)
  m = MAML(N_USERS, N_ITEMS, feature_dim=6, embed_dim=8, hidden_dim=16, seed=0)
  m.set_item_features(np.random.default_rng(1).normal(size=(N_ITEMS, 6)))
  # No near-ties in either stage's scores (some seeds give two items one
  # fused vector, whose exact ties the two scoring paths may round apart).
  full = np.sort(m.score_items(tf.range(N_USERS)).numpy(), 1)
  p, q = np.asarray(m.user_embeddings), np.asarray(m.item_embeddings)
  plain = np.sort(((p[:, None, :] - q[None, :, :]) ** 2).sum(-1), 1)
  assert np.diff(full, axis=1).min() > 1e-5 and np.diff(plain, axis=1).min() > 1e-6
  return m


def known_sets(train):
  out = [set() for _ in range(N_USERS)]
  for u, i in train:
    out[u].add(int(i))
  return out


def oracle_first_stage(model, train, n):
  """Per user, the n unknown items nearest in plain Euclid (ties: lower id)."""
  p = np.asarray(model.user_embeddings, np.float64)
  q = np.asarray(model.item_embeddings, np.float64)
  d = ((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)
  known = known_sets(train)
  return [[int(i) for i in np.argsort(d[u], kind="stable") if i not in known[u]][:n]
          for u in range(N_USERS)]


def oracle_rerank(full_scores, candidates, k):
  """The k best candidates by full score (ties: lower id), -1 padded."""
  best = sorted(candidates, key=lambda i: (-full_scores[i], i))[:k]
  return best + [-1] * (k - len(best))


def test_every_item_a_candidate_is_full_ranking(data, maml):
  train, test = data
  full = full_ranking.Evaluator(maml, train, test, (5, 10))
  two = two_stage.TwoStageEvaluator(maml, train, test, (5, 10), n_candidates=N_ITEMS)
  np.testing.assert_array_equal(two.top_k(), full.top_k())
  assert (two.top_k()[np.searchsorted(two.users, HEAVY)] == -1).sum() == 6
  assert two() == full()
  for name, values in full.per_user.items():
    np.testing.assert_array_equal(two.per_user[name], values)
  agree = two_stage.agreement(maml, train, test, N_ITEMS, (5, 10), n_users=None,
                              jit_compile=False)
  assert agree["users"] == N_USERS and agree["candidates"] == N_ITEMS
  assert agree["overlap@5"] == agree["overlap@10"] == 1.0
  assert agree["two_stage"] == agree["full"]
  assert set(agree["difference"].values()) == {0.0}


@pytest.mark.parametrize("n", [6, 1])
def test_first_stage_is_the_plain_euclid_top_n_of_unknown_items(data, maml, n):
  # With k = N the re-ranked list holds every candidate: it shows the set.
  # N = 1 takes the first stage's best by blocks of items (40 > 2 x 1 x 16).
  assert full_ranking.blocked(N_ITEMS, n) == (n == 1)
  train, test = data
  two = two_stage.TwoStageEvaluator(maml, train, test, (n,), n_candidates=n)
  top = two.top_k()
  want = oracle_first_stage(maml, train, n)
  for row, u in enumerate(two.users):
    got = top[row][top[row] >= 0]
    assert sorted(got) == sorted(want[u]), u
  if n >= 4:  # only 4 unknown items: the rest stays empty
    assert len(want[HEAVY]) == 4


class FlatScore:
  """MAML's first stage with a constant full score: every candidate ties."""

  score_width = 1

  def __init__(self, model):
    self.model, self.n_users, self.n_items = model, model.n_users, model.n_items

  def prepare_scoring(self):
    pass

  def serving_tables(self):
    return self.model.serving_tables()

  def serve_queries(self, tables, users):
    return self.model.serve_queries(tables, users)

  def retrieval_space(self, tables):
    return self.model.retrieval_space(tables)

  def serve_pairs(self, tables, users, items):
    return tf.zeros(tf.shape(items)), None


def test_ties_in_the_full_score_go_to_the_lower_item_id(data, maml):
  train, test = data
  n, k = 8, 5
  two = two_stage.TwoStageEvaluator(FlatScore(maml), train, test, (k,),
                                    n_candidates=n, jit_compile=False)
  first = oracle_first_stage(maml, train, n)
  want = [sorted(first[u])[:k] for u in two.users]
  want = [w + [-1] * (k - len(w)) for w in want]
  np.testing.assert_array_equal(two.top_k(), want)
  assert any(sorted(first[u])[:k] != first[u][:k] for u in two.users)


def test_small_n_is_the_numpy_rerank_and_the_retrieve_signature(data, maml):
  train, test = data
  n, k = 8, 5
  two = two_stage.TwoStageEvaluator(maml, train, test, (k,), n_candidates=n)
  top = two.top_k()
  first = oracle_first_stage(maml, train, n)
  full_scores = maml.score_items(tf.constant(two.users, tf.int32)).numpy()
  want = np.array([oracle_rerank(full_scores[row], first[u], k)
                   for row, u in enumerate(two.users)])
  np.testing.assert_array_equal(top, want)
  # Not idle: the re-ranking moves items, and N < n_items loses some.
  assert any(list(want[r]) != first[u][:k] for r, u in enumerate(two.users))
  assert (top != full_ranking.Evaluator(maml, train, test, (k,)).top_k()).any()
  # The serving signature that does the same, through its TFRS index.
  ds = Dataset(name="t", n_users=N_USERS, n_items=N_ITEMS, train=train, test=test)
  served = signatures.ServingGraphs(maml, ds, topk=k, retrieve_candidates=n)
  got = served.retrieve(tf.constant(two.users, tf.int64))["item_ids"].numpy()
  np.testing.assert_array_equal(top, got)


def test_chunk_hits_are_the_two_stage_lists_hits(data, maml):
  # Targets: each user's full-ranking top 3 (3 a user over 40 items, so a
  # full ranking counts the targets' ranks); the two stages, with N = 8,
  # must mark the hits of their own lists, which miss some of them.
  train, _ = data
  n, k = 8, 5
  full_top = full_ranking.Evaluator(maml, train, data[1], (k,)).top_k()
  users = full_ranking.Evaluator(maml, train, data[1], (k,)).users
  test = np.array([(u, i) for u, row in zip(users, full_top) for i in row[:3]],
                  np.int64)
  two = two_stage.TwoStageEvaluator(maml, train, test, (k,), n_candidates=n,
                                    user_chunk=6)
  full = full_ranking.Evaluator(maml, train, test, (k,), user_chunk=6)
  assert full.by_ranks and not two.by_ranks
  two.prepare_tables()
  chunks = range(-(-two.n_users // 6))
  got = np.concatenate([two.chunk_hits(i) for i in chunks])
  top = two.top_k()
  want = np.array([[item in set(two.targets[r]) for item in top[r]]
                   for r in range(two.n_users)])
  np.testing.assert_array_equal(got, want)
  full_hits = np.concatenate([full.chunk_hits(i) for i in chunks])
  assert full_hits[:, :3].all() and not full_hits[:, 3:].any()
  assert (full_hits != got).any() and got.any()  # not full ranking's lists


def test_a_dot_product_model_ranks_as_full_ranking(data):
  # Its first stage is its score: any N >= k gives full ranking's list.
  train, test = data
  mf = MF(N_USERS, N_ITEMS, embed_dim=8, seed=0)
  full = full_ranking.Evaluator(mf, train, test, (5,)).top_k()
  two = two_stage.TwoStageEvaluator(mf, train, test, (5,), n_candidates=5)
  assert two.metric == "dot"
  np.testing.assert_array_equal(two.top_k(), full)


@pytest.mark.parametrize("flags, message", [
    (dict(eval_candidates=-1), "`--eval_candidates` must be >= 0. Received: -1"),
    (dict(eval_candidates=15, topk=(10, 20)),
     "`--eval_candidates` must be 0 or >= the largest --topk (20). Received: 15"),
    (dict(eval_candidates=100, protocol="loo"),
     "`--eval_candidates` must be 0 with --protocol=loo (it ranks "
     "--loo_negatives sampled items, not the catalogue). Received: 100"),
])
def test_flag_rules(flags, message):
  with pytest.raises(UsageError) as e:
    Config(**flags).validate()
  assert str(e.value) == message
  Config(eval_candidates=20, topk=(10, 20)).validate()  # the edge is fine


def test_scorer_without_first_stage_and_clamped_n(data, maml):
  train, test = data

  class Counts:  # the evaluators' interface, no retrieval hooks
    n_users, n_items, score_width = N_USERS, N_ITEMS, 1

  with pytest.raises(UsageError, match=r"^`--eval_candidates` needs a model "
                     r"with a retrieval first stage .*; Counts has no "
                     r"serving_tables .*Received: 8$"):
    two_stage.TwoStageEvaluator(Counts(), train, test, (5,), n_candidates=8)
  two = two_stage.TwoStageEvaluator(maml, train, test, (5,), n_candidates=1000)
  assert two.n_candidates == N_ITEMS
  assert two.describe()["requested_candidates"] == 1000


def test_metrics_json_labels_the_two_stage_evaluation(tmp_path):
  data = tmp_path / "data"
  meta = write_release_layout(str(data))
  workdir = tmp_path / "run"
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}", f"--extra_features=meta={meta}",
      "--eval_candidates=12", "--validation_fraction=0.25", "--train_steps=2",
      "--eva_batches=1", "--batch_size=20", "--notensorboard", "--noexport",
      "--nojit_compile", f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "metrics.json").read_text())
  ranking = summary["ranking"]
  assert set(ranking) == {"valid", "test"}
  for split in ("valid", "test"):
    assert ranking[split]["ranking"] == "two_stage"
    assert ranking[split]["candidates"] == 12
    assert ranking[split]["first_stage"].startswith("euclidean")
  agree = ranking["test"]["agreement_with_full_ranking"]
  assert "agreement_with_full_ranking" not in ranking["valid"]
  assert agree["users"] == 24 and agree["candidates"] == 12  # all 24 test users
  assert 0.0 <= agree["overlap@10"] <= 1.0
  # The agreement's two-stage side is the last round's test metrics.
  assert agree["two_stage"] == pytest.approx(summary["last"]["test"])
