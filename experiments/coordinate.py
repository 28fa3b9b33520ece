"""Coordinate prediction (paper Table 3): baseline / +MT / +L_ot / +MT+L_ot on the manifold datasets.

    python -m experiments.coordinate                      # default: circle, 4 methods, 5 seeds, 1000 epochs
    python -m experiments.coordinate --full               # paper protocol: 4 datasets, 10 seeds, 10,000 epochs
    python -m experiments.coordinate --sweep              # re-choose lam/gamma on validation first

Writes OUT/results.json, OUT/results.md and OUT/features_<dataset>.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import time

import jax
import numpy as np

from rtjax import SolverOptions, benchmark, coordinate
from rtjax.data import DATASETS, coordinate_dataset, load_npz, split
from rtjax.train import RotConfig

DEFAULT_DATASETS = ("circle",)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help=f"comma list from {DATASETS}")
  p.add_argument("--full", action="store_true",
                 help="the Table-3 grid: all four datasets, 10 seeds, 10,000 epochs (overrides --datasets, --seeds, "
                 "--epochs)")
  p.add_argument("--methods", default=",".join(coordinate.METHODS))
  p.add_argument("--seeds", type=int, default=5, help="seeds per method (paper protocol: 10)")
  p.add_argument("--epochs", type=int, default=1000,
                 help="epochs per run (paper protocol: 10,000, as with --full)")
  p.add_argument("--lam", type=float, help="lambda for every dataset (default: tuned per dataset)")
  p.add_argument("--gamma", type=float, help="gamma (epsilon) for every dataset (default: tuned)")
  p.add_argument("--sweep", action="store_true", help="choose lam/gamma on the validation split first")
  p.add_argument("--sweep-only", action="store_true", help="run the sweep and stop (no table runs)")
  p.add_argument("--sweep-lams", default="0.1,1,10,100")
  p.add_argument("--sweep-gammas", default="0.1,0.05")
  p.add_argument("--sweep-extra", default="1000:0.1,100:0.01",
                 help="extra lam:gamma pairs (defaults: the two that crash ott-jax's implicit diff)")
  p.add_argument("--sweep-seeds", type=int, default=2)
  p.add_argument("--sweep-epochs", type=int, default=1000)
  p.add_argument("--data", type=pathlib.Path, help="npz with `data` [N, 100], `label` [N, 3]; replaces "
                 "the generated data of the single dataset named by --datasets")
  p.add_argument("--data-seed", type=int, default=0, help="seed of the generated datasets")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("experiments/results/coordinate"))
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--merge", type=pathlib.Path, nargs="+", metavar="DIR",
                 help="combine the results of runs on disjoint datasets into --out (no training)")
  args = p.parse_args(argv)
  if args.full:
    args.epochs, args.seeds = 10_000, 10
  args.sweep = args.sweep or args.sweep_only
  args.datasets = list(DATASETS) if args.full else [d for d in args.datasets.split(",") if d]
  args.methods = [m for m in args.methods.split(",") if m]
  for d in args.datasets:
    if d not in DATASETS:
      p.error(f"unknown dataset {d!r}; choose from {DATASETS}")
  for m in args.methods:
    if m not in coordinate.METHODS:
      p.error(f"unknown method {m!r}; choose from {coordinate.METHODS}")
  if args.data is not None and len(args.datasets) != 1:
    p.error("--data replaces one dataset: name exactly one with --datasets")
  return args


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(",") if v]


def main(argv=None) -> dict:
  args = parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  if args.merge:
    return merge(args.merge, args.out)
  protocol = coordinate.Protocol(epochs=args.epochs)
  seeds = np.arange(args.seeds)
  results, sweeps, settings, fits = {}, {}, {}, {}
  start = time.perf_counter()
  for name in args.datasets:
    data = load_npz(args.data) if args.data is not None else coordinate_dataset(name, args.data_seed)
    tuned = coordinate.TUNED[name]
    if args.sweep and any("ot" in m for m in args.methods):
      grid = [(lam, g) for lam in _floats(args.sweep_lams) for g in _floats(args.sweep_gammas)]
      grid += [tuple(map(float, pair.split(":"))) for pair in args.sweep_extra.split(",") if pair]
      sweeps[name] = coordinate.sweep(
          data, "ot", np.arange(args.sweep_seeds), grid, protocol=coordinate.Protocol(epochs=args.sweep_epochs),
          progress=not args.no_progress)
      tuned = sweeps[name]["chosen"]
      print(f"{name:>10} sweep: chose lam={tuned['lam']:g}, gamma={tuned['gamma']:g}", flush=True)
    lam = args.lam if args.lam is not None else tuned["lam"]
    gamma = args.gamma if args.gamma is not None else tuned["gamma"]
    settings[name] = {"lam": lam, "gamma": gamma, "source": "cli" if args.lam is not None else
                      "sweep" if args.sweep else "tuned (rtjax.coordinate.TUNED)",
                      "data": str(args.data) if args.data else f"generated, seed {args.data_seed}"}
    results[name] = {}
    for method in [] if args.sweep_only else args.methods:
      summary, fit, model = coordinate.train_method(data, method, seeds, lam=lam, epsilon=gamma,
                                                    protocol=protocol, progress=not args.no_progress)
      results[name][method] = summary
      fits[(name, method)] = (fit, model, data)
      print(f"{name:>10} {method:>8}: test MSE {summary['mean']:.4g} ± {summary['std']:.2g} "
            f"({summary['wall_time_s']:.0f} s)", flush=True)
    if results[name]:
      _figure(args.out / f"features_{name}.png", name, fits, args.methods)

  report = {"protocol": vars(protocol), "seeds": args.seeds, "settings": settings, "sweeps": sweeps,
            "ot_solver": dict(dataclasses.asdict(SolverOptions()), warm_start=RotConfig().warm_start),
            "results": results, "paper_table3": coordinate.PAPER_TABLE3,
            "total_wall_time_s": time.perf_counter() - start}
  benchmark.write_results(args.out, report, _markdown(report))
  print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}")
  return report


def merge(dirs, out: pathlib.Path) -> dict:
  """One report from several runs (e.g. datasets run in parallel processes); figures are copied."""
  reports = [benchmark.read_results(d) for d in dirs]
  trained = [r for r in reports if any(r["results"].values())] or reports  # sweep-only runs have no table
  merged = dict(trained[0], settings={}, sweeps={}, results={},
                total_wall_time_s=sum(r["total_wall_time_s"] for r in reports))
  for d, r in zip(dirs, reports):
    if any(r["results"].values()) and (r["protocol"], r["seeds"]) != (merged["protocol"], merged["seeds"]):
      raise ValueError(f"{d}: protocol or seeds differ from the other runs; cannot merge.")
    merged["sweeps"].update(r["sweeps"])
    if "ot_solver" in r:
      merged["ot_solver"] = r["ot_solver"]
    for name, rows in r["results"].items():  # later runs replace single methods, not whole datasets
      merged["results"].setdefault(name, {}).update(rows)
    merged["settings"].update({k: v for k, v in r["settings"].items()
                               if r["results"].get(k) or k not in merged["settings"]})
    for png in d.glob("features_*.png"):
      if png.parent.resolve() != out.resolve():
        shutil.copy(png, out / png.name)
  for name, sw in merged["sweeps"].items():  # where no L_ot row ran, report the sweep's choice
    if not any("ot" in m for m in merged["results"].get(name, {})):
      merged["settings"].setdefault(name, {"data": "generated"}).update(
          lam=sw["chosen"]["lam"], gamma=sw["chosen"]["gamma"], source="sweep (no L_ot row run yet)")
  benchmark.write_results(out, merged, _markdown(merged))
  print(f"merged {len(dirs)} runs into {out}")
  return merged


def _figure(path, name, fits, methods) -> None:
  """Feature manifolds of seed 0 on the test split, one panel per method, beside the target space."""
  panels, targets = {}, None
  for method in methods:
    fit, model, data = fits[(name, method)]
    test = split(data)[2]
    params0 = jax.tree_util.tree_map(lambda a: a[0], fit.best_params)
    panels[coordinate.METHOD_LABELS[method]] = coordinate.encoder_features(model, params0, test.x)
    targets = test.y
  coordinate.feature_figure(path, targets, panels, title=f"{name}: test-set features, seed 0")


def _markdown(report: dict) -> str:
  lines = ["# Coordinate prediction (paper Table 3): test MSE, mean ± std over "
           f"{report['seeds']} seeds", "", coordinate.markdown_table(report["results"]), "",
           "| dataset | lam | gamma | chosen by | data |", "|---|---|---|---|---|"]
  lines += [f"| {d} | {s['lam']:g} | {s['gamma']:g} | {s['source']} | {s['data']} |"
            for d, s in report["settings"].items()]
  for d, sw in report["sweeps"].items():
    lines += ["", f"Validation sweep on {d} (+L_ot, {len(sw['seeds'])} seeds, {sw['epochs']} epochs): "
              "mean best validation MSE", "",
              "| lam | gamma | val MSE | steps with unconverged OT (per seed) | NaN steps |", "|---|---|---|---|---|"]
    lines += [f"| {r['lam']:g} | {r['gamma']:g} | {r['val_mse_mean']:.4g} | {r['ot_unconverged_steps']} | "
              f"{r['nonfinite_steps']} |" for r in sw["rows"]]
  if "ot_solver" in report:
    lines += ["", f"OT solver: {report['ot_solver']}."]
  lines += ["", f"Protocol: {report['protocol']}; total wall time {report['total_wall_time_s']:.0f} s "
            "(summed over merged runs, sweeps included)."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
