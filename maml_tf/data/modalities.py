"""Modality names: the naming rule, feature-file paths, the default order."""

from __future__ import annotations

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence

from maml_tf.errors import UsageError

# A modality name: a-z, 0-9, _, starting with a letter (also the rule for
# flag values that name a modality, `maml_tf.config.MODALITY_NAME`).
MODALITY_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def check_feature_paths(
    feature_paths: Mapping[str, str]) -> Dict[str, str]:
  out = {}
  for name, path in dict(feature_paths or {}).items():
    if not isinstance(name, str) or not MODALITY_NAME.match(name):
      raise UsageError(f"modality names must match [a-z][a-z0-9_]*. "
                       f"Received: {name!r}")
    if not path:
      raise UsageError(f"feature path for modality `{name}` is empty")
    out[name] = os.fspath(path)
  return out


def resolve_modalities(modalities: Optional[Sequence[str]],
                        default: Sequence[str]) -> List[str]:
  """Orders/validates the requested modality names (None -> `default`)."""
  if modalities is None:
    return list(default)
  if isinstance(modalities, str):
    raise UsageError(f"`modalities` must be a list of names, not a string. "
                     f"Received: {modalities!r}")
  names = list(modalities)
  for name in names:
    if not isinstance(name, str) or not MODALITY_NAME.match(name):
      raise UsageError(f"modality names must match [a-z][a-z0-9_]*. "
                       f"Received: {name!r}")
  dups = sorted({n for n in names if names.count(n) > 1})
  if dups:
    raise UsageError(f"`modalities` lists {dups[0]!r} more than once. "
                     f"Received: {names}")
  return names


def default_order(names: Sequence[str]) -> List[str]:
  """text, image, then the rest in the given order."""
  head = [n for n in ("text", "image") if n in names]
  return head + [n for n in names if n not in ("text", "image")]
