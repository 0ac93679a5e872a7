"""--protocol=split (maml_tf/protocols/split.py), early stopping (--patience)
and --refit: the split's rule, proportions, seeding and leakage; what each
evaluation excludes; stopping on a scripted validation sequence with the best
weights restored; resume; refit end to end; the CLI and its usage errors.

All data is tiny and written here.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.train import checkpoint
from maml_tf.evaluate import full_ranking
from maml_tf.evaluate import metrics as metrics_lib
from maml_tf.evaluate import records
from maml_tf.evaluate import per_user as per_user_lib
from maml_tf import protocols
from maml_tf import train
from maml_tf.config import Config
from maml_tf.data.dataset import Dataset
from maml_tf.errors import UsageError
from maml_tf.protocols import split as split_lib
from tests.helpers import run_in_process, tiny_dataset, write_release_layout


def _pairs_dataset(counts, n_items=60, seed=0, test_share=0.3):
  """User u gets counts[u] distinct items, a share of them in test."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for u, n in enumerate(counts):
    items = rng.choice(n_items, size=n, replace=False)
    for j, i in enumerate(items):
      (test if j < int(test_share * n) else train).append((u, i))
  return Dataset(name="toy", n_users=len(counts), n_items=n_items,
                 train=np.array(train, np.int64).reshape(-1, 2),
                 test=np.array(test, np.int64).reshape(-1, 2))


def _keys(pairs, n_items):
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  return set((pairs[:, 0] * n_items + pairs[:, 1]).tolist())


# ------------------------------------------------------------------ the split
def test_split_counts_follow_the_documented_rule():
  n = np.arange(1, 41)
  n_valid, n_test = split_lib.split_counts(n)
  expect = {1: (0, 0), 2: (0, 1), 3: (1, 1), 4: (1, 1), 5: (1, 1), 14: (1, 1),
            15: (2, 2), 24: (2, 2), 25: (3, 3), 40: (4, 4)}
  for size, (v, t) in expect.items():
    assert (n_valid[size - 1], n_test[size - 1]) == (v, t), size
  assert np.all(n - n_valid - n_test >= 1)  # every user keeps a train item


def test_split_proportions_per_user_and_overall():
  counts = list(range(1, 41)) + [50] * 100
  ds = _pairs_dataset(counts)
  out = split_lib.random_split(ds, seed=0)
  for name in ("train", "valid", "test"):
    per_user = np.bincount(getattr(out, name)[:, 0], minlength=ds.n_users)
    n_valid, n_test = split_lib.split_counts(np.array(counts))
    want = {"valid": n_valid, "test": n_test,
            "train": np.array(counts) - n_valid - n_test}[name]
    np.testing.assert_array_equal(per_user, want)
  # The 100 users of 50 interactions: exactly 40 / 5 / 5 each, 8:1:1.
  big = np.arange(40, 140)
  for name, share in (("train", 0.8), ("valid", 0.1), ("test", 0.1)):
    pairs = getattr(out, name)
    assert np.isin(pairs[:, 0], big).sum() == pytest.approx(share * 5000)
  assert out.name == "toy-split"


def test_split_has_no_leakage_and_loses_no_pair():
  ds = _pairs_dataset([5, 6, 7, 9, 12, 20, 33, 2, 1])
  # A pair in both the release's train and test counts once.
  ds = Dataset(name=ds.name, n_users=ds.n_users, n_items=ds.n_items,
               train=ds.train, test=np.concatenate([ds.test, ds.train[:1]]))
  out = split_lib.random_split(ds, seed=4)
  n = ds.n_items
  train, valid, test = (_keys(p, n) for p in (out.train, out.valid, out.test))
  assert len(train) == len(out.train) and len(valid) == len(out.valid)
  assert len(test) == len(out.test)
  assert not train & valid and not train & test and not valid & test
  assert train | valid | test == _keys(ds.train, n) | _keys(ds.test, n)


