"""The leave-one-out protocol: the split, the sampled candidates, the metrics
(hand-computed and against a numpy oracle), and the evaluator end to end."""

import math

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.evaluate import sampled
from maml_tf.protocols import loo
from maml_tf.data.dataset import Dataset
from maml_tf.errors import DataError


def _ds(train, test, train_time, test_time, n_users=4, n_items=6):
  return Dataset(name="toy", n_users=n_users, n_items=n_items,
                 train=np.array(train, np.int64).reshape(-1, 2),
                 test=np.array(test, np.int64).reshape(-1, 2),
                 train_time=None if train_time is None else np.array(train_time, np.int64),
                 test_time=None if test_time is None else np.array(test_time, np.int64))


def test_leave_one_out_takes_each_users_latest_interaction():
  ds = _ds(train=[[0, 1], [0, 2], [1, 3], [2, 4], [2, 5], [2, 1]],
           test=[[0, 3], [1, 3], [2, 0], [3, 2]],
           train_time=[10, 30, 5, 7, 7, 1],
           test_time=[20, 99, 7, 50])
  out = loo.leave_one_out(ds)
  test = {tuple(p) for p in out.test}
  # user 0: item 2 (t=30) is the latest; user 1: a single item (3, seen in
  # train and again in test: one interaction) stays in train; user 2: a tie
  # at t=7 between (2,4), (2,5) (train) and (2,0) (test): the pooled order's
  # last, the test row; user 3: one interaction, kept in train.
  assert test == {(0, 2), (2, 0)}
  train = {tuple(p) for p in out.train}
  assert train == {(0, 1), (0, 3), (1, 3), (2, 4), (2, 5), (2, 1), (3, 2)}
  assert len(out.train) == len(train)  # the duplicate (1, 3) merged
  assert out.name == "toy-loo" and len(out.valid) == 0
  assert len(out.train_time) == len(out.train) and len(out.test_time) == len(out.test)
  by_pair = dict(zip(map(tuple, out.train), out.train_time))
  assert by_pair[(1, 3)] == 99  # the duplicate keeps its latest time


def test_leave_one_out_needs_times():
  with pytest.raises(DataError, match="needs interaction times"):
    loo.leave_one_out(_ds([[0, 1]], [[0, 2]], None, None))


def test_candidates_are_unknown_distinct_seeded_and_uniform():
  n_items = 30
  known = np.array([[0, i] for i in range(10)] + [[1, 0], [1, 29]], np.int64)
  test = np.array([[0, 3], [1, 29]], np.int64)
  users, cand = sampled.sample_candidates(known, test, n_items, n_neg=15, seed=1)
  assert users.tolist() == [0, 1] and cand.shape == (2, 16)
  assert cand[:, 0].tolist() == [3, 29]
  for u, row in zip(users, cand):
    negs = row[1:]
    assert len(set(negs.tolist())) == 15
    assert not set(negs.tolist()) & set(known[known[:, 0] == u, 1].tolist())
  again = sampled.sample_candidates(known, test, n_items, n_neg=15, seed=1)[1]
  other = sampled.sample_candidates(known, test, n_items, n_neg=15, seed=2)[1]
  np.testing.assert_array_equal(cand, again)
  assert not np.array_equal(cand, other)
  # Uniform over user 0's 20 allowed items: many rows, counts near 5000 * 15 / 20.
  many = np.repeat(test[:1], 5000, axis=0)
  _, c = sampled.sample_candidates(known, many, n_items, n_neg=15, seed=3)
  counts = np.bincount(c[:, 1:].ravel(), minlength=n_items)[10:]
  expected = 5000 * 15 / 20
  assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))
  with pytest.raises(DataError, match="user 0 has only 20 items"):
    sampled.sample_candidates(known, test, n_items, n_neg=21)


