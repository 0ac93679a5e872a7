"""Validation-driven hyper-parameter search over whole training runs.

Each trial of a search is one `train.train_and_evaluate(config)` run: the
trial's hyper-parameters applied to a base Config, in its own workdir
<tune_dir>/trials/<trial_id>/, without export. Its objective is the run's
validation-selected metric: the best round's validation `--select_metric`
(maximised). A base Config without a validation split is refused: a search
never selects on the test set.

The trials come from one of keras-tuner's oracles (random search, Bayesian
optimisation, Hyperband), driven by a small `BaseTuner` whose `run_trial`
trains a run and returns the objective; no Keras model is built per trial
by keras-tuner itself. Its state lives in <tune_dir>/keras_tuner/ and is
reloaded when the same search is started again, so an interrupted search
resumes: finished trials are kept, the interrupted trial is run again with
the same values in the same workdir, where `train_and_evaluate` resumes from
the run's last checkpoint.

Search spaces are declared next to each model, as the class attribute
`SEARCH_SPACE`: {flag name: spec}, spec one of

  ("float", low, high, "log" | "linear")
  ("int", low, high)
  ("choice", [value, ...])

optionally followed by a {flag: value} dict: the entry is searched only when
the base run has those flag values (e.g. {"mode": "paper"} for weights that
count only in paper mode). `search_space(model_name)` reads it.

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
import importlib
import json
import math
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

try:
  import fcntl
except ImportError:  # not POSIX: no lock
  fcntl = None

from maml_tf import config as config_lib
from maml_tf.config import Config
from maml_tf.errors import MamlError, UsageError

TUNERS = ("random", "bayesian", "hyperband")
KINDS = ("float", "int", "choice")
SAMPLINGS = ("log", "linear")

# Flags a search may not vary: the budget, the objective and the data it is
# measured on, and where and how a run writes (each Config field says so).
FIXED = config_lib.names(searchable=False)

KERAS_TUNER_DIR = "keras_tuner"
TRIALS_DIR = "trials"
TRIALS_JSONL = "trials.jsonl"
BEST_FLAGS = "best.flags"
SEARCH_JSON = "search.json"
BEST_WORKDIR = "best"
# Base flags a resumed search may change (they do not change what a trial
# computes); train_steps is the budget and may not.
_RESUMABLE = config_lib.names(resume={config_lib.RESUME_ANY})

_DEFAULTS = Config()
_FIELDS = tuple(f.name for f in dataclasses.fields(Config))


class SearchError(MamlError):
  """The search stopped (e.g. too many trials in a row failed)."""


def _fail(flag, rule, value):
  raise UsageError(f"`--{flag}` {rule}. Received: {value!r}")


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
      _fail("tune_dir", "must be a folder path", self.tune_dir)
    if self.tuner not in TUNERS:
      _fail("tuner", "must be one of " + ", ".join(TUNERS), self.tuner)
    for flag, low in (("max_trials", 1), ("tuner_seed", 1),
                      ("hyperband_factor", 2)):
      value = getattr(self, flag)
      if isinstance(value, bool) or not isinstance(value, int):
        _fail(flag, "must be an integer", value)
      if value < low:
        _fail(flag, f"must be >= {low}", value)
    return self


# --- Search spaces -----------------------------------------------------------

def search_space(model_name: str) -> dict:
  """The model's declared space, {flag: spec} ({} when it declares none):
  the `SEARCH_SPACE` of the class the registry `maml_tf.models.get` returns
  (importing it loads TensorFlow)."""
  cls = importlib.import_module("maml_tf.models").get(model_name)
  return dict(getattr(cls, "SEARCH_SPACE", None) or {})


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched flag."""

  name: str
  kind: str  # float, int, choice
  low: Any = None
  high: Any = None
  sampling: str = "linear"
  values: Tuple[Any, ...] = ()
  when: Tuple[Tuple[str, Any], ...] = ()  # searched only with these flags

  def describe(self) -> str:
    """The entry in --search_space syntax, e.g. margin=float:0.5:2.5:linear."""
    if self.kind == "choice":
      return f"{self.name}=choice:" + "|".join(map(_show, self.values))
    text = f"{self.name}={self.kind}:{_show(self.low)}:{_show(self.high)}"
    return text + (f":{self.sampling}" if self.kind == "float" else "")

  def applies_to(self, config: Config) -> bool:
    return all(getattr(config, flag) == value for flag, value in self.when)

  def extremes(self) -> Tuple[Any, ...]:
    return self.values if self.kind == "choice" else (self.low, self.high)


