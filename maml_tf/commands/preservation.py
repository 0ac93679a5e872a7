"""Modality preservation of a run's model, measured after the fact.

  maml-tf preservation --workdir=runs/office_mario [--which=best|last] \\
      [--preservation_modalities=text,meta]

Rebuilds the run from <workdir>/flags.txt (any flag given here overrides
it), restores its checkpoint (`--which`), and prints, per modality, the
measure of `maml_tf.evaluate.preservation` (mean |cosine gap| between the model's
item embeddings and the modality's features, over all items and over the
top 10% by train degree; smaller is better) as one JSON object. The
modalities default to text,meta when the run named none; a model that reads
no features is measured against them too. Usage and data errors exit with
status 2 and one line on stderr.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402


from maml_tf import cli  # noqa: E402

cli.define_flags()
flags.DEFINE_enum("which", "best", ["best", "last"],
                  "which checkpoint of the run: the best round or the last one")
FLAGS = flags.FLAGS


def preservation_main():
  import dataclasses  # pylint: disable=g-import-not-at-top
  config = cli.config_from_workdir(sys.argv, "the run to measure")
  if not config.preservation_modalities:
    config = dataclasses.replace(config, preservation_modalities=("text", "meta"))
  from maml_tf.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from maml_tf.evaluate import preservation as preservation_lib  # pylint: disable=g-import-not-at-top
  from maml_tf import train as train_lib  # pylint: disable=g-import-not-at-top

  dataset = train_lib.load_data(config)
  model = train_lib.build_model(config, dataset)
  step = checkpoint_lib.restore(model, config.workdir, FLAGS.which)
  measured = train_lib.preservation_dataset(config, dataset)
  report = preservation_lib.preservation_report(model, measured)
  print(json.dumps({"workdir": config.workdir, "model": config.model,
                    "which": FLAGS.which, "step": step, "preservation": report}),
        flush=True)
  return 0


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(preservation_main)


def entry(argv=None):
  """`maml-tf preservation ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv, flags_parser=cli.parse_flags)
