"""PH-Reg (rtjax.topology): minimum spanning trees against scipy and the published Kruskal, L_t and L_d
against independent float64 NumPy references (scipy's MST inside) and their finite differences, sampling,
jit/vmap/grad, degenerate inputs, errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import finite_difference_grad, relative_error
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst

from rtjax import topology
from rtjax.topology import (
  PUBLISHED_SETTINGS,
  minimum_spanning_tree,
  ph_dimension_loss,
  ph_dimension_sample_indices,
  ph_dimension_sizes,
  ph_reg_loss,
  topological_loss,
  tree_edge_lengths,
)

# ----------------------------------------------------------------------------------------------------
# Float64 NumPy references (no rtjax code)


def ref_distances(x):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def ref_tree(dist):
  """Edge set {(i, j), i < j} of scipy's MST (points must be distinct: scipy drops zero entries)."""
  tree = scipy_mst(dist).tocoo()
  return {(min(i, j), max(i, j)) for i, j in zip(tree.row.tolist(), tree.col.tolist())}, float(tree.sum())


def ref_normalize(x, normalization):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  top = np.linalg.norm(x, axis=1).max() if normalization == "max_norm" else abs(x.max())
  return x / top if top > 0 else x


def ref_topological(f, y, normalization="max_norm"):
  d_f = ref_distances(ref_normalize(f, normalization))
  d_y = ref_distances(ref_normalize(y, normalization))
  pairs_f = np.array(sorted(ref_tree(d_f)[0]))
  pairs_y = np.array(sorted(ref_tree(d_y)[0]))
  gap = lambda a, b, p: np.mean((a[p[:, 0], p[:, 1]] - b[p[:, 0], p[:, 1]]) ** 2)
  return gap(d_y, d_f, pairs_y) + gap(d_f, d_y, pairs_f)


def ref_mst_length(x):
  return ref_tree(ref_distances(x))[1]


def ref_ph_dimension(f, y, indices):
  sizes = [len(i) for i in indices]
  ratios = [ref_mst_length(f[i]) / ref_mst_length(y[i]) for i in indices]
  return abs(np.polyfit(np.log(sizes), np.log(ratios), 1)[0])


def published_kruskal(dist):
  """Transcription of needylove/PH-Reg `PersistentHomologyCalculation` (stable argsort, union-find)."""
  parent = list(range(len(dist)))

  def find(u):
    while parent[u] != u:
      u = parent[u]
    return u

  rows, cols = np.triu_indices_from(dist)
  weights = dist[rows, cols]
  edges = []
  for e in np.argsort(weights, kind="stable"):
    u, v = find(rows[e]), find(cols[e])
    if u != v:
      parent[max(u, v)] = min(u, v)
      edges.append((int(rows[e]), int(cols[e])))
  return set(edges)


def is_spanning_tree(edges, n):
  parent = list(range(n))

  def find(u):
    while parent[u] != u:
      u = parent[u]
    return u

  for i, j in edges:
    if find(i) == find(j):
      return False  # a cycle
    parent[find(i)] = find(j)
  return len(edges) == n - 1 and len({find(i) for i in range(n)}) == 1


def problem(seed, n, d, k=1):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.uniform(0.0, 10.0, size=(n, k))


def edge_set(edges):
  return {(int(i), int(j)) for i, j in np.asarray(edges)}


# ----------------------------------------------------------------------------------------------------
# Minimum spanning tree


@pytest.mark.parametrize("n, d", [(2, 2), (9, 3), (40, 2)])
def test_mst_matches_scipy(x64, n, d):
  x, _ = problem(n, n, d)
  dist = ref_distances(x)
  edges = minimum_spanning_tree(jnp.asarray(dist))
  assert edges.shape == (n - 1, 2) and edges.dtype == jnp.int32
  assert np.all(np.asarray(edges)[:, 0] < np.asarray(edges)[:, 1])
  expected, length = ref_tree(dist)
  assert edge_set(edges) == expected
  np.testing.assert_allclose(float(jnp.sum(tree_edge_lengths(jnp.asarray(dist), edges))), length, rtol=1e-14)


GRID = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)), -1).reshape(-1, 2)  # 20 points, many equal lengths
LADDER = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [2.0, 1.0], [3.0, 0.5], [3.0, 1.5]])


