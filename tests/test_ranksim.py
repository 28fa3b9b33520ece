"""RankSim: ranks, the blackbox gradient and the loss against float64 NumPy references of the published
formulas; the one-sample-per-label selection; jit/vmap/grad, one trace; robustness; errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtjax.ranksim import (
    DEFAULT_INTERPOLATION,
    blackbox_rank,
    normalised_rank,
    ranksim_loss,
    unique_label_mask,
)

LAMBDA = DEFAULT_INTERPOLATION
# XLA may divide by the row count as a multiplication by its reciprocal: ranks are (j + 1) / m within an ulp.
same_ranks = lambda ours, expected: np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-15)


# --- float64 NumPy references of the published ranking.py / ranksim.py ---------------------------------------

def np_rank(seq):
  """rank_normalised of one row: argsort(argsort(seq).flip()) + 1, over m, with a stable sort."""
  seq = np.asarray(seq, np.float64)
  return (np.argsort(np.argsort(seq, kind="stable")[::-1], kind="stable") + 1) / seq.size


def np_blackbox_grad(seq, cotangent, lam):
  """TrueRanker.backward: -(rank(s) - rank(s + lambda g)) / (lambda + 1e-8)."""
  return -(np_rank(seq) - np_rank(np.asarray(seq) + lam * np.asarray(cotangent))) / (lam + 1e-8)


def np_masked_rows(fn, scores, mask):
  """Apply a per-row function to the kept entries of each row of [r, m]; 0 at masked entries."""
  out = np.zeros(scores.shape)
  for row in range(scores.shape[0]):
    out[row, mask[row]] = fn(row, mask[row])
  return out


def _label_distance(y, i):
  return np.abs(y[i] - y)[:, 0] if y.shape[1] == 1 else np.linalg.norm(y[i] - y, axis=1)


def np_ranksim(features, targets, kept, lam=LAMBDA):
  """batchwise_ranking_regularizer on the kept samples (in batch order): loss and d loss / d features.

  The rank differences r_f - r_l are taken as (p_f - p_l) / m of the whole positions, as rtjax does: the
  published float difference of two quotients rounds equal differences to values an ulp apart, which
  decides the order of tied scores in the perturbed ranking (duplicate or zero feature rows) by rounding.
  """
  n = features.shape[0]
  x = np.asarray(features, np.float64).reshape(n, -1)[kept]
  y = np.asarray(targets, np.float64).reshape(n, -1)[kept]
  m = x.shape[0]
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  xn = x / np.maximum(norm, 1e-12)  # F.normalize
  sim = xn @ xn.T
  loss, grad_sim = 0.0, np.zeros((m, m))
  for i in range(m):
    feature_ranks, label_ranks = np_rank(sim[i]), np_rank(-_label_distance(y, i))
    loss += np.mean((feature_ranks - label_ranks) ** 2)
    difference = (np.rint(feature_ranks * m) - np.rint(label_ranks * m)) / m
    grad_sim[i] = np_blackbox_grad(sim[i], 2.0 * difference / m, lam)  # d mean((r_f - r_l)^2) / d r_f
  grad_xn = (grad_sim + grad_sim.T) @ xn
  # d(x / max(|x|, eps)): projected on the sphere for |x| >= eps, 1 / eps (torch's clamp_min) below.
  radial = np.sum(xn * grad_xn, axis=1, keepdims=True) * xn
  grad_x = np.where(norm >= 1e-12, (grad_xn - radial) / np.maximum(norm, 1e-12), grad_xn / 1e-12)
  grad = np.zeros((n, x.shape[1]))
  grad[kept] = grad_x
  return loss, grad.reshape(np.shape(features))


def problem(seed, n, d, labels, k=None):
  """Features [n, d] and integer-valued float targets drawn from `labels` values (duplicates likely)."""
  rng = np.random.default_rng(seed)
  shape = (n,) if k is None else (n, k)
  return rng.normal(size=(n, d)), rng.integers(0, labels, size=shape).astype(np.float64)


# --- ranks and the blackbox gradient -----------------------------------------------------------------------

def test_normalised_rank_matches_published_composition(x64):
  rng = np.random.default_rng(0)
  scores = np.concatenate([rng.normal(size=(4, 9)), rng.integers(0, 3, size=(4, 9))])  # with ties
  ours = normalised_rank(jnp.asarray(scores))
  same_ranks(ours, np.stack([np_rank(s) for s in scores]))
  same_ranks(normalised_rank(jnp.asarray([0.5, 2.0, -1.0])), [2 / 3, 1 / 3, 1.0])
  # Ties: the larger index ranks first; -0.0 ties with +0.0.
  same_ranks(normalised_rank(jnp.asarray([1.0, 1.0, 0.0, -0.0])), [0.5, 0.25, 1.0, 0.75])


def test_masked_rank_ignores_masked_values(x64):
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 4, size=(6, 10)).astype(np.float64)
  mask = rng.random((6, 10)) < 0.6
  mask[0] = False  # a row with nothing kept: all zeros
  expected = np_masked_rows(lambda r, keep: np_rank(scores[r, keep]), scores, mask)
  same_ranks(normalised_rank(jnp.asarray(scores), jnp.asarray(mask)), expected)
  wild = np.where(mask, scores, np.array([np.inf, -np.inf, np.nan])[rng.integers(0, 3, size=(6, 10))])
  same_ranks(normalised_rank(jnp.asarray(wild), jnp.asarray(mask)), expected)
  column_mask = jnp.asarray(mask[3])  # broadcast over rows
  same_ranks(normalised_rank(jnp.asarray(scores), column_mask),
             np_masked_rows(lambda r, keep: np_rank(scores[r, keep]), scores, np.broadcast_to(mask[3], scores.shape)))


@pytest.mark.parametrize("lam", [LAMBDA, 0.3])
def test_blackbox_vjp_matches_published_backward(x64, lam):
  rng = np.random.default_rng(2)
  scores = np.concatenate([rng.normal(size=(5, 12)), rng.integers(0, 4, size=(3, 12))])
  cotangent = rng.normal(size=scores.shape) * 0.3
  mask = rng.random(scores.shape) < 0.7
  for m in (None, mask):
    keep = np.ones(scores.shape, bool) if m is None else m
    ranks, vjp = jax.vjp(lambda s, m=m: blackbox_rank(s, None if m is None else jnp.asarray(m), interpolation=lam),
                         jnp.asarray(scores))
    (grad,) = vjp(jnp.asarray(cotangent))
    same_ranks(ranks, np_masked_rows(lambda r, k: np_rank(scores[r, k]), scores, keep))
    expected = np_masked_rows(lambda r, k: np_blackbox_grad(scores[r, k], cotangent[r, k], lam), scores, keep)
    assert np.max(np.abs(np.asarray(grad) - expected)) <= 1e-12
    assert np.any(expected != 0)  # the check can fail: the perturbation moves ranks


def test_blackbox_rank_under_jit_and_vmap():
  rng = np.random.default_rng(3)
  scores, cotangent = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))
  grad_fn = jax.jit(jax.vmap(jax.grad(lambda s, g: jnp.sum(blackbox_rank(s) * g))))
  grad = grad_fn(jnp.asarray(scores, jnp.float32), jnp.asarray(cotangent, jnp.float32))
  assert grad.dtype == jnp.float32
  expected = [np_blackbox_grad(s, g, LAMBDA) for s, g in zip(scores.reshape(6, 7), cotangent.reshape(6, 7))]
  np.testing.assert_allclose(grad, np.reshape(expected, (2, 3, 7)), rtol=1e-6, atol=1e-7)


# --- one sample per unique label ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [None, 2])
def test_unique_label_mask_keeps_one_sample_per_label(k):
  _, y = problem(3, 40, 1, 4, k)
  rows = [tuple(np.atleast_1d(r)) for r in y]
  masks = np.asarray(jax.vmap(unique_label_mask, (None, 0))(jnp.asarray(y), jax.random.split(jax.random.key(0), 300)))
  assert masks.shape == (300, 40)
  for mask in masks:
    kept = [rows[i] for i in np.flatnonzero(mask)]
    assert sorted(kept) == sorted(set(rows))  # every label once, no label twice
  # Uniform choice within a group (random.choice): every member is picked, about equally often.
  for label in set(rows):
    members = [i for i, r in enumerate(rows) if r == label]
    counts = masks[:, members].sum(axis=0)
    assert counts.sum() == 300 and counts.min() > 0.5 * 300 / len(members)
  # Reproducible, and different keys choose differently.
  again = unique_label_mask(jnp.asarray(y), jax.random.split(jax.random.key(0), 300)[7])
  np.testing.assert_array_equal(again, masks[7])
  assert len({m.tobytes() for m in masks}) > 100


def test_unique_label_mask_accepts_raw_keys_integer_labels_and_nan():
  y = jnp.asarray([3, 1, 3, 2, 1], jnp.int32)
  mask = np.asarray(unique_label_mask(y, jax.random.PRNGKey(4)))
  assert sorted(np.asarray(y)[mask]) == [1, 2, 3]
  np.testing.assert_array_equal(unique_label_mask(y, jax.random.wrap_key_data(jax.random.PRNGKey(4))), mask)
  nan = jnp.asarray([np.nan, np.nan, 1.0, 1.0])
  assert int(jnp.sum(unique_label_mask(nan, jax.random.key(0)))) == 3  # a NaN label is its own group


# --- the loss -----------------------------------------------------------------------------------------------

N, D = 16, 5  # one shape for most tests: each new shape or dtype costs a compilation
loss_and_grad = jax.jit(jax.value_and_grad(ranksim_loss))


@pytest.mark.parametrize("seed, labels, k", [(0, 100, None), (1, 6, None), (2, 4, None), (3, 3, 2), (4, 100, 2)])
def test_x64_value_and_grad_match_numpy(x64, seed, labels, k):
  z, y = problem(seed, N, D, labels, k)
  z[1] = z[0]  # duplicate features: tied similarities
  z[2] = 0.0  # a zero row: F.normalize's eps (if kept, its gradient is of order 1 / eps, as in torch)
  key = jax.random.key(seed)
  kept = np.asarray(unique_label_mask(jnp.asarray(y), key))
  value, grad = loss_and_grad(jnp.asarray(z), jnp.asarray(y), key)
  expected, expected_grad = np_ranksim(z, y, kept)
  assert value.dtype == jnp.float64
  assert abs(float(value) - expected) <= 1e-12
  scale = max(1.0, np.max(np.abs(expected_grad)))
  assert np.max(np.abs(np.asarray(grad) - expected_grad)) <= 1e-12 * scale
  assert np.any(expected_grad != 0)
  np.testing.assert_array_equal(np.asarray(grad)[~kept], 0.0)  # dropped samples get no gradient


def test_float32_matches_numpy_and_upcasts_half_precision():
  z, y = problem(5, N, D, 8)
  key = jax.random.key(5)
  kept = np.asarray(unique_label_mask(jnp.asarray(y), key))
  expected, expected_grad = np_ranksim(z, y, kept)
  value, grad = loss_and_grad(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32), key)
  assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
  assert abs(float(value) - expected) <= 1e-6 * max(1.0, expected)
  assert np.max(np.abs(np.asarray(grad) - expected_grad)) <= 1e-5 * max(1.0, np.max(np.abs(expected_grad)))
  half = ranksim_loss(jnp.asarray(z, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16), key)
  assert half.dtype == jnp.float32 and bool(jnp.isfinite(half))


def test_dropped_samples_do_not_matter(x64):
  z, y = problem(6, N, D, 5)
  key = jax.random.key(6)
  kept = np.asarray(unique_label_mask(jnp.asarray(y), key))
  moved = np.where(kept[:, None], z, 100.0 * np.random.default_rng(0).normal(size=z.shape))
  np.testing.assert_array_equal(loss_and_grad(jnp.asarray(moved), jnp.asarray(y), key)[0],
                                loss_and_grad(jnp.asarray(z), jnp.asarray(y), key)[0])


def test_key_reproducible_and_irrelevant_with_distinct_labels(x64):
  z, y = problem(7, N, D, 4)
  keys = jax.random.split(jax.random.key(7), 8)
  batched = jax.jit(jax.vmap(jax.value_and_grad(ranksim_loss), (None, None, 0)))
  values, _ = batched(jnp.asarray(z), jnp.asarray(y), keys)
  assert float(values[3]) == float(loss_and_grad(jnp.asarray(z), jnp.asarray(y), keys[3])[0])  # reproducible
  assert len(set(np.asarray(values).tolist())) > 1  # duplicate labels: the draw matters
  distinct = np.random.default_rng(7).permutation(N).astype(np.float64)
  values, grads = batched(jnp.asarray(z), jnp.asarray(distinct), keys)
  np.testing.assert_array_equal(values, np.full(8, values[0]))
  np.testing.assert_array_equal(grads, np.broadcast_to(grads[0], grads.shape))
  np.testing.assert_allclose(float(values[0]), np_ranksim(z, distinct, np.ones(N, bool))[0], rtol=0, atol=1e-12)


def test_features_are_flattened_and_other_target_layouts(x64):
  z, y = problem(8, N, 6, 4)
  key = jax.random.key(8)

  @jax.jit
  def variants(z, y):
    return jnp.stack([ranksim_loss(z, y, key), ranksim_loss(z.reshape(N, 2, 3), y, key),
                      ranksim_loss(z, y[:, None], key), ranksim_loss(z, y.astype(jnp.int32), key)])

  values = variants(jnp.asarray(z), jnp.asarray(y))
  np.testing.assert_array_equal(values, np.full(4, values[0]))
  np.testing.assert_allclose(float(values[0]), np_ranksim(z, y, np.asarray(unique_label_mask(y, key)))[0],
                             rtol=0, atol=1e-12)


def test_jit_vmap_grad_and_one_trace_per_shape():
  zs, ys = zip(*[problem(s, N, D, 6) for s in range(3)])
  zs, ys = jnp.asarray(np.stack(zs), jnp.float32), jnp.asarray(np.stack(ys), jnp.float32)
  keys = jax.random.split(jax.random.key(9), 3)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(zb, yb, kb):
    return jax.vmap(jax.value_and_grad(ranksim_loss))(zb, yb, kb)

  values, grads = batched(zs, ys, keys)
  batched(zs + 0.1, ys, jax.random.split(jax.random.key(10), 3))  # same shapes: no second trace
  for i in range(3):
    v, g = loss_and_grad(zs[i], ys[i], keys[i])
    np.testing.assert_allclose(values[i], v, rtol=1e-6)
    np.testing.assert_allclose(grads[i], g, rtol=1e-5, atol=1e-7)


def test_degenerate_batches_are_finite():
  z, y = problem(11, N, D, 5)
  key = jax.random.key(11)
  constant = np.full(N, 3.0)
  value, grad = loss_and_grad(jnp.asarray(z, jnp.float32), jnp.asarray(constant, jnp.float32), key)  # m = 1
  assert float(value) == 0.0 and bool(jnp.all(grad == 0.0))
  equidistant = np.arange(N) % 8.0  # label ties y_i -+ d, and duplicates
  duplicated, zero_rows = z.copy(), z.copy()
  duplicated[8:], zero_rows[3:] = z[:8], 0.0
  for feats, targs in [(duplicated, y), (zero_rows, y), (np.zeros((N, D)), y), (np.ones((N, D)), equidistant),
                       (np.zeros((N, D)), constant), (z, np.stack([y, y], axis=1)), (1e30 * z, y), (1e-30 * z, y)]:
    value, grad = loss_and_grad(jnp.asarray(feats, jnp.float32), jnp.asarray(targs, jnp.float32), key)
    assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad)))


# --- errors ---------------------------------------------------------------------------------------------

KEY = jax.random.key(0)


@pytest.mark.parametrize("features, targets, message", [
    (np.ones((5, 3), np.int32), np.ones(5), r"`features` must have a floating dtype, got int32 with shape \(5, 3\)"),
    (np.ones(5), np.ones(5), r"`features` must be \[n, d\] or \[n, ...\] \(at least 2 axes\), got shape \(5,\)"),
    (np.ones((1, 3)), np.ones(1), r"RankSim needs n >= 2 samples, got features \(1, 3\)"),
    (np.ones((5, 3)), np.ones((5, 1, 1)), r"`targets` must be \[n\] or \[n, k\], got shape \(5, 1, 1\)"),
    (np.ones((5, 3)), np.float64(1.0), r"`targets` must be \[n\] or \[n, k\], got shape \(\)"),
    (np.ones((5, 3)), np.ones(4), r"same number of samples n, got features with n = 5 and targets \(4,\)"),
    (np.ones((5, 3)), np.ones((5, 0)), r"`targets` \[n, k\] must have k >= 1, got shape \(5, 0\)"),
    (np.ones((5, 3)), np.ones(5, bool), r"`targets` must have a floating or integer dtype, got bool with shape \(5,\)"),
])
def test_errors(features, targets, message):
  with pytest.raises(ValueError, match=message):
    ranksim_loss(jnp.asarray(features), jnp.asarray(targets), KEY)


@pytest.mark.parametrize("key, message", [
    (jax.random.split(KEY, 2), r"`key` must be one jax.random key .* shape \(2,\)"),
    (jnp.ones(2), r"`key` must be one jax.random key .* got dtype float32 with shape \(2,\)"),
    (jnp.ones((3, 2), jnp.uint32), r"got dtype uint32 with shape \(3, 2\)"),
])
def test_key_errors(key, message):
  with pytest.raises(ValueError, match=message):
    ranksim_loss(jnp.ones((5, 3)), jnp.arange(5.0), key)


@pytest.mark.parametrize("interpolation, message", [
    (0.0, "`interpolation` must be positive, got 0.0"), (-2, "`interpolation` must be positive, got -2"),
    (float("nan"), "`interpolation` must be positive, got nan"), (float("inf"), "`interpolation` must be finite"),
    ("2", "`interpolation` must be a Python number"), (True, "`interpolation` must be a Python number"),
    (jnp.asarray(2.0), "`interpolation` must be a Python number"),
])
def test_interpolation_errors(interpolation, message):
  with pytest.raises(ValueError, match=message):
    ranksim_loss(jnp.ones((5, 3)), jnp.arange(5.0), KEY, interpolation=interpolation)
  with pytest.raises(ValueError, match=message):
    blackbox_rank(jnp.ones((5, 3)), interpolation=interpolation)


@pytest.mark.parametrize("scores, mask, message", [
    (jnp.ones((2, 3), jnp.int32), None, r"`scores` must have a floating dtype, got int32 with shape \(2, 3\)"),
    (jnp.float32(1.0), None, r"`scores` must be \[..., m\] with at least one axis, got shape \(\)"),
    (jnp.ones((2, 3)), jnp.ones((2, 3)), r"`mask` must be a bool array, got float32 with shape \(2, 3\)"),
    (jnp.ones((2, 3)), jnp.ones((2,), bool), r"`mask` must broadcast to the shape of `scores` \(2, 3\), got shape "
                                             r"\(2,\)"),
])
def test_rank_errors(scores, mask, message):
  with pytest.raises(ValueError, match=message):
    normalised_rank(scores, mask)
  with pytest.raises(ValueError, match=message):
    blackbox_rank(scores, mask)


def test_unique_label_mask_errors():
  with pytest.raises(ValueError, match=r"`targets` must be \[n\] or \[n, k\], got shape \(2, 2, 2\)"):
    unique_label_mask(jnp.ones((2, 2, 2)), KEY)
  with pytest.raises(ValueError, match=r"`key` must be one jax.random key"):
    unique_label_mask(jnp.ones(4), jnp.ones(2))


def test_forward_mode_is_refused_as_documented():
  """The blackbox gradient is a custom VJP: JAX refuses forward mode loudly (the docstring says so)."""
  features = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
  loss = lambda z: ranksim_loss(z, jnp.arange(6.0), KEY)
  with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
    jax.jvp(loss, (features,), (features,))
