"""A real small depth dataset in the NYUD2-DIR (DenseDepth) layout, from scikit-image's Middlebury motorcycle.

`skimage.data.stereo_motorcycle()` ships inside scikit-image (nothing downloads): the left RGB image uint8
[500, 741, 3] and its ground-truth disparity float32 [500, 741] (inf where unknown, 7.3% of the pixels), the
Middlebury 2014 "Motorcycle" scene down-sampled 4×. Depth follows from the calibration that skimage's docstring
states for the down-sampled images (focal length 994.978 px, baseline 193.001 mm, principal-point offset
doffs = 31.086 px; the full-size calib.txt's f = 3979.911 px and doffs = 124.343 px, divided by 4):

    depth_mm = baseline · f / (disparity + doffs)

(the full-size constants with the down-sampled disparities would give 4.2-5.8 m, wrong by the factor 4 on f and
doffs). Unknown disparity becomes depth 0, NYU's "no measurement".

Valid depths span 2.11-5.02 m. `write_motorcycle` cuts 4:3 patches (NYU's 640×480 aspect) from two disjoint
column ranges: train from x < 400 (the bench, the motorcycle's rear and the far wall), test from x >= 400 (its
front wheel and the shelves); no pixel of the scene is in both splits. Train: `n_train` patches of 0.8-1.2 × 320×240
at seeded offsets (Scale(240) in the builder makes them all 320×240: shifts and scales); test: `n_test` patches of
320×240 down the right part (they overlap each other, never the training columns). Files as NYU's: train RGB
JPEG (quality 95) + 8-bit depth PNG (px = round(d / 10 · 255)), test RGB PNG + 16-bit depth PNG (px = round(d · 1000)),
and data/nyu2_train.csv, data/nyu2_test.csv; `experiments.nyud2_dir.data.build` reads the folder unchanged.

Bins (0.1 m, `data.bin_index`) with the defaults: train 21-50 (2.1-5.0 m; 50 holds only a handful of pixels),
test 21-43. By the published shot lists, bins 21-45, 47 and 49 are many-shot, 46, 48 and 50 medium-shot: the
training pixels are many- and medium-shot, the test pixels all many-shot; no valid pixel is few-shot (depth 0,
bin 0, is). `motorcycle.json` in the output records the patches (source boxes), the calibration, the depth range
and the bins present per split.

    python -m experiments.nyud2_dir.motorcycle --out DIR [--overwrite]

writes the folder atomically: everything goes into a temporary sibling that is renamed to DIR at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from experiments.common.cli import positive_int
from experiments.nyud2_dir.data import MAX_DEPTH, SHOT_BINS, TEST_CSV, TRAIN_CSV, bin_index

# skimage.data.stereo_motorcycle's docstring (calibration of the 4× down-sampled images).
FOCAL_PX = 994.978
DOFFS_PX = 31.086
BASELINE_MM = 193.001
SPLIT_X = 400                 # train patches lie in columns [0, 400), test patches in [400, 741)
PATCH = (320, 240)            # (width, height) of a scale-1 patch: 4:3 as NYU's 640×480
TRAIN_SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)
MANIFEST = "motorcycle.json"


class Patch(NamedTuple):
  """One written example: its split, the source box (x0, y0, x1, y1) in the 741×500 image, its csv paths."""
  split: str
  box: tuple[int, int, int, int]
  rgb: str
  depth: str


def motorcycle() -> tuple[np.ndarray, np.ndarray]:
  """(rgb uint8 [500, 741, 3], depth float32 [500, 741] metres; 0 where the disparity is unknown)."""
  from skimage import data as skdata  # scikit-image: only this script needs it

  rgb, _, disparity = skdata.stereo_motorcycle()
  valid = np.isfinite(disparity)
  depth = np.zeros(disparity.shape, np.float32)
  depth[valid] = BASELINE_MM * FOCAL_PX / (disparity[valid].astype(np.float64) + DOFFS_PX) / 1000
  return rgb, depth


def patch_boxes(*, n_train: int, n_test: int, seed: int, image_size: tuple[int, int] = (741, 500),
                split_x: int = SPLIT_X) -> list[tuple[str, tuple[int, int, int, int]]]:
  """[(split, (x0, y0, x1, y1)), ...]: train boxes inside x < split_x, test boxes inside x >= split_x.

  Train: sizes TRAIN_SCALES × PATCH in turn, top-left corners uniform over the positions that fit (seeded);
  test: PATCH-sized, corners evenly spaced down the right part, alternating between its left and right edges.
  """
  width, height = image_size
  rng = np.random.default_rng(seed)
  boxes = []
  for i in range(n_train):
    scale = TRAIN_SCALES[i % len(TRAIN_SCALES)]
    w, h = round(PATCH[0] * scale), round(PATCH[1] * scale)
    if w > split_x or h > height:
      raise ValueError(f"a {w}×{h} training patch does not fit left of x = {split_x}")
    x0, y0 = int(rng.integers(0, split_x - w + 1)), int(rng.integers(0, height - h + 1))
    boxes.append(("train", (x0, y0, x0 + w, y0 + h)))
  w, h = PATCH
  if split_x + w > width:
    raise ValueError(f"a {w}×{h} test patch does not fit right of x = {split_x}")
  for i in range(n_test):
    x0 = split_x + (width - split_x - w) * (i % 2)
    y0 = round((height - h) * i / max(n_test - 1, 1))
    boxes.append(("test", (x0, y0, x0 + w, y0 + h)))
  return boxes


def encode_train_depth(metres: np.ndarray) -> np.ndarray:
  """metres → NYU's training depth bytes, uint8 px = round(d / 10 · 255) (0: no measurement)."""
  return np.round(np.asarray(metres, np.float64) / MAX_DEPTH * 255).astype(np.uint8)


