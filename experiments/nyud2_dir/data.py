"""NYUD2-DIR as a tfds dataset built without TensorFlow: array_record files read back by random access.

Source: the DenseDepth release of NYU Depth v2 that YyzHarry/imbalanced-regression downloads
(`nyud2-dir/download_nyud2.py` unzips it to `./data`). The manual folder holds

  data/nyu2_train.csv   50,688 lines `rgb_path,depth_path`, no header, e.g.
                        data/nyu2_train/living_room_0038_out/37.jpg,data/nyu2_train/living_room_0038_out/37.png
  data/nyu2_test.csv    654 lines, e.g. data/nyu2_test/00000_colors.png,data/nyu2_test/00000_depth.png
  data/nyu2_train/, data/nyu2_test/   the files, 640×480

Paths are relative to the manual folder (the published `loaddata.py` drops the first path component, `data`, and
joins the rest to its `--data_dir`, the folder holding the csvs: the same file). Train depth is an 8-bit PNG (PIL
mode "L"), metres = px / 255 · 10; test depth a 16-bit PNG ("I;16"), metres = px / 1000 (the published
`ToTensor`: `to_tensor(depth) * 10` on [0, 1] bytes, `/ 1000` on 16-bit integers; the float32 arithmetic here is
the same, so the metres are bit-identical). Anything else is refused with the file named: a train depth that is not
"L", a test depth that is not 16-bit, a test depth beyond 10 m (millimetres are the only unit that fits), an RGB
file that is not RGB, RGB and depth of different sizes. Swapped csv columns fail the RGB check (a depth PNG is
"L" or "I;16").

The published transforms (`nyud2-dir/loaddata.py`, `nyu_transform.py`), with S = 240, crop 304×228:
  train: Scale(S) → RandomHorizontalFlip → RandomRotate(5) → CenterCrop([304, 228], [152, 114]) → ToTensor →
         Lighting(0.1, ImageNet PCA) → ColorJitter(0.4, 0.4, 0.4) → Normalize(ImageNet mean, std)
  test:  Scale(S) → CenterCrop([304, 228], [304, 228]) → ToTensor(is_test=True) → Normalize
`Scale(S)` resizes the shorter side to S (RGB PIL bilinear, depth PIL nearest on the file's own mode: PIL's
nearest picks other pixels on "I;16" than on float "F", measured; 640×480 → 320×240); `CenterCrop`
crops RGB and depth to 304×228 at (round((w - 304) / 2), round((h - 228) / 2)) = (8, 6), then resizes the depth
to its second size (train: 152×114, PIL's default filter; test: 304×228, a no-op).

The training flip and rotation come *before* the crop, on the scaled 320×240 image: a rotated crop takes pixels
from the 8/6-pixel margins that the crop later discards. So this builder stores what is deterministic and no more:
  train: Scale(S) only: image uint8 [240, 320, 3], depth float32 [240, 320] metres (nearest-scaled, so every
         value is an exact px / 255 · 10); `input_pipeline.train_batches` flips, rotates, crops, resizes the depth
         to 152×114, lights, jitters and normalises, in the published order.
  test:  Scale(S) + crop: image uint8 [228, 304, 3], depth float32 [228, 304] metres, and `balanced_mask`
         bool [228, 304] (below). `input_pipeline.eval_batches` only normalises.
Train examples store an empty [0, 0] `balanced_mask` (tfds has one feature set for all splits).

Balanced test mask (`balanced_mask`): the published `preprocess_nyud2.py` bins every test pixel, 0.1 m per bin
(`bin_index`: min(int(d · 10), 99), d in float32), and for each bin 7..99 keeps the same number of pixels, drawn
without replacement: the count of the smallest non-empty bin. Its mask file came from an unseeded
`np.random.choice`; here it is regenerated at build time from `np.random.default_rng(mask_seed)` (bins in
ascending order, pixels of a bin in (image, row, column) order) and stored with each test example, so a
dataset and its seed fix the mask. Two deliberate differences from the published script: (1) the smallest count
is taken over the balanced bins 7..99, not over the histogram's 100 bins 0..99: pixels in bins 0..6 (including
depth 0, "no measurement") are never kept, so they should not shrink the count. Both give the same count unless a
bin 0..6 holds fewer pixels than every non-empty bin 7..99 (NYU's training histogram, `TRAIN_BUCKET_NUM` in
`loaddata.py`, has bins 0..6 empty; the real test maps were not at hand to check). (2) An empty bin among 7..99
keeps no pixels (the published draw raises there). The published mask file itself (`test_balanced_mask.npy`) is
not read: the paper's exact pixels would need it.

The DIR shots are fixed bin lists (`SHOT_BINS`, the published `util.Evaluator.shot_idx`), not thresholds on a
training histogram: `shot_index(depth)` gives `rtjax.shots` region indices (MANY, MEDIUM, FEW) per pixel.

Sizes: `scale` S is a builder config (`<S>px`; 240 is the published default). The crop keeps the published
ratios, (round(S · 304 / 240), round(S · 228 / 240)), and the training depth is half the crop, rounded down:
S = 60 gives 80×60 scaled, 76×57 crop, 38×28 training depth (`geometry`).

On-disk layout (tfds's): `<data_dir>/nyud2_dir/<S>px/1.0.0/` (or `<S>px_seed<k>` for mask_seed k ≠ 0) with the
array_record shards, dataset_info.json, features.json and metadata.json (geometry, csv hashes, the mask's seed,
per-bin counts). Atomic as AgeDB-DIR's build (`experiments/agedb_dir/data.py`): `build` reads both csvs and decodes
and checks every listed file before tfds writes; tfds writes into `incomplete.*` and renames at the end, deleting
it on an exception; `load` refuses a folder without tfds's info files.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from experiments.common.grain_data import map_in_order, png_bytes
from rtjax.shots import FEW, MANY, MEDIUM

TRAIN_CSV = "data/nyu2_train.csv"
TEST_CSV = "data/nyu2_test.csv"
CSVS = {"train": TRAIN_CSV, "test": TEST_CSV}
SPLITS = ("train", "test")
DATASET_VERSION = "1.0.0"

PUBLISHED_SCALE = 240                    # Scale(240): the shorter side, 640×480 → 320×240
PUBLISHED_CROP = (304, 228)              # CenterCrop, (width, height)
PUBLISHED_TRAIN_DEPTH = (152, 114)       # the training depth after the crop, (width, height)
MAX_DEPTH = 10.0                         # metres: 8-bit 255 px, and NYU's range
TRAIN_DEPTH_MODES = ("L",)
TEST_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")  # Pillow's 16-bit PNG modes ("I" in older Pillow)

NUM_BINS = 100                           # 0.1 m bins; depths >= 9.9 m fall in bin 99
BALANCED_BINS = range(7, NUM_BINS)       # the bins the balanced test mask keeps pixels of
DEFAULT_MASK_SEED = 0

# The published shot lists (`nyud2-dir/util.py`, Evaluator.shot_idx), bins of 0.1 m.
SHOT_BINS: dict[str, tuple[int, ...]] = {
    "many": (*range(9, 46), 47, 49),
    "medium": (7, 8, 46, 48, *range(50, 57), 58, 60, 61, 63),
    "few": (*range(0, 7), 57, 59, 62, *range(64, 100)),
}
# rtjax.shots region of every bin: SHOT_OF_BIN[bin_index(d)].
SHOT_OF_BIN = np.full(NUM_BINS, -1, np.int64)
for _shot, _index in (("many", MANY), ("medium", MEDIUM), ("few", FEW)):
  SHOT_OF_BIN[list(SHOT_BINS[_shot])] = _index
if (SHOT_OF_BIN < 0).any() or sum(map(len, SHOT_BINS.values())) != NUM_BINS:  # a partition of 0..99
  raise AssertionError("SHOT_BINS must partition the bins 0..99")

_CITATION = """\
@inproceedings{silberman2012indoor,
  title={Indoor Segmentation and Support Inference from RGBD Images},
  author={Silberman, Nathan and Hoiem, Derek and Kohli, Pushmeet and Fergus, Rob}, booktitle={ECCV}, year={2012}}
