"""Coordinate-prediction data, loader, training program and the experiment entry point."""
import json

import numpy as np
import pytest

from rtjax import coordinate
from rtjax.data import DATASETS, coordinate_dataset, load_npz, mix_coordinates, sample_shape, split


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_layout_and_determinism(name):
  data = coordinate_dataset(name, seed=3, num_points=400)
  assert data.x.shape == (400, 100) and data.y.shape == (400, 3)
  assert data.x.dtype == np.float32
  a, b, c = data.y.T
  np.testing.assert_allclose(data.x[:, :4], np.stack([a + b + c, a + b - c, a - b + c, -a + b + c], 1), rtol=1e-5,
                             atol=1e-4)
  again = coordinate_dataset(name, seed=3, num_points=400)
  np.testing.assert_array_equal(data.x, again.x)
  other = coordinate_dataset(name, seed=4, num_points=400)
  assert not np.array_equal(data.y, other.y)
  # Noise columns are mixtures of other points of the same shape: unmix them and check they lie on it.
  unmix = np.linalg.pinv(mix_coordinates(np.eye(3)))
  noise_points = data.x[:, 4:].reshape(-1, 4) @ unmix
  assert noise_points.shape == (400 * 24, 3)
  assert not np.allclose(noise_points[:400], data.y)


def test_torus_radii():
  p = sample_shape("torus", 5000, seed=0)
  ring = np.hypot(p[:, 0], p[:, 1])
  np.testing.assert_allclose(np.hypot(ring - 4.0, p[:, 2]), 1.0, atol=1e-9)  # tube radius 1 around R=4
  assert abs(ring.mean() - 4.0) < 0.1 and p[:, 2].min() > -1 - 1e-9


def test_circle_is_a_rotated_unit_circle_on_1000_angles():
  p = sample_shape("circle", 3000, seed=1)
  np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-9)
  _, s, _ = np.linalg.svd(p - p.mean(0))
  assert s[2] < 1e-8 * s[0]  # planar
  assert not np.allclose(np.abs(p[:, 2]), 0.0)  # the plane is rotated out of z = 0
  assert len(np.unique(np.round(p, 9), axis=0)) <= 1000


def test_swiss_roll_and_mammoth():
  p = sample_shape("swiss_roll", 2000, seed=2)
  t = np.hypot(p[:, 0], p[:, 2])
  assert t.min() >= 1.5 * np.pi - 1e-9 and t.max() <= 4.5 * np.pi + 1e-9
  assert 0 <= p[:, 1].min() and p[:, 1].max() <= 21
  m = sample_shape("mammoth", 3000, seed=0)
  assert m.shape == (3000, 3) and len(np.unique(m, axis=0)) == 3000  # drawn without replacement


def test_split_rule():
  data = coordinate_dataset("torus", 0, num_points=300)
  train, val, test = split(data)
  assert (len(train.x), len(val.x), len(test.x)) == (100, 100, 100)
  np.testing.assert_array_equal(val.y, data.y[100:200])


def test_npz_loader(tmp_path):
  rng = np.random.default_rng(0)
  good = tmp_path / "good.npz"
  np.savez(good, data=rng.normal(size=(250, 100)), label=rng.normal(size=(250, 3)))
  loaded = load_npz(good)
  assert loaded.x.shape == (250, 100) and loaded.y.dtype == np.float32
  bad_cases = {
      "missing.npz": dict(data=np.ones((250, 100))),
      "shape.npz": dict(data=np.ones((250, 100)), label=np.ones((250, 2))),
      "count.npz": dict(data=np.ones((250, 100)), label=np.ones((249, 3))),
      "small.npz": dict(data=np.ones((150, 100)), label=np.ones((150, 3))),
      "nan.npz": dict(data=np.full((250, 100), np.nan), label=np.ones((250, 3))),
  }
  for name, arrays in bad_cases.items():
    np.savez(tmp_path / name, **arrays)
    with pytest.raises(ValueError, match=name):
      load_npz(tmp_path / name)
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(ValueError, match="Cannot read"):
    load_npz(tmp_path / "text.npz")


