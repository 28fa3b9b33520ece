"""Information Dropout as published (needylove/PH-Reg main.py): evaluation is the identity, the training
noise is log-normal with log-std alpha, alpha and the KL against NumPy, rng streams, jit, gradients
(reparametrised noise, finite differences), the loss helper, errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from rtjax.information_dropout import InformationDropout, information_dropout_loss

MAX_ALPHA, MIN_ALPHA = 0.7, 0.001


def _data(n=6, m=5, d=4, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(n, d)), dtype), jnp.asarray(rng.normal(size=(n, m)), dtype)


def numpy_alpha(params, source, final_relu=True):
  """alpha = 0.001 + 0.7 * (0.7 * sigmoid(MLP(source))), the published MLP: ReLU after every layer."""
  h = np.asarray(source, np.float64)
  layers = sorted(params, key=lambda name: int(name.split("_")[1]))
  for i, name in enumerate(layers):
    h = h @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"], np.float64)
    if i < len(layers) - 1 or final_relu:
      h = np.maximum(h, 0.0)
  return MIN_ALPHA + MAX_ALPHA * (MAX_ALPHA / (1.0 + np.exp(-h)))


def test_evaluation_returns_the_features_unchanged_and_the_same_kl():
  z, x = _data()
  module = InformationDropout()
  params = module.init(jax.random.PRNGKey(0), z, x, deterministic=True)  # no "dropout" rng needed
  out, kl = module.apply(params, z, x, deterministic=True)
  assert out is z
  _, kl_train = module.apply(params, z, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(kl, kl_train)
  assert kl.shape == (6,) and kl.dtype == jnp.float32


def test_published_layout_and_initial_alpha():
  """Linear(m, 100) - ReLU - Linear(100, d) - ReLU on x, weights N(0, 0.001^2): alpha starts at ~0.246."""
  z, x = _data()
  params = InformationDropout().init(jax.random.PRNGKey(0), z, x, deterministic=True)["params"]
  assert params["Dense_0"]["kernel"].shape == (5, 100)
  assert params["Dense_1"]["kernel"].shape == (100, 4)
  assert float(jnp.std(params["Dense_0"]["kernel"])) == pytest.approx(0.001, rel=0.2)  # 500 draws: +-3%
  assert not np.any(params["Dense_1"]["bias"])
  alpha = numpy_alpha(params, x)
  np.testing.assert_allclose(alpha, MIN_ALPHA + MAX_ALPHA**2 / 2, rtol=1e-4)


@pytest.mark.parametrize("final_relu", [True, False])
def test_kl_matches_numpy(final_relu):
  """kl = sum_k -log(alpha_k / 0.701), alpha from x (or from z when x is None)."""
  z, x = _data()
  module = InformationDropout(hidden=(7, 3), final_relu=final_relu, kernel_init=nn.initializers.normal(1.0),
                              bias_init=nn.initializers.normal(1.0))
  for source in (x, None):
    params = module.init(jax.random.PRNGKey(0), z, source, deterministic=True)
    _, kl = module.apply(params, z, source, deterministic=True)
    alpha = numpy_alpha(params["params"], z if source is None else source, final_relu)
    if final_relu:  # sigmoid(relu(.)) >= 1/2
      assert alpha.min() >= MIN_ALPHA + MAX_ALPHA**2 / 2 - 1e-12
    else:
      assert alpha.min() < 0.2
    np.testing.assert_allclose(kl, np.sum(-np.log(alpha / (MAX_ALPHA + MIN_ALPHA)), axis=-1), rtol=1e-5)


def test_training_noise_is_lognormal_with_log_std_alpha():
  """Zero kernels and output biases b fix alpha_k = 0.001 + 0.49 sigmoid(relu(b_k)); then
  log(z' / z) = alpha eps: mean 0 and std alpha within 5 standard errors (N = 100,000), and
  log(z' / z) / alpha passes a Kolmogorov-Smirnov test against N(0, 1)."""
  n, d = 100_000, 4
  rng = np.random.default_rng(3)
  z = jnp.asarray(rng.choice([-1.0, 1.0], size=(n, d)) * rng.uniform(0.5, 2.0, size=(n, d)), jnp.float32)
  module = InformationDropout(hidden=(3,), kernel_init=nn.initializers.zeros)
  params = module.init(jax.random.PRNGKey(0), z[:2], deterministic=True)
  bias = jnp.asarray([-1.0, 0.0, 1.0, 4.0])
  params = {"params": {**params["params"], "Dense_1": {**params["params"]["Dense_1"], "bias": bias}}}
  alpha = MIN_ALPHA + MAX_ALPHA**2 / (1.0 + np.exp(-np.maximum(np.asarray(bias, np.float64), 0.0)))
  noisy, kl = jax.jit(lambda p, z, key: module.apply(p, z, deterministic=False, rngs={"dropout": key}))(
      params, z, jax.random.PRNGKey(7))
  np.testing.assert_allclose(kl, np.sum(-np.log(alpha / 0.701)), rtol=1e-5)
  log_ratio = np.log(np.asarray(noisy, np.float64) / np.asarray(z, np.float64))
  assert np.all(np.abs(log_ratio.mean(0)) <= 5 * alpha / np.sqrt(n))
  assert np.all(np.abs(log_ratio.std(0) - alpha) <= 5 * alpha / np.sqrt(2 * n))
  for k in range(d):
    assert st.kstest(log_ratio[:, k] / alpha[k], "norm").pvalue > 1e-3


def test_same_rng_same_noise_different_rng_different_noise():
  z, x = _data()
  module = InformationDropout()
  params = module.init(jax.random.PRNGKey(0), z, x, deterministic=True)
  apply = jax.jit(lambda key: module.apply(params, z, x, deterministic=False, rngs={"dropout": key})[0])
  a, b, c = apply(jax.random.PRNGKey(1)), apply(jax.random.PRNGKey(1)), apply(jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, b)
  assert np.all(np.asarray(a) != np.asarray(c))
  eager = module.apply(params, z, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})[0]
  np.testing.assert_allclose(eager, a, rtol=1e-6)
  with pytest.raises(Exception, match="dropout"):  # training needs the "dropout" stream
    module.apply(params, z, x, deterministic=False)


def test_gradients_through_the_noise_match_finite_differences(x64):
  """With a fixed key the noise eps is fixed: z' = z exp(alpha(x) eps) is smooth in z, x and the
  parameters (reparametrisation); the objective mixes a task term and the published regulariser. Its
  gradient against a central difference along a random direction, float64."""
  z, x = _data(n=3, m=2, d=3, dtype=jnp.float64)
  module = InformationDropout(hidden=(4,), final_relu=False, kernel_init=nn.initializers.normal(0.5),
                              bias_init=nn.initializers.normal(0.5))
  params = jax.jit(lambda key: module.init(key, z, x, deterministic=True))(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p.astype(jnp.float64), params)  # Dense keeps float32 parameters
  key = jax.random.PRNGKey(5)

  @jax.jit
  def objective(args):
    params, z, x = args
    noisy, kl = module.apply(params, z, x, deterministic=False, rngs={"dropout": key})
    return jnp.sum(jnp.sin(noisy)) + information_dropout_loss(kl, num_train=3)

  args = (params, z, x)
  grads = jax.jit(jax.grad(objective))(args)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree.leaves(grads))
  leaves, tree = jax.tree.flatten(args)
  rng = np.random.default_rng(6)
  direction = jax.tree.unflatten(tree, [jnp.asarray(rng.normal(size=leaf.shape)) for leaf in leaves])
  h = 1e-5
  shifted = lambda t: jax.tree.map(lambda a, v: a + t * v, args, direction)
  finite_difference = (float(objective(shifted(h))) - float(objective(shifted(-h)))) / (2 * h)
  analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
  assert analytic == pytest.approx(finite_difference, rel=1e-7)


