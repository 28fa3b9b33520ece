"""The NYUD2-DIR depth network in Flax Linen: Hu et al. (WACV 2019), "Revisiting Single Image Depth
Estimation", as YyzHarry/imbalanced-regression's `nyud2-dir/models/{modules,net,resnet}.py` builds it
(read at commit a6fdc45d45c04e6f5c40f43925bc66e580911084), module for module and name for name, so that
its torch state dicts load (`load_torch_state_dict`) and agree.

The published model (`net.model`, with `define_model`'s ResNet-50 and block_channel [256, 512, 1024, 2048]):
  E    (E_resnet) torchvision's ResNet-50 stem and layer1..4 -> x_block1..4 (no pooling, no fc); ImageNet
       weights in the published runs (`resnet50(pretrained=True)`: the legacy torchvision file
       resnet50-19c8e357.pth, same key layout as today's torchvision files).
  D    conv 1x1 (C4 -> C4/2, no bias) + BN + ReLU on x_block4, then four _UpProjection blocks halving the
       channels each time, to the sizes of x_block3, x_block2, x_block1 and 2x x_block1: 2048 -> 1024 -> 512
       -> 256 -> 128 -> 64 channels for ResNet-50.
  MFF  one _UpProjection per x_block_i (C_i -> 16 channels) to D's output size, concatenated (64 channels),
       conv 5x5 (64 -> 64, no bias) + BN + ReLU. 16 and 64 are fixed in the published code, whatever C_i.
  R    on concat(D, MFF) (64 + C4/32 = 128 channels): conv0 5x5 + BN + ReLU, conv1 5x5 + BN + ReLU, then
       conv2 5x5 -> 1 channel, with bias: the depth map.
  _UpProjection(c_in, c_out)(x, size): bilinear resize of x to `size`, then
       ReLU(BN(conv1_2 3x3(ReLU(BN(conv1 5x5(x))))) + BN(conv2 5x5(x))); no conv here has a bias.
Every conv pads k // 2 on each side (torch's explicit padding; 'SAME' is never used, see resnet.py); every BN
is torch's BatchNorm2d (momentum 0.1 = flax's 0.9, epsilon 1e-5, two-pass batch variance).

The DIR code's changes to Hu et al.: `R` returns, besides the depth map, `x1` = ReLU(BN(conv1(...))), the input
of the final conv, which FDS smooths during training; the regularised "last hidden layer" of Zhang et al.
(ICLR 2025) is that map, returned here as `features`. MT (multiple targets) widens the final conv to M
output channels, one copy of the depth each (their mean is the prediction: `rtjax.mt_predict`).
`feature_dim` narrows that last hidden layer (R.conv1's output; the paper's appendix C.3 uses 3 dims for
its visualisations); None keeps the published width.

Bilinear resizing (`resize_bilinear`): `_UpProjection` calls `F.upsample(x, size, mode='bilinear')` without
`align_corners`. The DIR code targets PyTorch >= 1.2 (tested on 1.6), where that means align_corners=False
(the default since torch 0.4.0; checked on torch 2.13: F.upsample equals F.interpolate(align_corners=False)
exactly): half-pixel centres, src = max((dst + 0.5) * in / out - 0.5, 0). `DepthNet.align_corners=True`
gives the torch <= 0.3 behaviour, which Hu et al.'s own release (PyTorch 0.3.1) was trained with. The
evaluation (`test.py`) upsamples the 114x152 prediction to the 228x304 ground truth with
align_corners=True, explicitly: `resize_bilinear(pred, (228, 304), align_corners=True)`.
The resize is written out (two gathers and lerps per axis, in torch's arithmetic) rather than
`jax.image.resize`, which has half-pixel centres but no align_corners=True and antialiases when shrinking.

Shapes, for x [n, H, W, 3] (NHWC, normalised as the published loader does) and output_size(H, W) = (h, w)
= (2 ceil(H/4), 2 ceil(W/4)): x_block1 has ceil(H/4) rows, so D's output, MFF's and R's are [n, h, w, .].
For the published 228x304 crops: blocks 57x76, 29x38, 15x19, 8x10; output 114x152.
  pred      [n, h, w, M, 1]   M = num_targets copies of the depth, float32 (at least)
  features  [n, h, w, C]      C = feature_dim or 64 + C4 // 32 (128 for ResNet-50 at width 64)

Flax modules carry the torch names: params/batch_stats["E"] as resnet.py (`layer1_0/conv1`, ...), ["D"]
(`conv`, `bn`, `up1`..`up4`, each with `conv1`, `bn1`, `conv1_2`, `bn1_2`, `conv2`, `bn2`), ["MFF"] (`up1`..
`up4`, `conv`, `bn`) and ["R"] (`conv0`, `bn0`, `conv1`, `bn1`, `conv2` with its `bias`).

Initialisation: the encoder as torchvision's (kaiming-normal fan_out, BN 1/0; load ImageNet weights with
`encoder_from_torchvision`); D, MFF and R as torch's Conv2d defaults (weights and bias U(+-1/sqrt(fan_in)),
i.e. kaiming-uniform with a = sqrt(5)), BN scale 1, bias 0, as the published model leaves them.
"""
from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from experiments.common.resnet import DEPTHS, ResNet, convert_torch_state_dict, load_torchvision, load_torchvision_file

