"""The coordinate-prediction network: MLP encoder + Multiple-Targets linear regressor."""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from rtjax.heads import MultiTargetHead


class MLPRegressor(nn.Module):
  """x [..., D] -> (pred [..., M, k], features z [..., hidden[-1]]).

  The encoder is Dense + ReLU per entry of `hidden`; its output z is what ROT-Reg regularises. The
  regressor is linear with M target copies (M = 1 is a plain linear regressor). Weights are drawn from
  N(0, init_std^2) and biases start at 0, as in the coordinate-prediction protocol.
  """
  hidden: Sequence[int] = (100, 100)
  num_targets: int = 1
  target_dim: int = 3
  init_std: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    kernel_init = nn.initializers.normal(self.init_std)
    z = x
    for width in self.hidden:
      z = nn.relu(nn.Dense(width, kernel_init=kernel_init)(z))
    pred = MultiTargetHead(self.num_targets, self.target_dim, kernel_init=kernel_init)(z)
    return pred, z