@inproceedings{hu2019revisiting,
  title={Revisiting Single Image Depth Estimation: Toward Higher Resolution Maps with Accurate Object Boundaries},
  author={Hu, Junjie and Ozay, Mete and Zhang, Yan and Okatani, Takayuki}, booktitle={WACV}, year={2019}}
@inproceedings{yang2021delving,
  title={Delving into Deep Imbalanced Regression},
  author={Yang, Yuzhe and Zha, Kaiwen and Chen, Ying-Cong and Wang, Hao and Katabi, Dina},
  booktitle={ICML}, year={2021}}
"""


# ------------------------------------------------------------------------------------------- bins and shots


def bin_index(depth) -> np.ndarray:
  """Bin of each depth (metres), as the published `get_bin_idx`: min(int(d · float32(10)), 99); int64, same shape.

  The product is taken in float32, as the published code does: 0.7 m is bin 7, not 6.
  """
  depth = np.asarray(depth, np.float32)
  if depth.size and not (np.isfinite(depth).all() and depth.min() >= 0):
    raise ValueError(f"depths must be finite and >= 0, got the range [{depth.min()}, {depth.max()}]")
  return np.minimum((depth * np.float32(10)).astype(np.int64), NUM_BINS - 1)


def shot_index(depth) -> np.ndarray:
  """rtjax.shots region (MANY 0, MEDIUM 1, FEW 2) of each depth by the published bin lists; int64, same shape."""
  return SHOT_OF_BIN[bin_index(depth)]


def balanced_mask(depths, *, seed: int) -> np.ndarray:
  """The balanced test mask over a set of depth maps: bool, the shape of `depths`.

  For each bin 7..99 (`bin_index`), keeps k pixels drawn without replacement, k = the pixel count of the smallest
  non-empty bin among 7..99; an empty bin keeps none; bins 0..6 keep none. A pure function of (depths, seed).

  Args:
    depths: [n, h, w] (any shape) float depths in metres, >= 0.
    seed: the draw's seed (np.random.default_rng).

  Raises:
    ValueError: no depth falls in bins 7..99 (d < 0.7 m everywhere), or a negative or non-finite depth.
  """
  depths = np.asarray(depths)
  bins = bin_index(depths).astype(np.uint8).ravel()  # uint8: 1 byte per pixel over the whole test split
  return _balanced_from_bins(bins, seed).reshape(depths.shape)


def _balanced_from_bins(bins: np.ndarray, seed: int) -> np.ndarray:
  """`balanced_mask` on flat uint8 bins [N]: bool [N]."""
  counts = np.bincount(bins, minlength=NUM_BINS)
  balanced = counts[BALANCED_BINS.start:]
  if not balanced.any():
    raise ValueError(f"no test depth is in bins {BALANCED_BINS.start}..{NUM_BINS - 1} "
                     f"(>= {BALANCED_BINS.start / 10} m): nothing to balance")
  keep = int(balanced[balanced > 0].min())
  # One stable sort groups the pixels by bin, each group in ascending pixel order (what np.where would list);
  # numpy sorts uint8 keys by radix, ~20× faster than a pass of np.where per bin over 45 M test pixels.
  order = np.argsort(bins, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)])
  rng = np.random.default_rng(seed)
  mask = np.zeros(bins.shape, bool)
  for b in BALANCED_BINS:
    if counts[b]:
      mask[rng.choice(order[starts[b]:starts[b + 1]], size=keep, replace=False)] = True
  return mask


# ------------------------------------------------------------------------------------------------- geometry


class Geometry(NamedTuple):
  """The sizes of one config, (width, height) as PIL states them.

  `scale`: the shorter side after Scale; `crop`: the centre crop of RGB and depth; `train_depth`: the training
  depth after the crop (the test depth stays at `crop`).
  """
  scale: int
  crop: tuple[int, int]
  train_depth: tuple[int, int]


def geometry(scale: int = PUBLISHED_SCALE) -> Geometry:
  """The published geometry scaled to `scale`: crop round(scale · (304, 228) / 240), training depth crop // 2."""
  if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 8:
    raise ValueError(f"scale must be an integer >= 8, got {scale!r}")
  scale = int(scale)
  crop = (round(scale * PUBLISHED_CROP[0] / PUBLISHED_SCALE), round(scale * PUBLISHED_CROP[1] / PUBLISHED_SCALE))
  return Geometry(scale, crop, (crop[0] // 2, crop[1] // 2))


PUBLISHED_GEOMETRY = geometry(PUBLISHED_SCALE)


def scaled_size(width: int, height: int, scale: int) -> tuple[int, int]:
  """(width, height) after the published Scale(scale): the shorter side becomes `scale`, the other int(·) of it."""
  if (width <= height and width == scale) or (height <= width and height == scale):
    return width, height
  if width < height:
    return scale, int(scale * height / width)
  return int(scale * width / height), scale


def crop_offsets(width: int, height: int, crop: tuple[int, int]) -> tuple[int, int]:
  """(x1, y1), the published CenterCrop's top-left corner: int(round((w - tw) / 2.)), Python's round (half to even).

  Raises ValueError if the image is smaller than the crop (PIL would pad it with zeros).
  """
  if width < crop[0] or height < crop[1]:
    raise ValueError(f"a {width}×{height} image is smaller than the {crop[0]}×{crop[1]} crop")
  return round((width - crop[0]) / 2.0), round((height - crop[1]) / 2.0)


def center_crop(array: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
  """array [H, W, ...] → [crop_h, crop_w, ...] at `crop_offsets` (the published CenterCrop; a no-op at that size)."""
  height, width = array.shape[:2]
  x1, y1 = crop_offsets(width, height, crop)
  return array[y1:y1 + crop[1], x1:x1 + crop[0]]


# ---------------------------------------------------------------------------------------------- reading files


class Row(NamedTuple):
  """One csv line: `line` counts file lines from 1; `rgb` and `depth` are relative to the manual folder."""
  line: int
  rgb: str
  depth: str


def read_csv(csv_path: str | os.PathLike) -> list[Row]:
  """Reads one DenseDepth csv (no header, `rgb_path,depth_path` per line; blank lines are skipped).

  Raises:
    FileNotFoundError: the csv does not exist.
    ValueError: a line without exactly two non-empty fields, or no line at all (the message names the csv).
  """
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise FileNotFoundError(f"{csv_path} not found: NYUD2-DIR needs {TRAIN_CSV} and {TEST_CSV} (the DenseDepth "
                            "NYU Depth v2 release, see YyzHarry/imbalanced-regression nyud2-dir/download_nyud2.py) "
                            "in the manual folder")
  rows = []
  with csv_path.open(newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    for record in reader:
      if not record or not any(field.strip() for field in record):
        continue
      fields = [field.strip() for field in record]
      if len(fields) != 2 or not all(fields):
        raise ValueError(f"{csv_path} line {reader.line_num}: expected `rgb_path,depth_path`, got {','.join(record)!r}")
      rows.append(Row(reader.line_num, fields[0], fields[1]))
  if not rows:
    raise ValueError(f"{csv_path}: no rows (an empty split)")
  return rows


def read_csvs(manual_dir: str | os.PathLike) -> dict[str, list[Row]]:
  """{"train": rows of data/nyu2_train.csv, "test": rows of data/nyu2_test.csv}; see `read_csv`."""
  manual_dir = pathlib.Path(manual_dir)
  return {split: read_csv(manual_dir / CSVS[split]) for split in SPLITS}


def _open(path: pathlib.Path) -> Image.Image:
  """The decoded image at `path`; FileNotFoundError if missing, ValueError naming the file if undecodable."""
  try:
    with Image.open(path) as image:
      image.load()  # decodes the whole file now: a truncated file fails here, not later
      return image
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} does not exist") from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    # PIL reports undecodable data as UnidentifiedImageError (an OSError), truncation as OSError, bad headers
    # as SyntaxError or ValueError.
    raise ValueError(f"cannot decode {path}: {error}") from error


def decode_depth(path: str | os.PathLike, split: str) -> np.ndarray:
  """The depth map at `path` in metres, float32 [H, W]: train 8-bit px / 255 · 10, test 16-bit px / 1000.

  Raises:
    ValueError: the wrong encoding (train not PIL mode "L", test not 16-bit) or, for test, depths beyond
      `MAX_DEPTH`; the message names the file, its mode or the range found.
  """
  return _depth_metres(_open(pathlib.Path(path)), pathlib.Path(path), split)


def _depth_metres(image: Image.Image, path: pathlib.Path, split: str) -> np.ndarray:
  """`decode_depth` on an opened image (any size): the published ToTensor's float32 arithmetic."""
  if split == "train":
    if image.mode not in TRAIN_DEPTH_MODES:
      raise ValueError(f"training depth {path} is a PIL {image.mode!r} image; NYUD2-DIR training depth is an 8-bit "
                       "grayscale PNG ('L', metres = px / 255 · 10)")
    depth = (np.asarray(image).astype(np.float32) / np.float32(255)) * np.float32(10)
  elif split == "test":
    if image.mode not in TEST_DEPTH_MODES:
      raise ValueError(f"test depth {path} is a PIL {image.mode!r} image; NYUD2-DIR test depth is a 16-bit "
                       "grayscale PNG ('I;16', millimetres)")
    depth = np.asarray(image).astype(np.float32) / np.float32(1000)
  else:
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  if depth.size and not (depth.min() >= 0 and depth.max() <= MAX_DEPTH):
    unit = "px / 255 · 10" if split == "train" else "px / 1000, millimetres"
    raise ValueError(f"{split} depth {path}: depths in [{depth.min():.4g}, {depth.max():.4g}] m ({unit}) are "
                     f"outside [0, {MAX_DEPTH:g}] m: a wrong encoding or unit")
  return depth


def preprocess(rgb_path: str | os.PathLike, depth_path: str | os.PathLike, split: str,
               geo: Geometry = PUBLISHED_GEOMETRY) -> tuple[np.ndarray, np.ndarray]:
  """One example as this dataset stores it: (image uint8 [h, w, 3], depth float32 [h, w] metres).

  train: Scale(geo.scale) only (RGB bilinear, depth nearest), [240, 320] for a 640×480 pair at 240;
  test: Scale + CenterCrop to geo.crop, [228, 304]. See the module docstring.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: an undecodable file, an RGB file that is not RGB, a wrong depth encoding or range, RGB and depth
      of different sizes, or an image smaller than the crop after scaling; the message names the file.
  """
  rgb_path, depth_path = pathlib.Path(rgb_path), pathlib.Path(depth_path)
  rgb, depth = _open(rgb_path), _open(depth_path)
  if rgb.mode != "RGB":
    raise ValueError(f"{rgb_path} is a PIL {rgb.mode!r} image, not an RGB colour image")
  metres = _depth_metres(depth, depth_path, split)  # checks the encoding and range on the full file
  if rgb.size != depth.size:
    raise ValueError(f"{rgb_path} is {rgb.size[0]}×{rgb.size[1]} but its depth {depth_path} is "
                     f"{depth.size[0]}×{depth.size[1]}")
  size = scaled_size(*rgb.size, geo.scale)
  if size != rgb.size:
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    # On the file's own mode, as published: PIL's nearest picks other pixels on "I;16" than on "F" (measured).
    metres = _depth_metres(depth.resize(size, Image.Resampling.NEAREST), depth_path, split)
  image = np.asarray(rgb)
  if split == "test":
    try:
      image, metres = center_crop(image, geo.crop), center_crop(metres, geo.crop)
    except ValueError as error:
      raise ValueError(f"{rgb_path}: scaled to {size[0]}×{size[1]}, {error}") from None
  elif size[0] < geo.crop[0] or size[1] < geo.crop[1]:
    raise ValueError(f"{rgb_path}: scaled to {size[0]}×{size[1]}, smaller than the {geo.crop[0]}×{geo.crop[1]} crop")
  return np.ascontiguousarray(image), np.ascontiguousarray(metres, dtype=np.float32)


def _read_row(row: Row, *, root: pathlib.Path, split: str, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
  """`preprocess` of a csv row, with errors that name the csv line and the file."""
  where = f"{root / CSVS[split]} line {row.line}"
  try:
    return preprocess(root / row.rgb, root / row.depth, split, geo)
  except FileNotFoundError as error:
    raise FileNotFoundError(f"{where}: {error}") from None
  except ValueError as error:
    raise ValueError(f"{where}: {error}") from error


def _test_bins(root: pathlib.Path, rows: Sequence[Row], geo: Geometry) -> Iterator[np.ndarray]:
  """uint8 bins [h, w] of each test row's stored depth, in csv order."""
  read = functools.partial(_read_row, root=root, split="test", geo=geo)
  for _, depth in map_in_order(read, rows):
    yield bin_index(depth).astype(np.uint8)


def balanced_test_masks(manual_dir: str | os.PathLike, rows: Sequence[Row], *, scale: int = PUBLISHED_SCALE,
               seed: int = DEFAULT_MASK_SEED) -> tuple[np.ndarray, dict[str, Any]]:
  """The balanced masks of the test rows, bool [n, h, w] (crop size), and a summary for metadata.json."""
  bins = np.stack(list(_test_bins(pathlib.Path(manual_dir), rows, geometry(scale))))
  mask = _balanced_from_bins(bins.ravel(), seed).reshape(bins.shape)
  counts = np.bincount(bins.ravel(), minlength=NUM_BINS)
  kept = np.bincount(bins[mask], minlength=NUM_BINS)
  summary = {"seed": int(seed), "pixels_per_bin": int(kept.max()),
             "bins": [b for b in BALANCED_BINS if kept[b]], "pixels": int(mask.sum()),
             "test_bin_counts": counts.tolist()}
  return mask, summary


def check_files(manual_dir: str | os.PathLike, rows: dict[str, list[Row]], *, scale: int = PUBLISHED_SCALE) -> None:
  """Opens, decodes and checks every listed file as the build will (`preprocess`), train then test.

  Raises:
    FileNotFoundError / ValueError: as `preprocess`, naming the csv line and the file; ValueError if no test
      pixel is in the balanced bins 7..99.
  """
  root, geo = pathlib.Path(manual_dir), geometry(scale)
  for _ in map_in_order(functools.partial(_read_row, root=root, split="train", geo=geo), rows["train"]):
    pass
  # A list, not any(): every test file is checked, not only those up to the first with a balanced bin.
  if max([int(bins.max()) for bins in _test_bins(root, rows["test"], geo)]) < BALANCED_BINS.start:
    raise ValueError(f"{root / TEST_CSV}: no test depth is >= {BALANCED_BINS.start / 10} m (bins "
                     f"{BALANCED_BINS.start}..{NUM_BINS - 1}): the balanced test mask would be empty")


# -------------------------------------------------------------------------------------------------- builder


@dataclasses.dataclass
class NYUD2DirConfig(tfds.core.BuilderConfig):
  """A stored size and mask: `scale` the shorter side after Scale (see `geometry`), `mask_seed` the test mask's."""
  scale: int = PUBLISHED_SCALE
  mask_seed: int = DEFAULT_MASK_SEED


def config_name(scale: int, mask_seed: int) -> str:
  return f"{scale}px" if mask_seed == DEFAULT_MASK_SEED else f"{scale}px_seed{mask_seed}"


def _config(scale: int, mask_seed: int) -> NYUD2DirConfig:
  geo = geometry(scale)
  return NYUD2DirConfig(name=config_name(scale, mask_seed), scale=scale, mask_seed=mask_seed,
                        description=(f"shorter side scaled to {scale}, crop {geo.crop[0]}×{geo.crop[1]}, training "
                                     f"depth {geo.train_depth[0]}×{geo.train_depth[1]}, test mask seed {mask_seed}"))


class NYUD2Dir(tfds.core.GeneratorBasedBuilder):
  """NYUD2-DIR (Yang et al. 2021): NYU Depth v2 (DenseDepth release) with a balanced test-pixel mask.

  Build with `build(manual_dir, data_dir, scale=..., mask_seed=...)`. Features: `image` uint8 [h, w, 3] (PNG),
  `depth` float32 [h, w] metres (zlib), `balanced_mask` bool [h, w] (test; [0, 0] for train), `rgb_path`,
  `depth_path` (the csv's text). Sizes per split are in the module docstring.
  """

  name = "nyud2_dir"
  # tfds 4.9.10 derives code_path through an isinstance test against `importlib_resources`, which it only
  # requires on Python < 3.9: for a builder inside a package that raises ModuleNotFoundError. Stating it skips it.
  code_path = tfds.core.Path(__file__)
  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      DATASET_VERSION: "DenseDepth NYU Depth v2 with the DIR balanced test mask regenerated from a seed."}
  BUILDER_CONFIGS: ClassVar[list[NYUD2DirConfig]] = [_config(PUBLISHED_SCALE, DEFAULT_MASK_SEED)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Put into the manual folder (`manual_dir`) the `data/` folder that YyzHarry/imbalanced-regression's
  nyud2-dir/download_nyud2.py unzips (DenseDepth's NYU Depth v2):
    {TRAIN_CSV}, {TEST_CSV}   `rgb_path,depth_path` per line, no header, paths relative to the manual folder
    data/nyu2_train/           <scene>/<n>.jpg RGB and <n>.png 8-bit depth (metres = px / 255 * 10)
    data/nyu2_test/            <n>_colors.png RGB and <n>_depth.png 16-bit depth (millimetres)
  """

  def _info(self) -> tfds.core.DatasetInfo:
    geo = geometry(self.builder_config.scale)
    return tfds.core.DatasetInfo(
        builder=self,
        description=("NYUD2-DIR: monocular depth with imbalanced training depths and a depth-balanced test pixel "
                     f"mask (Yang et al., ICML 2021). Scale {geo.scale}, crop {geo.crop[0]}×{geo.crop[1]}; train "
                     "stored scaled, uncropped (augmented before the crop); test stored cropped."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
            # Two unknown dimensions need a byte encoding; zlib shrinks the 8-bit-valued training depths.
            "depth": tfds.features.Tensor(shape=(None, None), dtype=np.float32,
                                          encoding=tfds.features.Encoding.ZLIB),
            "balanced_mask": tfds.features.Tensor(shape=(None, None), dtype=np.bool_,
                                                  encoding=tfds.features.Encoding.ZLIB),
            "rgb_path": tfds.features.Text(),
            "depth_path": tfds.features.Text(),
        }),
        supervised_keys=("image", "depth"),
        homepage="https://github.com/YyzHarry/imbalanced-regression/tree/main/nyud2-dir",
        citation=_CITATION,
        disable_shuffling=True,  # csv order: the balanced mask and evaluation follow it
        metadata=tfds.core.MetadataDict(),  # metadata.json, written into the temporary folder with the rest
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
    manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
    rows = read_csvs(manual_dir)
    config = self.builder_config
    masks, summary = balanced_test_masks(manual_dir, rows["test"], scale=config.scale, seed=config.mask_seed)
    self.info.metadata["geometry"] = geometry(config.scale)._asdict()
    self.info.metadata["balanced_mask"] = summary
    self.info.metadata["csv_sha256"] = {split: hashlib.sha256((manual_dir / CSVS[split]).read_bytes()).hexdigest()
                                        for split in SPLITS}
    return {"train": self._generate_examples(manual_dir, "train", rows["train"], None),
            "test": self._generate_examples(manual_dir, "test", rows["test"], masks)}

  def _generate_examples(self, manual_dir: pathlib.Path, split: str, rows: list[Row],
                         masks: np.ndarray | None) -> Iterator[tuple[int, dict[str, Any]]]:
    read = functools.partial(_read_row, root=manual_dir, split=split, geo=geometry(self.builder_config.scale))
    empty = np.zeros((0, 0), np.bool_)
    for i, (row, (image, depth)) in enumerate(zip(rows, map_in_order(read, rows))):
      yield row.line, {"image": png_bytes(image), "depth": depth, "balanced_mask": empty if masks is None else masks[i],
                       "rgb_path": row.rgb, "depth_path": row.depth}


def _check_seed(mask_seed: int) -> None:
  if isinstance(mask_seed, bool) or not isinstance(mask_seed, int | np.integer) or mask_seed < 0:
    raise ValueError(f"mask_seed must be a non-negative integer, got {mask_seed!r}")


def builder(data_dir: str | os.PathLike, *, scale: int = PUBLISHED_SCALE,
            mask_seed: int = DEFAULT_MASK_SEED) -> NYUD2Dir:
  """The builder of the (scale, mask_seed) config under `data_dir` (prepared or not; nothing is written)."""
  geometry(scale)
  _check_seed(mask_seed)
  scale, mask_seed = int(scale), int(mask_seed)
  registered = scale == PUBLISHED_SCALE and mask_seed == DEFAULT_MASK_SEED
  config = config_name(scale, mask_seed) if registered else _config(scale, mask_seed)
  # The format goes to the constructor: download_and_prepare(file_format=...) refuses to set it on a builder whose
  # info was read from an existing build (the overwrite case).
  return NYUD2Dir(config=config, data_dir=os.fspath(data_dir), file_format="array_record")


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *, scale: int = PUBLISHED_SCALE,
          mask_seed: int = DEFAULT_MASK_SEED, overwrite: bool = False) -> NYUD2Dir:
  """Validates `manual_dir` and writes NYUD2-DIR as array_record (see the module docstring for what is stored).

  Everything is checked before anything is written: both csvs and every listed file (decoded, encoding and
  range checked). An existing complete build is reused as it is unless `overwrite=True`.

  Args:
    manual_dir: holds data/nyu2_train.csv, data/nyu2_test.csv and the files they list.
    data_dir: where tfds writes (`<data_dir>/nyud2_dir/<config>/1.0.0/`).
    scale: the shorter side after Scale (240 published; the crop and training depth follow, `geometry`).
    mask_seed: the seed of the balanced test mask.
    overwrite: rebuild an existing dataset.

  Returns:
    The prepared builder (`.as_data_source(split)`, `.info.metadata`).

  Raises:
    FileNotFoundError: a csv or a listed file is missing.
    ValueError: a bad csv line, an empty split, an undecodable file, a wrong encoding or depth range, or no test
      depth in bins 7..99; the message names the file. Nothing is left that reads as a dataset.
  """
  ds_builder = builder(data_dir, scale=scale, mask_seed=mask_seed)
  if ds_builder.is_prepared() and not overwrite:
    return ds_builder
  manual_dir = pathlib.Path(manual_dir)
  check_files(manual_dir, read_csvs(manual_dir), scale=scale)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  ds_builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), download_mode=mode))
  return builder(data_dir, scale=scale, mask_seed=mask_seed)  # a fresh reader of what is on disk


def _prepared(data_dir: str | os.PathLike, scale: int, mask_seed: int) -> NYUD2Dir:
  ds_builder = builder(data_dir, scale=scale, mask_seed=mask_seed)
  if not ds_builder.is_prepared():
    raise FileNotFoundError(f"no complete NYUD2-DIR dataset at {ds_builder.data_path} (scale={scale}, "
                            f"mask_seed={mask_seed}): run experiments.nyud2_dir.data.build(manual_dir, data_dir) first")
  return ds_builder


def load(data_dir: str | os.PathLike, split: str, *, scale: int = PUBLISHED_SCALE,
         mask_seed: int = DEFAULT_MASK_SEED) -> Sequence[dict[str, Any]]:
  """A random-access data source over a split ("train", "test", or tfds split syntax such as "test[:10]").

  Element i is the split's i-th csv line: {"image": uint8 [h, w, 3], "depth": float32 [h, w] metres,
  "balanced_mask": bool [h, w] (test) or [0, 0] (train), "rgb_path": bytes, "depth_path": bytes}; train is
  stored scaled (e.g. [240, 320]), test cropped ([228, 304]). Picklable (grain workers). Raises FileNotFoundError
  if the dataset was not built.
  """
  return _prepared(data_dir, scale, mask_seed).as_data_source(split)


def metadata(data_dir: str | os.PathLike, *, scale: int = PUBLISHED_SCALE,
             mask_seed: int = DEFAULT_MASK_SEED) -> dict[str, Any]:
  """metadata.json of a built dataset: {"geometry", "balanced_mask": {"seed", "pixels_per_bin", "bins", ...},
  "csv_sha256"}."""
  return dict(_prepared(data_dir, scale, mask_seed).info.metadata)