def _show(value):
  if isinstance(value, bool):
    return "true" if value else "false"
  return repr(value) if isinstance(value, float) else str(value)


def _field_type(name, source):
  if name not in _FIELDS:
    raise UsageError(f"`--search_space` names no flag of a run ({source}). "
                     f"Received: {name!r}")
  default = getattr(_DEFAULTS, name)
  for kind in (bool, int, float, str):  # bool first: a bool is an int
    if isinstance(default, kind):
      return kind
  raise UsageError(f"`--search_space` can only vary number, text and on/off "
                   f"flags ({source}). Received: {name!r}")


def _cast(value, kind, name, source):
  """`value` as the flag's type, or a one-line error."""
  ok = {bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str)}[kind]
  if not ok or (kind is float and not math.isfinite(value)):
    raise UsageError(f"`--search_space` entry {name} must have "
                     f"{kind.__name__} values ({source}). Received: {value!r}")
  return kind(value)


def parse_spec(name: str, spec, source: str) -> Param:
  """A declared spec tuple -> Param, checked against the flag's type.

  Args:
    name: the flag the entry varies.
    spec: ("float", lo, hi, sampling) | ("int", lo, hi) | ("choice", values),
      optionally followed by a {flag: value} condition.
    source: where the entry comes from, for messages.

  Raises:
    UsageError: the entry breaks a rule (one line naming it).
  """
  bad = lambda rule: UsageError(  # noqa: E731
      f"`--search_space` entry {name} {rule} ({source}). Received: {spec!r}")
  kind = _field_type(name, source)
  if name in FIXED:
    raise bad("is a flag a search may not vary (the budget, the objective, "
              "the data or the outputs)")
  spec = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)
  when = ()
  if spec and isinstance(spec[-1], dict):
    for flag in spec[-1]:
      if flag not in _FIELDS:
        raise bad(f"has a condition on an unknown flag {flag!r}")
    when, spec = tuple(sorted(spec[-1].items())), spec[:-1]
  if not spec or spec[0] not in KINDS:
    raise bad("must start with one of " + ", ".join(KINDS))
  allowed = ("choice",) + ({int: ("int",), float: ("float",)}.get(kind, ()))
  if spec[0] not in allowed:
    flag_kind = {bool: "an on/off", int: "an integer", float: "a float",
                 str: "a text"}[kind]
    raise bad(f"must be {' or '.join(allowed)} for {flag_kind} flag")
  if spec[0] == "choice":
    if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
      raise bad("must be (\"choice\", [values])")
    values = tuple(_cast(v, kind, name, source) for v in spec[1])
    if len(set(values)) != len(values):
      raise bad("must not repeat a value")
    return Param(name, "choice", values=values, when=when)
  if spec[0] == "int":
    if len(spec) != 3:
      raise bad("must be (\"int\", low, high)")
    low, high = (_cast(v, int, name, source) for v in spec[1:])
    sampling = "linear"
  else:
    if len(spec) != 4 or spec[3] not in SAMPLINGS:
      raise bad("must be (\"float\", low, high, \"log\"|\"linear\")")
    low, high = (_cast(v, float, name, source) for v in spec[1:3])
    sampling = spec[3]
    if sampling == "log" and low <= 0:
      raise bad("must have low > 0 with log sampling")
  if not low < high:
    raise bad("must have low < high")
  return Param(name, spec[0], low, high, sampling, when=when)


