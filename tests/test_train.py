"""Optax train pieces: one trace per shape, the loss decreases, regulariser metrics and carried state,
prepared (fixed) targets, per-call lambda/epsilon."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rtjax
from rtjax.train import RotConfig, init_train_state, make_loss_fn, make_train_step


class Regressor(nn.Module):
  """A small encoder + MT head: x -> (pred [n, M, k], features [n, hidden])."""
  hidden: int = 16
  num_targets: int = 4

  @nn.compact
  def __call__(self, x):
    z = nn.relu(nn.Dense(self.hidden)(x))
    return rtjax.MultiTargetHead(self.num_targets, 3)(z), z


def _problem():
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 10))
  return x, x[:, :3] * 2.0


def _setup(rot: RotConfig, optimizer):
  """(batch, initial state, jitted step that may be traced once) for the Regressor on _problem()."""
  model, batch = Regressor(), _problem()
  loss_fn = make_loss_fn(model, rot)
  state = init_train_state(model.init(jax.random.PRNGKey(1), batch[0]), optimizer, loss_fn, batch, rot)
  # chex counts traces per function id; a collected step's id can be reused by the next one.
  chex.clear_trace_counter()
  return batch, state, jax.jit(chex.assert_max_traces(make_train_step(loss_fn, optimizer), n=1))


def test_train_step_single_trace_and_progress():
  (x, y), state, step = _setup(RotConfig(lam=1.0), optax.adam(1e-2))
  assert state.ot.potentials.feature.shape == (32,) and not bool(jnp.any(state.ot.potentials.feature))
  losses = []
  for _ in range(30):
    state, metrics = step(state, (x, y))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  assert set(metrics) >= {"loss", "task", "rot", "ot_converged", "ot_iterations"}
  assert bool(jnp.isfinite(metrics["rot"])) and bool(metrics["ot_converged"])
  assert bool(jnp.any(state.ot.potentials.feature != 0))  # the last solve's potentials are carried


def test_fixed_targets_are_prepared_once_and_give_the_same_step():
  losses = {}
  for fixed in (False, True):
    (x, y), state, step = _setup(RotConfig(lam=1.0, epsilon=0.05, fixed_targets=fixed), optax.sgd(1e-2))
    assert (state.ot.targets is not None) == fixed
    for _ in range(3):
      state, metrics = step(state, (x, y))
    losses[fixed] = float(metrics["loss"])
  np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


def test_lambda_and_epsilon_per_call_share_one_compilation():
  (x, y), state, step = _setup(RotConfig(lam=1.0), optax.sgd(1e-2))
  _, m1 = step(state, (x, y), lam=jnp.float32(1.0), epsilon=jnp.float32(0.1))
  _, m2 = step(state, (x, y), lam=jnp.float32(10.0), epsilon=jnp.float32(0.1))
  np.testing.assert_allclose(float(m2["loss"] - m2["task"]), 10 * float(m1["loss"] - m1["task"]), rtol=1e-5)


def test_rot_config_is_hashable():
  assert hash(RotConfig(lam=1.0)) == hash(RotConfig(lam=1.0))


def test_without_regulariser_the_loss_is_the_task_loss():
  model = Regressor(hidden=8, num_targets=1)
  x = jnp.ones((4, 5))
  params = model.init(jax.random.PRNGKey(0), x)
  loss, metrics = make_loss_fn(model, RotConfig(lam=0.0))(params, (x, jnp.zeros((4, 3))))
  assert float(loss) == float(metrics["task"]) and "rot" not in metrics


class NoisyRegressor(nn.Module):
  """Regressor whose features get Gaussian noise when a "dropout" rng exists, and which sows a loss."""

  @nn.compact
  def __call__(self, x):
    z = nn.relu(nn.Dense(8)(x))
    if self.has_rng("dropout"):
      z = z + 0.1 * jax.random.normal(self.make_rng("dropout"), z.shape)
    self.sow("losses", "penalty", 0.5 * jnp.sum(jnp.square(z)))
    return rtjax.MultiTargetHead(2, 3)(z), z


def _terms(features, targets, key):
  """Two terms, one random: the key must arrive and differ from step to step."""
  return jnp.stack([jnp.mean(jnp.square(features)), jax.random.uniform(key)])


def test_regularizer_sown_losses_and_rng_stream_add_up_as_documented():
  model, (x, y) = NoisyRegressor(), _problem()
  params = model.init(jax.random.PRNGKey(1), x)
  weights = jnp.asarray([2.0, 3.0])
  loss_fn = make_loss_fn(model, RotConfig(), regularizer=_terms, regularizer_weights=weights)
  key = jax.random.PRNGKey(7)
  loss, metrics = loss_fn(params, (x, y), key=key)
  # Independent recomputation with the same key split the loss documents.
  model_key, reg_key = jax.random.split(key)
  pred, z = model.apply({"params": params["params"]}, x, rngs={"dropout": model_key})
  task = jnp.mean(jnp.square(pred - y[:, None, :]))
  expected = task + 0.5 * jnp.sum(z**2) + 2.0 * jnp.mean(z**2) + 3.0 * jax.random.uniform(reg_key)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["sown"]), float(0.5 * jnp.sum(z**2)), rtol=1e-6)  # not init's too
  # Without a dropout stream the model is deterministic; per-call weights replace the defaults.
  plain, _ = model.apply(params, x, mutable=["losses"])
  dense = params["params"]["Dense_0"]
  np.testing.assert_allclose(plain[1], nn.relu(x @ dense["kernel"] + dense["bias"]), rtol=1e-6)
  loss1, m1 = loss_fn(params, (x, y), key=key, reg_weights=jnp.asarray([1.0, 0.0]))
  np.testing.assert_allclose(float(loss1 - loss), float(-m1["regularizer"][0] - 3.0 * m1["regularizer"][1]),
                             rtol=1e-5)


def test_a_keyed_state_draws_new_randomness_each_step_reproducibly():
  model, batch = NoisyRegressor(), _problem()
  loss_fn = make_loss_fn(model, RotConfig(), regularizer=_terms, regularizer_weights=jnp.asarray([0.0, 1.0]))
  optimizer = optax.sgd(0.0)  # parameters fixed: only the randomness changes the loss
  params = model.init(jax.random.PRNGKey(1), batch[0])

  def run(seed):
    state = init_train_state(params, optimizer, loss_fn, batch, key=jax.random.PRNGKey(seed))
    step, out = jax.jit(make_train_step(loss_fn, optimizer)), []
    for _ in range(3):
      state, metrics = step(state, batch)
      out.append(float(metrics["regularizer"][1]))
    return out

  first = run(0)
  assert len(set(first)) == 3 and run(0) == first and run(1) != first


def test_regularizer_without_weights_is_refused():
  with pytest.raises(ValueError, match="`regularizer_weights` must be given with `regularizer`"):
    make_loss_fn(Regressor(), RotConfig(), regularizer=_terms)


class NormRegressor(nn.Module):
  """Dense -> BatchNorm -> relu -> MT head: a model with non-trainable state (batch_stats)."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    h = nn.Dense(8)(x)
    z = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
    return rtjax.MultiTargetHead(2, 3)(z), z


