"""`python scripts/summarize.py ...`: the same as `maml-tf summarize ...`, from a
checkout without installing (see maml_tf/commands/summarize.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands import summarize  # noqa: E402

if __name__ == "__main__":
  summarize.entry()
