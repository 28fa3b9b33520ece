"""The benchmark package: arguments checked before any work, --quick end to end (timings are
recorded, never asserted), the torch peer at its best thread count, the problem kinds, the floors,
and the GPU check script on this CPU."""
from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.bench import main as bench
from experiments.bench import problems, rows
from experiments.common import published, results

ROOT = pathlib.Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "experiments" / "bench" / "gpu_check.sh"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """One --quick run shared by the tests that read it: (report, out folder)."""
  out = tmp_path_factory.mktemp("bench")
  return bench.main(["--quick", "--budget", "0", "--out", str(out)]), out


@pytest.mark.slow  # one shared --quick run: ~1 min of compilation
def test_quick_benchmark_writes_results_with_accurate_gradients(quick):
  report, out = quick
  saved = results.read_results(out)
  assert saved["rows"] == results.finite_json(report["rows"])[0] and saved["nonfinite"] == []
  assert "| kind | n | d | method |" in (out / "results.md").read_text()
  assert {(r["kind"], r["n"], r["d"]) for r in saved["rows"]} == {
      (k, n, 128) for k in ("gaussian", "clustered") for n in (200, 1000)}
  for row in saved["rows"]:
    assert row["error"] is None, row
    if row["method"].startswith("rtjax"):
      # Beyond --dense-max-n one call is timed (with --budget 0 no repeat follows).
      assert row["median_ms"] > 0 and row["repeats"] == (3 if row["n"] <= 200 else 0)
      # Every rtjax configuration meets the 2e-3 gradient-accuracy bar against the float64 reference.
      assert row["finite"] and row["grad_rel_error"] < 2e-3, row
  assert saved["dense"][0]["median_ms"] > 0
  # n = 1000 is above --dense-max-n in quick mode: only the blocked path ran there (float64 blocked reference).
  assert {r["method"] for r in saved["rows"] if r["n"] == 1000} == {rows.BLOCKED}
  blocked = [r for r in saved["rows"] if r["method"] == rows.BLOCKED]
  assert all(r["passes_min"] == r["iterations_features"] + 1 and r["compute_floor_ms"] is None for r in blocked)
  assert [(p["n"], p["block_size"]) for p in saved["passes"]] == [(200, rows.blocked_size(200)),
                                                                  (1000, rows.blocked_size(1000))]
  assert all(p["median_ms"] > 0 and p["compute_floor_ms"] is None for p in saved["passes"])  # no card here


@pytest.mark.slow  # one shared --quick run: ~1 min of compilation
def test_clustered_kind_has_accurate_rtjax_gradients(quick):
  report, _ = quick
  clustered = [r for r in report["rows"] if r["kind"] == "clustered" and r["method"].startswith("rtjax")]
  assert {(r["n"], r["method"]) for r in clustered} == {
      (200, m) for m in rows.JAX_CONFIGS} | {(1000, rows.BLOCKED)}
  for row in clustered:
    assert row["finite"] and math.isfinite(row["grad_rel_error"]) and row["grad_rel_error"] < 2e-3, row


@pytest.mark.skipif(not published.available(), reason="torch or POT not installed")
@pytest.mark.slow  # one shared --quick run: ~1 min of compilation
def test_torch_rows_are_timed_at_each_thread_count_and_keep_the_faster(quick):
  report, _ = quick
  peers = [r for r in report["rows"] if r["method"] in rows.TORCH_CONFIGS]
  assert {(r["kind"], r["method"]) for r in peers} == {(k, m) for k in ("gaussian", "clustered")
                                                       for m in rows.TORCH_CONFIGS}
  for row in peers:
    timed = row["thread_timings"]
    assert set(timed) == {str(c) for c in rows.thread_counts()} and row["device"] == "cpu"
    assert row["threads"] == min(rows.thread_counts(), key=lambda c: timed[str(c)]["median_ms"])
    assert row["median_ms"] == timed[str(row["threads"])]["median_ms"] and row["repeats"] >= 1
  for kind in ("gaussian", "clustered"):  # the ratio uses the published row's best-thread time
    kind_rows = [r for r in report["rows"] if r["kind"] == kind and r["n"] == 200]
    ref = next(r for r in kind_rows if r["method"] == rows.PUBLISHED)["median_ms"]
    for row in kind_rows:
      assert row["published_over_this"] == pytest.approx(ref / row["median_ms"])


