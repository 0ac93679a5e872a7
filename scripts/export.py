"""`python scripts/export.py ...`: the same as `maml-tf export ...`, from a
checkout without installing (see maml_tf/commands/export.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import export  # noqa: E402

if __name__ == "__main__":
  export.entry()
