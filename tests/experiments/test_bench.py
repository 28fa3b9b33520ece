"""The benchmark's --quick mode end to end (timings are recorded, never asserted)."""
import json

import numpy as np
import pytest

from experiments import bench


def test_quick_benchmark_writes_results_with_accurate_gradients(tmp_path):
  report = bench.main(["--quick", "--budget", "0", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["rows"] == json.loads(json.dumps(report["rows"]))
  assert "| n | d | method |" in (tmp_path / "results.md").read_text()
  assert {(r["n"], r["d"]) for r in saved["rows"]} == {(200, 128), (1000, 128)}
  for row in saved["rows"]:
    assert row["error"] is None, row
    # Beyond --dense-max-n one call is timed (with --budget 0 no repeat follows).
    assert row["median_ms"] > 0 and row["repeats"] == (3 if row["n"] <= 200 else 0)
    if row["method"].startswith("rtjax"):
      # Every rtjax configuration meets the 2e-3 gradient-accuracy bar against the float64 reference.
      assert row["finite"] and row["grad_rel_error"] < 2e-3, row
  assert saved["dense"][0]["median_ms"] > 0
  # n = 1000 is above --dense-max-n in quick mode: only the blocked path ran there (float64 blocked reference).
  assert {r["method"] for r in saved["rows"] if r["n"] == 1000} == {bench.BLOCKED}
  assert [(p["n"], p["block_size"]) for p in saved["passes"]] == [(200, 200), (1000, 1000)]
  assert all(p["median_ms"] > 0 for p in saved["passes"])


def test_relative_error_is_against_the_reference():
  ref = np.array([3.0, 4.0])
  assert bench.relative_error(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
  assert bench.relative_error(ref, None) is None


@pytest.mark.parametrize("argv", [["--sizes", "200by128"], ["--sizes", "x"]])
def test_bad_sizes_are_rejected(argv):
  with pytest.raises(SystemExit):
    bench.parse_args(argv)
