"""Euclidean costs of point sets, whole (dense) or recomputed in blocks of rows (large n).

The ROT costs are clamped Euclidean distances, sqrt(max(|x_i - x_j|^2, 1e-12)) as in the published
code, with the diagonal replaced by a large cost (999, or +inf for an exact exclusion). The clamp is
applied to the points *after* a common shift and an exact power-of-two scale (see `PointCost.of`), so
squares neither overflow nor underflow for any finite input and the clamp is relative to the points'
extent: a cost is invariant to the units the points are given in.

`PointCost` is a pytree whose only differentiable leaf is the (shifted, scaled) point set; its rows
`rows(ids)` are what the Sinkhorn solver, its implicit derivative and the loss consume. With one block
(`Layout.blocks == 1`) the rows are the whole [n, n] matrix; with several, `row_map` evaluates a
function block by block under `jax.checkpoint`, so that neither the forward nor the reverse pass ever
holds more than one [block, n] slice (memory O(n (d + block))).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
  "MIN_SQ_DISTANCE",
  "Layout",
  "MatrixCost",
  "PointCost",
  "cross_distance",
  "layout",
  "normalize_rows",
  "pairwise_distance",
  "point_cost",
  "power_of_two_scale",
  "row_map",
]

# Distances are sqrt(max(d^2, MIN_SQ_DISTANCE)), as in the published code: finite gradient at 0.
MIN_SQ_DISTANCE = 1e-12
# Up to this dimension distances are taken from explicit differences; beyond, from the expanded form
# |a|^2 + |b|^2 - 2 a.b (a matmul, no [n, m, d] intermediate).
EXPLICIT_DIFFERENCES_MAX_DIM = 8
# Automatic layout: dense up to this many cost entries, else blocks of about this many entries
# (64 MB in float32).
DENSE_MAX_ELEMENTS = 2**24
DEFAULT_BLOCK_ELEMENTS = 2**24


def power_of_two_scale(x: jax.Array) -> jax.Array:
  """[] the smallest power of two >= max |x| (1 for an all-zero or non-finite x); no gradient.

  Dividing by a power of two is exact in floating point, so scaled inputs keep every bit.
  """
  x = jax.lax.stop_gradient(x)
  top = jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)
  top = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.ones_like(top))
  _, exponent = jnp.frexp(top)  # top = m * 2^e with 0.5 <= m < 1
  return jnp.ldexp(jnp.ones_like(top), exponent)


def normalize_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x [..., d] -> x / max(||x||_2, eps) along the last axis, as torch.nn.functional.normalize(x, dim=-1).

  The norm is s ||x / s|| with s an exact power of two near max |x| of the row (no gradient), so it
  neither overflows nor underflows; a zero row has norm 0 with gradient 0 (torch's subgradient) and maps
  to 0.
  """
  top = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
  top = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.ones_like(top))
  _, exponent = jnp.frexp(top)  # top = m 2^e, 0.5 <= m < 1
  scale = jnp.ldexp(jnp.ones_like(top), exponent - 1)  # <= top: finite even for the largest floats
  y = x / scale
  sq = jnp.sum(y * y, axis=-1, keepdims=True)
  positive = sq > 0
  norm = scale * jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return x / jnp.maximum(norm, eps)


def _clamped_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """sqrt(max(|a_i - b_j|^2, 1e-12)) [n, m] of points of moderate size (no scaling here)."""
  if a.shape[1] <= EXPLICIT_DIFFERENCES_MAX_DIM:
    diff = a[:, None, :] - b[None, :, :]
    sq = jnp.sum(diff * diff, axis=-1)
  else:  # no [n, m, d] intermediate; float32 cancellation for close points costs accuracy at tiny d
    sq = jnp.sum(a * a, axis=-1)[:, None] + jnp.sum(b * b, axis=-1)[None, :] - 2.0 * (a @ b.T)
  return jnp.sqrt(jnp.maximum(sq, MIN_SQ_DISTANCE))