def test_split_is_seeded():
  ds = _pairs_dataset([10] * 30)
  a, b = split_lib.random_split(ds, 7), split_lib.random_split(ds, 7)
  c = split_lib.random_split(ds, 8)
  for name in ("train", "valid", "test"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  assert _keys(a.test, 60) != _keys(c.test, 60)
  assert _keys(a.valid, 60) != _keys(c.valid, 60)


def test_a_given_validation_split_is_used_as_is():
  ds = _pairs_dataset([10] * 8)
  given = Dataset(name="given", n_users=ds.n_users, n_items=ds.n_items,
                  train=ds.train[2:], valid=ds.train[:2], test=ds.test)
  out, info = split_lib.prepare(Config(protocol="split"), given)
  assert out is given
  assert info["split"] == "given" and info["seed"] is None
  assert info["sizes"] == {"train": len(ds.train) - 2, "valid": 2,
                           "test": len(ds.test)}
  out, info = split_lib.prepare(Config(protocol="split", seed=3), ds)
  assert info["split"] == "random" and info["seed"] == 3
  assert sum(info["sizes"].values()) == len(ds.train) + len(ds.test)


def test_protocol_defaults_resolve_in_config():
  split = Config(protocol="split")
  assert (split.topk, split.select_metric, split.patience) == ((10, 20),
                                                               "recall@20", 20)
  release = Config()
  assert (release.topk, release.select_metric, release.patience) == ((10,),
                                                                     "ndcg@10", 0)
  assert Config(protocol="loo").patience == 0
  given = Config(protocol="split", topk=(5,), select_metric="ndcg@5", patience=0)
  assert (given.topk, given.select_metric, given.patience) == ((5,), "ndcg@5", 0)
  # A flags.txt from before these flags existed reads back as today's run.
  assert "--patience=0" in release.to_flagfile()
  assert "--topk=10,20" in split.to_flagfile()
  assert protocols.get("split") is split_lib


@pytest.mark.parametrize("overrides, message", [
    (dict(patience=-1), "`--patience` must be >= 0. Received: -1"),
    (dict(patience=1.5), "`--patience` must be an integer. Received: 1.5"),
    (dict(protocol="split", validation_fraction=0.1),
     "`--validation_fraction` must be 0 with --protocol=split"),
    (dict(protocol="mario"), "`--protocol` must be one of release, loo, split."
     " Received: 'mario'"),
    (dict(protocol="split", topk=(10,)), "`--select_metric` must be "
     "ndcg|recall|hr|precision@k with k in --topk. Received: 'recall@20'"),
])
def test_config_refuses_bad_values_in_one_line(overrides, message):
  with pytest.raises(UsageError) as e:
    Config(**overrides).validate()
  assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------- what is excluded
class _TableModel:
  """Scores from a fixed [users, items] table (what the Evaluator calls)."""

  score_width = 1  # floats per (user, item) pair

  def prepare_scoring(self):
    """Nothing derived to refresh: the scores are the table."""

  def __init__(self, table):
    self.table = tf.constant(table, tf.float32)
    self.n_users, self.n_items = table.shape

  def score_items(self, users, item_chunk=None):
    del item_chunk
    return tf.gather(self.table, users)


def test_validation_is_excluded_at_test_and_train_at_validation():
  # User 0: train item 1, validation item 2, test item 3; the model likes
  # them in that order, above every other item.
  ds = Dataset(name="hand", n_users=1, n_items=6,
               train=np.array([[0, 1]]), valid=np.array([[0, 2]]),
               test=np.array([[0, 3]]))
  table = np.array([[0.0, 9.0, 8.0, 7.0, 1.0, 2.0]])
  config = Config(protocol="split", topk=(1,), select_metric="recall@1")
  evaluators = split_lib.build_evaluators(config, ds, _TableModel(table), False)
  # Validation: train item 1 dropped, item 2 is the top-1: a hit.
  assert evaluators["valid"]()["recall@1"] == 1.0
  # Test: items 1 and 2 dropped, item 3 is the top-1: a hit.
  assert evaluators["test"]()["recall@1"] == 1.0
  # Had validation not been excluded, item 2 would have taken the top slot.
  leaky = full_ranking.Evaluator(_TableModel(table), ds.train, ds.test, (1,),
                             jit_compile=False)
  assert leaky()["recall@1"] == 0.0


# ------------------------------------------------------------ early stopping
EVA = 2
# Validation recall@20 per round (round r ends at step EVA * r): the best is
# round 2; rounds 3-5 do not beat it (an equal value is no improvement), so
# with --patience=3 training stops after round 5 and never sees round 6.
VALID = {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.25, 5: 0.3, 6: 0.9, 7: 0.9, 8: 0.9}


def _fingerprint(model):
  return [v.numpy().copy() for v in model.trainable_weights]


class _ScriptedValid:
  """Validation metrics by training step (read from the optimizer); logs
  the model's weights at every call. `fail_at`: raises there, once."""

  n_users = 1

  def __init__(self, model, state):
    self.model, self.state, self.log = model, state, state["log"]

  def __call__(self, progress=False):
    step = int(self.model.optimizer.iterations.numpy())
    if self.state["fail_at"] == step:
      self.state["fail_at"] = None
      raise KeyboardInterrupt("killed during the evaluation")
    self.log.append(("valid", step, _fingerprint(self.model)))
    value = VALID[step // EVA]
    return {f"{m}@{k}": value for m in ("recall", "ndcg") for k in (10, 20)}


class _WeightsTest:
  """A test "metric" that is a function of the weights only: equal numbers
  mean equal weights. state["refit_fail_at"]: raises at that step of a
  refit run (one built without validation), once."""

  n_users = 1

  def __init__(self, model, state):
    self.model, self.state, self.log = model, state, state["log"]

  def __call__(self, progress=False):
    step = int(self.model.optimizer.iterations.numpy())
    if (self.state.get("refit_fail_at") == step
        and "valid" not in self.state["last_build"]):  # a refit run
      self.state["refit_fail_at"] = None
      raise KeyboardInterrupt("killed during the refit")
    weights = _fingerprint(self.model)
    self.log.append(("test", step, weights))
    value = float(sum(np.abs(w).sum() for w in weights))
    return {f"{m}@{k}": value for m in ("recall", "ndcg") for k in (10, 20)}


@pytest.fixture
def scripted(monkeypatch):
  """Replaces the split protocol's evaluators: a scripted validation where
  there is one (the real full-ranking test is kept for refit runs' data)."""
  state = {"log": [], "fail_at": None}

  def build(config, ds, model, jit_compile):
    out = {"test": _WeightsTest(model, state)}
    if len(ds.valid):
      out["valid"] = _ScriptedValid(model, state)
    state["last_build"] = set(out)
    return out

  monkeypatch.setattr(split_lib, "build_evaluators", build)
  return state


def _config(workdir, **overrides):
  flags = dict(model="cml", protocol="split", embed_dim=4, batch_size=16,
               num_neg=2, train_steps=8 * EVA, eva_batches=EVA, patience=3,
               keep_checkpoints=10, jit_compile=False, tensorboard=False,
               export=False, workdir=str(workdir), seed=1)
  flags.update(overrides)
  return Config(**flags)


def _records(workdir):
  return records.read_records(os.path.join(workdir, "metrics.jsonl"))


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_early_stopping_stops_at_the_expected_round_and_restores_best(
    scripted, tmp_path):
  summary = train.train_and_evaluate(_config(tmp_path), tiny_dataset(), verbose=0)
  assert [r["step"] for r in _records(tmp_path)] == [EVA * r for r in range(1, 6)]
  stop = summary["early_stopping"]
  assert stop == {"patience": 3, "stopped_at_step": 5 * EVA,
                  "reason": "early_stopping", "best_step": 2 * EVA,
                  "rounds_since_best": 3}
  assert summary["best"]["step"] == 2 * EVA and summary["finished"] is True
  # The last test evaluation is of the restored model: the weights of the
  # best round's evaluation, not those of the last round.
  valid_calls = {step: w for split, step, w in scripted["log"] if split == "valid"}
  restored = scripted["log"][-1]
  assert restored[0] == "test"
  assert _same(restored[2], valid_calls[2 * EVA])
  assert not _same(restored[2], valid_calls[5 * EVA])
  result = summary["results"]["best"]
  assert result["step"] == 2 * EVA and result["trained_on"] == "train"
  assert result["test"] == summary["best"]["test"]
  assert result["test"] != summary["last"]["test"]
  assert summary["protocol"]["name"] == "split"
  assert summary["select_split"] == "valid"
  assert summary["select_metric"] == "recall@20"
  on_disk = json.loads((tmp_path / "metrics.json").read_text())
  assert on_disk["early_stopping"] == stop and on_disk["results"] == summary["results"]


def test_without_patience_training_runs_to_train_steps(scripted, tmp_path):
  summary = train.train_and_evaluate(_config(tmp_path, patience=0), tiny_dataset(),
                                     verbose=0)
  assert [r["step"] for r in _records(tmp_path)][-1] == 8 * EVA
  assert summary["early_stopping"]["reason"] == "train_steps"
  assert summary["best"]["step"] == 6 * EVA  # 0.9 first reached at round 6


def test_early_stopping_survives_a_kill_and_a_finished_stop_stays_finished(
    scripted, tmp_path):
  reference = tmp_path / "reference"
  train.train_and_evaluate(_config(reference), tiny_dataset(), verbose=0)
  # Killed during round 4's evaluation: the rerun resumes from round 3's
  # checkpoint and stops where the uninterrupted run stopped.
  killed = tmp_path / "killed"
  scripted["fail_at"] = 4 * EVA
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_config(killed), tiny_dataset(), verbose=0)
  assert [r["step"] for r in _records(killed)] == [EVA, 2 * EVA, 3 * EVA]
  summary = train.train_and_evaluate(_config(killed), tiny_dataset(), verbose=0)
  assert summary["started_from_step"] == 3 * EVA
  assert summary["early_stopping"]["stopped_at_step"] == 5 * EVA
  strip = lambda records: [(r["step"], r["valid"], r["test"]) for r in records]
  assert strip(_records(killed)) == strip(_records(reference))
  # Killed after the stopping round was written but before metrics.json
  # said finished: the rerun trains nothing more and finishes it.
  path = reference / "metrics.json"
  unfinished = dict(json.loads(path.read_text()), finished=False)
  path.write_text(json.dumps(unfinished))
  scripted["log"].clear()
  summary = train.train_and_evaluate(_config(reference), tiny_dataset(), verbose=0)
  assert summary["finished"] is True
  assert summary["early_stopping"]["reason"] == "early_stopping"
  assert [split for split, _, _ in scripted["log"]] == ["test"]  # only the result
  assert [r["step"] for r in _records(reference)][-1] == 5 * EVA
  # ... and is then refused as any finished run.
  with pytest.raises(UsageError, match="holds a finished run"):
    train.train_and_evaluate(_config(reference), tiny_dataset(), verbose=0)


# ------------------------------------------------------------------- refit
def test_refit_trains_on_train_and_valid_for_the_best_step(scripted, tmp_path):
  config = _config(tmp_path, patience=3, refit=True)
  summary = train.train_and_evaluate(config, tiny_dataset(), verbose=0)
  sizes = summary["protocol"]["sizes"]
  refit = summary["results"]["refit"]
  assert summary["refit"] == refit
  assert refit["step"] == 2 * EVA == summary["results"]["best"]["step"]
  assert refit["trained_on"] == "train+valid"
  assert refit["train_pairs"] == sizes["train"] + sizes["valid"]
  refit_dir = tmp_path / "refit"
  assert refit["workdir"] == str(refit_dir)
  inner = json.loads((refit_dir / "metrics.json").read_text())
  assert inner["finished"] is True and inner["last"]["step"] == 2 * EVA
  assert inner["protocol"]["sizes"] == {"train": sizes["train"] + sizes["valid"],
                                        "valid": 0, "test": sizes["test"]}
  assert [r["step"] for r in _records(refit_dir)] == [EVA, 2 * EVA]
  assert "valid" not in _records(refit_dir)[-1]
  assert refit["test"] == inner["last"]["test"]
  assert "--train_steps=4" in (refit_dir / "flags.txt").read_text()
  # A fresh model from the same seed on other data: not the selected one.
  assert refit["test"] != summary["results"]["best"]["test"]
  table = records.metrics_table(summary, config.topk)
  assert f"refit (step {2 * EVA})" in table and f"best (step {2 * EVA})" in table
  # --overwrite clears the refit folder with the run.
  train.train_and_evaluate(_config(tmp_path, refit=False, overwrite=True),
                           tiny_dataset(), verbose=0)
  assert not refit_dir.exists()


def test_a_run_killed_during_refit_resumes_the_refit(scripted, tmp_path):
  reference = train.train_and_evaluate(
      _config(tmp_path / "reference", refit=True), tiny_dataset(), verbose=0)
  # Killed in the refit's second round (the main run had stopped, the refit
  # had checkpointed step EVA): the rerun trains no main round and resumes
  # the refit from its checkpoint.
  workdir = tmp_path / "killed"
  scripted["refit_fail_at"] = 2 * EVA
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_config(workdir, refit=True), tiny_dataset(), verbose=0)
  refit_dir = workdir / "refit"
  assert [r["step"] for r in _records(refit_dir)] == [EVA]
  assert json.loads((workdir / "metrics.json").read_text())["finished"] is False
  scripted["log"].clear()
  summary = train.train_and_evaluate(_config(workdir, refit=True), tiny_dataset(),
                                     verbose=0)
  assert not [s for s, _, _ in scripted["log"] if s == "valid"]  # no main round
  inner = json.loads((refit_dir / "metrics.json").read_text())
  assert inner["started_from_step"] == EVA and inner["finished"] is True
  for label in ("best", "refit"):
    assert summary["results"][label]["test"] == reference["results"][label]["test"]


