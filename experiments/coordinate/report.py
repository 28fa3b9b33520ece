"""Tables and figures of the coordinate-prediction experiment: ours beside the paper's Table 3, and the
tightness diagnostics (paper Table 4) of every method's test features."""
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


DIAGNOSTICS = (("euclidean_spearman", "Euclidean Spearman"), ("euclidean_kendall", "Euclidean Kendall"),
               ("euclidean_volume", "Euclidean volume"), ("cosine_spearman", "cosine Spearman"),
               ("cosine_kendall", "cosine Kendall"), ("cosine_volume", "cosine volume"))


def _mean_std(values) -> tuple[float | None, float | None]:
  v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
  return (float(v.mean()), float(v.std())) if v.size and np.isfinite(v).all() else (None, None)


def diagnostics_table(results: dict) -> str:
  """Markdown: rank correlations between feature and target distances over the test pairs, and volumes
  (mean pairwise feature distance), mean ± std over seeds, per dataset and method."""
  lines = ["| dataset | method | test MSE | " + " | ".join(label for _, label in DIAGNOSTICS) + " |",
           "|---" * (3 + len(DIAGNOSTICS)) + "|"]
  for d, rows in results.items():
    for method in METHODS:
      row = rows.get(method)
      if not row or "diagnostics" not in row:
        continue
      cells = [_fmt(*_mean_std(row["diagnostics"][key])) for key, _ in DIAGNOSTICS]
      lines.append(f"| {d} | {METHOD_LABELS[method]} | {_fmt(row['mean'], row['std'])} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def markdown(report: dict) -> str:
  """The whole results.md: table, diagnostics, settings, sweeps, solver, protocol and wall times."""
  lines = [f"# Coordinate prediction (paper Table 3): test MSE, mean ± std over {report['protocol']['seeds']} "
           "seeds", "", table(report["results"]), ""]
  if any("diagnostics" in row for rows in report["results"].values() for row in rows.values()):
    lines += ["## Tightness diagnostics of the test features (paper Table 4)", "",
              f"Over all pairs of the first {report.get('diagnostic_points', 'N')} test points: Spearman and "
              "Kendall (tau-b) correlation between feature distances and target distances (higher: the "
              "features keep the targets' ordinality), and the volume, the mean pairwise feature distance "
              "(lower: tighter); `rtjax.tightness_diagnostics` on each seed's best parameters.", "",
              diagnostics_table(report["results"]), ""]
  if report.get("peer_settings"):
    lines += [f"Peer settings (PH-Reg's coordinate `main.py`; RankSim: its published AgeDB setting): "
              f"{report['peer_settings']}.", ""]
  lines += ["| dataset | lam | gamma | chosen by | data | wall time (s, per method) |", "|---|---|---|---|---|---|"]
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


def diagnostics_figure(path: pathlib.Path, results: dict) -> None:
  """Per dataset: Euclidean Spearman correlation and cosine volume of the test features against test
  MSE, one marker per method (mean ± std over seeds); written atomically. Needs matplotlib."""
  import matplotlib
  import matplotlib.ticker
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  datasets = [d for d, rows in results.items() if any("diagnostics" in r for r in rows.values())]
  fig, axes = plt.subplots(2, len(datasets), figsize=(max(4.2 * len(datasets), 9.0), 8.0), squeeze=False)
  colours = plt.get_cmap("tab10")
  for col, d in enumerate(datasets):
    for i, method in enumerate(METHODS):
      row = results[d].get(method)
      if not row or "diagnostics" not in row or row["mean"] is None:
        continue
      for r, key in enumerate(("euclidean_spearman", "cosine_volume")):
        mean, std = _mean_std(row["diagnostics"][key])
        if mean is not None:
          axes[r, col].errorbar(row["mean"], mean, xerr=row["std"], yerr=std, fmt="o", color=colours(i),
                                label=METHOD_LABELS[method] if col == 0 and r == 0 else None, capsize=2)
    axes[0, col].set_title(d)
    for r, label in enumerate(("Spearman (Euclidean)\nhigher: ordinality kept", "volume (cosine)\nlower: tighter")):
      axes[r, col].set_xscale("log")
      axes[r, col].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      axes[r, col].set_xlabel("test MSE")
      if col == 0:
        axes[r, col].set_ylabel(label)
  fig.legend(loc="lower center", ncol=5 if len(datasets) > 1 else 3, frameon=False)
  fig.suptitle("Tightness of the test features vs test MSE")
  fig.tight_layout(rect=(0, 0.09, 1, 0.95))
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)


def seed0_features(program, fit, x: np.ndarray) -> np.ndarray:
  """Encoder features [n, hidden] of seed 0's best parameters."""
  params0 = jax.tree.map(lambda a: a[0], fit.best_params)
  return np.asarray(program.model.apply(params0, x)[1])
