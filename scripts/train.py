"""Train and evaluate MAML: `python scripts/train.py --flagfile=office.flags`.

Flags are named as in the release (num_neg, eva_batches, batch_size,
hidden_layer_dim, margin, dropout, feature_l2_reg); its hard-coded constants
are flags too. The resolved flags are written to <workdir>/flags.txt, itself
a flagfile that reruns the experiment.
"""

import os
import sys

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from maml_tf import cli  # noqa: E402

cli.define_flags()


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(cli.train_main)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
