"""`RankingMetrics`: top-k metrics into the epoch logs, for stock Keras
callbacks (EarlyStopping, ModelCheckpoint, ...) in a user's own `fit`.
"""

from __future__ import annotations

import keras



class RankingMetrics(keras.callbacks.Callback):
  """Top-k metrics into the epoch logs, for stock Keras callbacks.

  Args:
    evaluators: {split: evaluator}, each a callable returning
      {metric: value} (`maml_tf.evaluate.full_ranking.Evaluator`, or the sampled
      evaluator of the leave-one-out protocol).
    every: evaluate every this many epochs (the logs of other epochs carry
      no metrics).
  """

  def __init__(self, evaluators, every=1):
    super().__init__()
    self.evaluators = dict(evaluators)
    self.every = max(1, int(every))
    self.history = []

  def on_epoch_end(self, epoch, logs=None):
    if (epoch + 1) % self.every:
      return
    record = {"epoch": epoch + 1}
    for split, evaluator in self.evaluators.items():
      for name, value in evaluator().items():
        record[f"{split}_{name}"] = value
    self.history.append(record)
    if logs is not None:
      logs.update({k: v for k, v in record.items() if k != "epoch"})
