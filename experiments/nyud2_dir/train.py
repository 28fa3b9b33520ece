"""NYUD2-DIR in the DIR harness: the data as `DIRData`, the per-image pixel regularizers, the upsampled
prediction, the per-shot depth metrics and Table 4's diagnostics of a trained network.

L_ot and the peers act per image on `num_pixels` valid pixels (depth > `min_depth`) of the last hidden
feature map taken at `stride` (the published L_ot: stride 8, 200 pixels, per image), averaged over the
batch's images; each image draws its pixels with its own key (`rtjax.sample_valid_pixels`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import rtjax
from experiments.common.dir_methods import Method, noise_targets
from experiments.nyud2_dir import data, input_pipeline
from experiments.nyud2_dir.models import resize_bilinear
from rtjax.ordinal_entropy import ordinal_entropy_loss
from rtjax.topology import ph_reg_loss
from rtjax.train import RotConfig


class DepthData:
  """The built dataset as the harness's data: (image, depth) training batches; (image, depth, pixel mask)
  test batches, the mask = the balanced test mask of real (non-padding) examples."""

  def __init__(self, sources: dict[str, Sequence[Any]], geometry: data.Geometry, *, num_workers: int = 0):
    self.sources, self.geometry, self.num_workers = sources, geometry, num_workers
    self.train_labels = np.zeros(0)  # NYUD2-DIR's shots are fixed bin lists, not training counts

  def num_train_batches(self, batch_size: int) -> int:
    return input_pipeline.num_train_batches(self.sources["train"], batch_size)

  def train_batches(self, *, batch_size: int, seed: int, epoch: int):
    for batch in input_pipeline.train_batches(self.sources["train"], batch_size=batch_size, seed=seed, epoch=epoch,
                                              geometry=self.geometry, num_workers=self.num_workers):
      yield batch["image"], batch["depth"]

  def eval_batches(self, split: str, *, batch_size: int):
    for batch in input_pipeline.eval_batches(self.sources[split], batch_size=batch_size, geometry=self.geometry,
                                             num_workers=self.num_workers):
      yield batch["image"], batch["depth"], batch["balanced_mask"] & batch["mask"][:, None, None]


def _per_image(term: Callable, *, stride: int, num_pixels: int, min_depth: float) -> Callable:
  """(features [B, h, w, C], depth [B, h, w], key) -> mean over images of term(z [P, C], y [P], key) [T] on
  `num_pixels` valid pixels per image (0 for an image without a valid pixel)."""
  def one(z, y, key):
    z = z[::stride, ::stride].reshape(-1, z.shape[-1])
    y = y[::stride, ::stride].reshape(-1)
    if y.shape[0] < num_pixels:
      raise ValueError(f"{num_pixels} pixels per image requested, {y.shape[0]} remain at stride {stride}: "
                       "lower --pixels or --stride.")
    valid = y > min_depth
    pick, draw = jax.random.split(key)
    rows = rtjax.sample_valid_pixels(valid, pick, num_pixels)
    return jnp.where(jnp.any(valid), term(z[rows], y[rows], draw), 0.0)

  def regularizer(features, depth, key):
    keys = jax.random.split(key, features.shape[0])
    return jnp.mean(jax.vmap(one)(features, depth.astype(features.dtype), keys), axis=0)
  return regularizer


def _terms(method: Method) -> list[tuple[Callable, Sequence[float]]]:
  """(term (z [P, C], y [P], key) -> [T], weights [T]) of the method's pixel regularizers."""
  terms = []
  if method.lam:
    terms.append((lambda z, y, key: rtjax.rot_loss(z, y, epsilon=method.epsilon)[None], (method.lam,)))
  if method.peer == "ranksim":
    terms.append((lambda z, y, key: rtjax.ranksim_loss(z, y, key)[None], method.peer_weights))
  elif method.peer == "oe":
    terms.append((lambda z, y, key: ordinal_entropy_loss(z, y)[None], method.peer_weights))
  elif method.peer == "phreg":
    low, high, jump = method.phreg_points

    def phreg(z, y, key):
      t = ph_reg_loss(z, y[:, None], key, lambda_t=1.0, lambda_d=0, normalization="max_entry")
      d = ph_reg_loss(z, y[:, None], key, lambda_t=0, lambda_d=1.0, min_points=low, max_points=high, point_jump=jump)
      return jnp.stack([t, d])
    terms.append((phreg, method.peer_weights))
  return terms


