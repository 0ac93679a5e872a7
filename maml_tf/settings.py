"""The facts each run setting carries, and the rules checked from them.

A Config field (maml_tf/config.py) is declared with `setting(...)`: its
default, its help line, the `--help` group it is listed under, its choices or
range, and whether a resumed run or a search may change it. The command line,
`Config.validate`, the resume check and the tuner read these facts; nothing
else lists flag names.
"""

from __future__ import annotations

import dataclasses
import math

from maml_tf.errors import UsageError

# `--help` lists the flags under these headings, in this order.
GROUPS = ("data", "model", "training", "evaluation", "outputs", "export",
          "distribution")
# What a resumed run may change without invalidating the rounds it has:
# "any" -- where and how results are written (a resumed search may change it
# too); "run" -- when training ends, what runs after it, or where it starts.
RESUME_ANY, RESUME_RUN = "any", "run"


def setting(default, help, *, group, choices=None, low=None, high=None,
            low_open=False, high_open=True, integer=False, kind=None,
            resume=None, searchable=True, protocol_default=False):
  """A Config field with its flag's facts.

  Args:
    default: the flag's default (None: unset).
    help: the one-line help text.
    group: one of GROUPS (the `--help` heading).
    choices: the allowed values (a string flag).
    low, high, low_open, high_open, integer: the range rule checked by
      `validate` (low inclusive and high exclusive unless said otherwise).
    kind: the flag's type where the default does not tell it: "list" (a
      comma-separated list), "int", "float" or "string".
    resume: RESUME_ANY or RESUME_RUN (see above); None: a resumed run must
      keep the value.
    searchable: False for a flag a search may not vary (the budget, the
      objective, the data it is measured on, where and how a run writes).
    protocol_default: unset means the protocol's default (protocols.DEFAULTS).
  """
  assert group in GROUPS, group
  meta = dict(help=help, group=group, choices=choices, low=low, high=high,
              low_open=low_open, high_open=high_open, integer=integer,
              kind=kind, resume=resume, searchable=searchable,
              protocol_default=protocol_default)
  return dataclasses.field(default=default, metadata=meta)


def fail(flag, rule, value):
  """Raises the one-line UsageError "`--flag` rule. Received: value"."""
  raise UsageError(f"`--{flag}` {rule}. Received: {value!r}")


def check_field(field, value):
  """A field's own rule: its choices or its range (None: unset, no rule)."""
  meta = field.metadata
  name = field.name
  if meta["choices"] is not None:
    if value not in meta["choices"]:
      fail(name, "must be one of " + ", ".join(meta["choices"]), value)
    return
  number = meta["low"] is not None or meta["high"] is not None or meta["integer"]
  number = number or meta["kind"] in ("int", "float")
  if not number or value is None:
    return
  if meta["integer"] and (isinstance(value, bool) or not isinstance(value, int)):
    fail(name, "must be an integer", value)
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    fail(name, "must be a number", value)
  if not math.isfinite(value):
    fail(name, "must be finite", value)
  low, high = meta["low"], meta["high"]
  if low is not None and (value <= low if meta["low_open"] else value < low):
    fail(name, f"must be {'>' if meta['low_open'] else '>='} {low}", value)
  if high is not None and (value >= high if meta["high_open"] else value > high):
    fail(name, f"must be {'<' if meta['high_open'] else '<='} {high}", value)


def names(cls, resume=None, searchable=None):
  """The flag names of settings class `cls`, optionally only those whose
  facts match.

  `resume`: a set of RESUME_* values the field's `resume` must be in;
  `searchable`: the field's `searchable` must equal it.
  """
  out = []
  for field in dataclasses.fields(cls):
    if resume is not None and field.metadata["resume"] not in resume:
      continue
    if searchable is not None and field.metadata["searchable"] != searchable:
      continue
    out.append(field.name)
  return frozenset(out)
