"""Coordinate-prediction data (Zhang et al. 2024; paper Table 3): recover a 3-D point from noisy mixtures.

The target y = (a, b, c) is a point on a shape; the input x [100] holds the four mixtures
(a+b+c, a+b-c, a-b+c, -a+b+c) of the target point (columns 0-3) followed by the same mixtures of 24
further points drawn independently from the same shape (columns 4-99). Split: first 100 samples train,
next 100 validation, the rest test. Generated data are a pure function of the seed.
"""
from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

NUM_POINTS = 3000
NUM_NOISE_POINTS = 24
NUM_TRAIN = 100
NUM_VAL = 100


def _torus(rng: np.random.Generator, n: int) -> np.ndarray:
  """Torus with tube-centre distance 4 and tube radius 1, both angles uniform on [0, 2pi)."""
  theta, phi = rng.uniform(0, 2 * np.pi, size=(2, n))
  ring = 4.0 + np.cos(theta)
  return np.stack([ring * np.cos(phi), ring * np.sin(phi), np.sin(theta)], axis=1)


def _circle(rng: np.random.Generator, n: int, rotation: np.ndarray) -> np.ndarray:
  """Unit circle, angles from 1000 evenly spaced values on [0, 2pi], in a rotated plane."""
  angles = rng.choice(np.linspace(0, 2 * np.pi, 1000), size=n)
  flat = np.stack([np.cos(angles), np.sin(angles), np.zeros(n)], axis=1)
  return flat @ rotation.T


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
  """t = 1.5 pi (1 + 2u), point (t cos t, 21 v, t sin t), u, v uniform on [0, 1)."""
  u, v = rng.uniform(size=(2, n))
  t = 1.5 * np.pi * (1 + 2 * u)
  return np.stack([t * np.cos(t), 21.0 * v, t * np.sin(t)], axis=1)


MAMMOTH = pathlib.Path(__file__).with_name("mammoth_3d.npy")  # 10,000 points [10000, 3], float64


def _mammoth_cloud() -> np.ndarray:
  return np.load(MAMMOTH)


def _shape_sampler(name: str, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
  """A sampler n -> [n, 3] for one dataset; per-dataset randomness (circle plane) drawn once."""
  if name == "torus":
    return lambda n: _torus(rng, n)
  if name == "circle":
    rotation, _ = np.linalg.qr(rng.uniform(size=(3, 3)))
    return lambda n: _circle(rng, n, rotation)
  if name == "swiss_roll":
    return lambda n: _swiss_roll(rng, n)
  if name == "mammoth":
    cloud = _mammoth_cloud()
    return lambda n: cloud[rng.choice(len(cloud), size=n, replace=n > len(cloud))]
  raise ValueError(f"Unknown dataset {name!r}; choose from {DATASETS}.")


DATASETS = ("torus", "circle", "swiss_roll", "mammoth")


def sample_shape(name: str, n: int, seed: int) -> np.ndarray:
  """n points [n, 3] of the named shape (a pure function of `seed`)."""
  return _shape_sampler(name, np.random.default_rng(seed))(n)


def mix_coordinates(points: np.ndarray) -> np.ndarray:
  """[..., 3] points (a, b, c) -> [..., 4] mixtures (a+b+c, a+b-c, a-b+c, -a+b+c)."""
  mixing = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=points.dtype)
  return points @ mixing.T


class CoordinateData(NamedTuple):
  """Inputs x [N, 100] and targets y [N, 3] (float32)."""
  x: np.ndarray
  y: np.ndarray


def coordinate_dataset(name: str, seed: int, num_points: int = NUM_POINTS) -> CoordinateData:
  """The generated dataset `name` in DATASETS: x [num_points, 100], y [num_points, 3]."""
  rng = np.random.default_rng(seed)
  sample = _shape_sampler(name, rng)
  targets = sample(num_points)
  noise = sample(num_points * NUM_NOISE_POINTS).reshape(num_points, NUM_NOISE_POINTS, 3)
  x = np.concatenate([mix_coordinates(targets), mix_coordinates(noise).reshape(num_points, -1)], axis=1)
  return CoordinateData(x.astype(np.float32), targets.astype(np.float32))


def load_npz(path) -> CoordinateData:
  """A user's dataset file: arrays `data` [N, D] and `label` [N, 3] (the authors' file layout)."""
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read {path!s} as an .npz file: {e}") from e
  missing = {"data", "label"} - set(arrays)
  if missing:
    raise ValueError(f"{path!s} lacks array(s) {sorted(missing)}; it has {sorted(arrays)}.")
  x, y = arrays["data"], arrays["label"]
  if x.ndim != 2 or y.ndim != 2 or y.shape[1] != 3 or len(x) != len(y):
    raise ValueError(
        f"{path!s}: expected `data` [N, D] and `label` [N, 3] with the same N, got data {x.shape} "
        f"and label {y.shape}.")
  if len(x) <= NUM_TRAIN + NUM_VAL:
    raise ValueError(f"{path!s}: needs more than {NUM_TRAIN + NUM_VAL} samples, got {len(x)}.")
  for name, a in (("data", x), ("label", y)):
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
      raise ValueError(f"{path!s}: `{name}` must be finite numbers, got dtype {a.dtype}.")
  return CoordinateData(x.astype(np.float32), y.astype(np.float32))


def split(data: CoordinateData) -> tuple[CoordinateData, CoordinateData, CoordinateData]:
  """(train, validation, test): the first 100 samples, the next 100, the rest."""
  cut = (NUM_TRAIN, NUM_TRAIN + NUM_VAL)
  return tuple(CoordinateData(x, y) for x, y in zip(np.split(data.x, cut), np.split(data.y, cut)))
