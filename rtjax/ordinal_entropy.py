"""Ordinal Entropy regularizer (Zhang et al., ICLR 2023), as the authors' published code computes it.

Two forms, both read from the authors' PyTorch code:

* `ordinal_entropy_loss` — the pairwise form on (optionally sampled) samples: needylove/OrdinalEntropy
  `OrdinalEntropy.py` (commit 4a4dd5f) and its copy in needylove/PH-Reg `ordinal_entropy.py` (commit
  25d82cc), which PH-Reg's coordinate task calls as `ordinal_entropy(feature, y_train) * 0.1` with 80
  samples of 100 training points (needylove/PH-Reg `main.py`, commit 5c6bf0c, flag 7; the root repo's
  `main.py` weighs it by 1e-3):

      p_i  = z_i / max(||z_i||_2, 1e-12)                      (F.normalize(features, dim=1))
      d_ij = sqrt(max(||p_i - p_j||^2, 1e-12))                 (euclidean_dist: clamped, not squared)
      w_ij = sqrt(max(||y_i - y_j||^2, 1e-12))                 (same euclidean_dist on the targets)
      w_ij <- (w_ij - min w) / max w                           (min and max over the pairs; max, not max - min)
      L_d  = - mean_{i<j} w_ij d_ij                            (up_triu: mean over the n (n - 1) / 2 pairs)

* `ordinal_entropy_centres_loss` — the class-centre form for discrete labels (age): needylove/OrdinalEntropy
  `AgeEstimation/OrdinalEntropy.py` (HEAD, commit 75fc9d5 of 2023-09-15), identical to needylove/PH-Reg
  `agedb-dir/OrdinalEntropy.py` (commit bd80605):

      c_a  = mean_{i: y_i = a} z_i                             (index_add_ of the raw features / counts)
      p_a  = c_a / max(||c_a||_2, 1e-12)                       (centres normalised after averaging)
      entropy   = mean_{a<b present} w_ab d_ab                 (as above, with the label values as targets)
      tightness = mean_{i: t_i > 0} t_i,  t_i = ||p'_i - p_{y_i}||_2,  p'_i = z_i / max(||z_i||, 1e-12)
      loss = tightness - entropy                               (returned as is and added to the task loss)

Published choices followed (and where this module departs from them):

1. Distances are Euclidean, not squared: `euclidean_dist` clamps the squared distance at 1e-12 and takes
   the square root, so a zero distance reads 1e-6 with zero gradient (finite on duplicate features). The
   authors expand |x|^2 + |y|^2 - 2 x.y; here the squared distance of m points comes from explicit
   differences (m^2 d <= 2^22) or from the expanded form of the mean-centred points at HIGHEST matmul
   precision — the same function with less float32 cancellation (and no TF32 on GPUs).
2. The mean is over the upper triangle (i < j, `up_triu`), not the full matrix.
3. Target weights use the same clamped distance (so min w >= 1e-6, absolute, in the targets' units) and
   are normalised as (w - min w) / max w. Constant targets therefore give w = 1e-6 everywhere and weight
   0, so the loss is exactly 0 — what the published code returns too. Vector targets [n, k] use the
   Euclidean distance (PH-Reg flattens `gt.view(n, -1)`). The targets get no gradient (stop_gradient;
   PH-Reg's `main.py` gives y_train requires_grad=True, but never optimises it).
4. Sampling: the published code draws `random.sample(range(0, len(gt) - 1), k)` — k distinct indices
   from 0..n-2, so the last sample is never drawn (and k > n - 1 raises). Here `num_samples` distinct
   indices are drawn from all n, `jax.random.permutation(key, n)[:num_samples]`, and num_samples >= n
   uses every sample (a deliberate departure). The root file uses k = 10, PH-Reg's coordinate copy 80
   (`COORDINATE_NUM_SAMPLES`, with the weight `COORDINATE_WEIGHT` = 0.1). The pairs' order does not
   matter (the loss is symmetric).
5. Centres are the mean of the *raw* features of each label present in the batch, normalised after
   averaging (not the mean of normalised features). The published code takes torch.unique of the
   batch's labels; here labels are integer classes in [0, num_classes) with static shapes: absent
   classes are masked out of the centre pairs and of min and max of the weights. The label values for
   the weights, |v_a - v_b| clamped as in 3, are the class indices, or `class_values`.
6. Tightness uses sqrt of the per-sample squared distance (sum over the feature dimension, dim=1) and
   drops the entries that are exactly 0 (`_mask = _tightness > 0`) before the mean. A sample alone in
   its class is exactly at its centre; it is dropped by its class count here (not by a bitwise-equality
   accident), which also keeps sqrt away from 0. The version of 2023-01-21 (4a4dd5f) took no sqrt
   (the mean squared distance): `squared_tightness=True`. The August 2023 version (57c2781) and the
   depth/crowd-counting file sum over the batch dimension (dim=0); that variant is not reproduced.
7. Where the published code fails, values are defined: fewer than two classes present (torch.max of an
   empty tensor raises) gives entropy 0; no positive tightness entry (mean of an empty tensor is NaN)
   gives tightness 0. A zero feature row normalises to 0, with F.normalize's derivative 1/1e-12 (large,
   finite). Norms are taken after an exact per-row power-of-two scaling, so no row over- or underflows.

Everything is computed with static shapes (masks, never boolean indexing), compiled once per shape and
setting, and works under jit, vmap (a leading batch of problems) and grad.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rtjax import _checks
from rtjax.costs import MIN_SQ_DISTANCE, normalize_rows, power_of_two_scale

__all__ = ["COORDINATE_NUM_SAMPLES", "COORDINATE_WEIGHT", "NORMALIZE_EPS", "ordinal_entropy_centres_loss",
           "ordinal_entropy_loss"]

COORDINATE_NUM_SAMPLES = 80  # PH-Reg's coordinate-prediction copy (ordinal_entropy.py) samples 80 points
COORDINATE_WEIGHT = 0.1  # ... and adds ordinal_entropy(feature, y_train) * 0.1 to the MSE (main.py, flag 7)
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's eps: z / max(||z||, eps)
_MIN_DISTANCE = math.sqrt(MIN_SQ_DISTANCE)  # 1e-6: euclidean_dist's clamp, as a distance
# Up to this many [m, m, d] elements the squared distances come from explicit differences; beyond, from
# the expanded form of the centred points (a matmul, no [m, m, d] intermediate).
_EXPLICIT_MAX_ELEMENTS = 2**22


def _squared_distances(x: jax.Array, explicit: bool | None = None) -> jax.Array:
  """||x_i - x_j||^2 [m, m] of the rows of x [m, d] (>= 0 up to rounding in the expanded form).

  `explicit`: differences (True) or the expanded form |a|^2 + |b|^2 - 2 a.b of the mean-centred rows
  at HIGHEST precision (False); None chooses by size (`_EXPLICIT_MAX_ELEMENTS`).
  """
  m, d = x.shape
  if explicit is None:
    explicit = m * m * d <= _EXPLICIT_MAX_ELEMENTS
  if explicit:
    diff = x[:, None, :] - x[None, :, :]
    return jnp.sum(diff * diff, axis=-1)
  # A shift leaves every distance unchanged, so its (stopped) gradient is exactly 0.
  x = x - jax.lax.stop_gradient(jnp.mean(x, axis=0))
  xx = jnp.sum(x * x, axis=-1)
  return xx[:, None] + xx[None, :] - 2.0 * jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)


def _feature_distances(p: jax.Array) -> jax.Array:
  """The authors' euclidean_dist(p, p) [m, m]: sqrt(max(||p_i - p_j||^2, 1e-12))."""
  return jnp.sqrt(jnp.maximum(_squared_distances(p), MIN_SQ_DISTANCE))


