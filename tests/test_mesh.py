"""Data parallelism: steps on 8 forced host devices (batch sharded, state replicated) equal the steps on
one device — loss, L_ot, RankSim, gradients (through SGD-updated parameters) and BatchNorm statistics. XLA_FLAGS must be
set before JAX starts, so the comparison runs in a child process."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import rtjax

SCRIPT = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
  import rtjax
  from rtjax.train import RotConfig, init_train_state, make_loss_fn, make_train_step
  assert jax.device_count() == 8, jax.devices()

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
      z = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(16)(x)))
      return rtjax.MultiTargetHead(4, 1)(z), z

  x = jax.random.normal(jax.random.PRNGKey(0), (64, 5))
  y = jnp.sum(x[:, :2], axis=1, keepdims=True)
  model = Net()
  variables = model.init(jax.random.PRNGKey(1), x, train=False)
  params, stats = {"params": variables["params"]}, {"batch_stats": variables["batch_stats"]}
  ranksim = lambda z, t, key: rtjax.ranksim_loss(z, t, key)[None]
  loss_fn = make_loss_fn(model, RotConfig(lam=10.0, epsilon=0.1, warm_start=False, samples=48), "l1",
                         regularizer=ranksim, regularizer_weights=jnp.ones(1), model_kwargs={"train": True})
  opt = optax.sgd(0.05)  # plain SGD: parameter differences are gradient differences (Adam would amplify
                         # rounding in near-zero gradients into full-size steps)
  state = init_train_state(params, opt, loss_fn, (x, y), key=jax.random.PRNGKey(2), model_state=stats)
  step = jax.jit(make_train_step(loss_fn, opt))

  def run(state, put_batch, steps=3):
    out = []
    for _ in range(steps):
      state, m = step(state, put_batch((x, y)))
      out.append((float(m["loss"]), float(m["rot"]), float(m["regularizer"][0])))
    return state, out

  single, m1 = run(state, lambda b: b)
  mesh = rtjax.data_mesh()
  sharded, m8 = run(rtjax.replicate(state, mesh), lambda b: rtjax.shard_batch(b, mesh))
  assert len(sharded.params["params"]["Dense_0"]["kernel"].sharding.device_set) == 8
  diff = lambda a, b: max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                          for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  print("METRICS", m1, m8)
  print("PARAMS", diff(single.params, sharded.params))
  print("STATS", diff(single.model_state, sharded.model_state))
  np.testing.assert_allclose(np.array(m8), np.array(m1), rtol=2e-5, atol=1e-6)
  assert diff(single.params, sharded.params) < 1e-5 and diff(single.model_state, sharded.model_state) < 1e-5
  print("OK")
""")


@pytest.mark.slow  # ~20 s: a child process compiles the step twice
def test_sharded_step_equals_single_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr


def test_mesh_of_one_device_and_errors():
  mesh = rtjax.data_mesh(jax.local_devices()[:1])
  batch = rtjax.shard_batch((np.ones((4, 2)), np.ones(4)), mesh)
  np.testing.assert_array_equal(batch[0], np.ones((4, 2)))
  with pytest.raises(ValueError, match="leading batch axis"):
    rtjax.shard_batch((np.ones((4, 2)), np.ones(3)), mesh)
  with pytest.raises(ValueError, match="empty"):
    rtjax.data_mesh([])
