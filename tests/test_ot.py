"""Masked self-transport plan: against the float64 NumPy reference and POT, gradients, errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

import rtjax
from problems import distance_cost
from reference import finite_difference_grad, relative_error, sinkhorn_plan

TIGHT = dict(threshold=1e-12, max_iterations=3000, linear_solve_tolerance=1e-12)


@pytest.mark.parametrize("epsilon", [1.0, 0.1, 0.05])
@pytest.mark.parametrize("diagonal_cost", [999.0, float("inf")])
def test_plan_matches_float64_reference(x64, epsilon, diagonal_cost):
  cost = distance_cost(0, 30)
  result = rtjax.self_transport(jnp.asarray(cost), epsilon=epsilon, diagonal_cost=diagonal_cost, **TIGHT)
  expected = sinkhorn_plan(cost, epsilon)
  np.testing.assert_allclose(result.plan, expected, atol=1e-12)
  assert np.all(np.diag(np.asarray(result.plan)) == 0.0)
  np.testing.assert_allclose(result.plan.sum(0), 1 / 30, atol=1e-12)
  assert bool(result.converged) and bool(result.finite)


def test_plan_matches_pot_peer(x64):
  """POT's ot.sinkhorn (kernel mode, the published solver) on C + 999 I, in float64."""
  cost = distance_cost(1, 40)
  n = len(cost)
  a = np.full(n, 1 / n)
  pot_plan = pot.sinkhorn(a, a, cost + 999 * np.eye(n), 0.1, numItermax=100_000, stopThr=1e-13)
  plan = rtjax.self_transport_plan(jnp.asarray(cost), epsilon=0.1, **TIGHT)
  np.testing.assert_allclose(plan, pot_plan, atol=1e-11)


def test_default_float32_plan_close_to_reference():
  cost = distance_cost(2, 50)
  result = rtjax.self_transport(jnp.asarray(cost, jnp.float32), epsilon=0.1)
  assert result.plan.dtype == jnp.float32
  assert float(result.marginal_error) <= 1e-3 and bool(result.converged)
  assert np.abs(np.asarray(result.plan) - sinkhorn_plan(cost, 0.1)).sum() < 2e-3


def _plan_objective(cost, epsilon=0.1, **kwargs):
  """A scalar depending on every plan entry, to test the plan's derivative."""
  weights = jnp.sin(jnp.arange(cost.size, dtype=cost.dtype).reshape(cost.shape))
  return jnp.sum(weights * rtjax.self_transport_plan(cost, epsilon=epsilon, **kwargs))


def _symmetrised(grad):
  """A symmetric cost moves symmetrically: only the symmetric part of a cost gradient is defined."""
  return 0.5 * (grad + grad.T)


@pytest.mark.parametrize("diagonal_cost", [999.0, float("inf")])
def test_plan_gradient_matches_finite_differences(x64, diagonal_cost):
  """Derivative along symmetric perturbations of the cost, against the float64 reference plan."""
  cost = distance_cost(3, 12)
  weights = np.sin(np.arange(cost.size, dtype=np.float64).reshape(cost.shape))
  objective = lambda c: float((weights * sinkhorn_plan(c, 0.1, warm_start=False)).sum())
  directions = [_symmetrised(np.random.default_rng(s).normal(size=cost.shape)) for s in range(3)]
  for mode in ("symmetric-implicit", "unrolled", "implicit"):
    grad = jax.grad(_plan_objective)(jnp.asarray(cost), differentiation=mode,
                                     diagonal_cost=diagonal_cost, **TIGHT)
    for direction in directions:
      np.fill_diagonal(direction, 0.0)
      h = 1e-6
      fd = (objective(cost + h * direction) - objective(cost - h * direction)) / (2 * h)
      np.testing.assert_allclose(float(jnp.sum(grad * direction)), fd, rtol=1e-6, err_msg=mode)


# At epsilon = 0.01 this problem's alternating Sinkhorn is still 2e-6 off after 200,000 iterations
# (the plan is close to a matching), so the unrolled gradient is no reference there.
@pytest.mark.parametrize("epsilon", [0.1, 0.05])
def test_symmetric_implicit_gradient_agrees_with_unrolled(x64, epsilon):
  cost = jnp.asarray(distance_cost(3, 20))
  tight = dict(TIGHT, max_iterations=200_000)
  g_unrolled = jax.grad(_plan_objective)(cost, differentiation="unrolled", epsilon=epsilon, **tight)
  g_symmetric = jax.grad(_plan_objective)(cost, differentiation="symmetric-implicit", epsilon=epsilon, **tight)
  assert relative_error(g_symmetric, _symmetrised(g_unrolled)) < 1e-6