@pytest.mark.parametrize("points", [GRID, LADDER])
def test_mst_ties_match_scipy_length_and_published_kruskal(points):
  dist = ref_distances(points)
  edges = edge_set(minimum_spanning_tree(jnp.asarray(dist, jnp.float32)))
  assert is_spanning_tree(sorted(edges), len(points))
  assert sum(dist[i, j] for i, j in edges) == pytest.approx(ref_tree(dist)[1], rel=1e-6)
  assert edges == published_kruskal(dist.astype(np.float32))  # the same tie-breaking, edge for edge


def test_two_stage_tie_breaking_matches_the_single_key():
  """The (i, j) comparison of large n (n^2 >= 2^31, two stages) gives the same trees as the int32 key."""
  prim = jax.jit(topology._prim, static_argnums=1)
  for points in (GRID, LADDER):
    dist = jnp.asarray(ref_distances(points), jnp.float32)
    assert edge_set(prim(dist, False)) == edge_set(prim(dist, True)) == published_kruskal(np.asarray(dist))
  assert edge_set(prim(jnp.zeros((8, 8)), False)) == {(0, j) for j in range(1, 8)}


def test_mst_zero_distances_and_nan_give_a_spanning_tree():
  ages = np.array([30.0, 31.0, 30.0, 45.0, 31.0, 30.0, 60.0, 45.0])  # duplicates: zero distances
  dist = ref_distances(ages)
  edges = edge_set(minimum_spanning_tree(jnp.asarray(dist, jnp.float32)))
  assert edges == published_kruskal(dist.astype(np.float32))
  assert sum(dist[i, j] for i, j in edges) == pytest.approx(30.0)
  dist[2, 5] = dist[5, 2] = np.nan
  assert is_spanning_tree(sorted(edge_set(minimum_spanning_tree(jnp.asarray(dist, jnp.float32)))), len(ages))
  star = {(0, j) for j in range(1, 8)}
  assert edge_set(minimum_spanning_tree(jnp.zeros((8, 8)))) == star  # all ties: the lowest (i, j) first


def test_tree_edges_carry_no_gradient_but_lengths_do():
  dist = jnp.asarray(ref_distances(LADDER + 0.01 * problem(1, 8, 2)[0]), jnp.float32)
  edges = minimum_spanning_tree(dist)
  grad = jax.grad(lambda m: jnp.sum(tree_edge_lengths(m, minimum_spanning_tree(m))))(dist)
  expected = np.zeros((8, 8))
  expected[tuple(np.asarray(edges).T)] = 1.0
  np.testing.assert_array_equal(grad, expected)


# ----------------------------------------------------------------------------------------------------
# L_t and L_d against the references


LT_PROBLEMS = [(0, 2, 2, 1, "max_norm"), (1, 12, 3, 3, "max_norm"), (2, 12, 3, 1, "max_entry")]


@pytest.mark.parametrize("seed, n, d, k, normalization", LT_PROBLEMS)
def test_topological_loss_value_and_grad_match_reference(x64, seed, n, d, k, normalization):
  f, y = problem(seed, n, d, k)
  if normalization == "max_entry":
    f = np.abs(f)  # post-ReLU features, as in agedb-dir
  targets = y if k > 1 else y[:, 0]
  value, (grad_f, grad_y) = jax.value_and_grad(topological_loss, argnums=(0, 1))(
      jnp.asarray(f), jnp.asarray(targets), normalization=normalization)
  assert value.dtype == jnp.float64
  assert float(value) == pytest.approx(ref_topological(f, targets, normalization), rel=1e-12)
  fd_f = finite_difference_grad(lambda ff: ref_topological(ff, targets, normalization), f)
  fd_y = finite_difference_grad(lambda yy: ref_topological(f, yy, normalization), targets)
  assert relative_error(grad_f, fd_f) <= 1e-6
  assert relative_error(grad_y, fd_y) <= 1e-6


SET = dict(min_points=5, max_points=24, point_jump=6)  # sizes 5, 11, 17, 23 of n = 24 points
LD_PROBLEMS = [(4, 24, 3, 1, SET), (5, 12, 4, 2, dict(min_points=3, max_points=40, point_jump=4))]


def ld_grad(f, y, key, settings):
  return jax.value_and_grad(ph_dimension_loss)(jnp.asarray(f), jnp.asarray(y), key, **settings)