def test_batch_dims_and_dtypes():
  z = _data()[0][None].repeat(2, 0)  # [2, 6, 4]
  module = InformationDropout(hidden=())
  params = module.init(jax.random.PRNGKey(0), z, deterministic=True)
  apply = jax.jit(lambda z: module.apply(params, z, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)}))
  noisy, kl = apply(z)
  assert noisy.shape == (2, 6, 4) and kl.shape == (2, 6)
  assert apply(z.astype(jnp.bfloat16))[0].dtype == jnp.bfloat16


def test_loss_helper():
  kl = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
  assert float(information_dropout_loss(kl, num_train=100)) == pytest.approx(0.01 * 10.0 / 100)
  assert float(information_dropout_loss(kl, num_train=4, weight=0.1)) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="num_train"):
    information_dropout_loss(kl, num_train=0)
  with pytest.raises(ValueError, match="num_train"):
    information_dropout_loss(kl, num_train=2.0)
  with pytest.raises(ValueError, match="weight"):
    information_dropout_loss(kl, num_train=2, weight=-1.0)
  with pytest.raises(ValueError, match="`kl` must have a floating dtype"):
    information_dropout_loss(jnp.ones((2,), jnp.int32), num_train=2)


def test_errors():
  z, x = _data()
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="`z` must be"):
    InformationDropout().init(key, jnp.ones(()), deterministic=True)
  with pytest.raises(ValueError, match="`z` must have a floating dtype"):
    InformationDropout().init(key, jnp.ones((3, 2), jnp.int32), deterministic=True)
  with pytest.raises(ValueError, match="leading"):
    InformationDropout().init(key, z, x[:5], deterministic=True)
  with pytest.raises(ValueError, match="`x` must have a floating dtype"):
    InformationDropout().init(key, z, jnp.ones((6, 5), jnp.int32), deterministic=True)
  with pytest.raises(ValueError, match="hidden"):
    InformationDropout(hidden=(0,)).init(key, z, deterministic=True)
  with pytest.raises(ValueError, match="max_alpha"):
    InformationDropout(max_alpha=0.0).init(key, z, deterministic=True)
  with pytest.raises(ValueError, match="min_alpha"):
    InformationDropout(min_alpha=-1e-3).init(key, z, deterministic=True)
  with pytest.raises(TypeError):
    InformationDropout().init(key, z, x)  # `deterministic` is required
