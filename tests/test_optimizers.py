"""--network_lr_scale (maml_tf/optimizers.py): Adam with the weights that are
not tables at a scaled learning rate, against the numpy Adam oracle, in a
model's train step, and wired to the flag."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from maml_tf.train import optimizers
from maml_tf import train
from maml_tf.config import Config
from maml_tf.errors import UsageError
from tests import oracles
from tests.helpers import maml_batch, maml_model, tiny_dataset


def test_grouped_adam_matches_the_oracle_with_two_learning_rates():
  rng = np.random.default_rng(3)
  init = {"table": rng.normal(size=(5, 3)), "net": rng.normal(size=(3, 2))}
  table = tf.Variable(init["table"].astype(np.float32))
  net = tf.Variable(init["net"].astype(np.float32))
  opt = optimizers.GroupedAdam(tables=[table], network_scale=0.1,
                               learning_rate=1e-3, epsilon=1e-8)
  lrs = {"table": 1e-3, "net": 1e-4}
  ref = {k: (v.astype(np.float64), np.zeros_like(v), np.zeros_like(v))
         for k, v in init.items()}
  for t in range(1, 6):
    grads = {k: rng.normal(size=v.shape).astype(np.float32)
             for k, v in init.items()}
    opt.apply_gradients([(tf.constant(grads["table"]), table),
                         (tf.constant(grads["net"]), net)])
    ref = {k: oracles.adam_step(*ref[k][:1], grads[k], *ref[k][1:], t, lr=lrs[k])
           for k in ref}
  np.testing.assert_allclose(table.numpy(), ref["table"][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(net.numpy(), ref["net"][0], rtol=1e-5, atol=1e-6)
  assert opt.learning_rate_scale(table) == 1.0
  assert opt.learning_rate_scale(net) == pytest.approx(0.1)


def _one_step(scale):
  m = maml_model(mode="paper", seed=0)
  m.compile(optimizer=optimizers.GroupedAdam(
      tables=m.table_variables(), network_scale=scale, learning_rate=1e-3,
      epsilon=1e-8))
  before = {v.path: keras.ops.convert_to_numpy(v).copy()
            for v in m.trainable_variables}
  m.train_on_batch(*maml_batch())
  return {v.path: keras.ops.convert_to_numpy(v) - before[v.path]
          for v in m.trainable_variables}, m


def test_paper_mode_networks_step_at_the_scaled_rate_and_tables_do_not():
  """One step from the same weights: the tables move exactly as with plain
  Adam, every network weight by 0.25 x its plain-Adam move (Adam's first
  step is lr x g / (|g| + eps) per element, so the ratio is the scale)."""
  plain, _ = _one_step(1.0)
  scaled, m = _one_step(0.25)
  tables = {v.path for v in m.table_variables()}
  networks = set(plain) - tables
  assert len(tables) == 2 and networks  # attention and fusion weights
  for path in tables:
    np.testing.assert_allclose(scaled[path], plain[path], rtol=1e-5, atol=1e-9,
                               err_msg=path)
  moved = 0
  for path in networks:
    np.testing.assert_allclose(scaled[path], 0.25 * plain[path], rtol=1e-4,
                               atol=1e-9, err_msg=path)
    moved += int(np.abs(plain[path]).max() > 0)
  assert moved >= 2


def test_the_flag_reaches_the_optimizer_and_is_range_checked(tmp_path):
  config = Config(model="cml", protocol="split", embed_dim=4, batch_size=16,
                  num_neg=2, network_lr_scale=0.5, jit_compile=False,
                  tensorboard=False, export=False, workdir=str(tmp_path))
  model = train.build_model(config, tiny_dataset())
  assert isinstance(model.optimizer, optimizers.GroupedAdam)
  assert model.optimizer.network_scale == 0.5
  assert "--network_lr_scale=0.5" in config.to_flagfile().splitlines()
  with pytest.raises(UsageError, match=r"`--network_lr_scale` must be > 0. "
                     r"Received: 0"):
    Config(network_lr_scale=0.0).validate()
