"""Solver comparison on ROT's masked self-transport problems: accuracy of plan, loss and gradient,
iterations, time and failures of ott-jax / rtjax / POT configurations against a float64 reference.

    python -m experiments.compare_solvers --quick     # n = 50, eps 0.1 and 0.01, two kinds, float32: < 2 min on CPU
    python -m experiments.compare_solvers             # n in 50, 200, 1000; eps 1 ... 0.001; all kinds; float32, float64

--quick fills in only the grid flags not given: `--quick --n 200` runs the quick grid at n = 200. The
settings used are recorded under "settings" in results.json.

Writes OUT/results.json (one record per row; results.json.gz with --gzip) and OUT/results.md (summary,
first failures) after every problem, each atomically, so an interrupted run leaves a valid report of
what it measured ("complete": false); then OUT/pareto.png (gradient error vs time, one panel per n and
epsilon). OUT defaults to runs/compare_solvers; the committed results in
experiments/results/compare_solvers are rewritten only with an explicit --out. `--merge DIR...`
combines earlier runs (later DIRs win on repeated rows) instead of running.

Exit status: 2 for a bad argument or output folder (before any work); 1 if the report holds a
non-finite number (written as null, its path listed under "nonfinite" and on stderr); else 0. A
solver that raises or returns NaN/inf is a measured result, not a fault of the run: its row says so
(`error`, `nonfinite: true`) and its missing metrics are null, which does not set status 1. Status 1
means a number the run itself relies on is non-finite: the float64 reference, its finite-difference
check, a time, or a solver metric that escaped that bookkeeping.

Modules: problems.py (problem kinds, float64 reference), solvers.py (catalogue, `measure`), report.py
(failures, summary, markdown, figure, merge).
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import time

import numpy as np
from tqdm.auto import tqdm

from experiments.common import cli, results, timing
from experiments.compare_solvers import problems, report, solvers

DTYPES = ("float32", "float64")
# The grid of a plain run; --quick takes QUICK instead for every one of these flags not given.
GRID = {"n": [50, 200, 1000], "epsilons": [1.0, 0.1, 0.05, 0.01, 0.001], "kinds": list(problems.PROBLEM_KINDS),
        "dtypes": list(DTYPES), "thresholds": list(solvers.THRESHOLDS), "repeats": 3, "fd_check_n": 50}
QUICK = dict(GRID, n=[50], epsilons=[0.1, 0.01], kinds=["features", "targets-1d"], dtypes=["float32"],
             thresholds=[1e-3, 1e-6], fd_check_n=0)
# What a merged report needs from each run.
REPORT_FIELDS = ("rows", "references", "reference_checks", "solvers", "settings", "date", "device", "versions")


def parse_args(argv=None) -> argparse.Namespace:
  """Parses and checks every argument (and the output folder) before any work; resolves --quick."""
  p = argparse.ArgumentParser(prog="python -m experiments.compare_solvers", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="a small grid for the flags below not given")
  grid_flags = (
      ("--n", cli.comma_list(_size), "comma list of problem sizes (>= 3)"),
      ("--epsilons", cli.comma_list(cli.positive_float), "comma list of epsilons (> 0)"),
      ("--kinds", cli.comma_list(str, choices=problems.PROBLEM_KINDS), "comma list of problem kinds"),
      ("--dtypes", cli.comma_list(str, choices=DTYPES), "comma list of dtypes the solvers run in"),
      ("--thresholds", cli.comma_list(cli.positive_float), "comma list of the stopping thresholds of the "
       "rtjax / ott-jax implicit / ott-jax unrolled rows (> 0)"),
      ("--repeats", cli.positive_int, "timed calls per row (median)"),
      ("--fd-check-n", _size_or_zero, "check the reference gradient by finite differences at this n (0: skip)"),
  )
  for flag, kind, text in grid_flags:
    key = flag[2:].replace("-", "_")
    p.add_argument(flag, type=kind, help=f"{text}; default {_show(GRID[key])}, with --quick {_show(QUICK[key])}")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--merge", nargs="+", type=pathlib.Path, metavar="DIR",
                 help="merge the results of earlier runs (later DIRs win on repeated rows) into --out "
                 "instead of running")
  p.add_argument("--gzip", action="store_true", help="write results.json.gz (large grids to commit)")
  p.add_argument("--out", type=pathlib.Path, default=results.default_out("compare_solvers"),
                 help="output folder (default: %(default)s)")
  args = p.parse_args(argv)
  given = [key for key in GRID if getattr(args, key) is not None]
  for key, value in (QUICK if args.quick else GRID).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.merge:
    if given or args.quick:
      p.error("--merge runs nothing: do not combine it with --quick or grid flags")
    args.merge_reports = [_read_run(p, d) for d in args.merge]
  elif "trained" in args.kinds and max(args.n) > problems.NUM_POINTS:
    p.error(f"--n: the trained kind has {problems.NUM_POINTS} points; use --n <= {problems.NUM_POINTS} or "
            "other --kinds")
  cli.check_out_dir(p, args.out)
  return args


def _size(text: str) -> int:
  """A problem size: at n = 2 the masked plan is fixed, nothing to solve."""
  n = cli.positive_int(text)
  if n < 3:
    raise argparse.ArgumentTypeError(f"must be >= 3, got {n}")
  return n


def _size_or_zero(text: str) -> int:
  return 0 if text.strip() == "0" else _size(text)


def _show(value) -> str:
  """A setting as typed on the command line, e.g. 1,0.1,0.05."""
  values = value if isinstance(value, list) else [value]
  return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _read_run(p: argparse.ArgumentParser, directory: pathlib.Path) -> dict:
  """The report of an earlier run in `directory`, or a usage error."""
  try:
    run_report = results.read_results(directory)
  except (OSError, ValueError) as e:  # missing, unreadable, not gzip, not JSON
    p.error(f"--merge {directory}: {e}")
  missing = [f for f in REPORT_FIELDS if not isinstance(run_report, dict) or f not in run_report]
  if missing:
    p.error(f"--merge {directory}: not a solver comparison (no {', '.join(missing)} in its results)")
  return run_report


def settings(args: argparse.Namespace) -> dict:
  """The resolved settings of a run, as recorded in its report."""
  return {"quick": args.quick, **{key: getattr(args, key) for key in GRID}}


def measure_grid(args: argparse.Namespace, save) -> dict:
  """The grid; `save(report)` after every problem (long runs keep what they measured)."""
  logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)  # lineax failures are rows
  catalogue = solvers.solvers(args.thresholds)
  grid = [(n, eps, kind) for n in args.n for eps in args.epsilons for kind in args.kinds]
  report_ = {"device": timing.device_name(), "complete": False, "rows": [], "references": [],
             "solvers": {s.name: dict(s.settings, family=s.family) for s in catalogue},
             "reference_checks": [], "versions": timing.library_versions(), "date": time.strftime("%Y-%m-%d"),
             "settings": settings(args)}
  with tqdm(total=len(grid) * len(args.dtypes) * len(catalogue), disable=args.no_progress,
            desc="solver rows", leave=False) as bar:
    for n, eps, kind in grid:
      reference, rows = _measure_problem(args, catalogue, n, eps, kind, bar.update)
      report_["references"].append(reference)
      report_["rows"] += rows
      save(report_)
  if args.fd_check_n:
    report_["reference_checks"] = problems.reference_checks(args.fd_check_n, [0.1, 0.01])
  report_["complete"] = True
  return report_


def _measure_problem(args, catalogue, n: int, eps: float, kind: str, progress) -> tuple[dict, list[dict]]:
  """The reference record of one problem and the rows of every solver in every dtype on it."""
  points = problems.problem_points(kind, n, seed=0)
  start = time.perf_counter()
  ref = problems.reference(points, eps)
  reference = {"n": n, "epsilon": eps, "kind": kind, "marginal_error": ref.marginal_error,
               "iterations": ref.iterations, "time_s": time.perf_counter() - start}
  rows = []
  for dtype in args.dtypes:
    for solver in catalogue:
      row = solvers.measure(solver, points, eps, ref, dtype=np.dtype(dtype), repeats=args.repeats)
      del row["settings"]  # recorded once per solver in report["solvers"]
      rows.append(dict(row, kind=kind))
      progress()
  return reference, rows


def main(argv=None) -> dict:
  """Runs (or merges) and writes OUT; returns the report, whose "nonfinite" lists non-finite numbers."""
  args = parse_args(argv)
  save = lambda report_: results.write_results(args.out, report_, report.markdown(report_), indent=None,
                                               compress=args.gzip)
  report_ = report.merge(args.merge_reports) if args.merge else measure_grid(args, save)
  report_["nonfinite"] = save(report_)
  report.pareto_figure(report_, args.out / "pareto.png")
  print(f"wrote {args.out}/results.json{'.gz' if args.gzip else ''}, results.md, pareto.png")
  return report_


def run(argv=None) -> int:
  """The command line: exit status 0, or 1 if the report holds a non-finite number (see above)."""
  return cli.exit_status(main(argv))
