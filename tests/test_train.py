"""Optax train step: one trace per shape, loss decreases, regulariser metrics reported."""
import chex
import jax
import jax.numpy as jnp
import optax

from rtjax.models import MLPRegressor
from rtjax.train import RotConfig, init_train_state, make_loss_fn, make_train_step


def test_train_step_single_trace_and_progress():
  model = MLPRegressor(hidden=(16,), num_targets=4, target_dim=3, init_std=0.1)
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 10))
  y = x[:, :3] * 2.0
  params = model.init(jax.random.PRNGKey(1), x)
  optimizer = optax.adam(1e-2)
  loss_fn = make_loss_fn(model, RotConfig(lam=1.0))
  state = init_train_state(params, optimizer, loss_fn, (x, y))
  assert state.ot_potentials.feature.shape == (32,) and not bool(jnp.any(state.ot_potentials.feature))
  step = jax.jit(chex.assert_max_traces(make_train_step(loss_fn, optimizer), n=1))
  losses = []
  for _ in range(30):
    state, metrics = step(state, (x, y))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  assert set(metrics) >= {"loss", "task", "rot", "ot_converged", "ot_iterations"}
  assert bool(jnp.isfinite(metrics["rot"])) and int(metrics["ot_iterations"]) > 0
  assert bool(jnp.any(state.ot_potentials.feature != 0))  # the last solve's potentials are carried


def test_rot_config_is_hashable():
  assert hash(RotConfig(lam=1.0)) == hash(RotConfig(lam=1.0))


def test_without_regulariser_the_loss_is_the_task_loss():
  model = MLPRegressor(hidden=(8,), num_targets=1, target_dim=3)
  x = jnp.ones((4, 5))
  params = model.init(jax.random.PRNGKey(0), x)
  loss, metrics = make_loss_fn(model, RotConfig(lam=0.0))(params, (x, jnp.zeros((4, 3))))
  assert float(loss) == float(metrics["task"]) and "rot" not in metrics
