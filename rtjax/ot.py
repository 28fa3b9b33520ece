"""Masked self-transport: the entropic OT plan of a point set onto itself with T_ii = 0, on ott-jax.

The problem (DESIGN §2), for a cost C [n, n] and uniform marginals p = 1/n:

    T(C) = argmin_T <C, T> + epsilon * sum_ij T_ij log T_ij   s.t.  T 1 = p,  T^T 1 = p,  T_ii = 0.

T_ii = 0 is imposed by replacing the diagonal of C with a large cost (the published code adds 999;
exp(-999 / epsilon) underflows to 0). `diagonal_cost=float("inf")` excludes the diagonal exactly.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as sparse_linalg
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn

from rtjax import _checks

Differentiation = Literal["symmetric-implicit", "unrolled", "implicit"]
DIFFERENTIATION_MODES = ("symmetric-implicit", "unrolled", "implicit")

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
    differentiation: "symmetric-implicit" (default) differentiates the optimality conditions of the
      symmetric problem (rtjax's own backward pass, see `_symmetric_implicit_plan`): a CG solve with
      the positive-definite matrix diag(T 1) + T that never raises, costs a few matrix-vector products,
      and does not depend on how many iterations the forward solve took — so warm starts (`init`) keep
      their full speed-up. It needs a symmetric cost (self-transport costs are). "unrolled"
      backpropagates through the iterations (ott-jax's while-loop path, as the published code does with
      autograd through POT): exact for the computed iterates, but its cost grows with the iterations and
      a warm start makes its gradient inaccurate. "implicit" is ott-jax's implicit differentiation (a
      lineax solve), which raises inside jit when that solve returns non-finite values (DESIGN §3).
    linear_solve_tolerance: relative residual at which the CG solve of "symmetric-implicit" stops.
    linear_solve_max_iterations: cap on its CG iterations.
  """
  threshold: float = 1e-4
  max_iterations: int = 2000
  min_iterations: int = 0
  inner_iterations: int = 10
  lse_mode: bool = True
  differentiation: Differentiation = "symmetric-implicit"
  linear_solve_tolerance: float = 1e-6
  linear_solve_max_iterations: int = 500

  def __post_init__(self):
    if self.differentiation not in DIFFERENTIATION_MODES:
      raise ValueError(
          f"`differentiation` must be one of {DIFFERENTIATION_MODES}, got {self.differentiation!r}.")
    if not self.linear_solve_tolerance > 0 or self.linear_solve_max_iterations < 1:
      raise ValueError(
          "`linear_solve_tolerance` must be > 0 and `linear_solve_max_iterations` >= 1, got "
          f"{self.linear_solve_tolerance} and {self.linear_solve_max_iterations}.")
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
    """The ott-jax solver for these settings ("symmetric-implicit" solves without differentiating)."""
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
    potential: [n] symmetric dual potential f (plan_ij = exp((f_i + f_j - C_ij) / epsilon) at the
      optimum); pass it as `init` of the next solve on a nearby cost to warm-start.
  """
  plan: jax.Array
  converged: jax.Array
  iterations: jax.Array
  marginal_error: jax.Array
  finite: jax.Array
  potential: jax.Array


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
    init: jax.Array | None = None,
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
    init: optional [n] potential to start from (e.g. the `potential` of the previous training step's
      solve); None starts from zero. It changes the iterations needed, not the solution, and gets no
      gradient.
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
  if init is not None and jnp.shape(init) != (n,):
    raise ValueError(f"`init` must be a potential of shape ({n},), got {_checks.shape_of(init)}.")

  masked = mask_diagonal(cost, diagonal_cost)
  own_backward = options.differentiation == "symmetric-implicit"
  geom = geometry.Geometry(
      cost_matrix=jax.lax.stop_gradient(masked) if own_backward else masked, epsilon=epsilon)
  if init is not None:
    init = jax.lax.stop_gradient(jnp.asarray(init, cost.dtype))
    init = (init, init)
  out = options.sinkhorn()(linear_problem.LinearProblem(geom), init=init)
  if own_backward:
    plan = _symmetric_implicit_plan(
        masked, jnp.asarray(epsilon, cost.dtype), out.f, out.g,
        options.linear_solve_tolerance, options.linear_solve_max_iterations)
  else:
    plan = out.matrix
  potential = jax.lax.stop_gradient(0.5 * (out.f + out.g))
  return SelfTransport(plan=plan, potential=potential,
                       **_diagnostics(jax.lax.stop_gradient(plan), out.n_iters, options))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _symmetric_implicit_plan(cost, epsilon, f, g, tolerance, max_iterations):
  """Plan exp((f_i + g_j - C_ij) / eps) of converged potentials, differentiated implicitly.

  For a symmetric cost the optimal potentials are symmetric, f = g, and the plan T_ij =
  exp((f_i + f_j - C_ij) / eps) satisfies T 1 = p. Differentiating that condition gives
  H df = rowsum(T * dC) with H = diag(T 1) + T, which is symmetric positive definite
  (x^T H x = sum_{i<j} T_ij (x_i + x_j)^2 > 0 when the support of T is not bipartite, as a dense
  entropic plan of n >= 3 points never is), so CG solves it; for n = 2 the one unsolvable direction
  does not reach the plan. The cotangent of a plan cotangent G (S = G + G^T) is then
      C_bar = (v_i + v_j) T_ij / 2 - S_ij T_ij / (2 eps),   H v = rowsum(S * T) / eps,
  symmetrised (only symmetric cost perturbations are meaningful). T depends on C / eps only, so
  eps_bar = -sum_ij C_bar_ij C_ij / eps. f, g receive no cotangent.
  """
  del tolerance, max_iterations
  return _plan_from_potentials(cost, epsilon, f, g)


def _plan_from_potentials(cost, epsilon, f, g):
  return jnp.exp((f[:, None] + g[None, :] - cost) / epsilon)


def _symmetric_implicit_fwd(cost, epsilon, f, g, tolerance, max_iterations):
  plan = _plan_from_potentials(cost, epsilon, f, g)
  return plan, (cost, epsilon, plan)


def _symmetric_implicit_bwd(tolerance, max_iterations, residuals, plan_bar):
  cost, epsilon, plan = residuals
  plan = 0.5 * (plan + plan.T)  # the iterate's tiny asymmetry is not part of the solution
  s = plan_bar + plan_bar.T
  rhs = jnp.sum(s * plan, axis=1) / epsilon
  row_mass = jnp.sum(plan, axis=1)
  v, _ = sparse_linalg.cg(lambda x: row_mass * x + plan @ x, rhs, tol=tolerance,
                          maxiter=max_iterations)
  cost_bar = 0.5 * (v[:, None] + v[None, :]) * plan - 0.5 * s * plan / epsilon
  # An infinite (excluded) diagonal has a zero cotangent; 0 * inf must not become NaN.
  epsilon_bar = -jnp.sum(jnp.where(cost_bar == 0, 0.0, cost_bar * cost)) / epsilon
  return cost_bar, epsilon_bar, jnp.zeros_like(plan[0]), jnp.zeros_like(plan[0])


_symmetric_implicit_plan.defvjp(_symmetric_implicit_fwd, _symmetric_implicit_bwd)


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
