"""BPR-MF: loss, L2 and gradients against the numpy oracle, scoring, the
config round trip, every new flag's one-line error, the CLI end to end, and
the export loaded in an isolated process that cannot import maml_tf.

`check_export` (tests/helpers.py) is shared with the other models' tests.
"""

import json
import subprocess
import sys

from maml_tf.export import saved_model as export_lib  # first: TFRS wants tf.keras = Keras 2

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.config import Config
from maml_tf.errors import UsageError
from maml_tf.models import mf as mf_lib
from maml_tf.models.mf import MF
from tests import oracles
from tests.helpers import check_export, export_dataset

N_USERS, N_ITEMS, K = 7, 9, 4


def _np(v):
  return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def _batch(seed=2, b=12, n_users=N_USERS, n_items=N_ITEMS):
  rng = np.random.default_rng(seed)
  users = rng.integers(0, n_users, b).astype(np.int32)
  items = rng.integers(0, n_items, (b, 2)).astype(np.int32)
  return users, items


def _model(l2_reg=0.3, seed=0):
  m = MF(N_USERS, N_ITEMS, embed_dim=K, l2_reg=l2_reg, seed=seed)
  # Rows large enough that the sigmoids are far from 1/2.
  rng = np.random.default_rng(seed + 5)
  m.user_embeddings.assign(rng.normal(size=(N_USERS, K)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(N_ITEMS, K)).astype(np.float32))
  return m


def test_init_is_normal_with_stddev_0_1_and_unconstrained():
  m = MF(300, 400, embed_dim=32, seed=1, init_stddev=0.1)
  for table in (m.user_embeddings, m.item_embeddings):
    assert _np(table).std() == pytest.approx(0.1, rel=0.05)
  assert m.user_table.embeddings_constraint is None


def test_bpr_and_l2_match_the_oracle():
  m = _model()
  users, items = _batch()
  terms = m.loss_terms(tf.constant(users), tf.constant(items))
  bpr, l2, _, _ = oracles.mf_loss_and_grads(
      _np(m.user_embeddings), _np(m.item_embeddings), users, items[:, 0],
      items[:, 1], 0.3)
  assert set(terms) == {"loss", "bpr_loss", "l2_loss"}
  assert float(terms["bpr_loss"]) == pytest.approx(bpr, rel=1e-5)
  assert float(terms["l2_loss"]) == pytest.approx(l2, rel=1e-5)
  assert float(terms["loss"]) == pytest.approx(bpr + l2, rel=1e-5)
  assert bpr > 0 and l2 > 0


def test_gradients_match_the_oracles_hand_derived_gradient():
  m = _model()
  users, items = _batch(b=16)
  with tf.GradientTape() as tape:
    loss = m.loss_terms(tf.constant(users), tf.constant(items))["loss"]
  gP, gQ = tape.gradient(loss, [m.user_embeddings, m.item_embeddings])
  _, _, eP, eQ = oracles.mf_loss_and_grads(
      _np(m.user_embeddings), _np(m.item_embeddings), users, items[:, 0],
      items[:, 1], 0.3)
  np.testing.assert_allclose(_np(tf.convert_to_tensor(gP)), eP, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_np(tf.convert_to_tensor(gQ)), eQ, rtol=1e-4, atol=1e-6)


def test_bpr_helpers_on_known_values():
  # -ln sigmoid(0) = ln 2; -ln sigmoid(2) = ln(1 + e^-2).
  got = float(mf_lib.bpr_loss(tf.constant([1.0, 3.0]), tf.constant([1.0, 1.0])))
  assert got == pytest.approx((np.log(2.0) + np.log1p(np.exp(-2.0))) / 2, rel=1e-6)
  rows = tf.constant([[3.0, 4.0], [0.0, 1.0]])
  assert float(mf_lib.batch_l2(rows, rows)) == pytest.approx(2 * 26.0 / 4.0)


def test_scores_are_dot_products():
  m = _model()
  P, Q = _np(m.user_embeddings), _np(m.item_embeddings)
  users = np.array([0, 3, 6], np.int32)
  np.testing.assert_allclose(m.score_items(tf.constant(users)).numpy(),
                             P[users] @ Q.T, rtol=1e-5, atol=1e-6)
  items = np.array([[1, 2], [0, 8], [4, 4]], np.int32)
  got = m.score_pairs(tf.constant(users), tf.constant(items)).numpy()
  np.testing.assert_allclose(got, np.einsum("bd,bnd->bn", P[users], Q[items]),
                             rtol=1e-5, atol=1e-6)
  scores, explanation = m.score_pairs(tf.constant(users), tf.constant(items[:, 0]),
                                      explain=True)
  assert explanation is None and not m.explains
  assert m.retrieval_space(m.serving_tables())[0] == "dot"


def test_train_steps_lower_the_loss():
  m = _model(l2_reg=1e-3)
  m.compile(optimizer=keras.optimizers.Adam(5e-2))
  users, items = _batch(b=24)
  batch = (tf.constant(users), tf.constant(items))
  first = float(m.loss_terms(*batch)["loss"])
  for _ in range(30):
    logs = m.train_step(batch)
  assert set(logs) == {"loss", "bpr_loss", "l2_loss"}
  assert float(m.loss_terms(*batch)["loss"]) < 0.5 * first


def test_get_config_round_trip():
  m = MF(N_USERS, N_ITEMS, embed_dim=K, l2_reg=0.01, seed=3, name="mf")
  clone = MF.from_config(m.get_config())
  assert clone.get_config() == m.get_config()
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
  assert isinstance(restored, MF) and restored.l2_reg == 0.01


