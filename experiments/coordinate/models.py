"""The coordinate-prediction network: MLP encoder + Multiple-Targets linear regressor."""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from rtjax.heads import MultiTargetHead
from rtjax.information_dropout import InformationDropout, information_dropout_loss


class MLPRegressor(nn.Module):
  """x [..., D] -> (pred [..., M, k], features z [..., hidden[-1]]).

  The encoder is Dense + ReLU per entry of `hidden`; its output z is what ROT-Reg regularises. The
  regressor is linear with M target copies (M = 1 is a plain linear regressor). Weights are drawn from
  N(0, init_std^2) and biases start at 0, as in the coordinate-prediction protocol.

  With `information_dropout` (the "+ InfDrop" row, PH-Reg's `MLP_InformationDropout`), z is multiplied
  by log-normal noise whose scale a second MLP computes from x, whenever a "dropout" rng stream is given
  (training); the KL term, weighted by kl_weight / num_train, is sown into the "losses" collection.
  """
  hidden: Sequence[int] = (100, 100)
  num_targets: int = 1
  target_dim: int = 3
  init_std: float = 1e-3
  information_dropout: bool = False
  kl_weight: float = 0.01
  num_train: int = 100

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    kernel_init = nn.initializers.normal(self.init_std)
    z = x
    for width in self.hidden:
      z = nn.relu(nn.Dense(width, kernel_init=kernel_init)(z))
    if self.information_dropout:
      z, kl = InformationDropout(kernel_init=kernel_init)(z, x, deterministic=not self.has_rng("dropout"))
      self.sow("losses", "information_dropout",
               information_dropout_loss(kl, num_train=self.num_train, weight=self.kl_weight))
    pred = MultiTargetHead(self.num_targets, self.target_dim, kernel_init=kernel_init)(z)
    return pred, z
