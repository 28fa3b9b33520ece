"""Coordinate prediction (paper Table 3): baseline / +MT / +L_ot / +MT+L_ot and the peers (InfDrop, OE,
topological autoencoder, PH-Reg, RankSim) on the manifold datasets, with the tightness diagnostics.

    python -m experiments.coordinate             # paper protocol on circle: 4 methods x 10 seeds x 10,000 epochs
    python -m experiments.coordinate --full      # all nine methods (peers too) on all four datasets: Table 3
    python -m experiments.coordinate --sweep     # choose lambda/gamma on the validation split first

Writes OUT/results.json, OUT/results.md and OUT/features_<dataset>.png (OUT defaults to
runs/coordinate, which git ignores; the committed reference results are rewritten only with an
explicit --out). Results are saved after every finished (dataset, method); --resume skips those
already in OUT. Exit status 1 if any reported metric is non-finite (written as null).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import shutil
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from experiments.common import cli, results
from experiments.coordinate import configs, report, train
from experiments.coordinate.data import coordinate_dataset, load_npz, split


def parse_args(argv=None) -> argparse.Namespace:
  """Parses and checks every argument (and the output folder) before any work."""
  protocol = configs.Protocol()
  p = argparse.ArgumentParser(prog="python -m experiments.coordinate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  datasets = cli.comma_list(str, choices=configs.DATASETS)
  p.add_argument("--datasets", type=datasets, help=f"comma list from {', '.join(configs.DATASETS)} "
                 f"(default: {', '.join(configs.DEFAULT_DATASETS)})")
  p.add_argument("--full", action="store_true", help="all four datasets and, unless --methods says otherwise, "
                 "all nine methods (the complete Table 3)")
  p.add_argument("--methods", type=cli.comma_list(str, choices=configs.METHODS),
                 help=f"comma list from {', '.join(configs.METHODS)} (default: {', '.join(configs.CORE_METHODS)}; "
                 "with --full: all)")
  p.add_argument("--seeds", type=cli.positive_int, default=protocol.seeds, help="seeds per method (paper: 10)")
  p.add_argument("--epochs", type=cli.positive_int, default=protocol.epochs,
                 help=f"epochs per run, a multiple of {protocol.eval_every} (the validation interval; paper: 10,000)")
  p.add_argument("--lam", type=cli.nonnegative_float, help="lambda for every dataset (default: tuned per dataset)")
  p.add_argument("--gamma", type=cli.positive_float, help="gamma (epsilon) for every dataset (default: tuned)")
  p.add_argument("--sweep", action="store_true", help="choose lambda/gamma on the validation split first")
  p.add_argument("--sweep-only", action="store_true", help="run the sweep and stop (no table runs)")
  p.add_argument("--sweep-lams", type=cli.comma_list(cli.nonnegative_float), default=list(configs.SWEEP_LAMS))
  p.add_argument("--sweep-gammas", type=cli.comma_list(cli.positive_float), default=list(configs.SWEEP_GAMMAS))
  p.add_argument("--sweep-extra", type=cli.comma_list(_pair), default=list(configs.SWEEP_EXTRA),
                 help="extra lam:gamma pairs, e.g. 1000:0.1,100:0.01")
  p.add_argument("--sweep-seeds", type=cli.positive_int, default=configs.SWEEP_SEEDS)
  p.add_argument("--sweep-epochs", type=cli.positive_int, default=configs.SWEEP_EPOCHS)
  p.add_argument("--data", type=pathlib.Path, help="npz with `data` [N, 100] and `label` [N, 3]; replaces "
                 "the generated data of the single dataset named by --datasets")
  p.add_argument("--data-seed", type=int, default=0, help="seed of the generated datasets")
  p.add_argument("--workers", type=cli.positive_int, default=os.cpu_count() or 1,
                 help="units trained concurrently (default: one per core)")
  p.add_argument("--resume", action="store_true", help="keep the results already in OUT for the same "
                 "protocol and settings, and train only the missing (dataset, method) units")
  p.add_argument("--out", type=pathlib.Path, default=results.default_out("coordinate"))
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--merge", type=pathlib.Path, nargs="+", metavar="DIR",
                 help="combine the results of runs on disjoint datasets into --out (no training)")
  args = p.parse_args(argv)
  if args.full and args.datasets:
    p.error("--full runs all four datasets; do not combine it with --datasets")
  args.datasets = list(configs.DATASETS) if args.full else args.datasets or list(configs.DEFAULT_DATASETS)
  args.methods = args.methods or list(configs.METHODS if args.full else configs.CORE_METHODS)
  for name, epochs in (("--epochs", args.epochs), ("--sweep-epochs", args.sweep_epochs)):
    if epochs % protocol.eval_every:
      p.error(f"{name} must be a multiple of {protocol.eval_every} (the validation interval), got {epochs}")
  args.sweep = args.sweep or args.sweep_only
  if args.data is not None:
    if len(args.datasets) != 1:
      p.error("--data replaces one dataset: name exactly one with --datasets")
    try:
      args.loaded = load_npz(args.data)
    except (OSError, ValueError) as e:
      p.error(f"--data: {e}")
  if args.merge:
    missing = [str(d) for d in args.merge if not any((d / n).exists() for n in ("results.json", "results.json.gz"))]
    if missing:
      p.error(f"--merge: no results.json in {', '.join(missing)}")
  cli.check_out_dir(p, args.out)
  return args


def _pair(text: str) -> tuple[float, float]:
  try:
    lam, gamma = text.split(":")
    return cli.nonnegative_float(lam), cli.positive_float(gamma)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected lam:gamma, got {text!r}") from None


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.merge:
    return merge(args.merge, args.out)
  protocol = dataclasses.replace(configs.Protocol(), epochs=args.epochs, seeds=args.seeds)
  data = {d: getattr(args, "loaded", None) or coordinate_dataset(d, args.data_seed) for d in args.datasets}
  source = str(args.data) if args.data else f"generated, seed {args.data_seed}"
  previous = _previous(args, protocol) if args.resume else {}
  report_ = {"protocol": dataclasses.asdict(protocol), "settings": {}, "sweeps": previous.get("sweeps", {}),
             "results": {d: dict(previous.get("results", {}).get(d, {})) for d in args.datasets},
             "paper_table3": configs.PAPER_TABLE3, "workers": args.workers, "total_wall_time_s": 0.0,
             "ot_solver": dict(dataclasses.asdict(configs.SOLVER), warm_start=True, fixed_targets=True),
             "diagnostic_points": configs.DIAGNOSTIC_POINTS}
  if any(m in configs.PEERS for m in args.methods):
    report_["peer_settings"] = _peer_settings(args.methods)
  start = time.perf_counter()

  def save() -> list[str]:
    report_["total_wall_time_s"] = time.perf_counter() - start
    return results.write_results(args.out, report_, report.markdown)

  if args.sweep and any(m in configs.OT_METHODS for m in args.methods):
    _sweep(args, data, report_, save)
  for d in args.datasets:
    chosen = report_["sweeps"][d]["chosen"] if d in report_["sweeps"] else configs.TUNED[d]
    report_["settings"][d] = {
        "lam": chosen["lam"] if args.lam is None else args.lam,
        "gamma": chosen["gamma"] if args.gamma is None else args.gamma,
        "source": "cli" if args.lam is not None or args.gamma is not None else
                  "sweep" if d in report_["sweeps"] else "tuned (experiments/coordinate/configs.py)",
        "data": source}
  if args.sweep_only:
    save()
    return report_

  # Longest jobs first, and neighbours on different programs (two workers compile different ones).
  # (RankSim and PH-Reg are the slowest peers.)
  slow = configs.OT_METHODS + ("ranksim", "phreg")
  order = sorted(args.methods, key=lambda m: (m not in slow, m not in configs.MT_METHODS))
  jobs = [(train.Unit(d, m, report_["settings"][d]["lam"], report_["settings"][d]["gamma"]), data[d], protocol)
          for d in args.datasets for m in order if m not in report_["results"][d]]
  fits = {}
  with _bar(args, jobs, "Table 3") as bar:
    for unit, summary, fit, prog in train.run_units(jobs, workers=args.workers, progress=bar.update):
      report_["results"][unit.dataset][unit.method] = summary
      fits[unit.dataset, unit.method] = (fit, prog)
      tqdm.write(f"{unit.dataset:>10} {unit.method:>8}: test MSE {_num(summary['mean'])} ± "
                 f"{_num(summary['std'])} ({summary['wall_time_s']:.0f} s)")
      save()
      if all((unit.dataset, m) in fits for m in args.methods):
        _figure(args.out / f"features_{unit.dataset}.png", unit.dataset, data[unit.dataset], fits, args.methods)
  report_["nonfinite"] = save()
  if fits:
    report.diagnostics_figure(args.out / "diagnostics.png", report_["results"])
  print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'} ({time.perf_counter() - start:.0f} s)")
  return report_


def _peer_settings(methods) -> dict:
  """The peers' weights per dataset and sampling settings, for the results files."""
  out = {m: configs.PEER_WEIGHTS[m] for m in methods if m in configs.PEERS and m != "infdrop"}
  out.update(oe_samples=configs.OE_SAMPLES, ph_dimension_points=configs.PH_DIMENSION_POINTS,
             topology_points=configs.OE_SAMPLES, ranksim_interpolation=configs.RANKSIM_INTERPOLATION)
  if "infdrop" in methods:
    out["infdrop_kl_weight"] = configs.INFDROP_KL_WEIGHT
  return out


