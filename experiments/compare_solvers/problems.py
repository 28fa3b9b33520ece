"""The problems of the solver comparison and their float64 reference solutions.

A *problem* is a point set x [n, d] (normalised features, or max-normalised 1-D / 3-D targets), its
Euclidean cost C(x) with the diagonal excluded, and epsilon. Every solver configuration is measured
(solvers.py) against one float64 `Reference` of the same problem:

- plan: marginal error max(|T1 - p|_1, |T^T 1 - p|_1), plan error |T - T*|_1;
- loss: the transport term of L_ot, <C, T>, relative error;
- gradient: d<C(x), T(C(x))>/dx — the part of L_ot that carries gradient — relative error and cosine.

The reference plan comes from a symmetric log-domain Sinkhorn (f <- (f + softmin(C - f)) / 2, with
epsilon scaling) run in float64 to a marginal error of 1e-6, then Newton's method on T(f) 1 = p (whose
Jacobian (diag(T1) + T) / eps is positive definite) to 1e-12 — Sinkhorn alone crawls at small
epsilon, where the plan is close to a matching. Its gradient comes from the implicit function theorem
on those potentials with a dense float64 solve (no CG, no ott-jax). `finite_difference_grad` checks
it on small problems (`reference_checks`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.coordinate import configs, train
from experiments.coordinate.data import NUM_POINTS, coordinate_dataset
from experiments.coordinate.report import seed0_features

PROBLEM_KINDS = ("features", "targets-1d", "targets-3d", "trained")
FEATURE_DIM = 16


def problem_points(kind: str, n: int, seed: int = 0) -> np.ndarray:
  """Points x [n, d] (float64) of a problem kind, normalised as `rot_loss` normalises them.

  features: Gaussian [n, 16] divided by the mean row norm (C_Z); targets-1d / targets-3d: uniform
  [n, 1] / [n, 3] scaled so that the largest pairwise distance is 1 (C_Y); trained: the 100-D
  encoder features (mean-norm normalised) of the coordinate-task MLP trained with L_ot (lambda 100,
  gamma 0.01, 1,000 epochs, `seed` = its init seed) on the circle data, for the first n of its
  NUM_POINTS = 3000 points.
  """
  rng = np.random.default_rng(seed)
  if kind == "trained":
    if n > NUM_POINTS:
      raise ValueError(f"The trained kind has {NUM_POINTS} points, not {n}.")
    x = _trained_circle_features(seed)[:n]
    return x / np.linalg.norm(x, axis=1).mean()
  if kind == "features":
    x = rng.normal(size=(n, FEATURE_DIM))
    return x / np.linalg.norm(x, axis=1).mean()
  if kind in ("targets-1d", "targets-3d"):
    x = rng.uniform(0.0, 10.0, size=(n, 1 if kind == "targets-1d" else 3))
    return x / _distances(x).max()
  raise ValueError(f"Unknown problem kind {kind!r}; choose from {PROBLEM_KINDS}.")


@functools.lru_cache(maxsize=4)
def _trained_circle_features(seed: int) -> np.ndarray:
  data = coordinate_dataset("circle", seed=0)
  protocol = dataclasses.replace(configs.Protocol(), epochs=1000, seeds=1)
  _, fit, program = train.fit(data, train.Unit("circle", "ot", 100.0, 0.01), [seed], protocol)
  return seed0_features(program, fit, data.x).astype(np.float64)


def _distances(x):
  """Euclidean distances by explicit differences, clamped as in rot_loss (NumPy or JAX arrays).

  Not the expanded form |x_i|^2 + |x_j|^2 - 2 x_i.x_j: in float32 its cancellation for close points
  spoils the gradient of every solver alike (targets-1d, n = 50: 0.33 relative error), which would
  hide the solvers' own differences.
  """
  xp = jnp if isinstance(x, jax.Array) else np
  diff = x[:, None, :] - x[None, :, :]
  return xp.sqrt(xp.maximum((diff * diff).sum(-1), 1e-12))


def cost_matrix(x):
  """C(x) [n, n] with a zero diagonal (each solver excludes the diagonal its own way)."""
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.where(xp.eye(x.shape[0], dtype=bool), 0.0, _distances(x))


class Reference(NamedTuple):
  """Float64 solution of one problem."""
  plan: np.ndarray          # [n, n]
  potential: np.ndarray     # [n] symmetric potential f, plan = exp((f_i + f_j - C_ij) / eps)
  loss: float               # <C, T>
  grad: np.ndarray          # [n, d], d<C(x), T(C(x))>/dx
  marginal_error: float
  iterations: int


def symmetric_sinkhorn(cost: np.ndarray, epsilon: float, *, tol: float = 1e-12) -> tuple[np.ndarray, int, float]:
  """Symmetric potential f [n] of the masked self-transport (float64), iterations, marginal error.

  Averaged updates f <- (f + softmin_eps(C - f) - eps log n) / 2 (they damp the oscillation that
  makes alternating Sinkhorn crawl when the plan is close to a matching), warm-started by epsilon
  scaling from max(1, eps) down to eps, then polished by Newton steps (`_newton_polish`).
  Returns (f, Sinkhorn iterations + Newton steps, final L1 marginal error).
  """
  with jax.enable_x64(True):
    log_kernel_mask = jnp.where(jnp.eye(cost.shape[0], dtype=bool), -jnp.inf, 0.0)
    c = jnp.asarray(cost, jnp.float64)
    f = jnp.zeros(cost.shape[0], jnp.float64)
    total = 0
    for eps in _epsilon_ladder(epsilon):
      f, its, err = _symmetric_solve(c, log_kernel_mask, f, eps, max(tol, 1e-6), 20_000)
      total += int(its)
  f, newton_steps, err = _newton_polish(np.asarray(cost, np.float64), np.asarray(f), epsilon, tol)
  return f, total + newton_steps, err


def _newton_polish(cost, f, epsilon, tol, max_steps: int = 100):
  """Newton steps f <- f - eps H^-1 (T(f) 1 - p), H = diag(T1) + T, with backtracking on the error."""
  n = cost.shape[0]
  mask = np.eye(n, dtype=bool)

  def residual(f):
    plan = np.where(mask, 0.0, np.exp(np.minimum((f[:, None] + f[None, :] - cost) / epsilon, 700.0)))
    return plan, plan.sum(1) - 1.0 / n

  plan, r = residual(f)
  err = np.abs(r).sum()
  for step in range(max_steps):
    if err <= tol:
      return f, step, float(err)
    direction = -epsilon * np.linalg.lstsq(np.diag(plan.sum(1)) + plan, r, rcond=None)[0]
    alpha = 1.0
    while alpha > 1e-4:
      candidate = f + alpha * direction
      cand_plan, cand_r = residual(candidate)
      if np.abs(cand_r).sum() < err:
        f, plan, r, err = candidate, cand_plan, cand_r, np.abs(cand_r).sum()
        break
      alpha /= 2
    else:
      break  # no decrease: at the floating-point floor
  return f, max_steps, float(err)


def _epsilon_ladder(epsilon: float) -> list[float]:
  start = max(1.0, epsilon)
  steps = max(0, math.ceil(math.log2(start / epsilon)))
  return [max(epsilon, start / 2 ** k) for k in range(steps)] + [epsilon]


@jax.jit
def _symmetric_solve(cost, log_kernel_mask, f, eps, tol, max_iterations):
  n = cost.shape[0]

  def plan_of(f):
    return jnp.exp((f[:, None] + f[None, :] - cost) / eps + log_kernel_mask)

  def body(state):
    f, it, _ = state
    softmin = -eps * jax.nn.logsumexp((f[None, :] - cost) / eps + log_kernel_mask, axis=1)
    f = 0.5 * (f + softmin - eps * jnp.log(n))
    err = jnp.sum(jnp.abs(plan_of(f).sum(1) - 1.0 / n))
    return f, it + 1, err

  return jax.lax.while_loop(lambda s: (s[2] > tol) & (s[1] < max_iterations), body,
                            (f, jnp.asarray(0), jnp.asarray(jnp.inf, cost.dtype)))


def _plan(cost: np.ndarray, f: np.ndarray, epsilon: float) -> np.ndarray:
  """exp((f_i + f_j - C_ij) / eps) with a zero diagonal (float64)."""
  log_plan = (f[:, None] + f[None, :] - cost) / epsilon
  np.fill_diagonal(log_plan, -np.inf)
  return np.exp(log_plan)


def reference(points: np.ndarray, epsilon: float, *, tol: float = 1e-12) -> Reference:
  """The float64 `Reference` of the problem (points, epsilon)."""
  x = np.asarray(points, np.float64)
  cost = cost_matrix(x)
  f, iterations, err = symmetric_sinkhorn(cost, epsilon, tol=tol)
  plan = _plan(cost, f, epsilon)
  # d<C, T(C)>/dC = T + (implicit part with plan cotangent C): the implicit function theorem on the
  # symmetric potential (rtjax.sinkhorn), solved densely here.
  s = 2.0 * cost
  rhs = (s * plan).sum(1) / epsilon
  h = np.diag(plan.sum(1)) + plan
  v = np.linalg.lstsq(h, rhs, rcond=None)[0]
  cost_bar = plan + 0.5 * (v[:, None] + v[None, :]) * plan - 0.5 * s * plan / epsilon
  with jax.enable_x64(True):
    _, vjp = jax.vjp(lambda p: cost_matrix(p), jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(cost_bar))
  return Reference(plan, f, float((cost * plan).sum()), np.asarray(grad), err, iterations)


def finite_difference_grad(points: np.ndarray, epsilon: float, h: float = 1e-6) -> np.ndarray:
  """Central finite differences of <C(x), T(C(x))> in float64 (small problems only: 2 n d solves)."""
  x = np.asarray(points, np.float64)
  grad = np.zeros_like(x)

  def value(p):
    cost = cost_matrix(p)
    f, _, _ = symmetric_sinkhorn(cost, epsilon)
    return float((cost * _plan(cost, f, epsilon)).sum())

  for idx in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[idx] = h
    grad[idx] = (value(x + step) - value(x - step)) / (2 * h)
  return grad




def reference_checks(n: int, epsilons) -> list[dict]:
  """The reference gradient (implicit, dense solve) against finite differences, one record per epsilon."""
  out = []
  for eps in epsilons:
    points = problem_points("features", n, seed=0)[:, :4]  # d = 4 keeps FD at 8 n solves
    ref = reference(points, eps)
    fd = finite_difference_grad(points, eps)
    out.append({"n": n, "d": 4, "epsilon": eps, "reference_marginal_error": ref.marginal_error,
                "implicit_vs_fd_rel": float(np.linalg.norm(ref.grad - fd) / np.linalg.norm(fd))})
  return out