def test_bad_l2_reg_is_refused():
  with pytest.raises(ValueError, match=r"`l2_reg` must be >= 0. Received: l2_reg=-1"):
    MF(N_USERS, N_ITEMS, l2_reg=-1)


@pytest.mark.parametrize("flag,value,message", [
    ("gcn_layers", 0, "`--gcn_layers` must be >= 1. Received: 0"),
    ("gcn_layers", 1.5, "`--gcn_layers` must be an integer. Received: 1.5"),
    ("l2_reg", -1e-4, "`--l2_reg` must be >= 0. Received: -0.0001"),
    ("mp_weight", -0.5, "`--mp_weight` must be >= 0. Received: -0.5"),
    ("mp_weight", float("nan"), "`--mp_weight` must be finite. Received: nan"),
    ("mario_hidden", 0, "`--mario_hidden` must be >= 1. Received: 0"),
    ("backbone", "gcn", "`--backbone` must be one of mf, lightgcn, ngcf. Received: 'gcn'"),
    ("mario_fusion", "sum", "`--mario_fusion` must be one of attention, mean, max, "
     "fc. Received: 'sum'"),
])
def test_each_new_flag_has_a_one_line_error(flag, value, message):
  with pytest.raises(UsageError) as e:
    Config(**{flag: value}).validate()
  assert str(e.value) == message


def test_one_negative_is_required():
  with pytest.raises(UsageError, match="`--num_neg` must be 1 with --model=mf"):
    Config(model="mf", num_neg=4).validate()


def test_cli_flag_error_is_one_line_and_exit_2(tmp_path):
  from tests.helpers import run_in_process
  proc = run_in_process(["--model=lightgcn", "--num_neg=1", "--gcn_layers=0",
                         f"--workdir={tmp_path / 'run'}"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: `--gcn_layers` must be >= 1. Received: 0")


# ------------------------------------------------------------ export


def test_export_loads_in_an_isolated_process_and_matches(tmp_path):
  ds = export_dataset(False, 0.2, seed=0)
  m = MF(ds.n_users, ds.n_items, embed_dim=8, seed=0)
  rng = np.random.default_rng(1)
  m.user_embeddings.assign(rng.normal(size=(ds.n_users, 8)).astype(np.float32))
  m.item_embeddings.assign(rng.normal(size=(ds.n_items, 8)).astype(np.float32))
  out = check_export(m, ds, tmp_path, "mf")
  info = export_lib.load_info(out["path"])
  assert info["model"] == "mf" and info["retrieval_metric"] == "dot"
  assert info["explanation"] is None


def test_mf_from_the_cli_trains_and_exports(tmp_path):
  from tests.helpers import run_in_process, write_release_layout
  data = tmp_path / "data"
  write_release_layout(str(data))
  workdir = tmp_path / "run"
  proc = run_in_process([
      "--dataset=custom", f"--data_dir={data}", "--model=mf",
      "--num_neg=1", "--embed_dim=8", "--l2_reg=1e-3", "--batch_size=16",
      "--learning_rate=0.01", "--train_steps=6", "--eva_batches=3",
      "--notensorboard", f"--export_dir={tmp_path / 'exports'}",
      f"--workdir={workdir}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "metrics.json").read_text())
  assert summary["finished"] is True and summary["modalities"] == []
  assert set(summary["last"]["train"]) >= {"loss", "bpr_loss", "l2_loss"}
  assert "--l2_reg=0.001" in (workdir / "flags.txt").read_text()
  loaded = tf.saved_model.load(str(tmp_path / "exports" / "mf_custom" / "1"))
  rec = loaded.signatures["serving_default"](user_ids=tf.constant([0], tf.int64))
  assert rec["item_ids"].shape == (1, 10)


def test_the_office_flagfiles_parse_and_validate():
  """flags/office_{mf,lightgcn,mario}.flags: known flags, valid values, the
  split protocol with early stopping on validation Recall@20."""
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = (
      "import json, sys\n"
      "from maml_tf import cli\n"
      "cli.define_flags()\n"
      "out = {}\n"
      "for name in ('mf', 'lightgcn', 'mario'):\n"
      "  cli.FLAGS.unparse_flags()\n"
      "  cli.FLAGS(['x', f'--flagfile=flags/office_{name}.flags'])\n"
      "  c = cli.config_from_flags()\n"
      "  out[name] = [c.model, c.protocol, c.select_metric, c.patience,\n"
      "               list(c.topk), c.num_neg, c.embed_dim, c.backbone]\n"
      "print(json.dumps(out))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                        text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, (model, protocol, metric, patience, topk, num_neg, d, backbone) in out.items():
    assert (model, protocol, metric, patience, topk, num_neg, d) == (
        name, "split", "recall@20", 20, [10, 20], 1, 64)
  assert out["mario"][-1] == "lightgcn"


def test_a_run_recorded_before_the_new_flags_resumes_unchanged(tmp_path):
  from maml_tf import train as train_lib
  new = ("--backbone", "--gcn_layers", "--l2_reg", "--mp_weight", "--mario_fusion",
         "--mario_hidden")
  config = Config(workdir=str(tmp_path))
  old = [line for line in config.to_flagfile().splitlines()
         if not line.startswith(new)]
  assert len(old) == len(config.to_flagfile().splitlines()) - len(new)
  (tmp_path / "flags.txt").write_text("\n".join(old) + "\n")
  assert train_lib.changed_flags(str(tmp_path), config) == []
  other = Config(workdir=str(tmp_path), l2_reg=1e-2)
  assert [n for n, _, _ in train_lib.changed_flags(str(tmp_path), other)] == ["l2_reg"]