def test_vmapped_seeds_equal_single_seed_runs():
  data = coordinate_dataset("circle", 0, num_points=300)
  protocol = coordinate.Protocol(epochs=20, eval_every=10)
  together, _, _ = coordinate.train_method(data, "mt+ot", [0, 1], lam=1.0, protocol=protocol, progress=False)
  for i, seed in enumerate([0, 1]):
    alone, _, _ = coordinate.train_method(data, "mt+ot", [seed], lam=1.0, protocol=protocol, progress=False)
    np.testing.assert_allclose(alone["test_mse"][0], together["test_mse"][i], rtol=1e-4)
    assert alone["best_epoch"][0] == together["best_epoch"][i]


def test_best_by_validation_selection():
  data = coordinate_dataset("torus", 0, num_points=300)
  protocol = coordinate.Protocol(epochs=40, eval_every=10)
  summary, fit, _ = coordinate.train_method(data, "baseline", [0], protocol=protocol, progress=False)
  history = np.asarray(fit.val_history[0])
  assert summary["val_mse"][0] == pytest.approx(history.min())
  assert summary["best_epoch"][0] == 10 * (int(np.argmin(history)) + 1)


def test_experiment_end_to_end(tmp_path):
  from experiments import coordinate as experiment
  npz = tmp_path / "own.npz"
  own = coordinate_dataset("torus", 5, num_points=260)
  np.savez(npz, data=own.x, label=own.y)
  report = experiment.main(["--datasets", "torus", "--seeds", "2", "--epochs", "200", "--sweep",
                            "--sweep-lams", "1,10", "--sweep-gammas", "0.1", "--sweep-extra", "1000:0.1", "--sweep-seeds", "1",
                            "--sweep-epochs", "100", "--data", str(npz), "--out", str(tmp_path / "out"),
                            "--no-progress"])
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert set(saved["results"]["torus"]) == set(coordinate.METHODS)
  for summary in saved["results"]["torus"].values():
    assert len(summary["test_mse"]) == 2 and np.isfinite(summary["mean"])
  assert saved["settings"]["torus"]["source"] == "sweep" and "own.npz" in saved["settings"]["torus"]["data"]
  assert saved["settings"]["torus"]["lam"] in (1.0, 10.0, 1000.0)
  assert [(r["lam"], r["gamma"]) for r in saved["sweeps"]["torus"]["rows"]] == [(1, 0.1), (10, 0.1), (1000, 0.1)]
  md = (tmp_path / "out" / "results.md").read_text()
  assert "| Baseline |" in md and "3.01 ± 0.11" in md  # the paper's torus baseline beside ours
  png = (tmp_path / "out" / "features_torus.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  assert report["results"]["torus"]["ot"]["lam"] == saved["settings"]["torus"]["lam"]


def test_cli_errors(tmp_path):
  from experiments import coordinate as experiment
  with pytest.raises(SystemExit):
    experiment.parse_args(["--datasets", "sphere"])
  with pytest.raises(SystemExit):
    experiment.parse_args(["--datasets", "torus,circle", "--data", str(tmp_path / "x.npz")])


def test_merge_combines_runs(tmp_path):
  from experiments import coordinate as experiment
  common = ["--seeds", "1", "--epochs", "100", "--methods", "baseline", "--no-progress"]
  experiment.main(["--datasets", "torus", "--out", str(tmp_path / "a")] + common)
  experiment.main(["--datasets", "circle", "--out", str(tmp_path / "b")] + common)
  merged = experiment.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
  assert set(merged["results"]) == {"torus", "circle"}
  md = (tmp_path / "m" / "results.md").read_text()
  assert "torus (ours)" in md and "circle (ours)" in md
  assert (tmp_path / "m" / "features_circle.png").exists()
  assert "ot_solver" in merged and "OT solver:" in md
  # A later run adds or replaces single methods of a dataset, it does not drop the others.
  experiment.main(["--datasets", "circle", "--out", str(tmp_path / "c"), "--seeds", "1", "--epochs", "100",
                   "--methods", "mt", "--no-progress"])
  merged = experiment.main(["--merge", str(tmp_path / "m"), str(tmp_path / "c"), "--out", str(tmp_path / "n")])
  assert set(merged["results"]["circle"]) == {"baseline", "mt"} and set(merged["results"]["torus"]) == {"baseline"}
