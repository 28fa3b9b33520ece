"""Blocked ROT-Reg: L_ot for large n without any [n, n] array (memory O(n (d + block_size))).

The same loss as `rtjax.rot_loss` (published choices, DESIGN §2), computed in row blocks of
`block_size` samples: every pass over the plan recomputes its [block_size, n] slice of costs from
the points, so e.g. pixel-wise regularisation at n = 65,536 needs a few hundred MB, not the 17 GB of
one dense float32 [n, n] matrix (ott-jax's own online geometries fail on jax >= 0.10, DESIGN §3).

Forward: symmetric log-domain Sinkhorn, f <- (f + eps log p - eps LSE_j((f_j - C_ij) / eps)) / 2,
one pass over the costs per iteration (the marginal error comes from the same pass). The diagonal
is excluded exactly; for eps <= 1.3 this equals the dense default diagonal cost 999, whose kernel
entry exp(-999 / eps) underflows even in float64.

Backward: implicit, as `differentiation="symmetric-implicit"` of `rtjax.ot`, with F = <C, T(C)>:
    dF/dC_ij = T_ij + T_ij (u_i + u_j - C_ij) / eps,   (diag(T 1) + T) u = (T * C) 1,
solved by Jacobi-preconditioned CG with blocked matrix-vector products, then pulled back through
C_ij = ||z_i - z_j|| in blocks: z_bar_i = 2 sum_j A_ij (z_i - z_j) / C_ij.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.sparse.linalg as sparse_linalg

from rtjax import _checks
from rtjax.ot import SelfTransport, SolverOptions, resolve_solver
from rtjax.rot import (MIN_SQ_DISTANCE, RotDiagnostics, RotPotentials, _validate, cross_distance,
                       normalize_by_mean_norm)

# Default block: block_size * n cost entries (64 MB in float32) per pass step.
DEFAULT_BLOCK_ELEMENTS = 2**24
# The symmetric iterate leaves both marginals off by the threshold (ott-jax's last update makes one
# exact), so the same threshold gives a coarser gradient: at n = 1000, d = 128, eps = 0.1 (float32)
# 2.8e-3 relative error at 1e-4, 3.0e-4 at 1e-5 (12 -> 15 iterations); the dense default: 3.8e-4.
# Small epsilon converges slowly (near-matching plans): on a 200-point problem at eps = 0.01 it took
# 8,872 iterations to 1e-5 (gradient error 1.9e-4); capped at 2,000 it was 2.0e-3 off (dense: 1.1e-3).
DEFAULT_SOLVER = SolverOptions(threshold=1e-5)


class _Layout(NamedTuple):
  """n samples padded to `blocks * block` rows; padded samples are masked out of every sum."""
  n: int
  block: int
  blocks: int

  @property
  def padded(self) -> int:
    return self.block * self.blocks


def _layout(n: int, block_size: int | None) -> _Layout:
  if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
    raise ValueError(f"`block_size` must be a positive integer or None, got {block_size!r}.")
  block = min(n, block_size or max(1, DEFAULT_BLOCK_ELEMENTS // n))
  return _Layout(n, block, math.ceil(n / block))


def _pad(x: jax.Array, layout: _Layout) -> jax.Array:
  return jnp.pad(x, [(0, layout.padded - layout.n)] + [(0, 0)] * (x.ndim - 1))


def _row_map(fn, layout: _Layout, *rows):
  """fn(ids [b], *row_blocks) for each block of rows (each [padded, ...]), concatenated to [n, ...].

  A sequential map: one block's [b, padded] intermediates live at a time.
  """
  ids = jnp.arange(layout.padded).reshape(layout.blocks, layout.block)
  blocked = [r.reshape(layout.blocks, layout.block, *r.shape[1:]) for r in rows]
  out = jax.lax.map(lambda args: fn(*args), (ids, *blocked))
  return jax.tree.map(lambda o: o.reshape(layout.padded, *o.shape[2:])[:layout.n], out)


class _Costs(NamedTuple):
  """Points [padded, d] whose cost is scale * ||x_i - x_j|| off the diagonal, between valid samples."""
  points: jax.Array
  scale: jax.Array
  layout: _Layout

  def block(self, ids, rows):
    """(cost [b, padded], valid [b, padded]): the costs of the rows `ids`; invalid entries are 0."""
    cols = jnp.arange(self.layout.padded)
    valid = (ids[:, None] != cols[None, :]) & (cols < self.layout.n)[None, :]
    return jnp.where(valid, self.scale * cross_distance(rows, self.points), 0.0), valid

  def log_kernel(self, ids, rows, f, epsilon):
    """log T_ij - f_i = (f_j - C_ij) / eps on valid entries, -inf elsewhere: [b, padded]."""
    cost, valid = self.block(ids, rows)
    return jnp.where(valid, (f[None, :] - cost) / epsilon, -jnp.inf)

  def plan(self, ids, rows, f, epsilon):
    """T_ij = exp((f_i + f_j - C_ij) / eps) of the rows `ids` and their costs: [b, padded] each."""
    cost, valid = self.block(ids, rows)
    f_rows = f[ids]
    return jnp.where(valid, jnp.exp((f_rows[:, None] + f[None, :] - cost) / epsilon), 0.0), cost, valid


def _costs(points: jax.Array, layout: _Layout, normalise_by_max: bool) -> _Costs:
  points = points - jnp.mean(points, axis=0)  # distances are translation invariant; less cancellation
  padded = _pad(points, layout)
  unit = _Costs(padded, jnp.ones((), points.dtype), layout)
  if not normalise_by_max:
    return unit
  largest = _row_map(lambda ids, rows: jnp.max(unit.block(ids, rows)[0], axis=1), layout, padded)
  # >= 1e-6 by the clamp: constant targets stay finite, as in the dense path.
  return unit._replace(scale=1.0 / jnp.maximum(jnp.max(largest), jnp.sqrt(MIN_SQ_DISTANCE)))


def _soft_min(costs: _Costs, f: jax.Array, epsilon: float) -> jax.Array:
  """h_i = eps LSE_j((f_j - C_ij) / eps) over valid j: [n]; the plan's row sums are exp((f + h) / eps)."""
  f_padded = _pad(f, costs.layout)
  lse = lambda ids, rows: jax.nn.logsumexp(costs.log_kernel(ids, rows, f_padded, epsilon), axis=1)
  return epsilon * _row_map(lse, costs.layout, costs.points)


