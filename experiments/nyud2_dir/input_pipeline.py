"""NYUD2-DIR input pipeline on grain: NumPy batches with static shapes, a pure function of (seed, epoch).

The published training transform (YyzHarry/imbalanced-regression `nyud2-dir/loaddata.py` getTrainingData, with
the classes of `nyud2-dir/nyu_transform.py`), after the Scale(240) that `data.py` stores:
  1. RandomHorizontalFlip: image and depth, probability 1/2.
  2. RandomRotate(5): angle ~ U(-5°, 5°), `scipy.ndimage.rotate(x, angle, reshape=False, order=2)` on image and
     depth (order-2 spline, zero fill outside).
  3. CenterCrop([304, 228], [152, 114]): both cropped to 304×228 at (8, 6), the depth then resized to 152×114 with
     PIL's default filter (BICUBIC since Pillow 7.0, the published code's era; NEAREST before).
  4. ToTensor: image / 255, depth px / 255 · 10.
  5. Lighting(0.1, ImageNet PCA): image += Σ_j eigvec[:, j] · α_j · eigval_j, α ~ N(0, 0.1²) per channel j.
  6. ColorJitter(0.4, 0.4, 0.4): brightness, contrast, saturation in a random order (torch.randperm), each
     x ← x + a · (target − x) with its own a ~ U(-0.4, 0.4): brightness's target 0, contrast's the mean of the
     image's luminance (0.299 r + 0.587 g + 0.114 b), saturation's the per-pixel luminance. No clipping.
  7. Normalize(ImageNet mean, std).
Here both follow it with the same library calls. Training depth is 8-bit by construction (`data.py` refuses
anything else), so its stored float32 metres map back to their bytes exactly (`depth_px`); the flip, rotation (on
uint8 scipy rounds and clips, as in the published ndarray → PIL round trip), crop and resize (PIL bicubic on the
8-bit image: the published default since Pillow 7.0, NEAREST before) run on those bytes, and the result is
converted as ToTensor does, so the depth is bit-identical to the published one for the same draws (tested).
Resizing float32 metres instead was measured to differ by up to 7 steps of 10/255 m at depth edges: PIL rounds
and clips between its two passes. The image matches to float32 rounding (numpy's and torch's sums and lerps group
differently; the tests allow 2e-5 after normalisation).

Test (getTestingData): the stored 304×228 crop is only normalised; its depth and balanced mask pass as stored.

Determinism: epoch e of `train_batches(source, seed=s, epoch=e)` visits the examples in the permutation
`grain.MapDataset.shuffle(shuffle_seed(s, e))` (AgeDB-DIR's), and example i (its index in `source`) is augmented
with `augmentation_params(s, e, i)`; a resumed run rebuilds the same batches (`start_batch` skips those seen).
Workers as in `experiments/agedb_dir/input_pipeline.py` (spawned processes; a `__main__` guard; the source must
pickle). scipy's rotation holds the GIL (~12 ms for a 320×240 image, ~4 ms for its depth): reading threads do not
overlap it, so full-size training wants `num_workers > 0`.

Element of a source (`data.load`): {"image": uint8 [h, w, 3], "depth": float32 [h, w], "balanced_mask":
bool [h, w] or [0, 0], ...}; other keys are dropped.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np
from PIL import Image
from scipy import ndimage

from experiments.common.grain_data import check_non_negative, check_positive, iterate, shuffle_seed
from experiments.nyud2_dir.data import MAX_DEPTH, PUBLISHED_GEOMETRY, Geometry, center_crop

# The published constants (`loaddata.py` getTrainingData).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)
LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)  # nyu_transform.Grayscale
MAX_ANGLE = 5.0       # RandomRotate(5), degrees
LIGHTING_STD = 0.1    # Lighting(0.1, ...)
JITTER = 0.4          # ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
ROTATION_ORDER = 2    # RandomRotate's spline order
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # ColorJitter's transforms, in the order it lists them

# A domain tag apart from AgeDB-DIR's (0xA06): numpy's SeedSequence would otherwise give both tasks' example i the
# same stream.
_AUGMENT_TAG = 0xD3B


class Augmentation(NamedTuple):
  """One training example's random choices.

  `flip`: flip left-right; `angle`: the rotation in degrees; `lighting`: α [3] of the PCA lighting; `jitter_order`:
  the order of (BRIGHTNESS, CONTRAST, SATURATION); `jitter`: the factor a of each of them, indexed by that constant.
  """
  flip: bool
  angle: float
  lighting: tuple[float, float, float]
  jitter_order: tuple[int, int, int]
  jitter: tuple[float, float, float]


def augmentation_params(seed: int, epoch: int, index: int) -> Augmentation:
  """The augmentation of example `index` (its index in the source) in epoch `epoch`: a pure function of the three.

  As the published draws: flip with probability 1/2, angle ~ U(-5, 5), α ~ N(0, 0.1²)³, a uniform permutation of
  the three jitters, their factors ~ U(-0.4, 0.4).
  """
  check_non_negative(seed=seed, epoch=epoch, index=index)
  rng = np.random.default_rng([_AUGMENT_TAG, seed, epoch, index])
  flip = bool(rng.random() < 0.5)
  angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
  lighting = tuple(float(a) for a in rng.normal(0.0, LIGHTING_STD, 3))
  order = tuple(int(i) for i in rng.permutation(3))
  jitter = tuple(float(a) for a in rng.uniform(-JITTER, JITTER, 3))
  return Augmentation(flip, angle, lighting, order, jitter)


def depth_px(depth: np.ndarray) -> np.ndarray:
  """Training depth metres → its 8-bit bytes, uint8 [..]: px = round(d · 25.5), exact on px / 255 · 10 values.

  Raises ValueError if `depth` is not 8-bit valued (the training split stores only such values).
  """
  depth = np.asarray(depth, np.float32)
  px = np.rint(depth.astype(np.float64) * (255 / MAX_DEPTH))
  if depth.size and not (px.min() >= 0 and px.max() <= 255 and np.array_equal(depth_metres(px), depth)):
    raise ValueError("training depth must be 8-bit valued (metres = px / 255 · 10, px in 0..255), as data.py "
                     f"stores it; got values in [{depth.min()}, {depth.max()}] off that grid")
  return px.astype(np.uint8)


def depth_metres(px: np.ndarray) -> np.ndarray:
  """8-bit depth bytes → float32 metres, the published ToTensor: (px / 255) · 10 in float32."""
  return (np.asarray(px).astype(np.float32) / np.float32(255)) * np.float32(MAX_DEPTH)


def flip_rotate(image: np.ndarray, px: np.ndarray, params: Augmentation) -> tuple[np.ndarray, np.ndarray]:
  """Steps 1-2 at the scaled size: image uint8 [H, W, 3] and depth bytes uint8 [H, W] → the same shapes, uint8."""
  if params.flip:
    image, px = image[:, ::-1], px[:, ::-1]
  # The published call; on uint8 scipy rounds and clips the order-2 spline (which overshoots at edges).
  rotate = functools.partial(ndimage.rotate, angle=params.angle, reshape=False, order=ROTATION_ORDER)
  return rotate(image), rotate(px)


def resize_px(px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """8-bit depth [h, w] → uint8 [size[1], size[0]]: PIL bicubic on the "L" image (the published `depth.resize`);
  the same size returns the input (PIL's resize would copy it)."""
  if px.shape[::-1] == tuple(size):
    return px
  return np.asarray(Image.fromarray(np.ascontiguousarray(px, np.uint8)).resize(tuple(size), Image.Resampling.BICUBIC))


def lighting(image: np.ndarray, alpha: Sequence[float]) -> np.ndarray:
  """Step 5 on float32 [..., 3] in [0, 1]: image + Σ_j PCA_EIGVEC[:, j] · α_j · PCA_EIGVAL_j."""
  shift = (PCA_EIGVEC * np.asarray(alpha, np.float32)[None, :] * PCA_EIGVAL[None, :]).sum(axis=1)
  return image + shift


def color_jitter(image: np.ndarray, order: Sequence[int], factors: Sequence[float]) -> np.ndarray:
  """Step 6 on one float32 image [H, W, 3]: the jitters in `order`, each x + a · (target − x) (torch's lerp)."""
  for which in order:
    a = np.float32(factors[which])
    if which == BRIGHTNESS:
      target = np.float32(0)
    elif which == CONTRAST:
      target = (image @ LUMINANCE).mean(dtype=np.float32)
    elif which == SATURATION:
      target = (image @ LUMINANCE)[..., None]
    else:
      raise ValueError(f"jitter_order holds {which!r}, not one of 0 (brightness), 1 (contrast), 2 (saturation)")
    image = image + a * (target - image)
  return image


def normalise(image: np.ndarray) -> np.ndarray:
  """Step 7: float [..., 3] → float32 (x − ImageNet mean) / ImageNet std."""
  return ((np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32, copy=False)


def to_float(image: np.ndarray) -> np.ndarray:
  """Step 4: uint8 → float32 x / 255."""
  if image.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {image.dtype}")
  return image.astype(np.float32) / np.float32(255)


def augment(image: np.ndarray, depth: np.ndarray, params: Augmentation,
            geometry: Geometry = PUBLISHED_GEOMETRY) -> tuple[np.ndarray, np.ndarray]:
  """The published training transform of one stored example (steps 1-7).

  Args:
    image: uint8 [H, W, 3] at the scaled size (e.g. [240, 320, 3]).
    depth: float32 [H, W] metres, 8-bit valued (`depth_px`).
    params: `augmentation_params(seed, epoch, index)`.
    geometry: the dataset's sizes (`data.geometry(scale)`).

  Returns:
    (image float32 [crop_h, crop_w, 3] normalised, depth float32 [train_depth_h, train_depth_w] metres).
  """
  image, px = flip_rotate(image, depth_px(depth), params)
  image, px = center_crop(image, geometry.crop), center_crop(px, geometry.crop)
  depth = depth_metres(resize_px(px, geometry.train_depth))
  x = color_jitter(lighting(to_float(image), params.lighting), params.jitter_order, params.jitter)
  return normalise(x), depth


def num_train_batches(source: Sequence[Any], batch_size: int) -> int:
  """Full batches per training epoch: len(source) // batch_size (the remainder is dropped)."""
  check_positive(batch_size=batch_size)
  return len(source) // batch_size


def _train_example(index: int, example: dict[str, Any], *, seed: int, epoch: int,
                   geometry: Geometry) -> dict[str, np.ndarray]:
  image, depth = augment(np.asarray(example["image"]), np.asarray(example["depth"]),
                         augmentation_params(seed, epoch, index), geometry)
  return {"image": image, "depth": depth, "index": np.int32(index)}


def _eval_example(index: int, *, source: Sequence[Any], geometry: Geometry, depth_size: tuple[int, int],
                  balanced: bool) -> dict[str, np.ndarray]:
  shape = (geometry.crop[1], geometry.crop[0])
  if index < len(source):
    example = source[index]
    image = center_crop(np.asarray(example["image"]), geometry.crop)
    depth = center_crop(np.asarray(example["depth"], np.float32), geometry.crop)
    if depth.shape[::-1] != depth_size:  # the training split (8-bit), resized as its training depth is
      depth = depth_metres(resize_px(depth_px(depth), depth_size))
    out = {"image": normalise(to_float(image)), "depth": depth, "mask": np.True_}
    if balanced:
      out["balanced_mask"] = np.asarray(example["balanced_mask"], np.bool_)
    return out
  # Padding: a black image, depth 0, every mask False.
  out = {"image": normalise(np.zeros(shape + (3,), np.float32)),
         "depth": np.zeros(depth_size[::-1], np.float32), "mask": np.False_}
  if balanced:
    out["balanced_mask"] = np.zeros(depth_size[::-1], np.bool_)
  return out


def train_batches(source: Sequence[Any], *, batch_size: int, seed: int, epoch: int,
                  geometry: Geometry = PUBLISHED_GEOMETRY, num_workers: int = 0, num_threads: int = 4,
                  start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """One training epoch: shuffled, augmented (`augment`), full batches.

  Args:
    source: random-access examples {"image": uint8 [H, W, 3], "depth": float32 [H, W]} at the scaled size
      (`data.load(..., "train")`).
    batch_size: b; the last len(source) % b examples of the epoch's permutation are dropped (static shapes).
    seed, epoch: the shuffle is a pure function of (seed, epoch), the augmentation of (seed, epoch, index).
    geometry: the dataset's sizes, `data.geometry(scale)` (the published 240 by default).
    num_workers: grain worker processes (0: none; > 0 needs a `__main__` guard).
    num_threads: reading threads (per worker when num_workers > 0).
    start_batch: skip the epoch's first `start_batch` batches (resuming mid-epoch) without reading them.

  Yields:
    {"image": float32 [b, crop_h, crop_w, 3] normalised, "depth": float32 [b, depth_h, depth_w] metres,
    "index": int32 [b] (each example's index in `source`)}: [b, 228, 304, 3] and [b, 114, 152] at 240.

  Raises:
    ValueError: bad sizes or seeds, or fewer examples than one batch.
  """
  check_positive(batch_size=batch_size)
  check_non_negative(seed=seed, epoch=epoch, num_workers=num_workers, start_batch=start_batch)
  if len(source) < batch_size:
    raise ValueError(f"batch_size {batch_size} > {len(source)} training examples: drop_remainder leaves no batch")
  augment_one = functools.partial(_train_example, seed=int(seed), epoch=int(epoch), geometry=Geometry(*geometry))
  # map_with_index before shuffle: the index the augmentation sees is the example's index in `source`.
  ds = grain.MapDataset.source(source).map_with_index(augment_one).shuffle(seed=shuffle_seed(seed, epoch))
  ds = ds.batch(batch_size, drop_remainder=True)[start_batch:]
  return iterate(ds, num_workers=num_workers, num_threads=num_threads)


def eval_batches(source: Sequence[Any], *, batch_size: int, geometry: Geometry = PUBLISHED_GEOMETRY,
                 depth_size: tuple[int, int] | None = None, num_workers: int = 0,
                 num_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in source order, no augmentation; the last batch padded to `batch_size`.

  The image and depth are centre-cropped to `geometry.crop` (a no-op on the stored test split) and the depth
  resized to `depth_size` (default: the crop, the test protocol; `geometry.train_depth` gives the published FDS
  pass over the training split; only 8-bit training depth can be resized, `resize_px`).

  Yields:
    {"image": float32 [b, crop_h, crop_w, 3] normalised, "depth": float32 [b, h, w] metres, "mask": bool [b]
    (True = a real example), and "balanced_mask": bool [b, h, w] when the source stores one (the test split;
    False on padding rows)}, ceil(len(source) / b) batches.
  """
  check_positive(batch_size=batch_size)
  check_non_negative(num_workers=num_workers)
  if len(source) == 0:
    raise ValueError("eval_batches needs a non-empty source")
  geometry = Geometry(*geometry)
  depth_size = tuple(geometry.crop if depth_size is None else depth_size)
  first = source[0]
  balanced = "balanced_mask" in first and np.asarray(first["balanced_mask"]).size > 0
  if balanced and np.asarray(first["balanced_mask"]).shape != depth_size[::-1]:
    raise ValueError(f"the stored balanced mask is {np.asarray(first['balanced_mask']).shape}, the depth would be "
                     f"{depth_size[::-1]}: evaluate the test split at its stored size (depth_size=None)")
  padded = -(-len(source) // batch_size) * batch_size
  example = functools.partial(_eval_example, source=source, geometry=geometry, depth_size=depth_size,
                              balanced=balanced)
  ds = grain.MapDataset.range(padded).map(example)
  return iterate(ds.batch(batch_size), num_workers=num_workers, num_threads=num_threads)