__all__ = ["Decoder", "DepthNet", "MultiScaleFusion", "Refinement", "UpProjection", "encoder_from_torchvision",
           "load_torch_state_dict", "output_size", "resize_bilinear"]

_MFF_BRANCH = 16  # channels of each MFF up-projection (published: fixed, 4 x 16 = MFF's num_features 64)

# torch's Conv2d default weight init, kaiming_uniform_(a=sqrt(5)): U(-b, b) with b = 1 / sqrt(fan_in).
_TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def output_size(height: int, width: int) -> tuple[int, int]:
  """(h, w) of the depth map for an H x W input: twice x_block1's size, 2 ceil(H/4) x 2 ceil(W/4)."""
  # conv1 (7x7/2, pad 3) and the max-pool (3x3/2, pad 1) each map s -> floor((s - 1) / 2) + 1 = ceil(s / 2).
  def block1(s: int) -> int:
    return ((s + 1) // 2 + 1) // 2

  return 2 * block1(height), 2 * block1(width)


# ------------------------------------------------------------------------------------------------ resizing


def _linear_taps(in_size: int, out_size: int, align_corners: bool,
                 dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """torch's 1-d linear-interpolation taps (aten/src/ATen/native/UpSample.h), computed in `dtype` as torch
  does for inputs of that dtype (float32 also for float16/bfloat16): source indices i0, i1 [out_size] and
  the weight of i1, lambda1 [out_size]."""
  dst = np.arange(out_size, dtype=dtype)
  if align_corners:
    scale = dtype(in_size - 1) / dtype(out_size - 1) if out_size > 1 else dtype(0)
    src = scale * dst
  else:
    scale = dtype(in_size) / dtype(out_size)
    src = np.maximum(scale * (dst + dtype(0.5)) - dtype(0.5), dtype(0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)  # src >= 0: the cast floors
  i1 = np.minimum(i0 + 1, in_size - 1)
  lambda1 = np.clip(src - i0.astype(dtype), 0, 1).astype(dtype)
  return i0, i1, lambda1


def resize_bilinear(x: jax.Array, size: Sequence[int], *, align_corners: bool = False) -> jax.Array:
  """torch's `F.interpolate(x, size, mode='bilinear', align_corners=...)` for NHWC: [n, H, W, c] -> [n, h, w, c].

  align_corners=False (what the DIR code's `F.upsample` means on torch >= 0.4): half-pixel centres, source
  coordinate max((d + 0.5) * in / out - 0.5, 0); True: corners map to corners, d * (in - 1) / (out - 1).
  Each axis blends its two nearest source pixels, the last one repeated at the far edge; no antialiasing
  when shrinking, as torch. Computed in at least float32 (a bfloat16 input comes back as bfloat16; float64
  gets float64 coordinates, as torch's double path); an unchanged size returns x itself (torch's result is
  then x too, in both modes). Static shapes: the taps are NumPy constants; the gradient is a scatter-add.

  Args:
    x: [n, H, W, c] float.
    size: (h, w), positive.
    align_corners: as torch's.

  Returns:
    [n, h, w, c] in x's dtype.

  Raises:
    ValueError: x not 4-d, or a size that is not two positive ints.
  """
  if x.ndim != 4:
    raise ValueError(f"resize_bilinear expects NHWC [n, H, W, c], got shape {x.shape}.")
  size = tuple(int(s) for s in size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"size must be two positive ints (h, w), got {size}.")
  if size == x.shape[1:3]:
    return x
  y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  taps_dtype = np.float64 if y.dtype == jnp.float64 else np.float32
  # Width first, then height: torch's nested order, h0 * (w0 x00 + w1 x01) + h1 * (w0 x10 + w1 x11).
  for axis in (2, 1):
    i0, i1, lambda1 = _linear_taps(x.shape[axis], size[axis - 1], align_corners, taps_dtype)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    w1 = jnp.asarray(lambda1.reshape(shape), y.dtype)
    # The indices are in range: "clip" only spares the out-of-bounds mask of the default mode, "fill".
    y = (1 - w1) * jnp.take(y, i0, axis=axis, mode="clip") + w1 * jnp.take(y, i1, axis=axis, mode="clip")
  return y.astype(x.dtype)


# ---------------------------------------------------------------------------------------------------- layers


def _symmetric_uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _conv(features: int, kernel: int, in_features: int, dtype: Any, name: str, *, bias: bool = False) -> nn.Conv:
  """torch's Conv2d(in, features, kernel, padding=kernel // 2, bias=bias) with torch's default init."""
  pad = kernel // 2
  bound = 1 / math.sqrt(in_features * kernel * kernel)  # torch's bias init: U(+-1/sqrt(fan_in)), as the weights'
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=bias,
                 kernel_init=_TORCH_DEFAULT_KERNEL, bias_init=_symmetric_uniform(bound),
                 dtype=dtype, param_dtype=jnp.float32, name=name)


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  # As resnet.py: torch's momentum 0.1 is flax's 0.9; two-pass batch variance, as torch.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, use_fast_variance=False, name=name)


class UpProjection(nn.Module):
  """The published `_UpProjection`: x [n, H, W, c] resized to `size` -> [n, h, w, features].

  ReLU(bn1_2(conv1_2 3x3(ReLU(bn1(conv1 5x5(x'))))) + bn2(conv2 5x5(x'))), x' = bilinear resize of x.
  """
  features: int
  align_corners: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, size: Sequence[int], *, train: bool) -> jax.Array:
    x = resize_bilinear(x, size, align_corners=self.align_corners)
    c, f = x.shape[-1], self.features
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(_conv(f, 5, c, self.dtype, "conv1")(x)))
    branch1 = _batch_norm(train, self.dtype, "bn1_2")(_conv(f, 3, f, self.dtype, "conv1_2")(y))
    branch2 = _batch_norm(train, self.dtype, "bn2")(_conv(f, 5, c, self.dtype, "conv2")(x))
    return nn.relu(branch1 + branch2)