def test_epsilon_gradient_matches_finite_differences(x64):
  cost = distance_cost(5, 14)
  weights = np.sin(np.arange(cost.size, dtype=np.float64).reshape(cost.shape))
  h = 1e-6
  fd = ((weights * sinkhorn_plan(cost, 0.1 + h, warm_start=False)).sum()
        - (weights * sinkhorn_plan(cost, 0.1 - h, warm_start=False)).sum()) / (2 * h)
  grad = jax.grad(lambda e: jnp.sum(jnp.asarray(weights) * rtjax.self_transport_plan(
      jnp.asarray(cost), epsilon=e, **TIGHT)))(0.1)
  np.testing.assert_allclose(float(grad), fd, rtol=1e-6)


def test_warm_start_gives_the_same_plan_in_fewer_iterations(x64):
  cost = distance_cost(6, 30)
  moved = cost + 1e-3 * _symmetrised(np.random.default_rng(0).normal(size=cost.shape))
  previous = rtjax.self_transport(jnp.asarray(cost), epsilon=0.05, threshold=1e-10)
  cold = rtjax.self_transport(jnp.asarray(moved), epsilon=0.05, threshold=1e-10)
  warm = rtjax.self_transport(jnp.asarray(moved), epsilon=0.05, threshold=1e-10, init=previous.potential)
  assert int(warm.iterations) < int(cold.iterations)
  np.testing.assert_allclose(warm.plan, cold.plan, atol=1e-10)
  np.testing.assert_allclose(warm.potential, cold.potential, atol=1e-8)


def test_fixed_iteration_unrolled_gradient_is_exact(x64):
  """min_iterations == max_iterations: ott-jax's scan path is wrong (DESIGN §3); ours is not.

  The truth for a fixed number of iterations is the finite-difference derivative of that same
  truncated computation.
  """
  cost = distance_cost(4, 12)
  fixed = dict(min_iterations=7, max_iterations=7, inner_iterations=1)
  objective = jax.jit(lambda c: _plan_objective(c, differentiation="unrolled", **fixed))
  fd = finite_difference_grad(lambda c: float(objective(jnp.asarray(c))), cost, h=1e-6)
  ours = jax.grad(_plan_objective)(jnp.asarray(cost), differentiation="unrolled", **fixed)
  assert relative_error(ours, fd) < 1e-6
  assert int(rtjax.self_transport(jnp.asarray(cost), epsilon=0.1, **fixed).iterations) == 7

  # Evidence that the workaround is needed: ott-jax's own scan path on the same problem.
  def ott_scan(c):
    geom = geometry.Geometry(cost_matrix=c + 999 * jnp.eye(12), epsilon=0.1)
    solver = sinkhorn.Sinkhorn(implicit_diff=None, **fixed)
    plan = solver(linear_problem.LinearProblem(geom)).matrix
    return jnp.sum(jnp.sin(jnp.arange(c.size, dtype=c.dtype).reshape(c.shape)) * plan)
  assert relative_error(jax.grad(ott_scan)(jnp.asarray(cost)), fd) > 1e-2


def test_diagnostics_report_non_convergence():
  cost = jnp.asarray(distance_cost(5, 40), jnp.float32)
  result = rtjax.self_transport(cost, epsilon=0.01, max_iterations=10, threshold=1e-6)
  assert not bool(result.converged)
  assert int(result.iterations) == 10
  assert float(result.marginal_error) > 1e-6
  assert bool(result.finite)


def test_jit_vmap_grad_and_single_trace():
  costs = jnp.asarray(np.stack([distance_cost(s, 16) for s in range(3)]), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def plans(c):
    return jax.vmap(lambda ci: rtjax.self_transport_plan(ci, epsilon=0.1))(c)

  batched = plans(costs)
  plans(costs + 1e-3)  # same shape: no retrace
  for i in range(3):
    np.testing.assert_allclose(batched[i], rtjax.self_transport_plan(costs[i], epsilon=0.1), atol=1e-6)
  grad = jax.jit(jax.grad(lambda c: _plan_objective(c)))(costs[0])
  assert grad.shape == (16, 16) and bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize("cost, kwargs, message", [
    (np.ones((3, 4)), {}, "square"),
    (np.ones((3,)), {}, "square"),
    (np.ones((1, 1)), {}, "n >= 2"),
    (np.ones((3, 3), np.int32), {}, "floating"),
    (np.ones((3, 3)), dict(epsilon=0.0), "epsilon"),
    (np.ones((3, 3)), dict(epsilon=-1.0), "epsilon"),
    (np.ones((3, 3)), dict(differentiation="magic"), "differentiation"),
    (np.ones((3, 3)), dict(tolerance=1e-3), "Unknown solver option"),
    (np.ones((3, 3)), dict(min_iterations=10, max_iterations=5), "min_iterations"),
    (np.ones((3, 3)), dict(diagonal_cost=0.0), "diagonal_cost"),
    (np.ones((3, 3)), dict(init=np.zeros(4)), r"`init` must be a potential of shape \(3,\)"),
    (np.ones((3, 3)), dict(linear_solve_tolerance=0.0), "linear_solve_tolerance"),
])
def test_errors(cost, kwargs, message):
  kwargs = {"epsilon": 0.1, **kwargs}
  with pytest.raises(ValueError, match=message):
    rtjax.self_transport(jnp.asarray(cost), **kwargs)
