"""What the benchmark knows about each model: its own settings, and the
work its scoring and propagation do (for the floors).

Settings: each model runs with its Office flagfile's model and training
flags (flags/office_<model>.flags; CML, LRML and MAML from
flags/office_split_<model>.flags, the release's settings), so a scenario
costs what a run of that model costs: e.g. batch 2048 and one negative for
the BPR models, batch 5000 and four negatives for MAML and CML, batch 256
and four negatives for NeuMF. Data, evaluation and output flags are the
benchmark's own.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

KEPT_GROUPS = ("model", "training")
DROPPED = ("train_steps", "refit", "seed")
SPLIT_FLAGFILES = ("cml", "lrml", "maml")  # flags/office_split_<model>.flags

# Full-ranking scoring that is one dot product (or a distance, the same
# matmul) of a user row with an item row: the issue's >= 50% target.
DOT_PRODUCT = ("mf", "lightgcn", "mario", "neumf", "vbpr")


def flagfile(model: str, root: str) -> str:
  name = f"office_split_{model}" if model in SPLIT_FLAGFILES else f"office_{model}"
  return os.path.join(root, "flags", f"{name}.flags")


def read_flag_lines(path: str, root: str, depth: int = 0) -> List[Tuple[str, str]]:
  """(name, value) of every `--name=value` / `--name` / `--noname` line,
  `--flagfile=` includes expanded in place (paths relative to `root`)."""
  if depth > 8:
    raise ValueError(f"`--flagfile` includes nest deeper than 8 at {path}")
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line.startswith("--"):
        continue
      name, sep, value = line[2:].partition("=")
      if name == "flagfile":
        out.extend(read_flag_lines(os.path.join(root, value), root, depth + 1))
      elif sep:
        out.append((name, value))
      else:
        out.append((name, None))
  return out


def typed(field, text):
  """The Config value of `field` from its flagfile text (None: a bare
  `--name`, True)."""
  default, kind = field.default, field.metadata["kind"]
  if text is None:
    return True
  if kind == "list" or isinstance(default, tuple):
    return tuple(v.strip() for v in text.split(",") if v.strip())
  if isinstance(default, bool):
    return text.lower() in ("true", "1", "yes")
  if kind == "int" or isinstance(default, int):
    return int(text)
  if kind == "float" or isinstance(default, float):
    return float(text)
  return text


def settings(model: str, root: str) -> Dict[str, object]:
  """The Config overrides of `model`'s flagfile: its model and training
  flags, the model name itself."""
  from maml_tf import config as config_lib
  fields = {f.name: f for f in config_lib.fields()}
  out: Dict[str, object] = {}
  for name, value in read_flag_lines(flagfile(model, root), root):
    negated = value is None and name.startswith("no") and name[2:] in fields
    key = name[2:] if negated else name
    field = fields.get(key)
    if field is None or key in DROPPED or field.metadata["group"] not in KEPT_GROUPS:
      continue
    out[key] = False if negated else typed(field, value)
  out["model"] = model
  return out


def pair_work(model) -> Dict[str, object]:
  """The work per (user, item) pair of the model's full ranking after its
  per-user and per-item parts are computed: {"flops", "tanh", "what",
  "shape"}: tanh the transcendentals (tanh, exp) per pair (the adds fused
  with them are not counted as flops); shape (inner,
  outer) of the per-pair matmul that dominates it (its rate is measured at
  that shape), or None for a dot product (measured at the evaluation's
  [users, width] x [width, items] shape)."""
  kind = model.model_kind
  attention = getattr(model, "attention", None)
  if kind == "maml" and attention is not None:
    h, k = (int(s) for s in attention.dense2.kernel.shape)
    return {"flops": 2 * h * k + 2 * h + 8 * k, "tanh": h + k, "shape": (h, k),
            "what": f"attention MLP per pair, [{h}] x [{h}, {k}]"}
  if kind == "lrml":
    k, m = model.embed_dim, model.memory_slots
    return {"flops": 4 * k * m + 4 * k + 3 * m, "tanh": m, "shape": (k, m),
            "what": f"relation per pair over {m} memory slots"}
  if kind == "neumf" and model.has_mlp:
    widths = list(model.hidden_widths)
    flops = 2 * model.factors if model.has_gmf else 0
    flops += widths[0] + sum(2 * a * b for a, b in zip(widths, widths[1:])) + 2 * widths[-1]
    shape = (widths[0], widths[1]) if len(widths) > 1 else (widths[0], 1)
    return {"flops": flops, "tanh": 0, "shape": shape,
            "what": "MLP layers " + " x ".join(map(str, widths)) + " per pair"}
  if kind == "mario" and attention is not None:
    m, d, h = model.n_modalities, model.width, model.hidden_dim
    return {"flops": m * (2 * d + 2 * h), "tanh": m * (h + 1), "shape": None,
            "what": f"{m} modality dots + attention per pair"}
  w = model.score_width
  return {"flops": 2 * w, "tanh": 0, "shape": None, "what": f"one {w}-wide dot product"}


def graph_layers(model) -> int:
  """Propagation layers of a graph model's train step (0: no graph). One
  [nodes, d] stream a layer: a lower bound for the models that propagate
  more (one GCN per modality, wider layers)."""
  if getattr(model, "backbone", None) == "mf":
    return 0
  propagation = getattr(model, "propagation", None)
  if propagation is not None and hasattr(propagation, "layer_sizes"):
    return len(propagation.layer_sizes)
  return int(getattr(model, "gcn_layers", 0) or 0)
