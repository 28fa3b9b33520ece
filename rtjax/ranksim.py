"""RankSim: the ranking-similarity regularizer for deep imbalanced regression (Gong, Mori & Tung, ICML 2022).

As computed by the authors' published code (BorealisAI/ranksim-imbalanced-regression, `ranksim.py` and
`ranking.py`):

    keep one sample per unique label, drawn at random          (m samples kept)
    S_ij   = <x_i / max(|x_i|, 1e-12), x_j / max(|x_j|, 1e-12)>  (cosine similarity, F.normalize)
    L_ij   = -|y_i - y_j|                                       (no gradient)
    rank(s)_j = (position of s_j in s sorted in descending order + 1) / m
    loss   = sum_i mean_j (rank(S_i)_j - rank(L_i)_j)^2         (i, j over the kept samples)

The feature ranks are piecewise constant; their gradient is the blackbox-differentiation rule of
Vlastelica et al. (ICLR 2020) that the published `TrueRanker` implements: for an incoming cotangent g,

    d rank / d s  ~  -(rank(s) - rank(s + lambda g)) / (lambda + 1e-8).

The largest score gets rank 1/m, the smallest m/m. The training loss is L = L_task + gamma * loss with
the published gamma = 100 (`PUBLISHED_WEIGHT`) and lambda = 2 (`DEFAULT_INTERPOLATION`).

Ties. torch.argsort is not stable (on CPU it is not, in practice, for rows of more than a few entries),
so the published code leaves the order of tied scores to the sort implementation. Here ties are broken
by sample index exactly as the published composition argsort(argsort(s).flip()) does with a stable
sort: among equal scores the one with the larger index ranks first (smaller rank). Label ties are
common with integer labels (ages): y_j = y_i - d and y_i + d tie in row i. Feature ties come from
duplicate or zero feature rows. (With duplicate labels the published code also reorders the kept samples
by label value, which moves ties; rtjax keeps batch order.) The sign of zero is ignored (-0.0 ties with
+0.0, as in torch). Rank differences are taken between whole positions, (p_f - p_l) / m, so equal
positions differ by exactly 0; the published float difference of two quotients can leave an ulp, which
then decides the order of tied scores in the perturbed ranking of the backward pass.

Everything has static shapes: the kept samples are a bool mask [n], masked samples rank after all kept
ones, are excluded from the normalisation m and contribute nothing, so the loss compiles once per shape
and works under jit, vmap and grad.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rtjax import _checks
from rtjax.costs import normalize_rows

__all__ = ["DEFAULT_INTERPOLATION", "PUBLISHED_WEIGHT", "blackbox_rank", "normalised_rank", "ranksim_loss",
           "unique_label_mask"]

DEFAULT_INTERPOLATION = 2.0  # lambda of the blackbox gradient, as published for all data sets
PUBLISHED_WEIGHT = 100.0  # gamma, the weight of the regularizer in the published training runs
_NORMALIZE_EPS = 1e-12  # F.normalize's default eps
_BLACKBOX_EPS = 1e-8  # TrueRanker's guard in the denominator


def _rank_positions(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Integer positions [..., m] of each entry of `scores` in descending order among the kept entries.

  Kept entries get 0 .. (number kept - 1); masked ones come after them. Ties: larger index first, the
  result of argsort(argsort(s)[::-1]) with a stable sort. A single sort on (kept, score, index) keeps
  masked entries out of the kept ones' positions whatever their values (even +-inf or NaN).
  """
  # -0.0 and +0.0 are distinct in lax.sort's total order but tie in torch's comparisons.
  scores = jnp.where(scores == 0, jnp.zeros_like(scores), scores)
  axis = scores.ndim - 1
  index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, axis)
  _, _, ascending = jax.lax.sort((mask.astype(jnp.int32), scores, index), dimension=axis, num_keys=2,
                                 is_stable=True)
  descending = jnp.flip(ascending, axis=axis)  # kept entries, largest first, then the masked ones
  # The inverse permutation (the position of every entry) by a scatter, not a second sort: XLA's CPU sort
  # is the cost of this loss (~48 ms per 1000 x 1000 argsort).
  m = scores.shape[axis]
  rows = descending.reshape(-1, m)
  inverse = jax.vmap(lambda p: jnp.zeros((m,), p.dtype).at[p].set(jnp.arange(m, dtype=p.dtype)))(rows)
  return inverse.reshape(scores.shape)


