"""Which scenarios a benchmark run has, and the machine it runs on.

The default run: every model at office, clothing and items100k, CML and
LRML also at ml20m (MovieLens-20M's size, which their paper used), then the
system scenarios. `--only` names scenarios exactly (any <model>@<size>);
`--models` and `--sizes` filter the default ones. With `--release_dir`
the `release` scenario runs right after maml@office.
"""

from __future__ import annotations

import os
import platform

SIZES = ("office", "clothing", "ml20m", "items100k")
SIZE_ORDER = ("office", "clothing", "items100k", "ml20m")
GROWTH_SIZES = ("office", "clothing", "items100k")  # the catalogue grows

SYSTEM = ("serve", "workers", "loader")
EXTRA_SIZES = {"cml": ("ml20m",), "lrml": ("ml20m",)}
VECTOR_PREFIXES = ("avx", "amx", "fma", "sse4")


def default_scenarios(models):
  """Every model at office, clothing and items100k; CML and LRML at ml20m."""
  out = []
  for size in SIZE_ORDER:
    for model in models:
      if size in GROWTH_SIZES or size in EXTRA_SIZES.get(model, ()):
        out.append(f"{model}@{size}")
  return out


def check_scenario(name, models, sizes=SIZES):
  """`name` if it is <model>@<size> or a system scenario; else ValueError."""
  model, at, size = name.partition("@")
  if (at and model in models and size in sizes) or (not at and name in SYSTEM + ("release",)):
    return name
  raise ValueError(f"`--only` must name <model>@<size> (models: {', '.join(models)}; "
                   f"sizes: {', '.join(sizes)}) or one of {', '.join(SYSTEM)}, release. "
                   f"Received: {name!r}")


def select(only, models_filter, sizes_filter, release_dir, models):
  """The scenarios to run, in order, from the command line's filters."""
  for flag, given, allowed in (("--models", models_filter, models),
                               ("--sizes", sizes_filter, SIZES)):
    for value in given or ():
      if value not in allowed:
        raise ValueError(f"`{flag}` must name some of {', '.join(allowed)}. "
                         f"Received: {value!r}")
  if only:
    chosen = [check_scenario(n.strip(), models) for n in only if n.strip()]
  else:
    chosen = [n for n in default_scenarios(models)
              if (not models_filter or n.split("@")[0] in models_filter)
              and (not sizes_filter or n.split("@")[1] in sizes_filter)]
    if not models_filter and not sizes_filter:
      chosen += list(SYSTEM)
  if release_dir and "maml@office" in chosen and "release" not in chosen:
    chosen.insert(chosen.index("maml@office") + 1, "release")
  if "release" in chosen and not release_dir:
    raise ValueError("`--release_dir` is required by the release scenario. Received: none")
  return chosen


def vector_features(flag_line):
  """The CPU's vector extensions among /proc/cpuinfo's flags."""
  return sorted({f for f in flag_line.split() if f.startswith(VECTOR_PREFIXES)})


def machine():
  import tensorflow as tf
  cpu, vector = platform.processor() or "?", []
  try:
    with open("/proc/cpuinfo") as f:
      lines = f.read().splitlines()
    cpu = next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
    vector = vector_features(next(l.split(":", 1)[1] for l in lines
                                  if l.startswith("flags")))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "vector": vector,
          "python": platform.python_version(), "tensorflow": tf.__version__,
          "platform": platform.platform()}
