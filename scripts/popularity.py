"""`python scripts/popularity.py ...`: the same as `maml-tf popularity ...`, from a
checkout without installing (see maml_tf/commands/popularity.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import popularity  # noqa: E402

if __name__ == "__main__":
  popularity.entry()
