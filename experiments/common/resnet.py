"""ResNet encoders in Flax Linen, architecturally identical to torchvision's, so its weights load and agree.

The encoder of the AgeDB-DIR experiment (ResNet-50 from scratch: 2048-d features -> a linear head kept
elsewhere) and of the depth-estimation encoder-decoder (`return_stages=True` gives each stage's map).
It is torchvision's ResNet v1.5 without the classifier: stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool),
four stages of basic blocks (ResNet-10/18/34) or bottlenecks (ResNet-50/101/152) whose first block
downsamples (the stride sits in the bottleneck's 3x3 conv; the shortcut is a strided 1x1 conv + BN
whenever the shape changes), then global average pooling. No conv has a bias; BN has momentum 0.9
(torch's 0.1 counted the other way) and epsilon 1e-5; convs start from torchvision's kaiming-normal
(fan_out) init, BN from scale 1, bias 0.

Padding pitfall: every conv and the max-pool use torch's explicit symmetric padding (7x7: 3, 3x3: 1,
1x1: 0; max-pool: 1, padded with -inf). Flax's 'SAME' is not the same thing: for a stride-2 layer on an
even input it pads (k//2 - 1, k//2), shifting every sampled window by one pixel, so torchvision weights
would give different features. 'SAME' is never used here. Output sizes follow torch's formula
floor((H + 2p - k) / s) + 1, for odd and even inputs alike.

Shapes, for x [n, H, W, c] (NHWC; c = 3 for torchvision weights) and base width w (64 = torchvision);
every stride-2 layer maps a size h to ceil(h / 2), for odd and even h, so with ⌈·⌉ rounding up:
  stem (conv1, max-pool) -> [n, ⌈H/4⌉, ⌈W/4⌉, w]       (not returned)
  stage1 (layer1)        -> [n, ⌈H/4⌉, ⌈W/4⌉, w * e]   e = 1 (basic blocks) or 4 (bottlenecks)
  stage2 (layer2)        -> [n, ⌈H/8⌉, ⌈W/8⌉, 2w * e]
  stage3 (layer3)        -> [n, ⌈H/16⌉, ⌈W/16⌉, 4w * e]
  stage4 (layer4)        -> [n, ⌈H/32⌉, ⌈W/32⌉, 8w * e]
  features               -> [n, 8w * e]               2048 for ResNet-50, 512 for ResNet-18 at w = 64

Loading torchvision weights (nothing is downloaded; bring the file):
  model = resnet(50)
  variables = load_torchvision_file("resnet50-11ad3fa6.pth", depth=50)    # or load_torchvision(state_dict, ...)
  features = model.apply(variables, images_nhwc, train=False)              # images normalised as torchvision's
Flax submodules carry torchvision's names with '.' + index written '_' + index: `conv1`, `bn1`,
`layer1_0/conv1`, `layer1_0/bn1`, ..., `layer2_0/downsample_0` (the 1x1 conv), `layer2_0/downsample_1`
(its BN). Conv weights go OIHW -> HWIO (`.transpose(2, 3, 1, 0)`); BN weight/bias -> params scale/bias;
running_mean/running_var -> batch_stats mean/var; `num_batches_tracked` and `fc.*` are ignored.
`load_torchvision(..., prefix="E.")` reads a ResNet held in a larger state dict under `E.`;
`convert_torch_state_dict` is the conversion itself, for other networks of convs and BN named as in torch.

One difference remains in training mode: torch updates running_var with the unbiased batch variance,
flax with the biased one (a factor m/(m-1), m = n*H*W values per channel); forward outputs and
running means agree.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = ["DEPTHS", "BasicBlock", "Bottleneck", "ResNet", "convert_torch_state_dict", "load_torchvision",
           "load_torchvision_file", "resnet"]

# depth -> (blocks per stage, bottleneck); 10 is not in torchvision: one basic block per stage, for tests.
DEPTHS: dict[int, tuple[tuple[int, ...], bool]] = {
    10: ((1, 1, 1, 1), False),
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}

# torchvision: nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal with
# variance 2 / (out_channels * kh * kw).
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """torch's Conv2d(kernel, stride, padding=kernel // 2, bias=False): explicit symmetric padding."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, kernel_init=_KAIMING_FAN_OUT, dtype=dtype, param_dtype=jnp.float32, name=name)


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  # momentum 0.9 here is torch's momentum=0.1: running = 0.9 * running + 0.1 * batch. The batch variance
  # in two passes, as torch: flax's default E[x^2] - E[x]^2 cancels digits when |mean| >> std (ReLU
  # outputs, few values per channel in late stages).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, use_fast_variance=False, name=name)


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: [n, H, W, c] -> [n, H', W', planes] (H' = floor((H - 1) / stride) + 1).

  conv1 3x3/stride, bn1, ReLU, conv2 3x3, bn2, + shortcut (downsample_0 1x1/stride conv + downsample_1
  BN when `downsample`), ReLU.
  """
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(_conv(self.planes, 3, self.stride, self.dtype, "conv1")(x)))
    y = _batch_norm(train, self.dtype, "bn2")(_conv(self.planes, 3, 1, self.dtype, "conv2")(y))
    return nn.relu(y + _shortcut(self, x, train))


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5): [n, H, W, c] -> [n, H', W', 4 * planes].

  conv1 1x1, bn1, ReLU, conv2 3x3/stride (the stride is here, not in conv1: v1.5), bn2, ReLU,
  conv3 1x1 to 4 * planes, bn3, + shortcut (downsample_0/_1 as in `BasicBlock`), ReLU.
  """
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(_conv(self.planes, 1, 1, self.dtype, "conv1")(x)))
    y = nn.relu(_batch_norm(train, self.dtype, "bn2")(_conv(self.planes, 3, self.stride, self.dtype, "conv2")(y)))
    y = _batch_norm(train, self.dtype, "bn3")(_conv(self.planes * 4, 1, 1, self.dtype, "conv3")(y))
    return nn.relu(y + _shortcut(self, x, train))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, train: bool) -> jax.Array:
  if not block.downsample:
    return x
  out = _conv(block.planes * block.expansion, 1, block.stride, block.dtype, "downsample_0")(x)
  return _batch_norm(train, block.dtype, "downsample_1")(out)


