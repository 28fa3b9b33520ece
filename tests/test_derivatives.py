"""Every derivative rtjax offers, against central finite differences of the float64 NumPy reference:
d/d epsilon, per-entry cost gradients, forward mode, Hessian-vector products (forward-over-reverse and
reverse-over-reverse), gradients of gradient penalties; and scale invariance over 1e-30...1e30."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import distance_cost, random_problem
from reference import finite_difference_grad, relative_error, sinkhorn_plan
from reference import rot_loss as reference_loss

import rtjax

TIGHT = rtjax.SolverOptions(threshold=1e-13, max_iterations=20_000, linear_solve_tolerance=1e-13)
# seed, n, d, k, epsilon
PROBLEMS = [(0, 10, 4, 1, 0.1), (1, 12, 3, 3, 0.05), (3, 12, 6, 2, 0.5)]
DIAGONALS = [999.0, float("inf")]
BLOCKS = [None, 5]


def _fd(fn, x, h):
  return (fn(x + h) - fn(x - h)) / (2 * h)


@functools.cache
def _reference_epsilon_grad(seed, n, d, k, epsilon):
  z, y = random_problem(seed, n, d, k)
  return _fd(lambda e: reference_loss(z, y, e), epsilon, 1e-6)


@pytest.mark.parametrize("seed, n, d, k, epsilon", PROBLEMS)
@pytest.mark.parametrize("diagonal_cost", DIAGONALS)
@pytest.mark.parametrize("block_size", BLOCKS)
def test_rot_loss_epsilon_gradient(x64, seed, n, d, k, epsilon, diagonal_cost, block_size):
  """T_Y's dependence on epsilon is kept (the stop-gradient only cuts the targets)."""
  z, y = random_problem(seed, n, d, k)
  grad = jax.jit(jax.grad(lambda e: rtjax.rot_loss(
      jnp.asarray(z), jnp.asarray(y), epsilon=e, diagonal_cost=diagonal_cost, block_size=block_size,
      solver=TIGHT)))(epsilon)
  expected = _reference_epsilon_grad(seed, n, d, k, epsilon)
  assert np.isfinite(float(grad))
  assert abs(float(grad) - expected) <= 1e-5 * abs(expected)


def test_epsilon_gradient_through_prepared_targets(x64):
  seed, n, d, k, epsilon = PROBLEMS[1]
  z, y = random_problem(seed, n, d, k)

  def loss(e):
    targets = rtjax.prepare_targets(jnp.asarray(y), epsilon=e, solver=TIGHT)
    return rtjax.rot_loss(jnp.asarray(z), targets, solver=TIGHT)
  expected = _reference_epsilon_grad(seed, n, d, k, epsilon)
  assert abs(float(jax.grad(loss)(epsilon)) - expected) <= 1e-5 * abs(expected)
  # Prepared targets held fixed (solved outside) cut T_Y's dependence: a different, documented number.
  fixed = rtjax.prepare_targets(jnp.asarray(y), epsilon=epsilon, solver=TIGHT)
  frozen = jax.grad(lambda e: rtjax.rot_loss(jnp.asarray(z), fixed._replace(epsilon=e), solver=TIGHT))(epsilon)
  assert abs(float(frozen) - expected) > 1e-2 * abs(expected)


@pytest.mark.parametrize("block_size", BLOCKS)
def test_pixel_loss_epsilon_gradient(x64, block_size):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(1, 16, 16, 3))
  depth = rng.uniform(0.5, 5.0, size=(1, 16, 16))
  key = jax.random.PRNGKey(0)
  loss = lambda e: rtjax.pixel_rot_loss(jnp.asarray(features), jnp.asarray(depth), key, stride=4,
                                        num_pixels=12, epsilon=e, block_size=block_size, solver=TIGHT)
  index = np.asarray(rtjax.sample_valid_pixels(jnp.ones(16, bool), key, 12))
  f, t = features[:, ::4, ::4].reshape(-1, 3)[index], depth[:, ::4, ::4].reshape(-1)[index]
  expected = _fd(lambda e: reference_loss(f, t, e), 0.1, 1e-6)
  np.testing.assert_allclose(float(loss(0.1)), reference_loss(f, t, 0.1), rtol=1e-9)
  assert abs(float(jax.grad(loss)(0.1)) - expected) <= 1e-5 * abs(expected)


def _plan_objective(weights, **kwargs):
  return lambda cost, epsilon: jnp.sum(weights * rtjax.self_transport(cost, epsilon=epsilon, solver=TIGHT,
                                                                      **kwargs).plan)