@pytest.mark.parametrize("seed, n, d, k, settings", LD_PROBLEMS)
def test_ph_dimension_loss_value_and_grad_match_reference(x64, seed, n, d, k, settings):
  f, y = problem(seed, n, d, k)
  y = y if k > 1 else y[:, 0]
  key = jax.random.key(seed)
  indices = [np.asarray(i) for i in ph_dimension_sample_indices(key, n, **settings)]
  sizes = range(settings["min_points"], min(settings["max_points"], n), settings["point_jump"])
  assert [len(i) for i in indices] == list(sizes)
  value, grad = ld_grad(f, y, key, settings)
  expected = ref_ph_dimension(f, y, indices)
  assert float(value) == pytest.approx(expected, rel=1e-12)
  fd = finite_difference_grad(lambda ff: ref_ph_dimension(ff, y, indices), f)
  assert relative_error(grad, fd) <= 1e-6


def test_invariances_and_constant_targets(x64):
  """L_t and L_d ignore the scale (L_d also the offset) of features and targets; constant targets give
  the features' own |slope| (E_y is floored)."""
  f, y = problem(4, 24, 3)
  y, key = y[:, 0], jax.random.key(4)
  ld = float(ld_grad(f, y, key, SET)[0])
  lt = float(topological_loss(jnp.asarray(f), jnp.asarray(y)))
  for a, b in [(1e3, 1e-2), (1e-30, 1e30)]:
    assert float(ld_grad(a * f, b * y + 7.0, key, SET)[0]) == pytest.approx(ld, rel=1e-10)
    assert float(topological_loss(jnp.asarray(a * f), jnp.asarray(b * y))) == pytest.approx(lt, rel=1e-10)
  indices = [np.asarray(i) for i in ph_dimension_sample_indices(key, 24, **SET)]
  sizes, lengths = [len(i) for i in indices], [ref_mst_length(f[i]) for i in indices]
  value, grad = ld_grad(f, np.full(24, 3.0), key, SET)
  assert float(value) == pytest.approx(abs(np.polyfit(np.log(sizes), np.log(lengths), 1)[0]), rel=1e-12)
  assert np.all(np.isfinite(grad))


def test_float32_matches_float64_reference():
  f, y = problem(7, 24, 3, 1)
  f32, y32 = jnp.asarray(f, jnp.float32), jnp.asarray(y[:, 0], jnp.float32)
  lt = topological_loss(f32, y32)
  assert lt.dtype == jnp.float32
  assert float(lt) == pytest.approx(ref_topological(f, y), rel=1e-5)
  key = jax.random.key(0)
  indices = [np.asarray(i) for i in ph_dimension_sample_indices(key, 24, **SET)]
  ld = ph_dimension_loss(f32, y32, key, **SET)
  assert ld.dtype == jnp.float32
  assert float(ld) == pytest.approx(ref_ph_dimension(f, y, indices), rel=1e-4)
  half = topological_loss(f32.astype(jnp.bfloat16), y32.astype(jnp.bfloat16))  # upcast to float32
  assert half.dtype == jnp.float32 and float(half) == pytest.approx(float(lt), rel=0.1)


