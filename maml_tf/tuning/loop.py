"""Validation-driven hyper-parameter search over whole training runs.

Each trial of a search is one `train.train_and_evaluate(config)` run: the
trial's hyper-parameters applied to a base Config, in its own workdir
<tune_dir>/trials/<trial_id>/, without export. Its objective is the run's
validation-selected metric: the best round's validation `--select_metric`
(maximised). A base Config whose data, split by its protocol, has no
validation split is refused before anything is written (`check_validation`;
the split protocol, --validation_fraction, a valid.csv, a RecBole
.valid.inter or MMRec's x_label 1 each give one): a search never selects on
the test set.

The trials come from one of keras-tuner's oracles (random search, Bayesian
optimisation, Hyperband), driven by a small `BaseTuner` whose `run_trial`
trains a run and returns the objective; no Keras model is built per trial
by keras-tuner itself. Its state lives in <tune_dir>/keras_tuner/ and is
reloaded when the same search is started again, so an interrupted search
resumes: finished trials are kept, the interrupted trial is run again with
the same values in the same workdir, where `train_and_evaluate` resumes from
the run's last checkpoint.

The search space (each model's `SEARCH_SPACE`, narrowed by --search_space)
is `maml_tf.tuning.space`; the trials' records, best.flags and the results
table are `maml_tf.tuning.trials`.

Hyperband's budget unit: one keras-tuner epoch is one evaluation round of
`eva_batches` steps, so a trial with `tuner/epochs` = e trains e x eva_batches
steps, and max_epochs = train_steps / eva_batches. A trial that continues an
earlier one (`tuner/trial_id`) starts from that trial's last checkpoint
(`--restore_from`), at step `tuner/initial_epoch` x eva_batches.

Outputs in <tune_dir>: trials.jsonl (one object per trial: status, values,
the validation objective and the test metrics of that same round), best.flags
(a flagfile for scripts/train.py: the base flags with the best trial's
values), search.json (what the search is, to refuse resuming another).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Optional, Tuple

from maml_tf import config as config_lib
from maml_tf import fileio
from maml_tf.config import Config
from maml_tf.config_rules import VALIDATION_SOURCES
from maml_tf.errors import MamlError, UsageError
from maml_tf.tuning import trials as trials_lib
from maml_tf.tuning.space import apply_values, build_space, fail, to_hyperparameters
from maml_tf.tuning.trials import (BEST_FLAGS, TRIALS_JSONL, failure_message,
                                   read_json, results_table)

TUNERS = ("random", "bayesian", "hyperband")

KERAS_TUNER_DIR = "keras_tuner"
TRIALS_DIR = "trials"
SEARCH_JSON = "search.json"
BEST_WORKDIR = "best"
# Base flags a resumed search may change (they do not change what a trial
# computes); train_steps is the budget and may not.
_RESUMABLE = config_lib.names(resume={config_lib.RESUME_ANY})


class SearchError(MamlError):
  """The search stopped (e.g. too many trials in a row failed)."""


@dataclasses.dataclass(frozen=True)
class TuneSettings:
  """How to search (the base run's settings are a Config).

  Attributes:
    tune_dir: the search's folder.
    tuner: random, bayesian or hyperband.
    max_trials: trials at most (Hyperband may stop earlier, at the end of
      its one iteration).
    search_space: restricts or overrides the model's space: `name` keeps the
      model's entry for that flag, `name=spec` gives one (float:LO:HI[:log],
      int:LO:HI, choice:A|B|C); empty: the model's whole space.
    tuner_seed: the oracle's seed (>= 1; keras-tuner draws a random seed for 0).
    hyperband_factor: Hyperband's reduction factor (>= 2).
    overwrite: replace a search already in tune_dir instead of resuming it.
  """

  tune_dir: str = "runs/tune"
  tuner: str = "random"
  max_trials: int = 10
  search_space: Tuple[str, ...] = ()
  tuner_seed: int = 1
  hyperband_factor: int = 3
  overwrite: bool = False

  def validate(self) -> "TuneSettings":
    if not self.tune_dir:
      fail("tune_dir", "must be a folder path", self.tune_dir)
    if self.tuner not in TUNERS:
      fail("tuner", "must be one of " + ", ".join(TUNERS), self.tuner)
    for flag, low in (("max_trials", 1), ("tuner_seed", 1),
                      ("hyperband_factor", 2)):
      value = getattr(self, flag)
      if isinstance(value, bool) or not isinstance(value, int):
        fail(flag, "must be an integer", value)
      if value < low:
        fail(flag, f"must be >= {low}", value)
    return self


# --- The search ----------------------------------------------------------------


def objective_name(config: Config) -> str:
  return f"valid_{config.select_metric}"


def check_base(base: Config):
  """Refuses a base run that cannot be tuned, from its flags alone."""
  base.validate()
  if base.restore_from:
    fail("restore_from", "is not supported by a search (each trial starts "
         "afresh)", base.restore_from)


def check_validation(base: Config, dataset=None):
  """Refuses a base run without a validation split: its data (`dataset`, or
  the one the config names, loaded here), split by its protocol, holds no
  validation pair. Writes nothing.

  Raises:
    UsageError: no validation split (a search never selects on test); the
      data's own errors (DataError, UsageError) as a run would raise them.
  """
  from maml_tf import train as train_lib  # pylint: disable=g-import-not-at-top
  ds = (train_lib.load_data(base) if dataset is None
        else train_lib.prepare_data(base, dataset))
  if not len(ds.valid):
    raise UsageError(
        f"`maml-tf tune` needs a validation split to compare trials on "
        f"(tuning on test is refused): use {VALIDATION_SOURCES}. Received: "
        f"--protocol={base.protocol}, --validation_fraction="
        f"{base.validation_fraction:g}, and {ds.name} has no validation pair")


def _base_flags(config: Config) -> dict:
  from maml_tf.train.workdir import read_flagfile  # pylint: disable=g-import-not-at-top
  return {k: v for k, v in read_flagfile(config.to_flagfile()).items()
          if k not in _RESUMABLE}


def budget_text(base: Config, settings: TuneSettings) -> str:
  rounds = base.train_steps // base.eva_batches
  if settings.tuner == "hyperband":
    return (f"hyperband: at most {settings.max_trials} trials, each at most "
            f"{base.train_steps} steps (tuner/epochs x {base.eva_batches}; "
            f"max_epochs {rounds} rounds, factor {settings.hyperband_factor}, "
            f"one iteration)")
  return (f"{settings.tuner}: {settings.max_trials} trials x {base.train_steps} "
          f"steps = {settings.max_trials * base.train_steps:,} training steps")


def _lock(tune_dir):
  """Holds <tune_dir>/.lock for one search (a killed process releases it)."""
  return fileio.lock_folder(tune_dir, "tune_dir", "is in use by another search")


class Search:
  """One search: its folder, space, oracle, and the trials it runs."""

  def __init__(self, base: Config, settings: TuneSettings, dataset=None,
               verbose: int = 2):
    settings.validate()
    check_base(base)
    self.base, self.settings = base, settings
    self.dataset, self.verbose = dataset, verbose
    self.params = build_space(base, settings.search_space)
    # Last: it loads the data (the flags' own errors come first, cheaply).
    check_validation(base, dataset)
    self.tune_dir = os.path.abspath(settings.tune_dir)
    self.objective = objective_name(base)

  # Paths.
  def trial_workdir(self, trial_id) -> str:
    return os.path.join(self.tune_dir, TRIALS_DIR, str(trial_id))

  @property
  def identity(self) -> dict:
    """What makes a search the same search (compared before resuming)."""
    s = self.settings
    return {"tuner": s.tuner, "tuner_seed": s.tuner_seed,
            "hyperband_factor": s.hyperband_factor if s.tuner == "hyperband"
                                else None,
            "space": [p.describe() for p in self.params],
            "objective": self.objective, "base": _base_flags(self.base)}

  def _prepare_dir(self):
    path = os.path.join(self.tune_dir, SEARCH_JSON)
    if self.settings.overwrite:
      for name in (KERAS_TUNER_DIR, TRIALS_DIR, BEST_WORKDIR):
        shutil.rmtree(os.path.join(self.tune_dir, name), ignore_errors=True)
      for name in (TRIALS_JSONL, BEST_FLAGS, SEARCH_JSON):
        if os.path.exists(os.path.join(self.tune_dir, name)):
          os.remove(os.path.join(self.tune_dir, name))
    there = read_json(path)
    here = self.identity
    if there is None and os.path.isdir(os.path.join(self.tune_dir,
                                                    KERAS_TUNER_DIR)):
      raise UsageError(f"`--tune_dir` holds a search without {SEARCH_JSON}; "
                       f"pass --overwrite to start afresh or choose another "
                       f"folder. Received: {self.settings.tune_dir!r}")
    if there is not None and there.get("search") != here:
      differs = _difference(there.get("search") or {}, here)
      raise UsageError(
          f"`--tune_dir` holds another search ({differs}); "
          f"rerun its command to resume it, pass --overwrite to start afresh, "
          f"or choose another folder. Received: {self.settings.tune_dir!r}")
    fileio.write_text_atomic(path, json.dumps(
        {"search": here, "max_trials": self.settings.max_trials,
         "budget": budget_text(self.base, self.settings)}, indent=2) + "\n")

  def _oracle(self):
    import keras_tuner  # pylint: disable=g-import-not-at-top
    s = self.settings
    common = dict(objective=keras_tuner.Objective(self.objective, "max"),
                  hyperparameters=to_hyperparameters(self.params),
                  seed=s.tuner_seed)
    if s.tuner == "random":
      return keras_tuner.oracles.RandomSearchOracle(max_trials=s.max_trials,
                                                    **common)
    if s.tuner == "bayesian":
      try:
        import scipy  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
        import sklearn  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      except ImportError:
        raise UsageError("`--tuner` bayesian needs scipy and scikit-learn (pip"
                         " install scikit-learn). Received: 'bayesian'") from None
      return keras_tuner.oracles.BayesianOptimizationOracle(
          max_trials=s.max_trials, **common)
    oracle = keras_tuner.oracles.HyperbandOracle(
        max_epochs=self.base.train_steps // self.base.eva_batches,
        factor=s.hyperband_factor, hyperband_iterations=1, **common)
    oracle.max_trials = s.max_trials  # the Oracle's own cap on trials
    return oracle

  def run(self) -> dict:
    """Runs (or resumes) the search; returns {"trials": [...], "best": ...}."""
    lock = _lock(self.tune_dir)
    try:
      self._prepare_dir()
      tuner = _make_tuner(self)
      if self.verbose:
        print(f"Search in {self.tune_dir}: {budget_text(self.base, self.settings)}"
              f"; objective: validation {self.base.select_metric} (max)",
              flush=True)
        print("Space: " + ", ".join(p.describe() for p in self.params),
              flush=True)
      try:
        tuner.search()
      except RuntimeError as e:  # keras-tuner: too many failures in a row
        self.write_reports()
        last = [r for r in self.records if r["status"] == "FAILED"]
        reason = last[-1].get("message") if last else None
        raise SearchError(f"the search stopped: {str(e).splitlines()[0]}"
                          + (f"; the last: {reason}" if reason else "")) from None
      result = self.write_reports()
    finally:
      lock.close()
    if self.verbose:
      print(results_table(result["trials"], self.base.select_metric), flush=True)
      if result["best"]:
        print(f"Best: trial {result['best']['trial_id']}; flagfile "
              f"{os.path.join(self.tune_dir, BEST_FLAGS)}", flush=True)
    return result

  # One trial.
  def run_trial(self, trial) -> dict:
    from keras_tuner import errors as kt_errors  # pylint: disable=g-import-not-at-top
    from maml_tf import train as train_lib  # pylint: disable=g-import-not-at-top
    values = trial.hyperparameters.values
    # A trial is scored on validation only, so it never refits (a base
    # --refit is kept for best.flags, whose run reports the refit model).
    overrides = dict(workdir=self.trial_workdir(trial.trial_id), export=False,
                     overwrite=False, restore_from=None, refit=False)
    if "tuner/epochs" in values:
      overrides["train_steps"] = values["tuner/epochs"] * self.base.eva_batches
      parent = values.get("tuner/trial_id")
      if parent is not None and values.get("tuner/initial_epoch", 0) > 0:
        overrides["restore_from"] = self.trial_workdir(parent)
    try:
      config = apply_values(self.base, values, self.params, **overrides)
      summary = _finished(config, train_lib)
      if summary is None:
        summary = train_lib.train_and_evaluate(config, self.dataset,
                                               verbose=self.verbose)
    except MamlError as e:
      raise kt_errors.FailedTrialError(str(e)) from None
    best = summary.get("best") or {}
    value = (best.get("valid") or {}).get(self.base.select_metric)
    if summary.get("select_split") != "valid" or value is None:
      raise kt_errors.FailedTrialError(
          "no validation round was evaluated (the run has no validation "
          "split)")
    return {self.objective: float(value)}

  # Reports.
  def record(self, trial) -> dict:
    return trials_lib.trial_record(trial, self.params, self.base,
                                   self.trial_workdir(trial.trial_id))

  def write_reports(self) -> dict:
    """Rewrites trials.jsonl and best.flags from the oracle's trials."""
    self.records = [self.record(trial)
                    for trial in trials_lib.in_start_order(self.tuner.oracle)]
    trials_lib.write_records(self.tune_dir, self.records)
    best = trials_lib.best_record(self.records)
    if best is not None:
      fileio.write_text_atomic(os.path.join(self.tune_dir, BEST_FLAGS),
                               self.best_flagfile(best))
    return {"trials": self.records, "best": best}

  def best_flagfile(self, best: dict) -> str:
    config = apply_values(self.base, best["values"], self.params,
                          workdir=os.path.join(self.tune_dir, BEST_WORKDIR),
                          overwrite=False)
    return trials_lib.best_flagfile(
        best, self.records, config, self.tune_dir,
        budget_text(self.base, self.settings), self.base.select_metric,
        self.params)


