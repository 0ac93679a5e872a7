"""Helpers shared by the test files: a tiny dataset in the release's layout,
the train command run as a real process or in this process, tiny in-memory
datasets, the small MAML model of tests/test_model.py, and `check_export`,
which loads an export in an isolated process that cannot import maml_tf.

TensorFlow and maml_tf are imported inside the functions that need them, so
that importing this file stays cheap and leaves the import order of the test
files alone (the TFRS import wants `tf.keras` untouched before it)."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")

# A train graph of 4 users and 5 items drawn by hand, for the graph models'
# oracles: u0: i0 i1 (i1 twice); u1: i1 i2; u2: i2 i3; u3: i4.
HAND_PAIRS = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 2], [2, 3], [3, 4], [0, 1]])
HAND_NEIGHBOURS = {  # node -> neighbours (users 0-3, items 4-8)
    0: [4, 5], 1: [5, 6], 2: [6, 7], 3: [8],
    4: [0], 5: [0, 1], 6: [1, 2], 7: [2], 8: [3]}


def write_release_layout(folder, n_users=24, n_items=30, seed=0):
  """A tiny dataset in the release's layout, plus a feature matrix."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  rows = {"train": [], "test": []}
  for u in range(n_users):
    items = rng.choice(n_items, size=6, replace=False)
    for j, i in enumerate(items):
      rows["train" if j < 4 else "test"].append((i, u))
  for split, pairs in rows.items():
    with open(os.path.join(folder, f"{split}.csv"), "w") as f:
      f.write("itemID,userID,reviewerID,asin\n")
      for i, u in pairs:
        f.write(f"{i},{u},R{u},A{i:04d}\n")
  features = os.path.join(folder, "meta.npy")
  np.save(features, rng.normal(size=(n_items, 5)).astype(np.float32))
  return features


def run(args, cwd=ROOT, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, SCRIPT] + args, cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def run_in_process(args):
  """What scripts/train.py's main runs (`cli.run(cli.train_main)` after
  `cli.parse_flags`), in this process: the same parsing, one-line errors and
  exit statuses, without an interpreter and TensorFlow start-up per call.
  Returns a CompletedProcess. An exception that would have been a traceback
  propagates and fails the test."""
  from absl import flags as absl_flags
  from maml_tf import cli
  if "model" not in absl_flags.FLAGS:
    cli.define_flags()
  absl_flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      cli.parse_flags([SCRIPT] + list(args))
      code = cli.run(cli.train_main)
    except SystemExit as e:  # flag errors: usage_error exits 2
      code = e.code
    finally:
      absl_flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess([SCRIPT] + list(args), code,
                                     out.getvalue(), err.getvalue())


def tiny_dataset(n_users=20, n_items=40, seed=0):
  """Every user with 10 items, in train (7) and test (3)."""
  from maml_tf.data.dataset import Dataset
  rng = np.random.default_rng(seed)
  train, test = [], []
  for u in range(n_users):
    items = rng.choice(n_items, size=10, replace=False)
    train += [(u, i) for i in items[:7]]
    test += [(u, i) for i in items[7:]]
  return Dataset(name="tiny", n_users=n_users, n_items=n_items,
                 train=np.array(train, np.int64), test=np.array(test, np.int64))


# ------------------------------------------------------ a small MAML model

MAML_USERS, MAML_ITEMS, MAML_FEAT, MAML_K, MAML_H = 9, 7, 6, 4, 32


def maml_model(mode="faithful", attention="scaled", features=True, seed=0, **kw):
  """A compiled MAML of MAML_USERS x MAML_ITEMS with distinct fused items."""
  import keras
  from maml_tf.models.maml import MAML
  keras.utils.set_random_seed(seed)
  m = MAML(MAML_USERS, MAML_ITEMS, feature_dim=MAML_FEAT if features else 0,
           embed_dim=MAML_K, hidden_dim=MAML_H, attention=attention, mode=mode,
           seed=seed, **kw)
  if features:
    m.set_item_features(np.random.default_rng(seed).normal(size=(MAML_ITEMS, MAML_FEAT)))
    # Distinct items, so no two distances tie exactly (a tie in the min over
    # negatives makes the subgradient arbitrary).
    fused = keras.ops.convert_to_numpy(m.fused_features)
    assert len(np.unique(fused.round(6), axis=0)) == MAML_ITEMS
  m.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8))
  return m


