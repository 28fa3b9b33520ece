"""Blocked ROT loss: value and gradient against the float64 NumPy reference, finite differences and
the dense path; no [n, n] intermediate; warm starts; errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtjax
from problems import random_problem
from reference import finite_difference_grad, relative_error, rot_loss as reference_loss
from rtjax.blocked import blocked_rot_loss, blocked_rot_loss_with_diagnostics

TIGHT = dict(threshold=1e-12, max_iterations=20_000, linear_solve_tolerance=1e-12)


@pytest.mark.parametrize("seed, n, d, k, epsilon, block_size", [
    (0, 10, 4, 1, 0.1, 3),    # 4 blocks, the last one padded
    (1, 16, 3, 3, 0.1, 16),   # one block
    (6, 16, 4, 1, 0.05, 5),
])
def test_x64_value_and_grad_match_reference(x64, seed, n, d, k, epsilon, block_size):
  z, y = random_problem(seed, n, d, k)
  expected = reference_loss(z, y, epsilon)
  expected_grad = finite_difference_grad(lambda zz: reference_loss(zz, y, epsilon), z)
  fn = jax.jit(jax.value_and_grad(
      lambda f: blocked_rot_loss(f, jnp.asarray(y), epsilon=epsilon, block_size=block_size, **TIGHT)))
  value, grad = fn(jnp.asarray(z))
  np.testing.assert_allclose(value, expected, rtol=1e-9)
  assert relative_error(grad, expected_grad) < 1e-6


@pytest.mark.parametrize("n, d, epsilon", [(300, 256, 0.1), (200, 16, 0.05)])
def test_float32_matches_float64_dense_path(n, d, epsilon):
  """float32 gradient within the 2e-3 budget; d = 256 takes the expanded distance form
  (64 * 300 * 256 elements per block > 2^22)."""
  z, y = random_problem(3, n, d, 1)
  with jax.enable_x64(True):
    dense = jax.jit(jax.value_and_grad(lambda f: rtjax.rot_loss(f, jnp.asarray(y), epsilon=epsilon, **TIGHT)))
    value64, grad64 = map(np.asarray, dense(jnp.asarray(z)))
  fn = jax.jit(jax.value_and_grad(
      lambda f: blocked_rot_loss(f, jnp.asarray(y, jnp.float32), epsilon=epsilon, block_size=64)))
  value, grad = fn(jnp.asarray(z, jnp.float32))
  assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
  assert abs(float(value) - value64) / value64 < 1e-3
  assert relative_error(grad, grad64) < 2e-3


def _avals(jaxpr):
  """Shapes of every variable of a (closed) jaxpr, sub-jaxprs of loops and calls included."""
  for eqn in jaxpr.eqns:
    yield from (v.aval.shape for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _avals(inner)


def test_never_materialises_an_n_by_n_array():
  n, block = 96, 16
  z, y = random_problem(0, n, 8, 1)
  fn = lambda f: blocked_rot_loss(f, jnp.asarray(y, jnp.float32), block_size=block)
  shapes = list(_avals(jax.make_jaxpr(jax.value_and_grad(fn))(jnp.asarray(z, jnp.float32)).jaxpr))
  assert (block, n) in shapes  # the blocks are there...
  assert not [s for s in shapes if sum(dim >= n for dim in s) >= 2]  # ...and nothing [n, n]-like
  dense_shapes = _avals(jax.make_jaxpr(jax.grad(lambda f: rtjax.rot_loss(f, jnp.asarray(y, jnp.float32))))(
      jnp.asarray(z, jnp.float32)).jaxpr)
  assert (n, n) in set(dense_shapes)  # the check can fail: it sees the dense path's matrices


def test_warm_start_same_loss_fewer_iterations():
  z, y = random_problem(2, 60, 8, 1)
  z, y = jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32)
  run = jax.jit(lambda f, init: blocked_rot_loss_with_diagnostics(f, y, epsilon=0.05, block_size=32, init=init))
  cold, info = run(z, None)
  warm, warm_info = run(z + 1e-3 * jnp.sin(z), info.potentials)
  assert bool(info.converged) and bool(warm_info.converged)
  assert int(warm_info.feature_transport.iterations) < int(info.feature_transport.iterations) / 3
  np.testing.assert_allclose(warm, blocked_rot_loss(z + 1e-3 * jnp.sin(z), y, epsilon=0.05), rtol=1e-3)


def test_constant_targets_and_identical_features_stay_finite():
  z = jnp.ones((20, 5)).at[:10].set(2.0)  # coincident points: clamped distances
  value, grad = jax.value_and_grad(lambda f: blocked_rot_loss(f, jnp.zeros(20), block_size=7))(z)
  assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_size=0), "block_size"),
    (dict(differentiation="unrolled"), "symmetric-implicit"),
    (dict(lse_mode=False), "symmetric-implicit"),
    (dict(epsilon=-1.0), "epsilon"),
    (dict(init=rtjax.RotPotentials.zeros(4)), "init"),
])
def test_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    blocked_rot_loss(jnp.ones((5, 3)), jnp.arange(5.0), **kwargs)


def test_traced_epsilon_is_refused():
  with pytest.raises(ValueError, match="epsilon"):
    jax.jit(lambda e: blocked_rot_loss(jnp.ones((5, 3)), jnp.arange(5.0), epsilon=e))(0.1)
