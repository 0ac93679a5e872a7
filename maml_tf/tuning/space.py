"""The search space of a tuning run: each model's declared `SEARCH_SPACE`,
narrowed or overridden by --search_space, checked against the flags' types
and the run's rules, and turned into keras-tuner's HyperParameters.

Search spaces are declared next to each model, as the class attribute
`SEARCH_SPACE`: {flag name: spec}, spec one of

  ("float", low, high, "log" | "linear")
  ("int", low, high)
  ("choice", [value, ...])

optionally followed by a {flag: value} dict: the entry is searched only when
the base run has those flag values (e.g. {"mode": "paper"} for weights that
count only in paper mode). `search_space(model_name)` reads it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maml_tf import config as config_lib
from maml_tf.config import Config
from maml_tf.errors import UsageError

KINDS = ("float", "int", "choice")
SAMPLINGS = ("log", "linear")

# Flags a search may not vary: the budget, the objective and the data it is
# measured on, and where and how a run writes (each Config field says so).
FIXED = config_lib.names(searchable=False)

_DEFAULTS = Config()
_FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def fail(flag, rule, value):
  """Raises the one-line UsageError of a tuning flag that breaks a rule."""
  raise UsageError(f"`--{flag}` {rule}. Received: {value!r}")


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
      return f"{self.name}=choice:" + "|".join(map(show, self.values))
    text = f"{self.name}={self.kind}:{show(self.low)}:{show(self.high)}"
    return text + (f":{self.sampling}" if self.kind == "float" else "")

  def applies_to(self, config: Config) -> bool:
    return all(getattr(config, flag) == value for flag, value in self.when)

  def extremes(self) -> Tuple[Any, ...]:
    return self.values if self.kind == "choice" else (self.low, self.high)


def show(value):
  """A flag value as written on the command line (true/false, repr of a float)."""
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
    fail("search_space", "items must be a flag name or name=spec", text)
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
        fail("search_space", f"entry {name} must choose among true|false", text)
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
  fail("search_space", f"entry {name} must be {name}=float:LO:HI[:log|linear],"
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
        fail("search_space", f"names {name} twice", ",".join(entries))
      seen.add(name)
      if spec is not None:
        params.append(parse_spec(name, spec, f"--search_space={text}"))
        continue
      if name not in declared:
        fail("search_space", f"names a flag --model={base.model}'s space does "
             f"not declare ({', '.join(declared) or 'none'}); give its range "
             f"as {name}=float:LO:HI[:log], int:LO:HI or choice:A|B", text)
      param = declared[name]
      if not param.applies_to(base):
        needs = " ".join(f"--{k}={show(v)}" for k, v in param.when)
        fail("search_space", f"entry {name} applies only with {needs}", text)
      params.append(param)
  if not params:
    fail("search_space", f"leaves nothing to search for --model={base.model}",
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