def maml_batch(seed=1, b=5, w=3):
  """(users [b], items [b, 1 + w]) for `maml_model`: a positive, w negatives."""
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.integers(0, MAML_USERS, b), tf.int32),
          tf.constant(rng.integers(0, MAML_ITEMS, (b, 1 + w)), tf.int32))


# ------------------------------------------------------- exports, as served

EXPORT_USERS, EXPORT_ITEMS = 20, 30
EXPORT_TOPK, EXPORT_CANDIDATES = 5, 8
EXPORT_HEAVY_USER = 3  # knows all but 3 items: fewer than EXPORT_TOPK to recommend

# The script a serving machine runs, as one long-lived process per test
# worker (a serving machine loads many models, too; TensorFlow starts once):
# each line on stdin is a JSON [spec, out] pair of paths, where spec lists
# SavedModels and signature calls; the signatures and results go to out as
# JSON, then one line "LOADED <status>" on stdout answers the request.
SERVING_LOADER = r"""
import json, os, sys, traceback
# A serving machine does not have our package. CI installs it in editable mode, which
# puts an import hook in site-packages that -I does not remove, so block it here and
# record every attempt to import it (loading the SavedModels must make none).
blocked = []
class NoMamlTf:
  def find_spec(self, name, path=None, target=None):
    if name == "maml_tf" or name.startswith("maml_tf."):
      blocked.append(name)
      raise ModuleNotFoundError("no module named " + name + " on a serving machine")
    return None
sys.meta_path.insert(0, NoMamlTf())
try:
  import maml_tf
  importable = True
except ImportError:
  importable = False
blocked.clear()
import numpy as np
import tensorflow as tf
at_start = list(blocked)

def plain(tensor):  # nested lists; strings (raw ids) decoded from UTF-8
  value = tensor.numpy()
  if tensor.dtype == tf.string:
    value = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value)
  return value.tolist()

def serve(spec_path, out_path):
  spec = json.load(open(spec_path))
  out = {"sys_path": sys.path, "env_legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
         "maml_tf_importable": importable}
  blocked.clear()
  loaded = {tag: tf.saved_model.load(path) for tag, path in spec["models"].items()}
  out["maml_tf_import_attempts"] = at_start + list(blocked)
  out["maml_tf_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "maml_tf")
  out["signatures"] = {}
  for tag, obj in loaded.items():
    sigs = {}
    for name, fn in obj.signatures.items():
      kwargs = fn.structured_input_signature[1]
      sigs[name] = {
          "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in kwargs.items()},
          "outputs": {k: [v.dtype.name, v.shape.as_list()]
                      for k, v in fn.structured_outputs.items()}}
    out["signatures"][tag] = sigs
  out["results"] = []
  for case in spec["cases"]:
    fn = loaded[case["model"]].signatures[case["signature"]]
    args = {k: tf.constant(v, tf.string if k.endswith("_keys") else tf.int64)
            for k, v in case["inputs"].items()}
    try:
      res = fn(**args)
      out["results"].append({"outputs": {k: plain(v) for k, v in res.items()},
                             "shapes": {k: list(v.shape) for k, v in res.items()}})
    except tf.errors.InvalidArgumentError as e:
      out["results"].append({"error": "InvalidArgumentError", "message": e.message})
    except Exception as e:
      out["results"].append({"error": type(e).__name__, "message": str(e)})
  json.dump(out, open(out_path, "w"))

for line in sys.stdin:
  spec_path, out_path = json.loads(line)
  try:
    serve(spec_path, out_path)
    status = "ok"
  except Exception:
    status = json.dumps(traceback.format_exc())
  print("LOADED " + status, flush=True)
"""

_LOADER = {}  # this worker's loading process: {"proc", "log", "home"}


def _stop_loader():
  proc = _LOADER.pop("proc", None)
  if proc is not None and proc.poll() is None:
    proc.stdin.close()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
  log = _LOADER.pop("log", None)
  if log is not None:
    log.close()
  home = _LOADER.pop("home", None)
  if home is not None:
    shutil.rmtree(home, ignore_errors=True)


