"""`python scripts/table.py ...`: the same as `maml-tf table ...`,
from a checkout without installing (see maml_tf/commands/table.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import table  # noqa: E402

if __name__ == "__main__":
  table.entry()
