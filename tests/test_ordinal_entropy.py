"""Ordinal entropy, pairwise and class-centre forms: values and gradients against a float64 NumPy
transcription of the authors' PyTorch code and central finite differences, sampling, jit/vmap/grad with
one trace, degenerate inputs and every validation error."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtjax import ordinal_entropy as oe
from rtjax.ordinal_entropy import COORDINATE_NUM_SAMPLES, ordinal_entropy_centres_loss, ordinal_entropy_loss

# ---------------------------------------------------------------------------------------------------------
# float64 NumPy reference, transcribed from needylove/OrdinalEntropy OrdinalEntropy.py and
# AgeEstimation/OrdinalEntropy.py (= needylove/PH-Reg ordinal_entropy.py and agedb-dir/OrdinalEntropy.py).


def ref_normalize(x):
  """F.normalize(x, dim=1)."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ref_euclidean_dist(x):
  """euclidean_dist(x, x): the expanded form |x|^2 + |y|^2 - 2 x.y, clamped at 1e-12, square root."""
  xx = np.sum(x * x, axis=1, keepdims=True)
  return np.sqrt(np.maximum(xx + xx.T - 2.0 * x @ x.T, 1e-12))


def ref_up_triu(m):
  return m[np.triu_indices(len(m), k=1)]


def ref_loss(features, targets):
  """ordinal_entropy(features, gt) without its sampling step."""
  p = ref_normalize(features)
  d = ref_up_triu(ref_euclidean_dist(p))
  w = ref_up_triu(ref_euclidean_dist(targets.reshape(len(targets), -1).astype(np.float64)))
  w = (w - w.min()) / w.max()
  return -np.mean(d * w)


def ref_centres_parts(features, labels, squared=False, values=None):
  """ordinalentropy(features, gt): (tightness, entropy); None where the published code fails."""
  u, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
  centres = np.zeros((len(u), features.shape[1]))
  np.add.at(centres, inv, features)
  centres = centres / counts[:, None]
  p = ref_normalize(centres)
  entropy = None
  if len(u) > 1:
    uv = (u if values is None else values[u]).astype(np.float64)[:, None]
    w = ref_up_triu(ref_euclidean_dist(uv))
    w = (w - w.min()) / w.max()
    entropy = np.mean(ref_up_triu(ref_euclidean_dist(p)) * w)
  t = np.sum((ref_normalize(features) - p[inv]) ** 2, axis=1)
  t = t[t > 0]
  tightness = (t if squared else np.sqrt(t)).mean() if t.size else None
  return tightness, entropy


def ref_centres_loss(features, labels, squared=False, values=None):
  tightness, entropy = ref_centres_parts(features, labels, squared, values)
  return tightness - entropy


def finite_difference_grad(fn, x, h=1e-6):
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (fn(up) - fn(down)) / (2 * h)
  return grad


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))



# Compilation is most of the run time: the tests share a few shapes and call the losses through
# `value_and_grad` (compiled once per shape, dtype and setting) wherever a value alone would compile again.
N, D = 8, 4  # pairwise problems: targets [N] or [N, 2]
NC, C = 12, 12  # class-centre problems: 12 samples, 12 classes (labels < 8: 6 present, 6 absent)


def pairwise_problem(seed, k=None, n=N, d=D):
  r = np.random.default_rng(seed)
  y = r.normal(size=(n,) if k is None else (n, k))
  return r.normal(size=(n, d)), y


def centres_problem(seed):
  """Labels with absent classes (2, 6, 7 and 8-11), a singleton (5) and classes of 2-4 samples."""
  r = np.random.default_rng(seed)
  labels = np.array([0, 0, 1, 1, 1, 3, 3, 4, 4, 4, 4, 5], np.int32)
  return r.normal(size=(NC, D)) + 0.5, r.permutation(labels)


def centres_loss(features, labels, **kwargs):
  return ordinal_entropy_centres_loss(features, jnp.asarray(labels), num_classes=C, **kwargs)


def pairwise_vg(*args, **kwargs):
  """(value, grad w.r.t. the features) of `ordinal_entropy_loss`, both finite."""
  value, grad = jax.value_and_grad(ordinal_entropy_loss)(*args, **kwargs)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  return value, np.asarray(grad)


