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

TIGHT = dict(threshold=1e-12, max_iterations=3000)


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


def _plan_objective(cost, **kwargs):
  """A scalar depending on every plan entry, to test the plan's derivative."""
  weights = jnp.sin(jnp.arange(cost.size, dtype=cost.dtype).reshape(cost.shape))
  return jnp.sum(weights * rtjax.self_transport_plan(cost, epsilon=0.1, **kwargs))


def test_implicit_and_unrolled_gradients_agree(x64):
  cost = jnp.asarray(distance_cost(3, 20))
  g_unrolled = jax.grad(_plan_objective)(cost, differentiation="unrolled", **TIGHT)
  g_implicit = jax.grad(_plan_objective)(cost, differentiation="implicit", **TIGHT)
  assert relative_error(g_unrolled, g_implicit) < 1e-6


def test_fixed_iteration_unrolled_gradient_is_exact(x64):
  """min_iterations == max_iterations: ott-jax's scan path is wrong (DESIGN §3); ours is not.

  The truth for a fixed number of iterations is the finite-difference derivative of that same
  truncated computation.
  """
  cost = distance_cost(4, 12)
  fixed = dict(min_iterations=7, max_iterations=7, inner_iterations=1)
  objective = jax.jit(lambda c: _plan_objective(c, **fixed))
  fd = finite_difference_grad(lambda c: float(objective(jnp.asarray(c))), cost, h=1e-6)
  ours = jax.grad(_plan_objective)(jnp.asarray(cost), **fixed)
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
])
def test_errors(cost, kwargs, message):
  kwargs = {"epsilon": 0.1, **kwargs}
  with pytest.raises(ValueError, match=message):
    rtjax.self_transport(jnp.asarray(cost), **kwargs)
