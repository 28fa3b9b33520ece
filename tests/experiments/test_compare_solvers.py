"""Solver comparison: the float64 reference itself, rows measured against it, the command line (checks
before any work, --quick, exit status) and --quick end to end with --merge."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from experiments.common import results
from experiments.compare_solvers import main as compare_main
from experiments.compare_solvers import problems, solvers


# The "trained" kind takes seconds per epsilon: it runs with -m slow (CI), the others in the default suite.
@pytest.mark.parametrize("kind", [k if k != "trained" else pytest.param(k, marks=pytest.mark.slow)
                                  for k in problems.PROBLEM_KINDS])
@pytest.mark.parametrize("epsilon", [0.1, 0.01])
def test_reference_plan_is_a_masked_symmetric_coupling(kind, epsilon):
  points = problems.problem_points(kind, 25, seed=1)
  ref = problems.reference(points, epsilon)
  assert ref.marginal_error <= 1e-12
  np.testing.assert_allclose(ref.plan.sum(0), 1 / 25, atol=1e-12)
  np.testing.assert_allclose(ref.plan.sum(1), 1 / 25, atol=1e-12)
  np.testing.assert_allclose(ref.plan, ref.plan.T, atol=1e-14)
  assert np.all(np.diag(ref.plan) == 0.0)


@pytest.mark.parametrize("epsilon", [0.1, 0.01])
def test_reference_gradient_matches_finite_differences(epsilon):
  points = problems.problem_points("features", 12, seed=2)[:, :3]
  ref = problems.reference(points, epsilon)
  fd = problems.finite_difference_grad(points, epsilon)
  assert np.linalg.norm(ref.grad - fd) / np.linalg.norm(fd) < 1e-6


def test_reference_plan_matches_pot_log_domain():
  import ot
  points = problems.problem_points("targets-3d", 20, seed=3)
  cost = problems.cost_matrix(points)
  a = np.full(20, 1 / 20)
  pot_plan = ot.sinkhorn(a, a, cost + 999 * np.eye(20), 0.1, method="sinkhorn_log", numItermax=100_000,
                         stopThr=1e-14)
  np.testing.assert_allclose(problems.reference(points, 0.1).plan, pot_plan, atol=1e-12)


def test_rows_are_measured_against_the_reference_and_reproducible():
  points = problems.problem_points("features", 20, seed=4)
  ref = problems.reference(points, 0.1)
  solver = solvers.rtjax_solver("rtjax thr=1e-6", "rtjax", threshold=1e-6)
  first = solvers.measure(solver, points, 0.1, ref, dtype=np.float64)
  again = solvers.measure(solver, points, 0.1, ref, dtype=np.float64)
  for key in ("marginal_error", "plan_error_l1", "loss_rel_error", "grad_rel_error", "iterations"):
    assert first[key] == again[key]
  assert first["error"] is None and first["converged"] and not first["nonfinite"]
  assert 0 < first["grad_rel_error"] < 1e-5 and first["grad_cosine"] > 1 - 1e-9
  # A deliberately wrong reference is seen as wrong: errors are not computed against the solver itself.
  shifted = ref._replace(plan=np.roll(ref.plan, 1, axis=0), grad=-ref.grad, loss=2 * ref.loss)
  wrong = solvers.measure(solver, points, 0.1, shifted, dtype=np.float64)
  assert wrong["plan_error_l1"] > 0.1 and wrong["grad_rel_error"] > 1.9 and wrong["loss_rel_error"] > 0.4


def test_failures_become_rows():
  """ott-jax's implicit diff raises on this small-epsilon problem: the row records it, plan included."""
  points = problems.problem_points("features", 30, seed=0)
  ref = problems.reference(points, 0.01)
  solver = solvers.ott_solver("ott implicit", "ott", differentiation="implicit", threshold=1e-3)
  row = solvers.measure(solver, points, 0.01, ref)
  assert "non-finite" in row["error"] and row["grad_rel_error"] is None
  assert row["plan_error_l1"] < 1e-2  # the forward solve itself was fine