class Decoder(nn.Module):
  """The published `D`: blocks [x_block1..4] -> [n, 2 h1, 2 w1, C4 // 32] (h1, w1: x_block1's size).

  ReLU(bn(conv 1x1(x_block4))) with C4 // 2 channels, then up1..up4 halve the channels each, resizing to
  x_block3's, x_block2's, x_block1's and twice x_block1's size.
  """
  align_corners: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, blocks: Sequence[jax.Array], *, train: bool) -> jax.Array:
    block1, block2, block3, block4 = blocks
    f = block4.shape[-1] // 2
    # torch's Conv2d(..., kernel_size=1) has padding 0; _conv's k // 2 is 0 too.
    x = nn.relu(_batch_norm(train, self.dtype, "bn")(_conv(f, 1, block4.shape[-1], self.dtype, "conv")(block4)))
    sizes = [block3.shape[1:3], block2.shape[1:3], block1.shape[1:3], (2 * block1.shape[1], 2 * block1.shape[2])]
    for i, size in enumerate(sizes, 1):
      f //= 2
      x = UpProjection(f, self.align_corners, self.dtype, name=f"up{i}")(x, size, train=train)
    return x


class MultiScaleFusion(nn.Module):
  """The published `MFF`: blocks [x_block1..4], size (h, w) -> [n, h, w, 64].

  up1..up4 take each x_block_i to 16 channels at `size`; concatenated in that order, then ReLU(bn(conv 5x5)).
  """
  align_corners: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, blocks: Sequence[jax.Array], size: Sequence[int], *, train: bool) -> jax.Array:
    x = jnp.concatenate([UpProjection(_MFF_BRANCH, self.align_corners, self.dtype, name=f"up{i}")(b, size, train=train)
                         for i, b in enumerate(blocks, 1)], axis=-1)
    c = x.shape[-1]
    return nn.relu(_batch_norm(train, self.dtype, "bn")(_conv(c, 5, c, self.dtype, "conv")(x)))


class Refinement(nn.Module):
  """The published `R`: x [n, h, w, c] -> (out [n, h, w, num_outputs], features [n, h, w, feature_dim or c]).

  conv0 5x5 (c -> c) + bn0 + ReLU, conv1 5x5 (-> feature_dim, default c) + bn1 + ReLU = features (the map
  FDS smooths and L_ot regularises), conv2 5x5 with bias (-> num_outputs) = out, in float32 at least.
  """
  num_outputs: int = 1
  feature_dim: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    c = x.shape[-1]
    f = c if self.feature_dim is None else self.feature_dim
    x = nn.relu(_batch_norm(train, self.dtype, "bn0")(_conv(c, 5, c, self.dtype, "conv0")(x)))
    features = nn.relu(_batch_norm(train, self.dtype, "bn1")(_conv(f, 5, c, self.dtype, "conv1")(x)))
    out = _conv(self.num_outputs, 5, f, self.dtype, "conv2", bias=True)(features)
    return out.astype(jnp.promote_types(out.dtype, jnp.float32)), features


