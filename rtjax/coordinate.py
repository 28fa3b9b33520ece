"""The coordinate-prediction protocol of paper Table 3, as reusable functions.

MLP 100 -> 100 -> 100 (ReLU) encoder, linear regressor to 3 (or 3 * M with MT), weights N(0, 0.001^2),
biases 0; AdamW lr 1e-3, weight decay 0.01, full batch (100 training points), MSE, 10,000 epochs;
validation MSE every 100 epochs keeps the best parameters; test MSE of the best. The data are fixed
(one dataset), the seeds vary the initialisation.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rtjax.data.coordinate import CoordinateData, split
from rtjax.models import MLPRegressor
from rtjax.train import FitResult, RotConfig, fit_seeds, make_loss_fn, prediction_mse

# Paper Table 3 (test MSE, mean and std over 10 runs); the paper has no swiss-roll column.
PAPER_TABLE3 = {
    "baseline": {"mammoth": (211, 55), "torus": (3.01, 0.11), "circle": (0.154, 0.006)},
    "mt": {"mammoth": (174, 76), "torus": (2.99, 0.11), "circle": (0.152, 0.005)},
    "ot": {"mammoth": (87, 26), "torus": (0.77, 0.02), "circle": (0.010, 0.001)},
    "mt+ot": {"mammoth": (76, 53), "torus": (0.75, 0.03), "circle": (0.010, 0.001)},
}
# lam, gamma chosen on the validation split by `python -m experiments.coordinate --full --sweep`
# (experiments/results/coordinate/results.json holds the sweep).
TUNED = {
    "torus": {"lam": 100.0, "gamma": 0.01},
    "circle": {"lam": 100.0, "gamma": 0.01},
    "swiss_roll": {"lam": 100.0, "gamma": 0.01},
    "mammoth": {"lam": 100.0, "gamma": 0.05},
}
METHODS = ("baseline", "mt", "ot", "mt+ot")
METHOD_LABELS = {"baseline": "Baseline", "mt": "+ MT", "ot": "+ L_ot", "mt+ot": "+ MT + L_ot"}


@dataclasses.dataclass(frozen=True)
class Protocol:
  epochs: int = 10_000
  eval_every: int = 100
  learning_rate: float = 1e-3
  weight_decay: float = 0.01
  num_targets: int = 8  # M for the MT methods


def method_setup(method: str, lam: float, epsilon: float, protocol: Protocol) -> tuple[MLPRegressor, RotConfig]:
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")
  model = MLPRegressor(num_targets=protocol.num_targets if "mt" in method else 1)
  return model, RotConfig(lam=lam if "ot" in method else 0.0, epsilon=epsilon)


def train_method(data: CoordinateData, method: str, seeds, *, lam: float = 0.0, epsilon: float = 0.1,
                 protocol: Protocol = Protocol(), progress: bool = True) -> tuple[dict, FitResult, MLPRegressor]:
  """Train all `seeds` of one method on one dataset; returns (summary dict, FitResult, model)."""
  model, rot = method_setup(method, lam, epsilon, protocol)
  train, val, test = (tuple(map(jnp.asarray, part)) for part in split(data))
  optimizer = optax.adamw(protocol.learning_rate, weight_decay=protocol.weight_decay)
  start = time.perf_counter()
  fit = fit_seeds(model, make_loss_fn(model, rot), optimizer, train, val, jnp.asarray(seeds),
                  epochs=protocol.epochs, eval_every=protocol.eval_every, progress=progress,
                  description=f"{method} lam={rot.lam:g} gamma={epsilon:g}")
  test_mse = np.asarray(jax.vmap(lambda p: prediction_mse(model, p, test))(fit.best_params))
  summary = {
      "method": method, "lam": rot.lam, "gamma": epsilon if rot.lam else None,
      "num_targets": model.num_targets, "seeds": [int(s) for s in seeds],
      "test_mse": test_mse.tolist(), "mean": float(np.mean(test_mse)), "std": float(np.std(test_mse)),
      "val_mse": np.asarray(fit.best_val_mse).tolist(), "best_epoch": np.asarray(fit.best_epoch).tolist(),
      "nonfinite_steps": np.asarray(fit.nonfinite_steps).tolist(),
      "ot_unconverged_steps": np.asarray(fit.unconverged_steps).tolist(),
      "wall_time_s": time.perf_counter() - start,
  }
  return summary, fit, model


def sweep(data: CoordinateData, method: str, seeds, grid, *, protocol: Protocol = Protocol(),
          progress: bool = True) -> dict:
  """Choose (lam, gamma) from `grid` [(lam, gamma), ...] by mean best validation MSE over `seeds`
  (the test split is never looked at)."""
  rows = []
  for lam, eps in grid:
    summary, _, _ = train_method(data, method, seeds, lam=lam, epsilon=eps, protocol=protocol,
                                 progress=progress)
    val = np.asarray(summary["val_mse"])
    rows.append({"lam": lam, "gamma": eps, "val_mse_mean": float(np.mean(val)) if np.isfinite(val).all()
                 else float("inf"), "val_mse": val.tolist(), "nonfinite_steps": summary["nonfinite_steps"],
                 "ot_unconverged_steps": summary["ot_unconverged_steps"], "wall_time_s": summary["wall_time_s"]})
  best = min(rows, key=lambda r: r["val_mse_mean"])
  return {"method": method, "seeds": [int(s) for s in seeds], "epochs": protocol.epochs, "rows": rows,
          "chosen": {"lam": best["lam"], "gamma": best["gamma"]}}


def _fmt(mean: float, std: float) -> str:
  digits = 3 if abs(mean) < 1 else 2 if abs(mean) < 100 else 0
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(results: dict) -> str:
  """Table-3-style markdown: ours (mean ± std test MSE) beside the paper's, per dataset and method.

  `results[dataset][method]` holds `train_method` summaries.
  """
  datasets = list(results)
  head = "| Method | " + " | ".join(f"{d} (ours) | {d} (paper)" for d in datasets) + " |"
  lines = [head, "|---" * (1 + 2 * len(datasets)) + "|"]
  for method in METHODS:
    cells = []
    for d in datasets:
      ours = results[d].get(method)
      paper = PAPER_TABLE3[method].get(d)
      cells.append(_fmt(ours["mean"], ours["std"]) if ours else "—")
      cells.append(_fmt(*paper) if paper else "—")
    if any(results[d].get(method) for d in datasets):
      lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def encoder_features(model: MLPRegressor, params, x) -> np.ndarray:
  """Features z [n, hidden] of one parameter set."""
  return np.asarray(model.apply(params, jnp.asarray(x))[1])


def pca(points: np.ndarray, k: int = 3) -> np.ndarray:
  """Projection [n, k] of points [n, d] on their top-k principal axes."""
  centred = points - points.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:k].T


def feature_figure(path, targets: np.ndarray, panels: dict[str, np.ndarray], title: str = "") -> None:
  """3-D scatter of the target space and of each panel's feature PCA, coloured by the target's
  first principal coordinate (paper Fig. 2). Needs matplotlib (extra `plots`)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colour = pca(targets, 1)[:, 0]
  fig = plt.figure(figsize=(4 * (1 + len(panels)), 4.4))
  for i, (name, pts) in enumerate([("target space", targets)] + list(panels.items())):
    ax = fig.add_subplot(1, 1 + len(panels), i + 1, projection="3d")
    p = pca(pts, 3) if name != "target space" else pts
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=colour, cmap="viridis", s=3)
    ax.set_title(name if name == "target space" else f"features: {name} (PCA)")
    ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0, 1, 0.92 if title else 1))  # keep the panel titles clear of the suptitle
  fig.savefig(path, dpi=110)
  plt.close(fig)
