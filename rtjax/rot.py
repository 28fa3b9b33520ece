"""ROT-Reg: the regression optimal-transport regularizer L_ot (Zhang, Yan & Yao, ICLR 2025, eq. 9).

With the choices of the authors' published code (docs/design.md, "The published formulation"):

    z     <- z / mean_i ||z_i||_2                       (mean-norm feature normalisation)
    C_Z    = ||z_i - z_j||_2                            (not max-normalised)
    C_Y    = ||y_i - y_j||_2 / max_ij ||y_i - y_j||_2
    T_Y    = T(C_Y)  (no gradient w.r.t. the targets),   T_Z = T(C_Z)
    L_ot   = | <C_Z, T_Y> - <C_Z, T_Z> |

where T(C) is the masked self-transport plan (diagonal cost 999) with entropic regularisation
epsilon. The training loss is L = L_task + lambda * L_ot. Both plans come from rtjax's symmetric
Sinkhorn (`rtjax.sinkhorn`) and are differentiated implicitly, w.r.t. the features and epsilon, to any
order. Costs are served in row blocks (`block_size`), so large batches never build an [n, n] array.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rtjax import _checks
from rtjax.costs import MatrixCost, PointCost, layout, point_cost, power_of_two_scale, row_map
from rtjax.ot import DEFAULT_DIAGONAL_COST
from rtjax.sinkhorn import SolveInfo, SolverOptions, check_options, plan_rows, solve

__all__ = ["DEFAULT_EPSILON", "RotDiagnostics", "RotPotentials", "RotTargets", "normalize_by_mean_norm",
           "prepare_targets", "rot_loss"]

DEFAULT_EPSILON = 0.1  # AgeDB-DIR's gamma in the paper


class RotPotentials(NamedTuple):
  """Dual potentials [n] of the two solves of `rot_loss`, to warm-start the next call (`init=`)."""
  target: jax.Array
  feature: jax.Array

  @classmethod
  def zeros(cls, n: int, dtype=jnp.float32) -> RotPotentials:
    """The cold start (what `init=None` means)."""
    return cls(jnp.zeros((n,), dtype), jnp.zeros((n,), dtype))


class RotTargets(NamedTuple):
  """Targets prepared once for many `rot_loss` calls (`prepare_targets`): their normalised cost, the
  solved potential of T_Y and epsilon. A pytree: pass it through `jit` like an array.

  Attributes:
    cost: the masked cost of the max-normalised targets, `rtjax.costs.MatrixCost` (dense) or
      `PointCost` (blocked), with the diagonal cost and the row layout.
    potential: [n] the potential g of T_Y = exp((g_i + g_j - C_Y,ij) / epsilon).
    epsilon: [] the entropic regularisation the plan was solved for.
    info: `SolveInfo` of that solve.
  """
  cost: MatrixCost | PointCost
  potential: jax.Array
  epsilon: jax.Array
  info: SolveInfo


class RotDiagnostics(NamedTuple):
  """The two self-transport solves behind one `rot_loss` value (no gradient).

  Attributes:
    target, feature: `SolveInfo` (converged, iterations, marginal_error, finite) of T_Y and T_Z.
    potentials: `RotPotentials`, the `init` for the next call on the same samples (warm start).
  """
  target: SolveInfo
  feature: SolveInfo
  potentials: RotPotentials

  @property
  def converged(self) -> jax.Array:
    """[] bool: both solves reached their threshold with finite potentials."""
    return self.target.converged & self.feature.converged


def normalize_by_mean_norm(features: jax.Array) -> jax.Array:
  """features [n, d] divided by their mean row norm (0 stays 0).

  The rows are first divided by a power of two near their largest entry (exact, no gradient), so the
  squared norms neither overflow nor underflow: the result is the same for features given at any
  scale. A zero row has norm 0 with gradient 0 (as torch.norm), not jnp.linalg.norm's NaN gradient.
  """
  features = features / power_of_two_scale(features)
  sq = jnp.sum(features * features, axis=-1)
  nonzero = sq > 0
  norms = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)
  return features / jnp.maximum(jnp.mean(norms), jnp.finfo(features.dtype).tiny)


def _check_samples(features, targets) -> int:
  _checks.require_float("features", features)
  _checks.require_rank("features", features, (2,), "a [n, d] matrix")
  n = _checks.shape_of(features)[0]
  tshape = (targets.cost.lay.n,) if isinstance(targets, RotTargets) else _checks.shape_of(targets)
  if not tshape or tshape[0] != n:
    raise ValueError(
        f"`features` and `targets` must hold the same number of samples n, got features "
        f"{_checks.shape_of(features)} and targets {tshape}.")
  if n < 2:
    raise ValueError(f"ROT needs n >= 2 samples, got features {_checks.shape_of(features)}.")
  return n


def _check_targets(targets) -> None:
  _checks.require_float("targets", targets)
  _checks.require_rank("targets", targets, (1, 2), "[n] or [n, k]")
  if _checks.shape_of(targets)[0] < 2:
    raise ValueError(f"ROT needs n >= 2 samples, got targets {_checks.shape_of(targets)}.")


def _check_init(init, n: int) -> RotPotentials:
  if init is None:
    return RotPotentials(None, None)
  if not isinstance(init, RotPotentials):
    raise ValueError(f"`init` must be an rtjax.RotPotentials (e.g. the previous call's "
                     f"`diagnostics.potentials`) or None, got {type(init).__name__}.")
  shapes = [_checks.shape_of(p) for p in init]
  if any(s != (n,) for s in shapes):
    raise ValueError(f"`init` potentials must have shape ({n},), got {shapes[0]} and {shapes[1]}.")
  return init


def prepare_targets(
    targets: jax.Array,
    *,
    epsilon: float | jax.Array = DEFAULT_EPSILON,
    diagonal_cost: float = DEFAULT_DIAGONAL_COST,
    block_size: int | None = None,
    init: jax.Array | None = None,
    solver: SolverOptions | None = None,
) -> RotTargets:
  """Solve the target side of L_ot once: C_Y and its plan T_Y, for any number of `rot_loss` calls.

  T_Y depends only on the targets and epsilon, so a batch whose targets do not change (full-batch
  training, a fixed evaluation set) needs it once, not at every step. The targets get no gradient (as
  published); epsilon does: differentiating through `prepare_targets` and `rot_loss` gives the full
  d L_ot / d epsilon, T_Y's dependence included.

  C_Y is the Euclidean distance of the targets divided by its largest value. The targets are shifted
  and scaled (exactly, by powers of two) before any square is taken and normalised before the
  distances are clamped at 1e-6, so C_Y is the same for targets in any unit (metres or nanometres)
  over the whole float range; constant targets give a constant cost and the uniform plan.

  Args:
    targets: [n] or [n, k] floating targets (n >= 2); bfloat16/float16 are upcast to float32.
    epsilon: entropic regularisation gamma > 0 (absolute); may be traced.
    diagonal_cost: diagonal cost (999 as published; `float("inf")` excludes the diagonal exactly).
    block_size: rows per block of the cost (see `rot_loss`); None chooses.
    init: optional [n] potential to start from (a previous `RotTargets.potential`).
    solver: `rtjax.SolverOptions`.

  Returns:
    `RotTargets(cost, potential [n], epsilon, info)`.
  """
  _check_targets(targets)
  _checks.require_positive("epsilon", epsilon)
  _checks.require_static_positive("diagonal_cost", diagonal_cost)
  options = check_options(solver)
  n = _checks.shape_of(targets)[0]
  lay = layout(n, block_size)  # validates block_size
  if init is not None and _checks.shape_of(init) != (n,):
    raise ValueError(f"`init` must be a potential of shape ({n},), got {_checks.shape_of(init)}.")
  return _prepare_targets(_checks.upcast(jnp.asarray(targets)), epsilon, init, diagonal_cost=diagonal_cost,
                          lay=lay, options=options)


@functools.partial(jax.jit, static_argnames=("diagonal_cost", "lay", "options"))
def _prepare_targets(targets, epsilon, init, *, diagonal_cost, lay, options) -> RotTargets:
  """`prepare_targets` after validation (compiled once per shape and setting)."""
  y = jax.lax.stop_gradient(targets).reshape(lay.n, -1)
  y = y - jnp.mean(y, axis=0)
  y = y / power_of_two_scale(y)  # exact; no square overflows or underflows below
  largest = point_cost(y, lay, diagonal_cost).max_distance()  # >= 1e-6 (clamp): constant targets work
  cost = point_cost(y / largest, lay, diagonal_cost)
  epsilon = jnp.asarray(epsilon, y.dtype)
  potential, info = solve(cost, epsilon, init, options)
  return RotTargets(cost, potential, epsilon, info)


def rot_loss(
    features: jax.Array,
    targets: jax.Array | RotTargets,
    *,
    epsilon: float | jax.Array | None = None,
    normalize: bool = True,
    diagonal_cost: float | None = None,
    block_size: int | None = None,
    init: RotPotentials | None = None,
    solver: SolverOptions | None = None,
    return_diagnostics: bool = False,
) -> jax.Array | tuple[jax.Array, RotDiagnostics]:
  """ROT-Reg loss L_ot = | <C_Z, T_Y> - <C_Z, T_Z> | of a batch (paper eq. 9, published variant).

  Defaults reproduce the authors' published code: mean-norm feature normalisation, Euclidean C_Z,
  max-normalised Euclidean C_Y, diagonal cost 999, no gradient w.r.t. the targets, absolute value.
  Both plans are solved by symmetric log-domain Sinkhorn (with Newton steps near the solution) to an
  L1 marginal error of 1e-5 and
  differentiated implicitly: `jax.grad`, `jax.jvp`, Hessian-vector products and d/d epsilon are all
  exact at the solution (see `rtjax.sinkhorn`). Non-convergence is reported, never raised.

  Paper settings: AgeDB-DIR gamma (epsilon) = 0.1, lambda = 100; NYUD2-DIR gamma = 0.05, lambda = 10.
  The total loss is L_task + lambda * rot_loss.

  Args:
    features: [n, d] floating features z (bfloat16/float16 are upcast to float32 for the solver).
    targets: [n] or [n, k] floating targets y (they receive no gradient), or `RotTargets` from
      `prepare_targets` (then epsilon, diagonal_cost and block_size come from it and must not be given).
    epsilon: entropic regularisation gamma > 0 (absolute), default 0.1; may be traced.
    normalize: divide the features by their mean row norm first (default True); the loss is then
      invariant to the features' scale.
    diagonal_cost: diagonal cost of both transport problems, a Python number; default 999 as
      published, `float("inf")` excludes the diagonal exactly.
    block_size: rows per block of the costs. None: dense [n, n] arrays up to n = 4096, beyond that
      blocks of about 2^24 cost entries. With blocks, nothing [n, n] is ever built, in the forward or
      the backward pass: memory O(n (d + block_size)), one O(n^2 d) pass per Sinkhorn iteration.
    init: optional `RotPotentials` ([n] each) to warm-start the solves, e.g. the previous step's
      `diagnostics.potentials` when the batch keeps its samples (full-batch training): same loss and
      gradient, far fewer iterations. With `RotTargets` only `init.feature` is used.
    solver: `rtjax.SolverOptions` (threshold, max_iterations, CG settings).
    return_diagnostics: also return the `RotDiagnostics` of the two solves.

  Returns:
    [] scalar loss in the features' (upcast) dtype; with `return_diagnostics`, (loss, RotDiagnostics)
    (use `jax.value_and_grad(..., has_aux=True)`).

  Raises:
    ValueError: non-float inputs, wrong ranks, mismatched n, n < 2, non-positive epsilon or
      diagonal_cost, a bad block_size, init or solver, or settings given twice (with RotTargets).
  """
  n = _check_samples(features, targets)
  init = _check_init(init, n)
  options = check_options(solver)
  if isinstance(targets, RotTargets):
    given = [k for k, v in (("epsilon", epsilon), ("diagonal_cost", diagonal_cost), ("block_size", block_size))
             if v is not None]
    if given:
      raise ValueError(f"{given} must not be given with prepared `targets`: they come from prepare_targets.")
  else:
    targets = prepare_targets(
        targets, epsilon=DEFAULT_EPSILON if epsilon is None else epsilon,
        diagonal_cost=DEFAULT_DIAGONAL_COST if diagonal_cost is None else diagonal_cost,
        block_size=block_size, init=init.target, solver=options)
  return _rot_loss(_checks.upcast(jnp.asarray(features)), targets, init.feature, normalize=normalize,
                   options=options, return_diagnostics=return_diagnostics)


@functools.partial(jax.jit, static_argnames=("normalize", "options", "return_diagnostics"))
def _rot_loss(features, targets: RotTargets, init, *, normalize, options, return_diagnostics):
  """`rot_loss` after validation, on prepared targets (compiled once per shape and setting)."""
  z = normalize_by_mean_norm(features) if normalize else features
  lay, eps = targets.cost.lay, targets.epsilon.astype(z.dtype)
  target_cost = jax.tree.map(lambda a: a.astype(z.dtype), targets.cost)
  g = targets.potential.astype(z.dtype)

  feature_cost = point_cost(z, lay, target_cost.diagonal_cost)
  f, feature_info = solve(feature_cost, eps, init, options)

  def block_gap(ids):  # the diagonal carries no mass in either plan (nor cost, if infinite)
    gap = plan_rows(target_cost, g, eps, ids) - plan_rows(feature_cost, f, eps, ids)
    return jnp.sum(feature_cost.distance_rows(ids) * gap, axis=1)

  loss = jnp.abs(jnp.sum(row_map(block_gap, lay)))
  if not return_diagnostics:
    return loss
  potentials = jax.lax.stop_gradient(RotPotentials(g, f))
  return loss, RotDiagnostics(targets.info, feature_info, potentials)
