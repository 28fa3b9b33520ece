"""Multiple-Targets head and helpers, checked against plain NumPy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rtjax


@pytest.mark.parametrize("num_targets, target_dim", [(8, 1), (8, 3), (1, 1), (2, 3)])
def test_head_shapes(num_targets, target_dim):
  head = rtjax.MultiTargetHead(num_targets=num_targets, target_dim=target_dim)
  x = jnp.ones((5, 7, 16))
  params = head.init(jax.random.PRNGKey(0), x)
  assert head.apply(params, x).shape == (5, 7, num_targets, target_dim)
  assert params["params"]["Dense_0"]["kernel"].shape == (16, num_targets * target_dim)


def test_loss_is_mean_of_per_copy_losses_and_predict_is_mean():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(6, 8, 3))
  y = rng.normal(size=(6, 3))
  per_copy_mse = [np.mean((pred[:, m] - y) ** 2) for m in range(8)]
  per_copy_l1 = [np.mean(np.abs(pred[:, m] - y)) for m in range(8)]
  np.testing.assert_allclose(rtjax.mt_loss(jnp.asarray(pred), jnp.asarray(y)), np.mean(per_copy_mse), rtol=1e-6)
  np.testing.assert_allclose(rtjax.mt_loss(jnp.asarray(pred), jnp.asarray(y), loss="l1"),
                             np.mean(per_copy_l1), rtol=1e-6)
  huber = lambda p, t: jnp.where(jnp.abs(p - t) < 1, 0.5 * (p - t) ** 2, jnp.abs(p - t) - 0.5)
  diff = np.abs(pred - y[:, None])
  np.testing.assert_allclose(rtjax.mt_loss(jnp.asarray(pred), jnp.asarray(y), loss=huber),
                             np.mean(np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5)), rtol=1e-6)
  np.testing.assert_allclose(rtjax.mt_predict(jnp.asarray(pred)), pred.mean(axis=1), rtol=1e-6)


def test_scalar_targets_may_omit_the_last_axis():
  rng = np.random.default_rng(1)
  pred = jnp.asarray(rng.normal(size=(4, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
  np.testing.assert_allclose(rtjax.mt_loss(pred, y), rtjax.mt_loss(pred, y[:, None]), rtol=1e-7)
  assert rtjax.mt_predict(pred).shape == (4, 1)


def test_gradients_flow_to_every_copy():
  head = rtjax.MultiTargetHead(num_targets=4, target_dim=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (10, 5))
  y = jax.random.normal(jax.random.PRNGKey(1), (10, 2))
  params = head.init(jax.random.PRNGKey(2), x)
  grads = jax.grad(lambda p: rtjax.mt_loss(head.apply(p, x), y))(params)
  kernel_grad = grads["params"]["Dense_0"]["kernel"].reshape(5, 4, 2)
  assert bool(jnp.all(jnp.abs(kernel_grad).sum(axis=(0, 2)) > 0))
  assert bool(jnp.all(jnp.isfinite(jax.jit(jax.grad(lambda x: rtjax.mt_predict(head.apply(params, x)).sum()))(x))))


def test_custom_initialiser_is_used():
  head = rtjax.MultiTargetHead(num_targets=2, target_dim=3, kernel_init=nn.initializers.zeros)
  params = head.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
  assert float(jnp.abs(params["params"]["Dense_0"]["kernel"]).sum()) == 0.0


@pytest.mark.parametrize("pred, targets, kwargs, message", [
    (np.ones((4, 8, 3)), np.ones((4, 2)), {}, r"targets.*\(4, 3\)"),
    (np.ones((4, 8, 3)), np.ones((4,)), {}, r"targets"),
    (np.ones((4,)), np.ones((4,)), {}, r"pred.*\[..., M, k\]"),
    (np.ones((4, 8, 1), np.int32), np.ones((4,)), {}, "pred.*floating"),
    (np.ones((4, 8, 1)), np.ones((4,)), dict(loss="huber"), "loss"),
])
def test_loss_errors(pred, targets, kwargs, message):
  with pytest.raises(ValueError, match=message):
    rtjax.mt_loss(jnp.asarray(pred), jnp.asarray(targets), **kwargs)


def test_head_rejects_empty_output():
  with pytest.raises(ValueError, match="num_targets"):
    rtjax.MultiTargetHead(num_targets=0).init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