def _target_distances(y: jax.Array) -> jax.Array:
  """euclidean_dist(y, y) [m, m] of targets y [m, k], no gradient: max(||y_i - y_j||, 1e-6).

  The clamp is absolute (in the targets' units) as published; the squares are taken after an exact
  shift and power-of-two scale, so they neither overflow nor underflow.
  """
  y = jax.lax.stop_gradient(y)
  y = y - jnp.mean(y, axis=0)
  scale = power_of_two_scale(y)
  sq = jnp.maximum(_squared_distances(y / scale), 0.0)
  return jnp.maximum(scale * jnp.sqrt(sq), _MIN_DISTANCE)


def _weighted_mean_distance(p: jax.Array, w: jax.Array, pairs: jax.Array) -> jax.Array:
  """mean over `pairs` [m, m] (bool, i < j) of ((w - min w) / max w) d(p); 0 when there is no pair."""
  d = _feature_distances(p)
  count = jnp.sum(pairs)
  some = count > 0
  w_min = jnp.where(some, jnp.min(jnp.where(pairs, w, jnp.inf)), 0.0)
  w_max = jnp.where(some, jnp.max(jnp.where(pairs, w, 0.0)), 1.0)  # >= 1e-6 (clamp) when some
  weight = jnp.where(pairs, (w - w_min) / w_max, 0.0).astype(d.dtype)
  return jnp.sum(weight * d) / jnp.maximum(count, 1).astype(d.dtype)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _ordinal_entropy_loss(features, targets, key, *, num_samples):
  """`ordinal_entropy_loss` after validation (compiled once per shape and setting)."""
  if num_samples is not None:
    idx = jax.random.permutation(key, features.shape[0])[:num_samples]
    features, targets = features[idx], targets[idx]
  m = features.shape[0]
  pairs = jnp.triu(jnp.ones((m, m), bool), k=1)
  p = normalize_rows(features, NORMALIZE_EPS)
  w = _target_distances(targets.reshape(m, -1))
  return -_weighted_mean_distance(p, w, pairs)


