"""Tightness diagnostics of a representation (paper Table 4): rank correlations between feature and label
distances over all pairs of samples, and the "volume" of the features.

Definitions (Zhang, Yan & Yao, ICLR 2025, Sec. 5.3 and Table 4; the published code has no diagnostics):
for samples i < j (m = n (n - 1) / 2 pairs) with features z_i and targets y_i,

    label distance          D^Y_ij   = ||y_i - y_j||_2
    cosine distance         D^cos_ij = 1 - <z_i, z_j> / (||z_i|| ||z_j||)
    Euclidean distance      D^euc_ij = ||z_i - z_j||_2
    Spearman / Kendall      rho(D^Z, D^Y), tau_b(D^Z, D^Y) over the m pairs, for D^Z = D^cos and D^euc
    volume                  mean_{i<j} D^Z_ij

The paper calls both sides "similarities" but computes distances ("the label similarities are calculated
as the Euclidean distances ... the feature similarities are the distances between their corresponding
representations"), and its reported correlations are positive: distance is correlated with distance,
so a representation that preserves the ordinality of the targets gives a high POSITIVE correlation.
"The volume is approximated by the mean of the similarities between samples": the mean pairwise
distance (Table 4's cosine volumes lie in [0, 1], e.g. 0.573, its Euclidean ones are feature-scale
dependent, e.g. 7.72); a lower volume is a tighter (more compressed) representation. The paper draws
1000 pixels at random from 8 test images (`rtjax.sample_valid_pixels`); pass that subset here.

Rank correlations follow `scipy.stats.spearmanr` (Pearson correlation of average ranks, ties get the
mean of their ranks) and `scipy.stats.kendalltau` (tau-b, its default). Kendall's tau is computed
exactly in O(m log^2 m) time and O(m) memory (Knight's algorithm: discordant pairs counted as the
inversions of y ordered by (x, y), by a bottom-up merge of sorted blocks), neither from the O(m^2) pair
signs nor on a subset of pairs. Measured on 2 shared CPU cores: m = 499,500 (the pairs of the paper's
1000 samples) takes ~1 s for Kendall and ~0.3 s for Spearman; `tightness_diagnostics` of n = 1000,
d = 256 ~4 s; each program compiles in 1-2 s whatever m (not measured on an accelerator).

Conventions, where scipy returns NaN with a warning:
  * an input with fewer than two distinct values (constant, or m = 1) has no rank variance; its
    correlation is defined as 0 (not NaN) so that diagnostics of a collapsed representation stay finite;
  * a NaN anywhere in x or y gives NaN (as scipy's nan_policy='propagate'); +-inf are ordinary values.

Precision: with `jax_enable_x64` the counts are exact int64 and the results agree with scipy to ~1e-15.
Without it (float32), ranks are exact, pair counts are summed exactly in int32 blocks and combined with
one float32 rounding (up to m ~ 8e6); measured agreement with scipy ~2e-8 at m = 499,500.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rtjax import _checks
from rtjax.costs import power_of_two_scale

__all__ = ["TightnessDiagnostics", "kendall_tau", "spearman_correlation", "tightness_diagnostics"]

# Automatic blocks of the pairwise feature distances: about this many [block, n, d] entries at once.
_BLOCK_ELEMENTS = 2**22


class TightnessDiagnostics(NamedTuple):
  """Paper Table 4 for one set of samples (each field a [] array; a pytree, so `vmap` batches it).

  Attributes:
    cosine_spearman, cosine_kendall: rho and tau_b between the cosine distances of the features and the
      label distances over the pairs i < j (positive: ordinality preserved).
    cosine_volume: mean_{i<j} (1 - cos(z_i, z_j)), in [0, 2] (lower: tighter).
    euclidean_spearman, euclidean_kendall: the same for the Euclidean feature distances.
    euclidean_volume: mean_{i<j} ||z_i - z_j||_2 (in the features' unit; lower: tighter).
  """
  cosine_spearman: jax.Array
  cosine_kendall: jax.Array
  cosine_volume: jax.Array
  euclidean_spearman: jax.Array
  euclidean_kendall: jax.Array
  euclidean_volume: jax.Array


def _x64() -> bool:
  return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


def _accumulator():
  """Float dtype of the internal arithmetic: float64 where enabled, else float32."""
  return jnp.float64 if _x64() else jnp.float32


def _check_pair(x, y) -> None:
  for name, v in (("x", x), ("y", y)):
    _checks.require_float(name, v)
    _checks.require_rank(name, v, (1,), "a vector [m]")
  if _checks.shape_of(x) != _checks.shape_of(y):
    raise ValueError(f"`x` and `y` must have the same shape [m], got {_checks.shape_of(x)} and "
                     f"{_checks.shape_of(y)}.")
  if _checks.shape_of(x)[0] < 1:
    raise ValueError(f"`x` and `y` must hold at least one value, got shape {_checks.shape_of(x)}.")


def _prepare(x, y):
  """The inputs in their common float dtype (half precisions upcast to float32)."""
  dtype = jnp.result_type(_checks.upcast(jnp.asarray(x)), _checks.upcast(jnp.asarray(y)))
  return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _positive_zeros(v):
  """-0.0 -> +0.0: sorts order -0.0 before +0.0, comparisons do not."""
  return jnp.where(v == 0, jnp.zeros_like(v), v)


def _finish(value, x, y, degenerate):
  """0 for a degenerate input, NaN if any input is NaN, clipped to [-1, 1], in the inputs' dtype."""
  value = jnp.where(degenerate, jnp.zeros_like(value), jnp.clip(value, -1.0, 1.0))
  has_nan = jnp.any(jnp.isnan(jnp.stack([x, y])))
  return jnp.where(has_nan, jnp.full_like(value, jnp.nan), value).astype(x.dtype)


def _is_constant(sorted_v) -> jax.Array:
  return sorted_v[0] == sorted_v[-1]


def spearman_correlation(x: jax.Array, y: jax.Array) -> jax.Array:
  """Spearman's rank correlation rho of two samples (as `scipy.stats.spearmanr(x, y).statistic`).

      rho = sum_i a_i b_i / sqrt(sum_i a_i^2 sum_i b_i^2),   a = rank(x) - (m + 1) / 2,  b likewise,

  with average ranks (tied values share the mean of their 1-based ranks; average ranks always sum to
  m (m + 1) / 2, so a and b are centred exactly). O(m log m).

  Args:
    x, y: [m] floating samples, m >= 1.

  Returns:
    [] rho in [-1, 1], in the inputs' dtype; 0 when x or y has fewer than two distinct values, NaN
    when x or y contains a NaN.
  """
  _check_pair(x, y)
  return _spearman(*_prepare(x, y))


def _count_below(sorted_keys, query_keys, inclusive):
  """Per query, the number of rows of lexicographically sorted keys < the query (<= where inclusive).

  sorted_keys: tuple (one entry per sort key) of [r, m] arrays, r independent searches; query_keys: tuple
  of [r, q]; inclusive: r bools. A branchless binary search (a `fori_loop` of gathers): small programs
  that compile fast, unlike `jnp.searchsorted`'s (and cumulative sums) on CPU.
  """
  m = sorted_keys[0].shape[-1]
  inclusive = jnp.asarray(inclusive)[:, None]

  def before(row):  # row < query (<= where inclusive), lexicographically
    result = inclusive
    for a, q in reversed(list(zip(row, query_keys, strict=True))):
      result = (a < q) | ((a == q) & result)
    return result

  def step(k, count):
    k = k.astype(jnp.int32)
    width = jnp.left_shift(jnp.int32(1), m.bit_length() - 1 - k)
    candidate = count + width
    ids = jnp.minimum(candidate, m) - 1
    row = tuple(jnp.take_along_axis(a, ids, axis=-1) for a in sorted_keys)
    return jnp.where((candidate <= m) & before(row), candidate, count)

  return jax.lax.fori_loop(0, m.bit_length(), step, jnp.zeros(query_keys[0].shape, jnp.int32))


@jax.jit
def _spearman(x, y):
  acc = _accumulator()
  x, y = _positive_zeros(x), _positive_zeros(y)
  m = x.shape[0]
  v = jnp.stack([x, y])
  s = jnp.sort(v, axis=1)
  pick = jnp.asarray([0, 0, 1, 1])
  counts = _count_below((s[pick],), (v[pick],), [False, True, False, True])  # below, below or equal
  ranks = (counts[0::2] + counts[1::2] + 1).astype(acc) / 2  # 1-based average ranks [2, m], exact
  a, b = ranks - (m + 1) / 2  # centred exactly: average ranks sum to m (m + 1) / 2
  saa, sbb, sab = jnp.sum(jnp.stack([a * a, b * b, a * b]), axis=1)
  degenerate = _is_constant(s[0]) | _is_constant(s[1])
  den = jnp.sqrt(saa) * jnp.sqrt(sbb)
  rho = sab / jnp.where(degenerate, jnp.ones_like(den), den)
  return _finish(rho, x, y, degenerate)


def kendall_tau(x: jax.Array, y: jax.Array) -> jax.Array:
  """Kendall's tau-b of two samples (as `scipy.stats.kendalltau(x, y).statistic`, variant 'b').

      tau_b = (P - Q) / sqrt((T - T_x) (T - T_y)),   T = m (m - 1) / 2,

  P / Q the concordant / discordant pairs, T_x / T_y the pairs tied in x / y (P - Q = T - T_x - T_y +
  T_xy - 2 Q, T_xy the pairs tied in both). Exact in O(m log^2 m) time and O(m) memory: Q is the number
  of inversions of y once the samples are sorted by (x, y), counted level by level of a bottom-up merge
  (ceil(log2 m) levels, one sort of the m values, padded to a power of two, per level); the tie counts
  come from binary searches in the sorted values.

  Args:
    x, y: [m] floating samples, m >= 1.

  Returns:
    [] tau_b in [-1, 1], in the inputs' dtype; 0 when x or y has fewer than two distinct values, NaN
    when x or y contains a NaN.
  """
  _check_pair(x, y)
  return _kendall(*_prepare(x, y))


def _total(counts, acc):
  """Sums [r] over the last axis of int32 counts [r, size] whose entries are at most size in magnitude,
  as floats of dtype acc.

  int64 where enabled (exact). Else blocks whose int32 sums cannot overflow, then the block sums split
  into 16-bit halves summed exactly in int32 and combined with a single float rounding.
  """
  if _x64():
    return jnp.sum(counts.astype(jnp.int64), axis=-1).astype(acc)
  rows, size = counts.shape
  per_block = max(1, (2**31 - 1) // max(size, 1))
  blocks = -(-size // per_block)
  counts = jnp.pad(counts, ((0, 0), (0, blocks * per_block - size))).reshape(rows, blocks, per_block)
  sums = jnp.sum(counts, axis=-1)  # each |.| < 2^31
  if blocks >= 2**15:  # m > ~8e6: no exact split; float32 sum of the exact block sums
    return jnp.sum(sums.astype(acc), axis=-1)
  # floor(s / 2^16) (|.| <= 2^15) and s mod 2^16 (in [0, 2^16)): both sums exact in int32
  high, low = jnp.sum(jnp.stack([jnp.right_shift(sums, 16), jnp.bitwise_and(sums, 0xFFFF)]), axis=-1)
  return high.astype(acc) * 65536 + low.astype(acc)


def _discordant_counts(ranks):
  """Per slot counts [2^levels] (int32, |.| < 2^levels) and a Python int: Q = #{i < j : r_i > r_j} is
  their sum plus the int.

  A bottom-up merge on the ranks r (number of values below; ties share it): at level l the slots form
  blocks of 2^(l+1), each half holding the values of one block of the previous level (in any order: only
  these sets matter). Sorting each block by the keys 2 r + half (left before right on equal values)
  puts the k-th right value (k = 0..h-1, h = 2^l) at position p = k + #(left values <= it), so it is
  passed by h - p + k left values; a block's total is sum_right (h - p) + h (h - 1) / 2. The sorted
  blocks are the next level's halves. Padding with rank m at the end adds no pair. One sort by (block,
  key) of all slots per level, in a `fori_loop` (a small program, whatever m).
  """
  m = ranks.shape[0]
  levels = (m - 1).bit_length()  # 2^levels >= m
  size = 1 << levels
  slot = jnp.arange(size, dtype=jnp.int32)

  def level(lev, carry):
    key, counts = carry
    lev = lev.astype(jnp.int32)
    half = jnp.left_shift(jnp.int32(1), lev)
    position = jnp.bitwise_and(slot, 2 * half - 1)
    key = jnp.bitwise_or(jnp.bitwise_and(key, -2), (position >= half).astype(jnp.int32))
    _, key = jax.lax.sort((jnp.right_shift(slot, lev + 1), key), num_keys=2)
    return key, counts + jnp.where(jnp.bitwise_and(key, 1) == 1, half - position, 0)

  key = 2 * jnp.pad(ranks, (0, size - m), constant_values=m)
  _, counts = jax.lax.fori_loop(0, levels, level, (key, jnp.zeros((size,), jnp.int32)))
  constant = sum((size >> (lev + 1)) * ((1 << lev) * ((1 << lev) - 1) // 2) for lev in range(levels))
  return counts, constant


@jax.jit
def _kendall(x, y):
  acc = _accumulator()
  x, y = _positive_zeros(x), _positive_zeros(y)
  m = x.shape[0]
  order = jnp.lexsort((y, x))  # by x, ties by y: pairs tied in x are never discordant
  xs, ys = x[order], y[order]
  sy = jnp.sort(y)
  # Rows: ties of x, of y, of (x, y) (first index of each value: sum_i (i - first_i) = tied pairs), and
  # the ranks of y in x order (values of sy below each ys).
  first = _count_below((jnp.stack([xs, sy, xs, sy]), jnp.stack([xs, sy, ys, sy])),
                       (jnp.stack([xs, sy, xs, ys]), jnp.stack([xs, sy, ys, ys])), [False] * 4)
  counts, constant = _discordant_counts(first[3])
  ties = jnp.arange(m, dtype=jnp.int32) - first[:3]
  size = counts.shape[0]
  x_ties, y_ties, xy_ties, discordant = _total(
      jnp.concatenate([jnp.pad(ties, ((0, 0), (0, size - m))), counts[None]]), acc)
  discordant = discordant + jnp.asarray(float(constant), acc)  # exact in float64
  pairs = jnp.asarray(m * (m - 1) // 2, acc)
  degenerate = _is_constant(xs) | _is_constant(sy)
  den = jnp.sqrt(pairs - x_ties) * jnp.sqrt(pairs - y_ties)
  tau = (pairs - x_ties - y_ties + xy_ties - 2 * discordant) / jnp.where(degenerate, jnp.ones_like(den), den)
  return _finish(tau, x, y, degenerate)


def tightness_diagnostics(
    features: jax.Array,
    targets: jax.Array,
    *,
    block_size: int | None = None,
) -> TightnessDiagnostics:
  """Rank correlations between feature and label distances, and feature volume (paper Table 4).

  Over the m = n (n - 1) / 2 pairs i < j (module docstring for the definitions):
  corr(1 - cos(z_i, z_j), ||y_i - y_j||) and corr(||z_i - z_j||, ||y_i - y_j||) for Spearman's rho and
  Kendall's tau_b, and the volumes mean_{i<j} (1 - cos) and mean_{i<j} ||z_i - z_j||. A zero feature
  vector has cosine similarity 0 with every vector (as torch's `cosine_similarity`), i.e. distance 1.

  Distances are taken from explicit differences (no |a|^2 + |b|^2 - 2 a.b cancellation), the cosine one
  as ||u_i - u_j||^2 / 2 of the unit vectors u (exactly 1 - cos, accurate for nearly parallel features),
  after exact power-of-two scalings (no overflow). Feature rows are processed in blocks (`lax.map`): the
  [n, n] distances are kept, never an [n, n, d] array. Jittable and vmappable; no gradient is intended.

  Args:
    features: [n, d] floating features, n >= 2 (bfloat16/float16 are upcast to float32).
    targets: [n] or [n, k] floating targets.
    block_size: feature rows per block of the distance computation; None chooses about 2^22 / (n d).

  Returns:
    `TightnessDiagnostics` of [] arrays in the common float dtype of features and targets.
  """
  _checks.require_float("features", features)
  _checks.require_rank("features", features, (2,), "a [n, d] matrix")
  _checks.require_float("targets", targets)
  _checks.require_rank("targets", targets, (1, 2), "[n] or [n, k]")
  n, d = _checks.shape_of(features)
  if _checks.shape_of(targets)[0] != n:
    raise ValueError(f"`features` and `targets` must hold the same number of samples n, got features "
                     f"{_checks.shape_of(features)} and targets {_checks.shape_of(targets)}.")
  if n < 2 or d < 1:
    raise ValueError(f"`features` must have n >= 2 samples of dimension d >= 1, got {_checks.shape_of(features)}.")
  if block_size is None:
    block_size = max(1, min(n, _BLOCK_ELEMENTS // (n * d)))
  elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"`block_size` must be a positive Python int, got {block_size!r}.")
  dtype = jnp.result_type(_checks.upcast(jnp.asarray(features)), _checks.upcast(jnp.asarray(targets)))
  cosine, euclidean, label, volumes = _pair_distances(
      jnp.asarray(features, dtype), jnp.asarray(targets, dtype), block_size=min(block_size, n))
  # Separate compiled calls (one program per number of pairs, shared by both feature distances).
  return TightnessDiagnostics(
      cosine_spearman=_spearman(cosine, label),
      cosine_kendall=_kendall(cosine, label),
      cosine_volume=volumes[0],
      euclidean_spearman=_spearman(euclidean, label),
      euclidean_kendall=_kendall(euclidean, label),
      euclidean_volume=volumes[1],
  )


def _feature_distances(z, block_size):
  """Cosine and Euclidean distances [n, n] of the rows of z [n, d], in blocks of rows."""
  n = z.shape[0]
  scale = power_of_two_scale(z)
  zs = z / scale  # exact
  row_top = jnp.max(jnp.abs(z), axis=1, keepdims=True)
  zero = row_top == 0
  _, exponent = jnp.frexp(jnp.where(zero | ~jnp.isfinite(row_top), jnp.ones_like(row_top), row_top))
  w = z / jnp.ldexp(jnp.ones_like(row_top), exponent)  # exact, largest entry in [0.5, 1)
  norm = jnp.sqrt(jnp.sum(w * w, axis=1, keepdims=True))
  u = w / jnp.where(zero, jnp.ones_like(norm), norm)
  zero = zero[:, 0]

  def rows(ids):
    ids = jnp.minimum(ids, n - 1)  # padded rows repeat the last one, dropped below
    dz = zs[ids][:, None, :] - zs[None, :, :]
    du = u[ids][:, None, :] - u[None, :, :]
    euclidean = scale * jnp.sqrt(jnp.sum(dz * dz, axis=-1))
    cosine = 0.5 * jnp.sum(du * du, axis=-1)
    cosine = jnp.where(zero[ids][:, None] | zero[None, :], jnp.ones_like(cosine), cosine)
    return cosine, euclidean

  blocks = -(-n // block_size)
  ids = jnp.arange(blocks * block_size).reshape(blocks, block_size)
  cosine, euclidean = jax.lax.map(rows, ids)
  return cosine.reshape(-1, n)[:n], euclidean.reshape(-1, n)[:n]


def _label_distances(y):
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim == 1:
    return jnp.abs(y[:, None] - y[None, :])  # exact, so equal label gaps tie exactly
  scale = power_of_two_scale(y)
  ys = y / scale
  diff = ys[:, None, :] - ys[None, :, :]
  return scale * jnp.sqrt(jnp.sum(diff * diff, axis=-1))


@functools.partial(jax.jit, static_argnames=("block_size",))
def _pair_distances(features, targets, *, block_size):
  """Cosine, Euclidean and label distances [m] of the pairs i < j, and the two volumes [2]."""
  upper = np.triu_indices(features.shape[0], 1)
  cosine, euclidean = _feature_distances(features, block_size)
  cosine, euclidean = cosine[upper], euclidean[upper]
  volumes = jnp.mean(jnp.stack([cosine, euclidean]).astype(_accumulator()), axis=1).astype(features.dtype)
  return cosine, euclidean, _label_distances(targets)[upper], volumes
