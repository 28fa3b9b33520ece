"""Information Dropout (Achille & Soatto, TPAMI 2018) as in the "+ Inf Drop" baseline of the paper's
coordinate-prediction experiment (Table 3), which reuses PH-Reg's code.

Published code: needylove/PH-Reg, main.py (`MLP_InformationDropout`, `sample_lognormal`, flag 8), itself
"modified based on" ucla-vision/information-dropout. With a = alpha_max = 0.7 and sigmoid/ReLU elementwise:

    h      = MLP(x)                         Linear(m, 100) - ReLU - Linear(100, d) - ReLU; x is the
                                            network INPUT (not the features z); d = 100 = z's width
    alpha  = 0.001 + a * (a * sigmoid(h))   per feature; a appears twice, so alpha in (0.001, 0.491),
                                            and the final ReLU makes sigmoid(h) >= 1/2: alpha >= 0.246
    kl     = -log(alpha / (a + 0.001))      per feature (KL to the log-uniform prior of ReLU
                                            activations up to a constant); >= -log(0.491 / 0.701) > 0
    z'     = z * exp(alpha * eps)           training: eps ~ N(0, 1) per entry, log-normal noise with
                                            median 1 and no mean shift (log(z'/z) ~ N(0, alpha^2))
    z'     = z                              evaluation (sigma0 = 0, exp(0) = 1); kl is still computed
    loss   = L_task + 0.01 * sum_{i,k} kl_ik / n_train

All Linear layers are initialised N(0, 0.001^2) with zero biases (`init_weights`), so alpha starts at
0.001 + 0.49 * sigmoid(~0) ~ 0.246. The loss sums kl over the batch and the features and divides by the
number of training samples (the coordinate task trains full batch: n_train = 100 = the batch), with the
weight 0.01 ("generally has the best performance within the set {0.01, 0.1, 1, 10}").

In the published model z is the encoder's output (Linear - ReLU - Linear - ReLU, after its final ReLU)
and z' feeds the linear regressor. (The repository's AgeDB variant, agedb-dir/resnet_InformationDropout.py,
computes alpha from ResNet features by an extra residual stage instead; not followed here.)

Here: `InformationDropout` returns (z', kl summed over the features [...]) and
`information_dropout_loss(kl, num_train=...)` the regulariser 0.01 * sum(kl) / n_train. The noise comes
from the Flax rng stream "dropout"; `deterministic=True` (evaluation) returns z itself, no rng needed.
Calling it without x computes alpha from z (an extension; the published code always passes the input).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rtjax import _checks

__all__ = ["DEFAULT_KL_WEIGHT", "InformationDropout", "information_dropout_loss"]

DEFAULT_KL_WEIGHT = 0.01  # the published weight of sum(kl) / n_train (coordinate prediction)


class InformationDropout(nn.Module):
  """Multiplicative log-normal noise with a learned, per-feature scale alpha(x) (module docstring).

      alpha = min_alpha + max_alpha^2 * sigmoid(MLP(x)),    kl = sum_k -log(alpha_k / (max_alpha + min_alpha)),
      z' = z * exp(alpha * eps) (training, eps ~ N(0, 1)),  z' = z (deterministic).

  Attributes:
    hidden: widths of the hidden layers of the alpha network (ReLU after each); its output layer has z's
      width d. Published: (100,), i.e. Linear(m, 100) - ReLU - Linear(100, d).
    max_alpha: a = 0.7 as published (it scales the sigmoid twice and sets the KL's reference a + min_alpha).
    min_alpha: 0.001 as published, the floor of alpha (> 0: the KL is finite).
    final_relu: the ReLU after the output layer, before the sigmoid (published: True, hence alpha >= 0.246
      with the defaults); False lets alpha reach down to min_alpha.
    kernel_init, bias_init: initialisers of the alpha network (published: N(0, 0.001^2) and zeros).
  """
  hidden: Sequence[int] = (100,)
  max_alpha: float = 0.7
  min_alpha: float = 0.001
  final_relu: bool = True
  kernel_init: Callable = nn.initializers.normal(stddev=0.001)
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, z: jax.Array, x: jax.Array | None = None, *, deterministic: bool) -> tuple[jax.Array, jax.Array]:
    """Noisy features and their KL term.

    Args:
      z: [..., d] floating features (e.g. [n, d]) to perturb.
      x: [..., m] floating input the noise scale is computed from (published: the network's input); None
        computes alpha from z itself.
      deterministic: True at evaluation: z is returned unchanged (the published sigma0 = 0) and no rng is
        drawn; False draws eps from the rng stream "dropout" (`apply(..., rngs={"dropout": key})`).

    Returns:
      (z' [..., d] in z's dtype, kl [...]): kl sums the per-feature terms over the last axis, and is
      computed identically in both modes.
    """
    self._check(z, x)
    source = z if x is None else x
    h = source
    for width in self.hidden:
      h = nn.relu(nn.Dense(width, kernel_init=self.kernel_init, bias_init=self.bias_init)(h))
    h = nn.Dense(z.shape[-1], kernel_init=self.kernel_init, bias_init=self.bias_init)(h)
    if self.final_relu:
      h = nn.relu(h)
    alpha = self.min_alpha + self.max_alpha * (self.max_alpha * nn.sigmoid(h))
    kl = jnp.sum(-jnp.log(alpha / (self.max_alpha + self.min_alpha)), axis=-1)
    if deterministic:
      return z, kl
    eps = jax.random.normal(self.make_rng("dropout"), z.shape, alpha.dtype)
    return (z * jnp.exp(alpha * eps)).astype(z.dtype), kl

  def _check(self, z, x) -> None:
    _checks.require_float("z", z)
    _checks.require_rank("z", z, range(1, 64), "[..., d] features")
    if _checks.shape_of(z)[-1] < 1:
      raise ValueError(f"`z` must have at least one feature, got shape {_checks.shape_of(z)}.")
    if x is not None:
      _checks.require_float("x", x)
      _checks.require_rank("x", x, range(1, 64), "[..., m] inputs")
      if _checks.shape_of(x)[:-1] != _checks.shape_of(z)[:-1]:
        raise ValueError(f"`x` [..., m] and `z` [..., d] must share their leading (batch) shape, got x "
                         f"{_checks.shape_of(x)} and z {_checks.shape_of(z)}.")
    if isinstance(self.hidden, (str, bytes)) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.hidden):
      raise ValueError(f"`hidden` must be a sequence of positive ints, got {self.hidden!r}.")
    _checks.require_static_positive("max_alpha", self.max_alpha)
    _checks.require_static_positive("min_alpha", self.min_alpha)


def information_dropout_loss(kl: jax.Array, *, num_train: int, weight: float = DEFAULT_KL_WEIGHT) -> jax.Array:
  """The published regulariser weight * sum(kl) / n_train, to add to the task loss.

  Args:
    kl: the KL output of `InformationDropout` (any shape, e.g. [n]: summed over everything).
    num_train: n_train, the number of training samples (published: 100, trained full batch).
    weight: 0.01 as published.

  Returns:
    [] the regulariser, in kl's dtype.
  """
  _checks.require_float("kl", kl)
  if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
    raise ValueError(f"`num_train` must be a positive Python int, got {num_train!r}.")
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
    raise ValueError(f"`weight` must be a Python number >= 0, got {weight!r}.")
  return weight * jnp.sum(kl) / num_train