def _check_features(features, min_n: int) -> tuple[int, int]:
  _checks.require_float("features", features)
  _checks.require_rank("features", features, (2,), "a [n, d] matrix")
  n, d = _checks.shape_of(features)
  if n < min_n:
    raise ValueError(f"`features` must hold n >= {min_n} samples, got shape {(n, d)}.")
  if d < 1:
    raise ValueError(f"`features` must have d >= 1 feature dimensions, got shape {(n, d)}.")
  return n, d


def _require_real(name: str, x) -> None:
  dtype = jnp.result_type(x)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"`{name}` must have a real (floating or integer) dtype, got {dtype} with shape "
                     f"{_checks.shape_of(x)}.")


def _check_key(key) -> None:
  if key is None:
    raise ValueError("`key` (a jax.random key) is required when `num_samples` is given.")
  _checks.require_key("key", key)

def _static_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"`{name}` must be a Python int (it is static under jit), got {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
  return int(value)


def ordinal_entropy_loss(
    features: jax.Array,
    targets: jax.Array,
    key: jax.Array | None = None,
    *,
    num_samples: int | None = None,
) -> jax.Array:
  """Ordinal entropy L_d = - mean_{i<j} w_ij ||p_i - p_j|| of a batch (the pairwise form, as published).

  With p_i = z_i / max(||z_i||, 1e-12), distances clamped as sqrt(max(d^2, 1e-12)) for the features and
  the targets alike, and w_ij = (w_ij - min w) / max w over the pairs (see the module docstring for
  every choice and its source). Add `lambda * ordinal_entropy_loss(...)` to the task loss (PH-Reg's
  coordinate task: `num_samples=COORDINATE_NUM_SAMPLES`, lambda = `COORDINATE_WEIGHT`).

  Args:
    features: [n, d] floating features z (n >= 2); bfloat16/float16 are upcast to float32.
    targets: [n] or [n, k] real targets y (vector targets: Euclidean distance); no gradient.
    key: a jax.random key; required when `num_samples` is given.
    num_samples: static int >= 2, or None for all samples. Draws `jax.random.permutation(key, n)
      [:num_samples]` (distinct samples) and evaluates the loss on them; num_samples >= n uses all n.

  Returns:
    [] the loss (<= 0), in the features' (upcast) dtype. Constant targets give exactly 0.
  """
  n, _ = _check_features(features, 2)
  _require_real("targets", targets)
  _checks.require_rank("targets", targets, (1, 2), "[n] or [n, k]")
  tshape = _checks.shape_of(targets)
  if tshape[0] != n:
    raise ValueError(f"`features` and `targets` must hold the same number of samples n, got features "
                     f"{_checks.shape_of(features)} and targets {tshape}.")
  if len(tshape) == 2 and tshape[1] < 1:
    raise ValueError(f"`targets` must have k >= 1 components, got shape {tshape}.")
  if num_samples is not None:
    num_samples = _static_int("num_samples", num_samples, 2)
    _check_key(key)
    if num_samples >= n:
      num_samples, key = None, None
  features = _checks.upcast(jnp.asarray(features))
  targets = jnp.asarray(targets)
  # Floating targets keep their precision for the weights (cast to the features' dtype after); integers
  # take the features' dtype.
  floating = jnp.issubdtype(targets.dtype, jnp.floating)
  targets = _checks.upcast(targets) if floating else targets.astype(features.dtype)
  return _ordinal_entropy_loss(features, targets, key, num_samples=num_samples)