class DepthNet(nn.Module):
  """Hu et al.'s network as NYUD2-DIR trains it: images [n, H, W, 3] -> (pred [n, h, w, M, 1], features).

  Attributes:
    num_targets: M, copies of the depth the final conv predicts (MT; 1 = the published net).
    width: the encoder's base width (64 = ResNet-50; smaller for tests). D's widths follow the encoder's
      last stage C4; MFF's (16 per branch, 64 fused) do not, as published.
    depth: encoder depth in resnet.DEPTHS (50 published; 10/18 for tests).
    feature_dim: width of the last hidden layer (R.conv1's output, `features`); None = published
      (64 + C4 // 32: 128 for ResNet-50 at width 64). Set, it only changes R.conv1 and R.conv2.
    align_corners: the bilinear resizes' convention; False = the DIR code on torch >= 0.4 (module docstring).
    dtype: compute dtype (e.g. jnp.bfloat16); params and batch stats stay float32, pred is float32.

  `__call__(x, *, train)`: NHWC images; `train` uses batch statistics and needs `mutable=["batch_stats"]`.
  Returns pred [n, h, w, M, 1] and features [n, h, w, C] (compute dtype), (h, w) = output_size(H, W).
  """
  num_targets: int = 1
  width: int = 64
  depth: int = 50
  feature_dim: int | None = None
  align_corners: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    if x.ndim != 4:
      raise ValueError(f"DepthNet expects NHWC images [n, H, W, c], got shape {x.shape}.")
    if self.depth not in DEPTHS:
      raise ValueError(f"Unknown encoder depth {self.depth}; valid depths: {', '.join(map(str, DEPTHS))}.")
    stage_sizes, bottleneck = DEPTHS[self.depth]
    last = 8 * self.width * (4 if bottleneck else 1)
    if last // 32 < 1:
      raise ValueError(f"The encoder's last stage has {last} channels (depth {self.depth}, width {self.width}); "
                       "D halves them five times and needs >= 32.")
    if self.num_targets < 1 or (self.feature_dim is not None and self.feature_dim < 1):
      raise ValueError(f"num_targets and feature_dim must be >= 1, got {self.num_targets} and {self.feature_dim}.")
    encoder = ResNet(stage_sizes=stage_sizes, bottleneck=bottleneck, width=self.width, dtype=self.dtype, name="E")
    _, blocks = encoder(x, train=train, return_stages=True)  # the pooled features are unused (and dropped by XLA)
    decoded = Decoder(self.align_corners, self.dtype, name="D")(blocks, train=train)
    fused = MultiScaleFusion(self.align_corners, self.dtype, name="MFF")(blocks, decoded.shape[1:3], train=train)
    out, features = Refinement(self.num_targets, self.feature_dim, self.dtype, name="R")(
        jnp.concatenate([decoded, fused], axis=-1), train=train)
    return out[..., None], features


# ---------------------------------------------------------------------------------------------------- loading


@functools.cache
def _variable_shapes(num_targets: int, depth: int, width: int, feature_dim: int | None) -> dict:
  """Flattened {path tuple: ShapeDtypeStruct} of DepthNet's variables, the encoder's left out (traced only)."""
  model = DepthNet(num_targets=num_targets, width=width, depth=depth, feature_dim=feature_dim)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  return {path: s for path, s in traverse_util.flatten_dict(shapes).items() if path[1] != "E"}


def _ignored(key: str) -> bool:
  # FDS's buffers (R.FDS.running_mean, ...; models trained with --fds) are training-time feature statistics
  # that no forward at evaluation reads; BN's step counters are unused with momentum set.
  return key.startswith("R.FDS.") or key.endswith(".num_batches_tracked")


