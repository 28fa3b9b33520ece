"""A tiny NYUD2-DIR manual folder for tests: synthetic depth scenes in the DenseDepth layout and encodings.

From a test in tests/experiments/ (pytest's default "prepend" import mode puts that folder on sys.path):

    from nyud2_fixture import write_nyud2_fixture
    manual_dir = write_nyud2_fixture(tmp_path / "manual")
    experiments.nyud2_dir.data.build(manual_dir, tmp_path / "tfds", scale=60)
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

MIN_DEPTH, MAX_DEPTH = 0.5, 9.5  # metres: the scenes span bins 5..95 (NYU's maps span ~0.7..10 m)


def scene(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """One synthetic scene: (rgb uint8 [h, w, 3], depth float64 [h, w] metres in [MIN_DEPTH, MAX_DEPTH]).

  The depth is a tilted plane (a random gradient between two random depths) with a box of constant depth in
  front of it; the colour is a function of depth plus noise, so there is something to learn.
  """
  width, height = size
  y, x = np.mgrid[0:height, 0:width] / np.array([max(height - 1, 1), max(width - 1, 1)])[:, None, None]
  near, far = np.sort(rng.uniform(MIN_DEPTH, MAX_DEPTH, 2))
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.cos(angle) * x + np.sin(angle) * y
  ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
  depth = near + (far - near) * ramp
  x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
  depth[y0:y0 + height // 3, x0:x0 + width // 3] = rng.uniform(MIN_DEPTH, near + 0.1)
  shade = (depth - MIN_DEPTH) / (MAX_DEPTH - MIN_DEPTH)
  rgb = np.stack([255 * (1 - shade), 128 + 100 * np.sin(6 * shade), 255 * shade], axis=-1)
  rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
  return rgb, depth


def encode_train_depth(depth: np.ndarray) -> np.ndarray:
  """metres → the training encoding, 8-bit px = round(d / 10 · 255) (0 stays 0: no measurement)."""
  return np.round(np.asarray(depth) / 10 * 255).astype(np.uint8)


def encode_test_depth(depth: np.ndarray) -> np.ndarray:
  """metres → the test encoding, 16-bit millimetres px = round(d · 1000)."""
  return np.round(np.asarray(depth) * 1000).astype(np.uint16)


def write_nyud2_fixture(root: str | os.PathLike, *, n_train: int = 6, n_test: int = 4,
                        size: tuple[int, int] = (64, 48), seed: int = 0) -> pathlib.Path:
  """Writes synthetic scenes in the DenseDepth layout under `root`; returns `root` (the builder's manual folder).

    root/data/nyu2_train.csv     `data/nyu2_train/scene_<k>_out/<i>.jpg,data/nyu2_train/scene_<k>_out/<i>.png`
    root/data/nyu2_train/...     RGB JPEG (quality 95), depth 8-bit PNG (px = round(d / 10 · 255))
    root/data/nyu2_test.csv      `data/nyu2_test/<i:05d>_colors.png,data/nyu2_test/<i:05d>_depth.png`
    root/data/nyu2_test/...      RGB PNG, depth 16-bit PNG (px = round(d · 1000), millimetres)

  Depths lie in [0.5, 9.5] m (`scene`); test image 0 has a 4×4 hole of depth 0 (no measurement), as raw maps do.
  Train scenes come two per folder (scene_<i // 2>_out), as NYU's frames come per scene.

  Args:
    root: the folder to write (created if missing).
    n_train, n_test: the number of examples per split.
    size: (width, height) of every image; (64, 48) keeps NYU's 4:3 (Scale(60) makes it 80×60).
    seed: the scenes are a pure function of it.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  lines = {"train": [], "test": []}
  for i in range(n_train):
    rgb, depth = scene(size, rng)
    folder = f"data/nyu2_train/scene_{i // 2}_out"
    (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / folder / f"{i}.jpg", format="JPEG", quality=95)
    Image.fromarray(encode_train_depth(depth)).save(root / folder / f"{i}.png", format="PNG")
    lines["train"].append(f"{folder}/{i}.jpg,{folder}/{i}.png")
  (root / "data/nyu2_test").mkdir(parents=True, exist_ok=True)
  for i in range(n_test):
    rgb, depth = scene(size, rng)
    if i == 0:
      depth[10:14, 20:24] = 0
    stem = f"data/nyu2_test/{i:05d}"
    Image.fromarray(rgb).save(root / f"{stem}_colors.png", format="PNG")
    Image.fromarray(encode_test_depth(depth)).save(root / f"{stem}_depth.png", format="PNG")
    lines["test"].append(f"{stem}_colors.png,{stem}_depth.png")
  for split, split_lines in lines.items():
    (root / f"data/nyu2_{split}.csv").write_text("".join(line + "\n" for line in split_lines))
  return root
