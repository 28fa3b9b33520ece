"""ROT loss, dense and blocked: value and gradient against the float64 NumPy reference and finite
differences, POT peer, prepared targets, warm starts, invariances, robustness, memory, errors."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from problems import random_problem
from reference import distances, finite_difference_grad, normalized_target_cost, relative_error
from reference import rot_loss as reference_loss

import rtjax

TIGHT = rtjax.SolverOptions(threshold=1e-12, max_iterations=20_000, linear_solve_tolerance=1e-12)
# seed, n, d, k, epsilon. Some seeds make the float64 reference Sinkhorn converge very slowly at
# epsilon = 0.05 (an isolated point); those are avoided to keep the suite fast.
PROBLEMS = [(0, 10, 4, 1, 0.1), (1, 16, 3, 3, 0.1), (6, 16, 4, 1, 0.05), (3, 12, 6, 2, 0.5)]
BLOCKS = [None, 5]  # dense, and blocks of 5 rows (the last one padded)


@functools.cache
def _reference(seed, n, d, k, epsilon):
  """Problem, float64 reference loss and finite-difference gradient (computed once per session)."""
  z, y = random_problem(seed, n, d, k)
  value = reference_loss(z, y, epsilon)
  return z, y, value, finite_difference_grad(lambda zz: reference_loss(zz, y, epsilon), z)


@pytest.mark.parametrize("seed, n, d, k, epsilon", PROBLEMS)
@pytest.mark.parametrize("block_size", BLOCKS)
def test_x64_value_and_grad_match_reference(x64, seed, n, d, k, epsilon, block_size):
  z, y, value, grad = _reference(seed, n, d, k, epsilon)
  fn = jax.jit(jax.value_and_grad(lambda f: rtjax.rot_loss(
      f, jnp.asarray(y), epsilon=epsilon, block_size=block_size, solver=TIGHT)))
  ours, our_grad = fn(jnp.asarray(z))
  assert ours.dtype == jnp.float64
  assert abs(float(ours) - value) <= 1e-9 * max(1.0, value)
  assert relative_error(our_grad, grad) <= 1e-6


@pytest.mark.parametrize("seed, n, d, k, epsilon", PROBLEMS)
@pytest.mark.parametrize("block_size", BLOCKS)
def test_float32_defaults_match_reference(seed, n, d, k, epsilon, block_size):
  z, y, value, grad = _reference(seed, n, d, k, epsilon)
  ours, our_grad = jax.value_and_grad(rtjax.rot_loss)(
      jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32), epsilon=epsilon, block_size=block_size)
  assert ours.dtype == jnp.float32
  assert abs(float(ours) - value) <= 5e-3 * max(1.0, value)
  assert relative_error(our_grad, grad) <= 2e-3


@pytest.mark.slow  # seconds each: kept out of the 5-minute default suite (CI runs it)
@pytest.mark.parametrize("n, d, epsilon", [(300, 256, 0.1), (200, 16, 0.05)])
def test_float32_blocked_matches_float64_dense_at_larger_n(n, d, epsilon):
  """float32 within the 2e-3 budget; d = 256 takes the expanded distance form in 64-row blocks."""
  z, y = random_problem(3, n, d, 1)
  with jax.enable_x64(True):
    dense = jax.jit(jax.value_and_grad(lambda f: rtjax.rot_loss(f, jnp.asarray(y), epsilon=epsilon, solver=TIGHT)))
    value64, grad64 = map(np.asarray, dense(jnp.asarray(z)))
  fn = jax.jit(jax.value_and_grad(
      lambda f: rtjax.rot_loss(f, jnp.asarray(y, jnp.float32), epsilon=epsilon, block_size=64)))
  value, grad = fn(jnp.asarray(z, jnp.float32))
  assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
  assert abs(float(value) - value64) / value64 < 1e-3
  assert relative_error(grad, grad64) < 2e-3


def test_value_matches_pot_plans(x64):
  """The loss assembled from POT's kernel-mode plans (the published solver) on the same costs."""
  z, y = random_problem(7, 20, 4, 1)
  cost_z = distances(z / np.linalg.norm(z, axis=1).mean())
  cost_y = normalized_target_cost(y)
  a = np.full(20, 1 / 20)
  big = 999 * np.eye(20)
  t_y = pot.sinkhorn(a, a, cost_y + big, 0.1, numItermax=100_000, stopThr=1e-13)
  t_z = pot.sinkhorn(a, a, cost_z + big, 0.1, numItermax=100_000, stopThr=1e-13)
  expected = abs(((cost_z + big) * t_y).sum() - ((cost_z + big) * t_z).sum())
  for block_size in BLOCKS:
    ours = rtjax.rot_loss(jnp.asarray(z), jnp.asarray(y), epsilon=0.1, block_size=block_size, solver=TIGHT)
    np.testing.assert_allclose(float(ours), expected, rtol=1e-9)