def parse_entry(text: str) -> Tuple[str, Optional[tuple]]:
  """One --search_space item: `name` -> (name, None); `name=spec` -> (name,
  spec tuple), spec text float:LO:HI[:log|linear], int:LO:HI, choice:A|B."""
  name, sep, spec = (part.strip() for part in text.partition("="))
  if not name:
    _fail("search_space", "items must be a flag name or name=spec", text)
  if not sep:
    return name, None
  kind, _, rest = spec.partition(":")
  parts = rest.split(":") if rest else []
  field_kind = _field_type(name, f"--search_space={text}")

  def number(value, as_type):
    try:
      return as_type(value)
    except ValueError:
      raise UsageError(f"`--search_space` entry {name} must have "
                       f"{as_type.__name__} bounds. Received: {text!r}") from None

  if kind == "choice" and parts:
    values = [v.strip() for v in rest.split("|")]
    if field_kind is bool:
      words = {"true": True, "false": False}
      if any(v.lower() not in words for v in values):
        _fail("search_space", f"entry {name} must choose among true|false", text)
      return name, ("choice", [words[v.lower()] for v in values])
    if field_kind is str:
      return name, ("choice", values)
    return name, ("choice", [number(v, field_kind) for v in values])
  if kind == "int" and len(parts) == 2:
    return name, ("int", number(parts[0], int), number(parts[1], int))
  if kind == "float" and len(parts) in (2, 3):
    sampling = parts[2] if len(parts) == 3 else "linear"
    return name, ("float", number(parts[0], float), number(parts[1], float),
                  sampling)
  _fail("search_space", f"entry {name} must be {name}=float:LO:HI[:log|linear],"
        f" {name}=int:LO:HI or {name}=choice:A|B|...", text)


def build_space(base: Config, entries: Sequence[str] = ()) -> List[Param]:
  """The searched parameters: the model's space, restricted or overridden by
  --search_space `entries`; each extreme value checked against the run's rules.

  Raises:
    UsageError: an unknown or bad entry, an empty space, or an entry whose
      values the base run would refuse (e.g. num_neg for a model that takes 1).
  """
  parsed = [(text,) + parse_entry(text) for text in entries]
  for text, name, _ in parsed:  # before the model's module (TensorFlow) loads
    _field_type(name, f"--search_space={text}")
  source = f"the search space of --model={base.model}"
  declared = {name: parse_spec(name, spec, source)
              for name, spec in search_space(base.model).items()}
  if not entries:
    params = [p for p in declared.values() if p.applies_to(base)]
  else:
    params, seen = [], set()
    for text, name, spec in parsed:
      if name in seen:
        _fail("search_space", f"names {name} twice", ",".join(entries))
      seen.add(name)
      if spec is not None:
        params.append(parse_spec(name, spec, f"--search_space={text}"))
        continue
      if name not in declared:
        _fail("search_space", f"names a flag --model={base.model}'s space does "
              f"not declare ({', '.join(declared) or 'none'}); give its range "
              f"as {name}=float:LO:HI[:log], int:LO:HI or choice:A|B", text)
      param = declared[name]
      if not param.applies_to(base):
        needs = " ".join(f"--{k}={_show(v)}" for k, v in param.when)
        _fail("search_space", f"entry {name} applies only with {needs}", text)
      params.append(param)
  if not params:
    _fail("search_space", f"leaves nothing to search for --model={base.model}",
          ",".join(entries))
  for param in params:
    for value in param.extremes():
      try:
        dataclasses.replace(base, **{param.name: value}).validate()
      except UsageError as e:
        raise UsageError(f"`--search_space` entry {param.describe()} allows "
                         f"values the run refuses: {e}") from None
  return params


def to_hyperparameters(params: Sequence[Param]):
  """keras_tuner.HyperParameters holding one hp.Float/Int/Choice per Param."""
  import keras_tuner  # pylint: disable=g-import-not-at-top
  hp = keras_tuner.HyperParameters()
  for p in params:
    if p.kind == "float":
      hp.Float(p.name, min_value=p.low, max_value=p.high, sampling=p.sampling)
    elif p.kind == "int":
      hp.Int(p.name, min_value=p.low, max_value=p.high)
    else:
      hp.Choice(p.name, list(p.values))
  return hp


