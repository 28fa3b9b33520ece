"""Eager validation of static properties (ranks, shapes, dtypes, hyper-parameters) with messages that
name the argument."""
from __future__ import annotations

from collections.abc import Sequence

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


def require_square(name: str, x, min_n: int = 0) -> int:
  """Raises ValueError unless `x` is a square [n, n] matrix with n >= min_n; returns n."""
  shape = shape_of(x)
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(f"`{name}` must be a square [n, n] matrix, got shape {shape}.")
  if shape[0] < min_n:
    raise ValueError(f"`{name}` must hold n >= {min_n} points, got shape {shape}.")
  return shape[0]


def require_positive(name: str, value) -> None:
  """Raises ValueError unless the scalar `value` is > 0; a traced value cannot be checked and passes."""
  if isinstance(value, jax.core.Tracer):
    return
  if jnp.ndim(value) != 0:
    raise ValueError(f"`{name}` must be a scalar, got shape {shape_of(value)}.")
  if not float(value) > 0:
    raise ValueError(f"`{name}` must be positive, got {value}.")


def require_static_positive(name: str, value) -> None:
  """Raises ValueError unless `value` is a Python number > 0 (it is static: part of a compiled program)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"`{name}` must be a Python number (it is static under jit), got {type(value).__name__}.")
  if not value > 0:
    raise ValueError(f"`{name}` must be positive, got {value}.")


def upcast(x: jax.Array) -> jax.Array:
  """bfloat16/float16 -> float32: the solvers need at least float32 precision."""
  return x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x


def require_key(name: str, key) -> None:
  """Raises ValueError unless `key` is one PRNG key: a typed key of shape () or a raw uint32 key [2]."""
  dtype, shape = getattr(key, "dtype", None), shape_of(key)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    ok = shape == ()
  else:
    ok = dtype == jnp.uint32 and len(shape) == 1
  if not ok:
    raise ValueError(f"`{name}` must be one jax.random key (jax.random.key(0) of shape (), or a raw uint32 "
                     f"key such as jax.random.PRNGKey(0)), got dtype {dtype} with shape {shape}; vmap over a "
                     "batch of keys.")
