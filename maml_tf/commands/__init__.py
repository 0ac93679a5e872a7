"""The `maml-tf` command: `maml-tf <command> [flags]`, one module a command.

Each command module defines its flags when imported and an `entry(argv)`
that runs it; only the chosen command's module is imported, so each command
sees only its own flags. `python -m maml_tf ...` and the thin wrappers in
scripts/ run the same code.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one line)
COMMANDS = {
    "train": ("train", "train and evaluate one run (--flagfile=office.flags)"),
    "tune": ("tune", "search hyper-parameters on validation (keras-tuner)"),
    "export": ("export", "export a run's checkpoint as a SavedModel"),
    "summarize": ("summarize", "mean ± sd of finished runs as a Markdown table"),
    "significance": ("significance", "paired t-test and Wilcoxon of two models' runs"),
    "table": ("table", "run a results table's rows from its plan, resumably"),
    "plot": ("plot", "learning curves of runs to one PNG"),
    "preservation": ("preservation", "modality preservation of a run's model"),
    "popularity": ("popularity", "the MostPop baseline on a run's data"),
    "serve-client": ("serving_client", "query a TF Serving model by REST or gRPC"),
}


def usage() -> str:
  lines = ["usage: maml-tf <command> [flags]   (maml-tf <command> --help)", "",
           "commands:"]
  width = max(map(len, COMMANDS))
  for name, (_, text) in COMMANDS.items():
    lines.append(f"  {name:<{width}}  {text}")
  return "\n".join(lines)


def main(argv=None):
  """The console script: dispatches to the command named by argv[1]."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    return 0 if len(argv) >= 2 else 2
  command = argv[1]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r}; one of: "
          f"{', '.join(COMMANDS)}", file=sys.stderr)
    return 2
  module = importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")
  return module.entry([f"maml-tf {command}"] + argv[2:])