@pytest.mark.parametrize("argv", [
    ["--sizes", "200by128"], ["--sizes", "x"], ["--sizes", "1x128"], ["--sizes", "200x0"], ["--sizes", ","],
    ["--sizes", "200x128,-5x3"], ["--kinds", "gaussian,uniform"], ["--kinds", ""], ["--budget", "-1"],
    ["--budget", "nan"], ["--max-n", "0"], ["--dense-max-n", "x"], ["--max-n", "100", "--sizes", "200x8"]])
def test_bad_arguments_exit_before_any_work(argv, tmp_path, monkeypatch):
  monkeypatch.setattr(bench, "bench", lambda *a, **k: pytest.fail("the benchmark started"))
  with pytest.raises(SystemExit) as exit_:
    bench.run(argv + ["--out", str(tmp_path)])
  assert exit_.value.code == 2


def test_unwritable_out_exits_before_any_work(tmp_path, monkeypatch):
  monkeypatch.setattr(bench, "bench", lambda *a, **k: pytest.fail("the benchmark started"))
  (tmp_path / "file").write_text("")
  with pytest.raises(SystemExit) as exit_:
    bench.run(["--quick", "--out", str(tmp_path / "file" / "sub")])
  assert exit_.value.code == 2


def test_quick_fills_only_what_was_not_given(tmp_path):
  args = bench.parse_args(["--quick", "--sizes", "300x16", "--budget", "2", "--out", str(tmp_path)])
  assert args.sizes == [(300, 16)] and args.budget == 2.0  # explicit values win
  assert args.dense_max_n == 200 and args.kinds == ["gaussian", "clustered"]  # --quick's defaults
  args = bench.parse_args(["--quick", "--kinds", "trained", "--budget", "0", "--out", str(tmp_path)])
  assert args.kinds == ["trained"] and args.budget == 0.0 and args.sizes == [(200, 128), (1000, 128)]


def test_defaults_write_under_runs_and_explicit_sizes_are_not_capped(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  args = bench.parse_args([])
  assert args.out == pathlib.Path("runs/bench") and (tmp_path / "runs" / "bench").is_dir()
  assert args.kinds == list(problems.KINDS) and args.budget == 5.0
  assert max(n for n, _ in args.sizes) == 4096  # the default grid stops at 4096 on CPU
  assert bench.parse_args(["--sizes", "16384x8"]).sizes == [(16384, 8)]


def _fake_bench(pass_tflops: float):
  """A benchmark that records one failing configuration and one pass row."""
  def fake(args, save):
    report = {"device": "cpu", "epsilon": 0.1, "kinds": args.kinds, "reference": "-", "versions": {}, "note": "",
              "rows": [{"kind": "gaussian", "n": 8, "d": 2, "method": rows.DEFAULT, "error": "ValueError: x",
                        "median_ms": None}],
              "passes": [{"n": 8, "d": 2, "block_size": 8, "median_ms": 1.0, "tflops": pass_tflops,
                          "stored_cost_floor_ms": None}], "dense": []}
    save(report)
    return report
  return fake


def test_exit_status_is_1_for_non_finite_numbers_not_for_failed_configurations(tmp_path, monkeypatch):
  monkeypatch.setattr(bench, "bench", _fake_bench(1.0))
  assert bench.run(["--sizes", "8x2", "--out", str(tmp_path)]) == 0
  monkeypatch.setattr(bench, "bench", _fake_bench(float("nan")))
  assert bench.run(["--sizes", "8x2", "--out", str(tmp_path)]) == 1
  assert results.read_results(tmp_path)["nonfinite"] == ["passes[0].tflops"]


@pytest.mark.parametrize("kind", ["gaussian", "clustered"])
def test_problems_are_float32_and_reproducible(kind):
  a, b = problems.make(kind, 50, 7), problems.make(kind, 50, 7)
  assert a.features.shape == (50, 7) and a.targets.shape == (50,) and a.features.dtype == np.float32
  np.testing.assert_array_equal(a.features, b.features)
  assert not np.array_equal(a.features, problems.make(kind, 50, 7, seed=1).features)


def test_clustered_distances_spread_where_gaussian_ones_concentrate():
  def spread(kind):  # relative spread of the pairwise distances in d = 2048
    z = problems.make(kind, 200, 2048).features.astype(np.float64)
    sq = np.sum(z * z, axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * z @ z.T, 0))[~np.eye(200, dtype=bool)]
    return dist.std() / dist.mean()
  assert spread("gaussian") < 0.05 < 0.3 < spread("clustered")


