"""Deep imbalanced regression (DIR): many/medium/few-shot regions and the metrics reported per region.

Yang et al. (ICML 2021, "Delving into deep imbalanced regression"; YyzHarry/imbalanced-regression) split
the label range by how often each label occurs in the *training* set. Labels are binned (AgeDB-DIR: one
bin per integer age); a bin with more than `many` training examples is many-shot, fewer than `few`
few-shot, the rest medium-shot. A test label whose bin never occurs in training counts 0: few-shot.

    shots = rtjax.shot_index(test_labels, train_labels, bin_width=1.0)     # [m] in {0, 1, 2}
    metrics = rtjax.shot_metrics(predictions, test_labels, shots)          # {"all": {"mae": ...}, "many": ...}

Metrics are averages over the test *examples* of a region (as the published `shot_metrics`: the summed
errors of a region's labels over their count), not averages of per-bin averages:
- MAE = mean |e|, MSE = mean e², GM = geometric mean of |e| = exp(mean log |e|).
- GM and exact zeros: an example predicted exactly makes GM 0, as `scipy.stats.gmean` and the published
  code (which calls it) give; nothing is floored.
- An empty region has count 0 and NaN metrics (there is nothing to average); the count says why.

Depth estimation (NYUD2-DIR) reports per pixel, over valid pixels of fixed shot bin lists
(`bin_shots`), the published depth metrics (`depth_metrics`): RMSE, MSE, MAE, AbsRel = mean |e| / y,
log10 = mean |log10 ŷ - log10 y|, and δ_k = the fraction of pixels with max(ŷ / y, y / ŷ) < 1.25^k. The
logarithms and ratios need ŷ > 0: predictions are clipped to `min_depth` (1e-3 m) first.

`shot_index` and `bin_shots` are data preparation (NumPy, run once); `shot_metrics` and `depth_metrics`
are pure jnp functions (jit-able; a `mask` keeps shapes static for padded evaluation batches).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FEW", "MANY", "MEDIUM", "SHOTS", "ShotCounts", "bin_shots", "depth_metrics", "label_bins", "shot_counts",
           "shot_index", "shot_metrics"]

SHOTS = ("many", "medium", "few")
MANY, MEDIUM, FEW = 0, 1, 2
METRICS = ("mae", "mse", "gm")


def label_bins(labels, *, bin_width: float = 1.0, origin: float = 0.0) -> np.ndarray:
  """[n] integer bin of each label: floor((label - origin) / bin_width). AgeDB-DIR: width 1 (ages).

  Args:
    labels: [n] (or [n, 1]) real labels.
    bin_width: > 0, in the labels' units.
    origin: the left edge of bin 0.
  """
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1:
    raise ValueError(f"`labels` must be [n] (or [n, 1]) scalar labels, got shape {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.number) or not np.all(np.isfinite(labels)):
    raise ValueError(f"`labels` must be finite real numbers, got dtype {labels.dtype} with shape {labels.shape}.")
  if not (isinstance(bin_width, (int, float)) and bin_width > 0):
    raise ValueError(f"`bin_width` must be a positive number, got {bin_width!r}.")
  return np.floor((labels.astype(np.float64) - origin) / bin_width).astype(np.int64)


class ShotCounts(NamedTuple):
  """The training histogram behind a shot split: `bins` [B] (sorted) and their training `counts` [B]."""
  bins: np.ndarray
  counts: np.ndarray


def shot_counts(train_labels, *, bin_width: float = 1.0, origin: float = 0.0) -> ShotCounts:
  """Training examples per occupied bin (bins sorted ascending)."""
  bins, counts = np.unique(label_bins(train_labels, bin_width=bin_width, origin=origin), return_counts=True)
  return ShotCounts(bins, counts)


def _check_thresholds(many: int, few: int) -> None:
  if not (isinstance(many, int) and isinstance(few, int) and 0 <= few <= many + 1):
    raise ValueError(f"`many` and `few` must be integers with 0 <= few <= many + 1, got many={many!r}, few={few!r}.")


def shot_index(labels, train_labels, *, bin_width: float = 1.0, origin: float = 0.0, many: int = 100,
               few: int = 20) -> np.ndarray:
  """[n] region of each label: MANY (0) if its bin has > `many` training examples, FEW (2) if < `few`,
  else MEDIUM (1). Defaults are AgeDB-DIR's (and the published code's) thresholds.

  Args:
    labels: [n] the labels to classify (e.g. the test labels).
    train_labels: [N] the training labels whose histogram defines the regions.
    bin_width, origin: the binning (`label_bins`), the same for both.
    many, few: the thresholds (integers, few <= many + 1).
  """
  _check_thresholds(many, few)
  hist = shot_counts(train_labels, bin_width=bin_width, origin=origin)
  if hist.bins.size == 0:
    raise ValueError("`train_labels` is empty: no training histogram to split the labels by.")
  bins = label_bins(labels, bin_width=bin_width, origin=origin)
  pos = np.clip(np.searchsorted(hist.bins, bins), 0, hist.bins.size - 1)
  count = np.where(hist.bins[pos] == bins, hist.counts[pos], 0)
  return np.where(count > many, MANY, np.where(count < few, FEW, MEDIUM)).astype(np.int32)


def _region(abs_err: jax.Array, sq_err: jax.Array, member: jax.Array) -> dict[str, jax.Array]:
  count = jnp.sum(member)
  n = count.astype(abs_err.dtype)
  empty = count == 0
  mean = lambda v: jnp.where(empty, jnp.nan, jnp.sum(jnp.where(member, v, 0)) / jnp.maximum(n, 1))
  # log 0 = -inf makes GM exactly 0 for an exact prediction (scipy's gmean); where() keeps the masked-out
  # entries from contributing.
  log_err = jnp.log(jnp.where(member, abs_err, 1))
  return {"mae": mean(abs_err), "mse": mean(sq_err), "gm": jnp.exp(mean(log_err)), "count": count}


def shot_metrics(predictions, labels, shots, *, mask=None) -> dict[str, dict[str, jax.Array]]:
  """MAE, MSE and GM of `predictions` over all examples and per region.

  Args:
    predictions: [n] (or [n, 1]) floating predictions.
    labels: [n] (or [n, 1]) true labels.
    shots: [n] integer region per example (`shot_index`: 0 many, 1 medium, 2 few).
    mask: optional [n] bool, False for padding examples (left out of every region).

  Returns:
    {"all" | "many" | "medium" | "few": {"mae": [], "mse": [], "gm": [], "count": [] int}}; an empty region
    has count 0 and NaN metrics.
  """
  predictions, labels, shots = (jnp.asarray(a) for a in (predictions, labels, shots))
  predictions = predictions.reshape(-1) if predictions.ndim == 2 and predictions.shape[1] == 1 else predictions
  labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
  n = predictions.shape[0] if predictions.ndim == 1 else None
  for name, a in (("predictions", predictions), ("labels", labels), ("shots", shots)) + (
      () if mask is None else (("mask", jnp.asarray(mask)),)):
    if a.ndim != 1 or a.shape[0] != n:
      raise ValueError(f"`{name}` must be [n] with n = len(predictions) {predictions.shape}, got shape {a.shape}.")
  if not jnp.issubdtype(predictions.dtype, jnp.floating):
    raise ValueError(f"`predictions` must be floating, got dtype {predictions.dtype}.")
  if not jnp.issubdtype(shots.dtype, jnp.integer):
    raise ValueError(f"`shots` must be integer region indices (shot_index), got dtype {shots.dtype}.")
  err = predictions - labels.astype(predictions.dtype)
  abs_err, sq_err = jnp.abs(err), jnp.square(err)
  valid = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
  out = {"all": _region(abs_err, sq_err, valid)}
  for index, name in enumerate(SHOTS):
    out[name] = _region(abs_err, sq_err, valid & (shots == index))
  return out


def bin_shots(bins, shot_of_bin) -> np.ndarray:
  """[...] region of each bin index from a fixed table: `shot_of_bin` [B] (MANY/MEDIUM/FEW per bin; e.g.
  NYUD2-DIR's published lists). Bins outside [0, B) are FEW."""
  bins, table = np.asarray(bins), np.asarray(shot_of_bin)
  if table.ndim != 1 or not np.isin(table, (MANY, MEDIUM, FEW)).all():
    raise ValueError(f"`shot_of_bin` must be [B] of MANY/MEDIUM/FEW (0/1/2), got shape {table.shape}.")
  inside = (bins >= 0) & (bins < table.size)
  return np.where(inside, table[np.clip(bins, 0, table.size - 1)], FEW).astype(np.int32)


def _depth_region(pred, target, member) -> dict[str, jax.Array]:
  count = jnp.sum(member)
  mean = lambda v: jnp.where(count == 0, jnp.nan, jnp.sum(jnp.where(member, v, 0)) / jnp.maximum(count, 1))
  err = pred - target
  safe = jnp.where(member, target, 1)  # masked-out pixels (depth 0) never divide
  ratio = jnp.maximum(pred / safe, safe / pred)
  out = {"mse": mean(err**2), "mae": mean(jnp.abs(err)), "abs_rel": mean(jnp.abs(err) / safe),
         "log10": mean(jnp.abs(jnp.log10(pred) - jnp.log10(safe)))}
  out["rmse"] = jnp.sqrt(out["mse"])
  for k in (1, 2, 3):
    out[f"delta{k}"] = mean((ratio < 1.25**k).astype(pred.dtype))
  out["count"] = count
  return out


def depth_metrics(pred, target, shots, *, mask=None, min_depth: float = 1e-3) -> dict[str, dict[str, jax.Array]]:
  """NYUD2-DIR's per-pixel metrics over all pixels and per region.

  Args:
    pred: [...] floating predicted depths (any shape, e.g. [B, H, W]); clipped below at `min_depth`.
    target: [...] true depths, same shape.
    shots: [...] integer region per pixel (e.g. `bin_shots` of the depth bins).
    mask: optional [...] bool, the pixels that count (e.g. NYUD2-DIR's balanced test mask); pixels with
      target <= 0 never count.
    min_depth: > 0, the clip of the predictions (logarithms and ratios need ŷ > 0).

  Returns:
    {"all" | "many" | "medium" | "few": {"rmse", "mse", "mae", "abs_rel", "log10", "delta1", "delta2",
    "delta3": [], "count": [] int}}; an empty region has count 0 and NaN metrics.
  """
  pred, target, shots = (jnp.asarray(a) for a in (pred, target, shots))
  arrays = (("target", target), ("shots", shots)) + (() if mask is None else (("mask", jnp.asarray(mask)),))
  for name, a in arrays:
    if a.shape != pred.shape:
      raise ValueError(f"`{name}` must have the shape of `pred` {pred.shape}, got {a.shape}.")
  if not jnp.issubdtype(pred.dtype, jnp.floating):
    raise ValueError(f"`pred` must be floating, got dtype {pred.dtype}.")
  if not jnp.issubdtype(shots.dtype, jnp.integer):
    raise ValueError(f"`shots` must be integer region indices, got dtype {shots.dtype}.")
  if not (isinstance(min_depth, (int, float)) and min_depth > 0):
    raise ValueError(f"`min_depth` must be a positive number, got {min_depth!r}.")
  target = target.astype(pred.dtype)
  valid = target > 0 if mask is None else jnp.asarray(mask, bool) & (target > 0)
  pred = jnp.maximum(pred, min_depth)
  out = {"all": _depth_region(pred, target, valid)}
  for index, name in enumerate(SHOTS):
    out[name] = _depth_region(pred, target, valid & (shots == index))
  return out
