"""Export a finished (or running) run's checkpoint as a SavedModel for TF Serving.

  maml-tf export --workdir=runs/office [--which=best|last] \\
      [--export_dir=saved_models] [--export_name=maml_office] [--version=N] \\
      [--export_topk=10] [--retrieve_candidates=200]

The run's settings come from <workdir>/flags.txt (the flagfile the training
wrote); any flag given here overrides it, so --export_dir, --export_name,
--export_topk and --retrieve_candidates choose the export and every model
flag is the run's own. The data are loaded as the run loaded them, the model
is built with `maml_tf.train.run.build_model`, the checkpoint (`--which`: the
best round or the last one) is restored with `maml_tf.train.checkpoint.restore`,
and the export goes to <export_dir>/<export_name>/<version>/ (see
maml_tf/export.py). Its *_by_id signatures answer by the raw ids of the data
loaded now, which must be the run's own: <workdir>/vocab/ (written by the
training) is checked against them, and an export whose data number the ids
otherwise is refused. Prints the version folder. Usage and data errors exit
with status 2 and one line on stderr.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402


from maml_tf import cli  # noqa: E402
from maml_tf.errors import UsageError  # noqa: E402

cli.define_flags()
flags.DEFINE_enum("which", "best", ["best", "last"],
                  "which checkpoint of the run: the best round or the last one")
flags.DEFINE_integer("version", None,
                     "version number to write (default: 1 + the largest one)",
                     lower_bound=1)
FLAGS = flags.FLAGS


def export_main():
  config = cli.config_from_workdir(sys.argv, "the run to export")
  if FLAGS.version is not None:  # fail before the slow part; export checks again
    target = os.path.join(config.export_dir, config.model_name, str(FLAGS.version))
    if os.path.exists(target):
      raise UsageError(f"`version` {FLAGS.version} already exists at {target}; "
                       "exports never overwrite a version: pass another "
                       "--version or omit it for the next one")
  # Heavy imports after the flag checks; export first, for TFRS (retrieval.py).
  from maml_tf.export import saved_model as export_lib  # pylint: disable=g-import-not-at-top
  from maml_tf.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from maml_tf import train as train_lib  # pylint: disable=g-import-not-at-top
  from maml_tf.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top

  dataset = train_lib.load_data(config)
  # The checkpoint's indices mean the run's raw ids (<workdir>/vocab/): the
  # data loaded again must number them the same, else refuse.
  if not vocab_lib.check_workdir(config.workdir, dataset):
    print(f"note: {os.path.join(config.workdir, vocab_lib.FOLDER)} not found "
          "(a run from before vocabularies were saved): the raw ids are those "
          "of the data loaded now", file=sys.stderr, flush=True)
  model = train_lib.build_model(config, dataset)
  prefix = checkpoint_lib.resolve(config.workdir, FLAGS.which)
  step = checkpoint_lib.restore(model, config.workdir, FLAGS.which)
  info = {"checkpoint": prefix, "step": step, "which": FLAGS.which}
  path = export_lib.export_from_run(config, model, dataset,
                                    version=FLAGS.version, info=info)
  print(f"Exported step {step} ({FLAGS.which} checkpoint {prefix}) to {path}",
        file=sys.stderr, flush=True)
  print(path, flush=True)
  return 0


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(export_main)


def entry(argv=None):
  """`maml-tf export ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv, flags_parser=cli.parse_flags)
