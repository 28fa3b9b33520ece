"""Masked self-transport of a cost matrix: plans against the float64 NumPy reference and POT, warm
starts, diagnostics, jit/vmap, errors. (Derivatives: test_derivatives.py.)"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from problems import distance_cost
from reference import sinkhorn_plan

import rtjax

TIGHT = rtjax.SolverOptions(threshold=1e-12, max_iterations=20_000, linear_solve_tolerance=1e-12)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("epsilon", [1.0, 0.1, 0.05])
@pytest.mark.parametrize("diagonal_cost", [999.0, float("inf")])
def test_plan_matches_float64_reference(x64, symmetric, epsilon, diagonal_cost):
  cost = distance_cost(0, 30)
  result = rtjax.self_transport(jnp.asarray(cost), epsilon=epsilon, diagonal_cost=diagonal_cost,
                                symmetric=symmetric, solver=TIGHT)
  np.testing.assert_allclose(result.plan, sinkhorn_plan(cost, epsilon), atol=1e-12)
  assert np.all(np.diag(np.asarray(result.plan)) == 0.0)
  np.testing.assert_allclose(result.plan.sum(0), 1 / 30, atol=1e-12)
  assert bool(result.info.converged) and bool(result.info.finite)


def test_non_symmetric_cost_matches_reference(x64):
  cost = np.abs(np.random.default_rng(1).normal(size=(20, 20)))
  result = rtjax.self_transport(jnp.asarray(cost), epsilon=0.2, solver=TIGHT)
  np.testing.assert_allclose(result.plan, sinkhorn_plan(cost, 0.2, warm_start=False), atol=1e-12)
  # symmetric=True solves the symmetric part instead, as documented.
  symmetric = rtjax.self_transport(jnp.asarray(cost), epsilon=0.2, symmetric=True, solver=TIGHT)
  np.testing.assert_allclose(symmetric.plan, sinkhorn_plan((cost + cost.T) / 2, 0.2, warm_start=False),
                             atol=1e-12)


def test_plan_matches_pot_peer(x64):
  """POT's ot.sinkhorn (kernel mode, the published solver) on C + 999 I, in float64."""
  cost = distance_cost(1, 40)
  n = len(cost)
  a = np.full(n, 1 / n)
  pot_plan = pot.sinkhorn(a, a, cost + 999 * np.eye(n), 0.1, numItermax=100_000, stopThr=1e-13)
  for symmetric in (False, True):
    plan = rtjax.self_transport(jnp.asarray(cost), epsilon=0.1, symmetric=symmetric, solver=TIGHT).plan
    np.testing.assert_allclose(plan, pot_plan, atol=1e-11)


@pytest.mark.parametrize("symmetric", [False, True])
def test_default_float32_plan_close_to_reference(symmetric):
  cost = distance_cost(2, 50)
  result = rtjax.self_transport(jnp.asarray(cost, jnp.float32), epsilon=0.1, symmetric=symmetric)
  assert result.plan.dtype == jnp.float32
  assert float(result.info.marginal_error) <= 1e-4 and bool(result.info.converged)
  assert np.abs(np.asarray(result.plan) - sinkhorn_plan(cost, 0.1)).sum() < 2e-3


@pytest.mark.parametrize("symmetric", [False, True])
def test_warm_start_gives_the_same_plan_in_fewer_iterations(x64, symmetric):
  cost = distance_cost(6, 30)
  moved = cost + 1e-3 * np.cos(cost)
  options = rtjax.SolverOptions(threshold=1e-10)
  previous = rtjax.self_transport(jnp.asarray(cost), epsilon=0.05, symmetric=symmetric, solver=options)
  cold = rtjax.self_transport(jnp.asarray(moved), epsilon=0.05, symmetric=symmetric, solver=options)
  warm = rtjax.self_transport(jnp.asarray(moved), epsilon=0.05, symmetric=symmetric, solver=options,
                              init=(previous.f, previous.g))
  assert int(warm.info.iterations) < int(cold.info.iterations)
  np.testing.assert_allclose(warm.plan, cold.plan, atol=1e-9)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("max_iterations", [1, 5, 7, 13])
