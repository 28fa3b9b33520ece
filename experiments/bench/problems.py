"""The benchmark's inputs: float32 features z [n, d] and targets y [n] or [n, k], by problem kind.

- "gaussian": z ~ N(0, I_d), y ~ U(0, 10) (the original "random data"). In high dimension all pairwise
  distances are nearly equal (relative spread ~ 1 / sqrt(d)): after mean-norm normalisation the
  feature plan is almost uniform and Sinkhorn converges in a few iterations, so these rows time little
  but the distance matmuls.
- "clustered": points around a few centres of a 3-D latent space, embedded isometrically in d
  dimensions with a little isotropic noise; y follows the cluster and the position along one latent
  axis. Distances spread over an order of magnitude whatever d is, the plans are far from uniform,
  and the solves need real iterations: the regime of trained features.
- "trained": the penultimate features [n, 100] of the coordinate-prediction MLP trained with L_ot on
  the circle data set (1,000 epochs, one seed) and its 3-D targets; n <= 3000 (the data set's size),
  d is always 100. Trained once per process (~10-20 s on CPU).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

KINDS = ("gaussian", "clustered", "trained")
CLUSTERS = 8
TRAINED_DIM = 100
TRAINED_MAX_N = 3000


class Problem(NamedTuple):
  kind: str
  features: np.ndarray  # [n, d] float32
  targets: np.ndarray   # [n] or [n, k] float32


def shape(kind: str, n: int, d: int) -> tuple[int, int] | None:
  """The (n, d) a kind actually runs for a requested size, or None where it cannot (trained: n > 3000)."""
  if kind == "trained":
    return (n, TRAINED_DIM) if n <= TRAINED_MAX_N else None
  return n, d


def make(kind: str, n: int, d: int, seed: int = 0) -> Problem:
  """The problem of `kind` with n samples in d dimensions (trained: d is ignored, see `shape`)."""
  if kind not in KINDS:
    raise ValueError(f"unknown problem kind {kind!r}; choose from {KINDS}")
  if shape(kind, n, d) is None:
    raise ValueError(f"kind {kind!r} needs n <= {TRAINED_MAX_N}, got {n}")
  features, targets = {"gaussian": gaussian, "clustered": clustered, "trained": trained}[kind](n, d, seed)
  return Problem(kind, features.astype(np.float32), targets.astype(np.float32))


def gaussian(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.uniform(0, 10, size=n)


def clustered(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  centres = rng.normal(scale=2.0, size=(CLUSTERS, 3))
  cluster = rng.integers(CLUSTERS, size=n)
  offset = rng.normal(scale=0.3, size=(n, 3))
  latent = centres[cluster] + offset
  # Orthonormal rows: the embedding keeps the latent distances. The noise's total norm is ~0.1
  # whatever d is, so the problem does not turn Gaussian as d grows.
  embed = np.linalg.qr(rng.normal(size=(d, 3)))[0].T if d >= 3 else np.eye(3)[:, :d]
  features = latent @ embed + rng.normal(scale=0.1 / np.sqrt(d), size=(n, d))
  targets = (cluster + 0.5 + np.clip(offset[:, 0], -1.5, 1.5) / 3.0) * (10.0 / CLUSTERS)
  return features, targets


def trained(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  del d
  features, targets = _trained_circle(seed)
  return features[:n], targets[:n]


@functools.cache
def _trained_circle(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(features [3000, 100], coordinates [3000, 3]) of the circle data set, after training with L_ot."""
  import jax
  import jax.numpy as jnp

  from experiments.coordinate import configs, train
  from experiments.coordinate.data import coordinate_dataset

  data = coordinate_dataset("circle", seed)
  protocol = dataclasses.replace(configs.Protocol(), epochs=1000, seeds=1)
  _, fit, program = train.fit(data, train.Unit("circle", "ot", 100.0, 0.01), [seed], protocol)
  params = jax.tree.map(lambda a: a[0], fit.best_params)
  features = program.model.apply(params, jnp.asarray(data.x))[1]
  return np.asarray(features), np.asarray(data.y)
