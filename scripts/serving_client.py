"""`python scripts/serving_client.py ...`: the same as `maml-tf serve-client
...` (see maml_tf/commands/serving_client.py; its REST path needs no
TensorFlow)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf.commands.serving_client import main, run  # noqa: E402,F401

if __name__ == "__main__":
  sys.exit(main())
