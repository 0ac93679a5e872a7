"""`train_and_evaluate(config)`: the whole run, as plain function calls.

The run's steps, each a function of a screen or less, in the order they run:
`_load` (data, split by the protocol) -> `_check_run` (rules that need the
data) -> `_write_run_files` (flags.txt, vocab/) -> `build_model` ->
`_start` (resume, --restore_from or --init_from) -> `_evaluation` (the
per-round callback and its extra measures) -> `_resume_records` ->
`_callbacks` -> `_fit` -> `report.summarize` -> `_complete_per_user` ->
`_select` (the best round restored, --refit) -> `_export` -> per_user.npz
and metrics.json -> `report.print_summary`.

flags -> Config -> Dataset -> PairSampler -> model.fit with the evaluation,
checkpoint and TensorBoard callbacks -> in the workdir: metrics.jsonl,
metrics.json, per_user.npz (maml_tf/evaluate/per_user.py), flags.txt,
checkpoints/ (best/ apart) and tensorboard/.

One Keras "epoch" is one evaluation round of `eva_batches` steps; the release
trained forever and printed test metrics each round, the port trains
`train_steps` steps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Optional


import keras

from maml_tf import fileio
from maml_tf.config import Config
from maml_tf.config_rules import VALIDATION_SOURCES
from maml_tf.data import vocab as vocab_lib
from maml_tf.data.dataset import Dataset
from maml_tf.data.sampler import PairSampler
from maml_tf.errors import UsageError
from maml_tf.evaluate import callback as callback_lib
from maml_tf.evaluate import explanation as explanation_lib
from maml_tf.evaluate import per_user as per_user_lib
from maml_tf.evaluate import preservation as preservation_lib
from maml_tf.train import callbacks as callbacks_lib
from maml_tf.train import checkpoint as checkpoint_lib
from maml_tf.train import distribute
from maml_tf.train import refit as refit_lib
from maml_tf.train import report
from maml_tf.train.build import (_require_tensorboard, build_evaluators,
                                 build_model)
from maml_tf.train.inputs import load_data, prepare_data, preservation_dataset
from maml_tf.train.workdir import (REFIT, clear_workdir, lock_workdir,
                                   prepare_workdir)

log = logging.getLogger("maml_tf")


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
  if verbose:
    print(distribute.describe(strategy), flush=True)
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
  ds, protocol_info = _load(config, dataset, prepared)
  _check_run(config, ds, "refit" in protocol_info)
  _write_run_files(config, ds, verbose)
  model = build_model(config, ds, strategy)
  checkpointer = checkpoint_lib.Checkpointer(model, config.workdir,
                                             config.keep_checkpoints)
  start_step = _start(config, model, checkpointer, resume_from, verbose)
  sampler = PairSampler(ds.train, config.batch_size, config.num_neg, config.seed)
  evaluation = _evaluation(config, ds, model, protocol_info, verbose)
  is_refit = "refit" in protocol_info
  if resume_from is not None:
    _resume_records(evaluation, checkpointer, start_step)
  # A run killed after its early-stopping round is finished: no more rounds.
  stopped = evaluation.should_stop()
  if stopped and verbose:
    print(f"The run in --workdir had already stopped early at step "
          f"{start_step}; finishing it", flush=True)
  callbacks, board = _callbacks(config, ds, evaluation, checkpointer,
                                resume_from, start_step)
  start = time.perf_counter()
  _fit(config, model, sampler, evaluation, checkpointer, callbacks, board,
       start_step, stopped, verbose)
  summary = report.summarize(config, ds, evaluation, checkpointer, start_step,
                             time.perf_counter() - start)
  _complete_per_user(config, model, evaluation, summary, start_step)
  export_ds, export_which = _select(config, ds, model, evaluation, summary,
                                    protocol_info, verbose, strategy)
  step = None
  if config.export:
    step = _export(config, model, export_ds, export_which, summary)
  summary["per_user"] = per_user_lib.write(config.workdir, evaluation.per_user)
  fileio.write_json_atomic(os.path.join(config.workdir, "metrics.json"), summary)
  if verbose:
    report.print_summary(config, summary, is_refit, export_which, step)
  return summary


def _load(config: Config, dataset: Optional[Dataset], prepared):
  """(Dataset split by the protocol, the protocol's description)."""
  if prepared is not None:
    return prepared
  if dataset is None:
    return load_data(config, with_info=True)
  return prepare_data(config, dataset, with_info=True)


def _check_run(config: Config, ds: Dataset, is_refit: bool = False):
  """The rules of a run that need its data (UsageError on the first broken)."""
  if not len(ds.valid):
    if config.test_rounds == "last" and not is_refit:
      # (A refit's result is its last round: it needs no other.)
      raise UsageError(f"`--test_rounds` must be all when there is no "
                       f"validation split: the best round is then chosen on "
                       f"test, every round (or use {VALIDATION_SOURCES}). "
                       f"Received: last")
    if config.patience:
      raise UsageError(f"`--patience` must be 0 when there is no validation "
                       f"split to stop on (or use {VALIDATION_SOURCES}). "
                       f"Received: {config.patience}")
    if config.refit:
      raise UsageError(f"`--refit` needs a run that selects on validation: "
                       f"use {VALIDATION_SOURCES}. Received: --refit")
  if config.batch_size > len(ds.train):
    raise UsageError(f"`--batch_size` must be <= the number of train pairs "
                     f"({len(ds.train)}). Received: {config.batch_size}")


def _write_run_files(config: Config, ds: Dataset, verbose: int):
  """flags.txt (a flagfile that reruns the run) and vocab/; the dataset's
  summary on the console."""
  fileio.write_text_atomic(os.path.join(config.workdir, "flags.txt"),
                           config.to_flagfile())
  vocab_lib.write_vocab(config.workdir, ds)
  if verbose:
    print(ds.summary(), flush=True)
    for note in ds.notes:
      print(f"  {note}", flush=True)
    for source in ds.feature_sources.values():  # each starts "<name>: "
      print(f"  {source}", flush=True)


def _start(config: Config, model, checkpointer, resume_from, verbose) -> int:
  """Restores what the run starts from; returns its first step."""
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
  return start_step


def _evaluation(config: Config, ds: Dataset, model, protocol_info, verbose):
  """The per-round evaluation callback, with the run's extra measures."""
  evaluation = callback_lib.EvaluationCallback(
      build_evaluators(config, ds, model), config.eva_batches, config.workdir,
      config.select_metric, modalities=ds.modalities,
      progress=None if verbose == 1 else False, patience=config.patience,
      test_rounds=config.test_rounds, last_step=config.train_steps)
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
  if "refit" in protocol_info:
    # No selection inside a --refit run: its last round is its result (the
    # best/ copy it keeps is by test, for resuming only; never reported).
    evaluation.extra_summary["selection"] = (
        "none: a --refit run (train + validation, for the selected round's "
        "steps); its last round is the result")
  return evaluation


def _resume_records(evaluation, checkpointer, start_step):
  """A resumed run keeps its rounds up to `start_step` and its best/."""
  evaluation.resume(start_step)
  best = evaluation.best_record()
  if best is not None and not checkpointer.reconcile_best(
      best["step"], evaluation.best_info()):
    log.warning("the checkpoint of the best round (step %d) was lost; "
                "checkpoints/best keeps an earlier one", best["step"])
  evaluation.extra_summary["checkpoints"] = checkpointer.info()
  evaluation.write_summary(finished=False)


def _callbacks(config, ds, evaluation, checkpointer, resume_from, start_step):
  """(the fit's callbacks, the TensorBoard callback or None)."""
  eva = config.eva_batches
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
  return callbacks, board


def _fit(config, model, sampler, evaluation, checkpointer, callbacks, board,
         start_step, stopped, verbose):
  """model.fit over the remaining rounds; a non-finite loss ends the run with
  its last good checkpoint kept and said."""
  eva = config.eva_batches
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


def _complete_per_user(config, model, evaluation, summary, start_step):
  """The per-user test values of rounds this process did not evaluate
  (before a resume), by the rule of maml_tf/evaluate/per_user.py: the last
  round's and, for a run that selects on test, the best round's, from the
  workdir's per_user.npz for the same step, else evaluated once here (the
  weights the model holds when no round ran after the resume;
  checkpoints/best). A run that selects on validation gets "best" from
  `_select`'s evaluation."""
  test = evaluation.evaluators.get("test")
  if not evaluation.records or not hasattr(test, "per_user"):
    return  # an evaluator without per-user values: nothing to keep
  kept = evaluation.per_user
  earlier = per_user_lib.read_blocks(
      os.path.join(config.workdir, per_user_lib.FILE))
  last = evaluation.records[-1]["step"]
  if kept.get("last", {}).get("step") != last:
    if earlier.get("last", {}).get("step") == last:
      kept["last"] = earlier["last"]
    elif last == start_step:
      test()
      evaluation.keep_per_user("last", last)
  best = evaluation.best_record()["step"]
  if evaluation.select_split == "test" and kept.get("best", {}).get("step") != best:
    if earlier.get("best", {}).get("step") == best:
      kept["best"] = earlier["best"]
    elif summary["checkpoints"].get("best") is not None:
      step = checkpoint_lib.restore(model, config.workdir, "best")
      test()
      evaluation.keep_per_user("best", step)


def _select(config, ds, model, evaluation, summary, protocol_info, verbose,
            strategy):
  """A run that selects on validation: the best round restored and its test
  metrics in summary["results"], then --refit. Returns (the dataset of the
  exported model, which checkpoint it exports: best, last or refit)."""
  best = summary["checkpoints"].get("best")
  export_ds, export_which = ds, "best" if best is not None else "last"
  if evaluation.select_split == "valid" and best is not None:
    # The result of a run that selects on validation: the best round's
    # weights, restored from checkpoints/best and evaluated on test again
    # (the same numbers as its record, now from the restored model).
    step = checkpoint_lib.restore(model, config.workdir, "best")
    summary["results"] = {"best": {
        "step": step, "trained_on": "train",
        "selected_by": f"validation {config.select_metric}",
        "valid": evaluation.best_record().get("valid"),
        "test": evaluation.evaluators["test"](),
    }}
    evaluation.keep_per_user("best", step)  # the per-user values of that test
    if config.refit:
      refit = refit_lib.refit(config, ds, protocol_info, step, verbose,
                              strategy, _train)
      summary["refit"] = summary["results"]["refit"] = refit
      evaluation.per_user["refit"] = per_user_lib.read_block(
          os.path.join(refit["workdir"], per_user_lib.FILE), "last")
      # The exported model is the refit one (trained on more data, the
      # number --refit reports); its seen items are train + validation.
      export_ds = refit_lib.refit_dataset(ds)
      export_which = REFIT
  return export_ds, export_which


def _export(config, model, export_ds, export_which, summary) -> int:
  """Exports the chosen checkpoint's weights; returns its step."""
  # Lazy: export imports TFRS (see maml_tf/export/retrieval.py); --noexport
  # runs never load it. The exported weights are the best round's, or the
  # refit model's with --refit.
  from maml_tf.export import saved_model as export_lib
  if export_which == REFIT:
    step = checkpoint_lib.restore(
        model, os.path.join(config.workdir, REFIT), "last")
  else:
    step = checkpoint_lib.restore(model, config.workdir, export_which)
  summary["export"] = export_lib.export_from_run(
      config, model, export_ds, info={"step": step, "which": export_which})
  return step