class ResNet(nn.Module):
  """torchvision's ResNet without its classifier: images [n, H, W, c] -> features [n, 8 * width * e].

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50; stage i (from 1) is `layer{i}`.
    bottleneck: bottleneck blocks (e = 4; ResNet-50 and deeper) or basic blocks (e = 1).
    width: base channels, 64 as torchvision; stage i has width * 2^(i-1) planes. Smaller widths make
      small nets for tests (torchvision's key layout, other shapes).
    dtype: compute dtype (e.g. jnp.bfloat16); params and batch stats stay float32.

  `__call__(x, train=..., return_stages=False)`: x NHWC float; `train` uses batch statistics and needs
  `mutable=["batch_stats"]` in `apply`; eval uses the running ones. Returns features [n, C], averaged in
  at least float32 (in float32 for a bfloat16 `dtype`), or `(features, [stage1, ..., stage4])` with
  `return_stages=True`, the NHWC maps after each stage in the compute dtype (shapes in the module
  docstring).
  """
  stage_sizes: Sequence[int]
  bottleneck: bool
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               return_stages: bool = False) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC images [n, H, W, c], got shape {x.shape}.")
    if not self.stage_sizes or min(self.stage_sizes) < 1 or self.width < 1:
      raise ValueError(f"stage_sizes must be non-empty with blocks >= 1 and width >= 1, got "
                       f"{tuple(self.stage_sizes)} and {self.width}.")
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(_conv(self.width, 7, 2, self.dtype, "conv1")(x)))
    # torch's MaxPool2d(3, 2, padding=1): reduce_window pads with max's identity, -inf, as torch does.
    y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = Bottleneck if self.bottleneck else BasicBlock
    in_channels = self.width
    stages = []
    for i, num_blocks in enumerate(self.stage_sizes):
      planes = self.width * 2**i
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        downsample = j == 0 and (stride != 1 or in_channels != planes * block_cls.expansion)
        y = block_cls(planes, stride, downsample, self.dtype, name=f"layer{i + 1}_{j}")(y, train=train)
        in_channels = planes * block_cls.expansion
      stages.append(y)
    # Average over H*W values in at least float32: a bfloat16 sum of 49+ terms loses digits.
    features = jnp.mean(y.astype(jnp.promote_types(self.dtype, jnp.float32)), axis=(1, 2))
    return (features, stages) if return_stages else features


