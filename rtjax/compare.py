"""Numerical comparison of OT solvers on the masked self-transport problems of ROT-Reg.

A *problem* is a point set x [n, d] (normalised features, or max-normalised 1-D / 3-D targets), its
Euclidean cost C(x) with the diagonal excluded, and epsilon. Every solver configuration is measured
against one float64 `Reference` of the same problem:

- plan: marginal error max(|T1 - p|_1, |T^T 1 - p|_1), plan error |T - T*|_1;
- loss: the transport term of L_ot, <C, T>, relative error;
- gradient: d<C(x), T(C(x))>/dx — the part of L_ot that carries gradient — relative error and cosine.

The reference plan comes from a symmetric log-domain Sinkhorn (f <- (f + softmin(C - f)) / 2, with
epsilon scaling) run in float64 to a marginal error of 1e-6, then Newton's method on T(f) 1 = p (whose
Jacobian (diag(T1) + T) / eps is positive definite) to 1e-12 — Sinkhorn alone crawls at small
epsilon, where the plan is close to a matching. Its gradient comes from the implicit function theorem
on those potentials with a dense float64 solve (no CG, no ott-jax). `finite_difference_grad` checks
it on small problems.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rtjax import published

PROBLEM_KINDS = ("features", "targets-1d", "targets-3d", "trained")
FEATURE_DIM = 16


def problem_points(kind: str, n: int, seed: int = 0) -> np.ndarray:
  """Points x [n, d] (float64) of a problem kind, normalised as `rot_loss` normalises them.

  features: Gaussian [n, 16] divided by the mean row norm (C_Z); targets-1d / targets-3d: uniform
  [n, 1] / [n, 3] scaled so that the largest pairwise distance is 1 (C_Y); trained: the 100-D
  encoder features (mean-norm normalised) of the coordinate-task MLP trained with L_ot (lambda 100,
  gamma 0.01, 1,000 epochs, `seed` = its init seed) on the circle data, for the first n of its 3000
  points (n <= 3000).
  """
  rng = np.random.default_rng(seed)
  if kind == "trained":
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
  from rtjax import coordinate
  from rtjax.data import coordinate_dataset

  data = coordinate_dataset("circle", seed=0)
  _, fit, model = coordinate.train_method(data, "ot", [seed], lam=100.0, epsilon=0.01,
                                          protocol=coordinate.Protocol(epochs=1000), progress=False)
  params = jax.tree_util.tree_map(lambda a: a[0], fit.best_params)
  return coordinate.encoder_features(model, params, data.x).astype(np.float64)


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
  # d<C, T(C)>/dC = T + (implicit part with plan cotangent C); see rtjax.ot._symmetric_implicit_plan.
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


# ---------------------------------------------------------------------------------------------
# Measuring a solve against the reference.

def plan_errors(plan, ref: Reference, cost: np.ndarray) -> dict:
  """Marginal error, plan L1 error, relative loss error and non-finite flag of a plan [n, n]."""
  plan = np.asarray(plan, np.float64)
  n = plan.shape[0]
  finite = bool(np.all(np.isfinite(plan)))
  marginal = max(np.abs(plan.sum(1) - 1 / n).sum(), np.abs(plan.sum(0) - 1 / n).sum())
  loss = float((cost * plan).sum())
  return {"marginal_error": float(marginal), "plan_error_l1": float(np.abs(plan - ref.plan).sum()),
          "loss_rel_error": abs(loss - ref.loss) / abs(ref.loss), "nonfinite": not finite}


def relative_error(a, b) -> float | None:
  """|a - b| / |b| in float64 (None when there is no reference b)."""
  if b is None:
    return None
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def grad_errors(grad, ref: Reference) -> dict:
  """Relative error and cosine of a gradient [n, d] against the reference (None when not available)."""
  if grad is None:
    return {"grad_rel_error": None, "grad_cosine": None}
  g = np.asarray(grad, np.float64)
  r = ref.grad
  if not np.all(np.isfinite(g)):
    return {"grad_rel_error": float("nan"), "grad_cosine": float("nan"), "nonfinite_grad": True}
  return {"grad_rel_error": relative_error(g, r),
          "grad_cosine": float((g * r).sum() / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-300))}


@dataclasses.dataclass(frozen=True)
class Solver:
  """One solver configuration: a name, its settings (recorded), and how to run it.

  `run(points [n, d] array of `dtype`, epsilon) -> (plan [n, n], grad [n, d] or None, iterations or
  None)`; `backend` is "jax" (synchronised with block_until_ready) or "numpy"/"torch". JAX solvers
  also have `solve_only` (no gradient), measured when the gradient raises.
  """
  name: str
  family: str
  settings: dict
  run: Callable[[Any, float], tuple]
  backend: str = "jax"
  solve_only: Callable[[Any, float], tuple] | None = None


def _jax_solver(name: str, family: str, settings: dict, solve: Callable) -> Solver:
  """A JAX solver from `solve(cost [n, n] with zero diagonal, epsilon) -> (plan, iterations)`;
  the gradient is jax.grad of <C(x), T(C(x))> through whatever differentiation `solve` uses."""
  def objective(x, epsilon):
    cost = cost_matrix(x)
    plan, iterations = solve(cost, epsilon)
    return jnp.sum(cost * plan), (plan, iterations)
  value_and_grad = jax.jit(jax.value_and_grad(objective, has_aux=True))
  forward = jax.jit(lambda x, epsilon: objective(x, epsilon)[1])

  def run(x, epsilon):
    (_, (plan, iterations)), grad = value_and_grad(x, jnp.asarray(epsilon, x.dtype))
    return plan, grad, iterations

  def solve_only(x, epsilon):
    plan, iterations = forward(x, jnp.asarray(epsilon, x.dtype))
    return plan, None, iterations
  return Solver(name, family, settings, run, solve_only=solve_only)


def rtjax_solver(name: str, family: str, **options) -> Solver:
  """rtjax.self_transport with `SolverOptions` fields `options` (diagonal cost 999)."""
  from rtjax.ot import self_transport

  def solve(cost, epsilon):
    out = self_transport(cost, epsilon=epsilon, **options)
    return out.plan, out.iterations
  return _jax_solver(name, family, options, solve)


def ott_solver(name: str, family: str, *, differentiation: str, epsilon_decay: float | None = None,
               **sinkhorn_kwargs) -> Solver:
  """ott-jax's Sinkhorn used directly on C + 999 I (momentum, Anderson, epsilon schedule, ...).

  differentiation: "implicit" (ott's ImplicitDiff) or "unrolled" (implicit_diff=None).
  epsilon_decay: if set, epsilon follows ott's schedule max(eps, 1 * decay^t) (an epsilon schedule).
  """
  from ott.geometry import epsilon_scheduler, geometry
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import implicit_differentiation, sinkhorn

  implicit = implicit_differentiation.ImplicitDiff() if differentiation == "implicit" else None
  solver = sinkhorn.Sinkhorn(implicit_diff=implicit, **sinkhorn_kwargs)

  def solve(cost, epsilon):
    masked = jnp.where(jnp.eye(cost.shape[0], dtype=bool), 999.0, cost)
    eps = (epsilon if epsilon_decay is None else
           epsilon_scheduler.Epsilon(target=epsilon, init=1.0, decay=epsilon_decay))
    out = solver(linear_problem.LinearProblem(geometry.Geometry(cost_matrix=masked, epsilon=eps)))
    return out.matrix, out.n_iters
  settings = dict(sinkhorn_kwargs, differentiation=differentiation, epsilon_decay=epsilon_decay)
  settings = {k: (type(v).__name__ + str(dataclasses.asdict(v)) if dataclasses.is_dataclass(v) else v)
              for k, v in settings.items()}
  return _jax_solver(name, family, settings, solve)


def pot_solver(name: str, method: str, **kwargs) -> Solver:
  """POT `ot.sinkhorn` (NumPy backend) on C + 999 I: plan and loss only, no gradient."""
  def run(x, epsilon):
    import ot
    x = np.asarray(x)
    n = x.shape[0]
    cost = cost_matrix(x) + 999.0 * np.eye(n, dtype=x.dtype)
    a = np.full(n, 1.0 / n, dtype=x.dtype)
    plan, log = ot.sinkhorn(a, a, cost, epsilon, method=method, log=True, warn=False, **kwargs)
    return plan, None, log.get("niter")
  return Solver(name, "POT (numpy)", dict(kwargs, method=method), run, backend="numpy")


def pot_torch_solver(name: str, **kwargs) -> Solver:
  """POT `ot.sinkhorn` on the torch backend with autograd: the published implementation's path."""
  def run(x, epsilon):
    import ot
    import torch
    xt = torch.as_tensor(np.asarray(x)).requires_grad_(True)
    n = xt.shape[0]
    diff = xt[:, None, :] - xt[None, :, :]
    cost = torch.sqrt(torch.clamp((diff * diff).sum(-1), min=1e-12)) * (1 - torch.eye(n, dtype=xt.dtype))
    a = torch.full((n,), 1.0 / n, dtype=xt.dtype)
    plan, log = ot.sinkhorn(a, a, cost + 999.0 * torch.eye(n, dtype=xt.dtype), epsilon, log=True,
                            warn=False, **kwargs)
    (grad,) = torch.autograd.grad((cost * plan).sum(), xt)
    return plan.detach().numpy(), grad.numpy(), log.get("niter")
  return Solver(name, "POT (torch autograd)", kwargs, run, backend="torch")


THRESHOLDS = (1e-2, 1e-3, 1e-4, 1e-6, 1e-9)


def solvers(thresholds=THRESHOLDS, *, include_torch: bool = True) -> list[Solver]:
  """The configurations compared by `python -m experiments.compare_solvers`."""
  from ott.solvers.linear import acceleration

  out = []
  for thr in thresholds:
    out += [
        rtjax_solver(f"rtjax symmetric-implicit thr={thr:g}", "rtjax (default)", threshold=thr,
                     max_iterations=2000),
        ott_solver(f"ott implicit thr={thr:g}", "ott-jax implicit", differentiation="implicit",
                   threshold=thr, max_iterations=2000),
        ott_solver(f"ott unrolled thr={thr:g}", "ott-jax unrolled", differentiation="unrolled",
                   threshold=thr, max_iterations=2000),
    ]
  out += [
      ott_solver("ott kernel mode thr=1e-4", "ott-jax kernel mode", differentiation="implicit",
                 threshold=1e-4, max_iterations=2000, lse_mode=False),
      rtjax_solver("rtjax kernel mode thr=1e-4", "rtjax kernel mode", threshold=1e-4, lse_mode=False),
      ott_solver("ott momentum 1.3 thr=1e-4", "ott-jax momentum", differentiation="implicit",
                 threshold=1e-4, max_iterations=2000, momentum=acceleration.Momentum(value=1.3)),
      ott_solver("ott Anderson m=5 thr=1e-4", "ott-jax Anderson", differentiation="implicit",
                 threshold=1e-4, max_iterations=2000,
                 anderson=acceleration.AndersonAcceleration(memory=5)),
      ott_solver("ott eps-schedule 0.9 thr=1e-4", "ott-jax eps schedule", differentiation="implicit",
                 threshold=1e-4, max_iterations=2000, epsilon_decay=0.9),
      pot_solver("POT sinkhorn_knopp (published)", "sinkhorn", numItermax=1000, stopThr=1e-9),
      pot_solver("POT sinkhorn_log", "sinkhorn_log", numItermax=1000, stopThr=1e-9),
  ]
  if include_torch and published.available():
    out.append(pot_torch_solver("POT torch autograd (published)", numItermax=1000, stopThr=1e-9))
  return out


def measure(solver: Solver, points: np.ndarray, epsilon: float, ref: Reference, *, dtype=np.float32,
            budget_s: float = 0.5, repeats: int = 3) -> dict:
  """One row: the solver on (points, epsilon) in `dtype`, its errors against `ref`, and its time.

  Exceptions (e.g. ott-jax's implicit diff raising on a non-finite linear solve) become a row with
  `error` set, not a crash.
  """
  from rtjax.benchmark import time_call

  row = {"solver": solver.name, "family": solver.family, "settings": solver.settings,
         "dtype": np.dtype(dtype).name, "epsilon": epsilon, "n": int(points.shape[0]), "error": None}
  sync = jax.block_until_ready if solver.backend == "jax" else (lambda out: out)
  with jax.enable_x64(np.dtype(dtype) == np.float64):
    x = jnp.asarray(points, dtype) if solver.backend == "jax" else np.asarray(points, dtype)
    timed = lambda fn: time_call(fn, x, epsilon, sync=sync, min_repeats=repeats, max_repeats=repeats,
                                 budget_s=budget_s)
    try:
      timing, (plan, grad, iterations) = timed(solver.run)
    except Exception as e:  # noqa: BLE001 - a failing solver is a measurement
      row["error"] = f"{type(e).__name__}: {_first_line(e)}"
      if solver.solve_only is None:
        return dict(row, nonfinite=True)
      timing, (plan, grad, iterations) = timed(solver.solve_only)  # the plan without the gradient
  row.update(plan_errors(plan, ref, cost_matrix(np.asarray(points, np.float64))))
  row.update(grad_errors(grad, ref))
  row["nonfinite"] = row["nonfinite"] or bool(row.pop("nonfinite_grad", False))
  row.update(iterations=None if iterations is None else int(iterations),
             time_ms=timing["median_ms"], first_call_s=timing["first_call_s"])
  # Converged: finite, and the marginal error within the solver's own threshold (or 1e-9 for POT).
  threshold = solver.settings.get("threshold", solver.settings.get("stopThr", 1e-9))
  row["converged"] = (not row["nonfinite"]) and row["marginal_error"] <= max(threshold, 1e-12) * 1.01
  return row


def _first_line(e: Exception) -> str:
  """The informative line of an exception (lineax's message sits inside the callback traceback)."""
  text = str(e)
  for marker in ("A linear solver returned non-finite",):
    if marker in text:
      return marker + " output (lineax)"
  return text.strip().splitlines()[0][:200] if text.strip() else ""
