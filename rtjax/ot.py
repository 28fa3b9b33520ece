"""Masked self-transport: the entropic OT plan of a point set onto itself with T_ii = 0, on ott-jax.

The problem (DESIGN §2), for a cost C [n, n] and uniform marginals p = 1/n:

    T(C) = argmin_T <C, T> + epsilon * sum_ij T_ij log T_ij   s.t.  T 1 = p,  T^T 1 = p,  T_ii = 0.

T_ii = 0 is imposed by replacing the diagonal of C with a large cost (the published code adds 999;
exp(-999 / epsilon) underflows to 0). `diagonal_cost=float("inf")` excludes the diagonal exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn

from rtjax import _checks

Differentiation = Literal["unrolled", "implicit"]

# The published code's diagonal cost.
DEFAULT_DIAGONAL_COST = 999.0


@dataclasses.dataclass(frozen=True)
class SolverOptions:
  """Settings of ott-jax's Sinkhorn solver for the masked self-transport problem.

  Attributes:
    threshold: stop when the L1 marginal error is below this. 1e-4 (not ott-jax's 1e-3): the unrolled
      gradient at 1e-3 was up to 8e-3 relative off the float64 reference in our tests, at 1e-4 below
      1.5e-3.
    max_iterations: hard cap on Sinkhorn iterations.
    min_iterations: iterations run before the stopping test is looked at. `min_iterations ==
      max_iterations` runs exactly that many iterations (the published code's fixed 1000 in float32).
    inner_iterations: iterations between two stopping tests.
    lse_mode: log-domain updates (stable for small epsilon); False uses kernel (Sinkhorn-Knopp) mode.
    differentiation: "unrolled" backpropagates through the iterations (ott-jax's while-loop path, as
      the published code does with autograd through POT); it cannot abort a run. "implicit" uses
      ott-jax's implicit differentiation (a lineax CG solve): cheaper backward pass, but lineax raises
      inside jit when its solve returns non-finite values, which kills a training run.
  """
  threshold: float = 1e-4
  max_iterations: int = 2000
  min_iterations: int = 0
  inner_iterations: int = 10
  lse_mode: bool = True
  differentiation: Differentiation = "unrolled"

  def __post_init__(self):
    if self.differentiation not in ("unrolled", "implicit"):
      raise ValueError(
          f"`differentiation` must be 'unrolled' or 'implicit', got {self.differentiation!r}.")
    if not self.threshold >= 0:
      raise ValueError(f"`threshold` must be >= 0, got {self.threshold}.")
    if self.inner_iterations < 1:
      raise ValueError(f"`inner_iterations` must be >= 1, got {self.inner_iterations}.")
    if not 0 <= self.min_iterations <= self.max_iterations:
      raise ValueError(
          "`min_iterations` must satisfy 0 <= min_iterations <= max_iterations, got "
          f"min_iterations={self.min_iterations}, max_iterations={self.max_iterations}.")

  def replace(self, **overrides) -> "SolverOptions":
    """A copy with `overrides` applied; unknown names raise a ValueError listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(f"Unknown solver option(s) {unknown}; valid options are {sorted(fields)}.")
    return dataclasses.replace(self, **overrides)

  def sinkhorn(self) -> sinkhorn.Sinkhorn:
    """The ott-jax solver for these settings."""
    fixed = self.min_iterations == self.max_iterations
    if self.differentiation == "implicit":
      return sinkhorn.Sinkhorn(
          lse_mode=self.lse_mode, threshold=self.threshold, inner_iterations=self.inner_iterations,
          min_iterations=self.min_iterations, max_iterations=self.max_iterations,
          implicit_diff=implicit_differentiation.ImplicitDiff())
    # ott-jax 0.6.0 backpropagates wrongly through its lax.scan path, taken when min == max
    # (DESIGN §3). A fixed iteration count is run on the while-loop path instead, with the
    # stopping test disabled (threshold -1 never holds): same iterates, correct gradient.
    return sinkhorn.Sinkhorn(
        lse_mode=self.lse_mode, threshold=-1.0 if fixed else self.threshold,
        inner_iterations=self.inner_iterations, min_iterations=0 if fixed else self.min_iterations,
        max_iterations=self.max_iterations, implicit_diff=None)


def resolve_solver(solver: SolverOptions | None, overrides: dict) -> SolverOptions:
  """`solver` (default `SolverOptions()`) with keyword `overrides` applied."""
  solver = SolverOptions() if solver is None else solver
  if not isinstance(solver, SolverOptions):
    raise ValueError(f"`solver` must be a SolverOptions, got {type(solver).__name__}.")
  return solver.replace(**overrides) if overrides else solver


class SelfTransport(NamedTuple):
  """A masked self-transport plan and how the solve went (diagnostics carry no gradient).

  Attributes:
    plan: [n, n] transport plan, rows and columns summing to 1/n, zero diagonal.
    converged: [] bool, marginal_error <= threshold.
    iterations: [] int, Sinkhorn iterations run.
    marginal_error: [] the larger L1 error of the plan's two marginals.
    finite: [] bool, every entry of the plan is finite.
  """
  plan: jax.Array
  converged: jax.Array
  iterations: jax.Array
  marginal_error: jax.Array
  finite: jax.Array


def mask_diagonal(cost: jax.Array, diagonal_cost: float) -> jax.Array:
  """`cost` with its diagonal replaced by `diagonal_cost`.

  `where` (not `+ big * I`) so that no cotangent reaches the diagonal of `cost`: with an infinite
  diagonal cost a NaN there would otherwise leak into the gradient.
  """
  n = cost.shape[-1]
  return jnp.where(jnp.eye(n, dtype=bool), jnp.asarray(diagonal_cost, cost.dtype), cost)


def self_transport(
    cost: jax.Array,
    *,
    epsilon: float,
    diagonal_cost: float = DEFAULT_DIAGONAL_COST,
    solver: SolverOptions | None = None,
    **solver_overrides,
) -> SelfTransport:
  """Entropic self-transport plan of n points with zero diagonal, with solver diagnostics.

  Solves  T = argmin <C, T> + epsilon * sum T log T  s.t. T 1 = T^T 1 = 1/n, T_ii = 0  with ott-jax's
  Sinkhorn on a `Geometry` whose diagonal carries `diagonal_cost`; epsilon is absolute (not
  relative to the cost, see DESIGN §3).

  Args:
    cost: [n, n] floating cost matrix, n >= 2. Its diagonal is ignored.
    epsilon: entropic regularisation gamma > 0 (absolute).
    diagonal_cost: cost put on the diagonal; 999 as in the published code, `float("inf")` for an
      exact exclusion.
    solver: `SolverOptions`; keyword `solver_overrides` (e.g. `threshold=1e-6`,
      `differentiation="implicit"`) replace single fields.

  Returns:
    `SelfTransport(plan [n, n], converged, iterations, marginal_error, finite)`. The plan is
    differentiable w.r.t. `cost` (and `epsilon`) by the chosen differentiation mode.
  """
  _checks.require_float("cost", cost)
  n = jnp.shape(cost)[-1] if jnp.ndim(cost) else 0
  if jnp.ndim(cost) != 2 or jnp.shape(cost)[0] != n:
    raise ValueError(f"`cost` must be a square [n, n] matrix, got shape {_checks.shape_of(cost)}.")
  if n < 2:
    raise ValueError(f"`cost` must have n >= 2 points, got shape {_checks.shape_of(cost)}.")
  _checks.require_positive("epsilon", epsilon)
  _checks.require_positive("diagonal_cost", diagonal_cost)
  options = resolve_solver(solver, solver_overrides)

  cost = jnp.asarray(cost)
  if cost.dtype in (jnp.bfloat16, jnp.float16):  # the solver needs at least float32 precision
    cost = cost.astype(jnp.float32)
  geom = geometry.Geometry(cost_matrix=mask_diagonal(cost, diagonal_cost), epsilon=epsilon)
  out = options.sinkhorn()(linear_problem.LinearProblem(geom))
  plan = out.matrix
  return SelfTransport(plan=plan, **_diagnostics(jax.lax.stop_gradient(plan), out.n_iters, options))


def _diagnostics(plan: jax.Array, iterations: jax.Array, options: SolverOptions) -> dict:
  n = plan.shape[0]
  row_err = jnp.sum(jnp.abs(plan.sum(axis=1) - 1.0 / n))
  col_err = jnp.sum(jnp.abs(plan.sum(axis=0) - 1.0 / n))
  marginal_error = jnp.maximum(row_err, col_err)
  finite = jnp.all(jnp.isfinite(plan))
  return dict(
      converged=jnp.logical_and(finite, marginal_error <= options.threshold),
      iterations=jnp.asarray(iterations), marginal_error=marginal_error, finite=finite)


def self_transport_plan(cost: jax.Array, *, epsilon: float, **kwargs) -> jax.Array:
  """The plan T [n, n] of `self_transport` (same arguments), without diagnostics."""
  return self_transport(cost, epsilon=epsilon, **kwargs).plan