def _solve(costs: _Costs, epsilon: float, init: jax.Array, options: SolverOptions) -> SelfTransport:
  """Symmetric Sinkhorn on the blocked costs; a SelfTransport without plan (plan=None)."""
  n = costs.layout.n
  log_p = -jnp.log(jnp.asarray(n, init.dtype))
  marginal_error = lambda f, h: jnp.sum(jnp.abs(jnp.exp((f + h) / epsilon) - 1.0 / n))

  def cond(state):
    _, _, error, it = state
    return (it < options.max_iterations) & ((error > options.threshold) | (it < options.min_iterations))

  def body(state):
    f, h, _, it = state
    f = 0.5 * (f + epsilon * log_p - h)
    h = _soft_min(costs, f, epsilon)
    return f, h, marginal_error(f, h), it + 1

  h0 = _soft_min(costs, init, epsilon)
  f, h, error, iterations = jax.lax.while_loop(
      cond, body, (init, h0, marginal_error(init, h0), jnp.asarray(0)))
  finite = jnp.all(jnp.isfinite(f)) & jnp.isfinite(error)
  return SelfTransport(plan=None, converged=finite & (error <= options.threshold), iterations=iterations,
                       marginal_error=error, finite=finite, potential=f)


def blocked_rot_loss_with_diagnostics(
    features: jax.Array,
    targets: jax.Array,
    *,
    epsilon: float = 0.1,
    normalize: bool = True,
    block_size: int | None = None,
    init: RotPotentials | None = None,
    solver: SolverOptions | None = None,
    **solver_overrides,
) -> tuple[jax.Array, RotDiagnostics]:
  """`blocked_rot_loss` and the diagnostics of its two solves (their `plan` is None).

  Returns:
    (loss [], RotDiagnostics(target_transport, feature_transport)); `.potentials` warm-starts the next
    call through `init`, as for `rtjax.rot_loss_with_diagnostics`.
  """
  features, targets = _validate(features, targets)
  options = resolve_solver(DEFAULT_SOLVER if solver is None else solver, solver_overrides)
  if options.differentiation != "symmetric-implicit" or not options.lse_mode:
    raise ValueError("the blocked path runs log-domain Sinkhorn with symmetric-implicit "
                     f"differentiation only, got differentiation={options.differentiation!r}, "
                     f"lse_mode={options.lse_mode}.")
  if isinstance(epsilon, jax.core.Tracer):
    raise ValueError("`epsilon` of the blocked path must be a Python float (it is static), got a traced value.")
  _checks.require_positive("epsilon", epsilon)
  if features.dtype in (jnp.bfloat16, jnp.float16):
    features = features.astype(jnp.float32)
  layout = _layout(features.shape[0], block_size)
  z = normalize_by_mean_norm(features) if normalize else features
  y = jax.lax.stop_gradient(targets).astype(z.dtype)
  init = RotPotentials.zeros(layout.n, z.dtype) if init is None else init
  if jnp.shape(init.target) != (layout.n,) or jnp.shape(init.feature) != (layout.n,):
    raise ValueError(f"`init` potentials must have shape ({layout.n},), got "
                     f"{_checks.shape_of(init.target)} and {_checks.shape_of(init.feature)}.")

  target_costs = _costs(y, layout, normalise_by_max=True)
  target = _solve(target_costs, epsilon, jax.lax.stop_gradient(init.target).astype(z.dtype), options)
  feature = _solve(_costs(jax.lax.stop_gradient(z), layout, normalise_by_max=False), epsilon,
                   jax.lax.stop_gradient(init.feature).astype(z.dtype), options)
  gap = _gap(z, target_costs.points, target_costs.scale, target.potential, feature.potential,
             epsilon, layout, options.linear_solve_tolerance, options.linear_solve_max_iterations)
  return jnp.abs(gap), RotDiagnostics(target, feature)


