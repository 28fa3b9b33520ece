"""PH-Reg (Zhang et al., ICML 2024): the topological-autoencoder term L_t (Moor et al., 2020) and the
PH-dimension term L_d (Birdal et al., 2021), as the authors' published code computes them.

With x_f = features, x_y = targets ([n] targets are read as [n, 1]):

    x      <- x / max_i ||x_i||_2                         (each point set separately: normalization="max_norm")
    D(x)_ij = ||x_i - x_j||_2                             (Euclidean, not squared)
    pi(D)   = the n - 1 edges of the minimum spanning tree of D  (the 0-dim persistence pairs; no gradient)
    L_t     = mean_{e in pi_y} (D_y[e] - D_f[e])^2 + mean_{e in pi_f} (D_f[e] - D_y[e])^2,
              pi_y = pi(D_y), pi_f = pi(D_f)              (sum of the two means; no 1/2)

    for m in range(min_points, min(max_points, n), point_jump):   (19, 39, 59, 79 by default)
      S_m   = m indices drawn without replacement (one draw per m; the same S_m for features and targets)
      E_f,m = sum of the MST edge lengths of the features x_f[S_m] (unnormalised Euclidean distances),
      E_y,m = the same for the targets x_y[S_m],   l_m = E_f,m / E_y,m
    L_d     = | slope of the least-squares line of ln l_m on ln m |
            = | (N sum_m a_m b_m - sum_m a_m sum_m b_m) / (N sum_m a_m^2 - (sum_m a_m)^2) |,  a = ln m, b = ln l_m

    PH-Reg  = lambda_t L_t + lambda_d L_d                 (added to the task loss)

The pairings carry no gradient; the gradient flows through the edge lengths D[e]. At generic points the
trees are locally constant, so both terms are differentiable there (piecewise smooth in general).

The published choices, read in needylove/PH-Reg:
- `PH_Reg.py` (coordinate prediction), `PersistentHomologyCalculation`: Kruskal's algorithm on the upper
  triangle of the detached distance matrix, edges in `np.argsort(kind='stable')` order, so equal lengths
  are taken in row-major (i, j) order. The tree that Kruskal builds is the unique minimum spanning tree
  under the strict order (length, i, j) with i < j; `minimum_spanning_tree` runs Prim's algorithm under
  the same order and returns the same edges, ties included.
- `PH_Reg._compute_distance_matrix`: x / torch.max(||x_i||) for the features and the targets separately,
  then torch.norm(x_i - x_j) (p = 2). `sig_error`: ((s1 - s2) ** 2).mean(-1) (a `.sum` variant is
  commented out). flag 4 (L_d + L_t, the paper's PH-Reg) and flag 6 ("+Topological Autoencoder", L_t
  alone) return sig_error(sig2, sig1_2) + sig_error(sig1, sig2_1), i.e. L_t above.
- flags 4 and 6 first subsample `random.sample(range(0, n - 1), max_points)` points for L_t; here
  `ph_reg_loss(topology_points=m)` draws m of all n points (the published range leaves the last sample
  out, an off-by-one we do not copy); None (the default) uses all points, as agedb-dir does.
- L_d (flags 2-4): `test_n = range(min_points, max_points, point_jump)` (stop excluded);
  `np.random.choice(n, size, replace=False)` per size, the same indices for features and targets;
  `torch.cdist` on the raw points; E = sum(death - birth) of the 0-dim `torchph` `vr_persistence`
  barcode = sum of the MST edge lengths; `lengths.append(d / d2)`; x = log(n) (natural), y = log(ratio);
  the closed-form least-squares slope above; `torch.abs`. A common scale of the features or of the
  targets shifts every ln l_m by a constant, so L_d does not depend on it: here the points are divided
  by an exact power of two (no gradient), which changes nothing but the floating-point range.
- `main.py`: ph_reg(feature, y_train, min_points=19, point_jump=20, max_points=80, flag=4);
  loss = lambda_t * L_t + lambda_d * L_d with lambda_t = 100, lambda_d = 1 (circle, torus), 10 (swiss
  roll); mammoth lambda_t = 1e4, lambda_d = 1. Flag 6 is lambda_t * L_t.
- `agedb-dir/PH_Reg_agedb.py` + `train_5times.py`: L_t + 0.1 L_d with min_points=128, max_points=256,
  point_jump=16; max_points is clamped to the batch size (`if max_points > features.shape[0]`); L_t on the
  whole batch. Its `_compute_distance_matrix` divides by torch.max(x) (the largest *entry*) after the
  features were divided by their largest norm, so its L_t sees features / max_ij x_ij and targets /
  max_i y_i: `normalization="max_entry"`. `PUBLISHED_SETTINGS` holds these settings.

Defined here where the published code gives inf or NaN:
- Distances use a safe norm: ||0|| = 0 with gradient 0 (as torch.norm), so duplicate points are fine.
- A point set whose normaliser (largest norm or entry) is 0 is not divided (it is all zeros).
- E_f,m and E_y,m are floored at eps(dtype) times the extent of their point set (the centred points are
  scaled by a power of two so that the extent is about 1): constant targets (E_y,m = 0) no longer give
  log(0) or 0/0. With constant targets l_m = E_f,m / eps, and L_d is the features' own |slope| (the
  published "original" L'_d of flag 5, in absolute value). The floor has no gradient.
- `max_points > n` is clamped to n, as in agedb-dir; fewer than two sample sizes is an error.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rtjax import _checks
from rtjax.costs import power_of_two_scale

__all__ = [
  "DEFAULT_LAMBDA_D",
  "DEFAULT_LAMBDA_T",
  "NORMALIZATIONS",
  "PUBLISHED_SETTINGS",
  "minimum_spanning_tree",
  "ph_dimension_loss",
  "ph_dimension_sample_indices",
  "ph_dimension_sizes",
  "ph_reg_loss",
  "topological_loss",
  "tree_edge_lengths",
]

DEFAULT_LAMBDA_T = 100.0  # main.py, all synthetic coordinate tasks but the mammoth
DEFAULT_LAMBDA_D = 1.0  # main.py, circle and torus (the script's default task is the circle)
NORMALIZATIONS = ("max_norm", "max_entry")

_COORDINATES = {"min_points": 19, "max_points": 80, "point_jump": 20, "topology_points": 80,
                "normalization": "max_norm"}
# Keyword arguments of `ph_reg_loss` that reproduce the published experiments (main.py, train_5times.py).
PUBLISHED_SETTINGS = {
  "circle": {"lambda_t": 100.0, "lambda_d": 1.0, **_COORDINATES},
  "torus": {"lambda_t": 100.0, "lambda_d": 1.0, **_COORDINATES},
  "swiss_roll": {"lambda_t": 100.0, "lambda_d": 10.0, **_COORDINATES},
  "mammoth": {"lambda_t": 1e4, "lambda_d": 1.0, **_COORDINATES},
  "agedb": {"lambda_t": 1.0, "lambda_d": 0.1, "min_points": 128, "max_points": 256, "point_jump": 16,
            "topology_points": None, "normalization": "max_entry"},
}

# Pairing distances from explicit differences [rows, n, d] in row blocks of about this many entries.
_BLOCK_ELEMENTS = 2**22


# ----------------------------------------------------------------------------------------------------
# Validation


def _check_points(name: str, x, ranks, what: str) -> int:
  _checks.require_float(name, x)
  _checks.require_rank(name, x, ranks, what)
  n = _checks.shape_of(x)[0]
  if n < 2:
    raise ValueError(f"`{name}` must hold n >= 2 points, got shape {_checks.shape_of(x)}.")
  return n


def _check_pair(features, targets) -> int:
  n = _check_points("features", features, (2,), "a [n, d] matrix")
  _check_points("targets", targets, (1, 2), "[n] or [n, k]")
  if _checks.shape_of(targets)[0] != n:
    raise ValueError(f"`features` and `targets` must hold the same number of samples n, got features "
                     f"{_checks.shape_of(features)} and targets {_checks.shape_of(targets)}.")
  return n


def _check_static_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"`{name}` must be a Python int (it is static under jit), got {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")


def _check_sampling(min_points, max_points, point_jump) -> None:
  _check_static_int("min_points", min_points, 2)
  _check_static_int("max_points", max_points, 3)
  _check_static_int("point_jump", point_jump, 1)
  if min_points >= max_points:
    raise ValueError(f"`min_points` must be < `max_points`, got min_points={min_points}, max_points={max_points}.")


def ph_dimension_sizes(n: int, *, min_points: int = 19, max_points: int = 80, point_jump: int = 20) -> tuple[int, ...]:
  """The sample sizes of L_d for n points: range(min_points, min(max_points, n), point_jump).

  Raises:
    ValueError: non-int or out-of-range settings, or fewer than two sizes (no slope).
  """
  _check_sampling(min_points, max_points, point_jump)
  sizes = tuple(range(min_points, min(max_points, n), point_jump))
  if len(sizes) < 2:
    raise ValueError(
        f"L_d needs at least two sample sizes in range(min_points, min(max_points, n), point_jump), got "
        f"{sizes} for n={n} points (features shape ({n}, ...)), min_points={min_points}, "
        f"max_points={max_points}, point_jump={point_jump}.")
  return sizes


def _check_weight(name: str, value) -> None:
  if isinstance(value, jax.core.Tracer):
    return
  if jnp.ndim(value) != 0:
    raise ValueError(f"`{name}` must be a scalar, got shape {_checks.shape_of(value)}.")
  if not (math.isfinite(float(value)) and float(value) >= 0):
    raise ValueError(f"`{name}` must be finite and >= 0, got {value}.")


def _check_normalization(normalization) -> None:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}.")


def _as_points(x, dtype) -> jax.Array:
  x = _checks.upcast(jnp.asarray(x))
  return x.reshape(x.shape[0], -1).astype(dtype)


# ----------------------------------------------------------------------------------------------------
# Minimum spanning tree


def _safe_norm(v: jax.Array) -> jax.Array:
  """||v||_2 over the last axis; 0 at v = 0 with gradient 0 (jnp.linalg.norm's gradient is NaN there)."""
  sq = jnp.sum(v * v, axis=-1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pairing_distances(x: jax.Array) -> jax.Array:
  """[n, n] Euclidean distances from explicit differences (no expanded form: exact for near points), in row
  blocks of about 2^22 entries; no gradient (they only choose the tree)."""
  x = jax.lax.stop_gradient(x)
  n, d = x.shape
  row = lambda xi: _safe_norm(xi[None, :] - x)
  if n * n * d <= _BLOCK_ELEMENTS:
    return jax.vmap(row)(x)
  return jax.lax.map(row, x, batch_size=max(1, _BLOCK_ELEMENTS // (n * d)))


def _prim(distances: jax.Array, single_key: bool | None = None) -> jax.Array:
  """Edges [n - 1, 2] (i < j) of the MST of the upper triangle of `distances`, in the order Prim adds them.

  The order on edges is (length, i, j) lexicographic, strict, so the tree is unique: it is the tree of
  Kruskal's algorithm with a stable sort of the row-major upper triangle (the published code). NaN lengths
  are treated as +inf. O(n^2) work, n - 1 sequential steps of O(n). `single_key` (default: when it
  fits) compares (i, j) as the one int32 i * n + j, else in two stages.
  """
  n = distances.shape[0]
  upper = jnp.triu(jnp.ones((n, n), bool), 1)
  w = jnp.where(upper, distances, distances.T)
  w = jnp.where(jnp.isnan(w), jnp.inf, w)
  ids = jnp.arange(n, dtype=jnp.int32)
  inf = jnp.array(jnp.inf, w.dtype)
  one_key = n * n < 2**31 if single_key is None else single_key

  def least(sel, lo, hi):  # restrict the selection `sel` to its least (i, j)
    if one_key:
      key = lo * n + hi
      return sel & (key == jnp.min(jnp.where(sel, key, n * n)))
    sel &= lo == jnp.min(jnp.where(sel, lo, n))
    return sel & (hi == jnp.min(jnp.where(sel, hi, n)))

  def precedes(lo_a, hi_a, lo_b, hi_b):  # (lo_a, hi_a) < (lo_b, hi_b)
    if one_key:
      return lo_a * n + hi_a < lo_b * n + hi_b
    return (lo_a < lo_b) | ((lo_a == lo_b) & (hi_a < hi_b))

  def step(k, state):
    in_tree, best_w, best_u, edges = state
    lo, hi = jnp.minimum(best_u, ids), jnp.maximum(best_u, ids)
    # The least edge (length, i, j) between the tree and the rest (each vertex outside knows its own).
    sel = ~in_tree
    sel = least(sel & (best_w == jnp.min(jnp.where(sel, best_w, inf))), lo, hi)
    v = jnp.min(jnp.where(sel, ids, n))  # the one selected vertex
    u = best_u[v]
    edges = edges.at[k].set(jnp.stack([jnp.minimum(u, v), jnp.maximum(u, v)]))
    in_tree = in_tree | (ids == v)
    row = w[v]
    new_lo, new_hi = jnp.minimum(v, ids), jnp.maximum(v, ids)
    better = ~in_tree & ((row < best_w) | ((row == best_w) & precedes(new_lo, new_hi, lo, hi)))
    return in_tree, jnp.where(better, row, best_w), jnp.where(better, v, best_u), edges

  init = (ids == 0, w[0], jnp.zeros((n,), jnp.int32), jnp.zeros((n - 1, 2), jnp.int32))
  return jax.lax.fori_loop(0, n - 1, step, init)[3]


def minimum_spanning_tree(distances: jax.Array) -> jax.Array:
  """Edges of the minimum spanning tree of a dense distance matrix (Prim's algorithm, jit/vmap-safe).

  Only the strict upper triangle is read (as the published Kruskal code does), so `distances` should be
  symmetric; the diagonal is ignored. Ties are broken by the lowest (i, j): the tree is the unique minimum
  spanning tree under the order (d_ij, i, j), the one the published Kruskal with a stable sort returns.
  NaN distances count as +inf. The edges carry no gradient; `tree_edge_lengths` gives their lengths.

  Args:
    distances: [n, n] floating distance matrix, n >= 2.

  Returns:
    [n - 1, 2] int32 edges (i, j) with i < j, in the order Prim's algorithm (from vertex 0) adds them.

  Raises:
    ValueError: a non-float, non-square or n < 2 `distances`.
  """
  _checks.require_float("distances", distances)
  _checks.require_square("distances", distances, min_n=2)
  return _mst(_checks.upcast(jnp.asarray(distances)))


@jax.jit
def _mst(distances):
  return _prim(jax.lax.stop_gradient(distances))


def tree_edge_lengths(distances: jax.Array, edges: jax.Array) -> jax.Array:
  """Lengths [m] = distances[edges[:, 0], edges[:, 1]] of the edges [m, 2] (with gradient w.r.t. distances).

  Raises:
    ValueError: a non-float or non-square `distances`, or `edges` that is not an integer [m, 2] array.
  """
  _checks.require_float("distances", distances)
  _checks.require_square("distances", distances)
  eshape = _checks.shape_of(edges)
  if len(eshape) != 2 or eshape[1] != 2 or not jnp.issubdtype(jnp.result_type(edges), jnp.integer):
    raise ValueError(f"`edges` must be an integer [m, 2] array, got {jnp.result_type(edges)} with shape {eshape}.")
  return distances[edges[:, 0], edges[:, 1]]


def _edge_lengths(x: jax.Array, edges: jax.Array) -> jax.Array:
  """||x_i - x_j|| [m] for the edges [m, 2] from explicit differences (gradient w.r.t. x; O(m d) memory)."""
  ends = x[edges]  # [m, 2, d]
  return _safe_norm(ends[:, 0] - ends[:, 1])


def _trees(distances: jax.Array) -> jax.Array:
  """MST edges [p, n - 1, 2] of p distance matrices [p, n, n] in one loop of n - 1 steps (no gradient)."""
  return jax.vmap(_prim)(jax.lax.stop_gradient(distances))


# ----------------------------------------------------------------------------------------------------
# L_t


def _normalize(x: jax.Array, normalization: str) -> jax.Array:
  """x / max_i ||x_i|| ("max_norm") or x / |max_ij x_ij| ("max_entry"); a zero normaliser divides by 1.

  The points are first divided by an exact power of two (no gradient), so no square overflows.
  """
  x = x / power_of_two_scale(x)
  top = jnp.max(_safe_norm(x)) if normalization == "max_norm" else jnp.abs(jnp.max(x))
  usable = top > 0
  return x / jnp.where(usable, top, 1.0)


def _topological(f, y, pairing_f, pairing_y, normalization: str) -> jax.Array:
  """L_t of the points f, y given their pairing distances (any common scale of each: the trees only)."""
  n = f.shape[0]
  edges = _trees(jnp.stack([pairing_y, pairing_f])).reshape(2 * (n - 1), 2)  # pi_y, then pi_f
  f, y = _normalize(f, normalization), _normalize(y, normalization)
  gaps = (_edge_lengths(y, edges) - _edge_lengths(f, edges)) ** 2
  return jnp.sum(gaps) / (n - 1)  # the mean over pi_y plus the mean over pi_f (both n - 1 edges)


def _pairing(x: jax.Array) -> jax.Array:
  """Pairing distances of x after an exact power-of-two scaling (the same trees as for x)."""
  return _pairing_distances(x / power_of_two_scale(x))


def topological_loss(features: jax.Array, targets: jax.Array, *, normalization: str = "max_norm") -> jax.Array:
  """Topological-autoencoder loss L_t of PH-Reg (Moor et al. 2020; the published `sig_error` pair).

      L_t = mean_{e in pi_y} (D_y[e] - D_f[e])^2 + mean_{e in pi_f} (D_f[e] - D_y[e])^2

  with D the Euclidean distances of the normalised features / targets and pi the n - 1 edges of their
  minimum spanning trees (no gradient through the choice of edges).

  Args:
    features: [n, d] floating features (bfloat16/float16 are upcast to float32).
    targets: [n] or [n, k] floating targets (cast to the features' dtype); they are differentiable too.
    normalization: "max_norm" (x / max_i ||x_i||, the coordinate code, default) or "max_entry"
      (x / max_ij x_ij, the agedb-dir code).

  Returns:
    [] scalar in the features' (upcast) dtype.

  Raises:
    ValueError: non-float inputs, wrong ranks, mismatched n, n < 2, or an unknown normalization.
  """
  _check_pair(features, targets)
  _check_normalization(normalization)
  f = _as_points(features, _checks.upcast(jnp.asarray(features)).dtype)
  return _topological_loss(f, _as_points(targets, f.dtype), normalization=normalization)


@functools.partial(jax.jit, static_argnames=("normalization",))
def _topological_loss(f, y, *, normalization):
  return _topological(f, y, _pairing(f), _pairing(y), normalization)


# ----------------------------------------------------------------------------------------------------
# L_d


def ph_dimension_sample_indices(key: jax.Array, n: int, *, min_points: int = 19, max_points: int = 80,
                                point_jump: int = 20) -> tuple[jax.Array, ...]:
  """The index sets S_m of `ph_dimension_loss(..., key)` on n points: one [m] int array per sample size m.

  Each S_m holds the m points of smallest random score in its own row of iid uint32 scores
  (jax.random.bits(key, (len(sizes), n))): a uniform draw without replacement, independent across sizes,
  as the published np.random.choice(n, m, replace=False) per size.

  Raises:
    ValueError: a bad `key` or bad settings (see `ph_dimension_sizes`).
  """
  _checks.require_key("key", key)
  _check_static_int("n", n, 2)
  sizes = ph_dimension_sizes(n, min_points=min_points, max_points=max_points, point_jump=point_jump)
  order = _random_orders(key, len(sizes), n)
  return tuple(order[i, :m] for i, m in enumerate(sizes))


def _random_orders(key, rows: int, n: int) -> jax.Array:
  """[rows, n] independent uniformly random permutations of range(n) (argsort of iid uint32 scores: one sort,
  cheap to compile; equal scores, probability ~ n^2 / 2^33, only make the draw slightly non-uniform)."""
  return jnp.argsort(jax.random.bits(key, (rows, n), jnp.uint32), axis=1).astype(jnp.int32)


def _unit_extent(x: jax.Array) -> jax.Array:
  """x shifted by its mean and divided by a power of two >= its largest centred entry (no gradient through
  either): differences, hence MST lengths, change by one constant factor, which L_d does not see."""
  centred = x - jax.lax.stop_gradient(jnp.mean(x, axis=0))
  return centred / power_of_two_scale(centred)


def _slope_weights(sizes: tuple[int, ...]) -> np.ndarray:
  """c_m with slope = sum_m c_m b_m for the least squares of b on a = ln m (float64, static)."""
  a = np.log(np.asarray(sizes, np.float64))
  count = len(sizes)
  return (count * a - a.sum()) / (count * (a * a).sum() - a.sum() ** 2)


def _ph_dimension(f, y, pairing_f, pairing_y, key, sizes: tuple[int, ...]) -> jax.Array:
  """L_d given the pairing distances of f and y (any common scale of each).

  All samples are padded to the largest size m (with the next points of their random order) and their trees
  found in one loop of m - 1 steps: a padded vertex is +inf away from every vertex, so it joins the tree
  last by an infinite edge, which is dropped; the tree of the real vertices is unchanged (the MST under a
  strict order is unique).
  """
  count, top = len(sizes), max(sizes)
  idx = _random_orders(key, count, f.shape[0])[:, :top]  # sample i: its first sizes[i] entries
  real = jnp.asarray(np.arange(top)[None, :] < np.asarray(sizes)[:, None])  # [count, top], static
  real_pair = real[:, :, None] & real[:, None, :]
  sub = lambda pairing: jnp.where(real_pair, pairing[idx[:, :, None], idx[:, None, :]], jnp.inf)
  trees = _trees(jnp.concatenate([sub(pairing_f), sub(pairing_y)]))  # [2 count, top - 1, 2]

  def total_lengths(x, edges):  # [count]: sum of the real edges of each sample's tree
    points = _unit_extent(x)[idx]  # [count, top, d]
    lengths = jax.vmap(_edge_lengths)(points, edges)
    keep = jnp.take_along_axis(real, edges[..., 0], 1) & jnp.take_along_axis(real, edges[..., 1], 1)
    return jnp.sum(jnp.where(keep, lengths, 0.0), axis=1)

  floor = jnp.finfo(f.dtype).eps
  e_f, e_y = total_lengths(f, trees[:count]), total_lengths(y, trees[count:])
  log_ratios = jnp.log(jnp.maximum(e_f, floor)) - jnp.log(jnp.maximum(e_y, floor))
  return jnp.abs(jnp.sum(jnp.asarray(_slope_weights(sizes), f.dtype) * log_ratios))


def ph_dimension_loss(features: jax.Array, targets: jax.Array, key: jax.Array, *, min_points: int = 19,
                      max_points: int = 80, point_jump: int = 20) -> jax.Array:
  """PH-dimension loss L_d of PH-Reg: |slope of ln(E_f,m / E_y,m) against ln m| (published flags 2-4).

  For each m in range(min_points, min(max_points, n), point_jump), m points are drawn without replacement
  (the same ones for features and targets; `ph_dimension_sample_indices` returns them) and E is the total
  length of the minimum spanning tree of the drawn features / targets (the sum of the 0-dim persistence
  bars). The loss does not depend on the scale of the features or targets. Both E are floored at
  eps(dtype) relative to their point set's extent, so constant targets give a finite loss (see the module).

  Args:
    features: [n, d] floating features (bfloat16/float16 are upcast to float32).
    targets: [n] or [n, k] floating targets (cast to the features' dtype).
    key: a jax.random key.
    min_points, max_points, point_jump: static ints; max_points is clamped to n (as in agedb-dir).
      Defaults: the coordinate experiments (19, 80, 20); AgeDB-DIR used 128, 256, 16.

  Returns:
    [] scalar >= 0 in the features' (upcast) dtype.

  Raises:
    ValueError: bad inputs (as `topological_loss`), a bad key, or bad sampling settings.
  """
  n = _check_pair(features, targets)
  _checks.require_key("key", key)
  sizes = ph_dimension_sizes(n, min_points=min_points, max_points=max_points, point_jump=point_jump)
  f = _as_points(features, _checks.upcast(jnp.asarray(features)).dtype)
  return _ph_dimension_loss(f, _as_points(targets, f.dtype), key, sizes=sizes)


@functools.partial(jax.jit, static_argnames=("sizes",))
def _ph_dimension_loss(f, y, key, *, sizes):
  return _ph_dimension(f, y, _pairing(f), _pairing(y), key, sizes)


# ----------------------------------------------------------------------------------------------------
# PH-Reg


def _is_zero(value) -> bool:
  return not isinstance(value, jax.core.Tracer) and float(value) == 0.0


def ph_reg_loss(
    features: jax.Array,
    targets: jax.Array,
    key: jax.Array,
    *,
    lambda_t: float | jax.Array = DEFAULT_LAMBDA_T,
    lambda_d: float | jax.Array = DEFAULT_LAMBDA_D,
    min_points: int = 19,
    max_points: int = 80,
    point_jump: int = 20,
    topology_points: int | None = None,
    normalization: str = "max_norm",
) -> jax.Array:
  """PH-Reg regulariser lambda_t L_t + lambda_d L_d (published flag 4; add it to the task loss).

  `key` is split in two: jax.random.split(key)[0] draws the samples of L_d (`ph_dimension_loss` with
  that key), [1] the `topology_points` points of L_t (if given): the first m of
  argsort(jax.random.bits(key_1, (1, n), uint32)[0]). A weight given as a Python 0 skips its term (so
  lambda_d=0 is the "+Topological Autoencoder" row, lambda_t * L_t, and needs no L_d settings that fit n).
  `PUBLISHED_SETTINGS[task]` holds the published keyword arguments, e.g.
  ph_reg_loss(f, y, key, **PUBLISHED_SETTINGS["agedb"]).

  Args:
    features: [n, d] floating features (bfloat16/float16 are upcast to float32).
    targets: [n] or [n, k] floating targets (cast to the features' dtype).
    key: a jax.random key.
    lambda_t: weight of L_t, >= 0 (100 as in the coordinate experiments; may be traced).
    lambda_d: weight of L_d, >= 0 (1: circle, torus; 10: swiss roll; 0.1: AgeDB; may be traced).
    min_points, max_points, point_jump: L_d sample sizes (static ints; see `ph_dimension_loss`).
    topology_points: None (L_t on all n points) or a static int m in [2, n]: L_t on m points drawn
      without replacement (the coordinate code used m = max_points = 80 of its 100 samples).
    normalization: "max_norm" or "max_entry" (L_t only; see `topological_loss`).

  Returns:
    [] scalar in the features' (upcast) dtype.

  Raises:
    ValueError: bad inputs, key, weights (negative, non-finite, non-scalar) or settings.
  """
  n = _check_pair(features, targets)
  _checks.require_key("key", key)
  _check_weight("lambda_t", lambda_t)
  _check_weight("lambda_d", lambda_d)
  _check_normalization(normalization)
  _check_sampling(min_points, max_points, point_jump)
  use_t, use_d = not _is_zero(lambda_t), not _is_zero(lambda_d)
  sizes = ph_dimension_sizes(n, min_points=min_points, max_points=max_points, point_jump=point_jump) if use_d else ()
  if topology_points is not None:
    _check_static_int("topology_points", topology_points, 2)
    if topology_points > n:
      raise ValueError(f"`topology_points` must be <= n, got {topology_points} for features of shape "
                       f"{_checks.shape_of(features)}.")
  f = _as_points(features, _checks.upcast(jnp.asarray(features)).dtype)
  return _ph_reg(f, _as_points(targets, f.dtype), key, jnp.asarray(lambda_t, f.dtype), jnp.asarray(lambda_d, f.dtype),
                 sizes=sizes, topology_points=topology_points, normalization=normalization, use_t=use_t)


@functools.partial(jax.jit, static_argnames=("sizes", "topology_points", "normalization", "use_t"))
def _ph_reg(f, y, key, lambda_t, lambda_d, *, sizes, topology_points, normalization, use_t):
  key_d, key_t = jax.random.split(key)
  pairing_f, pairing_y = _pairing(f), _pairing(y)  # shared by both terms
  loss = jnp.zeros((), f.dtype)
  if use_t:
    if topology_points is None:
      loss = loss + lambda_t * _topological(f, y, pairing_f, pairing_y, normalization)
    else:
      idx = _random_orders(key_t, 1, f.shape[0])[0, :topology_points]
      sub = lambda pairing: pairing[idx[:, None], idx[None, :]]
      loss = loss + lambda_t * _topological(f[idx], y[idx], sub(pairing_f), sub(pairing_y), normalization)
  if sizes:
    loss = loss + lambda_d * _ph_dimension(f, y, pairing_f, pairing_y, key_d, sizes)
  return loss
