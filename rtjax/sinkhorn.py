"""Symmetric Sinkhorn for the masked self-transport of a point set, and its implicit derivative.

For a symmetric cost C [n, n] whose diagonal carries a large cost (999 as published, or +inf), the
entropic self-transport plan (docs/design.md, "The maths") has a single potential f [n]:

    T_ij = exp((f_i + f_j - C_ij) / eps),   T 1 = p = 1/n.

Forward: f <- (f + u(f)) / 2 with u(f) = eps log p - eps LSE_j((f_j - C_ij) / eps), which is ott-jax's
`Geometry.update_potential(f, f, log p)`: one pass over the costs per iteration. The row sums of T(f),
p exp((f - u) / eps), come from the same pass, so convergence is tested at every iteration for free
and a warm start that already meets the threshold costs one pass and no update.

Derivative: the implicit function theorem on T(f, C, eps) 1 = p,

    (diag(T 1) + T) df = rowsum(T * dC) + rowsum(T * A) deps / eps,   A_ij = f_i + f_j - C_ij,

is `implicit_potential`'s custom JVP rule. The matrix is symmetric positive definite (x^T H x =
sum_{i<j} T_ij (x_i + x_j)^2 > 0 unless the support of T is bipartite, which a dense entropic plan of
n >= 3 points never is), so CG solves it. Reverse mode is JAX's transpose of that rule (one CG solve);
forward mode is the rule itself; and since the rule is written in differentiable JAX (the CG is a
`lax.custom_linear_solve`, and f inside the rule is `implicit_potential` again), every higher
derivative — Hessians, Hessian-vector products, gradients of gradient norms — is exact too.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as sparse_linalg
from jax.custom_derivatives import SymbolicZero
from ott.geometry import geometry

from rtjax.costs import pad_rows, row_map

__all__ = ["SolveInfo", "SolverOptions", "implicit_potential", "plan_rows", "solve"]


@dataclasses.dataclass(frozen=True)
class SolverOptions:
  """Settings of the Sinkhorn solves and of their implicit derivative (hashable, static under jit).

  Attributes:
    threshold: stop when the L1 error of the plan's marginal, sum_i |(T 1)_i - 1/n|, is at most this.
      The implicit derivative assumes a solution, so the gradient error follows the threshold: float32
      L_ot gradients were 7e-6-3e-4 relative off the float64 reference at 1e-5 (n = 100-1000,
      epsilon = 0.01-0.1), up to 2.8e-3 at 1e-4 (n = 1000); the extra decade cost 0-3 iterations.
    max_iterations: cap on iterations, Sinkhorn and Newton steps together (>= 1). A solve that stops
      there reports `converged=False` in its `SolveInfo`; nothing is raised.
    newton_below: once the marginal error is below this and Sinkhorn is slow (its last step did not
      halve the error; always at small epsilon, where the plan nears a matching), take Newton steps
      (preconditioned CG on the Jacobian, quadratic convergence) instead of Sinkhorn updates. A Newton
      step that does not reduce the error switches back to Sinkhorn for the rest of the solve.
      0 disables Newton steps.
    linear_solve_tolerance: relative residual at which the CG solve of the implicit derivative stops.
    linear_solve_max_iterations: cap on the CG iterations of a derivative or a Newton step (>= 1).
  """
  threshold: float = 1e-5
  max_iterations: int = 2000
  newton_below: float = 1e-2
  linear_solve_tolerance: float = 1e-6
  linear_solve_max_iterations: int = 500

  def __post_init__(self):
    for name in ("max_iterations", "linear_solve_max_iterations"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    for name in ("threshold", "linear_solve_tolerance"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    value = self.newton_below
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
      raise ValueError(f"`newton_below` must be a number >= 0 (0: no Newton steps), got {value!r}.")

  def replace(self, **overrides) -> SolverOptions:
    """A copy with `overrides` applied; unknown names raise a ValueError listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(f"Unknown solver option(s) {unknown}; valid options are {sorted(fields)}.")
    return dataclasses.replace(self, **overrides)


