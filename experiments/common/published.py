"""The authors' published formulation of L_ot (PyTorch + POT), as a peer for benchmarks and comparisons.

As in docs/design.md ("The maths"): features normalised by their mean norm, C_Z Euclidean, C_Y
Euclidean / max, both + 999 I, T = POT `ot.sinkhorn` (kernel-mode Sinkhorn-Knopp, numItermax=1000,
stopThr=1e-9), T_Y detached, autograd through T_Z's iterations, L = |<C_Z, T_Y> - <C_Z, T_Z>|.
Needs `torch` and `pot`; both are imported only when a function here is called.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

PUBLISHED_SINKHORN = {"numItermax": 1000, "stopThr": 1e-9}
DIAGONAL_COST = 999.0


def available() -> bool:
  """Whether torch and POT are importable."""
  try:
    import ot  # noqa: F401
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def rot_loss_fn(targets: np.ndarray, *, epsilon: float, device: str = "cpu", dtype: str = "float32",
                **sinkhorn_kwargs) -> Callable:
  """features -> L_ot (a torch scalar with autograd), the published code's loss for fixed `targets`.

  Args:
    targets: [n] or [n, k] targets.
    epsilon: POT's `reg` (absolute).
    device, dtype: torch device and dtype name.
    sinkhorn_kwargs: override `numItermax` / `stopThr` / `method` of `ot.sinkhorn`.
  """
  import ot
  import torch

  kwargs = dict(PUBLISHED_SINKHORN, **sinkhorn_kwargs)
  torch_dtype = getattr(torch, dtype)
  y = torch.as_tensor(np.asarray(targets).reshape(len(targets), -1), dtype=torch_dtype, device=device)
  n = y.shape[0]
  marginal = torch.full((n,), 1.0 / n, dtype=torch_dtype, device=device)
  big = DIAGONAL_COST * torch.eye(n, dtype=torch_dtype, device=device)

  def distances(x):
    sq = (x * x).sum(1)
    return torch.sqrt(torch.clamp(sq[:, None] + sq[None, :] - 2 * x @ x.T, min=1e-12))

  cost_y = distances(y)
  plan_y = ot.sinkhorn(marginal, marginal, cost_y / cost_y.max() + big, epsilon, **kwargs).detach()

  def loss(features):
    z = features / features.norm(dim=1).mean()
    cost_z = distances(z) + big
    plan_z = ot.sinkhorn(marginal, marginal, cost_z, epsilon, **kwargs)
    return torch.abs((cost_z * plan_y).sum() - (cost_z * plan_z).sum())

  return loss


def value_and_grad_fn(targets: np.ndarray, *, epsilon: float, device: str = "cpu", dtype: str = "float32",
                      **sinkhorn_kwargs) -> Callable:
  """features (torch tensor [n, d]) -> (loss, gradient), both torch tensors, by autograd."""
  import torch

  loss_fn = rot_loss_fn(targets, epsilon=epsilon, device=device, dtype=dtype, **sinkhorn_kwargs)

  def value_and_grad(features):
    features = features.detach().requires_grad_(True)
    value = loss_fn(features)
    (grad,) = torch.autograd.grad(value, features)
    return value.detach(), grad

  return value_and_grad