def test_refit_added_to_a_finished_run_equals_a_run_made_with_it(
    scripted, tmp_path):
  """A finished run rerun with --refit (and no refit yet) trains no main
  round, keeps its rounds and best, and gains the refit a --refit run from
  the start would have; then, like any finished run, it is refused."""
  reference = train.train_and_evaluate(
      _config(tmp_path / "reference", refit=True), tiny_dataset(), verbose=0)
  workdir = tmp_path / "added"
  first = train.train_and_evaluate(_config(workdir), tiny_dataset(), verbose=0)
  assert "refit" not in first["results"]
  rounds = (workdir / "metrics.jsonl").read_text()
  scripted["log"].clear()
  summary = train.train_and_evaluate(_config(workdir, refit=True), tiny_dataset(),
                                     verbose=0)
  assert not [s for s, _, _ in scripted["log"] if s == "valid"]  # no main round
  assert (workdir / "metrics.jsonl").read_text() == rounds
  assert summary["results"]["best"] == first["results"]["best"]
  for label in ("best", "refit"):
    assert summary["results"][label]["test"] == reference["results"][label]["test"]
  assert "\n--refit\n" in (workdir / "flags.txt").read_text()
  with pytest.raises(UsageError, match="holds a finished run"):
    train.train_and_evaluate(_config(workdir, refit=True), tiny_dataset(), verbose=0)
  # With other settings it is refused, as an unfinished run is, and kept.
  other = tmp_path / "other"
  train.train_and_evaluate(_config(other), tiny_dataset(), verbose=0)
  kept = (other / "metrics.json").read_text()
  with pytest.raises(UsageError, match=r"holds a finished run with other "
                     r"settings \(--margin: "):
    train.train_and_evaluate(_config(other, refit=True, margin=0.3), tiny_dataset(),
                             verbose=0)
  assert (other / "metrics.json").read_text() == kept
  assert not (other / "refit").exists()
  # Without its checkpoints there is nothing to resume: refused, kept.
  shutil.rmtree(other / "checkpoints")
  with pytest.raises(UsageError, match=r"`--refit` on a finished run needs its "
                     r"checkpoints"):
    train.train_and_evaluate(_config(other, refit=True), tiny_dataset(), verbose=0)
  assert (other / "metrics.json").read_text() == kept