def test_max_iterations_is_honoured_and_non_convergence_reported(symmetric, max_iterations):
  cost = jnp.asarray(distance_cost(5, 40), jnp.float32)
  result = rtjax.self_transport(cost, epsilon=0.01, symmetric=symmetric,
                                solver=rtjax.SolverOptions(max_iterations=max_iterations, threshold=1e-6))
  assert int(result.info.iterations) == max_iterations
  assert not bool(result.info.converged) and float(result.info.marginal_error) > 1e-6
  assert bool(result.info.finite)


def test_jit_vmap_and_single_trace():
  costs = jnp.asarray(np.stack([distance_cost(s, 16) for s in range(3)]), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def plans(c):
    return jax.vmap(lambda ci: rtjax.self_transport(ci, epsilon=0.1).plan)(c)

  batched = plans(costs)
  plans(costs + 1e-3)  # same shape: no retrace
  for i in range(3):  # vmapped, the loop runs until every problem converges: equal within the threshold
    np.testing.assert_allclose(batched[i], rtjax.self_transport(costs[i], epsilon=0.1).plan, atol=1e-5)


@pytest.mark.parametrize("cost, kwargs, message", [
    (np.ones((3, 4)), {}, "square"),
    (np.ones((3,)), {}, "square"),
    (np.ones((1, 1)), {}, "n >= 2"),
    (np.ones((3, 3), np.int32), {}, "floating"),
    (np.ones((3, 3)), dict(epsilon=0.0), "`epsilon` must be positive"),
    (np.ones((3, 3)), dict(epsilon=-1.0), "`epsilon` must be positive"),
    (np.ones((3, 3)), dict(epsilon=np.ones(2)), "`epsilon` must be a scalar"),
    (np.ones((3, 3)), dict(diagonal_cost=0.0), "`diagonal_cost` must be positive"),
    (np.ones((3, 3)), dict(diagonal_cost=jnp.asarray(5.0)), "`diagonal_cost` must be a Python number"),
    (np.ones((3, 3)), dict(init=np.zeros(3)), r"`init` must be a pair \(f, g\) of potentials of shape \(3,\)"),
    (np.ones((3, 3)), dict(init=(np.zeros(4), np.zeros(4))), r"got a tuple of shapes \[\(4,\), \(4,\)\]"),
    (np.ones((3, 3)), dict(solver={"threshold": 1e-3}), "`solver` must be an rtjax.SolverOptions"),
])
def test_errors(cost, kwargs, message):
  kwargs = {"epsilon": 0.1, **kwargs}
  with pytest.raises(ValueError, match=message):
    rtjax.self_transport(jnp.asarray(cost), **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_iterations=0), "`max_iterations` must be an integer >= 1, got 0"),
    (dict(max_iterations=2.5), "`max_iterations` must be an integer >= 1"),
    (dict(threshold=0.0), "`threshold` must be a positive number"),
    (dict(linear_solve_tolerance=-1.0), "`linear_solve_tolerance` must be a positive number"),
    (dict(linear_solve_max_iterations=0), "`linear_solve_max_iterations` must be an integer >= 1"),
    (dict(newton_below=-1.0), r"`newton_below` must be a number >= 0 \(0: no Newton steps\)"),
])
def test_solver_option_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rtjax.SolverOptions(**kwargs)
  with pytest.raises(ValueError, match="Unknown solver option"):
    rtjax.SolverOptions().replace(tolerance=1e-3)
  assert hash(rtjax.SolverOptions()) == hash(rtjax.SolverOptions())  # static under jit


def test_newton_steps_and_sinkhorn_alone_reach_the_same_plan_newton_in_fewer_iterations(x64):
  """At small epsilon the symmetric Sinkhorn iteration crawls near a matching; Newton steps do not."""
  cost = jnp.asarray(distance_cost(7, 40))
  solve = lambda newton_below: rtjax.self_transport(
      cost, epsilon=0.05, symmetric=True,
      solver=rtjax.SolverOptions(threshold=1e-9, max_iterations=50_000, newton_below=newton_below))
  newton, sinkhorn_only = solve(1e-2), solve(0.0)
  assert bool(newton.info.converged) and bool(sinkhorn_only.info.converged)
  np.testing.assert_allclose(newton.plan, sinkhorn_only.plan, atol=1e-9)
  np.testing.assert_allclose(newton.plan, sinkhorn_plan(np.asarray(cost), 0.05, warm_start=False), atol=1e-9)
  assert 5 * int(newton.info.iterations) < int(sinkhorn_only.info.iterations)
