"""`maml-tf train --flagfile=office.flags`: train and evaluate one run.

Flags are named as in the release (num_neg, eva_batches, batch_size,
hidden_layer_dim, margin, dropout, feature_l2_reg); its hard-coded constants
are flags too. The resolved flags are written to <workdir>/flags.txt, itself
a flagfile that reruns the experiment. `maml-tf train --help` lists them.
"""

from absl import app

from maml_tf import cli

cli.define_flags()


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(cli.train_main)


def entry(argv=None):
  """`maml-tf train ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv, flags_parser=cli.parse_flags)