def test_refit_starts_from_the_init_from_checkpoint_as_the_main_run(
    scripted, tmp_path):
  """--init_from carries over to the refit: both trainings start from the
  same weights (it once started the refit from a fresh seeded init)."""
  train.train_and_evaluate(_config(tmp_path / "start", patience=0,
                                   train_steps=EVA), tiny_dataset(), verbose=0)
  start = checkpoint.last_prefix(str(tmp_path / "start"))
  # A learning rate too small to move anything: the refit's weights after
  # its rounds are the ones it started from, to float precision.
  train.train_and_evaluate(
      _config(tmp_path / "run", init_from=start, refit=True,
              learning_rate=1e-12), tiny_dataset(), verbose=0)
  refit_dir = tmp_path / "run" / "refit"
  assert f"--init_from={start}" in (refit_dir / "flags.txt").read_text()
  reader = tf.train.load_checkpoint(start)
  after = tf.train.load_checkpoint(checkpoint.last_prefix(str(refit_dir)))
  names = [n for n in reader.get_variable_to_shape_map()
           if n.startswith("model/") and "VARIABLE_VALUE" in n]
  assert len(names) >= 2  # the user and item tables
  for name in names:
    np.testing.assert_allclose(after.get_tensor(name), reader.get_tensor(name),
                               rtol=0, atol=1e-6, err_msg=name)