@functools.partial(jax.jit, static_argnames=("num_classes", "squared_tightness"))
def _centres_loss(features, labels, class_values, *, num_classes, squared_tightness):
  """`ordinal_entropy_centres_loss` after validation (compiled once per shape and setting)."""
  dtype = features.dtype
  valid = (labels >= 0) & (labels < num_classes)
  ids = jnp.where(valid, labels, 0)
  sums = jax.ops.segment_sum(jnp.where(valid[:, None], features, 0.0), ids, num_segments=num_classes)
  counts = jax.ops.segment_sum(valid.astype(dtype), ids, num_segments=num_classes)
  present = counts > 0
  p = normalize_rows(sums / jnp.maximum(counts, 1.0)[:, None])  # normalised class centres [C, d]

  values = jnp.arange(num_classes, dtype=dtype) if class_values is None else class_values  # own precision
  w = _target_distances(values.reshape(num_classes, 1))
  pairs = jnp.triu(jnp.ones((num_classes, num_classes), bool), k=1) & present[:, None] & present[None, :]
  entropy = _weighted_mean_distance(p, w, pairs)

  diff = normalize_rows(features, NORMALIZE_EPS) - p[ids]
  sq = jnp.sum(diff * diff, axis=-1)
  keep = valid & (counts[ids] > 1) & (sq > 0)
  t = sq if squared_tightness else jnp.sqrt(jnp.where(keep, sq, 1.0))
  tightness = jnp.sum(jnp.where(keep, t, 0.0)) / jnp.maximum(jnp.sum(keep), 1).astype(dtype)
  return tightness - entropy


def ordinal_entropy_centres_loss(
    features: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    class_values: jax.Array | None = None,
    squared_tightness: bool = False,
) -> jax.Array:
  """Ordinal entropy of class centres, tightness - entropy (the age-estimation form, as published).

      p_a       = normalize(mean_{i: y_i = a} z_i)                     (classes a present in the batch)
      entropy   = mean_{a<b} ((w_ab - min w) / max w) sqrt(max(||p_a - p_b||^2, 1e-12)),
                  w_ab = max(|v_a - v_b|, 1e-6)
      tightness = mean_{i: t_i > 0} t_i,   t_i = ||normalize(z_i) - p_{y_i}||   (squared: t_i^2)
      loss      = tightness - entropy

  The published code uses the unique label values of the batch; here labels are class indices with a
  static number of classes, absent classes masked out. Samples alone in their class sit exactly at
  their centre and are left out of the tightness mean (as the published `> 0` mask does). Fewer than
  two classes present give entropy 0; no sample to tighten gives tightness 0.

  Args:
    features: [n, d] floating features z (n >= 1); bfloat16/float16 are upcast to float32.
    labels: [n] integer class indices in [0, num_classes); samples with labels outside are ignored
      (e.g. -1 for a missing label).
    num_classes: static int >= 1, the number of classes C.
    class_values: optional [C] real value v_a of each class for the weights (no gradient); default the
      class indices, v_a = a (integer labels such as ages).
    squared_tightness: mean squared distance t_i^2 (the January 2023 code) instead of t_i (the current
      code and PH-Reg's copy).

  Returns:
    [] the loss, in the features' (upcast) dtype.
  """
  n, _ = _check_features(features, 1)
  _checks.require_rank("labels", labels, (1,), "an [n] vector of class indices")
  ldtype = jnp.result_type(labels)
  if not jnp.issubdtype(ldtype, jnp.integer):
    raise ValueError(f"`labels` must have an integer dtype (class indices), got {ldtype} with shape "
                     f"{_checks.shape_of(labels)}.")
  if _checks.shape_of(labels)[0] != n:
    raise ValueError(f"`features` and `labels` must hold the same number of samples n, got features "
                     f"{_checks.shape_of(features)} and labels {_checks.shape_of(labels)}.")
  num_classes = _static_int("num_classes", num_classes, 1)
  if not isinstance(squared_tightness, bool):
    raise ValueError(f"`squared_tightness` must be a bool, got {type(squared_tightness).__name__}.")
  features = _checks.upcast(jnp.asarray(features))
  if class_values is not None:
    _require_real("class_values", class_values)
    if _checks.shape_of(class_values) != (num_classes,):
      raise ValueError(f"`class_values` must have shape (num_classes,) = ({num_classes},), got "
                       f"{_checks.shape_of(class_values)}.")
    class_values = jnp.asarray(class_values)
    if not jnp.issubdtype(class_values.dtype, jnp.floating):
      class_values = class_values.astype(features.dtype)
    class_values = _checks.upcast(class_values)
  labels = jnp.asarray(labels)
  if labels.dtype.itemsize < 4:  # so that num_classes fits the comparisons
    labels = labels.astype(jnp.int32)
  return _centres_loss(features, labels, class_values, num_classes=num_classes,
                       squared_tightness=squared_tightness)