def centres_vg(*args, **kwargs):
  """(value, grad w.r.t. the features) of `centres_loss`, both finite."""
  value, grad = jax.value_and_grad(centres_loss)(*args, **kwargs)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  return value, np.asarray(grad)


# ---------------------------------------------------------------------------------------------------------
# values and gradients


@pytest.mark.parametrize("seed, k", [(0, None), (1, 2), (2, None)])
def test_pairwise_value_and_grad_match_reference(x64, seed, k):
  z, y = pairwise_problem(seed, k)
  value, grad = pairwise_vg(jnp.asarray(z), jnp.asarray(y))
  assert value.dtype == jnp.float64 and value.shape == ()
  assert rel(value, ref_loss(z, y)) <= 1e-12
  assert rel(grad, finite_difference_grad(lambda zz: ref_loss(zz, y), z)) <= 1e-7


@pytest.mark.parametrize("squared, values", [
    (False, None),
    (True, np.array([0.5, 1.0, 7.0, 2.5, 2.5, 11.0, -1.0, 4.0, 0, 0, 0, 0])),  # 3 and 4 tie: clamped distance
])
def test_centres_value_and_grad_match_reference(x64, squared, values):
  z, labels = centres_problem(3)
  kwargs = {} if values is None else {"class_values": jnp.asarray(values)}
  value, grad = centres_vg(jnp.asarray(z), labels, squared_tightness=squared, **kwargs)
  assert value.dtype == jnp.float64 and value.shape == ()
  assert rel(value, ref_centres_loss(z, labels, squared, values)) <= 1e-12
  assert rel(grad, finite_difference_grad(lambda zz: ref_centres_loss(zz, labels, squared, values), z)) <= 1e-7


def test_float32_matches_reference():
  z, y = pairwise_problem(5)
  value, grad = pairwise_vg(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32))
  assert value.dtype == jnp.float32
  assert rel(value, ref_loss(z, y)) <= 1e-5
  assert rel(grad, finite_difference_grad(lambda zz: ref_loss(zz, y), z)) <= 1e-4
  zc, labels = centres_problem(6)
  value, grad = centres_vg(jnp.asarray(zc, jnp.float32), labels)
  assert value.dtype == jnp.float32
  assert rel(value, ref_centres_loss(zc, labels)) <= 1e-5
  assert rel(grad, finite_difference_grad(lambda zz: ref_centres_loss(zz, labels), zc)) <= 1e-4


def test_expanded_distance_form_matches_explicit(x64):
  """Large problems take the centred expanded form (HIGHEST precision): same values and gradients."""
  r = np.random.default_rng(7)
  x = jnp.asarray(r.normal(size=(N, D)) + 3.0)
  weights = jnp.asarray(r.uniform(size=(N, N)))
  dist = jax.jit(jax.value_and_grad(lambda xx, explicit: jnp.sum(
      weights * jnp.sqrt(jnp.maximum(oe._squared_distances(xx, explicit), 1e-12)))), static_argnums=1)
  v1, g1 = dist(x, True)
  v2, g2 = dist(x, False)
  assert rel(v2, v1) <= 1e-12 and rel(g2, g1) <= 1e-10


def test_coordinate_setting_matches_reference(x64):
  """PH-Reg's coordinate task: 80 sampled of 100 points, 3-D targets. With d = 700 (80 * 80 * 700 > 2^22
  elements) the distances take the expanded form."""
  z, y = pairwise_problem(12, 3, n=100, d=700)
  assert 80 * 80 * 700 > oe._EXPLICIT_MAX_ELEMENTS
  key = jax.random.key(5)
  value = ordinal_entropy_loss(jnp.asarray(z), jnp.asarray(y), key, num_samples=COORDINATE_NUM_SAMPLES)
  idx = np.asarray(jax.random.permutation(key, 100))[:80]
  assert rel(value, ref_loss(z[idx], y[idx])) <= 1e-12


