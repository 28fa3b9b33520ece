"""Independent float64 NumPy reference for the masked self-transport and the ROT loss.

Shares no code with rtjax: log-domain Sinkhorn with an exact (-inf) diagonal exclusion, run to a
marginal error of 1e-12, distances by explicit differences, gradients by central finite differences.
"""
from __future__ import annotations

import functools

import numpy as np

_WARM_START: dict = {}  # last potentials per (n, epsilon): finite differences start next to the solution


def sinkhorn_plan(cost: np.ndarray, epsilon: float, tol: float = 1e-12, max_iter: int = 200_000,
                  warm_start: bool = True):
  """Plan [n, n] of min <C,T> + eps sum T log T, T1 = T^T1 = 1/n, T_ii = 0 (float64, log domain,
  alternating updates: any cost, symmetric or not).

  Stops when the L1 row-marginal error (columns are exact after each update) is below `tol`. The
  initial potential only changes the iteration count, not the fixed point.
  """
  cost = np.asarray(cost, np.float64)
  n = cost.shape[0]
  log_k = -cost / epsilon
  np.fill_diagonal(log_k, -np.inf)
  log_p = np.full(n, -np.log(n))
  g = _WARM_START.get((n, epsilon), np.zeros(n)) if warm_start else np.zeros(n)
  for it in range(max_iter):
    f = log_p - _logsumexp(log_k + g[None, :], axis=1)
    g = log_p - _logsumexp(log_k + f[:, None], axis=0)
    if it % 10:
      continue
    plan = np.exp(log_k + f[:, None] + g[None, :])
    if np.abs(plan.sum(1) - 1.0 / n).sum() < tol:
      if warm_start:
        _WARM_START[(n, epsilon)] = g
      return plan
  raise RuntimeError("reference Sinkhorn did not converge")


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
  top = a.max(axis=axis, keepdims=True)
  return np.log(np.exp(a - top).sum(axis=axis)) + top.squeeze(axis)


def distances(x: np.ndarray) -> np.ndarray:
  diff = x[:, None, :] - x[None, :, :]
  return np.sqrt(np.maximum((diff ** 2).sum(-1), 1e-12))


def normalized_target_cost(y: np.ndarray) -> np.ndarray:
  """C_Y: distances of the targets divided by the largest one, clamped after the division (so that the
  cost does not depend on the targets' unit); constant targets give the clamp value everywhere."""
  diff = y[:, None, :] - y[None, :, :]
  largest = np.sqrt((diff ** 2).sum(-1).max())
  return distances(y / largest if largest > 0 else np.zeros_like(y))


def rot_loss(features: np.ndarray, targets: np.ndarray, epsilon: float, normalize: bool = True) -> float:
  """The published ROT loss in float64 (docs/design.md, steps 1-5), C_Y clamped after normalisation."""
  z = np.asarray(features, np.float64)
  y = np.asarray(targets, np.float64).reshape(len(z), -1)
  if normalize:
    z = z / np.linalg.norm(z, axis=1).mean()
  cost_z = distances(z)
  np.fill_diagonal(cost_z, 0.0)
  t_y = _target_plan(y.tobytes(), y.shape, epsilon)
  t_z = sinkhorn_plan(cost_z, epsilon)
  return abs((cost_z * t_y).sum() - (cost_z * t_z).sum())


@functools.lru_cache(maxsize=64)
def _target_plan(y_bytes: bytes, shape: tuple, epsilon: float) -> np.ndarray:
  """T_Y of max-normalised target distances (cached: finite differences only move the features)."""
  return sinkhorn_plan(normalized_target_cost(np.frombuffer(y_bytes, np.float64).reshape(shape)), epsilon,
                       warm_start=False)


def finite_difference_grad(fn, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
  """Central finite differences of a scalar fn at x (float64)."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[idx] = h
    grad[idx] = (fn(x + step) - fn(x - step)) / (2 * h)
  return grad


def relative_error(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))