def apply_values(base: Config, values: Dict[str, Any],
                 params: Sequence[Param], **overrides) -> Config:
  """The base Config with the trial's values (of `params`; keras-tuner's own
  "tuner/..." entries are ignored) and `overrides`, validated.

  Raises:
    UsageError: the resulting Config breaks a rule.
  """
  changes = {}
  for p in params:
    if p.name in values:
      changes[p.name] = _cast(values[p.name], _field_type(p.name, "trial"),
                              p.name, "trial")
  changes.update(overrides)
  return dataclasses.replace(base, **changes).validate()


# --- The search ----------------------------------------------------------------


def objective_name(config: Config) -> str:
  return f"valid_{config.select_metric}"


def check_base(base: Config):
  """Refuses a base run that cannot be tuned (no validation split)."""
  base.validate()
  if not base.validation_fraction > 0:
    _fail("validation_fraction", "must be > 0 to tune: trials are compared on "
          "the validation split (tuning on test is refused)",
          base.validation_fraction)
  if base.restore_from:
    _fail("restore_from", "is not supported by a search (each trial starts "
          "afresh)", base.restore_from)


def _base_flags(config: Config) -> dict:
  from maml_tf.train import read_flagfile  # pylint: disable=g-import-not-at-top
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


class _Lock:
  """Holds <tune_dir>/.lock for one search (a killed process releases it)."""

  def __init__(self, tune_dir):
    try:
      os.makedirs(tune_dir, exist_ok=True)
      self.file = open(os.path.join(tune_dir, ".lock"), "a")
    except OSError as e:
      raise UsageError(f"`--tune_dir` must be a writable folder. Received: "
                       f"{tune_dir!r} ({e.strerror})") from None
    if fcntl is not None:
      try:
        fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        self.file.close()
        raise UsageError(f"`--tune_dir` is in use by another search. Received:"
                         f" {tune_dir!r}") from None

  def close(self):
    self.file.close()


def _write_atomic(path, text):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _failure_message(trial) -> Optional[str]:
  """The one-line reason of a failed trial (keras-tuner keeps a traceback)."""
  text = getattr(trial, "message", None) or ""
  lines = [l for l in text.strip().splitlines() if l.strip()]
  for line in reversed(lines):
    if "Error: " in line:
      return line.split("Error: ", 1)[1]
  return lines[-1] if lines else None


