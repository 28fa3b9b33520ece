"""ROT loss: value and gradient against the float64 NumPy reference and finite differences, POT
peer, transformations, invariances, robustness and errors."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

import rtjax
from problems import random_problem
from reference import distances, finite_difference_grad, relative_error, rot_loss as reference_loss

TIGHT = dict(threshold=1e-12, max_iterations=3000, linear_solve_tolerance=1e-12)
MODES = ["symmetric-implicit", "unrolled", "implicit"]
# seed, n, d, k, epsilon. Some seeds make the float64 reference Sinkhorn converge very slowly at
# epsilon = 0.05 (an isolated point); those are avoided to keep the suite fast.
PROBLEMS = [
    (0, 10, 4, 1, 0.1), (1, 16, 3, 3, 0.1), (6, 16, 4, 1, 0.05), (3, 12, 6, 2, 0.5)]


@functools.lru_cache(maxsize=None)
def _reference(seed, n, d, k, epsilon):
  """Problem, float64 reference loss and finite-difference gradient (computed once per session)."""
  z, y = random_problem(seed, n, d, k)
  return (z, y) + _reference_value_and_grad(z, y, epsilon)


def _reference_value_and_grad(z, y, epsilon):
  value = reference_loss(z, y, epsilon)
  grad = finite_difference_grad(lambda zz: reference_loss(zz, y, epsilon), z)
  return value, grad


@pytest.mark.parametrize("seed, n, d, k, epsilon", PROBLEMS)
@pytest.mark.parametrize("differentiation", MODES)
def test_x64_value_and_grad_match_reference(x64, seed, n, d, k, epsilon, differentiation):
  z, y, value, grad = _reference(seed, n, d, k, epsilon)
  ours, our_grad = jax.value_and_grad(rtjax.rot_loss)(
      jnp.asarray(z), jnp.asarray(y), epsilon=epsilon, differentiation=differentiation, **TIGHT)
  assert ours.dtype == jnp.float64
  assert abs(float(ours) - value) <= 1e-9 * max(1.0, value)
  assert relative_error(our_grad, grad) <= 1e-6


@pytest.mark.parametrize("seed, n, d, k, epsilon", PROBLEMS)
@pytest.mark.parametrize("differentiation", ["symmetric-implicit", "unrolled"])
def test_float32_defaults_match_reference(seed, n, d, k, epsilon, differentiation):
  z, y, value, grad = _reference(seed, n, d, k, epsilon)
  ours, our_grad = jax.value_and_grad(rtjax.rot_loss)(
      jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32), epsilon=epsilon,
      differentiation=differentiation)
  assert ours.dtype == jnp.float32
  assert abs(float(ours) - value) <= 5e-3 * max(1.0, value)
  assert relative_error(our_grad, grad) <= 2e-3


@pytest.mark.parametrize("seed, n, d, k, epsilon", PROBLEMS)
def test_warm_start_keeps_value_and_gradient_and_saves_iterations(seed, n, d, k, epsilon):
  """Start from the potentials of a perturbed batch (a previous training step): the float32
  default still matches the float64 reference, in fewer iterations than a cold start."""
  z, y, value, grad = _reference(seed, n, d, k, epsilon)
  z32, y32 = jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32)
  step = jax.jit(jax.value_and_grad(
      functools.partial(rtjax.rot_loss_with_diagnostics, epsilon=epsilon), has_aux=True))
  _, previous = step(z32 + 0.01 * jnp.sin(z32), y32)[0]
  (warm, info), warm_grad = step(z32, y32, init=previous.potentials)
  (_, cold_info), _ = step(z32, y32)
  assert abs(float(warm) - value) <= 5e-3 * max(1.0, value)
  assert relative_error(warm_grad, grad) <= 2e-3
  assert int(info.target_transport.iterations) <= int(cold_info.target_transport.iterations)
  assert int(info.feature_transport.iterations) <= int(cold_info.feature_transport.iterations)
  zero_start = step(z32, y32, init=rtjax.RotPotentials.zeros(n))[0][1]
  assert int(zero_start.feature_transport.iterations) == int(cold_info.feature_transport.iterations)


def test_value_matches_pot_plans(x64):
  """The loss assembled from POT's kernel-mode plans (the published solver) on the same costs."""
  z, y = random_problem(7, 20, 4, 1)
  zn = z / np.linalg.norm(z, axis=1).mean()
  cost_z = distances(zn)
  cost_y = distances(y)
  cost_y /= cost_y.max()
  a = np.full(20, 1 / 20)
  big = 999 * np.eye(20)
  t_y = pot.sinkhorn(a, a, cost_y + big, 0.1, numItermax=100_000, stopThr=1e-13)
  t_z = pot.sinkhorn(a, a, cost_z + big, 0.1, numItermax=100_000, stopThr=1e-13)
  expected = abs(((cost_z + big) * t_y).sum() - ((cost_z + big) * t_z).sum())
  ours = rtjax.rot_loss(jnp.asarray(z), jnp.asarray(y), epsilon=0.1, **TIGHT)
  np.testing.assert_allclose(float(ours), expected, rtol=1e-9)


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