def blocked_rot_loss(features: jax.Array, targets: jax.Array, **kwargs) -> jax.Array:
  """ROT-Reg loss L_ot = | <C_Z, T_Y> - <C_Z, T_Z> |, computed without [n, n] arrays.

  The same loss and gradient as `rtjax.rot_loss` (mean-norm normalised features, max-normalised target
  costs, T_Y without gradient; see that function) for large batches, e.g. thousands of pixels of a
  depth map: costs are recomputed in blocks of `block_size` rows on every pass, so memory is
  O(n (d + block_size)) and each Sinkhorn iteration costs one O(n^2 d) pass.

  Args:
    features: [n, d] floating features z (bfloat16/float16 are upcast to float32).
    targets: [n] or [n, k] floating targets y; they receive no gradient.
    epsilon: entropic regularisation gamma > 0 (absolute, a Python float), default 0.1.
    normalize: divide features by their mean row norm first (default True).
    block_size: rows per block; default min(n, 2^24 // n) (a 64 MB float32 cost block).
      Raise `max_iterations` for epsilon <= 0.01 (see DEFAULT_SOLVER) and watch `converged`.
    init: optional `RotPotentials` ([n] each) to warm-start the two solves.
    solver: `rtjax.SolverOptions`, default `SolverOptions(threshold=1e-5)` (see DEFAULT_SOLVER);
      threshold, min/max_iterations and the linear_solve_* fields apply (log domain and
      symmetric-implicit differentiation only). Keywords override single fields.

  Returns:
    [] scalar loss in the dtype of the (upcast) features.

  Raises:
    ValueError: as `rtjax.rot_loss`, plus a traced epsilon, a non-positive block_size, or an
      unsupported differentiation mode / kernel mode.
  """
  return blocked_rot_loss_with_diagnostics(features, targets, **kwargs)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _gap(z, y_points, y_scale, g, f, epsilon, layout, tolerance, max_iterations):
  """<C_Z, T_Y - T_Z> for the converged potentials g (targets) and f (features) [n]; differentiable
  w.r.t. z [n, d] only (the potentials' dependence on z is the implicit backward below)."""
  del tolerance, max_iterations
  return _gap_fwd_parts(z, y_points, y_scale, g, f, epsilon, layout)[0]


