"""Solver comparison: the float64 reference itself, rows measured against it, and --quick end to end."""
import json

import numpy as np
import pytest

from experiments import compare_solvers
from rtjax import benchmark, compare


@pytest.mark.parametrize("kind", compare.PROBLEM_KINDS)
@pytest.mark.parametrize("epsilon", [0.1, 0.01])
def test_reference_plan_is_a_masked_symmetric_coupling(kind, epsilon):
  points = compare.problem_points(kind, 25, seed=1)
  ref = compare.reference(points, epsilon)
  assert ref.marginal_error <= 1e-12
  np.testing.assert_allclose(ref.plan.sum(0), 1 / 25, atol=1e-12)
  np.testing.assert_allclose(ref.plan.sum(1), 1 / 25, atol=1e-12)
  np.testing.assert_allclose(ref.plan, ref.plan.T, atol=1e-14)
  assert np.all(np.diag(ref.plan) == 0.0)


@pytest.mark.parametrize("epsilon", [0.1, 0.01])
def test_reference_gradient_matches_finite_differences(epsilon):
  points = compare.problem_points("features", 12, seed=2)[:, :3]
  ref = compare.reference(points, epsilon)
  fd = compare.finite_difference_grad(points, epsilon)
  assert np.linalg.norm(ref.grad - fd) / np.linalg.norm(fd) < 1e-6


def test_reference_plan_matches_pot_log_domain():
  import ot
  points = compare.problem_points("targets-3d", 20, seed=3)
  cost = compare.cost_matrix(points)
  a = np.full(20, 1 / 20)
  pot_plan = ot.sinkhorn(a, a, cost + 999 * np.eye(20), 0.1, method="sinkhorn_log", numItermax=100_000,
                         stopThr=1e-14)
  np.testing.assert_allclose(compare.reference(points, 0.1).plan, pot_plan, atol=1e-12)


def test_rows_are_measured_against_the_reference_and_reproducible():
  points = compare.problem_points("features", 20, seed=4)
  ref = compare.reference(points, 0.1)
  solver = compare.rtjax_solver("rtjax thr=1e-6", "rtjax", threshold=1e-6)
  first = compare.measure(solver, points, 0.1, ref, dtype=np.float64)
  again = compare.measure(solver, points, 0.1, ref, dtype=np.float64)
  for key in ("marginal_error", "plan_error_l1", "loss_rel_error", "grad_rel_error", "iterations"):
    assert first[key] == again[key]
  assert first["error"] is None and first["converged"] and not first["nonfinite"]
  assert 0 < first["grad_rel_error"] < 1e-5 and first["grad_cosine"] > 1 - 1e-9
  # A deliberately wrong reference is seen as wrong: errors are not computed against the solver itself.
  shifted = ref._replace(plan=np.roll(ref.plan, 1, axis=0), grad=-ref.grad, loss=2 * ref.loss)
  wrong = compare.measure(solver, points, 0.1, shifted, dtype=np.float64)
  assert wrong["plan_error_l1"] > 0.1 and wrong["grad_rel_error"] > 1.9 and wrong["loss_rel_error"] > 0.4


def test_failures_become_rows():
  """ott-jax's implicit diff raises on this small-epsilon problem: the row records it, plan included."""
  points = compare.problem_points("features", 30, seed=0)
  ref = compare.reference(points, 0.01)
  solver = compare.ott_solver("ott implicit", "ott", differentiation="implicit", threshold=1e-3)
  row = compare.measure(solver, points, 0.01, ref)
  assert "non-finite" in row["error"] and row["grad_rel_error"] is None
  assert row["plan_error_l1"] < 1e-2  # the forward solve itself was fine


def test_quick_comparison_end_to_end(tmp_path):
  report = compare_solvers.main(["--quick", "--no-progress", "--out", str(tmp_path)])
  saved = json.loads((tmp_path / "results.json").read_text())
  assert len(saved["rows"]) == len(report["rows"]) > 0
  assert (tmp_path / "pareto.png").stat().st_size > 10_000
  text = (tmp_path / "results.md").read_text()
  assert "First failure per solver, float32" in text and "rtjax symmetric-implicit" in text
  for row in saved["rows"]:
    if row["solver"].startswith("rtjax symmetric-implicit") and row["epsilon"] == 0.1:
      assert row["converged"] and row["grad_rel_error"] < 2e-3
  # Split by epsilon into two runs (one gzipped, one repeating a row with a new value), merge them back.
  for eps, compress in ((0.1, True), (0.01, False)):
    part = dict(saved, rows=[r for r in saved["rows"] if r["epsilon"] == eps])
    benchmark.write_results(tmp_path / f"eps{eps}", part, "", compress=compress)
  repeated = dict(saved["rows"][0], time_ms=-1.0)
  benchmark.write_results(tmp_path / "again", dict(saved, rows=[repeated]), "")
  merged = compare_solvers.main(["--merge", *(str(tmp_path / d) for d in ("eps0.1", "eps0.01", "again")),
                                 "--gzip", "--out", str(tmp_path / "merged")])
  assert len(merged["rows"]) == len(saved["rows"]) and repeated in merged["rows"]
  assert benchmark.read_results(tmp_path / "merged")["rows"] == merged["rows"]
  assert "## Summary, n = 50" in (tmp_path / "merged" / "results.md").read_text()
