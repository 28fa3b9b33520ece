"""The tabular encoder: an MLP on the standardised features."""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn


class MLPEncoder(nn.Module):
  """x [n, d] -> features [n, hidden[-1]] (Dense + ReLU per layer). `train` is accepted for the harness's
  encoder interface (nothing here behaves differently in training)."""
  hidden: Sequence[int] = (256, 256, 128)

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return x