def isolated_load(spec, work, timeout=300):
  """Runs `spec` (SavedModels and signature calls) in this worker's isolated
  loading process (python -I, a fresh shell's environment, maml_tf blocked;
  started on first use) and returns its JSON output. The spec and output
  files are written under `work`."""
  import atexit
  import select
  import tempfile
  proc = _LOADER.get("proc")
  if proc is None or proc.poll() is not None:
    _stop_loader()  # a loader that died leaves its folder and log behind
    home = tempfile.mkdtemp(prefix="isolated-loader-")
    with open(os.path.join(home, "loader.py"), "w") as f:
      f.write(SERVING_LOADER)
    log = open(os.path.join(home, "stderr.txt"), "w+")
    proc = subprocess.Popen([sys.executable, "-I", "loader.py"], cwd=home,
                            env=clean_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    if not _LOADER.get("atexit"):
      atexit.register(_stop_loader)
    _LOADER.update(proc=proc, log=log, home=home, atexit=True)
  spec_path, out_path = os.path.join(work, "spec.json"), os.path.join(work, "out.json")
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  proc.stdin.write(json.dumps([spec_path, out_path]) + "\n")
  proc.stdin.flush()
  deadline = time.monotonic() + timeout
  while True:
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    line = proc.stdout.readline() if ready else ""
    if not line or line.startswith("LOADED "):
      break
  if not line.startswith("LOADED ok"):
    log = _LOADER["log"]
    log.seek(0)
    detail = json.loads(line[len("LOADED "):]) if line else "no answer: " + log.read()[-3000:]
    _stop_loader()
    raise AssertionError(f"the isolated loading process failed:\n{detail}")
  with open(out_path) as f:
    return json.load(f)


def clean_env():
  """What a fresh shell gives: no PYTHONPATH, no TF_USE_LEGACY_KERAS."""
  return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
          "HOME": os.environ.get("HOME", "/"), "TF_CPP_MIN_LOG_LEVEL": "3",
          "LANG": "C.UTF-8"}


def export_dataset(features, valid_fraction, seed):
  """20 users x 30 items; user 3 knows 27 items; optional feature matrix."""
  from maml_tf import data as data_lib
  rng = np.random.default_rng(seed)
  train, test = [], []
  for u in range(EXPORT_USERS):
    items = rng.permutation(EXPORT_ITEMS)
    n_train = EXPORT_ITEMS - 3 if u == EXPORT_HEAVY_USER else 6
    train += [(u, i) for i in items[:n_train]]
    test += [(u, i) for i in items[n_train:n_train + 2]]
  feats = ({"meta": rng.normal(size=(EXPORT_ITEMS, 6)).astype(np.float32)}
           if features else None)
  ds = data_lib.from_arrays(np.array(train), np.array(test), features=feats,
                            n_users=EXPORT_USERS, n_items=EXPORT_ITEMS)
  return data_lib.split_validation(ds, valid_fraction, seed)


def known_lists(ds):
  """Each user's known items (what the export excludes), sorted."""
  from maml_tf.export import saved_model as export_lib
  pairs = export_lib.known_pairs(ds)
  return [np.sort(pairs[pairs[:, 0] == u, 1]) for u in range(ds.n_users)]