def test_refit_uses_the_real_evaluators_end_to_end(tmp_path):
  summary = train.train_and_evaluate(
      _config(tmp_path, patience=0, train_steps=2 * EVA, refit=True), tiny_dataset(),
      verbose=0)
  for label in ("best", "refit"):
    block = summary["results"][label]
    assert set(block["test"]) == {f"{m}@{k}" for m in metrics_lib.METRICS
                                  for k in (10, 20)}
  assert summary["results"]["best"]["test"] == summary["best"]["test"]


def test_patience_and_refit_need_a_validation_split(tmp_path):
  with pytest.raises(UsageError, match=r"`--patience` must be 0 when there is "
                     r"no validation split .* Received: 2"):
    train.train_and_evaluate(_config(tmp_path / "a", protocol="release",
                                     patience=2), tiny_dataset(), verbose=0)
  with pytest.raises(UsageError) as e:
    train.train_and_evaluate(_config(tmp_path / "b", protocol="release",
                                     patience=0, refit=True), tiny_dataset(), verbose=0)
  assert str(e.value) == (
      "`--refit` needs a run that selects on validation: use --protocol=split, "
      "--validation_fraction > 0, or data that gives one (a valid.csv, a "
      "RecBole <name>.valid.inter, MMRec rows with x_label 1). Received: --refit")