def _gap_fwd_parts(z, y_points, y_scale, g, f, epsilon, layout):
  z_costs = _costs(z, layout, normalise_by_max=False)
  y_costs = _Costs(y_points, y_scale, layout)
  g_padded, f_padded = _pad(g, layout), _pad(f, layout)

  def block_gap(ids, z_rows, y_rows):
    plan_z, cost_z, _ = z_costs.plan(ids, z_rows, f_padded, epsilon)
    plan_y, _, _ = y_costs.plan(ids, y_rows, g_padded, epsilon)
    return jnp.sum(cost_z * (plan_y - plan_z), axis=1)

  gap = jnp.sum(_row_map(block_gap, layout, z_costs.points, y_points))
  return gap, (z_costs.points, y_points, y_scale, g_padded, f_padded)


def _gap_fwd(z, y_points, y_scale, g, f, epsilon, layout, tolerance, max_iterations):
  return _gap_fwd_parts(z, y_points, y_scale, g, f, epsilon, layout)


def _gap_bwd(epsilon, layout, tolerance, max_iterations, residuals, gap_bar):
  z_points, y_points, y_scale, g_padded, f_padded = residuals
  z_costs = _Costs(z_points, jnp.ones((), z_points.dtype), layout)
  y_costs = _Costs(y_points, y_scale, layout)

  def row_sums(ids, rows):  # T 1 and (T * C) 1
    plan, cost, _ = z_costs.plan(ids, rows, f_padded, epsilon)
    return jnp.sum(plan, axis=1), jnp.sum(plan * cost, axis=1)

  mass, weighted = _row_map(row_sums, layout, z_costs.points)

  def hessian(v):  # (diag(T 1) + T) v
    v_padded = _pad(v, layout)
    plan_v = lambda ids, rows: z_costs.plan(ids, rows, f_padded, epsilon)[0] @ v_padded
    return mass * v + _row_map(plan_v, layout, z_costs.points)

  u, _ = sparse_linalg.cg(hessian, weighted, tol=tolerance, maxiter=max_iterations, M=lambda r: r / mass)
  u_padded = _pad(u, layout)

  def block_grad(ids, z_rows, y_rows):  # 2 sum_j A_ij (z_i - z_j) / C_ij, A = d gap / d C
    plan_z, cost_z, valid = z_costs.plan(ids, z_rows, f_padded, epsilon)
    plan_y, _, _ = y_costs.plan(ids, y_rows, g_padded, epsilon)
    a = plan_y - plan_z - plan_z * (u_padded[ids][:, None] + u_padded[None, :] - cost_z) / epsilon
    # The clamp sqrt(max(d^2, 1e-12)) has no gradient below it (coincident points).
    b = jnp.where(valid & (cost_z * cost_z > MIN_SQ_DISTANCE), a / jnp.where(valid, cost_z, 1.0), 0.0)
    return 2.0 * (z_rows * jnp.sum(b, axis=1, keepdims=True) - b @ z_costs.points)

  z_bar = gap_bar * _row_map(block_grad, layout, z_costs.points, y_points)
  potential_bar = jnp.zeros((layout.n,), z_bar.dtype)  # their dependence on z is in u above
  return z_bar, jnp.zeros_like(y_points), jnp.zeros_like(y_scale), potential_bar, potential_bar


_gap.defvjp(_gap_fwd, _gap_bwd)