def test_sampled_metrics_hand_computed():
  scores = np.array([
      [5.0, 1.0, 2.0, 3.0],   # rank 0: hit, ndcg 1
      [2.0, 3.0, 1.0, 0.0],   # rank 1: hit, ndcg 1/log2(3)
      [0.0, 1.0, 2.0, 3.0],   # rank 3: miss at k=2
      [1.0, 1.0, 0.0, 0.0],   # a tie counts against: rank 1
  ])
  got = sampled.sampled_metrics(scores, ks=(2, 4))
  assert got["hr@2"] == pytest.approx(3 / 4)
  assert got["ndcg@2"] == pytest.approx((1 + 2 / math.log2(3)) / 4)
  assert got["hr@4"] == pytest.approx(1.0)
  assert got["ndcg@4"] == pytest.approx((1 + 2 / math.log2(3) + 1 / math.log2(5)) / 4)
  constant = sampled.sampled_metrics(np.zeros((3, 101)), ks=(10,))
  assert constant == {"hr@10": 0.0, "ndcg@10": 0.0}


def test_sampled_metrics_match_an_oracle_on_random_scores():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 20, size=(200, 11)).astype(np.float64)  # many ties
  for k in (1, 3, 10):
    hr = ndcg = 0.0
    for row in scores:
      better = sum(1 for s in row[1:] if s >= row[0])
      if better < k:
        hr += 1
        ndcg += 1 / math.log2(better + 2)
    got = sampled.sampled_metrics(scores, ks=(k,))
    assert got[f"hr@{k}"] == pytest.approx(hr / 200)
    assert got[f"ndcg@{k}"] == pytest.approx(ndcg / 200)


class _TableModel:
  """Scores from a fixed [users, items] table."""

  def __init__(self, table):
    self.table = tf.constant(table, tf.float32)
    self.n_users, self.n_items = table.shape

  def score_pairs(self, users, items):
    return tf.gather(tf.gather(self.table, users), items, batch_dims=1)


def test_sampled_evaluator_end_to_end():
  n_users, n_items = 6, 40
  known = np.array([[u, u] for u in range(n_users)] + [[u, 10 + u] for u in range(n_users)])
  test = np.array([[u, 10 + u] for u in range(n_users)])
  best = np.zeros((n_users, n_items))
  best[np.arange(n_users), 10 + np.arange(n_users)] = 1.0
  ev = sampled.SampledEvaluator(_TableModel(best), known, test, ks=(10,), n_neg=20,
                            seed=0, batch_users=4)
  assert ev.n_users == n_users
  assert ev() == {"hr@10": 1.0, "ndcg@10": 1.0}
  assert sampled.SampledEvaluator(_TableModel(-best), known, test, ks=(10,),
                              n_neg=20)() == {"hr@10": 0.0, "ndcg@10": 0.0}


def test_final_table_shows_only_the_protocols_metrics():
  from maml_tf.evaluate.records import metrics_table
  record = {"step": 4, "test": {"hr@10": 0.5, "ndcg@10": 0.25}}
  text = metrics_table({"selection": "s", "best": record, "last": record}, (10,))
  header = text.splitlines()[1]
  assert "hr@10" in header and "ndcg@10" in header and "recall" not in header
  assert "50.000" in text and "25.000" in text


def test_loo_protocol_from_the_cli(tmp_path):
  import json
  from tests.helpers import run
  data = tmp_path / "data"
  data.mkdir()
  for split, rows in (("train", range(0, 4)), ("test", range(4, 6))):
    lines = ["itemID,userID,reviewerID,asin,unixReviewTime"]
    for u in range(24):
      items = np.random.default_rng(u).choice(150, size=6, replace=False)
      for j in rows:
        lines.append(f"{items[j]},{u},R{u},A{items[j]:04d},{1000 * j + u}")
    (data / f"{split}.csv").write_text("\n".join(lines) + "\n")
  workdir = tmp_path / "run"
  proc = run(["--dataset=custom", f"--data_dir={data}", "--model=cml",
              "--protocol=loo", "--loo_negatives=50", "--batch_size=16",
              "--train_steps=4", "--eva_batches=2", "--validation_fraction=0.2",
              "--noexport", "--notensorboard", f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [2, 4]
  for r in records:
    assert set(r["test"]) == {"hr@10", "ndcg@10"} and set(r["valid"]) == {"hr@10", "ndcg@10"}
  summary = json.loads((workdir / "metrics.json").read_text())
  assert "validation" in summary["selection"]
  assert "hr@10" in proc.stdout and "recall@10" not in proc.stdout
  assert "24 test pairs" in proc.stdout  # each user's latest interaction
