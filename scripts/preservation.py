"""`python scripts/preservation.py ...`: the same as `maml-tf preservation ...`, from a
checkout without installing (see maml_tf/commands/preservation.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import preservation  # noqa: E402

if __name__ == "__main__":
  preservation.entry()
