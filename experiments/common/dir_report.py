"""Reports of a DIR study: the per-shot table (mean ± std over seeds) beside the paper's, and the per-bin
error figure (test MAE per label bin for each method over the training histogram)."""
from __future__ import annotations

import pathlib

import numpy as np

from rtjax.shots import SHOTS

REGIONS = ("all", *SHOTS)


def cell(stats: dict | None, digits: int) -> str:
  """"mean ± std", or "—" without a value."""
  if not stats or stats.get("mean") is None:
    return "—"
  return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def shot_table(report: dict, metric: str = "mae", *, names: dict[str, str] | None = None,
               paper: dict[str, tuple] | None = None, digits: int = 2) -> str:
  """A markdown table: one row per method, `metric` per region (mean ± std, n seeds) and the paper's row
  where `paper[method]` gives (all, many, medium, few)."""
  names = names or {}
  head = "| method | seeds | " + " | ".join(REGIONS) + " |" + (" paper (all / many / med. / few) |" if paper else "")
  lines = [head, "|" + "---|" * (2 + len(REGIONS) + bool(paper))]
  for method, regions in report["summary"].items():
    seeds = max(regions[r][metric]["n"] for r in REGIONS)
    row = f"| {names.get(method, method)} | {seeds} | " + " | ".join(
        cell(regions[r][metric], digits) for r in REGIONS) + " |"
    if paper:
      row += " " + (" / ".join(f"{v:.2f}" for v in paper[method]) if method in paper else "—") + " |"
    lines.append(row)
  return "\n".join(lines)


def shot_sizes(report: dict) -> str:
  """One line: test examples per region (from the first run)."""
  first = next(iter(next(iter(report["runs"].values())).values()))
  return "test examples per region: " + ", ".join(f"{r} {first['test'][r]['count']:,}" for r in REGIONS)


def per_bin_figure(report: dict, path: pathlib.Path, *, train_labels: np.ndarray, bin_width: float,
                   origin: float = 0.0, names: dict[str, str] | None = None, xlabel: str = "label",
                   methods: tuple[str, ...] | None = None,
                   hist_label: str = "training examples per bin") -> pathlib.Path:
  """Test MAE per label bin (mean over seeds) of each method, over the histogram of `train_labels` (grey)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments.common.results import atomic_path

  names = names or {}
  fig, ax = plt.subplots(figsize=(9, 4.5))
  twin = ax.twinx()
  bins, counts = np.unique(np.floor((np.asarray(train_labels) - origin) / bin_width), return_counts=True)
  twin.bar(origin + (bins + 0.5) * bin_width, counts, width=bin_width, color="0.85", zorder=0)
  twin.set_ylabel(hist_label)
  twin.set_yscale("log")
  ax.set_zorder(twin.get_zorder() + 1)
  ax.patch.set_visible(False)
  for method in methods or report["runs"]:
    runs = list(report["runs"].get(method, {}).values())
    if not runs:
      continue
    mae = np.mean([r["per_bin"]["mae"] for r in runs], axis=0)
    centres = origin + (np.asarray(runs[0]["per_bin"]["bin"]) + 0.5) * bin_width
    ax.plot(centres, mae, lw=1.2, label=names.get(method, method))
  ax.set_xlabel(xlabel)
  ax.set_ylabel("test MAE per bin (mean over seeds)")
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  path = pathlib.Path(path)
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
  plt.close(fig)
  return path
