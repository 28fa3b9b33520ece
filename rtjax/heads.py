"""Multiple Targets (MT, paper eq. 6): the regressor predicts M copies of the target.

Each copy is regressed on the same target with the task loss; the prediction is the mean of the copies
(a single copy works as well, the copies end up nearly identical).
"""
from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtjax import _checks

__all__ = ["MultiTargetHead", "mt_loss", "mt_predict"]

ElementwiseLoss = Callable[[jax.Array, jax.Array], jax.Array]

_LOSSES: dict[str, ElementwiseLoss] = {
    "mse": lambda pred, target: jnp.square(pred - target),
    "l1": lambda pred, target: jnp.abs(pred - target),
}


class MultiTargetHead(nn.Module):
  """Linear regressor with M target copies: [..., d] -> [..., M, k].

  Attributes:
    num_targets: M, copies of the target (paper default 8).
    target_dim: k, dimension of one target (1 for age/depth, 3 for coordinates).
    kernel_init, bias_init: initialisers of the single Dense layer (d -> M * k).
  """
  num_targets: int = 8
  target_dim: int = 1
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    if self.num_targets < 1 or self.target_dim < 1:
      raise ValueError(
          f"`num_targets` and `target_dim` must be >= 1, got {self.num_targets} and {self.target_dim}.")
    out = nn.Dense(self.num_targets * self.target_dim, kernel_init=self.kernel_init,
                   bias_init=self.bias_init)(features)
    return out.reshape(*out.shape[:-1], self.num_targets, self.target_dim)


def _check_pred(pred) -> None:
  _checks.require_float("pred", pred)
  _checks.require_rank("pred", pred, range(2, 64), "[..., M, k] (M target copies of dimension k)")


def mt_loss(pred: jax.Array, targets: jax.Array, *, loss: str | ElementwiseLoss = "mse") -> jax.Array:
  """Task loss over all M copies: mean over batch, copies and target dims of loss(pred, y).

  Args:
    pred: [..., M, k] output of `MultiTargetHead`.
    targets: [..., k], or [...] when k == 1, broadcast against every copy; or [..., M, k], one target per
      copy (e.g. noise targets for all but the first copy, the paper's Table 5 ablation).
    loss: "mse", "l1", or a callable (pred, target) -> elementwise loss.

  Returns:
    [] scalar: the mean task loss of the copies (equal to the mean of the per-copy losses).
  """
  _check_pred(pred)
  _checks.require_float("targets", targets)
  batch, k = jnp.shape(pred)[:-2], jnp.shape(pred)[-1]
  tshape = _checks.shape_of(targets)
  per_copy = tshape == _checks.shape_of(pred)
  if tshape == batch and k == 1:
    targets = jnp.asarray(targets)[..., None]
  elif tshape != batch + (k,) and not per_copy:
    raise ValueError(
        f"`targets` must have shape {batch + (k,)}" + (f" or {batch}" if k == 1 else "")
        + f" (or {_checks.shape_of(pred)}, one per copy) to match pred {_checks.shape_of(pred)}, got {tshape}.")
  if isinstance(loss, str):
    if loss not in _LOSSES:
      raise ValueError(f"`loss` must be one of {sorted(_LOSSES)} or a callable, got {loss!r}.")
    loss = _LOSSES[loss]
  return jnp.mean(loss(pred, targets if per_copy else jnp.expand_dims(targets, -2)))


def mt_predict(pred: jax.Array) -> jax.Array:
  """Prediction from M copies: pred [..., M, k] -> mean over copies [..., k]."""
  _check_pred(pred)
  return jnp.mean(pred, axis=-2)