def check_export(model, ds, tmp_path, tag, exact_retrieve=True):
  """Exports `model`, loads it in an isolated process without maml_tf and
  compares every signature with the in-memory model. Returns the loader's
  output for the test's own checks."""
  import tensorflow as tf
  from maml_tf.evaluate import metrics as metrics_lib
  from maml_tf.export import saved_model as export_lib
  path = export_lib.export_saved_model(model, ds, str(tmp_path / "exports"), tag,
                                       topk=EXPORT_TOPK,
                                       retrieve_candidates=EXPORT_CANDIDATES)
  rng = np.random.default_rng(7)
  users = list(range(ds.n_users))
  pairs_u = [int(u) for u in rng.integers(0, ds.n_users, 40)]
  pairs_i = [int(i) for i in rng.integers(0, ds.n_items, 40)]
  cases = [{"model": tag, "signature": "serving_default", "inputs": {"user_ids": users}},
           {"model": tag, "signature": "score",
            "inputs": {"user_ids": pairs_u, "item_ids": pairs_i}},
           {"model": tag, "signature": "retrieve", "inputs": {"user_ids": users}}]
  work = tmp_path / "loader"
  work.mkdir()
  out = isolated_load({"models": {tag: path}, "cases": cases}, str(work))
  assert out["maml_tf_importable"] is False and out["maml_tf_modules"] == []
  assert out["maml_tf_import_attempts"] == []
  recommend, score, retrieve = out["results"]

  model.prepare_scoring()
  all_scores = model.score_items(tf.constant(users, tf.int32)).numpy()
  known = known_lists(ds)
  expected = metrics_lib.top_k_excluding(all_scores, known, EXPORT_TOPK)
  np.testing.assert_array_equal(np.array(recommend["outputs"]["item_ids"]), expected)
  got = np.array(recommend["outputs"]["scores"])
  want_top = np.where(expected >= 0, np.take_along_axis(all_scores, expected, 1),
                      -np.inf)  # a user with fewer than k unknown items: -inf
  np.testing.assert_allclose(got, want_top, rtol=1e-5, atol=1e-6)

  want, explanation = model.score_pairs(tf.constant(pairs_u, tf.int32),
                                        tf.constant(pairs_i, tf.int32), explain=True)
  np.testing.assert_allclose(score["outputs"]["scores"], want.numpy(),
                             rtol=1e-5, atol=1e-6)
  name = model.explanation_name
  if explanation is None:
    assert set(score["outputs"]) == {"scores"}
  else:
    np.testing.assert_allclose(score["outputs"][name], explanation.numpy(),
                               rtol=1e-5, atol=1e-6)

  ids = np.array(retrieve["outputs"]["item_ids"])
  for u in users:  # retrieve's scores are the model's own scores of its items
    found = ids[u] >= 0
    np.testing.assert_allclose(np.array(retrieve["outputs"]["scores"][u])[found],
                               all_scores[u, ids[u][found]], rtol=1e-5, atol=1e-6)
    assert not set(ids[u].tolist()) & set(known[u].tolist())
  if exact_retrieve:  # a dot-product first stage on the scores themselves
    np.testing.assert_array_equal(ids, expected)
  out["path"] = path
  return out


def config_from_flagfile(path):
  """The Config that the flagfile at `path` (relative to ROOT) parses into,
  as `maml-tf train --flagfile=path` would build it; the flags are left
  unparsed and the working folder unchanged afterwards."""
  from absl import flags as absl_flags
  from maml_tf import cli
  if "model" not in absl_flags.FLAGS:
    cli.define_flags()
  absl_flags.FLAGS.unparse_flags()
  cwd = os.getcwd()
  try:
    os.chdir(ROOT)
    absl_flags.FLAGS(["x", f"--flagfile={path}"])
    return cli.config_from_flags()
  finally:
    os.chdir(cwd)
    absl_flags.FLAGS.unparse_flags()


def office_config(model):
  """flags/office_<model>.flags parsed; asserts what every Office flagfile
  shares (the split protocol, selection on recall@20, patience 20, top 10
  and 20)."""
  c = config_from_flagfile(f"flags/office_{model}.flags")
  assert (c.model, c.protocol, c.select_metric, c.patience, c.topk) == (
      model, "split", "recall@20", 20, (10, 20))
  return c


def check_cli_export(tmp_path, model, flags, features=True):
  """Trains `--model=model` with `flags` from the CLI (in process) for 6
  steps in 2 rounds on a release layout under tmp_path/data (with its
  "meta" features when `features`), exporting under tmp_path/exports.
  Asserts the run succeeded and finished; returns (the metrics.json
  summary, the workdir, the export's folder)."""
  data = tmp_path / "data"
  meta = write_release_layout(str(data))
  workdir, exports = tmp_path / "run", tmp_path / "exports"
  extra = [f"--extra_features=meta={meta}"] if features else []
  proc = run_in_process(
      ["--dataset=custom", f"--data_dir={data}"] + extra +
      [f"--model={model}"] + list(flags) +
      ["--train_steps=6", "--eva_batches=3", "--notensorboard",
       f"--export_dir={exports}", f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["finished"] is True
  return summary, workdir, exports / f"{model}_custom" / "1"


def export_info(path):
  """The export_info.json of the export at `path`."""
  return json.loads((path / "assets.extra" / "export_info.json").read_text())


def check_served_top_k(path):
  """The served top 10 of users 0..2 is sorted and its scores are the
  `score` signature's for the same pairs."""
  import tensorflow as tf
  loaded = tf.saved_model.load(str(path))
  users = tf.constant([0, 1, 2], tf.int64)
  top = loaded.signatures["serving_default"](user_ids=users)
  ids, scores = top["item_ids"].numpy(), top["scores"].numpy()
  assert ids.shape == (3, 10) and (np.diff(scores, axis=1) <= 1e-6).all()
  pair = loaded.signatures["score"](user_ids=tf.repeat(users, 10),
                                    item_ids=tf.constant(ids.reshape(-1)))
  np.testing.assert_allclose(pair["scores"].numpy().reshape(3, 10), scores,
                             rtol=1e-5, atol=1e-5)


def served_and_retrieved(path):
  """(serving_default, retrieve) outputs of the export at `path` for
  users 0 and 1."""
  import tensorflow as tf
  loaded = tf.saved_model.load(str(path))
  users = tf.constant([0, 1], tf.int64)
  return (loaded.signatures["serving_default"](user_ids=users),
          loaded.signatures["retrieve"](user_ids=users))


def check_round_trip_needs_the_edges(m, pairs):
  """A graph model rebuilt from m's config (which holds no graph) equals
  it: the same config, a one-line refusal to propagate until
  set_train_edges(pairs), then with m's weights m's final tables. Returns
  m serialized and deserialized by Keras."""
  import keras
  import pytest
  config = m.get_config()
  clone = type(m).from_config(config)
  assert clone.get_config() == config
  with pytest.raises(ValueError, match="`train_pairs` must be given"):
    clone.final_tables()
  clone.set_train_edges(pairs)
  clone.set_weights(m.get_weights())  # fixed item features are weights too
  for a, b in zip(clone.final_tables(), m.final_tables()):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
  return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))


