"""Tightness diagnostics (paper Table 4): Spearman and Kendall against scipy (ties, +-inf, -0.0, float32
count blocks), the diagnostics against a float64 NumPy/scipy reference, conventions for constant and NaN
inputs, scale invariance, jit/vmap, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from rtjax.diagnostics import TightnessDiagnostics, kendall_tau, spearman_correlation, tightness_diagnostics


def _cases(rng, m):
  """(x, y) samples of size m: continuous, ties in x, in y, in both, identical, reversed, +-inf / -0.0."""
  x = rng.normal(size=m)
  y = x + rng.normal(size=m)
  xi, yi = np.round(2 * x), np.round(y)
  special = x.copy()
  special[::5] = np.inf
  special[1::7] = -np.inf
  special[2::3] = 0.0
  special[3::3] = -0.0
  return [(x, y), (xi, y), (x, yi), (xi, yi), (x, x), (x, -x), (special, yi), (yi, special)]


@pytest.mark.parametrize("m", [7, 435])
def test_x64_rank_correlations_match_scipy(x64, m):
  """435 = the pairs of 30 samples (compiled once for the diagnostics too); the merge pads to 512."""
  rng = np.random.default_rng(m)
  for x, y in _cases(rng, m):
    if len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
      continue  # scipy's NaN; see test_degenerate_inputs
    rho = spearman_correlation(jnp.asarray(x), jnp.asarray(y))
    tau = kendall_tau(jnp.asarray(x), jnp.asarray(y))
    assert rho.dtype == tau.dtype == jnp.float64
    assert abs(float(rho) - st.spearmanr(x, y).statistic) <= 1e-12
    assert abs(float(tau) - st.kendalltau(x, y).statistic) <= 1e-12


def test_float32_rank_correlations_match_scipy():
  """m = 40,000 spans several int32 count blocks (pairs up to 8e8 > 2^24) without x64."""
  rng = np.random.default_rng(1)
  for x, y in _cases(rng, 40_000)[:4]:
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    rho = spearman_correlation(jnp.asarray(x32), jnp.asarray(y32))
    tau = kendall_tau(jnp.asarray(x32), jnp.asarray(y32))
    assert rho.dtype == tau.dtype == jnp.float32
    assert abs(float(rho) - st.spearmanr(x32, y32).statistic) <= 1e-6
    assert abs(float(tau) - st.kendalltau(x32, y32).statistic) <= 1e-6


def test_degenerate_inputs_give_zero_and_nan_propagates():
  x = np.random.default_rng(2).normal(size=190).astype(np.float32)  # 190: the pairs of 20 samples
  const = np.full((190,), 1.5, np.float32)
  with_nan = x.copy()
  with_nan[2] = np.nan
  for fn in (spearman_correlation, kendall_tau):
    assert float(fn(x, const)) == 0.0
    assert float(fn(const, x)) == 0.0
    assert float(fn(const, const)) == 0.0
    assert float(fn(x[:1], x[:1])) == 0.0  # a single value
    assert np.isnan(float(fn(with_nan, x)))
    assert np.isnan(float(fn(x, with_nan)))
    assert float(fn(x, 2 * x)) == 1.0
    assert float(fn(x, -x)) == -1.0


def test_jit_and_vmap_match_single_calls():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 190)).astype(np.float32)
  y = np.round(rng.normal(size=(3, 190))).astype(np.float32)
  y[1] = 1.0  # row 1 constant
  for fn in (spearman_correlation, kendall_tau):
    batched = jax.jit(jax.vmap(fn))(x, y)
    np.testing.assert_array_equal(batched, np.array([fn(x[i], y[i]) for i in range(3)]))
    assert float(batched[1]) == 0.0


def test_rank_correlation_errors():
  x = jnp.ones((5,))
  with pytest.raises(ValueError, match="`x` must be a vector"):
    kendall_tau(jnp.ones((5, 1)), x)
  with pytest.raises(ValueError, match="same shape"):
    spearman_correlation(x, jnp.ones((4,)))
  with pytest.raises(ValueError, match="`y` must have a floating dtype"):
    kendall_tau(x, jnp.ones((5,), jnp.int32))
  with pytest.raises(ValueError, match="at least one value"):
    spearman_correlation(jnp.ones((0,)), jnp.ones((0,)))


def reference_diagnostics(features, targets):
  """Float64 NumPy + scipy: 1 - cos from normalised dot products (0 for a zero row), explicit Euclidean
  differences, pairs i < j."""
  z = np.asarray(features, np.float64)
  y = np.asarray(targets, np.float64).reshape(len(z), -1)
  upper = np.triu_indices(len(z), 1)
  norms = np.linalg.norm(z, axis=1)
  u = z / np.where(norms > 0, norms, 1.0)[:, None]
  cosine = (1.0 - u @ u.T)[upper]
  euclidean = np.sqrt(np.sum((z[:, None] - z[None]) ** 2, axis=-1))[upper]
  label = np.sqrt(np.sum((y[:, None] - y[None]) ** 2, axis=-1))[upper]
  return TightnessDiagnostics(
      st.spearmanr(cosine, label).statistic, st.kendalltau(cosine, label).statistic, cosine.mean(),
      st.spearmanr(euclidean, label).statistic, st.kendalltau(euclidean, label).statistic, euclidean.mean())


def _problem(seed, n, d, k):
  """Features loosely ordered by the targets; 1-D targets on a grid (many tied label distances)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 12, size=n).astype(float) if k is None else rng.normal(size=(n, k))
  trend = y.reshape(n, -1)[:, :1] * rng.normal(size=(1, d))
  return np.abs(trend + 2.0 * rng.normal(size=(n, d))), y


