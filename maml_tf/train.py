"""`train_and_evaluate(config)`: the whole run, as plain function calls.

flags -> Config -> Dataset -> PairSampler -> model.fit with the evaluation,
checkpoint and TensorBoard callbacks -> in the workdir: metrics.jsonl,
metrics.json, flags.txt, checkpoints/ (best/ apart) and tensorboard/.

One Keras "epoch" is one evaluation round of `eva_batches` steps; the release
trained forever and printed test metrics each round, the port trains
`train_steps` steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Optional

try:
  import fcntl
except ImportError:  # not POSIX: no lock
  fcntl = None

import keras
import numpy as np

from maml_tf import callbacks as callbacks_lib
from maml_tf import checkpoint as checkpoint_lib
from maml_tf import data as data_lib
from maml_tf import distribute
from maml_tf import evaluate as eval_lib
from maml_tf import explanation as explanation_lib
from maml_tf import formats as formats_lib
from maml_tf import models as models_lib
from maml_tf import optimizers as optimizers_lib
from maml_tf import preservation as preservation_lib
from maml_tf import protocols
from maml_tf import vocab as vocab_lib
from maml_tf import config as config_lib
from maml_tf.config import Config
from maml_tf.dataset_types import Dataset
from maml_tf.errors import DataError, UsageError
from maml_tf.sampler import PairSampler

log = logging.getLogger("maml_tf")


def load_data(config: Config, with_info: bool = False):
  """The dataset of a config: its modalities chosen (none for CML and LRML),
  split by the protocol (see `prepare_data`)."""
  modalities, paths = config.modalities, config.feature_paths
  if not config.uses_features:
    if paths or modalities:
      log.warning("--model=%s uses no item features; ignoring %s", config.model,
                  ", ".join(sorted(paths) or modalities))
    modalities, paths = (), {}
  ds = formats_lib.load_dataset(
      config.dataset, config.data_dir, modalities, paths,
      config.text_dim, config.seed, config.cache_dir,
      data_format=config.data_format, min_rating=config.min_rating,
      kcore=config.kcore)
  return prepare_data(config, ds, with_info)


def prepare_data(config: Config, ds: Dataset, with_info: bool = False):
  """The dataset split by --protocol (maml_tf/protocols/): train, valid, test.

  Returns the Dataset, or (Dataset, info) with `with_info`, info being the
  protocol's description of the split (metrics.json's "protocol").
  """
  if not config.uses_features and ds.features:
    ds = dataclasses.replace(ds, features={}, feature_sources={})
  if len(ds.valid) and config.validation_fraction > 0:
    raise UsageError(f"`--validation_fraction` must be 0 when the data gives a "
                     f"validation split ({ds.name} has {len(ds.valid)} "
                     f"validation pairs, e.g. from valid.csv). Received: "
                     f"{config.validation_fraction}")
  if config.protocol == "release" and not len(ds.test):
    raise UsageError(f"`--protocol=release` needs test pairs and {ds.name} has "
                     f"none; give a split (test file) or use --protocol=split "
                     f"(a per-user 8:1:1 split). Received: {config.protocol}")
  ds, info = protocols.get(config.protocol).prepare(config, ds)
  return (ds, info) if with_info else ds


def preservation_dataset(config: Config, ds: Dataset) -> Dataset:
  """`ds` with the features of --preservation_modalities, for measuring
  modality preservation: the run's own when it has them, else read from the
  data (a model that uses no features is measured against them too)."""
  wanted = tuple(config.preservation_modalities)
  have = {m: ds.features[m] for m in wanted if m in ds.features}
  missing = [m for m in wanted if m not in have]
  if missing:
    try:
      extra = formats_lib.load_dataset(
          config.dataset, config.data_dir, tuple(missing), config.feature_paths,
          config.text_dim, config.seed, config.cache_dir,
          data_format=config.data_format, min_rating=config.min_rating,
          kcore=config.kcore)
    except (DataError, UsageError) as e:
      raise UsageError(f"`--preservation_modalities` names a modality the data "
                       f"cannot give ({e}). Received: {','.join(wanted)}") from None
    if extra.n_items != ds.n_items:
      raise UsageError(f"`--preservation_modalities`: the features have "
                       f"{extra.n_items} item rows, the run {ds.n_items}. "
                       f"Received: {','.join(wanted)}")
    have.update({m: extra.features[m] for m in missing})
  return dataclasses.replace(ds, features={m: have[m] for m in wanted},
                             feature_sources={})


# Flags a resumed run may change: they do not change what is computed
# (each Config field says so itself).
RESUMABLE_CHANGES = config_lib.names(
    resume={config_lib.RESUME_ANY, config_lib.RESUME_RUN})
REFIT = "refit"  # <workdir>/refit: the --refit run, a workdir of its own
RUN_FILES = ("metrics.json", "metrics.jsonl", "flags.txt")
RUN_DIRS = (checkpoint_lib.CHECKPOINTS, "tensorboard", REFIT, vocab_lib.FOLDER)


def read_flagfile(text: str) -> dict:
  """`--name=value` / `--name` / `--noname` lines -> {name: value string}."""
  names = {f.name for f in dataclasses.fields(Config)}
  values = {}
  for line in text.splitlines():
    line = line.strip()
    if not line.startswith("--"):
      continue
    name, sep, value = line[2:].partition("=")
    if sep:
      values[name] = value
    elif name in names:
      values[name] = "true"
    elif name.startswith("no") and name[2:] in names:
      values[name[2:]] = "false"
  return values


def changed_flags(workdir: str, config: Config) -> list:
  """The flags whose values differ from the run recorded in workdir/flags.txt
  (those a resume may change left out), as (name, there, here) tuples."""
  try:
    with open(os.path.join(workdir, "flags.txt")) as f:
      there = read_flagfile(f.read())
  except OSError:
    return []
  # A flag added after the run was recorded ran with today's default.
  there = dict(read_flagfile(Config().to_flagfile()), **there)
  here = read_flagfile(config.to_flagfile())
  return [(name, there.get(name), here.get(name))
          for name in sorted(set(there) | set(here))
          if name not in RESUMABLE_CHANGES and there.get(name) != here.get(name)]


def clear_workdir(workdir: str):
  """Removes a run's files (metrics, flags, checkpoints, TensorBoard logs)."""
  for name in RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)
  for name in RUN_DIRS:
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def lock_workdir(workdir: str):
  """Creates the workdir and takes its lock (<workdir>/.lock) for this process;
  returns the open lock file (close it to release; a killed process releases
  it too).

  Raises:
    UsageError: the folder is not writable, or another run holds the lock.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    lock = open(os.path.join(workdir, ".lock"), "a")
  except OSError as e:
    raise UsageError(f"`--workdir` must be a writable folder. Received: "
                     f"{workdir!r} ({e.strerror})") from None
  if fcntl is not None:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      lock.close()
      raise UsageError(f"`--workdir` is in use by another run; wait for it to "
                       f"end or choose another folder. Received: {workdir!r}"
                       ) from None
  return lock


def prepare_workdir(config: Config, read_only: bool = False) -> Optional[str]:
  """Readies the workdir; returns the checkpoint to resume from, or None.

  With `read_only` (a non-chief worker asking about the chief's workdir)
  nothing is written or cleared: it only decides, or refuses, the same way.

  - A finished run (metrics.json says "finished": true) is refused unless
    --overwrite, which clears it, or --refit when it has no refit yet: it is
    resumed from its last checkpoint (nothing more is trained up to its
    train_steps) and the refit is added.
  - An unfinished run with a checkpoint is resumed from its last checkpoint
    when its flags match (train_steps, keep_checkpoints, tensorboard, export
    and jit_compile may change); with other flags it is refused unless
    --overwrite, which clears it.
  - An unfinished run without a checkpoint is cleared and started afresh.

  Raises:
    UsageError: refused, or the folder is not writable.
  """
  workdir = config.workdir
  if not read_only:
    try:
      os.makedirs(workdir, exist_ok=True)
      probe = os.path.join(workdir, f".write-test-{os.getpid()}")
      with open(probe, "w"):
        pass
      os.remove(probe)
    except OSError as e:
      raise UsageError(f"`--workdir` must be a writable folder. Received: "
                       f"{workdir!r} ({e.strerror})") from None
  clear = (lambda _: None) if read_only else clear_workdir
  summary_path = os.path.join(workdir, "metrics.json")
  try:
    with open(summary_path) as f:
      summary = json.load(f)
    finished = summary.get("finished") is True
  except (OSError, ValueError, AttributeError):
    summary, finished = {}, False
  adds_refit = (finished and config.refit and not config.overwrite
                and "refit" not in summary.get("results", {}))
  if finished and not adds_refit:
    if not config.overwrite:
      raise UsageError(
          f"`--workdir` holds a finished run ({summary_path}); pass --overwrite"
          f" to replace it or choose another folder. Received: {workdir!r}")
    clear(workdir)
    return None
  last = checkpoint_lib.last_prefix(workdir)
  if last is None and adds_refit:
    raise UsageError(
        f"`--refit` on a finished run needs its checkpoints; {workdir} has "
        f"none. Pass --overwrite to train it again. Received: {workdir!r}")
  if last is None:
    clear(workdir)
    return None
  changed = changed_flags(workdir, config)
  if changed:
    if config.overwrite:
      clear(workdir)
      return None
    shown = ", ".join(f"--{name}: {there} there, {here} here"
                      for name, there, here in changed[:3])
    raise UsageError(
        f"`--workdir` holds {'a finished' if adds_refit else 'an unfinished'}"
        f" run with other settings ({shown}); "
        f"rerun with --flagfile={os.path.join(workdir, 'flags.txt')} to resume "
        f"it, or pass --overwrite to start afresh. Received: {workdir!r}")
  return last


def build_model(config: Config, ds: Dataset, strategy=None):
  """The compiled model `config.model` names (`maml_tf.models`), its
  variables created under `strategy`'s scope
  (None: no tf.distribute strategy, one device).

  Under a tf.distribute strategy the train step is not XLA-compiled as a
  whole (XLA cannot read a replica's variables placed on another device);
  the fast path's fused kernels still are.
  """
  scope = contextlib.nullcontext() if strategy is None else strategy.scope()
  with scope:
    model = models_lib.build(config, ds)
    model.compile(
        optimizer=optimizers_lib.GroupedAdam(
            tables=model.table_variables(),
            network_scale=config.network_lr_scale,
            learning_rate=config.learning_rate, beta_1=0.9, beta_2=0.999,
            epsilon=1e-8),
        jit_compile=config.jit_compile and strategy is None)
  return model


def build_evaluators(config: Config, ds: Dataset, model, jit_compile=None):
  """{"valid": ..., "test": ...} of --protocol: validation ranks exclude
  train items, test ranks train and validation items."""
  jit = config.jit_compile if jit_compile is None else jit_compile
  return protocols.get(config.protocol).build_evaluators(config, ds, model, jit)


def _require_tensorboard():
  try:
    import tensorboard  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise UsageError("`--tensorboard` needs the tensorboard package (pip "
                     "install tensorboard); pass --notensorboard to train "
                     "without it. Received: --tensorboard") from None


def _write_text_atomic(path, text):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def train_and_evaluate(config: Config, dataset: Optional[Dataset] = None,
                       verbose: int = 1) -> dict:
  """Trains and evaluates one run; returns the summary written to metrics.json.

  Every evaluation round ends with a checkpoint in <workdir>/checkpoints (the
  best round copied to checkpoints/best). Calling this again with the same
  config after an interruption resumes from the last checkpoint: same step,
  optimizer state and sampler position (the batch of a step is a function of
  (seed, step)), and metrics.jsonl keeps exactly the rounds up to that
  checkpoint, the later ones being run again.

  Args:
    config: the run's settings (validated here).
    dataset: an already loaded Dataset (e.g. from `data.from_arrays`); when
      None, the one the config names is loaded.
    verbose: Keras verbosity (0 silent, 1 progress bar, 2 a line a round).

  Raises:
    UsageError, DataError: bad settings or inputs.
    NonFiniteLossError: a loss turned NaN or infinite; the checkpoints of the
      rounds before it are kept and metrics.json says what happened.
  """
  config.validate()
  # First: MultiWorkerMirroredStrategy must exist before other TF work.
  strategy = distribute.make_strategy(config.strategy)
  scratch = distribute.scratch_workdir(config.workdir, strategy)
  resume_from = None
  if scratch is not None:
    # A non-chief worker: it resumes from the chief's checkpoint (or refuses
    # as the chief will) and writes only to its own scratch folder.
    resume_from = prepare_workdir(config, read_only=True)
    config = dataclasses.replace(config, workdir=scratch, tensorboard=False,
                                 export=False, overwrite=True, restore_from=None)
    verbose = 0
  if config.tensorboard:
    _require_tensorboard()
  lock = lock_workdir(config.workdir)
  try:
    if scratch is not None:
      clear_workdir(config.workdir)
    else:
      resume_from = prepare_workdir(config)
    return _train(config, dataset, verbose, strategy, resume_from)
  finally:
    lock.close()


def _train(config: Config, dataset: Optional[Dataset], verbose: int,
           strategy, resume_from: Optional[str], prepared=None) -> dict:
  """`train_and_evaluate` once the workdir is locked.

  `prepared`: (Dataset, protocol info) already split (the --refit run's
  train + validation); `dataset` is then ignored.
  """
  keras.utils.set_random_seed(config.seed)
  if prepared is not None:
    ds, protocol_info = prepared
  elif dataset is None:
    ds, protocol_info = load_data(config, with_info=True)
  else:
    ds, protocol_info = prepare_data(config, dataset, with_info=True)
  if not len(ds.valid):
    if config.patience:
      raise UsageError(f"`--patience` must be 0 when there is no validation "
                       f"split to stop on (use --protocol=split or "
                       f"--validation_fraction > 0). Received: {config.patience}")
    if config.refit:
      raise UsageError("`--refit` needs a run that selects on validation "
                       "(--protocol=split or --validation_fraction > 0). "
                       "Received: --refit")
  if config.batch_size > len(ds.train):
    raise UsageError(f"`--batch_size` must be <= the number of train pairs "
                     f"({len(ds.train)}). Received: {config.batch_size}")
  _write_text_atomic(os.path.join(config.workdir, "flags.txt"),
                     config.to_flagfile())
  vocab_lib.write_vocab(config.workdir, ds)
  if verbose:
    print(ds.summary(), flush=True)
    for note in ds.notes:
      print(f"  {note}", flush=True)
    for source in ds.feature_sources.values():  # each starts "<name>: "
      print(f"  {source}", flush=True)

  model = build_model(config, ds, strategy)
  checkpointer = checkpoint_lib.Checkpointer(model, config.workdir,
                                             config.keep_checkpoints)
  eva = config.eva_batches
  start_step = 0
  if resume_from is not None:
    start_step = checkpointer.restore(resume_from)
    if start_step > config.train_steps:
      raise UsageError(f"`--train_steps` must be >= {start_step}, the step the "
                       f"run in --workdir reached. Received: {config.train_steps}")
    if verbose:
      print(f"Resuming from step {start_step} ({resume_from})", flush=True)
  elif config.restore_from:
    prefix = checkpoint_lib.resolve(config.restore_from, which="last")
    start_step = checkpointer.restore(prefix)
    if start_step % eva or start_step >= config.train_steps:
      raise UsageError(
          f"`--restore_from` must be a checkpoint at a multiple of "
          f"--eva_batches ({eva}) below --train_steps ({config.train_steps}); "
          f"{prefix} is at step {start_step}. Received: {config.restore_from!r}")
    if verbose:
      print(f"Starting from {prefix} (step {start_step})", flush=True)
  elif config.init_from:
    prefix = checkpoint_lib.resolve(config.init_from, which="last")
    init_step = checkpoint_lib.restore(model, prefix)  # weights only
    if verbose:
      print(f"Weights initialised from {prefix} (its step {init_step}); "
            "training from step 0", flush=True)

  sampler = PairSampler(ds.train, config.batch_size, config.num_neg, config.seed)
  evaluation = eval_lib.EvaluationCallback(
      build_evaluators(config, ds, model), eva, config.workdir,
      config.select_metric, modalities=ds.modalities,
      progress=None if verbose == 1 else False, patience=config.patience)
  evaluation.extra_summary["protocol"] = protocol_info
  watched = explanation_lib.sample_pairs(ds.train)
  if model.explains and len(watched) and explanation_lib.explanation_report(
      model, watched[:2]):
    # How concentrated the explanation weights are (attention entropy, ...)
    # over one fixed sample of train pairs, every round.
    evaluation.extras["explanation"] = (
        lambda: explanation_lib.explanation_report(model, watched))
  if len(watched) and model.diagnostics(watched):
    evaluation.extras["diagnostics"] = lambda: model.diagnostics(watched)
  if config.preservation_modalities:
    measured = preservation_dataset(config, ds)
    evaluation.extras["preservation"] = (
        lambda: preservation_lib.preservation_report(model, measured))
  is_refit = "refit" in protocol_info
  if is_refit:
    # No selection inside a --refit run: its last round is its result (the
    # best/ copy it keeps is by test, for resuming only; never reported).
    evaluation.extra_summary["selection"] = (
        "none: a --refit run (train + validation, for the selected round's "
        "steps); its last round is the result")
  if resume_from is not None:
    evaluation.resume(start_step)
    best = evaluation.best_record()
    if best is not None and not checkpointer.reconcile_best(
        best["step"], evaluation.best_info()):
      log.warning("the checkpoint of the best round (step %d) was lost; "
                  "checkpoints/best keeps an earlier one", best["step"])
    evaluation.extra_summary["checkpoints"] = checkpointer.info()
    evaluation.write_summary(finished=False)
  # A run killed after its early-stopping round is finished: no more rounds.
  stopped = evaluation.should_stop()
  if stopped and verbose:
    print(f"The run in --workdir had already stopped early at step "
          f"{start_step}; finishing it", flush=True)
  callbacks = [callbacks_lib.NonFiniteGuard(eva), evaluation,
               checkpoint_lib.CheckpointCallback(checkpointer, evaluation)]
  board = None
  logdir = os.path.join(config.workdir, "tensorboard")
  if resume_from is not None and os.path.isdir(logdir):
    callbacks_lib.truncate_events(logdir, start_step)
  if config.tensorboard:
    board = callbacks_lib.TensorBoardCallback(
        logdir, eva, every=max(1, eva // 100), train_pairs=ds.train,
        item_labels=ds.item_labels)
    callbacks.append(board)

  start = time.perf_counter()
  try:
    if not stopped:
      model.fit(sampler.dataset(start_step), initial_epoch=start_step // eva,
                epochs=config.train_steps // eva, steps_per_epoch=eva,
                callbacks=callbacks, verbose=verbose, shuffle=False)
  except callbacks_lib.NonFiniteLossError as e:
    last = checkpointer.info().get("last")
    kept = (f"the last good checkpoint, step {last['step']} "
            f"({os.path.join(config.workdir, last['path'])}), is kept"
            if last else "no checkpoint was written before it")
    error = callbacks_lib.NonFiniteLossError(
        f"{e}; {kept}; try a lower --learning_rate or check the item features")
    evaluation.extra_summary.update(error=str(error),
                                    checkpoints=checkpointer.info())
    evaluation.write_summary(finished=False)
    raise error from None
  finally:
    if board is not None:
      board.close()
  evaluation.extra_summary["checkpoints"] = checkpointer.info()
  summary = evaluation.summarize(finished=True)
  best = summary["checkpoints"].get("best")
  summary["best_checkpoint"] = (None if best is None
                                else dict(best, **evaluation.best_info()))
  if start_step:
    summary["started_from_step"] = start_step
  summary["train_seconds"] = round(time.perf_counter() - start, 1)
  summary["dataset"] = ds.summary()
  summary["feature_sources"] = dict(ds.feature_sources)
  best_record = evaluation.best_record()
  last_step = evaluation.records[-1]["step"] if evaluation.records else start_step
  summary["early_stopping"] = {
      "patience": config.patience,
      "stopped_at_step": last_step,
      "reason": ("early_stopping" if evaluation.should_stop()
                 and last_step < config.train_steps else "train_steps"),
      "best_step": None if best_record is None else best_record["step"],
      "rounds_since_best": evaluation.rounds_since_best(),
  }
  export_ds, export_which = ds, "best" if best is not None else "last"
  if evaluation.select_split == "valid" and best is not None:
    # The result of a run that selects on validation: the best round's
    # weights, restored from checkpoints/best and evaluated on test again
    # (the same numbers as its record, now from the restored model).
    step = checkpoint_lib.restore(model, config.workdir, "best")
    summary["results"] = {"best": {
        "step": step, "trained_on": "train",
        "selected_by": f"validation {config.select_metric}",
        "valid": best_record.get("valid"),
        "test": evaluation.evaluators["test"](),
    }}
    if config.refit:
      refit = _refit(config, ds, protocol_info, step, verbose, strategy)
      summary["refit"] = summary["results"]["refit"] = refit
      # The exported model is the refit one (trained on more data, the
      # number --refit reports); its seen items are train + validation.
      export_ds = _refit_dataset(ds)
      export_which = REFIT
  if config.export:
    # Lazy: export imports TFRS (see maml_tf/retrieval.py); --noexport runs
    # never load it. The exported weights are the best round's, or the refit
    # model's with --refit.
    from maml_tf import export as export_lib
    if export_which == REFIT:
      step = checkpoint_lib.restore(
          model, os.path.join(config.workdir, REFIT), "last")
    else:
      step = checkpoint_lib.restore(model, config.workdir, export_which)
    which = export_which
    summary["export"] = export_lib.export_from_run(
        config, model, export_ds, info={"step": step, "which": which})
  eval_lib.write_json_atomic(os.path.join(config.workdir, "metrics.json"), summary)
  if verbose:
    print(eval_lib.metrics_table(summary, config.topk), flush=True)
    if best is not None and not is_refit:
      how = summary["best_checkpoint"]
      print(f"Best checkpoint: {os.path.join(config.workdir, best['path'])} "
            f"(step {best['step']}, selected by {how['selected_by']} "
            f"{how['metric']})", flush=True)
    stop = summary["early_stopping"]
    if stop["reason"] == "early_stopping":
      print(f"Stopped early at step {stop['stopped_at_step']} "
            f"(--patience={stop['patience']})", flush=True)
    if "refit" in summary:
      print(f"Refit on train + validation for {summary['refit']['step']} "
            f"steps: {summary['refit']['workdir']}", flush=True)
    if config.export:
      print(f"Exported the {which} round (step {step}) to {summary['export']}",
            flush=True)
  return summary


def _refit_dataset(ds: Dataset) -> Dataset:
  """Train + validation as the train split; no validation; test as is."""
  return dataclasses.replace(
      ds, name=f"{ds.name}+valid", train=np.concatenate([ds.train, ds.valid]),
      valid=np.zeros((0, 2), np.int64), train_time=None)


def _refit(config: Config, ds: Dataset, protocol_info: dict, steps: int,
           verbose: int, strategy) -> dict:
  """--refit: a fresh model, same config, seed and --init_from, trained on
  train + validation for `steps` steps in <workdir>/refit (a workdir of its
  own: checkpoints, metrics, resumable). Returns the "refit" block of metrics.json:
  its test metrics at that step.
  """
  workdir = os.path.join(config.workdir, REFIT)
  # --init_from is kept: the refit starts from the weights the selected run
  # started from (--restore_from is a run's own history: not carried over).
  refit_config = dataclasses.replace(
      config, workdir=workdir, train_steps=steps, patience=0, refit=False,
      export=False, overwrite=False, restore_from=None)
  refit_ds = _refit_dataset(ds)
  info = dict(protocol_info, refit="train + validation pooled as train",
              sizes={"train": int(len(refit_ds.train)), "valid": 0,
                     "test": int(len(refit_ds.test))})
  summary = None
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      previous = json.load(f)
    if previous.get("finished") is True:
      if previous.get("last", {}).get("step") == steps:
        summary = previous  # finished before the main run was interrupted
      else:  # a refit of another best round: replace it
        refit_config = dataclasses.replace(refit_config, overwrite=True)
  except (OSError, ValueError, AttributeError):
    pass  # none yet, or an interrupted one: prepare_workdir resumes it
  if summary is None:
    if verbose:
      print(f"Refit: training a fresh model on train + validation "
            f"({len(refit_ds.train)} pairs) for {steps} steps in {workdir}",
            flush=True)
    lock = lock_workdir(workdir)
    try:
      resume_from = prepare_workdir(refit_config)
      summary = _train(refit_config, None, verbose, strategy, resume_from,
                       prepared=(refit_ds, info))
    finally:
      lock.close()
  last = summary["last"]
  return {"step": last["step"], "trained_on": "train+valid",
          "train_pairs": int(len(refit_ds.train)), "workdir": workdir,
          "test": last["test"]}
