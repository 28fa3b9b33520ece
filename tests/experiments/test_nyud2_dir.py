"""NYUD2-DIR training pieces and the end-to-end run: per-image pixel regularizers against direct
computations, the published shot lists in the evaluation, test.py's upsampling; every method for an
epoch of a tiny network on fixture scenes, on 8 forced host devices and on one (same numbers)."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from nyud2_fixture import write_nyud2_fixture

import rtjax
from experiments.common import results
from experiments.common.dir_methods import Method
from experiments.nyud2_dir import configs, main, train

TINY = ["--scale", "76", "--depth", "10", "--width", "8", "--stride", "2", "--pixels", "32", "--phreg-points",
        "8,32,8", "--epochs", "1", "--batch-size", "8", "--seeds", "1", "--no-progress"]


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_per_image_lot_is_the_mean_of_each_images_loss():
  # All pixels valid and drawn (num_pixels = pixels at the stride): rot_loss is invariant to the pixels'
  # order, so the draw does not matter and each image's term is rot_loss of all its strided pixels.
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 6, 5))
  y = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 6), minval=0.5, maxval=9.0)
  pieces = train.loss_pieces(Method(lam=10.0, epsilon=0.5), stride=2, num_pixels=12)
  got = pieces["regularizer"](z, y, jax.random.PRNGKey(2))
  expected = np.mean([float(rtjax.rot_loss(z[i, ::2, ::2].reshape(12, 5), y[i, ::2, ::2].reshape(12), epsilon=0.5))
                      for i in range(3)])
  np.testing.assert_allclose(float(got[0]), expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(pieces["regularizer_weights"]), [10.0])
  # An image without any valid pixel adds 0; a peer adds its own weighted terms after L_ot's.
  y0 = y.at[1].set(0.0)
  expected0 = np.mean([float(rtjax.rot_loss(z[i, ::2, ::2].reshape(12, 5), y0[i, ::2, ::2].reshape(12),
                                            epsilon=0.5)) if i != 1 else 0.0 for i in range(3)])
  np.testing.assert_allclose(float(pieces["regularizer"](z, y0, jax.random.PRNGKey(2))[0]), expected0, rtol=1e-5)
  both = train.loss_pieces(Method(lam=10.0, peer="oe", peer_weights=(2.0,)), stride=2, num_pixels=12)
  assert both["regularizer"](z, y, jax.random.PRNGKey(2)).shape == (2,)
  np.testing.assert_allclose(np.asarray(both["regularizer_weights"]), [10.0, 2.0])
  with pytest.raises(ValueError, match="pixels per image"):
    train.loss_pieces(Method(lam=1.0), stride=4, num_pixels=12)["regularizer"](z, y, jax.random.PRNGKey(2))


def test_evaluation_uses_the_published_shot_lists():
  labels = np.array([1.0, 4.55, 0.75, 6.0, 9.0, 0.3])  # bins 10 (many), 45, 7 (medium), 60 (medium), 90 (few), 3
  got = train.evaluate(labels + 0.1, labels)
  assert [got[r]["count"] for r in ("all", "many", "medium", "few")] == [6, 2, 2, 2]
  np.testing.assert_allclose(got["all"]["mae"], 0.1, rtol=1e-5)
  np.testing.assert_allclose(got["few"]["abs_rel"], np.mean([0.1 / 9.0, 0.1 / 0.3]), rtol=1e-5)


def test_upsampling_is_align_corners_true():
  pred = jax.random.uniform(jax.random.PRNGKey(0), (2, 5, 7))
  up = train.upsample_to((9, 13))(pred)
  assert up.shape == (2, 9, 13)
  corners = (slice(None), [0, 0, -1, -1], [0, -1, 0, -1])
  np.testing.assert_allclose(np.asarray(up)[corners], np.asarray(pred)[corners], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(up)[:, ::2, ::2], np.asarray(pred), rtol=1e-5)  # 9 = 2*5-1, 13 = 2*7-1


@pytest.mark.parametrize("extra, message", [
    (["--scale", "120"], "scales that fit"),
    (["--pixels", "16", "--phreg-points", "8,32,8"], "max <= --pixels"),
])
def test_command_line_refuses_bad_settings(tmp_path, capsys, extra, message):
  root = write_nyud2_fixture(tmp_path / "nyu")
  with pytest.raises(SystemExit):
    main.parse_args(["--data-dir", str(root), "--out", str(tmp_path / "out"), *extra])
  assert message in capsys.readouterr().err


@pytest.mark.slow  # ~8 min on 2 cores: 2 x 8 tiny depth-network compilations
def test_every_method_on_8_devices_matches_one_device(tmp_path):
  root = write_nyud2_fixture(tmp_path / "nyu", n_train=16, n_test=4)
  methods = [*configs.TABLE, "noise"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "experiments.nyud2_dir", "--data-dir", str(root), *TINY,
                         "--methods", ",".join(methods), "--out", str(tmp_path / "eight")],
                        env=env, capture_output=True, text=True, timeout=1800)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "[nyud2_dir] 8 x " in done.stderr
  eight = results.read_results(tmp_path / "eight")
  assert set(eight["runs"]) == set(methods)
  for method, runs in eight["runs"].items():
    run = runs["0"]
    assert run["history"][0]["train_loss"] > 0 and run["test"]["all"]["count"] > 0, method
    assert set(run["diagnostics"]) >= {"cosine_spearman", "euclidean_volume"}
  one_device = ["--data-dir", str(root), *TINY, "--methods", ",".join(methods), "--out", str(tmp_path / "one")]
  assert main.main(one_device) == 0
  one = results.read_results(tmp_path / "one")
  for method in methods:
    a, b = one["runs"][method]["0"], eight["runs"][method]["0"]
    assert a["test"]["all"]["rmse"] == pytest.approx(b["test"]["all"]["rmse"], rel=1e-4)
    assert a["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"], rel=1e-4)