@pytest.mark.parametrize("seed, n, d, k", [(0, 30, 4, None), (1, 30, 4, 3)])
def test_x64_diagnostics_match_reference(x64, seed, n, d, k):
  z, y = _problem(seed, n, d, k)
  z[3] = 0.0  # a zero feature vector: cosine distance 1 to every other
  ours = tightness_diagnostics(jnp.asarray(z), jnp.asarray(y))
  ref = reference_diagnostics(z, y)
  for field, a, b in zip(TightnessDiagnostics._fields, ours, ref, strict=True):
    assert a.dtype == jnp.float64 and a.shape == ()
    assert abs(float(a) - b) <= 1e-12 * max(1.0, abs(b)), field


def test_float32_diagnostics_match_reference_and_blocks_agree():
  z, y = _problem(2, 20, 4, None)
  ref = reference_diagnostics(z, y)
  z32, y32 = jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32)
  default = tightness_diagnostics(z32, y32)
  for field, a, b in zip(TightnessDiagnostics._fields, default, ref, strict=True):
    assert a.dtype == jnp.float32
    assert abs(float(a) - b) <= 1e-5 * max(1.0, abs(b)), field
  for block_size in (7,):  # 3 blocks, the last one padded
    blocked = tightness_diagnostics(z32, y32, block_size=block_size)
    for a, b in zip(blocked, default, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_ordered_representation_is_perfectly_correlated_and_collapse_is_finite():
  y = jnp.arange(20.0)  # integer label gaps: exact, many ties
  line = y[:, None] * jnp.arange(1.0, 5.0)  # [20, 4], feature distances = sqrt(30) * label distances
  out = tightness_diagnostics(line + 1.0, y)
  assert float(out.euclidean_spearman) == 1.0
  assert float(out.euclidean_kendall) == 1.0
  assert float(out.euclidean_volume) == pytest.approx(np.sqrt(30) * 7.0, rel=1e-6)  # mean |i - j| = 7
  collapsed = tightness_diagnostics(jnp.ones((20, 4)), y)  # every feature distance 0
  assert [float(v) for v in collapsed] == [0.0] * 6
  parallel = tightness_diagnostics(line + 0.0, y)  # one ray, and one zero row (y = 0): cos := 0
  assert float(parallel.cosine_volume) == pytest.approx(19 / 190, abs=1e-6)  # 19 pairs at distance 1


def test_units_do_not_matter():
  """Exact power-of-two scalings: no overflow of squares near 1e30, no underflow near 1e-30 (float32);
  the results are bitwise the same (the Euclidean volume scaled)."""
  z, y = _problem(3, 20, 4, None)
  z32, y32 = jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32)
  base = tightness_diagnostics(z32, y32)
  for scale in (2.0**100, 2.0**-100):
    out = tightness_diagnostics(z32 * scale, y32 * scale)
    for field, a, b in zip(TightnessDiagnostics._fields, out, base, strict=True):
      np.testing.assert_array_equal(a, b * scale if field == "euclidean_volume" else b, err_msg=field)


def test_jit_and_vmap_diagnostics():
  z, y = _problem(4, 20, 4, None)
  zb = jnp.stack([jnp.asarray(z, jnp.float32), jnp.asarray(z[::-1], jnp.float32)])
  yb = jnp.stack([jnp.asarray(y, jnp.float32)] * 2)
  batched = jax.jit(jax.vmap(tightness_diagnostics))(zb, yb)
  for i in range(2):
    single = tightness_diagnostics(zb[i], yb[i])
    for a, b in zip(batched, single, strict=True):
      np.testing.assert_allclose(a[i], b, rtol=1e-6)


def test_diagnostics_errors():
  z, y = jnp.ones((6, 3)), jnp.ones((6,))
  with pytest.raises(ValueError, match=r"`features` must be a \[n, d\] matrix"):
    tightness_diagnostics(jnp.ones((6,)), y)
  with pytest.raises(ValueError, match="same number of samples"):
    tightness_diagnostics(z, jnp.ones((5,)))
  with pytest.raises(ValueError, match="`targets` must be"):
    tightness_diagnostics(z, jnp.ones((6, 1, 1)))
  with pytest.raises(ValueError, match="`targets` must have a floating dtype"):
    tightness_diagnostics(z, jnp.ones((6,), jnp.int32))
  with pytest.raises(ValueError, match="n >= 2"):
    tightness_diagnostics(z[:1], y[:1])
  with pytest.raises(ValueError, match="block_size"):
    tightness_diagnostics(z, y, block_size=0)