def test_trained_kind_runs_at_d_100_and_n_up_to_3000():
  assert problems.shape("trained", 200, 2048) == (200, 100) and problems.shape("trained", 3001, 8) is None
  assert problems.shape("clustered", 65536, 128) == (65536, 128)
  with pytest.raises(ValueError, match="n <= 3000"):
    problems.make("trained", 4096, 100)


def test_relative_error_is_against_the_reference():
  ref = np.array([3.0, 4.0])
  assert rows.relative_error(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
  assert rows.relative_error(ref, None) is None


def test_cards_and_compute_floor():
  assert rows.card("NVIDIA H200") == (4.8e12, 67e12) and rows.card("NVIDIA H100 PCIe") == (2.0e12, 51e12)
  assert rows.card("NVIDIA H100 80GB HBM3") == (3.35e12, 67e12) and rows.card("cpu (2 cores)") == (None, None)
  floor = rows.compute_floor({"iterations_features": 9, "median_ms": 500.0, "repeats": 2}, 65536, 128, 67e12)
  per_pass_ms = 2 * 65536**2 * 128 / 67e12 * 1e3
  assert floor["passes_min"] == 10 and floor["compute_floor_ms"] == pytest.approx(10 * per_pass_ms)
  assert floor["over_compute_floor"] == pytest.approx(500.0 / (10 * per_pass_ms))
  one_call = rows.compute_floor({"iterations_features": 9, "median_ms": 500.0, "repeats": 0}, 65536, 128, 67e12)
  assert one_call["over_compute_floor"] is None  # compilation included: no ratio


@pytest.mark.slow
def test_trained_kind_end_to_end(tmp_path):
  report = bench.main(["--sizes", "200x2048,300x8", "--kinds", "trained", "--budget", "0", "--no-published",
                       "--out", str(tmp_path)])
  assert {(r["n"], r["d"]) for r in report["rows"]} == {(200, 100), (300, 100)}
  for row in report["rows"]:
    assert row["kind"] == "trained" and row["finite"] and row["grad_rel_error"] < 2e-3, row


def _gpu_check(tmp_path, **env) -> subprocess.CompletedProcess:
  env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, **env)
  return subprocess.run(["bash", str(GPU_CHECK), str(tmp_path / "no-wheels")], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=1200)


@pytest.mark.slow  # default-suite budget; CI runs it with -m slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the refusal on a machine without a GPU")
def test_gpu_check_stops_loudly_without_a_gpu(tmp_path):
  done = _gpu_check(tmp_path)
  assert done.returncode == 4, done.stdout + done.stderr
  assert "FAIL: jax sees no GPU" in done.stdout and "inside" in (tmp_path / "jax.txt").read_text()
  steps = (tmp_path / "steps.tsv").read_text().splitlines()
  assert [s.split("\t")[:2] for s in steps[1:]] == [["install", "0"], ["jax", "4"]]  # nothing ran after


@pytest.mark.slow
def test_gpu_check_tiny_mode_runs_every_step(tmp_path):
  done = _gpu_check(tmp_path, GPU_CHECK_TINY="1")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  steps = [s.split("\t") for s in (tmp_path / "steps.tsv").read_text().splitlines()[1:]]
  assert [(s[0], s[1]) for s in steps] == [(name, "0") for name in
                                           ("install", "jax", "gpu", "blocked", "dense", "coordinate")]
  blocked = results.read_results(tmp_path / "bench" / "blocked")
  assert {(r["kind"], r["n"], r["method"]) for r in blocked["rows"]} == {
      (k, 256, rows.BLOCKED) for k in ("gaussian", "clustered")}
  dense = results.read_results(tmp_path / "bench" / "dense")
  assert {r["kind"] for r in dense["rows"]} == set(problems.KINDS) and not any(r["error"] for r in dense["rows"])
  coordinate = results.read_results(tmp_path / "coordinate")
  assert coordinate["protocol"]["epochs"] == 200 and len(coordinate["results"]) == 4
  assert (tmp_path / "nvidia-smi.csv").exists() and (tmp_path / "gpu_check.log").exists()


def test_make_gpu_wheels_script_parses():  # it downloads from PyPI: run by hand, not in the suite
  assert subprocess.run(["bash", "-n", str(GPU_CHECK.with_name("make_gpu_wheels.sh"))]).returncode == 0
