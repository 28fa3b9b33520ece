"""Shot regions and per-shot metrics against hand-computed values and NumPy/scipy references."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rtjax.shots import FEW, MANY, MEDIUM, bin_shots, depth_metrics, label_bins, shot_counts, shot_index, shot_metrics


def test_label_bins_by_hand():
  np.testing.assert_array_equal(label_bins([0.0, 0.99, 1.0, 2.5, -0.5]), [0, 0, 1, 2, -1])
  np.testing.assert_array_equal(label_bins([326, 499, 500, 1999], bin_width=500.0), [0, 0, 1, 3])
  np.testing.assert_array_equal(label_bins([[2.0], [3.0]], bin_width=2.0, origin=1.0), [0, 1])


def test_shot_index_thresholds_by_hand():
  # training histogram: age 30 x 101 (many: > 100), 40 x 100 (medium: not > 100), 50 x 20 (medium: not < 20),
  # 60 x 19 (few), 70 absent (count 0: few)
  train = np.repeat([30, 40, 50, 60], [101, 100, 20, 19])
  test = np.array([30, 40, 50, 60, 70, 30.4])
  np.testing.assert_array_equal(shot_index(test, train), [MANY, MEDIUM, MEDIUM, FEW, FEW, MANY])
  hist = shot_counts(train)
  np.testing.assert_array_equal(hist.bins, [30, 40, 50, 60])
  np.testing.assert_array_equal(hist.counts, [101, 100, 20, 19])
  # other thresholds and a coarser binning: bins of 20 -> [20,40): 101, [40,60): 120, [60,80): 19
  np.testing.assert_array_equal(shot_index(test, train, bin_width=20.0, many=110, few=19),
                                [MEDIUM, MANY, MANY, MEDIUM, MEDIUM, MEDIUM])


@pytest.mark.parametrize("bad, match", [
    (dict(bin_width=0.0), "bin_width"),
    (dict(many=10, few=20), "few"),
])
def test_shot_index_rejects_bad_arguments(bad, match):
  with pytest.raises(ValueError, match=match):
    shot_index([1.0], [1.0, 2.0], **bad)


def test_shot_index_rejects_bad_labels():
  with pytest.raises(ValueError, match="labels"):
    shot_index(np.ones((3, 2)), [1.0])
  with pytest.raises(ValueError, match="finite"):
    shot_index([np.nan], [1.0])
  with pytest.raises(ValueError, match="empty"):
    shot_index([1.0], np.zeros(0))


def _reference(pred, y, shots, mask):
  """float64 NumPy + scipy: per region mean |e|, mean e^2, scipy gmean(|e|)."""
  pred, y, shots, mask = map(np.asarray, (pred, y, shots, mask))
  e = pred.astype(np.float64) - y
  out = {}
  for name, sel in [("all", mask), ("many", mask & (shots == 0)), ("medium", mask & (shots == 1)),
                    ("few", mask & (shots == 2))]:
    out[name] = (np.mean(np.abs(e[sel])), np.mean(e[sel] ** 2), stats.gmean(np.abs(e[sel])), sel.sum())
  return out


def test_shot_metrics_match_scipy_with_mask(x64):
  rng = np.random.default_rng(0)
  y = rng.uniform(0, 100, 50)
  pred = y + rng.normal(0, 5, 50)
  shots = rng.integers(0, 3, 50).astype(np.int32)
  mask = rng.uniform(size=50) > 0.2
  got = jax.jit(shot_metrics)(jnp.asarray(pred), jnp.asarray(y), jnp.asarray(shots), mask=jnp.asarray(mask))
  for name, (mae, mse, gm, count) in _reference(pred, y, shots, mask).items():
    np.testing.assert_allclose(float(got[name]["mae"]), mae, rtol=1e-12)
    np.testing.assert_allclose(float(got[name]["mse"]), mse, rtol=1e-12)
    np.testing.assert_allclose(float(got[name]["gm"]), gm, rtol=1e-12)
    assert int(got[name]["count"]) == count


def test_shot_metrics_by_hand_zero_error_and_empty_region():
  # errors: 1, -3 (many), 0 (medium), no few example
  got = shot_metrics(jnp.array([2.0, 0.0, 5.0]), jnp.array([1.0, 3.0, 5.0]), jnp.array([0, 0, 1]))
  assert float(got["many"]["mae"]) == 2.0 and float(got["many"]["mse"]) == 5.0
  np.testing.assert_allclose(float(got["many"]["gm"]), np.sqrt(3.0), rtol=1e-6)
  assert float(got["medium"]["gm"]) == 0.0  # an exact prediction makes GM 0, as scipy's gmean
  assert float(got["all"]["gm"]) == 0.0 and float(got["all"]["mae"]) == pytest.approx(4 / 3)
  assert int(got["few"]["count"]) == 0 and np.isnan(float(got["few"]["mae"]))


def test_shot_metrics_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="labels"):
    shot_metrics(jnp.zeros(3), jnp.zeros(4), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="shots"):
    shot_metrics(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3))


def _depth_reference(pred, y, member):
  """float64 NumPy, the published formulas: RMSE, MAE, AbsRel, log10, deltas over the member pixels."""
  p, t = np.maximum(pred[member], 1e-3).astype(np.float64), y[member].astype(np.float64)
  ratio = np.maximum(p / t, t / p)
  return {"rmse": np.sqrt(np.mean((p - t) ** 2)), "mse": np.mean((p - t) ** 2), "mae": np.mean(np.abs(p - t)),
          "abs_rel": np.mean(np.abs(p - t) / t), "log10": np.mean(np.abs(np.log10(p) - np.log10(t))),
          "delta1": np.mean(ratio < 1.25), "delta2": np.mean(ratio < 1.25**2), "delta3": np.mean(ratio < 1.25**3),
          "count": member.sum()}


def test_depth_metrics_match_numpy_with_invalid_pixels_and_mask(x64):
  rng = np.random.default_rng(1)
  y = rng.uniform(0.5, 9.5, (2, 6, 7))
  y[0, 0, :3] = 0.0  # invalid (no depth): never counted
  pred = y * rng.uniform(0.6, 1.6, y.shape)
  pred[1, 2, 2] = -1.0  # a negative prediction is clipped to 1e-3
  bins = np.minimum((y * 10).astype(int), 99)
  table = np.full(100, FEW)
  table[20:60], table[60:80] = MANY, MEDIUM
  shots = bin_shots(bins, table)
  mask = rng.uniform(size=y.shape) > 0.25
  got = jax.jit(depth_metrics)(jnp.asarray(pred), jnp.asarray(y), jnp.asarray(shots), mask=jnp.asarray(mask))
  valid = mask & (y > 0)
  for region, member in [("all", valid), ("many", valid & (shots == 0)), ("medium", valid & (shots == 1)),
                         ("few", valid & (shots == 2))]:
    ref = _depth_reference(pred, y, member)
    for k, v in ref.items():
      np.testing.assert_allclose(float(got[region][k]), v, rtol=1e-12, err_msg=f"{region} {k}")


def test_bin_shots_by_hand_and_errors():
  np.testing.assert_array_equal(bin_shots([0, 1, 2, 5, -1], [MANY, MEDIUM, FEW]), [MANY, MEDIUM, FEW, FEW, FEW])
  with pytest.raises(ValueError, match="shot_of_bin"):
    bin_shots([0], [7])
  with pytest.raises(ValueError, match="pred"):
    depth_metrics(jnp.zeros((2, 2), jnp.int32), jnp.ones((2, 2)), jnp.zeros((2, 2), jnp.int32))
  with pytest.raises(ValueError, match="target"):
    depth_metrics(jnp.zeros((2, 2)), jnp.ones((2, 3)), jnp.zeros((2, 2), jnp.int32))
