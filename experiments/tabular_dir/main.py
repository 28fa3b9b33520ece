"""The offline tabular DIR benchmark: AgeDB-DIR's protocol (balanced val/test, shots by training count,
per-shot MAE/GM) on ggplot2 `diamonds` prices, every method of paper Table 1, 10 seeds.

    python -m experiments.tabular_dir                  # Table 1's 7 methods x 10 seeds (minutes on 2 cores)
    python -m experiments.tabular_dir --ablations      # + Table 5's lambda, gamma, M and noise rows
    python -m experiments.tabular_dir --csv FILE --target COL --numeric a,b --ordinal c --bin-width W

Writes OUT/results.json, OUT/results.md and OUT/per_bin.png (OUT defaults to runs/tabular_dir); every
finished run is saved at once and --resume continues (interrupted runs from their last epoch). Exit status
1 if a reported number is non-finite.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

from experiments.common import cli, dir_report, results
from experiments.common.dir_methods import NAMES, Labels, regressor
from experiments.common.dir_study import Study, run_study
from experiments.common.dir_training import ArrayData
from experiments.tabular_dir import configs, data
from experiments.tabular_dir.models import MLPEncoder


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m experiments.tabular_dir", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--methods", type=cli.comma_list(str, choices=list(configs.METHODS)),
                 help=f"comma list (default: {', '.join(configs.TABLE)}; "
                 f"with --ablations also {', '.join(configs.ABLATIONS)})")
  p.add_argument("--ablations", action="store_true", help="add Table 5's ablation rows")
  p.add_argument("--seeds", type=cli.positive_int, default=len(configs.SEEDS))
  p.add_argument("--epochs", type=cli.positive_int, default=configs.SCHEDULE.epochs)
  p.add_argument("--workers", type=cli.positive_int, default=os.cpu_count() or 1, help="runs trained concurrently")
  p.add_argument("--csv", type=pathlib.Path, help="your own CSV instead of diamonds (with --target, --numeric, "
                 "--bin-width; --ordinal optional)")
  p.add_argument("--target", help="the CSV's target column")
  p.add_argument("--numeric", type=cli.comma_list(str), default=[], help="the CSV's numeric feature columns")
  p.add_argument("--ordinal", type=cli.comma_list(str), default=[], help="the CSV's ordered categorical columns")
  p.add_argument("--bin-width", type=cli.positive_float, help="the CSV's label bin width (its target units)")
  p.add_argument("--resume", action="store_true", help="keep finished runs in OUT and continue the others")
  p.add_argument("--out", type=pathlib.Path, default=results.default_out("tabular_dir"))
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  if args.csv is not None and (args.target is None or not args.numeric or args.bin_width is None):
    p.error("--csv needs --target, --numeric and --bin-width")
  if args.csv is not None and not args.csv.is_file():
    p.error(f"--csv {args.csv}: no such file")
  args.methods = args.methods or list(configs.TABLE) + (list(configs.ABLATIONS) if args.ablations else [])
  cli.check_out_dir(p, args.out)
  return args


def load(args) -> data.TabularDIR:
  if args.csv is None:
    return data.load_diamonds()
  return data.load_csv(args.csv, target=args.target, numeric=args.numeric, ordinal=args.ordinal,
                       bin_width=args.bin_width)


def main(argv=None) -> int:
  args = parse_args(argv)
  d = load(args)
  unit = configs.TARGET_UNIT if args.csv is None else 1.0
  x_train, x_val, x_test = data.standardize(d.x_train, d.x_val, d.x_test)  # by the training statistics
  arrays = ArrayData(x_train, d.y_train / unit, x_val, d.y_val / unit, x_test, d.y_test / unit)
  width, origin = d.bin_width / unit, d.bin_origin / unit
  study = Study(
      task="tabular_dir", methods={m: configs.METHODS[m] for m in args.methods}, seeds=tuple(range(args.seeds)),
      schedule=configs.SCHEDULE.__class__(**{**configs.SCHEDULE.__dict__, "epochs": args.epochs}),
      model=regressor(lambda: MLPEncoder(configs.HIDDEN)),
      labels=Labels(width, origin, num_classes=int(d.n_bins)), noise_std=float(arrays.y_train.std()), scale=unit,
      settings={"data": d.name, "target": d.target, "bin_width": d.bin_width, "bin_origin": d.bin_origin,
                "sizes": [len(d.y_train), len(d.y_val), len(d.y_test)], "hidden": list(configs.HIDDEN)})
  markdown = lambda report: _markdown(report, d)
  report = run_study(study, arrays, out=args.out, resume=args.resume, workers=args.workers,
                     progress=not args.no_progress, markdown=markdown)
  dir_report.per_bin_figure(report, args.out / "per_bin.png", train_labels=d.y_train, bin_width=d.bin_width,
                            origin=d.bin_origin, names=NAMES, xlabel=f"{d.target} (test label)",
                            methods=tuple(m for m in configs.TABLE if m in report["runs"]))
  print((args.out / "results.md").read_text())
  return cli.exit_status(report)


def _markdown(report: dict, d: data.TabularDIR) -> str:
  s = report["settings"]
  return "\n\n".join([
      f"# Tabular DIR benchmark: {d.name} ({d.target})",
      "```\n" + d.describe() + "\n```",
      f"Protocol: {s['schedule']['epochs']} epochs, batch {s['schedule']['batch_size']}, Adam "
      f"{s['schedule']['lr']:g} ×{s['schedule']['lr_decay']:g} at epochs {s['schedule']['milestones']}, "
      f"{s['schedule']['task_loss']} loss, MLP {s['hidden']}, best epoch by validation MAE. "
      "Mean ± std over seeds; the test set is the same for every seed.",
      dir_report.shot_sizes(report),
      "## Test MAE per shot ($)", dir_report.shot_table(report, "mae", names=NAMES, digits=0),
      "## Test GM per shot ($; geometric mean of |error|)",
      dir_report.shot_table(report, "gm", names=NAMES, digits=0),
      "![test MAE per price bin](per_bin.png)",
  ]) + "\n"


if __name__ == "__main__":
  sys.exit(main())
