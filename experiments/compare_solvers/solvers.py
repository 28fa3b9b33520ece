"""The solver catalogue of the comparison and `measure`, which runs one solver on one problem.

A `Solver` is a configuration of rtjax (the symmetric solver of `rot_loss`, or ott-jax's forward
with rtjax's implicit derivative), of ott-jax used directly (implicit or unrolled differentiation,
kernel mode, momentum, Anderson, an epsilon schedule) or of POT (NumPy, or torch autograd: the
published path). `measure` turns one run into one row: its errors against the float64 reference
(problems.py), iterations, time and, for a solver that raised or produced NaN/inf, how it failed.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import epsilon_scheduler, geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, implicit_differentiation, sinkhorn

from experiments.common import published
from experiments.common.timing import time_call
from experiments.compare_solvers.problems import Reference, cost_matrix
from rtjax import SolverOptions, self_transport


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


def rtjax_solver(name: str, family: str, *, symmetric: bool = True, **options) -> Solver:
  """rtjax.self_transport with `SolverOptions` fields `options` (diagonal cost 999): the symmetric
  solver of `rot_loss` (default) or, with symmetric=False, ott-jax's Sinkhorn + rtjax's implicit rule."""
  solver = SolverOptions(**options)

  def solve(cost, epsilon):
    out = self_transport(cost, epsilon=epsilon, symmetric=symmetric, solver=solver)
    return out.plan, out.info.iterations
  return _jax_solver(name, family, dict(options, symmetric=symmetric), solve)


def ott_solver(name: str, family: str, *, differentiation: str, epsilon_decay: float | None = None,
               **sinkhorn_kwargs) -> Solver:
  """ott-jax's Sinkhorn used directly on C + 999 I (momentum, Anderson, epsilon schedule, ...).

  differentiation: "implicit" (ott's ImplicitDiff) or "unrolled" (implicit_diff=None).
  epsilon_decay: if set, epsilon follows ott's schedule max(eps, 1 * decay^t) (an epsilon schedule).
  """
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
  out = []
  for thr in thresholds:
    out += [
        rtjax_solver(f"rtjax symmetric thr={thr:g}", "rtjax (default)", threshold=thr, max_iterations=2000),
        ott_solver(f"ott implicit thr={thr:g}", "ott-jax implicit", differentiation="implicit",
                   threshold=thr, max_iterations=2000),
        ott_solver(f"ott unrolled thr={thr:g}", "ott-jax unrolled", differentiation="unrolled",
                   threshold=thr, max_iterations=2000),
    ]
  out += [
      ott_solver("ott kernel mode thr=1e-4", "ott-jax kernel mode", differentiation="implicit",
                 threshold=1e-4, max_iterations=2000, lse_mode=False),
      rtjax_solver("rtjax ott-forward thr=1e-4", "rtjax ott forward", symmetric=False, threshold=1e-4),
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


# The error metrics of a row; None where a solver failed to produce them (never NaN: see `finite_metrics`).
METRICS = ("marginal_error", "plan_error_l1", "loss_rel_error", "grad_rel_error", "grad_cosine")


def measure(solver: Solver, points: np.ndarray, epsilon: float, ref: Reference, *, dtype=np.float32,
            budget_s: float = 0.5, repeats: int = 3) -> dict:
  """One row: the solver on (points, epsilon) in `dtype`, its errors against `ref`, and its time.

  A failing solver is a row, not a crash: an exception (e.g. ott-jax's implicit diff raising on a
  non-finite linear solve) sets `error`, and the plan is then measured without the gradient where the
  solver can (`solve_only`); a plan or gradient with NaN/inf sets `nonfinite`.
  """
  row = {"solver": solver.name, "family": solver.family, "settings": solver.settings,
         "dtype": np.dtype(dtype).name, "epsilon": epsilon, "n": int(points.shape[0]), "error": None}
  sync = jax.block_until_ready if solver.backend == "jax" else (lambda out: out)
  with jax.enable_x64(np.dtype(dtype) == np.float64):
    x = jnp.asarray(points, dtype) if solver.backend == "jax" else np.asarray(points, dtype)
    timed = lambda fn: time_call(fn, x, epsilon, sync=sync, min_repeats=repeats, max_repeats=repeats,
                                 budget_s=budget_s)
    try:
      timing, (plan, grad, iterations) = timed(solver.run)
    except Exception as e:  # a failing solver is a measurement
      row["error"] = f"{type(e).__name__}: {_first_line(e)}"
      if solver.solve_only is None:  # nothing measured: no plan at all
        return dict(row, **dict.fromkeys(METRICS), nonfinite=True, iterations=None, time_ms=None,
                    first_call_s=None, converged=False)
      timing, (plan, grad, iterations) = timed(solver.solve_only)  # the plan without the gradient
  row.update(errors(plan, grad, ref, cost_matrix(np.asarray(points, np.float64))))
  row.update(iterations=None if iterations is None else int(iterations),
             time_ms=timing["median_ms"], first_call_s=timing["first_call_s"])
  # Converged: finite, and the marginal error within the solver's own threshold (or 1e-9 for POT).
  threshold = solver.settings.get("threshold", solver.settings.get("stopThr", 1e-9))
  row["converged"] = (not row["nonfinite"]) and row["marginal_error"] <= max(threshold, 1e-12) * 1.01
  return row


def errors(plan, grad, ref: Reference, cost: np.ndarray) -> dict:
  """The `METRICS` of a plan [n, n] and gradient [n, d] (None: not computed) against `ref`, and
  `nonfinite`: whether the plan or gradient holds NaN/inf."""
  plan = np.asarray(plan, np.float64)
  nonfinite = not np.all(np.isfinite(plan)) or (grad is not None and not np.all(np.isfinite(grad)))
  return finite_metrics(dict(plan_errors(plan, ref, cost), **grad_errors(grad, ref), nonfinite=nonfinite))


def plan_errors(plan: np.ndarray, ref: Reference, cost: np.ndarray) -> dict:
  """Marginal error, plan L1 error and relative loss error of a float64 plan [n, n]."""
  n = plan.shape[0]
  marginal = max(np.abs(plan.sum(1) - 1 / n).sum(), np.abs(plan.sum(0) - 1 / n).sum())
  loss = float((cost * plan).sum())
  return {"marginal_error": float(marginal), "plan_error_l1": float(np.abs(plan - ref.plan).sum()),
          "loss_rel_error": abs(loss - ref.loss) / abs(ref.loss)}


def grad_errors(grad, ref: Reference) -> dict:
  """Relative error and cosine of a gradient [n, d] against the reference (None when there is none)."""
  if grad is None:
    return {"grad_rel_error": None, "grad_cosine": None}
  g, r = np.asarray(grad, np.float64), ref.grad
  return {"grad_rel_error": _norm(g - r) / _norm(r),
          "grad_cosine": float((g * r).sum() / (_norm(g) * _norm(r) + 1e-300))}


def _norm(v: np.ndarray) -> float:
  """The 2-norm, computed on v scaled by a power of two (exact): broken float64 solves give gradients
  of 1e183, whose squares overflow np.linalg.norm to inf."""
  top = float(np.max(np.abs(v), initial=0.0))
  if top == 0.0 or not math.isfinite(top):
    return top
  exponent = math.frexp(top)[1]
  return math.ldexp(float(np.linalg.norm(np.ldexp(v, -exponent))), exponent)


def finite_metrics(row: dict) -> dict:
  """`row` with its non-finite `METRICS` replaced by None and `nonfinite` set.

  A solver's NaN is a measured failure, recorded by the `nonfinite` flag: kept out of the numbers, it
  leaves the report's own non-finite check (results.write_results) to unexpected values. Also applied
  to the rows of earlier runs when merging (their NaN were written as such).
  """
  bad = [k for k in METRICS if isinstance(row.get(k), float) and not math.isfinite(row[k])]
  return dict(row, **dict.fromkeys(bad), nonfinite=bool(row.get("nonfinite")) or bool(bad))


def _first_line(e: Exception) -> str:
  """The informative line of an exception (lineax's message sits inside the callback traceback)."""
  text = str(e)
  for marker in ("A linear solver returned non-finite",):
    if marker in text:
      return marker + " output (lineax)"
  return text.strip().splitlines()[0][:200] if text.strip() else ""
