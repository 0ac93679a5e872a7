"""MostPop under a run's data and protocol: the floor a personalised model
must clear.

  maml-tf popularity --flagfile=flags/office_split_lrml.flags --seed=0

Takes the flags of `maml-tf train` (the data, `--protocol`, `--seed`,
`--topk`, `--validation_fraction`; the model's flags are ignored) and ranks,
for every user, the items by their number of train interactions (ties by
item id), with the same evaluators a trained model gets: full ranking
excluding the user's known items, or leave-one-out's sampled candidates.
Nothing is trained or written. Prints one JSON object: the protocol, the
split's sizes, and the validation (when there is one) and test metrics as
fractions. Usage and data errors exit with status 2 and one line on stderr.
"""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402


from maml_tf import cli  # noqa: E402

cli.define_flags()


class Popularity:
  """Scores every item by its train count, the same for every user (the
  interface the evaluators use)."""

  score_width = 1

  def __init__(self, train_pairs, n_users, n_items):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self.n_users, self.n_items = int(n_users), int(n_items)
    counts = np.bincount(np.asarray(train_pairs, np.int64).reshape(-1, 2)[:, 1],
                         minlength=self.n_items)
    self.scores = tf.constant(counts.astype(np.float32))

  def prepare_scoring(self):
    pass

  def score_items(self, users, item_chunk=None):
    del item_chunk
    tf = self._tf
    return tf.tile(self.scores[None], tf.stack([tf.shape(users)[0], 1]))

  def score_pairs(self, users, items, explain=False):
    del users, explain
    return self._tf.gather(self.scores, items)


def popularity_main():
  config = cli.config_from_flags()
  # No item features: MostPop reads none (and building them costs time).
  config = dataclasses.replace(config, modalities=(), text_features=None,
                               image_features=None, extra_features=())
  from maml_tf import train as train_lib  # pylint: disable=g-import-not-at-top

  dataset, info = train_lib.load_data(config, with_info=True)
  scorer = Popularity(dataset.train, dataset.n_users, dataset.n_items)
  evaluators = train_lib.build_evaluators(config, dataset, scorer, jit_compile=False)
  out = {"model": "most_popular", "protocol": info,
         "seed": config.seed}
  for split, evaluator in evaluators.items():
    out[split] = evaluator()
  print(json.dumps(out), flush=True)
  return 0


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(popularity_main)


def entry(argv=None):
  """`maml-tf popularity ...` (argv[0] is the command's name)."""
  cli.exit_on_help(argv)
  app.run(main, argv=argv, flags_parser=cli.parse_flags)