def _num(value) -> str:
  return "non-finite" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _bar(args, jobs, description: str):
  return tqdm(total=sum(p.epochs * p.seeds for _, _, p in jobs), desc=description, unit="seed-epoch",
              unit_scale=True, disable=args.no_progress, smoothing=0.05)


def _previous(args, protocol) -> dict:
  """Results already in OUT from a run with the same protocol, data and lambda/gamma choice."""
  try:
    old = results.read_results(args.out)
  except FileNotFoundError:
    return {}
  if old.get("protocol") != dataclasses.asdict(protocol):
    sys.exit(f"--resume: {args.out} holds results of another protocol ({old.get('protocol')}); "
             "use another --out or drop --resume")
  keep = {d: rows for d, rows in old.get("results", {}).items() if d in args.datasets}
  for d, rows in keep.items():
    setting = old["settings"].get(d, {})
    for m, row in list(rows.items()):
      if m in configs.OT_METHODS and ((args.lam is not None and row["lam"] != args.lam) or
                        (args.gamma is not None and row["gamma"] != args.gamma)):
        del rows[m]
    if setting.get("data") != (str(args.data) if args.data else f"generated, seed {args.data_seed}"):
      keep[d] = {}
  return {"results": keep, "sweeps": {d: s for d, s in old.get("sweeps", {}).items() if d in args.datasets}}