def check_options(solver) -> SolverOptions:
  """`solver`, or the default `SolverOptions()` for None; anything else raises a ValueError."""
  if solver is None:
    return SolverOptions()
  if not isinstance(solver, SolverOptions):
    raise ValueError(f"`solver` must be an rtjax.SolverOptions or None, got {type(solver).__name__}.")
  return solver


class SolveInfo(NamedTuple):
  """How one Sinkhorn solve went (no gradient).

  Attributes:
    converged: [] bool, finite and marginal_error <= threshold.
    iterations: [] int, Sinkhorn updates run (0 when the start already met the threshold).
    marginal_error: [] L1 error of the plan's marginal(s) at the returned potential(s).
    finite: [] bool, the potential(s) and the error are finite.
  """
  converged: jax.Array
  iterations: jax.Array
  marginal_error: jax.Array
  finite: jax.Array


def _log_plan_rows(cost, f: jax.Array, epsilon, ids) -> tuple[jax.Array, jax.Array]:
  """(A, T) [b, padded] for the rows `ids` (None: all): A_ij = f_i + f_j - C_ij (0 where C is +inf)
  and T_ij = exp(A_ij / eps) (0 where C is +inf). Masking before the exp keeps every derivative finite
  (exp(-inf / eps) would give 0 * inf = NaN in d/d eps)."""
  f = pad_rows(f, cost.lay)
  c = cost.rows(ids)
  finite = jnp.isfinite(c)
  a = jnp.where(finite, (f if ids is None else f[ids])[:, None] + f[None, :] - jnp.where(finite, c, 0.0), 0.0)
  return a, jnp.where(finite, jnp.exp(a / epsilon), 0.0)


def plan_rows(cost, f: jax.Array, epsilon, ids) -> jax.Array:
  """T_ij = exp((f_i + f_j - C_ij) / eps) [b, padded] for the rows `ids` (None: all) of `cost` (a
  `PointCost` or `MatrixCost`) and a potential f [n]; 0 on an infinite diagonal and on padding."""
  return _log_plan_rows(cost, f, epsilon, ids)[1]


class _Jacobian(NamedTuple):
  """H = diag(T 1) + T at a potential (eps times the Jacobian of T 1 w.r.t. f), with its preconditioner.

  Near a matching (small epsilon) H is nearly singular along x_i = -x_j for mutual nearest neighbours
  i, j (condition numbers 1e4-1e11 at epsilon = 0.01). The preconditioner inverts H exactly on each
  such pair, [[m_i, T_ij], [T_ij, m_j]], and is Jacobi elsewhere: CG needed 24 instead of 379
  iterations at n = 500, epsilon = 0.01 (docs/design.md).
  """
  mass: jax.Array     # [n] T 1
  partner: jax.Array  # [n] argmax_j T_ij
  weight: jax.Array   # [n] T_i,partner(i)
  rest: jax.Array     # [n] mass - weight (> 0)
  matvec: Callable

  def precondition(self, r: jax.Array) -> jax.Array:
    n = r.shape[0]
    j = self.partner
    mutual = j[j] == jnp.arange(n)
    # det = m_i m_j - t^2 = rest_i m_j + t rest_j > 0
    det = self.rest * self.mass[j] + self.weight * self.rest[j]
    pair = (self.mass[j] * r - self.weight * r[j]) / jnp.where(mutual, det, 1.0)
    return jnp.where(mutual, pair, r / self.mass)


def _row_stats(t: jax.Array) -> tuple[jax.Array, ...]:
  """(T 1, argmax, max, T 1 - max) of plan rows t [b, padded], by plain reductions (XLA's argmax is
  slow on CPU). `rest` only shapes the preconditioner, so its cancellation is harmless; it is kept
  positive so that the preconditioner stays positive definite."""
  mass, weight = jnp.sum(t, axis=1), jnp.max(t, axis=1)
  cols = jnp.arange(t.shape[1])
  partner = jnp.min(jnp.where(t == weight[:, None], cols[None, :], t.shape[1]), axis=1)
  rest = jnp.maximum(mass - weight, jnp.finfo(t.dtype).eps * mass)
  return mass, partner, weight, rest


