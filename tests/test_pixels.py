"""Pixel-wise ROT: fixed-size sampling of valid pixels, reproducibility, scarce pixels, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import rot_loss as reference_loss

import rtjax


def _maps(seed=0, b=2, h=32, w=32, c=6, invalid_fraction=0.3):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(b, h, w, c)).astype(np.float32)
  depth = rng.uniform(0.7, 10.0, size=(b, h, w)).astype(np.float32)
  depth[rng.uniform(size=depth.shape) < invalid_fraction] = 0.0
  return jnp.asarray(features), jnp.asarray(depth)


def test_sampling_is_reproducible_and_never_picks_invalid_pixels():
  valid = jnp.asarray(np.random.default_rng(0).uniform(size=500) < 0.4)
  a = rtjax.sample_valid_pixels(valid, jax.random.PRNGKey(0), 100)
  b = rtjax.sample_valid_pixels(valid, jax.random.PRNGKey(0), 100)
  c = rtjax.sample_valid_pixels(valid, jax.random.PRNGKey(1), 100)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(np.sort(a), np.sort(c))
  assert bool(jnp.all(valid[a])) and len(np.unique(np.asarray(a))) == 100  # without replacement


def test_sampling_is_uniform_over_valid_pixels():
  valid = jnp.zeros(40, bool).at[jnp.arange(0, 40, 2)].set(True)  # 20 valid
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  draws = jax.vmap(lambda k: rtjax.sample_valid_pixels(valid, k, 5))(keys)
  counts = np.bincount(np.asarray(draws).ravel(), minlength=40)
  assert counts[1::2].sum() == 0
  expected = 4000 * 5 / 20  # 1000 each
  assert np.all(np.abs(counts[0::2] - expected) < 5 * np.sqrt(expected))


def test_scarce_valid_pixels_repeat_valid_ones():
  valid = jnp.zeros(300, bool).at[jnp.array([3, 50, 77, 200, 299])].set(True)
  idx = np.asarray(rtjax.sample_valid_pixels(valid, jax.random.PRNGKey(3), 20))
  assert set(idx.tolist()) == {3, 50, 77, 200, 299}


@pytest.mark.slow  # default-suite budget; CI runs it with -m slow
def test_pixel_loss_equals_rot_loss_on_the_drawn_pixels():
  features, depth = _maps()
  key = jax.random.PRNGKey(5)
  loss = rtjax.pixel_rot_loss(features, depth, key, stride=4, num_pixels=50)
  # The same draw, rebuilt by hand: stride-4 nearest downsampling, batch pooled, target > 1e-3.
  f = np.asarray(features)[:, ::4, ::4].reshape(-1, 6)
  t = np.asarray(depth)[:, ::4, ::4].reshape(-1)
  idx = np.asarray(rtjax.sample_valid_pixels(jnp.asarray(t > 1e-3), key, 50))
  assert np.all(t[idx] > 1e-3)
  np.testing.assert_allclose(float(loss), reference_loss(f[idx], t[idx], 0.1), rtol=5e-4)
  # Thousands of pixels in blocks: the same loss as dense.
  blocked = rtjax.pixel_rot_loss(features, depth, key, stride=1, num_pixels=1200, block_size=256)
  dense = rtjax.pixel_rot_loss(features, depth, key, stride=1, num_pixels=1200)
  np.testing.assert_allclose(float(blocked), float(dense), rtol=1e-4)


def test_pixel_loss_reproducible_per_key_and_jittable():
  features, depth = _maps(1)
  fn = jax.jit(jax.value_and_grad(lambda f, k: rtjax.pixel_rot_loss(f, depth, k, num_pixels=16)))
  v1, g1 = fn(features, jax.random.PRNGKey(0))
  v2, g2 = fn(features, jax.random.PRNGKey(0))
  v3, _ = fn(features, jax.random.PRNGKey(1))
  assert float(v1) == float(v2) and np.array_equal(g1, g2)
  assert float(v1) != float(v3)
  assert bool(jnp.all(jnp.isfinite(g1))) and int(jnp.sum(g1 != 0)) > 0
  # Gradient only reaches the stride-8 grid.
  off_grid = np.ones(g1.shape[:3], bool)
  off_grid[:, ::8, ::8] = False
  assert float(jnp.abs(g1)[off_grid].sum()) == 0.0


def test_pixel_loss_with_scarce_and_no_valid_pixels():
  features, depth = _maps(2, invalid_fraction=0.0)
  scarce = jnp.zeros_like(depth).at[0, :24:8, 0].set(5.0).at[1, 8, 8].set(2.0)  # 4 valid pixels
  grad_fn = jax.jit(jax.value_and_grad(lambda f, d: rtjax.pixel_rot_loss(f, d, jax.random.PRNGKey(0), num_pixels=20)))
  value, grad = grad_fn(features, scarce)
  assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))
  on_valid = np.zeros(depth.shape, bool)
  on_valid[np.asarray(scarce) > 1e-3] = True
  assert float(jnp.abs(grad)[~on_valid].sum()) == 0.0  # only valid pixels were used
  value, grad = grad_fn(features, jnp.zeros_like(depth))
  assert float(value) == 0.0 and float(jnp.abs(grad).sum()) == 0.0


@pytest.mark.slow  # seconds each: kept out of the 5-minute default suite (CI runs it)
def test_vmap_over_keys():
  features, depth = _maps(3)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  values = jax.vmap(lambda k: rtjax.pixel_rot_loss(features, depth, k, num_pixels=16))(keys)
  for i in range(3):
    np.testing.assert_allclose(values[i], rtjax.pixel_rot_loss(features, depth, keys[i], num_pixels=16), rtol=1e-5)


@pytest.mark.parametrize("fshape, tshape, kwargs, message", [
    ((2, 16, 16), (2, 16, 16), {}, r"feature_map.*\[B, H, W, C\]"),
    ((2, 16, 16, 3), (2, 16), {}, r"target_map.*\[B, H, W\]"),
    ((2, 16, 16, 3), (2, 16, 8), {}, "share B, H, W"),
    ((1, 16, 16, 3), (1, 16, 16), dict(num_pixels=200), "num_pixels"),
    ((1, 16, 16, 3), (1, 16, 16), dict(stride=0), "stride"),
    ((1, 16, 16, 3), (1, 16, 16), dict(num_pixels=4, epsilon=0.0), "`epsilon` must be positive"),
    ((1, 16, 16, 3), (1, 16, 16), dict(num_pixels=4, block_size=-1), "`block_size` must be a positive integer"),
])
def test_pixel_errors(fshape, tshape, kwargs, message):
  with pytest.raises(ValueError, match=message):
    rtjax.pixel_rot_loss(jnp.ones(fshape), jnp.ones(tshape), jax.random.PRNGKey(0), **kwargs)
