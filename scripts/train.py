"""`python scripts/train.py ...`: the same as `maml-tf train ...`, from a
checkout without installing (see maml_tf/commands/train.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import train  # noqa: E402

if __name__ == "__main__":
  train.entry()