# ------------------------------------------------------------ test rounds
def test_test_rounds_last_evaluates_test_at_the_end_with_the_same_results(
    scripted, tmp_path):
  """--test_rounds=last: the test split only at the last round (the one that
  stops early here) and on the restored best round; the training, the
  rounds' validation, the selection and every reported result are those of
  --test_rounds=all; a refit tests its last round only."""
  every = train.train_and_evaluate(_config(tmp_path / "all", refit=True),
                                   tiny_dataset(), verbose=0)
  log_all = list(scripted["log"])
  scripted["log"].clear()
  last = train.train_and_evaluate(
      _config(tmp_path / "last", refit=True, test_rounds="last"),
      tiny_dataset(), verbose=0)
  tested = [(step, w) for split, step, w in scripted["log"] if split == "test"]
  valid = lambda log: [(st, w) for sp, st, w in log if sp == "valid"]
  # Main run: stops early at round 5 (tested), then the best round (2)
  # restored (its weights; the logged step is the optimizer's, not restored)
  # and tested; the refit (2 rounds): its last round only.
  assert len(tested) == 3
  assert tested[0][0] == 5 * EVA and tested[2][0] == 2 * EVA
  assert _same(tested[1][1], dict(valid(scripted["log"]))[2 * EVA])
  assert len([s for s in log_all if s[0] == "test"]) == 5 + 1 + 2
  assert len(valid(scripted["log"])) == len(valid(log_all)) == 5
  assert all(a[0] == b[0] and _same(a[1], b[1])
             for a, b in zip(valid(scripted["log"]), valid(log_all)))
  rounds = _records(tmp_path / "last")
  assert [("test" in r) for r in rounds] == [False] * 4 + [True]
  assert [r["valid"] for r in rounds] == [
      r["valid"] for r in _records(tmp_path / "all")]
  assert rounds[-1]["test"] == _records(tmp_path / "all")[-1]["test"]
  assert last["results"]["best"] == every["results"]["best"]
  strip = lambda refit: {k: v for k, v in refit.items() if k != "workdir"}
  assert strip(last["results"]["refit"]) == strip(every["results"]["refit"])
  assert last["early_stopping"] == every["early_stopping"]
  refit_rounds = _records(tmp_path / "last" / "refit")
  assert [("test" in r) for r in refit_rounds] == [False, True]
  table = records.metrics_table(last, (10, 20))
  assert f"best (step {2 * EVA})" in table