def _rank_numbers(scores: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(descending position + 1) among the kept entries, as exact whole numbers in the dtype of `scores`
  (0 at masked entries), and the count of kept entries per row [..., 1] (at least 1)."""
  numbers = (_rank_positions(scores, mask) + 1).astype(scores.dtype)
  count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1).astype(scores.dtype)
  return jnp.where(mask, numbers, jnp.zeros_like(numbers)), count


@jax.jit
def _normalised_rank(scores: jax.Array, mask: jax.Array) -> jax.Array:
  numbers, count = _rank_numbers(scores, mask)
  return numbers / count


def _check_scores(scores, mask) -> jax.Array:
  _checks.require_float("scores", scores)
  if jnp.ndim(scores) < 1:
    raise ValueError(f"`scores` must be [..., m] with at least one axis, got shape {_checks.shape_of(scores)}.")
  if mask is None:
    return jnp.ones(jnp.shape(scores), bool)
  if jnp.result_type(mask) != jnp.bool_:
    raise ValueError(f"`mask` must be a bool array, got {jnp.result_type(mask)} with shape "
                     f"{_checks.shape_of(mask)}.")
  try:
    return jnp.broadcast_to(mask, jnp.shape(scores))
  except ValueError:
    raise ValueError(f"`mask` must broadcast to the shape of `scores` {_checks.shape_of(scores)}, got shape "
                     f"{_checks.shape_of(mask)}.") from None


def _check_interpolation(interpolation) -> None:
  _checks.require_static_positive("interpolation", interpolation)
  if not math.isfinite(interpolation):
    raise ValueError(f"`interpolation` must be finite, got {interpolation}.")


def normalised_rank(scores: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """The published `rank_normalised` along the last axis, among the entries where `mask` is True.

  Args:
    scores: [..., m] floating scores.
    mask: optional bool, broadcastable to `scores`: the entries that take part (all by default).

  Returns:
    [..., m] of the dtype of `scores`: (descending position + 1) / (number of kept entries in the row)
    at kept entries (largest -> 1/m', smallest -> m'/m'), 0 at masked ones. Ties go to the larger index
    first. No gradient (piecewise constant); see `blackbox_rank` for the one used in training.
  """
  mask = _check_scores(scores, mask)
  scores = jnp.asarray(scores)
  return jax.lax.stop_gradient(_normalised_rank(scores, mask))


# The blackbox ranker works on the whole rank numbers 1..m, not on their normalised values: XLA may round
# a division by m differently in different fusions (x * (1 / m) or x / m), and equal positions must give
# an exactly zero difference (r - r' in the backward, feature - label rank in the loss); a 1-ulp residue
# would perturb tied scores and turn into a spurious O(1 / m) gradient. Differences are scaled by 1 / m
# after subtracting, which agrees with the published (r - r') to rounding.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _blackbox_numbers(scores, mask, interpolation):
  del interpolation
  return _rank_numbers(scores, mask)[0]


def _blackbox_numbers_fwd(scores, mask, interpolation):
  del interpolation
  numbers, count = _rank_numbers(scores, mask)
  return numbers, (scores, mask, numbers, count)


def _blackbox_numbers_bwd(interpolation, residuals, cotangent):
  scores, mask, numbers, count = residuals
  # TrueRanker.backward on the normalised ranks r = numbers / m, whose cotangent is cotangent * m.
  perturbed, _ = _rank_numbers(scores + interpolation * (cotangent * count), mask)
  grad = -((numbers - perturbed) / count) / (interpolation + _BLACKBOX_EPS)
  return jnp.where(mask, grad, jnp.zeros_like(grad)), None


_blackbox_numbers.defvjp(_blackbox_numbers_fwd, _blackbox_numbers_bwd)


def blackbox_rank(
    scores: jax.Array,
    mask: jax.Array | None = None,
    *,
    interpolation: float = DEFAULT_INTERPOLATION,
) -> jax.Array:
  """`normalised_rank` with the blackbox gradient of the published `TrueRanker`.

  The value is `normalised_rank(scores, mask)`. For a cotangent g the vector-Jacobian product is

      -(rank(scores) - rank(scores + interpolation * g)) / (interpolation + 1e-8),

  both ranks among the kept entries; masked entries get a zero gradient.

  Args:
    scores: [..., m] floating scores.
    mask: optional bool, broadcastable to `scores`: the entries that take part (all by default).
    interpolation: lambda > 0, the size of the perturbation (a Python number, static under jit).

  Returns:
    [..., m] normalised ranks, 0 at masked entries.
  """
  mask = _check_scores(scores, mask)
  _check_interpolation(interpolation)
  return _blackbox_rank(jnp.asarray(scores), mask, interpolation=float(interpolation))


@functools.partial(jax.jit, static_argnames=("interpolation",))
def _blackbox_rank(scores, mask, *, interpolation):
  count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1).astype(scores.dtype)
  return _blackbox_numbers(scores, mask, interpolation) / count


def _check_targets(targets, n: int | None = None) -> None:
  _checks.require_rank("targets", targets, (1, 2), "[n] or [n, k]")
  dtype = jnp.result_type(targets)
  shape = _checks.shape_of(targets)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"`targets` must have a floating or integer dtype, got {dtype} with shape {shape}.")
  if n is not None and shape[0] != n:
    raise ValueError(f"`features` and `targets` must hold the same number of samples n, got features with "
                     f"n = {n} and targets {shape}.")
  if len(shape) == 2 and shape[1] < 1:
    raise ValueError(f"`targets` [n, k] must have k >= 1, got shape {shape}.")


@jax.jit
def _unique_label_mask(targets: jax.Array, key: jax.Array) -> jax.Array:
  n = targets.shape[0]
  labels = targets.reshape(n, -1)
  same = jnp.all(labels[:, None, :] == labels[None, :, :], axis=-1)  # [n, n]; exact, in the label dtype
  same = same | jnp.eye(n, dtype=bool)  # a NaN label is its own group rather than no group
  # Distinct random priorities: the kept sample of a group is uniform among its members (random.choice).
  priority = jax.random.permutation(key, n)
  best = jnp.max(jnp.where(same, priority[None, :], -1), axis=1)
  return priority == best


def unique_label_mask(targets: jax.Array, key: jax.Array) -> jax.Array:
  """Bool mask [n] keeping one sample per unique label, each chosen uniformly at random with `key`.

  Labels are equal when their rows are identical (exact comparison in the targets' dtype; a NaN label
  is unique). With all labels distinct every sample is kept, whatever `key`.

  Args:
    targets: [n] or [n, k] targets (floating or integer).
    key: a PRNG key (`jax.random.key` or `jax.random.PRNGKey`).

  Returns:
    [n] bool, True at the kept samples.
  """
  _check_targets(targets)
  _checks.require_key("key", key)
  return _unique_label_mask(jnp.asarray(targets), key)


def _label_distances(targets: jax.Array, dtype) -> jax.Array:
  """|y_i - y_j| [n, n] (Euclidean for [n, k] targets), in `dtype` (integers are converted)."""
  n = targets.shape[0]
  labels = targets.reshape(n, -1)
  # Floating labels keep their precision (float64 targets with float32 features); integers convert.
  labels = labels.astype(jnp.promote_types(labels.dtype, dtype))
  diff = labels[:, None, :] - labels[None, :, :]
  if labels.shape[1] == 1:
    distance = jnp.abs(diff[..., 0])  # exactly the published |y_i - y_j| (no square and root)
  else:
    distance = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
  return distance


@functools.partial(jax.jit, static_argnames=("interpolation",))
def _ranksim_loss(features, targets, key, *, interpolation):
  """`ranksim_loss` after validation (compiled once per shape and interpolation)."""
  n = features.shape[0]
  kept = _unique_label_mask(targets, key)
  pairs = jnp.broadcast_to(kept[None, :], (n, n))  # row i ranks the kept samples j
  x = normalize_rows(features.reshape(n, math.prod(features.shape[1:])))
  # Full float32 products: TF32/bf16 passes on accelerators would reorder near-equal similarities.
  similarity = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  label_numbers, _ = _rank_numbers(-_label_distances(targets, features.dtype), pairs)
  label_numbers = jax.lax.stop_gradient(label_numbers).astype(features.dtype)  # whole numbers: exact
  feature_numbers = _blackbox_numbers(similarity, pairs, interpolation)
  m = jnp.sum(kept).astype(features.dtype)
  # (r_f - r_l) = (numbers_f - numbers_l) / m: exactly 0 where the positions agree (see _blackbox_numbers).
  squared = jnp.where(pairs, ((feature_numbers - label_numbers) / m) ** 2, 0.0)
  per_row = jnp.sum(squared, axis=1) / m  # F.mse_loss: the mean over the m kept samples
  return jnp.sum(jnp.where(kept, per_row, 0.0))


def ranksim_loss(
    features: jax.Array,
    targets: jax.Array,
    key: jax.Array,
    *,
    interpolation: float = DEFAULT_INTERPOLATION,
) -> jax.Array:
  """RankSim regularizer of a batch, as the published `batchwise_ranking_regularizer` computes it.

  One sample per unique label is kept, drawn with `key` (`unique_label_mask`; with all labels distinct
  every sample is kept and `key` does not matter). Over the m kept samples,

      loss = sum_i mean_j (rank(S_i)_j - rank(-|y_i - y|)_j)^2,

  S the cosine similarities of the flattened features, ranks normalised to (1/m .. m/m) with the
  largest value first and ties broken by index (larger index first; see the module docstring). The
  feature ranks carry the blackbox gradient (`blackbox_rank`) with parameter `interpolation`; the
  label ranks and the targets get no gradient. Multiply by `PUBLISHED_WEIGHT` (gamma = 100) to match
  the published training loss. A batch with a single label (m = 1) gives 0 with zero gradient.

  Derivatives: reverse mode only, and it is the published blackbox surrogate, not the derivative of the
  (piecewise-constant) loss. Forward mode (`jvp`, `jacfwd`) is refused by JAX for the custom VJP
  ("can't apply forward-mode autodiff (jvp) to a custom_vjp function"); reverse-over-reverse (e.g.
  `jax.hessian` via `jacrev`) differentiates the surrogate gradient field, which is piecewise smooth.

  Args:
    features: [n, d] (or [n, ...], flattened to [n, -1]) floating features, n >= 2; bfloat16/float16
      are upcast to float32.
    targets: [n] or [n, k] floating or integer labels; for [n, k] the label distance is the Euclidean
      norm of y_i - y_j and equal labels are identical rows.
    key: a PRNG key (`jax.random.key` or `jax.random.PRNGKey`); vmap over a batch of keys for a batch
      of problems.
    interpolation: lambda > 0 of the blackbox gradient (a Python number, static under jit).

  Returns:
    [] the loss, in the (upcast) dtype of `features`.
  """
  _checks.require_float("features", features)
  if jnp.ndim(features) < 2:
    raise ValueError(f"`features` must be [n, d] or [n, ...] (at least 2 axes), got shape "
                     f"{_checks.shape_of(features)}.")
  n = _checks.shape_of(features)[0]
  if n < 2:
    raise ValueError(f"RankSim needs n >= 2 samples, got features {_checks.shape_of(features)}.")
  _check_targets(targets, n)
  _checks.require_key("key", key)
  _check_interpolation(interpolation)
  features = _checks.upcast(jnp.asarray(features))
  targets = jnp.asarray(targets)
  if jnp.issubdtype(targets.dtype, jnp.floating):
    targets = _checks.upcast(targets)
  return _ranksim_loss(features, targets, key, interpolation=float(interpolation))