class Search:
  """One search: its folder, space, oracle, and the trials it runs."""

  def __init__(self, base: Config, settings: TuneSettings, dataset=None,
               verbose: int = 2):
    settings.validate()
    check_base(base)
    self.base, self.settings = base, settings
    self.dataset, self.verbose = dataset, verbose
    self.params = build_space(base, settings.search_space)
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
    there = _read_json(path)
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
    _write_atomic(path, json.dumps(
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
    lock = _Lock(self.tune_dir)
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
          "no validation round was evaluated (no user kept a validation "
          "item); raise --validation_fraction")
    return {self.objective: float(value)}

  # Reports.
  def record(self, trial) -> dict:
    values = trial.hyperparameters.values
    workdir = self.trial_workdir(trial.trial_id)
    record = {"trial_id": trial.trial_id, "status": str(trial.status),
              "values": {p.name: values.get(p.name) for p in self.params},
              "objective": {"name": f"validation {self.base.select_metric}",
                            "value": trial.score},
              "workdir": workdir}
    hyperband = {k.split("/", 1)[1]: v for k, v in values.items()
                 if k.startswith("tuner/")}
    if hyperband:
      record["hyperband"] = hyperband
      record["train_steps"] = hyperband["epochs"] * self.base.eva_batches
    else:
      record["train_steps"] = self.base.train_steps
    summary = _read_json(os.path.join(workdir, "metrics.json")) or {}
    best = summary.get("best")
    if best:
      record["best_step"] = best.get("step")
      record["valid"] = best.get("valid")
      record["test_of_that_round"] = best.get("test")
      record["finished"] = summary.get("finished")
    if str(trial.status) == "FAILED":
      record["message"] = _failure_message(trial)
    return record

  def write_reports(self) -> dict:
    """Rewrites trials.jsonl and best.flags from the oracle's trials."""
    oracle = self.tuner.oracle
    order = [k for k in oracle.start_order if k in oracle.trials]
    order += sorted(set(oracle.trials) - set(order))
    self.records = [self.record(oracle.trials[k]) for k in order]
    _write_atomic(os.path.join(self.tune_dir, TRIALS_JSONL),
                  "".join(json.dumps(r) + "\n" for r in self.records))
    # The highest objective; the earliest trial of equals (keras-tuner's
    # order of equals depends on the order its files were listed).
    done = [r for r in self.records if r["status"] == "COMPLETED"
            and r["objective"]["value"] is not None]
    best = max(done, key=lambda r: r["objective"]["value"], default=None)
    if best is not None:
      _write_atomic(os.path.join(self.tune_dir, BEST_FLAGS),
                    self.best_flagfile(best))
    return {"trials": self.records, "best": best}

  def best_flagfile(self, best: dict) -> str:
    config = apply_values(self.base, best["values"], self.params,
                          workdir=os.path.join(self.tune_dir, BEST_WORKDIR),
                          overwrite=False)
    test = (best.get("test_of_that_round") or {}).get(self.base.select_metric)
    done = sum(r["status"] == "COMPLETED" for r in self.records)
    header = [
        f"# The best trial ({best['trial_id']}) of the search in {self.tune_dir}",
        f"# Search: {budget_text(self.base, self.settings)}; {done} trials "
        f"completed of {len(self.records)} run",
        f"# Objective: validation {self.base.select_metric} (max) = "
        f"{best['objective']['value']:.6f} at step {best.get('best_step')}"
        + (f"; test {self.base.select_metric} of that round = {test:.6f}"
           if test is not None else ""),
        "# Searched: " + ", ".join(p.describe() for p in self.params),
        "# Best values: " + ", ".join(f"--{k}={_show(v)}"
                                      for k, v in best["values"].items()),
        "# Run: python scripts/train.py --flagfile="
        f"{os.path.join(self.tune_dir, BEST_FLAGS)} [--workdir=...]",
    ]
    return "\n".join(header) + "\n" + config.to_flagfile()


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
  summary = _read_json(os.path.join(config.workdir, "metrics.json"))
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
        print(f"Trial {trial.trial_id} failed: {_failure_message(trial)}",
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
      workdir and no export. Needs `validation_fraction > 0`.
    settings: the tuner, budget, space and folder.
    dataset: an already loaded Dataset for every trial (None: the one the
      config names, loaded per trial).
    verbose: 0 silent; else the Keras verbosity of each run (1 or 2).

  Raises:
    UsageError: bad settings, an untunable base, another search in tune_dir.
    SearchError: keras-tuner stopped the search (trials failing in a row).
  """
  return Search(base, settings, dataset, verbose).run()


def results_table(records: Sequence[dict], metric: str) -> str:
  names = list(records[0]["values"]) if records else []
  header = (f"{'trial':<7}{'status':<11}" + "".join(f"{n:>16}" for n in names)
            + f"{'steps':>8}{'valid ' + metric:>18}{'test ' + metric:>18}")
  lines = [header]
  for r in records:
    row = f"{r['trial_id']:<7}{r['status']:<11}"
    for n in names:
      v = r["values"].get(n)
      row += f"{(f'{v:.4g}' if isinstance(v, float) else str(v)):>16}"
    row += f"{r['train_steps']:>8}"
    valid = (r.get("valid") or {}).get(metric) if r["status"] == "COMPLETED" else None
    test = (r.get("test_of_that_round") or {}).get(metric) if valid is not None else None
    row += f"{'-' if valid is None else f'{valid:.4f}':>18}"
    row += f"{'-' if test is None else f'{test:.4f}':>18}"
    lines.append(row)
  lines.append("(test: the test metric of the validation-selected round; the "
               "search saw only validation)")
  return "\n".join(lines)