def load_torch_state_dict(state_dict: Mapping[str, Any], *, num_targets: int = 1, depth: int = 50, width: int = 64,
                          feature_dim: int | None = None) -> dict:
  """The published torch model's state dict -> {"params", "batch_stats"} for `DepthNet(...)` of these fields.

  Args:
    state_dict: the published key names (`E.conv1.weight`, `E.layer1.0.bn1.running_var`, `D.conv.weight`,
      `D.up1.conv1_2.weight`, `MFF.up4.bn2.bias`, `R.conv2.bias`, ...) -> numpy arrays or torch tensors,
      e.g. `torch.load(checkpoint)["state_dict"]`. A `module.` prefix on every key (train.py saves the
      DataParallel wrapper's state dict) is dropped. `*.num_batches_tracked` and FDS's `R.FDS.*` buffers
      are ignored.
    num_targets, depth, width, feature_dim: as in `DepthNet` (R.conv2 has num_targets outputs).

  Returns:
    The variables tree of `DepthNet(num_targets, width, depth, feature_dim).init(...)`, float32 leaves:
    conv weights OIHW -> HWIO, BN weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var.
    The encoder (`E.*`) goes through resnet.load_torchvision, the rest through resnet.convert_torch_state_dict.

  Raises:
    ValueError: shape mismatches, missing keys or unexpected keys, counted and the first 20 named with
      both shapes; the encoder's are listed after them, as load_torchvision reports them.
  """
  if state_dict and all(key.startswith("module.") for key in state_dict):
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
  description = f"DepthNet(num_targets={num_targets}, width={width}, depth={depth}, feature_dim={feature_dim})"
  if depth not in DEPTHS:
    raise ValueError(f"Unknown encoder depth {depth}; valid depths: {', '.join(map(str, DEPTHS))}.")
  # D, MFF and R's flax modules carry the torch names unchanged (`conv1_2` is no index, unlike resnet.py's
  # `layer1_0`): joined with '.' they are the torch module names.
  variables, report = convert_torch_state_dict(state_dict, _variable_shapes(num_targets, depth, width, feature_dim),
                                               ".".join, ignore=lambda key: key.startswith("E.") or _ignored(key))
  encoder_error = None
  try:
    encoder = load_torchvision(state_dict, depth=depth, width=width, prefix="E.")
  except ValueError as error:
    encoder_error = error
  if variables is None or encoder_error is not None:
    raise ValueError(f"state dict does not fit {description}: D, MFF, R: {report}"
                     + ("" if encoder_error is None else f"; E (the encoder): {encoder_error}"))
  for collection in ("params", "batch_stats"):
    variables[collection] = {"E": encoder[collection], **variables[collection]}
  return variables


def _encoder_layout(variables: Mapping) -> tuple[int, int]:
  """(depth, width) of the encoder in DepthNet `variables`, read from its params' names and shapes."""
  try:
    encoder = variables["params"]["E"]
    width = encoder["conv1"]["kernel"].shape[-1]
    stage_sizes = tuple(sum(1 for name in encoder if re.fullmatch(rf"layer{i}_\d+", name)) for i in range(1, 5))
    bottleneck = "conv3" in encoder["layer1_0"]
  except (KeyError, TypeError) as error:
    raise ValueError(f"variables hold no DepthNet encoder (params['E'] with conv1 and layer1_0): {error!r}") from None
  for depth, layout in DEPTHS.items():
    if layout == (stage_sizes, bottleneck):
      return depth, width
  raise ValueError(f"The encoder in variables has stages {stage_sizes} (bottleneck: {bottleneck}), no known depth.")


def encoder_from_torchvision(source: str | os.PathLike | Mapping[str, Any], variables: Mapping) -> dict:
  """DepthNet `variables` with the encoder replaced by a torchvision ResNet's weights (e.g. ImageNet).

  Args:
    source: a torchvision resnet{depth} state dict (`conv1.weight`, `layer1.0.bn1.running_var`, ...; `fc.*`
      ignored), or a local `.pth`/`.pt`/`.npz` file of one, as resnet.load_torchvision_file reads it.
      Nothing is downloaded.
    variables: DepthNet variables ({"params", "batch_stats"}, e.g. fresh from `init`); the encoder's depth
      and width are read from them. Not modified.

  Returns:
    A new variables dict: params/batch_stats["E"] from `source`, everything else as in `variables`.

  Raises:
    ValueError: variables without a DepthNet encoder, or a state dict that does not fit it (load_torchvision's
      message: keys and shapes). FileNotFoundError / ImportError: as resnet.load_torchvision_file.
  """
  depth, width = _encoder_layout(variables)
  if "batch_stats" not in variables:
    raise ValueError("variables have no 'batch_stats' collection; pass DepthNet's full variables from init.")
  if isinstance(source, Mapping):
    encoder = load_torchvision(source, depth=depth, width=width)
  else:
    encoder = load_torchvision_file(source, depth=depth, width=width)
  result = flax.core.unfreeze(variables)  # copies the dicts (not the arrays), so `variables` stays as it was
  for collection in ("params", "batch_stats"):
    result[collection]["E"] = encoder[collection]
  return result
