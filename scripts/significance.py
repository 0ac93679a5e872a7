"""`python scripts/significance.py ...`: the same as `maml-tf significance ...`,
from a checkout without installing (see maml_tf/commands/significance.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import significance  # noqa: E402

if __name__ == "__main__":
  significance.entry()