def test_prepared_targets_give_the_same_loss_and_gradient(x64):
  z, y = random_problem(2, 14, 4, 1)
  prepared = rtjax.prepare_targets(jnp.asarray(y), epsilon=0.05, solver=TIGHT)
  assert bool(prepared.info.converged)
  direct = jax.value_and_grad(lambda f: rtjax.rot_loss(f, jnp.asarray(y), epsilon=0.05, solver=TIGHT))
  cached = jax.jit(jax.value_and_grad(lambda f, t: rtjax.rot_loss(f, t, solver=TIGHT)))
  (v1, g1), (v2, g2) = direct(jnp.asarray(z)), cached(jnp.asarray(z), prepared)
  np.testing.assert_allclose(v2, v1, rtol=1e-12)
  np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(v2, reference_loss(z, y, 0.05), rtol=1e-9)


@pytest.mark.parametrize("seed, n, d, k, epsilon, block_size",  # the blocked variant runs with -m slow
                         [(*p, None) for p in PROBLEMS] + [pytest.param(*PROBLEMS[2], 5, marks=pytest.mark.slow)])
def test_warm_start_keeps_value_and_gradient_and_saves_iterations(seed, n, d, k, epsilon, block_size):
  """Start from the potentials of a perturbed batch (a previous training step): the float32 default
  still matches the float64 reference, in fewer iterations than a cold start."""
  z, y, value, grad = _reference(seed, n, d, k, epsilon)
  z32, y32 = jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32)
  step = jax.jit(jax.value_and_grad(functools.partial(
      rtjax.rot_loss, epsilon=epsilon, block_size=block_size, return_diagnostics=True), has_aux=True))
  _, previous = step(z32 + 0.01 * jnp.sin(z32), y32)[0]
  (warm, info), warm_grad = step(z32, y32, init=previous.potentials)
  (_, cold_info), _ = step(z32, y32)
  assert abs(float(warm) - value) <= 5e-3 * max(1.0, value)
  assert relative_error(warm_grad, grad) <= 2e-3
  assert int(info.target.iterations) == 0  # same targets: the previous potential already solves T_Y
  assert int(info.feature.iterations) < int(cold_info.feature.iterations)
  zero_start = step(z32, y32, init=rtjax.RotPotentials.zeros(n))[0][1]
  assert int(zero_start.feature.iterations) == int(cold_info.feature.iterations)


def test_jit_vmap_and_one_trace_per_shape():
  z, y = random_problem(8, 16, 4, 1)
  zs = jnp.asarray(np.stack([z, 2 * z + 1, -z]), jnp.float32)
  ys = jnp.asarray(np.stack([y, y, y[::-1]]), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(zb, yb):
    return jax.vmap(jax.value_and_grad(rtjax.rot_loss))(zb, yb)

  values, grads = batched(zs, ys)
  batched(zs + 0.1, ys)  # same shapes: no second trace
  for i in range(3):
    v, g = jax.value_and_grad(rtjax.rot_loss)(zs[i], ys[i])
    np.testing.assert_allclose(values[i], v, rtol=1e-5)
    np.testing.assert_allclose(grads[i], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("block_size", BLOCKS)
def test_gradient_is_permutation_equivariant(x64, block_size):
  z, y = random_problem(9, 14, 3, 1)
  perm = np.random.default_rng(0).permutation(14)
  grad_fn = jax.grad(lambda f, t: rtjax.rot_loss(f, t, block_size=block_size, solver=TIGHT))
  np.testing.assert_allclose(grad_fn(jnp.asarray(z[perm]), jnp.asarray(y[perm])),
                             grad_fn(jnp.asarray(z), jnp.asarray(y))[perm], rtol=1e-8, atol=1e-12)


def test_unnormalised_loss_depends_on_scale(x64):
  z, y = random_problem(10, 14, 3, 1)
  base = rtjax.rot_loss(jnp.asarray(z), jnp.asarray(y), solver=TIGHT)
  unnormalised = rtjax.rot_loss(jnp.asarray(7.0 * z), jnp.asarray(y), normalize=False, solver=TIGHT)
  assert abs(float(unnormalised) - float(base)) > 1e-3


@pytest.mark.parametrize("block_size", BLOCKS)
def test_constant_targets_duplicate_rows_and_zero_rows_are_finite(block_size):
  z, y = random_problem(11, 12, 4, 1)
  z = jnp.asarray(z, jnp.float32)
  constant = jnp.full((12,), 3.0)
  duplicated = z.at[6:].set(z[:6])
  zeros = z.at[3:].set(0.0)
  for feats, targs in [(z, constant), (duplicated, jnp.asarray(y, jnp.float32)),
                       (zeros, jnp.asarray(y, jnp.float32)), (jnp.zeros((12, 4)), constant)]:
    value, grad = jax.value_and_grad(rtjax.rot_loss)(feats, targs, block_size=block_size)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))


def test_bfloat16_features_are_upcast():
  z, y = random_problem(12, 10, 4, 1)
  value = rtjax.rot_loss(jnp.asarray(z, jnp.bfloat16), jnp.asarray(y, jnp.float32))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(float(value), reference_loss(z, y, 0.1), rtol=3e-2)