def test_model_state_is_updated_carried_and_never_differentiated():
  model, batch = NormRegressor(), _problem()
  variables = model.init(jax.random.PRNGKey(1), batch[0], train=False)
  params, model_state = {"params": variables["params"]}, {"batch_stats": variables["batch_stats"]}
  loss_fn = make_loss_fn(model, RotConfig(), model_kwargs={"train": True})
  optimizer = optax.adam(1e-2)
  state = init_train_state(params, optimizer, loss_fn, batch, model_state=model_state)
  step = jax.jit(make_train_step(loss_fn, optimizer))
  new, _ = step(state, batch)
  # Independent NumPy: running mean = 0.9 * 0 + 0.1 * batch mean of the Dense output (pre-update weights);
  # running var = 0.9 * 1 + 0.1 * the batch variance (flax keeps the biased variance).
  dense = jax.tree.map(np.asarray, params["params"]["Dense_0"])
  h = np.asarray(batch[0], np.float64) @ dense["kernel"] + dense["bias"]
  stats = new.model_state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * h.var(0), rtol=1e-5)
  assert "batch_stats" not in new.params and jax.tree.structure(new.opt_state) == jax.tree.structure(state.opt_state)
  new2, _ = step(new, batch)  # carried: the second step starts from the first one's statistics
  np.testing.assert_allclose(new2.model_state["batch_stats"]["BatchNorm_0"]["mean"],
                             0.9 * stats["mean"] + 0.1 * _dense_mean(new.params, batch[0]), rtol=1e-4, atol=1e-6)


def _dense_mean(params, x):
  dense = jax.tree.map(np.asarray, params["params"]["Dense_0"])
  return (np.asarray(x, np.float64) @ dense["kernel"] + dense["bias"]).mean(0)


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_rot_samples_draw_rows_per_step_as_documented():
  model, (x, y) = Regressor(), _problem()
  params = model.init(jax.random.PRNGKey(1), x)
  key = jax.random.PRNGKey(3)
  _, z = model.apply(params, x)
  full_fn = make_loss_fn(model, RotConfig(lam=1.0, epsilon=0.5, warm_start=False))
  all_rows = make_loss_fn(model, RotConfig(lam=1.0, epsilon=0.5, warm_start=False, samples=32))
  np.testing.assert_allclose(float(all_rows(params, (x, y), key=key)[1]["rot"]),
                             float(full_fn(params, (x, y))[1]["rot"]), rtol=1e-6)
  some = make_loss_fn(model, RotConfig(lam=1.0, epsilon=0.5, warm_start=False, samples=12))
  # The documented draw: rows = choice(k, n, (samples,), replace=False), k the third key of the step's split.
  sample_key = jax.random.split(jax.random.fold_in(key, 0x5EED))[0]
  rows = np.asarray(jax.random.choice(sample_key, 32, (12,), replace=False))
  expected = rtjax.rot_loss(z[rows], y[rows], epsilon=0.5)
  got = some(params, (x, y), key=key)[1]["rot"]
  np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)
  assert float(some(params, (x, y), key=jax.random.PRNGKey(4))[1]["rot"]) != pytest.approx(float(got))
  with pytest.raises(ValueError, match="give the state a key"):
    some(params, (x, y))
  with pytest.raises(ValueError, match="`samples` must be an integer >= 2"):
    RotConfig(samples=1)
  with pytest.raises(ValueError, match="fixed_targets"):
    RotConfig(samples=8, fixed_targets=True)


def test_targets_fn_gives_per_copy_targets_to_the_task_loss_only():
  model, (x, y) = Regressor(), _problem()
  params = model.init(jax.random.PRNGKey(1), x)
  noise = lambda y, key: jnp.concatenate([y[:, None], jnp.zeros((y.shape[0], 3, 3))], axis=1)  # [n, M=4, 3]
  loss, _ = make_loss_fn(model, RotConfig(), targets_fn=noise)(params, (x, y))
  pred, _ = model.apply(params, x)
  pred = np.asarray(pred, np.float64)
  expected = (np.sum((pred[:, 0] - np.asarray(y)) ** 2) + np.sum(pred[:, 1:] ** 2)) / pred.size
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