def test_wide_features_use_blocked_pairing_distances(x64):
  f, y = problem(8, 40, 3000, 1)  # n * n * d > 2^22: pairing distances in row blocks
  assert float(topological_loss(jnp.asarray(f), jnp.asarray(y))) == pytest.approx(ref_topological(f, y), rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# PH-Reg, sampling, transforms


# One PH-Reg setting (both terms, both draws) compiled once for the tests below.
REG_LOSS = lambda f, y, k: ph_reg_loss(f, y, k, lambda_t=100.0, lambda_d=10.0, topology_points=20, **SET)
REG_GRAD = jax.jit(jax.value_and_grad(REG_LOSS, argnums=(0, 1)))


def test_ph_reg_loss_combines_the_terms():
  f, y = problem(7, 24, 3, 1)
  f, y, key = jnp.asarray(f, jnp.float32), jnp.asarray(y[:, 0], jnp.float32), jax.random.key(2)
  key_d, key_t = jax.random.split(key)
  idx = jnp.argsort(jax.random.bits(key_t, (1, 24), jnp.uint32), axis=1)[0, :20]  # the documented draw
  lt_sub, ld = float(topological_loss(f[idx], y[idx])), float(ph_dimension_loss(f, y, key_d, **SET))
  assert float(REG_GRAD(f, y, key)[0]) == pytest.approx(100 * lt_sub + 10 * ld, rel=1e-5)
  # A Python 0 skips its term: L_t alone (all points) needs no L_d sizes that fit n (n = 24 < 80 points).
  assert float(ph_reg_loss(f, y, key, lambda_d=0)) == pytest.approx(100 * float(topological_loss(f, y)), rel=1e-6)


def test_published_settings():
  assert PUBLISHED_SETTINGS["swiss_roll"]["lambda_d"] == 10.0 and PUBLISHED_SETTINGS["mammoth"]["lambda_t"] == 1e4
  assert PUBLISHED_SETTINGS["agedb"]["normalization"] == "max_entry" and PUBLISHED_SETTINGS["circle"]["lambda_t"] == 100
  sampling = lambda task: {k: PUBLISHED_SETTINGS[task][k] for k in ("min_points", "max_points", "point_jump")}
  assert ph_dimension_sizes(100, **sampling("circle")) == (19, 39, 59, 79)
  assert ph_dimension_sizes(256, **sampling("agedb")) == tuple(range(128, 256, 16))
  assert ph_dimension_sizes(200, **sampling("agedb")) == (128, 144, 160, 176, 192)  # max_points clamped to n


def test_key_reproducibility_and_sampling():
  f, y = problem(7, 24, 3, 1)
  f, y = jnp.asarray(f, jnp.float32), jnp.asarray(y[:, 0], jnp.float32)
  a = ph_dimension_loss(f, y, jax.random.key(3), **SET)
  assert float(a) == float(ph_dimension_loss(f, y, jax.random.key(3), **SET))
  assert float(a) != float(ph_dimension_loss(f, y, jax.random.key(4), **SET))
  assert float(a) == float(ph_dimension_loss(f, y, jax.random.PRNGKey(3), **SET))  # raw keys: the same bits
  for idx in ph_dimension_sample_indices(jax.random.key(3), 24, **SET):
    idx = np.asarray(idx)
    assert len(set(idx.tolist())) == len(idx) and idx.min() >= 0 and idx.max() < 24


def test_jit_vmap_grad_and_one_trace_per_shape():
  rng = np.random.default_rng(13)
  fs = jnp.asarray(rng.normal(size=(3, 24, 3)), jnp.float32)
  ys = jnp.asarray(rng.uniform(size=(3, 24)), jnp.float32)
  keys = jax.random.split(jax.random.key(5), 3)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(fb, yb, kb):  # a batch of problems and of keys
    return jax.vmap(jax.value_and_grad(REG_LOSS))(fb, yb, kb)

  values, grads = batched(fs, ys, keys)
  batched(fs + 0.1, ys, jax.random.split(jax.random.key(6), 3))  # same shapes: no second trace
  for i in range(3):
    v, (g, _) = REG_GRAD(fs[i], ys[i], keys[i])
    np.testing.assert_allclose(values[i], v, rtol=1e-5)
    np.testing.assert_allclose(grads[i], g, rtol=1e-4, atol=1e-6)
  trees = jax.jit(jax.vmap(minimum_spanning_tree))(jnp.asarray([ref_distances(f) for f in np.asarray(fs)]))
  for i in range(3):
    assert edge_set(trees[i]) == ref_tree(ref_distances(np.asarray(fs[i], np.float64)))[0]


DEGENERATE = {
    "duplicate features": (np.repeat(np.arange(4.0)[:, None], 6, 0) * np.ones((1, 3)), np.arange(24.0)),
    "constant features": (np.ones((24, 3)), np.arange(24.0)),
    "zero features": (np.zeros((24, 3)), np.arange(24.0)),
    "constant targets": (None, np.full(24, 4.0)),
    "zero targets": (None, np.zeros(24)),
    "integer ages": (None, np.repeat([20.0, 21.0, 35.0, 36.0], 6)),
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_degenerate_inputs_are_finite(name):
  f, y = DEGENERATE[name]
  f = problem(14, 24, 3)[0] if f is None else f
  value, (grad_f, grad_y) = REG_GRAD(jnp.asarray(f, jnp.float32), jnp.asarray(y, jnp.float32), jax.random.key(0))
  assert np.isfinite(float(value)) and np.all(np.isfinite(grad_f)) and np.all(np.isfinite(grad_y))


# ----------------------------------------------------------------------------------------------------
# Errors


F, Y, KEY = jnp.ones((10, 3)), jnp.arange(10.0), jax.random.key(0)
SMALL = dict(min_points=3, max_points=10, point_jump=3)
MST, LENGTHS, LT, LD, REG = minimum_spanning_tree, tree_edge_lengths, topological_loss, ph_dimension_loss, ph_reg_loss
LD_WITH = lambda **kw: LD(F, Y, KEY, **{**SMALL, **kw})
REG_WITH = lambda **kw: REG(F, Y, KEY, **{**SMALL, **kw})
ERRORS = [
    (lambda: MST(jnp.ones((3, 4))), r"`distances` must be a square \[n, n\] matrix, got shape \(3, 4\)"),
    (lambda: MST(jnp.ones((1, 1))), r"`distances` must hold n >= 2 points, got shape \(1, 1\)"),
    (lambda: MST(jnp.ones((3, 3), jnp.int32)),
     r"`distances` must have a floating dtype, got int32 with shape \(3, 3\)"),
    (lambda: LENGTHS(jnp.ones((3, 3)), jnp.zeros((2, 3), jnp.int32)),
     r"`edges` must be an integer \[m, 2\] array, got int32 with shape \(2, 3\)"),
    (lambda: LENGTHS(jnp.ones((3, 2)), jnp.zeros((2, 2), jnp.int32)),
     r"`distances` must be a square \[n, n\] matrix, got shape \(3, 2\)"),
    (lambda: LT(jnp.ones(10), Y), r"`features` must be a \[n, d\] matrix, got shape \(10,\)"),
    (lambda: LT(F, jnp.ones((10, 2, 2))), r"`targets` must be \[n\] or \[n, k\], got shape \(10, 2, 2\)"),
    (lambda: LT(F, Y[:9]), r"same number of samples n, got features \(10, 3\) and targets \(9,\)"),
    (lambda: LT(F[:1], Y[:1]), r"`features` must hold n >= 2 points, got shape \(1, 3\)"),
    (lambda: LT(F.astype(jnp.int32), Y), r"`features` must have a floating dtype, got int32 with shape \(10, 3\)"),
    (lambda: LT(F, jnp.arange(10)), r"`targets` must have a floating dtype, got int32 with shape \(10,\)"),
    (lambda: LT(F, Y, normalization="max"), r"`normalization` must be one of \('max_norm', 'max_entry'\), got 'max'"),
    (lambda: LD(F, Y, KEY), r"at least two sample sizes .* got \(\) for n=10 points \(features shape \(10, \.\.\.\)\), "
     r"min_points=19, max_points=80, point_jump=20"),
    (lambda: LD_WITH(point_jump=7), r"at least two sample sizes .* got \(3,\) for n=10"),
    (lambda: LD_WITH(min_points=1), r"`min_points` must be >= 2, got 1"),
    (lambda: LD_WITH(min_points=5, max_points=5),
     r"`min_points` must be < `max_points`, got min_points=5, max_points=5"),
    (lambda: LD_WITH(max_points=2), r"`max_points` must be >= 3, got 2"),
    (lambda: LD_WITH(point_jump=0), r"`point_jump` must be >= 1, got 0"),
    (lambda: LD_WITH(min_points=3.0), r"`min_points` must be a Python int \(it is static under jit\), got float"),
    (lambda: LD_WITH(max_points=True), r"`max_points` must be a Python int \(it is static under jit\), got bool"),
    (lambda: LD(F, Y, jnp.zeros(2), **SMALL),
     r"`key` must be one jax.random key .* got dtype float32 with shape \(2,\)"),
    (lambda: LD(F, Y, jax.random.split(KEY, 2), **SMALL), r"`key` must be one jax.random key .* shape \(2,\)"),
    (lambda: ph_dimension_sample_indices(KEY, 1, **SMALL), r"`n` must be >= 2, got 1"),
    (lambda: REG_WITH(lambda_t=-1.0), r"`lambda_t` must be finite and >= 0, got -1.0"),
    (lambda: REG_WITH(lambda_d=float("nan")), r"`lambda_d` must be finite and >= 0, got nan"),
    (lambda: REG_WITH(lambda_d=jnp.ones(2)), r"`lambda_d` must be a scalar, got shape \(2,\)"),
    (lambda: REG_WITH(topology_points=11), r"`topology_points` must be <= n, got 11 for features of shape \(10, 3\)"),
    (lambda: REG_WITH(topology_points=1), r"`topology_points` must be >= 2, got 1"),
    (lambda: REG_WITH(normalization="l2"), r"`normalization` must be one of .*, got 'l2'"),
    (lambda: REG(F, Y, KEY, lambda_d=0, min_points=0), r"`min_points` must be >= 2, got 0"),
    (lambda: REG(F, Y, KEY), r"at least two sample sizes"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
