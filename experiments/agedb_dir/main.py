"""AgeDB-DIR age estimation (paper Tables 1 and 5) on your copy of the images, on every local device.

    python -m experiments.agedb_dir --data-dir DIR               # Table 1: 7 methods x 10 seeds, 90 epochs each
    python -m experiments.agedb_dir --data-dir DIR --ablations   # + Table 5's lambda, gamma, M and noise rows
    python -m experiments.agedb_dir --data-dir DIR --methods mt_ot --seeds 1 --epochs 2   # a quick look

DIR holds `agedb.csv` (YyzHarry/imbalanced-regression's: age,path,split) and the image folder its paths name
(AgeDB/). The first run builds the tfds dataset (array_record, 224 px PNGs; --dataset-dir, default
DIR/tfds) after checking every row and image; later runs reuse it. Training is data-parallel over all local
devices (batch sharded, parameters replicated; L_ot, the peers and BatchNorm see the global batch, as the
paper's single-GPU batch). Writes OUT/results.{json,md} (per-shot MAE and GM beside the paper's numbers) and
OUT/per_bin.png; every finished run is saved at once, every epoch is checkpointed, and --resume continues
where an interrupted study stopped (an interrupted run from its last epoch).
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import numpy as np

from experiments.common import cli, dir_report, results


def parse_args(argv=None) -> argparse.Namespace:
  from experiments.agedb_dir import configs

  p = argparse.ArgumentParser(prog="python -m experiments.agedb_dir", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data-dir", type=pathlib.Path, required=True, help="the folder with agedb.csv and AgeDB/")
  p.add_argument("--dataset-dir", type=pathlib.Path, help="where the tfds dataset is built (default DIR/tfds)")
  p.add_argument("--methods", type=cli.comma_list(str, choices=list(configs.METHODS)),
                 help=f"comma list (default: {', '.join(configs.TABLE)}; with --ablations also the rest)")
  p.add_argument("--ablations", action="store_true", help="add Table 5's ablation rows")
  p.add_argument("--seeds", type=cli.positive_int, default=len(configs.SEEDS))
  p.add_argument("--epochs", type=cli.positive_int, default=configs.SCHEDULE.epochs)
  p.add_argument("--batch-size", type=cli.positive_int, default=configs.SCHEDULE.batch_size,
                 help="global batch (a multiple of the device count)")
  p.add_argument("--image-size", type=cli.positive_int, default=configs.IMAGE_SIZE)
  p.add_argument("--depth", type=int, choices=(10, 18, 34, 50, 101, 152), default=configs.DEPTH,
                 help="ResNet depth (10: a tiny net for tests)")
  p.add_argument("--width", type=cli.positive_int, default=configs.WIDTH, help="ResNet base width (64: torchvision)")
  p.add_argument("--bfloat16", action="store_true", help="compute the encoder in bfloat16 (GPU/TPU; params float32)")
  p.add_argument("--phreg-points", type=cli.comma_list(cli.positive_int), default=list(configs.DEFAULTS.phreg_points),
                 help="PH-Reg's L_d sample sizes min,max,jump (default: the published 128,256,16)")
  p.add_argument("--shots", type=cli.comma_list(cli.positive_int), default=[100, 20],
                 help="many,few thresholds on training images per age (default 100,20: many > 100, few < 20)")
  p.add_argument("--loader-workers", type=int, default=0, help="grain worker processes (0: threads)")
  p.add_argument("--resume", action="store_true", help="keep finished runs in OUT and continue the others")
  p.add_argument("--out", type=pathlib.Path, default=results.default_out("agedb_dir"))
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  if not (args.data_dir / "agedb.csv").is_file() and not _built(args):
    p.error(f"--data-dir {args.data_dir}: no agedb.csv there (and no built dataset in --dataset-dir)")
  if len(args.shots) != 2 or args.shots[1] > args.shots[0] + 1:
    p.error(f"--shots needs many,few with few <= many + 1, got {args.shots}")
  if len(args.phreg_points) != 3:
    p.error(f"--phreg-points needs min,max,jump, got {args.phreg_points}")
  args.methods = args.methods or list(configs.TABLE) + (list(configs.ABLATIONS) if args.ablations else [])
  if "phreg" in args.methods and args.batch_size < args.phreg_points[0]:
    p.error(f"PH-Reg samples {args.phreg_points[0]}+ rows: --batch-size {args.batch_size} is smaller "
            "(lower --phreg-points or leave phreg out)")
  import jax
  if args.batch_size % jax.device_count():
    p.error(f"--batch-size {args.batch_size} must be a multiple of the {jax.device_count()} devices")
  cli.check_out_dir(p, args.out)
  return args


def _dataset_dir(args) -> pathlib.Path:
  return args.dataset_dir or args.data_dir / "tfds"


def _built(args) -> bool:
  from experiments.agedb_dir import data
  return data.builder(_dataset_dir(args), image_size=args.image_size).is_prepared()


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax

  import rtjax
  from experiments.agedb_dir import configs, data
  from experiments.agedb_dir.input_pipeline import AgeDBData
  from experiments.common.dir_methods import NAMES, Labels, regressor
  from experiments.common.dir_study import Study, run_study
  from experiments.common.resnet import resnet

  where = _dataset_dir(args)
  data.build(args.data_dir, where, image_size=args.image_size)
  train_labels = data.labels(where, "train", image_size=args.image_size)
  sources = {s: data.load(where, s, image_size=args.image_size) for s in data.SPLITS}
  dataset = AgeDBData(sources, train_labels, num_workers=args.loader_workers)
  methods = {m: dataclasses.replace(configs.METHODS[m], phreg_points=tuple(args.phreg_points)) for m in args.methods}
  schedule = dataclasses.replace(configs.SCHEDULE, epochs=args.epochs, batch_size=args.batch_size,
                                 eval_batch_size=args.batch_size)
  dtype = jax.numpy.bfloat16 if args.bfloat16 else jax.numpy.float32
  devices = jax.devices()
  study = Study(
      task="agedb_dir", methods=methods, seeds=tuple(range(args.seeds)), schedule=schedule,
      model=regressor(lambda: resnet(args.depth, width=args.width, dtype=dtype)),
      labels=Labels(1.0, 0.0, num_classes=configs.MAX_AGE + 1), noise_std=float(np.std(train_labels)),
      shots=tuple(args.shots),
      settings={"image_size": args.image_size, "depth": args.depth, "width": args.width,
                "compute_dtype": str(np.dtype(dtype)), "sizes": {s: len(v) for s, v in sources.items()}})
  print(f"[agedb_dir] {len(devices)} x {devices[0].device_kind}; train/val/test "
        f"{', '.join(str(len(sources[s])) for s in data.SPLITS)}; batch {args.batch_size}", file=sys.stderr)
  report = run_study(study, dataset, out=args.out, resume=args.resume, mesh=rtjax.data_mesh(),
                     progress=not args.no_progress, markdown=lambda r: _markdown(r, devices))
  dir_report.per_bin_figure(report, args.out / "per_bin.png", train_labels=train_labels, bin_width=1.0,
                            names=NAMES, xlabel="age (test label)",
                            methods=tuple(m for m in configs.TABLE if m in report["runs"]))
  print((args.out / "results.md").read_text())
  return cli.exit_status(report)


def _markdown(report: dict, devices) -> str:
  from experiments.agedb_dir import configs
  from experiments.common.dir_methods import NAMES

  s = report["settings"]
  speed = {m: np.mean([h["examples_per_second"] for r in runs.values() for h in r["history"]])
           for m, runs in report["runs"].items()} if report["runs"] else {}
  return "\n\n".join([
      "# AgeDB-DIR age estimation (paper Tables 1 and 5)",
      f"ResNet-{s['depth']} (width {s['width']}, {s['compute_dtype']}), {s['image_size']} px, "
      f"{s['schedule']['epochs']} epochs, batch {s['schedule']['batch_size']}, Adam {s['schedule']['lr']:g} "
      f"×{s['schedule']['lr_decay']:g} at {s['schedule']['milestones']}, L1; best epoch by validation MAE. "
      f"Split sizes {s['sizes']}. Devices: {len(devices)} × {devices[0].device_kind}.",
      dir_report.shot_sizes(report) if report["runs"] else "",
      "## Test MAE per shot (years; paper: Table 1 / Table 5)",
      dir_report.shot_table(report, "mae", names=NAMES, paper=configs.PAPER),
      "## Test GM per shot (years)", dir_report.shot_table(report, "gm", names=NAMES),
      "## Training throughput (examples / s, mean over epochs and seeds)",
      "\n".join(f"- {NAMES.get(m, m)}: {v:,.0f}" for m, v in speed.items()),
      "![test MAE per age](per_bin.png)",
  ]) + "\n"

if __name__ == "__main__":
  sys.exit(main())
