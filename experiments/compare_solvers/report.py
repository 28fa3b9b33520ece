"""What the comparison's rows say: how each solver failed and first failed, medians per (n, epsilon,
dtype, solver), the markdown of results.md, the Pareto figure (gradient error vs time) and the merge
of several runs into one report."""
from __future__ import annotations

import itertools
import pathlib

import numpy as np

from experiments.common.results import atomic_path
from experiments.compare_solvers.solvers import METRICS, finite_metrics


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
    out.append({"n": n, "epsilon": eps, "dtype": dtype, "solver": solver, "family": mine[0]["family"],
                **{k: _median([r.get(k) for r in mine]) for k in (*METRICS, "iterations", "time_ms")},
                "failed": sum(failed(r) for r in mine), "rows": len(mine),
                "broken": sum(failed(r) and failure_kind(r) != "not converged" for r in mine)})
  return out


def _median(values):
  values = [v for v in values if v is not None and np.isfinite(v)]
  return float(np.median(values)) if values else None


def _fmt(v, spec=".1e") -> str:
  return "–" if v is None else format(v, spec)


def markdown(report: dict) -> str:
  """results.md: first failures per dtype, then the summary table per n."""
  lines = [f"# OT solver comparison on masked self-transport ({report['device']})", "",
           f"Versions: {report['versions']}.", "",
           "Rows: medians over the problem kinds per n, epsilon, dtype and solver. Errors are against a "
           "float64 reference (symmetric Sinkhorn + Newton to 1e-12; gradient by the implicit function "
           "theorem with a dense solve). `failed` = raised, NaN/inf, or missed its own threshold (POT's 1e-9 "
           "is out of float32's reach: it always runs its 1000 iterations); `broken` = raised, NaN/inf, or "
           "a plan with marginal error >= 0.5 (an underflowed kernel). Gradients are of <C(x), T(C(x))> "
           "w.r.t. the points x. Solver settings: `solvers` in results.json(.gz).", ""]
  if not report.get("complete", True):
    lines += [f"**Partial run** (interrupted or still running): {len(report['references'])} problems measured "
              "so far.", ""]
  if report["reference_checks"]:
    lines += ["Reference gradient vs central finite differences: " + ", ".join(
        f"n={c['n']} eps={c['epsilon']:g}: {c['implicit_vs_fd_rel']:.1e}" for c in report["reference_checks"]), ""]
  for dtype in sorted({r["dtype"] for r in report["rows"]}):  # float32 first
    lines += _failure_table(dtype, [r for r in report["rows"] if r["dtype"] == dtype])
  for n in sorted({r["n"] for r in report["rows"]}):
    lines += _summary_table(n, [r for r in report["rows"] if r["n"] == n])
  return "\n".join(lines)


def _failure_table(dtype: str, rows: list[dict]) -> list[str]:
  cell = lambda f: "none | |" if f is None else f"{f['epsilon']:g} | {', '.join(f['how'])} | {f['problems']}/{f['of']}"
  broken = first_failures(rows, broken_only=True)
  return [f"## First failure per solver, {dtype} (epsilon decreasing; all n)", "",
          "| solver | first failing epsilon | how | problems | first broken epsilon | how | problems |",
          "|---|---|---|---|---|---|---|",
          *(f"| {solver} | {cell(f)} | {cell(broken[solver])} |" for solver, f in first_failures(rows).items()),
          ""]


def _summary_table(n: int, rows: list[dict]) -> list[str]:
  lines = [f"## Summary, n = {n}", "", "| eps | dtype | solver | marginal err | plan L1 err | loss rel err | "
           "grad rel err | grad cos | iterations | time ms | failed/rows | broken/rows |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in summary(rows):
    lines.append(f"| {s['epsilon']:g} | {s['dtype']} | {s['solver']} | {_fmt(s['marginal_error'])} | "
                 f"{_fmt(s['plan_error_l1'])} | {_fmt(s['loss_rel_error'])} | {_fmt(s['grad_rel_error'])} | "
                 f"{_fmt(s['grad_cosine'], '.4f')} | {_fmt(s['iterations'], '.0f')} | "
                 f"{_fmt(s['time_ms'], '.2f')} | {s['failed']}/{s['rows']} | {s['broken']}/{s['rows']} |")
  return lines + [""]


def pareto_figure(report: dict, path: pathlib.Path) -> None:
  """Gradient error vs time per solver family: one panel per (n, epsilon), medians over the kinds.
  Written atomically; nothing is written when no row has both."""
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  # Log axes: only rows with a gradient error and a positive time can be drawn.
  rows = [s for s in summary(report["rows"]) if s["grad_rel_error"] is not None and (s["time_ms"] or 0) > 0]
  if not rows:
    return
  epsilons = sorted({s["epsilon"] for s in rows}, reverse=True)
  sizes = sorted({s["n"] for s in rows})
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
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
  plt.close(fig)


def _front(summaries) -> list[tuple[float, float]]:
  """The Pareto front (time, gradient error): each point is faster or more accurate than the others."""
  front, best = [], np.inf
  for s in sorted(summaries, key=lambda s: s["time_ms"]):
    if s["grad_rel_error"] < best:
      best = s["grad_rel_error"]
      front.append((s["time_ms"], max(best, 1e-9)))
  return front


def merge(reports: list[dict]) -> dict:
  """One report from several runs (e.g. one per n or dtype); a row repeated in a later run replaces
  the earlier one. Rows of runs that wrote a solver's NaN as NaN get the None + `nonfinite` form."""
  key = lambda r: (r["solver"], r["dtype"], r["epsilon"], r["n"], r["kind"])
  rows = {key(r): finite_metrics(r) for report in reports for r in report["rows"]}
  references = {(r["n"], r["epsilon"], r["kind"]): r for report in reports for r in report["references"]}
  checks = {(c["n"], c["epsilon"]): c for report in reports for c in report["reference_checks"]}
  merged = dict(reports[-1], rows=list(rows.values()), references=list(references.values()),
                reference_checks=list(checks.values()), date=max(r["date"] for r in reports),
                solvers={k: v for report in reports for k, v in report["solvers"].items()},
                settings=[r["settings"] for r in reports],
                complete=all(r.get("complete", True) for r in reports))
  for field in ("device", "versions"):
    if any(r[field] != merged[field] for r in reports):
      merged[field] = [r[field] for r in reports]
  return merged