def test_integer_targets(x64):
  z, y = pairwise_problem(9)
  y_int = np.round(3 * y).astype(np.int32)
  value, grad = pairwise_vg(jnp.asarray(z), jnp.asarray(y_int))
  assert rel(value, ref_loss(z, y_int)) <= 1e-12
  assert rel(grad, finite_difference_grad(lambda zz: ref_loss(zz, y_int), z)) <= 1e-7


# ---------------------------------------------------------------------------------------------------------
# sampling


def test_sampling_is_reproducible_and_matches_the_reference_subset(x64):
  z, y = pairwise_problem(10, 2)
  z, y = jnp.asarray(z), jnp.asarray(y)
  key = jax.random.key(3)
  value, grad = pairwise_vg(z, y, key, num_samples=5)
  assert float(value) == float(pairwise_vg(z, y, key, num_samples=5)[0])
  assert float(value) != float(pairwise_vg(z, y, jax.random.key(4), num_samples=5)[0])
  idx = np.asarray(jax.random.permutation(key, N))[:5]
  assert len(set(idx.tolist())) == 5
  sub_z, sub_y = np.asarray(z)[idx], np.asarray(y)[idx]
  assert rel(value, ref_loss(sub_z, sub_y)) <= 1e-12
  # Gradient: zero outside the sample, the reference's finite differences inside.
  assert np.all(grad[np.setdiff1d(np.arange(N), idx)] == 0)
  assert rel(grad[idx], finite_difference_grad(lambda zz: ref_loss(zz, sub_y), sub_z)) <= 1e-7


@pytest.mark.parametrize("num_samples", [N, N + 5])
def test_num_samples_at_least_n_uses_all(x64, num_samples):
  z, y = pairwise_problem(11, 2)
  z, y = jnp.asarray(z), jnp.asarray(y)
  sampled = pairwise_vg(z, y, jax.random.key(0), num_samples=num_samples)[0]
  assert float(sampled) == float(pairwise_vg(z, y)[0])


# ---------------------------------------------------------------------------------------------------------
# jit, vmap, grad, traces


def test_jit_grad_one_trace():
  """One trace for three calls; a raw uint32 key draws the samples a typed key with its bits does; the
  targets get no gradient."""
  pairwise = jax.jit(jax.value_and_grad(chex.assert_max_traces(
      lambda f, y, key: ordinal_entropy_loss(f, y, key, num_samples=5), n=1), argnums=(0, 1)))
  centres = jax.jit(jax.value_and_grad(chex.assert_max_traces(centres_loss, n=1)))
  for seed in range(3):
    z, y = pairwise_problem(seed)
    value, (grad, grad_y) = pairwise(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32),
                                     jax.random.PRNGKey(seed))
    idx = np.asarray(jax.random.permutation(jax.random.key(seed), N))[:5]
    assert rel(value, ref_loss(z[idx], y[idx])) <= 1e-5 and np.all(np.isfinite(grad))
    assert np.all(np.asarray(grad_y) == 0)
    zc, labels = centres_problem(seed)
    value, grad = centres(jnp.asarray(zc, jnp.float32), jnp.asarray(labels))
    assert rel(value, ref_centres_loss(zc, labels)) <= 1e-5 and np.all(np.isfinite(grad))


def test_vmap_over_a_batch_of_problems(x64):
  problems = [pairwise_problem(seed, 2) for seed in range(3)]
  z = jnp.asarray(np.stack([p[0] for p in problems]))
  y = jnp.asarray(np.stack([p[1] for p in problems]))
  keys = jax.random.split(jax.random.key(0), 3)
  batched = jax.vmap(lambda f, t, k: ordinal_entropy_loss(f, t, k, num_samples=5))(z, y, keys)
  looped = [pairwise_vg(z[b], y[b], keys[b], num_samples=5)[0] for b in range(3)]
  assert rel(batched, np.array(looped)) <= 1e-14
  cp = [centres_problem(seed) for seed in range(3)]
  zc, labels = jnp.asarray(np.stack([p[0] for p in cp])), jnp.asarray(np.stack([p[1] for p in cp]))
  values, grads = jax.vmap(jax.value_and_grad(centres_loss))(zc, labels)
  for b, (zz, ll) in enumerate(cp):
    assert rel(values[b], ref_centres_loss(zz, ll)) <= 1e-12
    assert rel(grads[b], finite_difference_grad(lambda f, ll=ll: ref_centres_loss(f, ll), zz)) <= 1e-7