def _apply_plan(cost, f, epsilon) -> Callable:
  """v [n] -> T v: one [n, n] plan for dense layouts, a pass over the cost blocks otherwise."""
  lay = cost.lay
  if lay.dense:
    plan = plan_rows(cost, f, epsilon, None)
    return lambda v: plan @ v
  return lambda v: row_map(lambda ids: plan_rows(cost, f, epsilon, ids) @ pad_rows(v, lay), lay)


def _jacobian(stats, cost, f, epsilon) -> _Jacobian:
  mass = stats[0]
  apply = _apply_plan(cost, f, epsilon)
  return _Jacobian(*stats, matvec=lambda v: mass * v + apply(v))


def _cg(jac: _Jacobian, b: jax.Array, tolerance, max_iterations: int) -> jax.Array:
  x, _ = sparse_linalg.cg(jac.matvec, b, x0=jnp.zeros(b.shape, b.dtype), tol=tolerance,
                          maxiter=max_iterations, M=jac.precondition)
  return x


def _sinkhorn(cost, epsilon, f: jax.Array, options: SolverOptions) -> tuple[jax.Array, SolveInfo]:
  """Symmetric log-domain Sinkhorn with Newton steps near the solution, from potential f [n] (no
  gradient flows through it)."""
  lay = cost.lay
  n, dtype = lay.n, f.dtype
  log_p = -jnp.log(jnp.asarray(n, dtype))

  def update_rows(ids, f_padded, matrix):
    geom = geometry.Geometry(cost_matrix=matrix, epsilon=epsilon)
    f_rows = f_padded if ids is None else f_padded[ids]
    return geom.update_potential(f_rows, f_padded, jnp.full(f_rows.shape, log_p, dtype), axis=1)

  if lay.dense:  # the cost matrix is loop-invariant: build it once
    matrix = cost.rows(None)
    update = lambda f: update_rows(None, f, matrix)
  else:
    update = lambda f: row_map(lambda ids: update_rows(ids, pad_rows(f, lay), cost.rows(ids)), lay)

  def error(f, u):  # row sums of T(f) are p exp((f - u) / eps)
    return jnp.sum(jnp.abs(jnp.exp((f - u) / epsilon + log_p) - jnp.exp(log_p)))

  def newton(f, u, err):  # solve H d = -eps (T 1 - p), inexactly (relative residual <= error)
    stats = row_map(lambda ids: _row_stats(plan_rows(cost, f, epsilon, ids)), lay)
    jac = _jacobian(stats, cost, f, epsilon)
    tolerance = jnp.clip(err, jnp.finfo(dtype).eps, 1e-2)
    return f + _cg(jac, -epsilon * (jac.mass - jnp.exp(log_p)), tolerance, options.linear_solve_max_iterations)

  def cond(state):
    return (state.iterations < options.max_iterations) & (state.error > options.threshold)  # NaN stops

  def body(state):
    f, u, err, it, newton_on, rate = state
    # Newton where Sinkhorn is slow (less than halving the error per step) and near the solution.
    use_newton = newton_on & (err < options.newton_below) & (rate > 0.5)
    f_new = jax.lax.cond(use_newton, newton, lambda f, u, _: 0.5 * (f + u), f, u, err)
    u_new = update(f_new)
    err_new = error(f_new, u_new)
    failed = use_newton & ~(err_new < err)  # keep f, and Sinkhorn from here on
    keep = lambda old, new: jnp.where(failed, old, new)
    return _LoopState(keep(f, f_new), keep(u, u_new), keep(err, err_new), it + 1, newton_on & ~failed,
                      jnp.where(use_newton, rate, err_new / err))

  u = update(f)
  state = _LoopState(f, u, error(f, u), jnp.asarray(0, jnp.int32), jnp.asarray(options.newton_below > 0),
                     jnp.ones((), dtype))
  f, _, err, iterations, _, _ = jax.lax.while_loop(cond, body, state)
  finite = jnp.all(jnp.isfinite(f)) & jnp.isfinite(err)
  return f, SolveInfo(finite & (err <= options.threshold), iterations, err, finite)