def cross_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Euclidean distances [n, m] between the rows of a [n, d] and b [m, d], clamped.

  Both sets are shifted by b's mean and divided by one power of two >= their largest coordinate, then
  sqrt(max(|a_i - b_j|^2, 1e-12)) is taken and scaled back: the clamp is relative to the extent of
  the points (1e-6 of it), and no square overflows or underflows for finite inputs. Small problems
  (n * m * d <= 2^22) and d <= 4 use explicit differences, larger ones the expanded form.
  """
  shift = jax.lax.stop_gradient(jnp.mean(b, axis=0))
  a, b = a - shift, b - shift
  scale = power_of_two_scale(jnp.concatenate([a, b], axis=0))
  return scale * _clamped_distance(a / scale, b / scale)


def pairwise_distance(x: jax.Array) -> jax.Array:
  """Euclidean distances [n, n] of the rows of x [n, d] (see `cross_distance`); the diagonal holds
  the clamp value, not 0."""
  return cross_distance(x, x)


class Layout(NamedTuple):
  """n samples in `blocks` blocks of `block` rows; the last block is padded (`padded` >= n rows)."""
  n: int
  block: int
  blocks: int

  @property
  def padded(self) -> int:
    return self.block * self.blocks

  @property
  def dense(self) -> bool:
    return self.blocks == 1


def layout(n: int, block_size: int | None) -> Layout:
  """The row layout for n samples: `block_size` rows per block; None chooses dense for n^2 <= 2^24 and
  blocks of about 2^24 cost entries beyond."""
  if block_size is None:
    block = n if n * n <= DENSE_MAX_ELEMENTS else max(1, DEFAULT_BLOCK_ELEMENTS // n)
  elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"`block_size` must be a positive integer or None, got {block_size!r}.")
  else:
    block = min(n, block_size)
  return Layout(n, block, math.ceil(n / block))


def pad_rows(x: jax.Array, lay: Layout) -> jax.Array:
  """x [n, ...] zero-padded to [padded, ...]."""
  return jnp.pad(x, [(0, lay.padded - lay.n)] + [(0, 0)] * (x.ndim - 1))


def row_map(fn: Callable, lay: Layout):
  """fn(ids) over the row blocks of `lay`, concatenated to [n, ...]; ids [b] are row indices, or None
  for all n rows at once (dense layouts: one call, no gather).

  Blocked layouts run a sequential map whose body is rematerialised (`jax.checkpoint`): reverse mode
  stores each block's indices, not its [b, n] slices.
  """
  if lay.dense:
    return fn(None)
  ids = jnp.arange(lay.padded).reshape(lay.blocks, lay.block)
  out = jax.lax.map(jax.checkpoint(fn, prevent_cse=False), ids)
  return jax.tree.map(lambda o: o.reshape(lay.padded, *o.shape[2:])[:lay.n], out)


@jax.tree_util.register_pytree_node_class
class PointCost:
  """The masked self-cost of a point set, C_ij = scale * sqrt(max(|x_i - x_j|^2, 1e-12)) (i != j),
  C_ii = diagonal_cost, served in rows.

  Attributes:
    points: [padded, d] the points shifted to mean 0 and divided by `scale` (zero padding rows).
    scale: [] the power of two they were divided by (no gradient).
    lay: the row `Layout` (static).
    diagonal_cost: the diagonal's cost, 999 (published) or inf (exact exclusion) (static).
  """

  def __init__(self, points, scale, lay: Layout, diagonal_cost: float):
    self.points, self.scale, self.lay, self.diagonal_cost = points, scale, lay, diagonal_cost

  def tree_flatten(self):
    return (self.points, self.scale), (self.lay, self.diagonal_cost)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  @classmethod
  def of(cls, x: jax.Array, lay: Layout, diagonal_cost: float) -> PointCost:
    """The cost of points x [n, d]; the shift and scale carry no gradient (distances do not change)."""
    x = x - jax.lax.stop_gradient(jnp.mean(x, axis=0))
    scale = power_of_two_scale(x)
    return cls(pad_rows(x / scale, lay), scale, lay, diagonal_cost)

  def _rows(self, ids):
    """(points of the rows `ids` [b, d], diagonal mask [b, padded], valid mask [b, padded]); ids None:
    all rows."""
    cols = jnp.arange(self.lay.padded)
    rows, row_ids = (self.points, cols) if ids is None else (self.points[ids], ids)
    diagonal = row_ids[:, None] == cols[None, :]
    return rows, diagonal, (cols < self.lay.n)[None, :] & ~diagonal

  def distance_rows(self, ids: jax.Array | None) -> jax.Array:
    """[b, padded] the distances of rows `ids` (None: all) to all points, 0 on the diagonal and padding."""
    rows, _, valid = self._rows(ids)
    return jnp.where(valid, self.scale * _clamped_distance(rows, self.points), 0.0)

  def rows(self, ids: jax.Array | None) -> jax.Array:
    """[b, padded] cost rows: distances off the diagonal, `diagonal_cost` on it, +inf on padding."""
    rows, diagonal, valid = self._rows(ids)
    dist = self.scale * _clamped_distance(rows, self.points)
    masked = jnp.where(diagonal, jnp.asarray(self.diagonal_cost, dist.dtype), jnp.inf)
    return jnp.where(valid, dist, masked)

  def max_distance(self) -> jax.Array:
    """[] the largest off-diagonal distance (a pass over all rows)."""
    largest = row_map(lambda ids: jnp.max(self.distance_rows(ids), axis=1), self.lay)
    return jnp.max(largest)


@jax.tree_util.register_pytree_node_class
class MatrixCost:
  """A dense masked self-cost [n, n], served like `PointCost` (one block): off the diagonal the given
  matrix (or its symmetric part), `diagonal_cost` on it.

  Attributes:
    matrix: [n, n] the cost (its diagonal is ignored).
    diagonal_cost: the diagonal's cost (static).
    symmetrize: use (C + C^T) / 2 (for matrices that are not symmetric by construction) (static).
  """

  def __init__(self, matrix, diagonal_cost: float, symmetrize: bool = False):
    self.matrix, self.diagonal_cost, self.symmetrize = matrix, diagonal_cost, symmetrize
    self.lay = Layout(matrix.shape[0], matrix.shape[0], 1)

  def tree_flatten(self):
    return (self.matrix,), (self.diagonal_cost, self.symmetrize)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  def _off_diagonal(self):
    matrix = 0.5 * (self.matrix + self.matrix.T) if self.symmetrize else self.matrix
    return jnp.eye(self.lay.n, dtype=bool), matrix

  def rows(self, ids: None) -> jax.Array:
    """[n, n] the masked cost (dense: `ids` is None, all rows)."""
    del ids
    diagonal, matrix = self._off_diagonal()
    return jnp.where(diagonal, jnp.asarray(self.diagonal_cost, matrix.dtype), matrix)

  def distance_rows(self, ids: None) -> jax.Array:
    """[n, n] the cost with 0 on the diagonal."""
    del ids
    diagonal, matrix = self._off_diagonal()
    return jnp.where(diagonal, 0.0, matrix)

  def max_distance(self) -> jax.Array:
    return jnp.max(self.distance_rows(None))


def point_cost(x: jax.Array, lay: Layout, diagonal_cost: float) -> PointCost | MatrixCost:
  """The masked Euclidean self-cost of points x [n, d]: one [n, n] matrix, computed once, for a dense
  layout; points whose rows are recomputed block by block otherwise."""
  if lay.dense:
    return MatrixCost(pairwise_distance(x), diagonal_cost)
  return PointCost.of(x, lay, diagonal_cost)
