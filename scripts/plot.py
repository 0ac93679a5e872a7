"""`python scripts/plot.py ...`: the same as `maml-tf plot ...`, from a
checkout without installing (see maml_tf/commands/plot.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import plot  # noqa: E402

if __name__ == "__main__":
  plot.entry()