def encode_test_depth(metres: np.ndarray) -> np.ndarray:
  """metres → NYU's test depth, uint16 millimetres px = round(d · 1000) (0: no measurement)."""
  return np.round(np.asarray(metres, np.float64) * 1000).astype(np.uint16)


def _stored(metres: np.ndarray, split: str) -> np.ndarray:
  """The metres the builder will read back from the encoded file (`data.decode_depth`'s arithmetic)."""
  if split == "train":
    return (encode_train_depth(metres).astype(np.float32) / np.float32(255)) * np.float32(MAX_DEPTH)
  return encode_test_depth(metres).astype(np.float32) / np.float32(1000)


def _write(root: pathlib.Path, rgb: np.ndarray, depth: np.ndarray,
           boxes: Sequence[tuple[str, tuple[int, int, int, int]]]) -> list[Patch]:
  patches = []
  (root / "data/nyu2_train/motorcycle_out").mkdir(parents=True)
  (root / "data/nyu2_test").mkdir(parents=True)
  for split, (x0, y0, x1, y1) in boxes:
    i = sum(p.split == split for p in patches)
    image, metres = rgb[y0:y1, x0:x1], depth[y0:y1, x0:x1]
    if split == "train":
      stem = f"data/nyu2_train/motorcycle_out/{i}"
      paths = (f"{stem}.jpg", f"{stem}.png")
      Image.fromarray(image).save(root / paths[0], format="JPEG", quality=95)
      Image.fromarray(encode_train_depth(metres)).save(root / paths[1], format="PNG")
    else:
      stem = f"data/nyu2_test/{i:05d}"
      paths = (f"{stem}_colors.png", f"{stem}_depth.png")
      Image.fromarray(image).save(root / paths[0], format="PNG")
      Image.fromarray(encode_test_depth(metres)).save(root / paths[1], format="PNG")
    patches.append(Patch(split, (x0, y0, x1, y1), *paths))
  for split, csv_name in (("train", TRAIN_CSV), ("test", TEST_CSV)):
    (root / csv_name).write_text("".join(f"{p.rgb},{p.depth}\n" for p in patches if p.split == split))
  return patches