def test_a_solvers_nan_is_a_flag_not_a_number():
  """NaN/inf from a solver: `nonfinite` set, metrics None (so the report's own check stays quiet);
  an overflowing float64 gradient (1e183, seen in kernel mode) still gets its finite error."""
  points = problems.problem_points("features", 10, seed=5)
  ref = problems.reference(points, 0.1)
  cost = problems.cost_matrix(points)
  nan_plan = np.full_like(ref.plan, np.nan)
  row = solvers.errors(nan_plan, np.full_like(ref.grad, np.nan), ref, cost)
  assert row["nonfinite"] and all(row[k] is None for k in solvers.METRICS)
  assert results.finite_json(row)[1] == []
  huge = solvers.errors(ref.plan, ref.grad * 1e183, ref, cost)
  assert not huge["nonfinite"] and huge["grad_rel_error"] == pytest.approx(1e183, rel=1e-9)
  assert huge["grad_cosine"] == pytest.approx(1.0)
  old = solvers.finite_metrics({"grad_rel_error": float("nan"), "grad_cosine": float("inf"), "nonfinite": False})
  assert old == {"grad_rel_error": None, "grad_cosine": None, "nonfinite": True}


# The command line. `measure_grid` is replaced by a failure: these checks must end before any work.

@pytest.fixture
def no_work(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("work started")
  monkeypatch.setattr(compare_main, "measure_grid", fail)
  monkeypatch.setattr(compare_main.report, "merge", fail)


def _bad_arguments(tmp: pathlib.Path) -> list[list[str]]:
  (tmp / "a-file").write_text("")
  (tmp / "empty").mkdir()
  (tmp / "other").mkdir()
  results.write_results(tmp / "other", {"rows": []}, "")
  return [["--n", "2"], ["--n", "50,x"], ["--n", ","], ["--epsilons", "0"], ["--epsilons", "-0.1"],
          ["--epsilons", "nan"], ["--thresholds", "0"], ["--kinds", "features,faces"], ["--dtypes", "float16"],
          ["--repeats", "0"], ["--fd-check-n", "-1"], ["--fd-check-n", "2"], ["--kinds", "trained", "--n", "5000"],
          ["--out", str(tmp / "a-file")], ["--merge", str(tmp / "empty")], ["--merge", str(tmp / "other")],
          ["--merge", str(tmp / "other"), "--n", "50"]]


def test_bad_arguments_exit_before_any_work(tmp_path, no_work, capsys):
  for argv in _bad_arguments(tmp_path):
    with pytest.raises(SystemExit) as exit_:
      compare_main.main(argv + ([] if "--out" in argv else ["--out", str(tmp_path / "out")]))
    assert exit_.value.code == 2, argv
    assert "error:" in capsys.readouterr().err, argv


def test_quick_fills_in_only_the_flags_not_given(tmp_path, no_work):
  args = compare_main.parse_args(["--quick", "--n", "7", "--thresholds", "1e-4", "--out", str(tmp_path)])
  assert args.n == [7] and args.thresholds == [1e-4]
  assert args.epsilons == [0.1, 0.01] and args.kinds == ["features", "targets-1d"] and args.fd_check_n == 0
  assert compare_main.settings(args) == dict(compare_main.QUICK, quick=True, n=[7], thresholds=[1e-4])
  plain = compare_main.parse_args(["--n", "7", "--out", str(tmp_path)])
  assert compare_main.settings(plain) == dict(compare_main.GRID, quick=False, n=[7])


def test_default_out_is_runs_compare_solvers(tmp_path, monkeypatch, no_work):
  monkeypatch.chdir(tmp_path)  # parse_args creates the folder: not in the repository
  assert compare_main.parse_args([]).out == pathlib.Path("runs/compare_solvers")
  assert (tmp_path / "runs" / "compare_solvers").is_dir()


def _row(**fields) -> dict:
  row = {"solver": "s", "family": "f", "dtype": "float32", "epsilon": 0.1, "n": 5, "kind": "features",
         "error": None, "nonfinite": False, "converged": True, "marginal_error": 1e-6, "plan_error_l1": 1e-6,
         "loss_rel_error": 1e-6, "grad_rel_error": 1e-5, "grad_cosine": 1.0, "iterations": 10, "time_ms": 1.0,
         "first_call_s": 1.0}
  return dict(row, **fields)


def _run_dir(path: pathlib.Path, rows, references) -> str:
  report = {"rows": rows, "references": references, "reference_checks": [], "solvers": {}, "settings": {},
            "date": "2025-01-01", "device": "cpu", "versions": {}}
  # Written as the old writer did (NaN kept as NaN), which write_results no longer allows.
  path.mkdir()
  (path / "results.json").write_text(json.dumps(report))
  return str(path)


def test_exit_status_flags_only_unexpected_nonfinite_numbers(tmp_path, capsys):
  """A solver's NaN (older runs wrote it as NaN) is a row, status 0; a NaN in a reference is status 1."""
  reference = {"n": 5, "epsilon": 0.1, "kind": "features", "marginal_error": 1e-13, "iterations": 3, "time_s": 0.1}
  solver_nan = _run_dir(tmp_path / "solver-nan", [_row(grad_rel_error=float("nan"), nonfinite=True)], [reference])
  assert compare_main.run(["--merge", solver_nan, "--out", str(tmp_path / "ok")]) == 0
  assert results.read_results(tmp_path / "ok")["rows"][0]["grad_rel_error"] is None
  bad_reference = _run_dir(tmp_path / "ref-nan", [_row()], [dict(reference, marginal_error=float("nan"))])
  assert compare_main.run(["--merge", bad_reference, "--out", str(tmp_path / "bad")]) == 1
  assert "references[0].marginal_error" in capsys.readouterr().err
  assert results.read_results(tmp_path / "bad")["nonfinite"] == ["references[0].marginal_error"]


def test_an_interrupted_run_leaves_a_valid_partial_report(tmp_path, monkeypatch):
  """Saved after every problem: interrupted in the second, OUT holds the first, marked incomplete."""
  pot = solvers.pot_solver("POT log", "sinkhorn_log", numItermax=100, stopThr=1e-9)  # no compilation
  monkeypatch.setattr(compare_main.solvers, "solvers", lambda thresholds: [pot])
  solved, reference = [], problems.reference

  def reference_then_interrupt(points, epsilon):
    if solved:
      raise KeyboardInterrupt
    solved.append(epsilon)
    return reference(points, epsilon)
  monkeypatch.setattr(compare_main.problems, "reference", reference_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    compare_main.main(["--n", "6", "--epsilons", "0.1,0.05", "--kinds", "features", "--dtypes", "float64",
                       "--fd-check-n", "0", "--no-progress", "--out", str(tmp_path)])
  saved = results.read_results(tmp_path)
  assert not saved["complete"] and len(saved["references"]) == 1 and len(saved["rows"]) == 1
  assert saved["rows"][0]["epsilon"] == 0.1 and saved["nonfinite"] == []
  assert "Partial run" in (tmp_path / "results.md").read_text()


@pytest.mark.slow  # ~1 min
def test_quick_comparison_end_to_end(tmp_path):
  # One kind and one timed call (compilation dominates): the quick grid's other settings, in ~1 min.
  argv = ["--quick", "--kinds", "features", "--repeats", "1", "--no-progress", "--out", str(tmp_path)]
  report = compare_main.main(argv)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert len(saved["rows"]) == len(report["rows"]) > 0
  assert saved["nonfinite"] == [] and saved["complete"]
  assert saved["settings"] == dict(compare_main.QUICK, quick=True, kinds=["features"], repeats=1)
  assert any(row["error"] for row in saved["rows"])  # ott-jax's implicit diff raises at eps = 0.01
  assert (tmp_path / "pareto.png").stat().st_size > 10_000
  text = (tmp_path / "results.md").read_text()
  assert "First failure per solver, float32" in text and "rtjax symmetric" in text
  for row in saved["rows"]:
    if row["solver"].startswith("rtjax symmetric") and row["epsilon"] == 0.1:
      assert row["converged"] and row["grad_rel_error"] < 2e-3
  # Split by epsilon into two runs (one gzipped, one repeating a row with a new value), merge them back.
  for eps, compress in ((0.1, True), (0.01, False)):
    part = dict(saved, rows=[r for r in saved["rows"] if r["epsilon"] == eps])
    results.write_results(tmp_path / f"eps{eps}", part, "", compress=compress)
  repeated = dict(saved["rows"][0], time_ms=-1.0)
  results.write_results(tmp_path / "again", dict(saved, rows=[repeated]), "")
  merged = compare_main.main(["--merge", *(str(tmp_path / d) for d in ("eps0.1", "eps0.01", "again")),
                              "--gzip", "--out", str(tmp_path / "merged")])
  assert len(merged["rows"]) == len(saved["rows"]) and repeated in merged["rows"]
  assert results.read_results(tmp_path / "merged")["rows"] == merged["rows"]
  assert "## Summary, n = 50" in (tmp_path / "merged" / "results.md").read_text()
