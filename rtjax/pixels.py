"""Pixel-wise ROT-Reg (dense targets such as depth): `rot_loss` on a fixed number of valid pixels.

As in the published code: the feature and target maps are nearest-downsampled by `stride`, the pixels
of the whole batch are pooled, pixels whose target is <= `min_target` (missing depth) are invalid, and
`num_pixels` valid pixels are drawn at random without replacement. Here the draw has a static size
(Gumbel top-k with a PRNG key, no boolean indexing), so the loss is jit/vmap-safe and compiles for TPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rtjax import _checks
from rtjax.ot import DEFAULT_DIAGONAL_COST
from rtjax.rot import DEFAULT_EPSILON, RotDiagnostics, rot_loss
from rtjax.sinkhorn import SolverOptions

__all__ = ["pixel_rot_loss", "sample_valid_pixels"]


def sample_valid_pixels(valid: jax.Array, key: jax.Array, num_pixels: int) -> jax.Array:
  """Indices [num_pixels] into `valid` [N] (bool), drawn uniformly without replacement among valid.

  Static shapes (Gumbel top-k). When fewer than `num_pixels` entries are valid, all valid ones are
  taken and the remaining slots repeat valid ones drawn at random; when none is valid the indices are
  arbitrary (callers must check `valid.any()`).
  """
  if jnp.ndim(valid) != 1 or jnp.shape(valid)[0] < num_pixels:
    raise ValueError(
        f"`valid` must be a vector with at least num_pixels={num_pixels} entries, got shape "
        f"{_checks.shape_of(valid)}.")
  order_key, fill_key = jax.random.split(key)
  scores = jnp.where(valid, jax.random.gumbel(order_key, valid.shape), -jnp.inf)
  _, order = jax.lax.top_k(scores, num_pixels)  # valid pixels first, in random order
  num_valid = jnp.sum(valid)
  fill = jax.random.randint(fill_key, (num_pixels,), 0, jnp.maximum(num_valid, 1))
  slot = jnp.arange(num_pixels)
  return jnp.where(slot < num_valid, order, order[jnp.minimum(fill, num_pixels - 1)])


def pixel_rot_loss(
    feature_map: jax.Array,
    target_map: jax.Array,
    key: jax.Array,
    *,
    stride: int = 8,
    num_pixels: int = 200,
    min_target: float = 1e-3,
    epsilon: float | jax.Array = DEFAULT_EPSILON,
    normalize: bool = True,
    diagonal_cost: float = DEFAULT_DIAGONAL_COST,
    block_size: int | None = None,
    solver: SolverOptions | None = None,
    return_diagnostics: bool = False,
) -> jax.Array | tuple[jax.Array, RotDiagnostics]:
  """ROT-Reg for pixel-wise targets (depth): `rot_loss` on `num_pixels` valid pixels drawn with `key`.

  Scarce valid pixels (the published code crashes): if fewer than `num_pixels` are valid, all valid
  pixels are used and the remaining slots repeat valid pixels drawn at random (duplicates have zero
  distance, which the loss handles); if none is valid the loss is 0 with zero gradient. Derivatives
  w.r.t. the features and epsilon are those of `rot_loss` (every order).

  Args:
    feature_map: [B, H, W, C] floating features (NHWC).
    target_map: [B, H, W] floating targets.
    key: PRNG key; the same key draws the same pixels.
    stride: downsampling factor (default 8, as published).
    num_pixels: pixels drawn per call (default 200, as published; thousands are fine with block_size).
    min_target: pixels with target <= this are invalid (default 1e-3).
    epsilon, normalize, diagonal_cost, block_size, solver: as for `rot_loss`. The paper uses
      epsilon (gamma) = 0.05 and lambda = 10 on NYUD2-DIR.
    return_diagnostics: also return the `RotDiagnostics` of the two solves.

  Returns:
    [] scalar loss, or (loss, RotDiagnostics).
  """
  _checks.require_rank("feature_map", feature_map, (4,), "an NHWC map [B, H, W, C]")
  _checks.require_rank("target_map", target_map, (3,), "a map [B, H, W]")
  if jnp.shape(feature_map)[:3] != jnp.shape(target_map):
    raise ValueError(
        f"`feature_map` [B, H, W, C] and `target_map` [B, H, W] must share B, H, W, got "
        f"{_checks.shape_of(feature_map)} and {_checks.shape_of(target_map)}.")
  if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or num_pixels < 2:
    raise ValueError(f"`stride` must be an integer >= 1 and `num_pixels` >= 2, got {stride} and {num_pixels}.")
  features = feature_map[:, ::stride, ::stride, :]  # nearest downsampling, as torch 'nearest'
  targets = target_map[:, ::stride, ::stride]
  features = features.reshape(-1, features.shape[-1])
  targets = targets.reshape(-1)
  if targets.shape[0] < num_pixels:
    raise ValueError(
        f"`num_pixels`={num_pixels} exceeds the {targets.shape[0]} pixels left after stride {stride} "
        f"on target_map {_checks.shape_of(target_map)}.")
  valid = targets > min_target
  index = sample_valid_pixels(valid, key, num_pixels)
  loss, diagnostics = rot_loss(
      features[index], targets[index], epsilon=epsilon, normalize=normalize, diagonal_cost=diagonal_cost,
      block_size=block_size, solver=solver, return_diagnostics=True)
  loss = jnp.where(jnp.any(valid), loss, jnp.zeros_like(loss))
  return (loss, diagnostics) if return_diagnostics else loss
