"""`python scripts/tune.py ...`: the same as `maml-tf tune ...`, from a
checkout without installing (see maml_tf/commands/tune.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import tune  # noqa: E402

if __name__ == "__main__":
  tune.entry()