def _summary(depth: np.ndarray, patches: Sequence[Patch], *, seed: int) -> dict[str, Any]:
  shot_of = {b: shot for shot, bins in SHOT_BINS.items() for b in bins}
  splits = {}
  for split in ("train", "test"):
    # As the files hold them: the 8-bit training encoding moves depths by up to 0.02 m.
    values = np.concatenate([_stored(depth[y0:y1, x0:x1], split).ravel() for p in patches if p.split == split
                             for x0, y0, x1, y1 in [p.box]])
    valid = values[values > 0]
    bins = sorted({int(b) for b in np.unique(bin_index(valid))})
    splits[split] = {"examples": sum(p.split == split for p in patches),
                     "depth_range_m": [float(valid.min()), float(valid.max())],
                     "invalid_fraction": float(1 - valid.size / values.size), "bins": bins,
                     "shots": {shot: [b for b in bins if shot_of[b] == shot] for shot in SHOT_BINS}}
  return {"source": "skimage.data.stereo_motorcycle (Middlebury 2014 Motorcycle, 4x down-sampled)",
          "calibration": {"focal_px": FOCAL_PX, "doffs_px": DOFFS_PX, "baseline_mm": BASELINE_MM,
                          "depth_mm": "baseline_mm * focal_px / (disparity + doffs_px)"},
          "seed": seed, "split_x": SPLIT_X, "splits": splits,
          "patches": [{"split": p.split, "box_xyxy": list(p.box), "rgb": p.rgb, "depth": p.depth} for p in patches]}


def write_motorcycle(out_dir: str | os.PathLike, *, n_train: int = 12, n_test: int = 3, seed: int = 0,
                     overwrite: bool = False) -> pathlib.Path:
  """Writes the motorcycle dataset in the DenseDepth layout to `out_dir` (atomically); returns `out_dir`.

  Args:
    out_dir: the folder to create; it may exist only if empty, or with `overwrite=True` (then it is replaced
      once the new one is complete).
    n_train, n_test: patches per split (`patch_boxes`).
    seed: the training patches' offsets.

  Returns:
    `out_dir` as a pathlib.Path: a manual folder for `data.build`, with motorcycle.json (see the module docstring).

  Raises:
    FileExistsError: `out_dir` exists, is not empty and `overwrite` is False (checked before any work).
  """
  out_dir = pathlib.Path(out_dir)
  if n_train < 1 or n_test < 1:
    raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
  if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
    raise FileExistsError(f"{out_dir} exists and is not empty: pass overwrite=True (--overwrite) to replace it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  rgb, depth = motorcycle()
  boxes = patch_boxes(n_train=n_train, n_test=n_test, seed=seed)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  try:
    patches = _write(tmp, rgb, depth, boxes)
    (tmp / MANIFEST).write_text(json.dumps(_summary(depth, patches, seed=seed), indent=1) + "\n")
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the dataset is an ordinary folder
    old = None
    if out_dir.exists() and any(out_dir.iterdir()):
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
      os.replace(out_dir, old)  # onto the empty temporary folder: a rename
    try:
      os.replace(tmp, out_dir)  # an empty out_dir is replaced by the rename itself
    except OSError:
      if old is not None:
        os.replace(old, out_dir)  # put the previous dataset back
      raise
    if old is not None:
      shutil.rmtree(old)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return out_dir


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.nyud2_dir.motorcycle",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True, help="the folder to write (a manual folder)")
  parser.add_argument("--n-train", type=positive_int, default=12, help="training patches (default 12)")
  parser.add_argument("--n-test", type=positive_int, default=3, help="test patches (default 3)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the training patches' offsets (default 0)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  args = parser.parse_args(argv)
  if args.seed < 0:
    parser.error(f"--seed must be >= 0, got {args.seed}")
  try:
    out = write_motorcycle(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                           overwrite=args.overwrite)
  except FileExistsError as error:
    parser.error(str(error))
  summary = json.loads((out / MANIFEST).read_text())
  for split, stats in summary["splits"].items():
    low, high = stats["depth_range_m"]
    print(f"{split}: {stats['examples']} examples, depth {low:.2f}-{high:.2f} m, bins {stats['bins'][0]}-"
          f"{stats['bins'][-1]}, {stats['invalid_fraction']:.1%} without depth")
  print(f"wrote {out}; build with experiments.nyud2_dir.data.build({str(out)!r}, DATA_DIR)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