# ---------------------------------------------------------------------------------------------------------
# degenerate inputs


def test_degenerate_features_stay_finite():
  r = np.random.default_rng(13)
  y = jnp.asarray(r.normal(size=N), jnp.float32)
  _, labels = centres_problem(13)
  base = r.normal(size=(NC, D))
  duplicates = base.copy()
  duplicates[1] = duplicates[0]
  duplicates[3] = 2 * duplicates[2]  # same direction: identical normalised rows
  zero_rows = base.copy()
  zero_rows[[0, 4]] = 0
  for z in [duplicates, zero_rows, np.ones((NC, D)), np.zeros((NC, D))]:  # value and grad finite
    z = jnp.asarray(z, jnp.float32)
    pairwise_vg(z[:N], y)
    centres_vg(z, labels)
    centres_vg(z, np.zeros(NC, np.int32))  # one class


def test_constant_targets_give_zero(x64):
  z = jnp.asarray(np.random.default_rng(14).normal(size=(N, D)))
  for y in [np.full(N, 4.0), np.ones((N, 2))]:
    value, grad = pairwise_vg(z, jnp.asarray(y))
    assert float(value) == 0 and np.all(grad == 0)


def test_single_class_and_singletons(x64):
  z, _ = centres_problem(15)
  one = np.full(NC, 3, np.int32)
  value, grad = centres_vg(jnp.asarray(z), one)
  tightness, entropy = ref_centres_parts(z, one)
  assert entropy is None and rel(value, tightness) <= 1e-12  # entropy 0 (the published code raises)
  assert rel(grad, finite_difference_grad(lambda f: ref_centres_parts(f, one)[0], z)) <= 1e-7
  singles = np.arange(NC, dtype=np.int32)
  value, grad = centres_vg(jnp.asarray(z), singles)
  tightness, entropy = ref_centres_parts(z, singles)
  assert tightness is None and rel(value, -entropy) <= 1e-12  # tightness 0 (the published code: NaN)
  assert rel(grad, finite_difference_grad(lambda f: -ref_centres_parts(f, singles)[1], z)) <= 1e-7
  value = ordinal_entropy_centres_loss(jnp.ones((1, D)), jnp.array([2]), num_classes=4)  # n = 1
  assert float(value) == 0


def test_ignored_labels(x64):
  """(Absent classes: every reference comparison has 6 of the 12 classes absent.)"""
  z, labels = centres_problem(16)
  ignored = labels.copy()
  ignored[[0, 5, 9]] = [-1, C, 99]  # outside [0, C): left out
  keep = np.setdiff1d(np.arange(NC), [0, 5, 9])
  value, grad = centres_vg(jnp.asarray(z), ignored)
  assert rel(value, ref_centres_loss(z[keep], labels[keep])) <= 1e-12
  assert np.all(grad[[0, 5, 9]] == 0)


def test_extreme_scales_and_low_precision():
  z, y = pairwise_problem(17)
  zc, labels = centres_problem(17)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  base = float(pairwise_vg(f32(z), f32(y))[0])
  base_c = float(centres_vg(f32(zc), labels)[0])
  for scale in (1e-8, 1e30):  # squares would overflow in float32 without the row scaling
    assert abs(float(pairwise_vg(f32(z * scale), f32(y))[0]) - base) <= 1e-5 * abs(base)
    assert abs(float(centres_vg(f32(zc * scale), labels)[0]) - base_c) <= 1e-5 * abs(base_c)
  # Rows of norm < 1e-12 are divided by 1e-12, not normalised (F.normalize); 1e-25^2 underflows in float32.
  assert rel(pairwise_vg(f32(z * 1e-25), f32(y))[0], ref_loss(z * 1e-25, y)) <= 1e-5
  assert rel(centres_vg(f32(zc * 1e-25), labels)[0], ref_centres_loss(zc * 1e-25, labels)) <= 1e-5
  value = pairwise_vg(jnp.asarray(z, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))[0]
  assert value.dtype == jnp.float32 and abs(float(value) - base) <= 2e-2 * abs(base)


