"""Masked self-transport of a cost matrix: the entropic OT plan of n points onto themselves, T_ii = 0.

    T(C) = argmin_T <C, T> + epsilon * sum_ij T_ij log T_ij   s.t.  T 1 = T^T 1 = p = 1/n,  T_ii = 0,

with T_ii = 0 imposed by a large diagonal cost (999 as published; +inf excludes the diagonal exactly).
`self_transport` solves it for *any* cost with ott-jax's Sinkhorn and differentiates the solution
implicitly (rtjax's own rule, exact per cost entry and to every order); `symmetric=True` solves the
symmetric part of the cost with rtjax's one-pass symmetric iteration (`rtjax.sinkhorn`), which is what
`rot_loss` uses.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as sparse_linalg
from jax.custom_derivatives import SymbolicZero
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from rtjax import _checks
from rtjax.costs import MatrixCost
from rtjax.sinkhorn import SolveInfo, SolverOptions, check_options, plan_rows, solve

__all__ = ["DEFAULT_DIAGONAL_COST", "SelfTransport", "self_transport"]

# The published code's diagonal cost.
DEFAULT_DIAGONAL_COST = 999.0


class SelfTransport(NamedTuple):
  """A masked self-transport plan, its potentials and how the solve went.

  Attributes:
    plan: [n, n] plan, rows and columns summing to 1/n, zero diagonal (up to exp(-diagonal_cost/eps)).
    f, g: [n] dual potentials, plan_ij = exp((f_i + g_j - C_ij) / epsilon); f = g for `symmetric=True`.
      Pass `(f, g)` as `init` of a solve on a nearby cost to warm-start it.
    info: `SolveInfo` (converged, iterations, marginal_error, finite); no gradient.
  """
  plan: jax.Array
  f: jax.Array
  g: jax.Array
  info: SolveInfo


def self_transport(
    cost: jax.Array,
    *,
    epsilon: float | jax.Array,
    diagonal_cost: float = DEFAULT_DIAGONAL_COST,
    symmetric: bool = False,
    init: tuple[jax.Array, jax.Array] | None = None,
    solver: SolverOptions | None = None,
) -> SelfTransport:
  """Entropic self-transport plan of n points with the diagonal excluded, differentiable to any order.

  `symmetric=False` (default) solves the problem for the given cost, symmetric or not, with ott-jax's
  log-domain Sinkhorn (alternating f/g updates; a `Geometry` whose diagonal carries `diagonal_cost`,
  epsilon absolute). Its derivative comes from the implicit function theorem on both marginal
  conditions (a CG solve of size 2n), so the gradient is exact for every single cost entry, not only
  for symmetric perturbations. `symmetric=True` solves for the symmetric part (C + C^T) / 2 with one
  potential (one pass per iteration, an implicit solve of size n): faster, and the exact derivative of
  that function (a cost entry C_ij then acts through (C_ij + C_ji) / 2).

  Every derivative is supported: reverse and forward mode, w.r.t. the cost and epsilon, and higher
  orders (Hessian-vector products), all by the implicit function theorem. They are exact at the
  solution; their accuracy follows `solver.threshold` and `solver.linear_solve_tolerance`.

  Args:
    cost: [n, n] floating cost matrix, n >= 2; its diagonal is ignored. bfloat16/float16 are upcast.
    epsilon: entropic regularisation > 0, absolute (not relative to the cost); may be traced.
    diagonal_cost: cost put on the diagonal, a Python number > 0: 999 as in the published code,
      `float("inf")` for an exact exclusion.
    symmetric: solve the symmetric part of the cost with the symmetric solver (see above).
    init: optional `(f, g)` potentials [n] to start from (a previous solve's `.f, .g`); changes the
      iterations needed, not the solution, and gets no gradient.
    solver: `rtjax.SolverOptions` (threshold 1e-5 on the L1 marginal error, max_iterations 2000, CG
      settings of the implicit derivative).

  Returns:
    `SelfTransport(plan [n, n], f [n], g [n], info)`. Non-convergence is reported in `info`, never
    raised.

  Raises:
    ValueError: non-square or non-float cost, n < 2, epsilon or diagonal_cost <= 0, a traced
      diagonal_cost, a malformed init, or a `solver` that is not a SolverOptions.
  """
  _checks.require_float("cost", cost)
  n = _checks.require_square("cost", cost, min_n=2)
  _checks.require_positive("epsilon", epsilon)
  _checks.require_static_positive("diagonal_cost", diagonal_cost)
  options = check_options(solver)
  if init is not None and (not isinstance(init, (tuple, list)) or len(init) != 2
                           or any(_checks.shape_of(p) != (n,) for p in init)):
    raise ValueError(f"`init` must be a pair (f, g) of potentials of shape ({n},), got {_describe(init)}.")
  init = None if init is None else tuple(init)
  return _self_transport(_checks.upcast(jnp.asarray(cost)), epsilon, init, diagonal_cost=diagonal_cost,
                         symmetric=symmetric, options=options)


@functools.partial(jax.jit, static_argnames=("diagonal_cost", "symmetric", "options"))
def _self_transport(cost, epsilon, init, *, diagonal_cost, symmetric, options) -> SelfTransport:
  """`self_transport` after validation (compiled once per shape and setting, also when called eagerly)."""
  if symmetric:
    matrix = MatrixCost(cost, diagonal_cost, symmetrize=True)
    start = None if init is None else 0.5 * (init[0] + init[1])
    f, info = solve(matrix, epsilon, start, options)
    return SelfTransport(plan_rows(matrix, f, epsilon, None), f, f, info)
  n = cost.shape[0]
  masked = jnp.where(jnp.eye(n, dtype=bool), jnp.asarray(diagonal_cost, cost.dtype), cost)
  f, g, info = _ott_sinkhorn(jax.lax.stop_gradient(masked), jax.lax.stop_gradient(epsilon), init, options)
  f, g = _implicit_potentials(masked, epsilon, (f, g), options.linear_solve_tolerance,
                              options.linear_solve_max_iterations)
  return SelfTransport(_plan(masked, f, g, epsilon)[1], f, g, info)


def _describe(x) -> str:
  if isinstance(x, (tuple, list)):
    return f"a {type(x).__name__} of shapes {[_checks.shape_of(p) for p in x]}"
  return f"{type(x).__name__} of shape {_checks.shape_of(x)}"


def _inner_iterations(max_iterations: int) -> int:
  """ott-jax tests convergence every `inner_iterations` and runs whole chunks of them: the largest
  divisor of max_iterations up to 10 makes it stop exactly at max_iterations."""
  return max(k for k in range(1, 11) if max_iterations % k == 0)


def _ott_sinkhorn(masked, epsilon, init, options: SolverOptions):
  """ott-jax's Sinkhorn on the masked cost (no gradient): potentials f, g [n] and the `SolveInfo`."""
  solver = ott_sinkhorn.Sinkhorn(
      threshold=options.threshold, max_iterations=options.max_iterations, min_iterations=0,
      inner_iterations=_inner_iterations(options.max_iterations), implicit_diff=None)
  if init is not None:
    init = tuple(jax.lax.stop_gradient(jnp.asarray(p, masked.dtype)) for p in init)
  out = solver(linear_problem.LinearProblem(geometry.Geometry(cost_matrix=masked, epsilon=epsilon)),
               init=init)
  plan = _plan(masked, out.f, out.g, epsilon)[1]
  n = masked.shape[0]
  error = jnp.maximum(jnp.sum(jnp.abs(plan.sum(1) - 1.0 / n)), jnp.sum(jnp.abs(plan.sum(0) - 1.0 / n)))
  finite = jnp.all(jnp.isfinite(plan)) & jnp.isfinite(error)
  info = SolveInfo(finite & (error <= options.threshold), jnp.asarray(out.n_iters), error, finite)
  return out.f, out.g, info


def _plan(masked, f, g, epsilon):
  """(A = f_i + g_j - C_ij with 0 where C is +inf, T = exp(A / eps) with 0 there) [n, n]."""
  finite = jnp.isfinite(masked)
  a = jnp.where(finite, f[:, None] + g[None, :] - jnp.where(finite, masked, 0.0), 0.0)
  return a, jnp.where(finite, jnp.exp(a / epsilon), 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _implicit_potentials(masked, epsilon, potentials, tolerance, max_iterations):
  """`potentials` (f, g), taken as the solution of T 1 = p, T^T 1 = p for (masked, epsilon).

  JVP: with T = exp(A / eps), A_ij = f_i + g_j - C_ij and D = dC + A deps / eps,
      [[diag(T 1), T], [T^T, diag(T^T 1)]] [df; dg] = [rowsum(T * D); colsum(T * D)].
  The matrix is symmetric positive semi-definite with null space (1, -1) (the potentials' gauge), and
  the right-hand side is orthogonal to it, so CG from zero converges to the minimum-norm solution;
  the plan does not depend on the gauge.
  """
  del masked, epsilon, tolerance, max_iterations
  return potentials


@functools.partial(_implicit_potentials.defjvp, symbolic_zeros=True)
def _implicit_potentials_jvp(tolerance, max_iterations, primals, tangents):
  masked, epsilon, potentials = primals
  masked_dot, epsilon_dot, _ = tangents
  f, g = _implicit_potentials(masked, epsilon, potentials, tolerance, max_iterations)
  if isinstance(masked_dot, SymbolicZero) and isinstance(epsilon_dot, SymbolicZero):
    return (f, g), (jnp.zeros_like(f), jnp.zeros_like(g))
  a, t = _plan(masked, f, g, epsilon)
  d = jnp.zeros_like(t)
  if not isinstance(masked_dot, SymbolicZero):
    d = d + jnp.where(jnp.isfinite(masked), masked_dot, 0.0)
  if not isinstance(epsilon_dot, SymbolicZero):
    d = d + a * (epsilon_dot / epsilon)
  rows, cols = jnp.sum(t, axis=1), jnp.sum(t, axis=0)

  def matvec(x):
    xf, xg = x
    return rows * xf + t @ xg, cols * xg + t.T @ xf

  def cg(matvec, b):
    x, _ = sparse_linalg.cg(matvec, b, x0=(jnp.zeros_like(f), jnp.zeros_like(g)), tol=tolerance,
                            maxiter=max_iterations, M=lambda r: (r[0] / rows, r[1] / cols))
    return x

  td = t * d
  dots = jax.lax.custom_linear_solve(matvec, (jnp.sum(td, axis=1), jnp.sum(td, axis=0)), solve=cg,
                                     symmetric=True)
  return (f, g), dots
