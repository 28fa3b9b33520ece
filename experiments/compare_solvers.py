"""Solver comparison on ROT's masked self-transport problems: accuracy of plan, loss and gradient,
iterations, time and failures of ott-jax / rtjax / POT configurations (see rtjax.compare).

    python -m experiments.compare_solvers --quick     # n = 50, eps 0.1 and 0.01, float32: < 2 min on CPU
    python -m experiments.compare_solvers             # n in 50, 200, 1000; eps 1 ... 0.001; float32, float64

Writes OUT/results.json (one record per row; results.json.gz with --gzip), OUT/results.md (summary,
first failures) and OUT/pareto.png (gradient error vs time, one panel per n and epsilon).
`--merge DIR...` combines earlier runs instead of running.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import pathlib
import time

import numpy as np
from tqdm.auto import tqdm

from rtjax import benchmark, compare

EPSILONS = (1.0, 0.1, 0.05, 0.01, 0.001)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="n = 50, eps 0.1 and 0.01, two kinds, float32")
  p.add_argument("--n", default="50,200,1000", help="comma list of problem sizes")
  p.add_argument("--epsilons", default=",".join(map(str, EPSILONS)))
  p.add_argument("--kinds", default=",".join(compare.PROBLEM_KINDS))
  p.add_argument("--dtypes", default="float32,float64")
  p.add_argument("--thresholds", default=",".join(f"{t:g}" for t in compare.THRESHOLDS))
  p.add_argument("--repeats", type=int, default=3, help="timed calls per row (median)")
  p.add_argument("--fd-check-n", type=int, default=50, help="check the reference gradient by finite "
                 "differences at this n (0: skip)")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--merge", nargs="+", type=pathlib.Path, metavar="DIR",
                 help="merge the results of earlier runs (later DIRs win on repeated rows) into --out "
                 "instead of running")
  p.add_argument("--gzip", action="store_true", help="write results.json.gz (large grids to commit)")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("experiments/results/compare_solvers"))
  args = p.parse_args(argv)
  if args.quick:
    args.n, args.epsilons, args.kinds, args.dtypes = "50", "0.1,0.01", "features,targets-1d", "float32"
    args.thresholds, args.fd_check_n = "1e-3,1e-6", 0
  try:
    args.n = [int(v) for v in args.n.split(",") if v]
    args.epsilons = [float(v) for v in args.epsilons.split(",") if v]
    args.thresholds = [float(v) for v in args.thresholds.split(",") if v]
  except ValueError as e:
    p.error(str(e))
  args.kinds = [k for k in args.kinds.split(",") if k]
  args.dtypes = [d for d in args.dtypes.split(",") if d]
  for k in args.kinds:
    if k not in compare.PROBLEM_KINDS:
      p.error(f"unknown kind {k!r}; choose from {compare.PROBLEM_KINDS}")
  for d in args.dtypes:
    if d not in ("float32", "float64"):
      p.error(f"unknown dtype {d!r}; choose float32 or float64")
  if any(n < 3 for n in args.n) or any(e <= 0 for e in args.epsilons):
    p.error("--n must be >= 3 and --epsilons > 0")
  return args


def reference_checks(n: int, epsilons) -> list[dict]:
  """The reference gradient (implicit, dense solve) against finite differences on small problems."""
  out = []
  for eps in epsilons:
    points = compare.problem_points("features", n, seed=0)[:, :4]  # d = 4 keeps FD at 8 n solves
    ref = compare.reference(points, eps)
    fd = compare.finite_difference_grad(points, eps)
    out.append({"n": n, "d": 4, "epsilon": eps, "reference_marginal_error": ref.marginal_error,
                "implicit_vs_fd_rel": float(np.linalg.norm(ref.grad - fd) / np.linalg.norm(fd))})
  return out


def run(args, save=lambda report: None) -> dict:
  """The grid; `save(report)` is called after every problem (long runs keep what they measured)."""
  logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)  # lineax failures are rows
  solvers_ = compare.solvers(args.thresholds)
  problems = [(n, eps, kind) for n in args.n for eps in args.epsilons for kind in args.kinds]
  report = {"device": benchmark.device_name(), "rows": [], "references": [],
            "solvers": {s.name: dict(s.settings, family=s.family) for s in solvers_},
            "reference_checks": [], "versions": benchmark.library_versions(), "date": time.strftime("%Y-%m-%d"),
            "settings": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
                         if k not in ("out", "merge")}}
  bar = tqdm(total=len(problems) * len(args.dtypes) * len(solvers_), disable=args.no_progress,
             desc="solver rows", leave=False)
  for n, eps, kind in problems:
    points = compare.problem_points(kind, n, seed=0)
    start = time.perf_counter()
    ref = compare.reference(points, eps)
    report["references"].append({"n": n, "epsilon": eps, "kind": kind, "marginal_error": ref.marginal_error,
                                 "iterations": ref.iterations, "time_s": time.perf_counter() - start})
    for dtype in args.dtypes:
      for solver in solvers_:
        row = compare.measure(solver, points, eps, ref, dtype=np.dtype(dtype), repeats=args.repeats)
        row.pop("settings")  # recorded once per solver in report["solvers"]
        report["rows"].append(dict(row, kind=kind))
        bar.update()
    save(report)
  bar.close()
  report["reference_checks"] = reference_checks(args.fd_check_n, [0.1, 0.01]) if args.fd_check_n else []
  return report


def failed(row: dict) -> bool:
  """Raised, produced NaN/inf, or missed its own stopping threshold."""
  return bool(row["error"]) or row["nonfinite"] or not row["converged"]


def failure_kind(row: dict) -> str:
  """How a failed row failed; "broken plan" = marginal error >= 0.5 (e.g. an underflowed kernel)."""
  if row["error"]:
    return "raised"
  if row["nonfinite"]:
    return "NaN/inf"
  return "broken plan" if row["marginal_error"] >= 0.5 else "not converged"


def first_failures(rows, broken_only: bool = False) -> dict:
  """Per solver: the largest epsilon at which it first failed (or broke) on some problem."""
  out = {}
  bad_row = (lambda r: failed(r) and failure_kind(r) != "not converged") if broken_only else failed
  for solver in dict.fromkeys(r["solver"] for r in rows):
    mine = [r for r in rows if r["solver"] == solver]
    for eps in sorted({r["epsilon"] for r in mine}, reverse=True):
      bad = [r for r in mine if r["epsilon"] == eps and bad_row(r)]
      if bad:
        kinds = sorted({failure_kind(r) for r in bad})
        out[solver] = {"epsilon": eps, "how": kinds, "problems": len(bad),
                       "of": sum(r["epsilon"] == eps for r in mine)}
        break
    else:
      out[solver] = None
  return out


def summary(rows) -> list[dict]:
  """Per (n, epsilon, dtype, solver): medians over the problem kinds of the error fields and time."""
  out = []
  key = lambda r: (r["n"], r["epsilon"], r["dtype"], r["solver"])
  groups = {}
  for r in rows:
    groups.setdefault(key(r), []).append(r)
  order = lambda item: (item[0][0], -item[0][1], item[0][2])  # n, eps decreasing, dtype; solvers as run
  for (n, eps, dtype, solver), mine in sorted(groups.items(), key=order):
    med = lambda k: _median([r.get(k) for r in mine])
    out.append({"n": n, "epsilon": eps, "dtype": dtype, "solver": solver, "family": mine[0]["family"],
                "marginal_error": med("marginal_error"), "plan_error_l1": med("plan_error_l1"),
                "loss_rel_error": med("loss_rel_error"), "grad_rel_error": med("grad_rel_error"),
                "grad_cosine": med("grad_cosine"), "iterations": med("iterations"),
                "time_ms": med("time_ms"), "failed": sum(failed(r) for r in mine), "rows": len(mine),
                "broken": sum(failed(r) and failure_kind(r) != "not converged" for r in mine)})
  return out


def _median(values):
  values = [v for v in values if v is not None and np.isfinite(v)]
  return float(np.median(values)) if values else None


def _fmt(v, spec=".1e") -> str:
  return "–" if v is None else format(v, spec)


def markdown(report: dict) -> str:
  lines = [f"# OT solver comparison on masked self-transport ({report['device']})", "",
           f"Versions: {report['versions']}.", "",
           "Rows: medians over the problem kinds per n, epsilon, dtype and solver. Errors are against a "
           "float64 reference (symmetric Sinkhorn + Newton to 1e-12; gradient by the implicit function "
           "theorem with a dense solve). `failed` = raised, NaN/inf, or missed its own threshold (POT's 1e-9 "
           "is out of float32's reach: it always runs its 1000 iterations); `broken` = raised, NaN/inf, or "
           "a plan with marginal error >= 0.5 (an underflowed kernel). Gradients are of <C(x), T(C(x))> "
           "w.r.t. the points x. Solver settings: `solvers` in results.json(.gz).", ""]
  if report["reference_checks"]:
    lines += ["Reference gradient vs central finite differences: " + ", ".join(
        f"n={c['n']} eps={c['epsilon']:g}: {c['implicit_vs_fd_rel']:.1e}" for c in report["reference_checks"]), ""]
  cell = lambda f: "none | |" if f is None else f"{f['epsilon']:g} | {', '.join(f['how'])} | {f['problems']}/{f['of']}"
  for dtype in sorted({r["dtype"] for r in report["rows"]}):  # float32 first
    rows = [r for r in report["rows"] if r["dtype"] == dtype]
    lines += [f"## First failure per solver, {dtype} (epsilon decreasing; all n)", "",
              "| solver | first failing epsilon | how | problems | first broken epsilon | how | problems |",
              "|---|---|---|---|---|---|---|"]
    broken = first_failures(rows, broken_only=True)
    lines += [f"| {solver} | {cell(f)} | {cell(broken[solver])} |" for solver, f in first_failures(rows).items()]
    lines.append("")
  for n in sorted({r["n"] for r in report["rows"]}):
    lines += [f"## Summary, n = {n}", "", "| eps | dtype | solver | marginal err | plan L1 err | loss rel err | "
              "grad rel err | grad cos | iterations | time ms | failed/rows | broken/rows |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary(r for r in report["rows"] if r["n"] == n):
      lines.append(f"| {s['epsilon']:g} | {s['dtype']} | {s['solver']} | {_fmt(s['marginal_error'])} | "
                   f"{_fmt(s['plan_error_l1'])} | {_fmt(s['loss_rel_error'])} | {_fmt(s['grad_rel_error'])} | "
                   f"{_fmt(s['grad_cosine'], '.4f')} | {_fmt(s['iterations'], '.0f')} | "
                   f"{_fmt(s['time_ms'], '.2f')} | {s['failed']}/{s['rows']} | {s['broken']}/{s['rows']} |")
    lines.append("")
  return "\n".join(lines)


def pareto_figure(report: dict, path: pathlib.Path) -> None:
  """Gradient error vs time per solver family: one panel per (n, epsilon), medians over the kinds."""
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [s for s in summary(report["rows"]) if s["grad_rel_error"] is not None and s["time_ms"]]
  epsilons = sorted({s["epsilon"] for s in rows}, reverse=True)
  sizes = sorted({s["n"] for s in rows})
  if not rows:
    return
  families = sorted({s["family"] for s in rows})
  colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(families)}
  colors.update({f: "k" for f in families if f.startswith("rtjax (default")})  # the default stands out
  fig, axes = plt.subplots(len(sizes), len(epsilons), figsize=(3.6 * len(epsilons), 3.2 * len(sizes) + 0.8),
                           squeeze=False)
  for (i, n), (j, eps) in itertools.product(enumerate(sizes), enumerate(epsilons)):
    ax, mine = axes[i][j], [s for s in rows if (s["n"], s["epsilon"]) == (n, eps)]
    ax.set(xscale="log", yscale="log", title=f"n = {n}, eps = {eps:g}")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # narrow ranges: no overlapping labels
    for s in mine:
      ax.scatter(s["time_ms"], max(s["grad_rel_error"], 1e-9), color=colors[s["family"]],
                 marker="o" if s["dtype"] == "float32" else "s", alpha=0.8)
    if mine:
      ax.step(*zip(*_front(mine)), where="post", color="k", lw=0.8)
  for ax in axes[-1]:
    ax.set_xlabel("time (ms, median)")
  for ax in axes[:, 0]:
    ax.set_ylabel("gradient rel. error")
  handles = [plt.Line2D([], [], color=colors[f], marker="o", ls="", label=f) for f in families]
  handles += [plt.Line2D([], [], color="k", mfc="none", marker=m, ls="", label=d)
              for m, d in (("o", "float32"), ("s", "float64"))]
  fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
  fig.tight_layout(rect=(0, 0.8 / fig.get_figheight(), 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _front(summaries) -> list[tuple[float, float]]:
  """The Pareto front (time, gradient error): each point is faster or more accurate than the others."""
  front, best = [], np.inf
  for s in sorted(summaries, key=lambda s: s["time_ms"]):
    if s["grad_rel_error"] < best:
      best = s["grad_rel_error"]
      front.append((s["time_ms"], max(best, 1e-9)))
  return front


def merge(dirs) -> dict:
  """One report from several runs (e.g. one per n or dtype); a row repeated in a later run replaces
  the earlier one."""
  reports = [benchmark.read_results(d) for d in dirs]
  key = lambda r: (r["solver"], r["dtype"], r["epsilon"], r["n"], r["kind"])
  rows = {key(r): r for report in reports for r in report["rows"]}
  references = {(r["n"], r["epsilon"], r["kind"]): r for report in reports for r in report["references"]}
  checks = {(c["n"], c["epsilon"]): c for report in reports for c in report["reference_checks"]}
  merged = dict(reports[-1], rows=list(rows.values()), references=list(references.values()),
                reference_checks=list(checks.values()), date=max(r["date"] for r in reports),
                solvers={k: v for report in reports for k, v in report["solvers"].items()},
                settings=[r["settings"] for r in reports])
  for field in ("device", "versions"):
    if any(r[field] != merged[field] for r in reports):
      merged[field] = [r[field] for r in reports]
  return merged


def main(argv=None) -> dict:
  args = parse_args(argv)
  save = lambda report: benchmark.write_results(args.out, report, markdown(report), indent=None,
                                                compress=args.gzip)
  report = merge(args.merge) if args.merge else run(args, save)
  save(report)
  pareto_figure(report, args.out / "pareto.png")
  print(f"wrote {args.out}/results.json{'.gz' if args.gzip else ''}, results.md, pareto.png")
  return report


if __name__ == "__main__":
  main()