def check_served_tables(m, pairs, n_users, n_items):
  """After prepare_scoring, m's full-ranking scores are its served ones,
  serve_pairs gives them too (without an explanation), and the compiled
  evaluation of users 0, 1 and 3 ranks by them (train `pairs` excluded).
  Returns (the serving tables, the served scores [n_users, n_items])."""
  import tensorflow as tf
  from maml_tf import evaluate as eval_lib
  m.prepare_scoring()
  users = tf.range(n_users)
  tables = m.serving_tables()
  served = m.serve_items(tables, users).numpy()
  np.testing.assert_allclose(m.score_items(users).numpy(), served, rtol=1e-6)
  items = np.tile(np.arange(n_items, dtype=np.int32), (n_users, 1))
  scores, explanation = m.serve_pairs(tables, users, tf.constant(items))
  assert explanation is None
  np.testing.assert_allclose(scores.numpy(), served, rtol=1e-5, atol=1e-6)
  evaluator = eval_lib.Evaluator(m, pairs, np.array([[0, 3], [1, 0], [3, 0]]),
                                 ks=(3,), jit_compile=True)
  known = [np.unique(pairs[pairs[:, 0] == u, 1]) for u in (0, 1, 3)]
  np.testing.assert_array_equal(evaluator.top_k(),
                                eval_lib.top_k_excluding(served[[0, 1, 3]], known, 3))
  return tables, served


def check_xla_train_steps(m, batch, steps, n_users):
  """`steps` XLA-compiled train steps on `batch` log BPR's terms and lower
  the loss; the compiled scoring then refreshes the stale cache (it equals
  the served scores)."""
  import tensorflow as tf
  step = tf.function(m.train_step, jit_compile=True)
  first = float(m.loss_terms(*batch)["loss"])
  for _ in range(steps):
    logs = step(batch)
  assert set(logs) == {"loss", "bpr_loss", "l2_loss"}
  assert float(m.loss_terms(*batch)["loss"]) < first
  score = tf.function(m.score_items, jit_compile=True)
  want = m.serve_items(m.serving_tables(), tf.range(n_users)).numpy()
  np.testing.assert_allclose(score(tf.range(n_users)).numpy(), want, rtol=1e-5,
                             atol=1e-5)


def check_tables_ignore_a_modalitys_scale(m, modality="text", factors=(10.0, 0.1)):
  """With every feature projection's bias at zero, `modality`'s features
  times each factor leave `m.final_tables()` as they were. Returns the
  features (the model's, as set again before returning)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for layer in m.projections.values():
    layer.bias.assign(tf.zeros_like(layer.bias))
  features = {k: np.asarray(m.feature_table(k)) for k in m.modalities}
  m.set_item_features(features)
  base = [t.numpy() for t in m.final_tables()]
  for factor in factors:
    m.set_item_features(dict(features, **{modality: features[modality] * factor}))
    for got, want in zip(m.final_tables(), base):
      np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
  m.set_item_features(features)
  return features
