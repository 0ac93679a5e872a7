"""Training under tf.distribute: `--strategy=default|mirrored|multi_worker`.

- `default`: no strategy (one device), the XLA-compiled train step.
- `mirrored`: `tf.distribute.MirroredStrategy` over this machine's devices
  (its GPUs; on a CPU-only machine the one CPU, unless the process has split
  it into logical devices, as the tests do).
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`; the cluster and
  this process's task come from the `TF_CONFIG` environment variable. Every
  worker runs the same command. The chief (task `chief`, or `worker` 0 when
  the cluster has no chief) owns `--workdir`: it writes the metrics,
  checkpoints, TensorBoard logs and the export. Every other worker writes its
  copies to a scratch folder of its own (`<workdir>.worker-<i>`), which it
  clears at start, and resumes from the chief's checkpoints.

`parameter_server` is deliberately not offered: the release's loss touches
every row of both embedding tables every step (the feature and covariance
terms, and Adam's dense update), so sharding the tables over parameter
servers would move all of them over the network each step; the tables of
the data this model is used on fit in one worker's memory many times over.

What makes the replicas compute one device's step (see `RankingModel.train_step` in maml_tf/models/base.py):
each replica gets 1/n of the global batch; the hinge is summed over the
batch, so the replicas' sums add up; the whole-table terms are divided by n
on each replica; Keras sums the replicas' gradients and applies Adam and the
unit-ball constraint once per step on the mirrored variables.
"""

from __future__ import annotations

import json
import os
import socket
from typing import List, Optional

import tensorflow as tf

from maml_tf.config import STRATEGIES
from maml_tf.errors import UsageError


def _tf_config() -> dict:
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    raise UsageError("`--strategy=multi_worker` needs the TF_CONFIG environment "
                     "variable: the cluster's worker addresses and this "
                     "process's task. Received: TF_CONFIG unset")
  try:
    spec = json.loads(raw)
  except ValueError as e:
    raise UsageError(f"TF_CONFIG must be JSON ({e}). Received: {raw!r}") from None
  cluster, task = spec.get("cluster"), spec.get("task")
  if (not isinstance(cluster, dict) or not isinstance(task, dict) or
      task.get("type") not in cluster or
      not isinstance(task.get("index"), int) or
      not 0 <= task["index"] < len(cluster[task["type"]])):
    raise UsageError("TF_CONFIG must hold a `cluster` of task lists and a "
                     "`task` {type, index} naming one of them. Received: "
                     f"{raw!r}")
  return spec


def make_strategy(name: str) -> Optional[tf.distribute.Strategy]:
  """The strategy `--strategy` names (None for default: no strategy).

  Create it before any other TensorFlow work in the process.
  """
  if name == "default":
    return None
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    _tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise UsageError(f"`--strategy` must be one of {', '.join(STRATEGIES)}. "
                   f"Received: {name!r}")


def describe(strategy: Optional[tf.distribute.Strategy]) -> str:
  """One line: the devices TensorFlow sees and the strategy a run uses,
  e.g. "Devices: 1 CPU, 0 GPU; strategy: default (one device, /CPU:0)"."""
  cpus = tf.config.list_logical_devices("CPU")
  gpus = tf.config.list_logical_devices("GPU")
  if strategy is None:
    where = gpus[0].name if gpus else cpus[0].name if cpus else "?"
    how = f"default (one device, {where.replace('/device:', '/')})"
  else:
    how = (f"{type(strategy).__name__} over "
           f"{strategy.num_replicas_in_sync} replica(s)")
  return f"Devices: {len(cpus)} CPU, {len(gpus)} GPU; strategy: {how}"


def local_tf_configs(n: int) -> List[str]:
  """TF_CONFIG values for n worker processes on this machine (free ports on
  127.0.0.1), index i for worker i: for tests and benchmarks."""
  ports = []
  for _ in range(n):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      ports.append(s.getsockname()[1])
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
          for i in range(n)]


def task(strategy: Optional[tf.distribute.Strategy]) -> tuple:
  """(type, index) of this process; ("chief", 0) outside a cluster."""
  resolver = getattr(strategy, "cluster_resolver", None) if strategy else None
  if resolver is None or not resolver.task_type:
    return "chief", 0
  return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: Optional[tf.distribute.Strategy]) -> bool:
  """Whether this process owns the workdir and the export."""
  kind, index = task(strategy)
  if kind == "chief":
    return True
  resolver = strategy.cluster_resolver
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return kind == "worker" and index == 0 and not has_chief


def scratch_workdir(workdir: str,
                    strategy: Optional[tf.distribute.Strategy]) -> Optional[str]:
  """A non-chief worker's own folder beside the chief's; None for the chief."""
  if is_chief(strategy):
    return None
  kind, index = task(strategy)
  return f"{os.path.normpath(workdir)}.{kind}-{index}"