@pytest.mark.parametrize("diagonal_cost", DIAGONALS)
@pytest.mark.parametrize("cost_kind", ["symmetric", "non-symmetric"])
def test_self_transport_cost_entry_and_epsilon_gradients(x64, diagonal_cost, cost_kind):
  """Every single cost entry, symmetric cost or not: the default solves the given cost exactly."""
  n = 9
  cost = distance_cost(3, n) if cost_kind == "symmetric" else np.abs(np.random.default_rng(3).normal(size=(n, n)))
  weights = np.sin(np.arange(n * n, dtype=np.float64).reshape(n, n))
  objective = lambda c, e: float((weights * sinkhorn_plan(c, e, tol=1e-14, warm_start=False)).sum())
  grad_cost, grad_eps = jax.grad(_plan_objective(jnp.asarray(weights), diagonal_cost=diagonal_cost),
                                 argnums=(0, 1))(jnp.asarray(cost), 0.3)
  fd = finite_difference_grad(lambda c: objective(c, 0.3), cost, h=1e-6)
  np.fill_diagonal(fd, 0.0)  # the diagonal is ignored
  assert relative_error(grad_cost, fd) <= 1e-6
  assert np.all(np.asarray(grad_cost)[np.eye(n, dtype=bool)] == 0.0)
  np.testing.assert_allclose(float(grad_eps), _fd(lambda e: objective(cost, e), 0.3, 1e-6), rtol=1e-6)


def test_symmetric_self_transport_is_the_symmetrised_function(x64):
  """symmetric=True computes T((C + C^T) / 2): its per-entry gradient is that function's, exactly."""
  n = 9
  cost = np.abs(np.random.default_rng(4).normal(size=(n, n)))
  weights = np.cos(np.arange(n * n, dtype=np.float64).reshape(n, n))
  objective = lambda c: float((weights * sinkhorn_plan((c + c.T) / 2, 0.3, tol=1e-14, warm_start=False)).sum())
  grad = jax.grad(_plan_objective(jnp.asarray(weights), symmetric=True))(jnp.asarray(cost), 0.3)
  fd = finite_difference_grad(objective, cost, h=1e-6)
  np.fill_diagonal(fd, 0.0)
  assert relative_error(grad, fd) <= 1e-6


@pytest.mark.parametrize("symmetric", [False, True])
def test_self_transport_hessian_vector_product(x64, symmetric):
  n = 8
  cost = jnp.asarray(distance_cost(5, n))
  weights = jnp.asarray(np.sin(np.arange(n * n, dtype=np.float64).reshape(n, n)))
  grad = jax.grad(_plan_objective(weights, symmetric=symmetric))
  v = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)))
  hvp = jax.jvp(lambda c: grad(c, 0.2), (cost,), (v,))[1]
  expected = (grad(cost + 1e-5 * v, 0.2) - grad(cost - 1e-5 * v, 0.2)) / 2e-5
  assert relative_error(hvp, expected) <= 1e-4


@functools.cache
def _reference_grad(z_bytes, shape, y_bytes, yshape, epsilon):
  z, y = np.frombuffer(z_bytes).reshape(shape), np.frombuffer(y_bytes).reshape(yshape)
  return finite_difference_grad(lambda zz: reference_loss(zz, y, epsilon), z, h=1e-5)


def _reference_hvp(z, y, v, epsilon, h=1e-3):
  """Central differences of the reference's own finite-difference gradient g along v, Richardson-
  extrapolated, (4 D(h / 2) - D(h)) / 3 with D(h) = (g(z + h v) - g(z - h v)) / 2h: at epsilon = 0.05
  D(1e-3) alone is 4.8e-4 off (truncation), the extrapolation ~1e-7."""
  g = lambda zz: _reference_grad(zz.tobytes(), zz.shape, y.tobytes(), y.shape, epsilon)
  central = lambda step: (g(z + step * v) - g(z - step * v)) / (2 * step)
  return (4 * central(h / 2) - central(h)) / 3


@pytest.mark.parametrize("diagonal_cost, block_size", [(999.0, None), (float("inf"), None),
                                                       pytest.param(float("inf"), 5, marks=pytest.mark.slow)])
def test_rot_loss_hessian_vector_products_match_reference(x64, diagonal_cost, block_size):
  seed, n, d, k, epsilon = PROBLEMS[0]
  z, y = random_problem(seed, n, d, k)
  v = np.random.default_rng(1).normal(size=z.shape)
  loss = lambda f: rtjax.rot_loss(f, jnp.asarray(y), epsilon=epsilon, diagonal_cost=diagonal_cost,
                                  block_size=block_size, solver=TIGHT)
  expected = _reference_hvp(z, y, v, epsilon)
  forward_over_reverse = jax.jit(lambda f, t: jax.jvp(jax.grad(loss), (f,), (t,))[1])(jnp.asarray(z), jnp.asarray(v))
  reverse_over_reverse = jax.jit(jax.grad(lambda f, t: jnp.vdot(jax.grad(loss)(f), t)))(jnp.asarray(z), jnp.asarray(v))
  assert relative_error(forward_over_reverse, expected) <= 1e-4
  assert relative_error(reverse_over_reverse, expected) <= 1e-4