def _difference(there: dict, here: dict) -> str:
  for key in ("tuner", "tuner_seed", "hyperband_factor", "objective", "space"):
    if there.get(key) != here.get(key):
      return f"{key}: {there.get(key)} there, {here.get(key)} here"
  a, b = there.get("base") or {}, here.get("base") or {}
  for name in sorted(set(a) | set(b)):
    if a.get(name) != b.get(name):
      return f"--{name}: {a.get(name)} there, {b.get(name)} here"
  return "other settings"


def _finished(config, train_lib) -> Optional[dict]:
  """The summary of a finished run of this config in its workdir, or None.

  A search killed after a trial's run finished but before keras-tuner
  recorded it runs that trial again; its run is not trained twice.
  """
  summary = read_json(os.path.join(config.workdir, "metrics.json"))
  if not summary or summary.get("finished") is not True:
    return None
  if train_lib.changed_flags(config.workdir, config):
    return None  # train_and_evaluate refuses it, naming the difference
  return summary


def _make_tuner(search: Search):
  from keras_tuner.engine import base_tuner  # pylint: disable=g-import-not-at-top

  class RunTuner(base_tuner.BaseTuner):
    """Each trial is a training run; the oracle sees only its objective."""

    def run_trial(self, trial, *args, **kwargs):
      return search.run_trial(trial)

    def on_trial_end(self, trial):
      super().on_trial_end(trial)  # the oracle records and saves the trial
      search.write_reports()
      if search.verbose and str(trial.status) == "FAILED":
        print(f"Trial {trial.trial_id} failed: {failure_message(trial)}",
              flush=True)

  oracle = search._oracle()  # pylint: disable=protected-access
  oracle.verbose = 1 if search.verbose else 0
  search.tuner = RunTuner(oracle, directory=search.tune_dir,
                          project_name=KERAS_TUNER_DIR, overwrite=False)
  return search.tuner


def search(base: Config, settings: TuneSettings, dataset=None,
           verbose: int = 2) -> dict:
  """Runs or resumes a search; returns {"trials": [records], "best": record}.

  Args:
    base: the base run; every trial is it with the trial's values, its own
      workdir and no export. Needs a validation split (`VALIDATION_SOURCES`),
      checked on its data before anything is written.
    settings: the tuner, budget, space and folder.
    dataset: an already loaded Dataset for every trial (None: the one the
      config names, loaded per trial).
    verbose: 0 silent; else the Keras verbosity of each run (1 or 2).

  Raises:
    UsageError: bad settings, an untunable base, another search in tune_dir.
    SearchError: keras-tuner stopped the search (trials failing in a row).
  """
  return Search(base, settings, dataset, verbose).run()
