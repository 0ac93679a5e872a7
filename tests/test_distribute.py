"""Training under tf.distribute computes one device's step on the global batch.

- `mirrored` on 2 logical CPU devices (set up in a child process, since the
  device layout is fixed once TensorFlow starts) against the default
  strategy, same initial weights, same batches: same weights after each
  step, same reported loss terms.
- `multi_worker`: two worker processes on 127.0.0.1 (TF_CONFIG) train a tiny
  dataset through scripts/train.py, are killed after a checkpoint, rerun,
  resume and finish; both hold the same weights, the same as an
  uninterrupted single-process run of the same command (run in this
  process: the workers are the real processes here).
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.train import distribute
from maml_tf.errors import UsageError
from tests.helpers import ROOT, SCRIPT, run_in_process, write_release_layout

MIRRORED_CHILD = textwrap.dedent(r"""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from maml_tf.models import maml as model_lib
    from maml_tf.data.sampler import PairSampler

    rng = np.random.default_rng(0)
    pairs = np.unique(np.stack([rng.integers(0, 30, 240),
                                rng.integers(0, 20, 240)], 1), axis=0)
    item_features = rng.normal(size=(20, 6)).astype(np.float32)

    def build(strategy, attention, features):
      with strategy.scope():
        keras.utils.set_random_seed(0)
        m = model_lib.MAML(30, 20, feature_dim=6 if features else 0,
                           embed_dim=4, hidden_dim=16, attention=attention, seed=0)
        if features:
          m.set_item_features(item_features)
        m.compile(optimizer=keras.optimizers.Adam(1e-2, epsilon=1e-8),
                  jit_compile=False)
      return m

    sampler = PairSampler(pairs, 16, 3, seed=0)
    result = {}
    for variant in sys.argv[2:]:  # "<attention>-<features 0|1>"
      attention, features = variant.split("-")[0], variant.endswith("-1")
      out = result[variant] = {}
      strategies = {"single": tf.distribute.get_strategy(),
                    "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
      for name, strategy in strategies.items():
        m = build(strategy, attention, features)
        steps = []
        for step in range(3):
          hist = m.fit(sampler.dataset(step, 1), epochs=1, steps_per_epoch=1,
                       verbose=0, shuffle=False)
          steps.append({
              "weights": [np.asarray(v.numpy()).tolist()
                          for v in (m.user_embeddings, m.item_embeddings)],
              "logs": {k: float(v[-1]) for k, v in hist.history.items()}})
        out[name] = {"steps": steps,
                     "replicas": strategy.num_replicas_in_sync}
    json.dump(result, open(sys.argv[1], "w"))
""")


MIRRORED_VARIANTS = [("scaled", True), ("none", False)]


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
  """Every variant's steps, from one child process (TensorFlow starts once)."""
  work = tmp_path_factory.mktemp("mirrored")
  script, out_path = work / "child.py", work / "out.json"
  script.write_text(MIRRORED_CHILD)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  variants = [f"{a}-{int(f)}" for a, f in MIRRORED_VARIANTS]
  proc = subprocess.run([sys.executable, str(script), str(out_path)] + variants,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out_path.read_text())


@pytest.mark.parametrize("attention,features", MIRRORED_VARIANTS)
def test_mirrored_step_equals_single_device_step(mirrored_runs, attention, features):
  out = mirrored_runs[f"{attention}-{int(features)}"]
  assert out["single"]["replicas"] == 1 and out["mirrored"]["replicas"] == 2
  for one, two in zip(out["single"]["steps"], out["mirrored"]["steps"]):
    for a, b in zip(one["weights"], two["weights"]):
      np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
    # The reported terms are the global ones: the hinge summed over the
    # whole batch, the whole-table terms counted once.
    assert set(one["logs"]) == set(two["logs"])
    for name, value in one["logs"].items():
      assert two["logs"][name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
  # The steps did move the weights (else equality would prove nothing).
  first, last = out["single"]["steps"][0], out["single"]["steps"][-1]
  assert not np.allclose(first["weights"][0], last["weights"][0])


def _weights(workdir, step):
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints", f"ckpt-{step}"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith("model/") and "embeddings" in k}


def _start_workers(common, workdir):
  procs = []
  for tf_config in reversed(distribute.local_tf_configs(2)):  # worker 1 first
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=tf_config)
    procs.append(subprocess.Popen(
        [sys.executable, SCRIPT] + common + ["--strategy=multi_worker",
                                             f"--workdir={workdir}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  return procs


def test_two_local_workers_resume_after_kill_and_match_one_process(tmp_path):
  data = tmp_path / "data"
  features = write_release_layout(str(data))
  common = ["--dataset=custom", f"--data_dir={data}",
            f"--extra_features=meta={features}", "--embed_dim=8",
            "--hidden_layer_dim=16", "--batch_size=16", "--num_neg=2",
            "--train_steps=20", "--eva_batches=4", "--noexport", "--notensorboard",
            f"--cache_dir={tmp_path / 'cache'}"]
  workdir = tmp_path / "multi"
  # Run 1: both workers are killed (SIGKILL) once the chief has written the
  # checkpoint of step 8, three rounds before the end (step 20).
  procs = _start_workers(common, workdir)
  marker = workdir / "checkpoints" / "ckpt-8.index"
  deadline = time.time() + 300
  try:
    while not marker.exists() and time.time() < deadline:
      if any(p.poll() is not None for p in procs):
        break
      time.sleep(0.05)
  finally:
    for p in procs:
      p.kill()
      p.communicate()
  assert marker.exists(), "the chief never wrote its step-8 checkpoint"
  summary = workdir / "metrics.json"
  assert not (summary.exists() and json.loads(summary.read_text())["finished"])
  # Run 2: the same commands resume from the chief's checkpoint and finish.
  procs = _start_workers(common, workdir)
  try:
    results = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  assert "Resuming from step" in results[1][0]
  # The chief (worker 0) owns the workdir; worker 1 wrote to its scratch.
  scratch = tmp_path / "multi.worker-1"
  assert json.loads(summary.read_text())["finished"] is True
  assert not (scratch / "tensorboard").exists()
  chief, other = _weights(str(workdir), 20), _weights(str(scratch), 20)
  assert set(chief) == set(other) and len(chief) == 2
  for name in chief:
    np.testing.assert_array_equal(chief[name], other[name])
  # The same command on one process, uninterrupted: the same training.
  single = tmp_path / "single"
  proc = run_in_process(common + [f"--workdir={single}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  alone = _weights(str(single), 20)
  for name in chief:
    np.testing.assert_allclose(chief[name], alone[name], rtol=1e-5, atol=1e-5)
  records = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  multi, one = records(workdir), records(single)
  assert [r["step"] for r in multi] == [r["step"] for r in one] == list(range(4, 21, 4))
  for a, b in zip(multi, one):
    assert a["test"]["ndcg@10"] == pytest.approx(b["test"]["ndcg@10"], abs=1e-6)
    for term, value in b["train"].items():
      assert a["train"][term] == pytest.approx(value, rel=1e-4, abs=1e-4), term


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(UsageError, match="TF_CONFIG environment variable"):
    distribute.make_strategy("multi_worker")
  monkeypatch.setenv("TF_CONFIG", "{not json")
  with pytest.raises(UsageError, match="must be JSON"):
    distribute.make_strategy("multi_worker")
  monkeypatch.setenv("TF_CONFIG", json.dumps(
      {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}))
  with pytest.raises(UsageError, match="`task`"):
    distribute.make_strategy("multi_worker")


def test_default_strategy_is_the_chief_with_no_scratch():
  assert distribute.make_strategy("default") is None
  assert distribute.task(None) == ("chief", 0)
  assert distribute.is_chief(None)
  assert distribute.scratch_workdir("runs/x", None) is None


def test_cli_rejects_an_unknown_strategy(tmp_path):
  proc = run_in_process(["--strategy=parameter_server", f"--workdir={tmp_path / 'w'}"])
  assert proc.returncode == 2
  assert "`--strategy` must be one of default, mirrored, multi_worker. " \
         "Received: 'parameter_server'" in proc.stderr