def _sweep(args, data, report_, save) -> None:
  """Chooses (lam, gamma) per dataset by the mean best validation MSE of +L_ot (never the test split)."""
  protocol = dataclasses.replace(configs.Protocol(), epochs=args.sweep_epochs, seeds=args.sweep_seeds)
  grid = [(lam, g) for lam in args.sweep_lams for g in args.sweep_gammas] + list(args.sweep_extra)
  jobs = [(train.Unit(d, "ot", lam, g), data[d], protocol) for d in args.datasets if d not in report_["sweeps"]
          for lam, g in grid]
  rows = {d: [] for d in args.datasets}
  with _bar(args, jobs, "sweep") as bar:
    for unit, summary, _, _ in train.run_units(jobs, workers=args.workers, progress=bar.update):
      val = np.asarray(summary["val_mse"], dtype=float)
      rows[unit.dataset].append({"lam": unit.lam, "gamma": unit.gamma,
                                 "val_mse_mean": float(val.mean()) if np.isfinite(val).all() else float("inf"),
                                 **{k: summary[k] for k in ("val_mse", "nonfinite_steps", "ot_unconverged_steps",
                                                            "wall_time_s")}})
      if len(rows[unit.dataset]) == len(grid):
        order = {pair: i for i, pair in enumerate(grid)}
        done = sorted(rows[unit.dataset], key=lambda r: order[(r["lam"], r["gamma"])])
        best = min(done, key=lambda r: r["val_mse_mean"])
        report_["sweeps"][unit.dataset] = {"method": "ot", "seeds": list(range(protocol.seeds)),
                                           "epochs": protocol.epochs, "rows": done,
                                           "chosen": {"lam": best["lam"], "gamma": best["gamma"]}}
        tqdm.write(f"{unit.dataset:>10} sweep: chose lam={best['lam']:g}, gamma={best['gamma']:g}")
        save()


def _figure(path, name, data, fits, methods) -> None:
  """Feature manifolds of seed 0 on the test split, one panel per method, beside the target space."""
  test = split(data)[2]
  shown = [m for m in methods if m in configs.FIGURE_METHODS] or methods
  panels = {configs.METHOD_LABELS[m]: report.seed0_features(fits[name, m][1], fits[name, m][0], test.x)
            for m in shown}
  report.feature_figure(path, test.y, panels, title=f"{name}: test-set features, seed 0")


def merge(dirs, out: pathlib.Path) -> dict:
  """One report from several runs on the same protocol (e.g. datasets run in parallel); figures copied.
  Later runs add or replace single methods of a dataset."""
  reports = [results.read_results(d) for d in dirs]
  trained = [r for r in reports if any(r["results"].values())] or reports
  merged = dict(trained[0], settings={}, sweeps={}, results={}, nonfinite=[],
                total_wall_time_s=sum(r["total_wall_time_s"] for r in reports))
  for d, r in zip(dirs, reports):
    if any(r["results"].values()) and r["protocol"] != merged["protocol"]:
      sys.exit(f"--merge: {d} was run with another protocol ({r['protocol']}); cannot merge")
    merged["sweeps"].update(r["sweeps"])
    for name, rows in r["results"].items():
      merged["results"].setdefault(name, {}).update(rows)
    merged["settings"].update({k: v for k, v in r["settings"].items()
                               if r["results"].get(k) or k not in merged["settings"]})
    for png in pathlib.Path(d).glob("features_*.png"):
      if png.parent.resolve() != out.resolve():
        shutil.copy(png, out / png.name)
  merged["nonfinite"] = results.write_results(out, merged, report.markdown)
  if any("diagnostics" in row for rows in merged["results"].values() for row in rows.values()):
    report.diagnostics_figure(out / "diagnostics.png", merged["results"])
  print(f"merged {len(dirs)} runs into {out}")
  return merged


def run(argv=None) -> int:
  """The command line: exit status 0, or 1 if a reported metric is non-finite."""
  return cli.exit_status(main(argv))
