"""NYUD2-DIR depth estimation (paper Tables 2 and 4) on your copy of the files, on every local device.

    python -m experiments.nyud2_dir --data-dir DIR                  # Table 2: 7 methods x 10 seeds, 10 epochs
    python -m experiments.nyud2_dir --data-dir DIR --ablations      # + the λ, γ, M and noise rows
    python -m experiments.nyud2_dir.motorcycle --out M && \\
      python -m experiments.nyud2_dir --data-dir M --scale 164 --depth 18 --width 16 --stride 4 ...   # real, tiny

DIR is DenseDepth's layout (data/nyu2_train.csv, data/nyu2_test.csv and the files they list). The first run
checks every file (encodings, depth ranges) and builds a tfds dataset with the balanced test mask (--mask-seed;
--dataset-dir, default DIR/tfds); later runs reuse it. Training is data-parallel over all local devices.
Writes OUT/results.{json,md} (per-shot RMSE, δ1 and the other depth metrics beside the paper's Table 2; Table
4's diagnostics per run) and OUT/per_bin.png; runs are saved as they finish, epochs are checkpointed,
--resume continues.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import numpy as np

from experiments.common import cli, dir_report, results


def parse_args(argv=None) -> argparse.Namespace:
  from experiments.nyud2_dir import configs

  p = argparse.ArgumentParser(prog="python -m experiments.nyud2_dir", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data-dir", type=pathlib.Path, required=True, help="DenseDepth layout: data/nyu2_{train,test}.csv")
  p.add_argument("--dataset-dir", type=pathlib.Path, help="where the tfds dataset is built (default DIR/tfds)")
  p.add_argument("--methods", type=cli.comma_list(str, choices=list(configs.METHODS)),
                 help=f"comma list (default: {', '.join(configs.TABLE)}; with --ablations also the rest)")
  p.add_argument("--ablations", action="store_true")
  p.add_argument("--seeds", type=cli.positive_int, default=len(configs.SEEDS))
  p.add_argument("--epochs", type=cli.positive_int, default=configs.SCHEDULE.epochs)
  p.add_argument("--batch-size", type=cli.positive_int, default=configs.SCHEDULE.batch_size)
  p.add_argument("--lr", type=cli.positive_float, default=configs.SCHEDULE.lr, help="Adam's learning rate (1e-4)")
  p.add_argument("--scale", type=cli.positive_int, default=configs.SCALE, help="shorter side before the crop (240)")
  p.add_argument("--mask-seed", type=int, default=0, help="seed of the balanced test mask")
  p.add_argument("--depth", type=int, choices=(10, 18, 34, 50, 101, 152), default=configs.DEPTH)
  p.add_argument("--width", type=cli.positive_int, default=configs.WIDTH)
  p.add_argument("--feature-dim", type=cli.positive_int,
                 help="last hidden width (default: published, 128); 3 also draws Figure 3 (OUT/figure3.png)")
  p.add_argument("--encoder-weights", type=pathlib.Path, help="a local torchvision ResNet state dict (.pth/.npz)")
  p.add_argument("--stride", type=cli.positive_int, default=configs.STRIDE, help="L_ot/peers' feature stride (8)")
  p.add_argument("--pixels", type=cli.positive_int, default=configs.PIXELS, help="pixels per image for L_ot/peers")
  p.add_argument("--phreg-points", type=cli.comma_list(cli.positive_int),
                 default=list(configs.DEFAULTS.phreg_points), help="PH-Reg's L_d sample sizes min,max,jump")
  p.add_argument("--bfloat16", action="store_true", help="compute in bfloat16 (GPU/TPU; params float32)")
  p.add_argument("--loader-workers", type=int, default=0, help="grain worker processes (0: threads)")
  p.add_argument("--resume", action="store_true")
  p.add_argument("--out", type=pathlib.Path, default=results.default_out("nyud2_dir"))
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  if not (args.data_dir / "data" / "nyu2_train.csv").is_file():
    p.error(f"--data-dir {args.data_dir}: no data/nyu2_train.csv there")
  if args.encoder_weights is not None and not args.encoder_weights.is_file():
    p.error(f"--encoder-weights {args.encoder_weights}: no such file")
  if len(args.phreg_points) != 3 or args.phreg_points[1] > args.pixels:
    p.error(f"--phreg-points needs min,max,jump with max <= --pixels ({args.pixels}), got {args.phreg_points}")
  args.methods = args.methods or list(configs.TABLE) + (list(configs.ABLATIONS) if args.ablations else [])
  from experiments.nyud2_dir import data
  from experiments.nyud2_dir.models import output_size
  geometry = data.geometry(args.scale)
  if output_size(geometry.crop[1], geometry.crop[0]) != geometry.train_depth[::-1]:
    fits = [s for s in range(60, 481, 4) if output_size(data.geometry(s).crop[1], data.geometry(s).crop[0])
            == data.geometry(s).train_depth[::-1]]
    p.error(f"--scale {args.scale}: the network's output {output_size(geometry.crop[1], geometry.crop[0])} is not the "
            f"training depth's size {geometry.train_depth[::-1]}; scales that fit: {fits}")
  import jax
  if args.batch_size % jax.device_count():
    p.error(f"--batch-size {args.batch_size} must be a multiple of the {jax.device_count()} devices")
  cli.check_out_dir(p, args.out)
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax

  import rtjax
  from experiments.common.dir_methods import NAMES, Labels
  from experiments.common.dir_study import Study, run_study
  from experiments.nyud2_dir import configs, data, train
  from experiments.nyud2_dir.models import DepthNet, encoder_from_torchvision

  where = args.dataset_dir or args.data_dir / "tfds"
  data.build(args.data_dir, where, scale=args.scale, mask_seed=args.mask_seed)
  geometry = data.geometry(args.scale)
  sources = {s: data.load(where, s, scale=args.scale, mask_seed=args.mask_seed) for s in data.SPLITS}
  dataset = train.DepthData(sources, geometry, num_workers=args.loader_workers)
  methods = {m: dataclasses.replace(configs.METHODS[m], phreg_points=tuple(args.phreg_points),
                                    rot_samples=args.pixels) for m in args.methods}
  # the milestone keeps its place in the run: x0.1 after half of the epochs (published: 5 of 10)
  schedule = dataclasses.replace(configs.SCHEDULE, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                 milestones=(args.epochs // 2,), eval_batch_size=args.batch_size)
  dtype = jax.numpy.bfloat16 if args.bfloat16 else jax.numpy.float32
  model = lambda method: DepthNet(method.num_targets, width=args.width, depth=args.depth,
                                  feature_dim=args.feature_dim, dtype=dtype)
  crop_w, crop_h = geometry.crop

  after = lambda program, variables: train.diagnostics(program.model, variables, dataset,
                                                        images=configs.DIAGNOSTIC_IMAGES,
                                                        pixels=configs.DIAGNOSTIC_PIXELS,
                                                        keep_points=args.feature_dim == 3)
  init = None if args.encoder_weights is None else (
      lambda variables: encoder_from_torchvision(args.encoder_weights, variables))

  devices = jax.devices()
  study = Study(
      task="nyud2_dir", methods=methods, seeds=tuple(range(args.seeds)), schedule=schedule, model=model,
      labels=Labels(0.1, 0.0, num_classes=data.NUM_BINS),
      pieces=lambda m: train.loss_pieces(m, stride=args.stride, num_pixels=args.pixels, min_depth=configs.MIN_DEPTH),
      init=init, output=train.upsample_to((crop_h, crop_w)), evaluate=train.evaluate, after=after,
      settings={"scale": args.scale, "mask_seed": args.mask_seed, "depth": args.depth, "width": args.width,
                "feature_dim": args.feature_dim, "stride": args.stride, "pixels": args.pixels,
                "encoder_weights": None if args.encoder_weights is None else str(args.encoder_weights),
                "compute_dtype": str(np.dtype(dtype)), "sizes": {s: len(v) for s, v in sources.items()}})
  print(f"[nyud2_dir] {len(devices)} x {devices[0].device_kind}; train/test {len(sources['train'])}/"
        f"{len(sources['test'])}; batch {args.batch_size}", file=sys.stderr)
  report = run_study(study, dataset, out=args.out, resume=args.resume, mesh=rtjax.data_mesh(),
                     progress=not args.no_progress, markdown=lambda r: _markdown(r, devices))
  test_depths = np.concatenate([np.asarray(s["depth"])[np.asarray(s["balanced_mask"])] for s in sources["test"]])
  dir_report.per_bin_figure(report, args.out / "per_bin.png", train_labels=test_depths, bin_width=0.1,
                            names=NAMES, xlabel="depth (m, test pixel)", hist_label="balanced test pixels per bin",
                            methods=tuple(m for m in configs.TABLE if m in report["runs"]))
  if args.feature_dim == 3:
    train.figure3(report, args.out / "figure3.png", names=NAMES)
  print((args.out / "results.md").read_text())
  return cli.exit_status(report)


def _markdown(report: dict, devices) -> str:
  from experiments.common.dir_methods import NAMES
  from experiments.nyud2_dir import configs

  s = report["settings"]
  diag = ["| method | cos Spearman | cos Kendall | cos volume | eucl. Spearman | eucl. Kendall | eucl. volume |",
          "|---|---|---|---|---|---|---|"]
  for method, summary in report["summary"].items():
    if "diagnostics" in summary:
      d = summary["diagnostics"]
      diag.append(f"| {NAMES.get(method, method)} | " + " | ".join(
          dir_report.cell(d[k], 3) for k in ("cosine_spearman", "cosine_kendall", "cosine_volume",
                                              "euclidean_spearman", "euclidean_kendall", "euclidean_volume")) + " |")
  speed = {m: np.mean([h["examples_per_second"] for r in runs.values() for h in r["history"]])
           for m, runs in report["runs"].items()}
  return "\n\n".join([
      "# NYUD2-DIR depth estimation (paper Tables 2 and 4)",
      f"Encoder ResNet-{s['depth']} (width {s['width']}, {s['compute_dtype']}; pretrained: "
      f"{s['encoder_weights'] or 'no'}), scale {s['scale']}, {s['schedule']['epochs']} epochs, batch "
      f"{s['schedule']['batch_size']}, Adam {s['schedule']['lr']:g} (wd {s['schedule']['weight_decay']:g}) "
      f"×{s['schedule']['lr_decay']:g} at {s['schedule']['milestones']}, MSE; the last epoch is tested on the "
      f"balanced mask (seed {s['mask_seed']}). L_ot/peers: {s['pixels']} pixels per image at stride "
      f"{s['stride']}. Sizes {s['sizes']}. Devices: {len(devices)} × {devices[0].device_kind}.",
      "test pixels per region: " + ", ".join(
          f"{r} {next(iter(next(iter(report['runs'].values())).values()))['test'][r]['count']:,}"
          for r in dir_report.REGIONS) if report["runs"] else "",
      "## RMSE per shot (m; paper Table 2)",
      dir_report.shot_table(report, "rmse", names=NAMES, paper=configs.PAPER_RMSE, digits=3),
      "## δ1 per shot (paper Table 2)",
      dir_report.shot_table(report, "delta1", names=NAMES, paper=configs.PAPER_DELTA1, digits=3),
      "## MAE, AbsRel per shot", dir_report.shot_table(report, "mae", names=NAMES, digits=3),
      dir_report.shot_table(report, "abs_rel", names=NAMES, digits=3),
      "## Tightness diagnostics (paper Table 4; 1000 pixels of 8 test images, mean ± std over seeds)",
      "\n".join(diag),
      "## Training throughput (examples / s)", "\n".join(f"- {NAMES.get(m, m)}: {v:,.1f}" for m, v in speed.items()),
      "![test MAE per depth bin](per_bin.png)",
      *(["![Figure 3: 3-d last-layer features of test pixels, coloured by depth](figure3.png)"]
        if s["feature_dim"] == 3 else []),
  ]) + "\n"


if __name__ == "__main__":
  sys.exit(main())