# ---------------------------------------------------------------------------------------------------------
# validation

Z, Y, KEY, LABELS = jnp.ones((5, 3)), jnp.arange(5.0), jax.random.key(0), jnp.array([0, 1, 1, 2, 0])
ERRORS = [
    (lambda: ordinal_entropy_loss(jnp.ones(5), Y), r"`features` must be a \[n, d\] matrix, got shape \(5,\)"),
    (lambda: ordinal_entropy_loss(jnp.ones((5, 3), jnp.int32), Y),
     r"`features` must have a floating dtype, got int32 with shape \(5, 3\)"),
    (lambda: ordinal_entropy_loss(jnp.ones((1, 3)), jnp.ones(1)),
     r"`features` must hold n >= 2 samples, got shape \(1, 3\)"),
    (lambda: ordinal_entropy_loss(jnp.ones((5, 0)), Y),
     r"`features` must have d >= 1 feature dimensions, got shape \(5, 0\)"),
    (lambda: ordinal_entropy_loss(Z, jnp.ones((5, 2, 2))),
     r"`targets` must be \[n\] or \[n, k\], got shape \(5, 2, 2\)"),
    (lambda: ordinal_entropy_loss(Z, jnp.ones(5, bool)), r"`targets` must have a real .* got bool with shape \(5,\)"),
    (lambda: ordinal_entropy_loss(Z, jnp.ones(4)),
     r"same number of samples n, got features \(5, 3\) and targets \(4,\)"),
    (lambda: ordinal_entropy_loss(Z, jnp.ones((5, 0))), r"`targets` must have k >= 1 components, got shape \(5, 0\)"),
    (lambda: ordinal_entropy_loss(Z, Y, KEY, num_samples=1), r"`num_samples` must be >= 2, got 1"),
    (lambda: ordinal_entropy_loss(Z, Y, KEY, num_samples=3.0), r"`num_samples` must be a Python int .* got float"),
    (lambda: ordinal_entropy_loss(Z, Y, KEY, num_samples=True), r"`num_samples` must be a Python int .* got bool"),
    (lambda: ordinal_entropy_loss(Z, Y, num_samples=3), r"`key` \(a jax.random key\) is required"),
    (lambda: ordinal_entropy_loss(Z, Y, jax.random.split(KEY, 2), num_samples=3),
     r"`key` must be one jax.random key .* with shape \(2,\)"),
    (lambda: ordinal_entropy_loss(Z, Y, jnp.ones(2), num_samples=3), r"`key` must be one .* got dtype float32"),
    (lambda: ordinal_entropy_centres_loss(jnp.ones((0, 3)), jnp.ones(0, int), num_classes=2),
     r"`features` must hold n >= 1 samples, got shape \(0, 3\)"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS[:, None], num_classes=3),
     r"`labels` must be an \[n\] vector of class indices, got shape \(5, 1\)"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS.astype(jnp.float32), num_classes=3),
     r"`labels` must have an integer dtype .* got float32 with shape \(5,\)"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS[:4], num_classes=3),
     r"same number of samples n, got features \(5, 3\) and labels \(4,\)"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS, num_classes=0), r"`num_classes` must be >= 1, got 0"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS, num_classes=jnp.int32(3)),
     r"`num_classes` must be a Python int .* got ArrayImpl"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS, num_classes=3, class_values=jnp.ones(4)),
     r"`class_values` must have shape \(num_classes,\) = \(3,\), got \(4,\)"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS, num_classes=3, class_values=jnp.ones(3, bool)),
     r"`class_values` must have a real .* got bool"),
    (lambda: ordinal_entropy_centres_loss(Z, LABELS, num_classes=3, squared_tightness=1),
     r"`squared_tightness` must be a bool, got int"),
]


@pytest.mark.parametrize("index", range(len(ERRORS)))
def test_errors(index):
  fn, message = ERRORS[index]
  with pytest.raises(ValueError, match=message):
    fn()
