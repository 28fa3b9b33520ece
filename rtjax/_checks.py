"""Eager validation of static properties (ranks, shapes, dtypes) with messages that name the argument."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def shape_of(x) -> tuple[int, ...]:
  return tuple(jnp.shape(x))


def require_float(name: str, x) -> None:
  """Raises ValueError unless `x` has a floating dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"`{name}` must have a floating dtype, got {dtype} with shape {shape_of(x)}.")


def require_rank(name: str, x, ranks: Sequence[int], what: str) -> None:
  """Raises ValueError unless `x.ndim` is one of `ranks`; `what` describes the expected layout."""
  if jnp.ndim(x) not in ranks:
    raise ValueError(f"`{name}` must be {what}, got shape {shape_of(x)}.")


def require_positive(name: str, value) -> None:
  """Raises ValueError unless the (static) scalar `value` is > 0."""
  if isinstance(value, jax.core.Tracer):  # traced: cannot be checked eagerly
    return
  if not float(value) > 0:
    raise ValueError(f"`{name}` must be positive, got {value}.")