class _LoopState(NamedTuple):
  potential: jax.Array
  update: jax.Array
  error: jax.Array
  iterations: jax.Array
  newton_on: jax.Array
  rate: jax.Array  # error ratio of the last Sinkhorn step


def solve(cost, epsilon, init: jax.Array | None, options: SolverOptions) -> tuple[jax.Array, SolveInfo]:
  """The potential f [n] of the masked self-transport of `cost`, differentiable to any order w.r.t.
  the cost's leaves and epsilon, and the solve's `SolveInfo`. `init` [n] (or None: zeros) is a start;
  it changes the iterations, not the solution, and gets no gradient."""
  dtype = jnp.result_type(*jax.tree.leaves(cost))
  start = jnp.zeros((cost.lay.n,), dtype) if init is None else jax.lax.stop_gradient(init).astype(dtype)
  f, info = _sinkhorn(jax.lax.stop_gradient(cost), jax.lax.stop_gradient(epsilon), start, options)
  f = implicit_potential(cost, epsilon, f, options.linear_solve_tolerance, options.linear_solve_max_iterations)
  return f, jax.lax.stop_gradient(info)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def implicit_potential(cost, epsilon, potential, tolerance: float, max_iterations: int) -> jax.Array:
  """`potential` [n], taken as the solution f(cost, epsilon) of T 1 = p and differentiated as such.

  The solve happens outside (`solve`); this function only attaches the implicit derivative.
  """
  del cost, epsilon, tolerance, max_iterations
  return potential


def _is_zero(tangent) -> bool:
  return all(isinstance(t, SymbolicZero) for t in jax.tree.leaves(
      tangent, is_leaf=lambda t: isinstance(t, SymbolicZero)))


def _instantiate(tangent, primal):
  return jax.tree.map(lambda t, p: jnp.zeros_like(p) if isinstance(t, SymbolicZero) else t,
                      tangent, primal, is_leaf=lambda t: isinstance(t, SymbolicZero))


@functools.partial(implicit_potential.defjvp, symbolic_zeros=True)
def _implicit_potential_jvp(tolerance, max_iterations, primals, tangents):
  cost, epsilon, potential = primals
  cost_dot, epsilon_dot, _ = tangents
  # f through implicit_potential again: differentiating this rule (second order) differentiates f.
  f = implicit_potential(cost, epsilon, potential, tolerance, max_iterations)
  with_cost, with_epsilon = not _is_zero(cost_dot), not isinstance(epsilon_dot, SymbolicZero)
  if not (with_cost or with_epsilon):
    return f, jnp.zeros_like(f)
  cost_dot = _instantiate(cost_dot, cost)

  def row_terms(ids):  # H's statistics and the right-hand side, one block of rows at a time
    a, t = _log_plan_rows(cost, f, epsilon, ids)
    rhs = jnp.zeros(t.shape[:1], t.dtype)
    if with_cost:
      _, c_dot = jax.jvp(lambda c: c.rows(ids), (cost,), (cost_dot,))
      rhs = rhs + jnp.sum(t * c_dot, axis=1)
    if with_epsilon:
      rhs = rhs + jnp.sum(t * a, axis=1) * (epsilon_dot / epsilon)
    return _row_stats(t), rhs

  stats, rhs = row_map(row_terms, cost.lay)
  jac = _jacobian(stats, cost, f, epsilon)

  def solve_h(matvec, b):  # a plain cg call on a tangent cannot be transposed: wrap it
    del matvec
    return _cg(jac, b, tolerance, max_iterations)

  # symmetric=True: H is symmetric for every symmetric cost, and the costs' perturbations are symmetric.
  f_dot = jax.lax.custom_linear_solve(jac.matvec, rhs, solve=solve_h, symmetric=True)
  return f, f_dot
