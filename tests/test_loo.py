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
  from tests.helpers import run_in_process
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
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}", "--model=cml",
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


# --- Every format that has times ---------------------------------------------
#
# One history, written in each format's own files: the test item of a user is
# their latest interaction by time, wherever it was written. ann's latest is
# i-y (t=9, in the test file); bob's is i-u (t=10, a train row: the test
# file's i-x, t=3, is earlier and goes to train); cy has one interaction and
# stays in train. Validation rows (a split file or x_label 1) are kept as the
# validation split.
HISTORY = {  # split -> (user, item, time)
    "train": [("ann", "i-x", 5), ("bob", "i-w", 1), ("ann", "i-z", 7),
              ("cy", "i-z", 2), ("bob", "i-u", 10)],
    "valid": [("ann", "i-v", 6), ("bob", "i-v", 2)],
    "test": [("ann", "i-y", 9), ("bob", "i-x", 3)],
}
LOO_TEST = {("ann", "i-y"), ("bob", "i-u")}
LOO_VALID = {("ann", "i-v"), ("bob", "i-v")}
LOO_TRAIN = {("ann", "i-x"), ("ann", "i-z"), ("bob", "i-w"), ("bob", "i-x"),
             ("cy", "i-z")}
USERS = {"ann": 0, "bob": 1, "cy": 2}
ITEMS = {"i-x": 0, "i-y": 1, "i-z": 2, "i-w": 3, "i-u": 4, "i-v": 5}


def _tsv(path, rows):
  path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))


def _recbole_single(folder, times=True):
  head = ["user_id:token", "item_id:token"] + (["timestamp:float"] if times else [])
  rows = [(u, i, float(t))[:len(head)] for s in HISTORY
          for u, i, t in HISTORY[s]]
  _tsv(folder / "toy.inter", [head] + rows[::-1])  # file order is not time


def _recbole_benchmark(folder, times=True):
  head = ["user_id:token", "item_id:token"] + (["timestamp:float"] if times else [])
  for s, rows in HISTORY.items():
    _tsv(folder / f"toy.{s}.inter", [head] + [r[:len(head)] for r in rows])


def _mmrec(folder, times=True):
  head = ["userID", "itemID", "x_label"] + (["timestamp"] if times else [])
  rows = [(USERS[u], ITEMS[i], label, t)[:len(head)]
          for label, s in enumerate(("train", "valid", "test"))
          for u, i, t in HISTORY[s]]
  _tsv(folder / "toy.inter", [head] + rows)


def _release(folder, times=True, test_times=None):
  for s, rows in HISTORY.items():
    timed = times if s != "test" or test_times is None else test_times
    lines = ["reviewerID,asin" + (",unixReviewTime" if timed else "")]
    lines += [f"{u},{i}" + (f",{t}" if timed else "") for u, i, t in rows]
    (folder / f"{s}.csv").write_text("\n".join(lines) + "\n")


def _npz(folder, times=False):
  import scipy.sparse
  del times  # the format has none
  for s in ("train", "test"):
    m = np.zeros((len(USERS), len(ITEMS)))
    for u, i, _ in HISTORY[s]:
      m[USERS[u], ITEMS[i]] = 1
    scipy.sparse.save_npz(str(folder / f"{s}.npz"), scipy.sparse.csr_matrix(m))


def _loo_config(folder, **changes):
  from maml_tf.config import Config
  return Config(dataset="custom", data_dir=str(folder), model="cml",
                protocol="loo", **changes).validate()


def _raw(ds, pairs):
  """(user, item) pairs as the raw ids of HISTORY."""
  users = {v: k for k, v in USERS.items()} if ds.user_ids is None else ds.user_ids
  items = {v: k for k, v in ITEMS.items()} if ds.item_ids is None else ds.item_ids
  return {(str(users[u]), str(items[i])) for u, i in pairs}


@pytest.mark.parametrize("write, has_valid", [
    (_recbole_single, False), (_recbole_benchmark, True), (_mmrec, True),
    (_release, True)], ids=["recbole-single", "recbole-benchmark", "mmrec",
                            "release"])
def test_loo_on_every_format_with_times(tmp_path, write, has_valid):
  from maml_tf.train import load_data
  write(tmp_path)
  ds, info = load_data(_loo_config(tmp_path), with_info=True)
  assert _raw(ds, ds.test) == LOO_TEST
  assert _raw(ds, ds.valid) == (LOO_VALID if has_valid else set())
  train = LOO_TRAIN if has_valid else LOO_TRAIN | LOO_VALID
  assert _raw(ds, ds.train) == train and len(ds.train) == len(train)
  times = {(u, i): t for rows in HISTORY.values() for u, i, t in rows}
  for pairs, when in ((ds.train, ds.train_time), (ds.test, ds.test_time)):
    for pair, t in zip(pairs, when):  # each pair keeps its own time
      assert t == times[_raw(ds, [pair]).pop()]
  assert info["sizes"] == {"train": len(train), "valid": 2 * has_valid,
                           "test": 2}
  assert ("kept as given" in info["split"]) == has_valid


@pytest.mark.parametrize("write, names, not_named", [
    (_recbole_single, ["`timestamp:float` column in <name>.inter"], "unixReviewTime"),
    (_recbole_benchmark, ["`timestamp:float` column", "<name>.train.inter"],
     "unixReviewTime"),
    (_mmrec, ["`timestamp` column (unix seconds) in the MMRec <name>.inter"],
     "unixReviewTime"),
    (_release, ["`unixReviewTime` column (unix seconds) in train.csv and test.csv",
                "has none for its train and test pairs"], "timestamp"),
    (_npz, ["needs interaction times and --data_format=npz has none",
            "--protocol=split"], "column"),
], ids=["recbole-single", "recbole-benchmark", "mmrec", "release", "npz"])
def test_loo_without_times_names_the_formats_own_column(tmp_path, write, names,
                                                        not_named):
  from maml_tf.train import load_data
  write(tmp_path, times=False)
  with pytest.raises(DataError) as e:
    load_data(_loo_config(tmp_path))
  message = str(e.value)
  assert message.startswith("`--protocol=loo` needs interaction times")
  assert "\n" not in message and message.endswith("Received: --protocol=loo")
  for name in names:
    assert name in message, message
  assert not_named not in message, message


def test_loo_says_which_split_lacks_times(tmp_path):
  from maml_tf.train import load_data
  _release(tmp_path, times=True, test_times=False)
  with pytest.raises(DataError, match=r"`unixReviewTime` column .* has none "
                     r"for its test pairs\. Received: --protocol=loo$"):
    load_data(_loo_config(tmp_path))


def test_a_split_without_rows_keeps_the_times_of_the_others(tmp_path):
  """A single RecBole .inter file: every row train, test empty; the train
  times are read and the empty test has (no) times, not None."""
  from maml_tf.data import formats
  _recbole_single(tmp_path)
  ds = formats.load_format("recbole", str(tmp_path))
  assert len(ds.test) == 0 and ds.test_time is not None
  assert len(ds.test_time) == 0 and len(ds.train_time) == len(ds.train) == 9
  _recbole_single(tmp_path, times=False)
  ds = formats.load_format("recbole", str(tmp_path))
  assert ds.train_time is None and ds.test_time is None