def test_gradient_is_permutation_equivariant(x64):
  z, y = random_problem(9, 14, 3, 1)
  perm = np.random.default_rng(0).permutation(14)
  grad = jax.grad(rtjax.rot_loss)(jnp.asarray(z), jnp.asarray(y), **TIGHT)
  grad_perm = jax.grad(rtjax.rot_loss)(jnp.asarray(z[perm]), jnp.asarray(y[perm]), **TIGHT)
  np.testing.assert_allclose(grad_perm, grad[perm], rtol=1e-8, atol=1e-12)


def test_normalised_loss_is_scale_invariant(x64):
  z, y = random_problem(10, 14, 3, 1)
  base = rtjax.rot_loss(jnp.asarray(z), jnp.asarray(y), **TIGHT)
  for scale in (1e-3, 7.0, 1e3):
    np.testing.assert_allclose(rtjax.rot_loss(jnp.asarray(scale * z), jnp.asarray(y), **TIGHT), base, rtol=1e-9)
  unnormalised = rtjax.rot_loss(jnp.asarray(7.0 * z), jnp.asarray(y), normalize=False, **TIGHT)
  assert abs(float(unnormalised) - float(base)) > 1e-3


def test_constant_targets_duplicate_rows_and_zero_rows_are_finite():
  z, y = random_problem(11, 12, 4, 1)
  z = jnp.asarray(z, jnp.float32)
  constant = jnp.full((12,), 3.0)
  duplicated = z.at[6:].set(z[:6])
  zeros = z.at[3:].set(0.0)
  for feats, targs in [(z, constant), (duplicated, jnp.asarray(y, jnp.float32)),
                       (zeros, jnp.asarray(y, jnp.float32)), (jnp.zeros((12, 4)), constant)]:
    value, grad = jax.value_and_grad(rtjax.rot_loss)(feats, targs)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))


def test_bfloat16_features_are_upcast():
  z, y = random_problem(12, 10, 4, 1)
  value = rtjax.rot_loss(jnp.asarray(z, jnp.bfloat16), jnp.asarray(y, jnp.float32))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(float(value), reference_loss(z, y, 0.1), rtol=3e-2)


@pytest.mark.parametrize("differentiation", ["symmetric-implicit", "unrolled"])
def test_rtjax_modes_never_kill_a_run_where_ott_implicit_diff_throws(differentiation):
  """ott-jax's implicit differentiation raises inside jit here (lineax: non-finite linear solve);
  rtjax's default (symmetric-implicit) and unrolled modes stay finite and report the solves' state."""
  key = jax.random.PRNGKey(0)
  z = jax.random.normal(key, (100, 100))
  y = jax.random.normal(jax.random.PRNGKey(1), (100, 3))
  implicit = jax.jit(jax.grad(lambda f: rtjax.rot_loss(f, y, epsilon=0.01, differentiation="implicit")))
  with pytest.raises(Exception, match="non-finite"):
    jax.block_until_ready(implicit(z))
  step = jax.jit(jax.value_and_grad(
      lambda f: rtjax.rot_loss_with_diagnostics(f, y, epsilon=0.01, differentiation=differentiation),
      has_aux=True))
  (value, info), grad = step(z)
  assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
  assert info.converged.dtype == jnp.bool_
  assert int(info.feature_transport.iterations) > 0
  assert bool(info.feature_transport.finite) and bool(info.target_transport.finite)


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
    (dict(epsilon=0.0), "epsilon"), (dict(epsilon=-0.1), "epsilon"),
    (dict(differentiation="autodiff"), "differentiation"), (dict(max_iter=3), "Unknown solver option"),
])
def test_option_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rtjax.rot_loss(jnp.ones((5, 3)), jnp.arange(5.0), **kwargs)


def test_pairwise_distance_both_paths_match_explicit_differences(x64, monkeypatch):
  x = np.random.default_rng(13).normal(size=(30, 5)) + 3.0  # offset cloud: cancellation-prone
  expected = distances(x)
  np.testing.assert_allclose(rtjax.pairwise_distance(jnp.asarray(x)), expected, rtol=1e-10)
  monkeypatch.setattr(rtjax.rot, "EXPLICIT_DIFFERENCES_MAX_ELEMENTS", 0)  # force the expanded form
  np.testing.assert_allclose(rtjax.pairwise_distance(jnp.asarray(x)), expected, rtol=1e-8)


def test_float32_gradient_of_one_dimensional_features():
  """Scalar features in [0, 1]: explicit differences give 2.7e-5; the expanded distance form gave
  1.5e-4 with centring and 3.5e-2 (n = 100) without."""
  rng = np.random.default_rng(14)
  z, y = rng.uniform(0, 1, size=(40, 1)), rng.uniform(0, 1, size=40)
  grad = finite_difference_grad(lambda zz: reference_loss(zz, y, 0.1), z)
  ours = jax.grad(rtjax.rot_loss)(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32))
  assert relative_error(ours, grad) <= 1e-4
