"""AgeDB-DIR end to end on fixture images (nothing downloads): builder -> grain pipeline -> a 2-epoch tiny
ResNet run of every Table-1 method and the noise ablation on 8 forced host devices and on one device, the
same numbers; the command line refuses bad settings before any work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from agedb_fixture import write_agedb_fixture

from experiments.agedb_dir import configs, main
from experiments.common import results

TINY = ["--image-size", "32", "--depth", "10", "--width", "8", "--epochs", "2", "--batch-size", "8", "--seeds", "1",
        "--phreg-points", "4,8,2", "--shots", "5,3", "--no-progress"]


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "100"], "PH-Reg samples 128"),
    (["--shots", "5"], "many,few"),
    (["--phreg-points", "4,8"], "min,max,jump"),
    (["--methods", "nope"], "unknown"),
])
def test_command_line_refuses_bad_settings(tmp_path, capsys, extra, message):
  root = write_agedb_fixture(tmp_path / "agedb")
  with pytest.raises(SystemExit) as exit_:
    main.parse_args(["--data-dir", str(root), "--out", str(tmp_path / "out"), *extra])
  assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_command_line_needs_the_csv(tmp_path, capsys):
  with pytest.raises(SystemExit):
    main.parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
  assert "no agedb.csv" in capsys.readouterr().err


@pytest.mark.slow  # ~5 min on 2 cores: 2 x 8 tiny-ResNet compilations
def test_every_method_on_8_devices_matches_one_device(tmp_path):
  root = write_agedb_fixture(tmp_path / "agedb")
  methods = [*configs.TABLE, "noise"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "experiments.agedb_dir", "--data-dir", str(root), *TINY,
                         "--methods", ",".join(methods), "--out", str(tmp_path / "eight")],
                        env=env, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  eight = results.read_results(tmp_path / "eight")
  assert set(eight["runs"]) == set(methods)
  assert "[agedb_dir] 8 x " in done.stderr  # the run saw the 8 devices
  for method, runs in eight["runs"].items():
    run = runs["0"]
    assert len(run["history"]) == 2 and all(h["train_loss"] > 0 for h in run["history"])
    assert run["test"]["all"]["count"] == 7 and run["test"]["all"]["mae"] > 0, method
  assert (tmp_path / "eight" / "per_bin.png").stat().st_size > 0
  # One device, same settings: the same runs (batch-coupled terms are over the global batch either way).
  one_device = ["--data-dir", str(root), *TINY, "--methods", ",".join(methods), "--out", str(tmp_path / "one")]
  assert main.main(one_device) == 0
  one = results.read_results(tmp_path / "one")
  for method in methods:
    a, b = one["runs"][method]["0"], eight["runs"][method]["0"]
    for region in ("all", "few"):
      assert a["test"][region]["mae"] == pytest.approx(b["test"][region]["mae"], rel=1e-4)
    assert [h["val_mae"] for h in a["history"]] == pytest.approx([h["val_mae"] for h in b["history"]], rel=1e-4)
