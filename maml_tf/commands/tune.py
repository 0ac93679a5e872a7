"""Hyper-parameter search on validation: `maml-tf tune
--flagfile=office.flags --validation_fraction=0.1 --tune_dir=runs/tune`.

Every flag of `maml-tf train` sets the base run; each trial is that run with
the trial's hyper-parameters, in <tune_dir>/trials/<trial_id>/, without
export (--workdir is ignored). The search flags are below. Rerun the same
command to resume an interrupted search. See README.md, "Tuning".
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402


from maml_tf import cli  # noqa: E402
from maml_tf.tuning import loop as tuning  # noqa: E402

cli.define_flags()
_S = tuning.TuneSettings()
flags.DEFINE_string("tune_dir", _S.tune_dir,
                    "the search's folder: trials/<id>/ (each trial's workdir), "
                    "trials.jsonl, best.flags, search.json, keras_tuner/ (the "
                    "oracle's state); with --overwrite, a search there is "
                    "replaced instead of resumed")
flags.DEFINE_string("tuner", _S.tuner,
                    "keras-tuner oracle. One of: " + ", ".join(tuning.TUNERS))
flags.DEFINE_integer("max_trials", _S.max_trials,
                     "trials at most; budget: max_trials x --train_steps steps "
                     "(hyperband: each trial at most --train_steps)")
flags.DEFINE_list("search_space", list(_S.search_space),
                  "restrict or override the model's SEARCH_SPACE: `name` keeps "
                  "its entry, `name=float:LO:HI[:log|linear]`, "
                  "`name=int:LO:HI` or `name=choice:A|B|C` sets one; only the "
                  "named flags are searched. Empty: the model's whole space")
flags.DEFINE_integer("tuner_seed", _S.tuner_seed,
                     "the oracle's seed (>= 1)")
flags.DEFINE_integer("hyperband_factor", _S.hyperband_factor,
                     "hyperband's reduction factor (>= 2)")

FLAGS = flags.FLAGS


def tune_main():
  settings = tuning.TuneSettings(
      tune_dir=FLAGS.tune_dir, tuner=FLAGS.tuner, max_trials=FLAGS.max_trials,
      search_space=tuple(v for v in FLAGS.search_space if v.strip()),
      tuner_seed=FLAGS.tuner_seed, hyperband_factor=FLAGS.hyperband_factor,
      overwrite=FLAGS.overwrite).validate()
  base = cli.config_from_flags()
  verbose = 1 if sys.stdout.isatty() else 2
  tuning.search(base, settings, verbose=verbose)
  return 0


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(tune_main)


def entry(argv=None):
  """`maml-tf tune ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv, flags_parser=cli.parse_flags)