def resnet(depth: int, *, width: int = 64, dtype: Any = jnp.float32) -> ResNet:
  """torchvision's resnet{depth} (no fc) for depth in DEPTHS (10 = one basic block per stage, for tests)."""
  if depth not in DEPTHS:
    raise ValueError(f"Unknown ResNet depth {depth}; valid depths: {', '.join(map(str, DEPTHS))}.")
  stage_sizes, bottleneck = DEPTHS[depth]
  return ResNet(stage_sizes=stage_sizes, bottleneck=bottleneck, width=width, dtype=dtype)


@functools.cache
def _variable_shapes(depth: int, width: int) -> dict:
  """Flattened {path tuple: ShapeDtypeStruct} of resnet(depth, width).init's variables (traced, no FLOPs)."""
  model = resnet(depth, width=width)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return traverse_util.flatten_dict(shapes)


# (collection, flax leaf) -> torch's parameter or buffer name, as torch's Conv2d and BatchNorm2d name them.
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; .float() as numpy has no bfloat16
    value = value.detach().cpu().float()
  return np.asarray(value)


def _natural_order(key: str) -> list:
  """Sort key comparing the numbers in `key` as numbers: layer3.9 before layer3.10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def convert_torch_state_dict(state_dict: Mapping[str, Any], expected: Mapping[tuple[str, ...], Any],
                             module_name: Callable[[tuple[str, ...]], str], *,
                             ignore: Callable[[str], bool] = lambda key: False) -> tuple[dict | None, str]:
  """A torch state dict -> the flax variables whose paths and shapes `expected` lists, and a report.

  The conversion behind `load_torchvision` and nyud2_dir's `load_torch_state_dict`: any network of 2-d convs
  and BN whose flax modules mirror the torch ones.

  Args:
    state_dict: torch key -> numpy array or torch tensor.
    expected: flattened flax variables {(collection, *modules, leaf): anything with `.shape`}, e.g.
      `traverse_util.flatten_dict(jax.eval_shape(model.init, ...))`, with params leaves kernel (a 2-d conv's
      HWIO weight), scale, bias and batch_stats leaves mean, var.
    module_name: the flax module path (`path[1:-1]`) -> the torch module's name; its keys are that name,
      '.' and torch's leaf name (weight, bias, running_mean, running_var).
    ignore: state-dict keys that are neither loaded nor unexpected (BN's step counters, a classifier, ...).

  Returns:
    (variables, report). variables: the unflattened {"params", "batch_stats"} tree of float32 copies (conv
    kernels OIHW -> HWIO), or None where anything does not fit. report: "N shape mismatches, M missing keys,
    K unexpected keys", where N + M + K > 0 followed by ": " and the first 20 of them named with both shapes
    (mismatches, missing keys, each in torch-key order with numbers as numbers; unexpected keys).
  """
  missing, mismatched, used, flat = [], [], set(), {}
  by_key = {f"{module_name(path[1:-1])}.{_LEAF_NAMES[path[0], path[-1]]}": path for path in expected}
  for key in sorted(by_key, key=_natural_order):  # torch-key order: readable errors
    path = by_key[key]
    is_kernel = path[-1] == "kernel"
    # torch's layout of the expected shape: HWIO -> OIHW for conv weights.
    torch_shape = tuple(expected[path].shape[i] for i in (3, 2, 0, 1)) if is_kernel else tuple(expected[path].shape)
    if key not in state_dict:
      missing.append(f"missing key {key!r} (expected shape {torch_shape})")
      continue
    used.add(key)
    shape = tuple(np.shape(state_dict[key]))
    if shape != torch_shape:
      mismatched.append(f"shape mismatch for {key!r}: state dict has {shape}, expected {torch_shape}")
      continue
    array = _to_numpy(state_dict[key])
    # A copy: on CPU jnp.asarray can alias a NumPy buffer, itself torch's; a later in-place update of
    # the state dict (an optimizer step, BN running stats in train mode) would change the loaded variables.
    array = np.array(array.transpose(2, 3, 1, 0) if is_kernel else array, dtype=np.float32, copy=True)
    flat[path] = jnp.asarray(array)
  unexpected = [f"unexpected key {key!r} with shape {tuple(np.shape(state_dict[key]))}"
                for key in state_dict if key not in used and not ignore(key)]
  problems = mismatched + missing + unexpected
  report = f"{len(mismatched)} shape mismatches, {len(missing)} missing keys, {len(unexpected)} unexpected keys"
  if not problems:
    return traverse_util.unflatten_dict(flat), report
  shown = "; ".join(problems[:20]) + (f"; ... and {len(problems) - 20} more" if len(problems) > 20 else "")
  return None, f"{report}: {shown}"


def _torchvision_name(prefix: str, modules: tuple[str, ...]) -> str:
  """(prefix, ("layer2_0", "downsample_0")) -> prefix + "layer2.0.downsample.0"."""
  return prefix + ".".join(re.sub(r"_(\d+)$", r".\1", name) for name in modules)


def _ignored(key: str) -> bool:
  return key.startswith("fc.") or key.endswith(".num_batches_tracked")


def load_torchvision(state_dict: Mapping[str, Any], *, depth: int, width: int = 64, prefix: str = "") -> dict:
  """torchvision resnet{depth} state dict -> {"params", "batch_stats"} for `resnet(depth, width=width)`.

  Args:
    state_dict: torchvision key names (`conv1.weight`, `layer1.0.bn1.running_var`, ...) -> numpy
      arrays or torch tensors. `fc.*` and `*.num_batches_tracked` are ignored.
    depth, width: as in `resnet`.
    prefix: the ResNet's keys are these names behind `prefix` (e.g. "E." for a network's encoder `E`); keys
      without it are ignored, and the errors name keys with it.

  Returns:
    The variables tree of `resnet(depth, width=width).init(...)`, every leaf float32: conv weights
    OIHW -> HWIO, BN weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var.

  Raises:
    ValueError: shape mismatches, missing keys or unexpected keys: counted, the first 20 named with
      both shapes (a wrong `depth` or `width` shows as many of them).
  """
  resnet(depth, width=width)  # raises on an unknown depth, listing the valid ones
  variables, report = convert_torch_state_dict(
      state_dict, _variable_shapes(depth, width), functools.partial(_torchvision_name, prefix),
      ignore=lambda key: not key.startswith(prefix) or _ignored(key.removeprefix(prefix)))
  if variables is None:
    raise ValueError(f"state dict does not fit resnet({depth}, width={width}): {report}")
  return variables


def load_torchvision_file(path: str | os.PathLike, *, depth: int, width: int = 64) -> dict:
  """`load_torchvision` of a local file: `.pth`/`.pt` (torch.load, weights only; needs torch) or `.npz`
  (numpy arrays under torchvision's key names). Nothing is downloaded.

  Raises:
    FileNotFoundError: no such file. ImportError: a torch file without torch installed.
    ValueError: another suffix, a file that holds no state dict, or a state dict that does not fit.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No weights file {path!r} (nothing is downloaded; fetch it first).")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      state_dict = {key: data[key] for key in data.files}
  elif suffix in (".pth", ".pt"):
    try:
      import torch
    except ImportError as error:
      raise ImportError(f"Reading {path!r} needs PyTorch (pip install torch), or convert it to .npz "
                        "(numpy arrays under torchvision's key names) where torch is installed.") from error
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
  else:
    raise ValueError(f"Unknown weights file type {suffix!r} of {path!r}; expected .pth, .pt or .npz.")
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"{path!r} holds a {type(state_dict).__name__}, not a state dict (a mapping of key -> tensor).")
  return load_torchvision(state_dict, depth=depth, width=width)
