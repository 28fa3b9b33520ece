"""A tiny AgeDB-DIR manual folder for tests: real JPEG files in the AgeDB layout and an `agedb.csv`.

From a test in tests/experiments/ (pytest's default "prepend" import mode puts that folder on sys.path, as
tests/ for `from reference import ...`):

    from agedb_fixture import write_agedb_fixture
    manual_dir = write_agedb_fixture(tmp_path / "manual")
    experiments.agedb_dir.data.build(manual_dir, tmp_path / "tfds", image_size=32)
"""
from __future__ import annotations

import csv
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

# Skewed like AgeDB-DIR's training ages: age 30 has many images, 31 some, 45/60 a few, 5 and 88 one each;
# val/test hold every training age once (test also a second 30). 24 + 6 + 7 = 37 images.
DEFAULT_AGES: dict[str, list[int]] = {
    "train": [30] * 10 + [31] * 6 + [45] * 4 + [60] * 2 + [5, 88],
    "val": [5, 30, 31, 45, 60, 88],
    "test": [5, 30, 31, 45, 60, 88, 30],
}


def write_agedb_fixture(root: str | os.PathLike, *, ages_per_split: Mapping[str, Sequence[int]] | None = None,
                        size: tuple[int, int] = (40, 48), seed: int = 0) -> pathlib.Path:
  """Writes random JPEG faces and `agedb.csv` (columns age,path,split) under `root`; returns `root`.

  One image per listed age, at `root/AgeDB/<i>_Person<i>_<age>_<m|f>.jpg`, i = 0, 1, ... in split order
  (train, val, test). The csv lists them in a shuffled order (splits interleaved), paths relative to `root`.
  Image i is (width, height) = (size[0] + 4 * (i % 3), size[1] + 2 * (i % 2)), so sizes vary and differ from a
  square target; every fourth image (i % 4 == 3) is grayscale (PIL mode "L"), which readers must convert to RGB.

  Args:
    root: the manual folder to write (created if missing).
    ages_per_split: {"train": [age, ...], "val": [...], "test": [...]}; defaults to `DEFAULT_AGES`, 37 images
      with skewed training ages.
    size: the base (width, height) of the images.
    seed: the pixels and the csv order are a pure function of it.

  Returns:
    `root` as a pathlib.Path (the `manual_dir` of `experiments.agedb_dir.data.build`).
  """
  root = pathlib.Path(root)
  (root / "AgeDB").mkdir(parents=True, exist_ok=True)
  ages_per_split = DEFAULT_AGES if ages_per_split is None else ages_per_split
  rng = np.random.default_rng(seed)
  rows = []
  for split, ages in ages_per_split.items():
    for age in ages:
      i = len(rows)
      width, height = size[0] + 4 * (i % 3), size[1] + 2 * (i % 2)
      pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
      image = Image.fromarray(pixels)
      if i % 4 == 3:
        image = image.convert("L")
      relative = f"AgeDB/{i}_Person{i}_{age}_{'mf'[i % 2]}.jpg"
      image.save(root / relative, format="JPEG", quality=90)
      rows.append({"age": int(age), "path": relative, "split": split})
  with (root / "agedb.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["age", "path", "split"])
    writer.writeheader()
    writer.writerows(rows[k] for k in rng.permutation(len(rows)))
  return root