def test_test_rounds_last_with_the_real_evaluators_keeps_every_result(
    tmp_path):
  runs = {rounds: train.train_and_evaluate(
      _config(tmp_path / rounds, patience=0, train_steps=3 * EVA, refit=True,
              test_rounds=rounds), tiny_dataset(), verbose=0)
          for rounds in ("all", "last")}
  assert runs["last"]["results"]["best"] == runs["all"]["results"]["best"]
  assert (runs["last"]["results"]["refit"]["test"]
          == runs["all"]["results"]["refit"]["test"])
  best = runs["all"]["results"]["best"]["step"]
  for rounds, run in runs.items():
    kept = per_user_lib.read_blocks(str(tmp_path / rounds / per_user_lib.FILE))
    assert {label: block["step"] for label, block in kept.items()} == {
        "best": best, "last": 3 * EVA, "refit": best}, rounds
  tested = [("test" in r) for r in _records(tmp_path / "last")]
  assert tested == [False, False, True]


def test_test_rounds_last_without_early_stopping_tests_the_last_step(
    scripted, tmp_path):
  train.train_and_evaluate(
      _config(tmp_path, patience=0, test_rounds="last"), tiny_dataset(),
      verbose=0)
  tested = [(step, w) for split, step, w in scripted["log"] if split == "test"]
  valid = {step: w for split, step, w in scripted["log"] if split == "valid"}
  assert len(tested) == 2 and tested[0][0] == 8 * EVA  # the last round,
  assert _same(tested[1][1], valid[6 * EVA])  # then the restored best


def test_test_rounds_last_needs_a_validation_split(tmp_path):
  with pytest.raises(UsageError) as e:
    train.train_and_evaluate(_config(tmp_path, protocol="release", patience=0,
                                     test_rounds="last"), tiny_dataset(),
                             verbose=0)
  assert str(e.value).startswith(
      "`--test_rounds` must be all when there is no validation split: the "
      "best round is then chosen on test, every round (or use --protocol=split")
  assert str(e.value).endswith("Received: last")
  assert not (tmp_path / "metrics.jsonl").exists()
  with pytest.raises(UsageError, match=r"`--test_rounds` must be one of"):
    _config(tmp_path, test_rounds="some").validate()


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  data = tmp_path_factory.mktemp("layout") / "data"
  features = write_release_layout(str(data), n_users=24, n_items=30)
  return data, features