def loss_pieces(method: Method, *, stride: int, num_pixels: int, min_depth: float = 1e-3,
                noise_std: float = 1.0) -> dict:
  """`make_loss_fn`'s keyword arguments for a depth method: MSE on all pixels (the task loss is the
  schedule's) + the per-image pixel regularizers; noise targets per pixel for the "noise" row."""
  out = {"rot": RotConfig()}  # L_ot is a pixel regularizer here, not the batch-feature form
  if method.noise:
    out["targets_fn"] = noise_targets(method.num_targets, noise_std)
  terms = _terms(method)
  if terms:
    fns = [_per_image(fn, stride=stride, num_pixels=num_pixels, min_depth=min_depth) for fn, _ in terms]
    out["regularizer"] = lambda z, y, key: jnp.concatenate(
        [fn(z, y, k) for fn, k in zip(fns, jax.random.split(key, len(fns)))])
    out["regularizer_weights"] = jnp.asarray([w for _, ws in terms for w in ws], jnp.float32)
  return out


def upsample_to(size: tuple[int, int]) -> Callable[[jax.Array], jax.Array]:
  """pred [b, h, w] -> [b, H, W]: test.py's bilinear upsampling (align_corners=True) to the test depth."""
  return lambda pred: resize_bilinear(pred[..., None], size, align_corners=True)[..., 0]


def evaluate(pred: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float | None]]:
  """Per-shot depth metrics of the masked test pixels (shots by the published bin lists)."""
  shots = data.shot_index(labels).astype(np.int32)
  out = rtjax.depth_metrics(jnp.asarray(pred, jnp.float32), jnp.asarray(labels, jnp.float32), jnp.asarray(shots))
  cell = lambda k, v, count: int(v) if k == "count" else (float(v) if count else None)
  return {region: {k: cell(k, v, int(values["count"])) for k, v in values.items()} for region, values in out.items()}


def diagnostics(model, variables, dataset: DepthData, *, images: int = 8, pixels: int = 1000,
                seed: int = 0, keep_points: bool = False) -> dict:
  """{"diagnostics": Table 4} — Spearman / Kendall between feature similarities (cosine, Euclidean) and depth
  distances, and the volumes — on `pixels` valid pixels drawn (by `seed`) from the first `images` test
  images; the features at the network's output resolution, the depth sampled at the same pixels (nearest).
  With `keep_points`, also "points": [[z..., depth]] of those pixels (Figure 3, for a 3-d last layer)."""
  x, y, _ = next(iter(dataset.eval_batches("test", batch_size=images)))
  _, features = model.apply(variables, jnp.asarray(x), train=False)
  h, w = features.shape[1:3]
  rows = (np.arange(h) * y.shape[1]) // h
  cols = (np.arange(w) * y.shape[2]) // w
  depth = np.asarray(y)[:, rows][:, :, cols].reshape(-1)
  z = np.asarray(features, np.float32).reshape(-1, features.shape[-1])
  valid = np.flatnonzero(depth > 1e-3)
  pick = np.random.default_rng(seed).choice(valid, size=min(pixels, valid.size), replace=False)
  d = rtjax.tightness_diagnostics(jnp.asarray(z[pick]), jnp.asarray(depth[pick]))
  out = {"diagnostics": {k: float(v) for k, v in d._asdict().items()}}
  if keep_points:
    out["points"] = np.round(np.concatenate([z[pick], depth[pick, None]], axis=1), 5).tolist()
  return out


def figure3(report: dict, path, *, names: dict[str, str]) -> None:
  """Paper Figure 3: the 3-d last-layer features of test pixels (first seed of each method), coloured by depth."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from experiments.common.results import atomic_path

  runs = [(m, next(iter(r.values()))) for m, r in report["runs"].items() if "points" in next(iter(r.values()))]
  fig = plt.figure(figsize=(4.2 * len(runs), 4.2))
  for i, (method, run) in enumerate(runs):
    points = np.asarray(run["points"])
    ax = fig.add_subplot(1, len(runs), i + 1, projection="3d")
    ax.scatter(*points[:, :3].T, c=points[:, 3], cmap="viridis", s=3)
    ax.set_title(names.get(method, method))
  fig.tight_layout()
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)
