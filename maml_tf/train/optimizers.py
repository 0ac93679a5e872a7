"""The optimiser: the release's Adam, with an optional learning-rate
multiplier for the weights that are not embedding tables.

`--network_lr_scale=s` trains every weight a model does not list in
`table_variables()` (MAML's attention and fusion networks in paper mode,
LRML's memory, MARIO's encoders, attention and decoders) with learning rate
s x --learning_rate, the tables with --learning_rate. Adam's update is
invariant to the scale of the gradient, so this scales the step itself: the
variable's learning rate inside Adam's update. The optimiser's variables
(moments, iterations) are Adam's, so checkpoints are interchangeable with a
plain Adam's.
"""

from typing import Iterable

import keras


class GroupedAdam(keras.optimizers.Adam):
  """Adam whose learning rate is multiplied by `network_scale` for every
  trainable variable not in `tables` (matched by identity at build)."""

  def __init__(self, tables: Iterable = (), network_scale: float = 1.0,
               **kwargs):
    super().__init__(**kwargs)
    self._table_ids = {id(v) for v in tables}
    self.network_scale = float(network_scale)
    self._scales = None

  def build(self, variables):
    super().build(variables)
    self._scales = [1.0 if id(v) in self._table_ids else self.network_scale
                    for v in variables]

  def learning_rate_scale(self, variable) -> float:
    """The multiplier `variable` trains with (after build)."""
    return self._scales[self._get_variable_index(variable)]

  def update_step(self, gradient, variable, learning_rate):
    scale = self.learning_rate_scale(variable)
    if scale != 1.0:
      learning_rate = keras.ops.cast(learning_rate, variable.dtype) * scale
    super().update_step(gradient, variable, learning_rate)

  def get_config(self):
    # The tables are a model's variables, not config: a restored optimiser
    # scales nothing until given them again.
    return dict(super().get_config(), network_scale=self.network_scale)
