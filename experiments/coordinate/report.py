"""Tables and figures of the coordinate-prediction experiment: ours beside the paper's Table 3."""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from experiments.common.results import atomic_path
from experiments.coordinate.configs import METHOD_LABELS, METHODS, PAPER_TABLE3


def _fmt(mean: float | None, std: float | None) -> str:
  if mean is None or std is None:
    return "non-finite"
  digits = 3 if abs(mean) < 1 else 2 if abs(mean) < 100 else 0
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(results: dict) -> str:
  """Markdown: test MSE (mean ± std over seeds) per method, ours beside the paper's, per dataset.

  `results[dataset][method]` holds `train.fit` summaries."""
  datasets = list(results)
  lines = ["| Method | " + " | ".join(f"{d} (ours) | {d} (paper)" for d in datasets) + " |",
           "|---" * (1 + 2 * len(datasets)) + "|"]
  for method in METHODS:
    if not any(results[d].get(method) for d in datasets):
      continue
    cells = []
    for d in datasets:
      ours, paper = results[d].get(method), PAPER_TABLE3[method].get(d)
      cells += [_fmt(ours["mean"], ours["std"]) if ours else "—", _fmt(*paper) if paper else "—"]
    lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def markdown(report: dict) -> str:
  """The whole results.md: table, settings, sweeps, solver, protocol and wall times."""
  lines = [f"# Coordinate prediction (paper Table 3): test MSE, mean ± std over {report['protocol']['seeds']} "
           "seeds", "", table(report["results"]), "",
           "| dataset | lam | gamma | chosen by | data | wall time (s, per method) |", "|---|---|---|---|---|---|"]
  for d, s in report["settings"].items():
    times = ", ".join(f"{m} {r['wall_time_s']:.0f}" for m, r in report["results"].get(d, {}).items())
    lines.append(f"| {d} | {s['lam']:g} | {s['gamma']:g} | {s['source']} | {s['data']} | {times} |")
  for d, sweep in report["sweeps"].items():
    lines += ["", f"Validation sweep on {d} (+L_ot, {len(sweep['seeds'])} seeds, {sweep['epochs']} epochs): "
              "mean best validation MSE", "",
              "| lam | gamma | val MSE | steps with unconverged OT (per seed) | NaN steps |", "|---|---|---|---|---|"]
    lines += [f"| {r['lam']:g} | {r['gamma']:g} | {_val(r['val_mse_mean'])} | {r['ot_unconverged_steps']} | "
              f"{r['nonfinite_steps']} |" for r in sweep["rows"]]
  if report.get("nonfinite"):
    lines += ["", f"**Non-finite values** (written as null): {', '.join(report['nonfinite'])}."]
  lines += ["", f"OT solver: {report['ot_solver']}.", "",
            f"Protocol: {report['protocol']}; {report['workers']} concurrent units; total wall time "
            f"{report['total_wall_time_s']:.0f} s."]
  return "\n".join(lines) + "\n"


def _val(value) -> str:
  return "non-finite" if value is None or not np.isfinite(value) else f"{value:.4g}"


def pca(points: np.ndarray, k: int = 3) -> np.ndarray:
  """Projection [n, k] of points [n, d] on their top-k principal axes."""
  centred = points - points.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:k].T


def feature_figure(path: pathlib.Path, targets: np.ndarray, panels: dict[str, np.ndarray], title: str = "") -> None:
  """3-D scatter of the target space and of each panel's feature PCA, coloured by the target's first
  principal coordinate (paper Fig. 2); written atomically. Needs matplotlib (extra `plots`)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colour = pca(targets, 1)[:, 0]
  fig = plt.figure(figsize=(4 * (1 + len(panels)), 4.4))
  for i, (name, pts) in enumerate([("target space", targets)] + list(panels.items())):
    ax = fig.add_subplot(1, 1 + len(panels), i + 1, projection="3d")
    p = pts if i == 0 else pca(pts, 3)
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=colour, cmap="viridis", s=3)
    ax.set_title(name if i == 0 else f"features: {name} (PCA)")
    ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0, 1, 0.92 if title else 1))  # keep the panel titles clear of the suptitle
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)


def seed0_features(program, fit, x: np.ndarray) -> np.ndarray:
  """Encoder features [n, hidden] of seed 0's best parameters."""
  params0 = jax.tree.map(lambda a: a[0], fit.best_params)
  return np.asarray(program.model.apply(params0, x)[1])