def test_split_protocol_from_the_cli(layout, tmp_path):
  data, features = layout
  workdir = tmp_path / "run"
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}",
      f"--extra_features=meta={features}", "--protocol=split",
      "--embed_dim=8", "--hidden_layer_dim=16", "--batch_size=16",
      "--num_neg=2", "--train_steps=6", "--eva_batches=3", "--refit",
      "--noexport", "--notensorboard", f"--workdir={workdir}",
      f"--cache_dir={tmp_path / 'cache'}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = _records(workdir)
  assert [r["step"] for r in records] == [3, 6]
  want = {f"{m}@{k}" for m in metrics_lib.METRICS for k in (10, 20)}
  for r in records:
    assert set(r["valid"]) == want and set(r["test"]) == want
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["protocol"]["name"] == "split"
  assert summary["protocol"]["split"] == "random"
  # 24 users x 6 distinct items: 4 / 1 / 1 each.
  assert summary["protocol"]["sizes"] == {"train": 96, "valid": 24, "test": 24}
  assert summary["select_metric"] == "recall@20"
  assert summary["early_stopping"]["patience"] == 20
  assert summary["results"]["refit"]["train_pairs"] == 120
  flags_txt = (workdir / "flags.txt").read_text()
  for line in ("--topk=10,20", "--select_metric=recall@20", "--patience=20",
               "--protocol=split", "--refit"):
    assert line in flags_txt.splitlines()
  assert "recall@20" in proc.stdout and "refit (step" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--patience=-1"], "`--patience` must be >= 0. Received: -1"),
    (["--patience=3"], "`--patience` must be 0 when there is no validation "
     "split to stop on"),
    (["--refit"], "`--refit` needs a run that selects on validation"),
    (["--protocol=split", "--validation_fraction=0.2"],
     "`--validation_fraction` must be 0 with --protocol=split"),
])
def test_new_flags_usage_errors_exit_2_with_one_line(layout, tmp_path, args,
                                                     message):
  data, _ = layout
  proc = run_in_process(["--dataset=custom", f"--data_dir={data}", "--model=cml",
              "--batch_size=16", "--train_steps=6", "--eva_batches=3",
              "--noexport", "--notensorboard", f"--workdir={tmp_path / 'w'}"]
             + args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()[-1]) > 0
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_refit_exports_the_refit_model(scripted, tmp_path):
  from maml_tf.export import saved_model as export_lib
  config = _config(tmp_path / "run", refit=True, export=True,
                   export_dir=str(tmp_path / "exports"), export_name="toy")
  summary = train.train_and_evaluate(config, tiny_dataset(), verbose=0)
  info = export_lib.load_info(summary["export"])
  assert info["which"] == "refit" and info["step"] == 2 * EVA
  assert "+valid" in info["dataset"]  # seen items: train + validation
  inner = json.loads((tmp_path / "run" / "refit" / "metrics.json").read_text())
  assert inner["selection"].startswith("none: a --refit run")


def test_a_flags_txt_from_before_these_flags_resumes_unchanged(tmp_path):
  """A run recorded without --patience / --refit lines has the same flags
  as today's defaults: resuming it is not refused as "other settings"."""
  config = Config(workdir=str(tmp_path))
  old = [line for line in config.to_flagfile().splitlines()
         if not line.startswith(("--patience", "--refit", "--norefit"))]
  assert len(old) == len(config.to_flagfile().splitlines()) - 2
  (tmp_path / "flags.txt").write_text("\n".join(old) + "\n")
  assert train.changed_flags(str(tmp_path), config) == []
  # A real difference is still caught.
  other = Config(workdir=str(tmp_path), topk=(10, 20))
  assert [name for name, _, _ in train.changed_flags(str(tmp_path), other)] == ["topk"]
