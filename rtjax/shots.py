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

`shot_index` is data preparation (NumPy, run once); `shot_metrics` is a pure jnp function (jit-able, a
`mask` keeps shapes static for padded evaluation batches).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FEW", "MANY", "MEDIUM", "SHOTS", "ShotCounts", "label_bins", "shot_counts", "shot_index",
           "shot_metrics"]

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