def test_small_epsilon_never_kills_a_run_where_ott_implicit_diff_throws():
  """ott-jax's implicit differentiation raises inside jit here (lineax: non-finite linear solve);
  rtjax stays finite and reports the solves' state."""
  from ott.geometry import geometry
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import implicit_differentiation, sinkhorn

  z = jax.random.normal(jax.random.PRNGKey(0), (100, 100))
  y = jax.random.normal(jax.random.PRNGKey(1), (100, 3))

  def ott_transport_cost(f):
    cost = rtjax.pairwise_distance(f / jnp.mean(jnp.linalg.norm(f, axis=1)))
    geom = geometry.Geometry(cost_matrix=jnp.where(jnp.eye(100, dtype=bool), 999.0, cost), epsilon=0.01)
    solver = sinkhorn.Sinkhorn(threshold=1e-4, implicit_diff=implicit_differentiation.ImplicitDiff())
    return jnp.sum(cost * solver(linear_problem.LinearProblem(geom)).matrix)
  with pytest.raises(Exception, match="non-finite"):
    jax.block_until_ready(jax.jit(jax.grad(ott_transport_cost))(z))
  step = jax.jit(jax.value_and_grad(
      lambda f: rtjax.rot_loss(f, y, epsilon=0.01, return_diagnostics=True), has_aux=True))
  (value, info), grad = step(z)
  assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
  assert info.converged.dtype == jnp.bool_ and int(info.feature.iterations) > 0
  assert bool(info.feature.finite) and bool(info.target.finite)


def _avals(jaxpr):
  """Shapes of every variable of a (closed) jaxpr, sub-jaxprs of loops and calls included."""
  for eqn in jaxpr.eqns:
    yield from (v.aval.shape for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _avals(inner)


def test_blocked_path_never_materialises_an_n_by_n_array():
  n, block = 96, 16
  z, y = random_problem(0, n, 8, 1)
  fn = lambda f, b: rtjax.rot_loss(f, jnp.asarray(y, jnp.float32), block_size=b)
  jaxpr = jax.make_jaxpr(jax.value_and_grad(fn), static_argnums=1)(jnp.asarray(z, jnp.float32), block).jaxpr
  shapes = set(_avals(jaxpr))
  assert (block, n) in shapes  # the blocks are there...
  assert not [s for s in shapes if sum(dim >= n for dim in s) >= 2]  # ...and nothing [n, n]-like
  dense = set(_avals(jax.make_jaxpr(jax.grad(fn), static_argnums=1)(jnp.asarray(z, jnp.float32), None).jaxpr))
  assert (n, n) in dense  # the check can fail: it sees the dense path's matrices


@pytest.mark.parametrize("features, targets, message", [
    (np.ones((5, 3)), np.ones((4,)), "same number of samples"),
    (np.ones((5,)), np.ones((5,)), r"\[n, d\]"),
    (np.ones((5, 3, 2)), np.ones((5,)), r"\[n, d\]"),
    (np.ones((5, 3)), np.ones((5, 1, 1)), r"\[n\] or \[n, k\]"),
    (np.ones((1, 3)), np.ones((1,)), "n >= 2"),
    (np.ones((5, 3), np.int32), np.ones((5,)), "features.*floating"),
    (np.ones((5, 3)), np.arange(5), "targets.*floating"),
])
def test_errors(features, targets, message):
  with pytest.raises(ValueError, match=message):
    rtjax.rot_loss(jnp.asarray(features), jnp.asarray(targets))


@pytest.mark.parametrize("kwargs, message", [
    (dict(epsilon=0.0), "`epsilon` must be positive"), (dict(epsilon=-0.1), "`epsilon` must be positive"),
    (dict(diagonal_cost=-1.0), "`diagonal_cost` must be positive"),
    (dict(block_size=0), "`block_size` must be a positive integer or None, got 0"),
    (dict(block_size=2.5), "`block_size` must be a positive integer or None, got 2.5"),
    (dict(init=jnp.zeros(5)), "`init` must be an rtjax.RotPotentials .* or None, got ArrayImpl"),
    (dict(init=rtjax.RotPotentials.zeros(4)), r"`init` potentials must have shape \(5,\), got \(4,\)"),
    (dict(solver=dict(threshold=1e-3)), "`solver` must be an rtjax.SolverOptions or None, got dict"),
])
def test_option_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rtjax.rot_loss(jnp.ones((5, 3)), jnp.arange(5.0), **kwargs)


def test_prepared_targets_errors():
  prepared = rtjax.prepare_targets(jnp.arange(5.0))
  with pytest.raises(ValueError, match=r"\['epsilon', 'block_size'\] must not be given with prepared"):
    rtjax.rot_loss(jnp.ones((5, 3)), prepared, epsilon=0.1, block_size=2)
  with pytest.raises(ValueError, match="same number of samples"):
    rtjax.rot_loss(jnp.ones((6, 3)), prepared)
  with pytest.raises(ValueError, match=r"`init` must be a potential of shape \(5,\), got \(3,\)"):
    rtjax.prepare_targets(jnp.arange(5.0), init=jnp.zeros(3))