@pytest.mark.slow  # seconds each: kept out of the 5-minute default suite (CI runs it)
def test_rot_loss_hessian_is_symmetric_and_matches_hvps(x64):
  seed, n, d, k, epsilon = PROBLEMS[1]
  z, y = random_problem(seed, n, d, k)
  loss = lambda f: rtjax.rot_loss(f.reshape(n, d), jnp.asarray(y), epsilon=epsilon, solver=TIGHT)
  flat = jnp.asarray(z).ravel()
  hessian = np.asarray(jax.jit(jax.hessian(loss))(flat))
  np.testing.assert_allclose(hessian, hessian.T, atol=1e-8 * np.abs(hessian).max())
  reverse = np.asarray(jax.jit(jax.jacrev(jax.jacrev(loss)))(flat))
  np.testing.assert_allclose(reverse, hessian, atol=1e-8 * np.abs(hessian).max())
  v = np.random.default_rng(2).normal(size=z.shape)
  assert relative_error(hessian @ v.ravel(), _reference_hvp(z, y, v, epsilon).ravel()) <= 1e-4


def test_gradient_penalty_gradient(x64):
  """The gradient of ||d L / d z||^2 (a gradient penalty) against finite differences of that norm."""
  seed, n, d, k, epsilon = PROBLEMS[0]
  z, y = random_problem(seed, n, d, k)
  loss = lambda f: rtjax.rot_loss(f, jnp.asarray(y), epsilon=epsilon, solver=TIGHT)
  penalty = jax.jit(lambda f: jnp.sum(jax.grad(loss)(f) ** 2))
  ours = jax.jit(jax.grad(lambda f: jnp.sum(jax.grad(loss)(f) ** 2)))(jnp.asarray(z))
  for s in range(3):
    direction = np.random.default_rng(10 + s).normal(size=z.shape)
    fd = _fd(lambda t, v=direction: float(penalty(jnp.asarray(z + t * v))), 0.0, 1e-5)
    np.testing.assert_allclose(float(jnp.vdot(ours, direction)), fd, rtol=1e-5)


@pytest.mark.parametrize("block_size", [None, pytest.param(5, marks=pytest.mark.slow)])
def test_forward_mode(x64, block_size):
  seed, n, d, k, epsilon = PROBLEMS[2]
  z, y = random_problem(seed, n, d, k)
  loss = lambda f, e: rtjax.rot_loss(f, jnp.asarray(y), epsilon=e, block_size=block_size, solver=TIGHT)
  v = np.random.default_rng(3).normal(size=z.shape)
  _, tangent = jax.jvp(loss, (jnp.asarray(z), epsilon), (jnp.asarray(v), 1.0))
  expected = _fd(lambda t: reference_loss(z + t * v, y, epsilon + t), 0.0, 1e-6)
  np.testing.assert_allclose(float(tangent), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jacfwd(loss)(jnp.asarray(z), epsilon), jax.grad(loss)(jnp.asarray(z), epsilon),
                             rtol=1e-8, atol=1e-12)


SCALES = [10.0 ** k for k in range(-30, 31, 5)]


def test_loss_is_invariant_to_feature_and_target_scale_x64(x64):
  z, y = random_problem(4, 12, 3, 1)
  base = float(rtjax.rot_loss(jnp.asarray(z), jnp.asarray(y), solver=TIGHT))
  np.testing.assert_allclose(base, reference_loss(z, y, 0.1), rtol=1e-10)
  fn = jax.jit(lambda f, t: rtjax.rot_loss(f, t, solver=TIGHT))
  for s in SCALES:
    for name, feats, targs in (("features", s * z, y), ("targets", z, s * y)):
      np.testing.assert_allclose(float(fn(jnp.asarray(feats), jnp.asarray(targs))), base, rtol=1e-10,
                                 err_msg=f"{name} x {s}")


@pytest.mark.parametrize("block_size", BLOCKS)
def test_loss_is_invariant_to_feature_and_target_scale_float32(block_size):
  """float32 over 1e-30...1e30 (squares of 1e19 overflow and of 1e-19 underflow without the scaling);
  targets with a small spread (wavelengths in metres) keep their structure."""
  z, y = random_problem(4, 12, 3, 1)
  base = reference_loss(z, y, 0.1)
  fn = jax.jit(lambda f, t: rtjax.rot_loss(f, t, block_size=block_size, return_diagnostics=True))
  wavelengths = 5e-7 + 1e-9 * y  # 500-510 nm, in metres
  for feats, targs in [(s * z, y) for s in SCALES] + [(z, s * y) for s in SCALES] + [(z, wavelengths)]:
    value, info = fn(jnp.asarray(feats, jnp.float32), jnp.asarray(targs, jnp.float32))
    assert bool(info.converged)
    np.testing.assert_allclose(float(value), base, rtol=1e-4,
                               err_msg=f"features {np.abs(feats).max():.1e}, targets {np.abs(targs).max():.1e}")
