"""The NYUD2-DIR depth network (experiments/nyud2_dir/models.py) against independent references: the
published key layout and its closed-form parameter count (written from YyzHarry/imbalanced-regression's
nyud2-dir/models/{modules,net,resnet}.py), a float64 NumPy bilinear resize with torch's formulas, and
(where torch is installed) a torch re-implementation of the published modules whose state dict is loaded
and compared in eval and train mode."""
from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_resnet import (
  STAGES,
  max_relative_difference,
  one_torch_thread,
  randomize,
  subtree,
  torch_resnet,
  torchvision_layout,
)

from experiments.common.resnet import load_torchvision, resnet
from experiments.nyud2_dir import models
from experiments.nyud2_dir.models import (
  DepthNet,
  encoder_from_torchvision,
  load_torch_state_dict,
  output_size,
  resize_bilinear,
)


def _published_layout(depth: int, width: int, num_targets: int = 1, feature_dim: int | None = None) -> dict:
  """The published `net.model`'s state-dict keys and shapes: E (E_resnet), D, MFF, R, as modules.py builds
  them from num_features = C4 and block_channel = the four stages' widths (MT: R.conv2 has M outputs)."""
  expansion = 4 if STAGES[depth][1] else 1
  block_channel = [width * 2**i * expansion for i in range(4)]
  layout = {f"E.{k}": s for k, s in torchvision_layout(depth, width).items()}

  def bn(name, c):
    layout.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                   f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

  def up_projection(name, c_in, c_out):
    layout[f"{name}.conv1.weight"] = (c_out, c_in, 5, 5)
    bn(f"{name}.bn1", c_out)
    layout[f"{name}.conv1_2.weight"] = (c_out, c_out, 3, 3)
    bn(f"{name}.bn1_2", c_out)
    layout[f"{name}.conv2.weight"] = (c_out, c_in, 5, 5)
    bn(f"{name}.bn2", c_out)

  f = block_channel[3]
  layout["D.conv.weight"] = (f // 2, f, 1, 1)
  f //= 2
  bn("D.bn", f)
  for i in range(1, 5):
    up_projection(f"D.up{i}", f, f // 2)
    f //= 2
  for i in range(1, 5):
    up_projection(f"MFF.up{i}", block_channel[i - 1], 16)
  layout["MFF.conv.weight"] = (64, 64, 5, 5)
  bn("MFF.bn", 64)
  c = 64 + block_channel[3] // 32
  hidden = c if feature_dim is None else feature_dim
  layout["R.conv0.weight"] = (c, c, 5, 5)
  bn("R.bn0", c)
  layout["R.conv1.weight"] = (hidden, c, 5, 5)
  bn("R.bn1", hidden)
  layout["R.conv2.weight"] = (num_targets, hidden, 5, 5)
  layout["R.conv2.bias"] = (num_targets,)
  return layout


def _random_state_dict(layout: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random arrays of `layout`'s shapes: weights N(0, 2 / fan_in) (activations stay O(1)), BN weights and
  running variances in [0.5, 1.5], biases and running means N(0, 0.1); counters 7."""
  rng = np.random.default_rng(seed)

  def draw(key, shape):
    if key.endswith("num_batches_tracked"):
      return np.array(7, np.int64)
    if len(shape) == 4:
      return rng.normal(0, math.sqrt(2 / math.prod(shape[1:])), shape).astype(np.float32)
    if key.endswith("running_var") or (key.endswith(".weight") and ".bn" in key) or "downsample.1.weight" in key:
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return rng.normal(0, 0.1, shape).astype(np.float32)

  return {key: draw(key, shape) for key, shape in layout.items()}


def _variable_shapes(model: DepthNet, hw=(64, 64)) -> dict:
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hw, 3)), train=False))


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _apply(model, variables, x, **kwargs):
  """model.apply under jit: one XLA compile costs less on CPU than eager mode's compile per op and shape."""
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


# ------------------------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize(("depth", "width", "num_targets", "feature_dim", "hw", "out_hw", "channels"), [
    (10, 8, 1, None, (57, 76), (30, 38), 64 + 64 // 32),
    (18, 8, 8, 3, (114, 152), (58, 76), 3),
    (50, 4, 2, None, (61, 33), (32, 18), 64 + 128 // 32),
])
def test_output_shapes(depth, width, num_targets, feature_dim, hw, out_hw, channels):
  model = DepthNet(num_targets=num_targets, width=width, depth=depth, feature_dim=feature_dim)
  shapes = _variable_shapes(model, hw)
  pred, features = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *hw, 3)), train=False), shapes)
  assert output_size(*hw) == out_hw
  assert pred.shape == (2, *out_hw, num_targets, 1) and pred.dtype == jnp.float32
  assert features.shape == (2, *out_hw, channels) and features.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params_and_pred():
  model = DepthNet(width=8, depth=10, dtype=jnp.bfloat16)
  shapes = _variable_shapes(model)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  pred, features = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 64, 64, 3)), train=False), shapes)
  assert pred.dtype == jnp.float32 and features.dtype == jnp.bfloat16


def test_rejects_bad_fields_and_inputs():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match=r"Unknown encoder depth 11; valid depths: 10, 18"):
    _variable_shapes(DepthNet(depth=11))
  with pytest.raises(ValueError, match=r"last stage has 24 channels \(depth 10, width 3\).*needs >= 32"):
    _variable_shapes(DepthNet(depth=10, width=3))
  with pytest.raises(ValueError, match=r"num_targets and feature_dim must be >= 1, got 0 and None"):
    _variable_shapes(DepthNet(depth=10, width=8, num_targets=0))
  with pytest.raises(ValueError, match=r"NHWC images \[n, H, W, c\], got shape \(32, 32, 3\)"):
    jax.eval_shape(lambda: DepthNet(depth=10, width=8).init(jax.random.key(0), x[0], train=False))


@pytest.mark.parametrize("align_corners", [False, True])
def test_every_resize_uses_the_networks_convention(align_corners, monkeypatch):
  calls = []

  def recording_resize(x, size, *, align_corners):
    calls.append((tuple(x.shape[1:3]), tuple(size), align_corners))
    return resize_bilinear(x, size, align_corners=align_corners)  # the original: imported above

  monkeypatch.setattr(models, "resize_bilinear", recording_resize)
  model = DepthNet(width=8, depth=10, align_corners=align_corners)
  jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 57, 76, 3)), train=False))
  # D: block4 -> block3 -> block2 -> block1 -> 2x block1; MFF: each block -> 2x block1 (block1 is 15x19).
  assert calls == [((2, 3), (4, 5), align_corners), ((4, 5), (8, 10), align_corners),
                   ((8, 10), (15, 19), align_corners), ((15, 19), (30, 38), align_corners),
                   ((15, 19), (30, 38), align_corners), ((8, 10), (30, 38), align_corners),
                   ((4, 5), (30, 38), align_corners), ((2, 3), (30, 38), align_corners)]


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_the_published_model_its_parameter_count_and_output_size():
  # The published layout (ResNet-50, width 64) loads; 67,569,473 parameters by hand from modules.py: encoder
  # 23,508,032 (torchvision's ResNet-50 without fc); _UpProjection(i, o) holds 50 i o + 9 o^2 + 6 o;
  # D = 2048 * 1024 + 2 * 1024 + UP(1024, 512) + UP(512, 256) + UP(256, 128) + UP(128, 64) = 40,054,400;
  # MFF = sum UP(c_i, 16) + 64 * 64 * 25 + 128 = 3,184,128; R = 2 * (128 * 128 * 25 + 256) + 128 * 25 + 1 = 822,913.
  layout = _published_layout(50, 64)
  variables = load_torch_state_dict({k: np.zeros(s, np.float32) for k, s in layout.items()})
  trainable = sum(math.prod(s) for k, s in layout.items() if k.endswith((".weight", ".bias")))
  assert _count(variables["params"]) == trainable == 67_569_473
  assert _count(variables["params"]["E"]) == 23_508_032
  assert _count(variables["batch_stats"]) == sum(math.prod(s) for k, s in layout.items() if ".running_" in k)
  # The published 228x304 crops give 114x152 maps (the train depth's size) and 128 features per pixel.
  pred, features = jax.eval_shape(lambda v: DepthNet().apply(v, jnp.zeros((2, 228, 304, 3)), train=False), variables)
  assert output_size(228, 304) == (114, 152)
  assert pred.shape == (2, 114, 152, 1, 1) and features.shape == (2, 114, 152, 128)


# ----------------------------------------------------------------------------------------------- resizing


def _reference_resize(x: np.ndarray, size, align_corners: bool) -> np.ndarray:
  """float64 bilinear resize of NHWC x, output pixel by output pixel, from torch's formulas (UpSample.h)."""
  n, in_h, in_w, c = x.shape
  out_h, out_w = size

  def source(d, in_size, out_size):
    if align_corners:
      s = d * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    else:
      s = max((d + 0.5) * in_size / out_size - 0.5, 0.0)
    i0 = min(math.floor(s), in_size - 1)
    return i0, min(i0 + 1, in_size - 1), s - i0

  out = np.zeros((n, out_h, out_w, c))
  for i in range(out_h):
    h0, h1, a = source(i, in_h, out_h)
    for j in range(out_w):
      w0, w1, b = source(j, in_w, out_w)
      out[:, i, j] = ((1 - a) * ((1 - b) * x[:, h0, w0] + b * x[:, h0, w1])
                      + a * ((1 - b) * x[:, h1, w0] + b * x[:, h1, w1]))
  return out


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("in_hw", "out_hw"), [((2, 3), (4, 5)), ((8, 10), (15, 19)), ((57, 76), (114, 152)),
                                                ((7, 5), (3, 2)), ((4, 4), (1, 1)), ((1, 3), (5, 7)), ((5, 6), (5, 9))])
def test_resize_bilinear_matches_torchs_formulas(in_hw, out_hw, align_corners):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  got = resize_bilinear(jnp.asarray(x), out_hw, align_corners=align_corners)
  assert got.shape == (2, *out_hw, 3) and got.dtype == jnp.float32
  # torch (and resize_bilinear) compute source coordinates in float32: the blend weights are off by up to
  # ~ulp(in_size), ~1e-5 of a neighbour difference here. A convention error would be O(0.1).
  np.testing.assert_allclose(got, _reference_resize(x.astype(np.float64), out_hw, align_corners), rtol=0, atol=2e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bilinear_in_float64_is_the_reference(align_corners, x64):
  # float64 inputs get float64 coordinates (torch's double path): the NumPy reference to rounding.
  x = np.random.default_rng(0).normal(size=(2, 57, 76, 3))
  got = resize_bilinear(jnp.asarray(x), (114, 152), align_corners=align_corners)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, _reference_resize(x, (114, 152), align_corners), rtol=0, atol=1e-13)


def test_resize_bilinear_corner_conventions_and_identity():
  x = jnp.arange(2 * 3, dtype=jnp.float32).reshape(1, 2, 3, 1)
  corners = resize_bilinear(x, (5, 7), align_corners=True)[0, :, :, 0]
  np.testing.assert_array_equal(corners[[0, 0, -1, -1], [0, -1, 0, -1]], [0, 2, 3, 5])
  # Half-pixel centres: a 2x upsampling of [0, 1] is [0, 0.25, 0.75, 1] (edges clamped).
  np.testing.assert_allclose(resize_bilinear(jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1), (1, 4))[0, 0, :, 0],
                             [0, 0.25, 0.75, 1])
  assert resize_bilinear(x, (2, 3)) is x
  bf16 = resize_bilinear(x.astype(jnp.bfloat16), (4, 6))
  assert bf16.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=r"two positive ints"):
    resize_bilinear(x, (0, 3))
  with pytest.raises(ValueError, match=r"NHWC"):
    resize_bilinear(x[0], (4, 6))


def test_align_corners_false_upsampling_is_jax_image_resize():
  # The published convention (align_corners=False) is jax.image.resize's half-pixel one when enlarging;
  # jax.image.resize has no align_corners=True (test.py's evaluation upsampling) and antialiases when shrinking.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 10, 3)), jnp.float32)
  np.testing.assert_allclose(resize_bilinear(x, (15, 19)), jax.image.resize(x, (2, 15, 19, 3), "bilinear"),
                             rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------------------------------- loader


def test_load_torch_state_dict_maps_names_and_layouts():
  layout = _published_layout(10, 8, num_targets=3, feature_dim=5)
  state_dict = _random_state_dict(layout)
  variables = load_torch_state_dict(state_dict, num_targets=3, depth=10, width=8, feature_dim=5)
  shapes = _variable_shapes(DepthNet(num_targets=3, width=8, depth=10, feature_dim=5))
  assert jax.tree.structure(variables) == jax.tree.structure(shapes)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
  assert _count(variables) == sum(math.prod(s) for k, s in layout.items() if not k.endswith("num_batches_tracked"))
  params, stats = variables["params"], variables["batch_stats"]
  for name in ("E.conv1", "E.layer2.0.downsample.0", "D.conv", "D.up1.conv1_2", "D.up4.conv2", "MFF.up3.conv1",
               "MFF.conv", "R.conv0", "R.conv1", "R.conv2"):
    np.testing.assert_array_equal(subtree(params, name)["kernel"],
                                  state_dict[f"{name}.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["R"]["conv2"]["bias"], state_dict["R.conv2.bias"])
  for name in ("E.bn1", "E.layer4.0.downsample.1", "D.bn", "D.up2.bn1_2", "MFF.up4.bn2", "MFF.bn", "R.bn0", "R.bn1"):
    p, s = subtree(params, name), subtree(stats, name)
    np.testing.assert_array_equal(p["scale"], state_dict[f"{name}.weight"])
    np.testing.assert_array_equal(p["bias"], state_dict[f"{name}.bias"])
    np.testing.assert_array_equal(s["mean"], state_dict[f"{name}.running_mean"])
    np.testing.assert_array_equal(s["var"], state_dict[f"{name}.running_var"])
  # train.py's checkpoints hold the DataParallel wrapper's keys ("module.E.conv1.weight"); FDS runs add R.FDS.*.
  wrapped = {f"module.{k}": v for k, v in state_dict.items()}
  wrapped["module.R.FDS.running_mean"] = np.zeros((93, 5), np.float32)
  jax.tree.map(np.testing.assert_array_equal, load_torch_state_dict(wrapped, num_targets=3, depth=10, width=8,
                                                                     feature_dim=5), variables)


def test_load_torch_state_dict_errors_name_the_keys():
  good = _random_state_dict(_published_layout(10, 8))
  kwargs = dict(depth=10, width=8)
  missing = dict(good)
  del missing["D.up2.bn1_2.running_var"]
  with pytest.raises(ValueError, match=r"DepthNet\(num_targets=1, width=8, depth=10, feature_dim=None\): D, MFF, R: "
                                       r"0 shape mismatches, 1 missing keys, 0 unexpected keys: missing key "
                                       r"'D\.up2\.bn1_2\.running_var' \(expected shape \(8,\)\)$"):
    load_torch_state_dict(missing, **kwargs)
  with pytest.raises(ValueError, match=r"unexpected key 'R\.conv3\.weight' with shape \(1, 66, 5, 5\)"):
    load_torch_state_dict({**good, "R.conv3.weight": np.zeros((1, 66, 5, 5))}, **kwargs)
  with pytest.raises(ValueError, match=r"2 shape mismatches.*'R\.conv2\.bias': state dict has \(1,\), expected "
                                       r"\(8,\); shape mismatch for 'R\.conv2\.weight': state dict has "
                                       r"\(1, 66, 5, 5\), expected \(8, 66, 5, 5\)$"):
    load_torch_state_dict(good, num_targets=8, **kwargs)
  # The encoder's problems come from resnet.load_torchvision, after the rest's, named with their full keys.
  no_encoder_key = {k: v for k, v in good.items() if k != "E.layer1.0.conv1.weight"}
  with pytest.raises(ValueError, match=r"0 unexpected keys; E \(the encoder\): state dict does not fit "
                                       r"resnet\(10, width=8\): 0 shape mismatches, 1 missing keys, 0 unexpected "
                                       r"keys: missing key 'E\.layer1\.0\.conv1\.weight' \(expected shape "
                                       r"\(8, 8, 3, 3\)\)$"):
    load_torch_state_dict(no_encoder_key, **kwargs)
  with pytest.raises(ValueError, match=r"unexpected key 'E\.layer1\.0\.conv1\.bias'"):
    load_torch_state_dict({**good, "E.layer1.0.conv1.bias": np.zeros(8)}, **kwargs)
  # A wrong width: every key differs, counted, the first 20 named.
  with pytest.raises(ValueError, match=r"width=16.*D, MFF, R: 84 shape mismatches.*'D\.bn\.bias': state dict has "
                                       r"\(32,\), expected \(64,\).*and 64 more; E .*resnet\(10, width=16\): 60 shape "
                                       r"mismatches.*and 40 more$"):
    load_torch_state_dict(good, depth=10, width=16)
  with pytest.raises(ValueError, match=r"Unknown encoder depth 11"):
    load_torch_state_dict(good, depth=11, width=8)


def _torchvision_state_dict(depth: int, width: int, seed: int) -> dict[str, np.ndarray]:
  return _random_state_dict(torchvision_layout(depth, width, num_classes=10), seed)


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_encoder_from_torchvision_fills_what_the_encoder_reads(tmp_path):
  model = DepthNet(num_targets=2, width=8, depth=10)
  # Stand-in "fresh" variables (random, drawn in NumPy: model.init compiles jax's RNG per shape, seconds on CPU).
  fresh = load_torch_state_dict(_random_state_dict(_published_layout(10, 8, 2), seed=1), num_targets=2, depth=10,
                                width=8)
  before = jax.tree.map(np.array, fresh)
  torchvision = _torchvision_state_dict(10, 8, seed=2)  # with fc.*, as torchvision's files
  variables = encoder_from_torchvision(torchvision, fresh)
  alone = load_torchvision(torchvision, depth=10, width=8)
  for collection in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, variables[collection]["E"], alone[collection])
    for name in ("D", "MFF", "R"):
      jax.tree.map(np.testing.assert_array_equal, variables[collection][name], fresh[collection][name])
  jax.tree.map(np.testing.assert_array_equal, fresh, before)  # the input variables are left alone

  # The network's encoder reads them: its four stage maps are a lone ResNet's with load_torchvision's variables.
  # Only the intermediates are returned: XLA drops D, MFF and R, and compiles in a third of the time.
  x = np.random.default_rng(3).normal(size=(2, 45, 60, 3)).astype(np.float32)
  state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"],
                                           capture_intermediates=lambda module, _: module.name == "E")[1])(variables, x)
  _, stages = state["intermediates"]["E"]["__call__"][0]
  _, expected = _apply(resnet(10, width=8), alone, x, train=False, return_stages=True)
  for stage, reference in zip(stages, expected, strict=True):
    np.testing.assert_allclose(stage, reference, rtol=1e-6, atol=1e-6)  # two XLA programs: fusions may differ

  np.savez(tmp_path / "resnet.npz", **torchvision)
  jax.tree.map(np.testing.assert_array_equal, encoder_from_torchvision(tmp_path / "resnet.npz", fresh), variables)
  # A ResNet-18 for this ResNet-10 encoder: its second blocks are extra keys, named.
  with pytest.raises(ValueError, match=r"resnet\(10, width=8\): 0 shape mismatches, 0 missing keys, 40 unexpected "
                                       r"keys: unexpected key 'layer1\.1\.conv1\.weight' with shape \(8, 8, 3, 3\)"):
    encoder_from_torchvision(_torchvision_state_dict(18, 8, seed=0), fresh)
  with pytest.raises(ValueError, match=r"no DepthNet encoder"):
    encoder_from_torchvision(torchvision, {"params": {}})
  with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
    encoder_from_torchvision(tmp_path / "absent.pth", fresh)


# ------------------------------------------------------------------------------------ torch reference model


@pytest.fixture
def torch_one_thread():
  """torch on one thread for this test (torch_resnet.one_torch_thread); skips without torch."""
  with one_torch_thread() as torch:
    yield torch


def _torch_depth_net(depth: int, width: int, num_targets: int, feature_dim: int | None, seed: int):
  """The published model re-written in torch (modules.py's _UpProjection, E_resnet, D, MFF, R; net.model;
  resnet.py's blocks: torch_resnet.torch_resnet), base width `width`, M = num_targets outputs, R.conv1 ->
  feature_dim channels. forward returns (depth map, R's x1): what R returns in training with FDS. Random
  weights and BN stats."""
  import torch
  from torch import nn as tnn
  from torch.nn import functional as F

  expansion = 4 if STAGES[depth][1] else 1

  class UpProjection(tnn.Module):
    def __init__(self, c_in, c_out):
      super().__init__()
      self.conv1 = tnn.Conv2d(c_in, c_out, 5, 1, 2, bias=False)
      self.bn1 = tnn.BatchNorm2d(c_out)
      self.conv1_2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
      self.bn1_2 = tnn.BatchNorm2d(c_out)
      self.conv2 = tnn.Conv2d(c_in, c_out, 5, 1, 2, bias=False)
      self.bn2 = tnn.BatchNorm2d(c_out)

    def forward(self, x, size):
      # The published F.upsample(x, size=size, mode='bilinear'): align_corners=False on torch >= 0.4
      # (test_torch_upsample_default_is_align_corners_false).
      x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
      x_conv1 = torch.relu(self.bn1(self.conv1(x)))
      return torch.relu(self.bn1_2(self.conv1_2(x_conv1)) + self.bn2(self.conv2(x)))

  class Decoder(tnn.Module):
    def __init__(self, f):
      super().__init__()
      self.conv = tnn.Conv2d(f, f // 2, 1, 1, bias=False)
      self.bn = tnn.BatchNorm2d(f // 2)
      f //= 2
      for i in range(1, 5):
        setattr(self, f"up{i}", UpProjection(f, f // 2))
        f //= 2

    def forward(self, b1, b2, b3, b4):
      x = F.relu(self.bn(self.conv(b4)))
      x = self.up1(x, [b3.size(2), b3.size(3)])
      x = self.up2(x, [b2.size(2), b2.size(3)])
      x = self.up3(x, [b1.size(2), b1.size(3)])
      return self.up4(x, [b1.size(2) * 2, b1.size(3) * 2])

  class MFF(tnn.Module):
    def __init__(self, block_channel):
      super().__init__()
      for i, c in enumerate(block_channel, 1):
        setattr(self, f"up{i}", UpProjection(c, 16))
      self.conv = tnn.Conv2d(64, 64, 5, 1, 2, bias=False)
      self.bn = tnn.BatchNorm2d(64)

    def forward(self, b1, b2, b3, b4, size):
      x = torch.cat((self.up1(b1, size), self.up2(b2, size), self.up3(b3, size), self.up4(b4, size)), 1)
      return F.relu(self.bn(self.conv(x)))

  class R(tnn.Module):
    def __init__(self, block_channel):
      super().__init__()
      c = 64 + block_channel[3] // 32
      hidden = c if feature_dim is None else feature_dim
      self.conv0 = tnn.Conv2d(c, c, 5, 1, 2, bias=False)
      self.bn0 = tnn.BatchNorm2d(c)
      self.conv1 = tnn.Conv2d(c, hidden, 5, 1, 2, bias=False)
      self.bn1 = tnn.BatchNorm2d(hidden)
      self.conv2 = tnn.Conv2d(hidden, num_targets, 5, 1, 2, bias=True)

    def forward(self, x):
      x1 = F.relu(self.bn1(self.conv1(F.relu(self.bn0(self.conv0(x))))))
      return self.conv2(x1), x1

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      block_channel = [width * 2**i * expansion for i in range(4)]
      self.E = torch_resnet(depth, width)  # E_resnet: the ResNet's stem and layer1..4, no fc
      self.D = Decoder(block_channel[3])
      self.MFF = MFF(block_channel)
      self.R = R(block_channel)

    def forward(self, x):
      _, (b1, b2, b3, b4) = self.E(x)  # the pooled features are not E_resnet's
      x_decoder = self.D(b1, b2, b3, b4)
      x_mff = self.MFF(b1, b2, b3, b4, [x_decoder.size(2), x_decoder.size(3)])
      return self.R(torch.cat((x_decoder, x_mff), 1))

  torch.manual_seed(seed)
  # Kaiming fan_in, N(0, 2 / fan_in): activations stay O(1) through D, MFF and R, as with _random_state_dict.
  return randomize(Net(), kaiming_mode="fan_in")


def test_torch_upsample_default_is_align_corners_false(torch_one_thread):
  torch = torch_one_thread
  x = np.random.default_rng(0).normal(size=(2, 3, 8, 10)).astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # F.upsample is deprecated (it is F.interpolate)
    published = torch.nn.functional.upsample(torch.from_numpy(x), size=[15, 19], mode="bilinear")
  for align_corners in (False, True):
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=[15, 19], mode="bilinear",
                                               align_corners=align_corners)
    got = resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), (15, 19), align_corners=align_corners)
    assert max_relative_difference(got, expected) < 1e-6
  np.testing.assert_array_equal(published.numpy(), torch.nn.functional.interpolate(
      torch.from_numpy(x), size=[15, 19], mode="bilinear", align_corners=False).numpy())


# Batch 3 and >= 2x3 maps in layer4: batch statistics over few values per channel are ill-conditioned.
# Each configuration costs ~6 s of XLA compiles on CPU: the bottleneck encoder (resnet.py's, compared with
# torch in test_resnet.py) and a narrowed last layer run with -m slow. That one runs in float64: in float32,
# train mode's ~70 batch normalisations of few values per channel amplify rounding to ~1e-4 (measured with
# widths 4 and 8 and several input sizes), which float64 shows to be rounding alone (1e-13).
@pytest.mark.parametrize(("depth", "width", "num_targets", "feature_dim", "hw", "float64"), [
    (10, 8, 2, None, (57, 76), False),
    pytest.param(50, 4, 3, 5, (50, 70), True, marks=pytest.mark.slow, id="bottleneck-feature_dim-float64"),
    pytest.param(50, 64, 1, None, (228, 304), False, marks=pytest.mark.slow, id="published-size")])
def test_matches_torch_model_loaded_from_its_state_dict(depth, width, num_targets, feature_dim, hw, float64,
                                                        torch_one_thread):
  torch = torch_one_thread
  net = _torch_depth_net(depth, width, num_targets, feature_dim, seed=depth)
  batch = 1 if width == 64 else 3
  x = np.random.default_rng(7).normal(size=(batch, 3, *hw)).astype(np.float64 if float64 else np.float32)  # NCHW
  state_dict = net.state_dict()
  assert {k: tuple(v.shape) for k, v in state_dict.items()} == _published_layout(depth, width, num_targets,
                                                                                 feature_dim)
  variables = load_torch_state_dict(state_dict, num_targets=num_targets, depth=depth, width=width,
                                    feature_dim=feature_dim)
  with jax.enable_x64(float64):
    if float64:
      net = net.double()
      variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    model = DepthNet(num_targets=num_targets, width=width, depth=depth, feature_dim=feature_dim,
                     dtype=jnp.float64 if float64 else jnp.float32)
    tolerance = 1e-10 if float64 else 1e-4

    net.eval()
    with torch.no_grad():
      expected_pred, expected_features = net(torch.from_numpy(x))
    pred, features = _apply(model, variables, x.transpose(0, 2, 3, 1), train=False)
    assert pred.shape == (batch, *output_size(*hw), num_targets, 1)
    assert max_relative_difference(pred[..., 0], expected_pred) < tolerance
    assert max_relative_difference(features, expected_features) < tolerance
    if width == 64:
      return  # batch statistics of one 228x304 image: the eval comparison is what this size adds

    # Training mode: batch statistics; running means agree; flax's running var uses the biased batch
    # variance where torch's uses the unbiased one (m values per channel).
    values_per_channel = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: values_per_channel.__setitem__(
        name, o.shape[0] * o.shape[2] * o.shape[3])) for name, m in net.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)]
    old = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    with torch.no_grad():
      expected_pred, expected_features = net(torch.from_numpy(x))
    for hook in hooks:
      hook.remove()
    (pred, features), updates = _apply(model, variables, x.transpose(0, 2, 3, 1), train=True,
                                       mutable=["batch_stats"])
    assert max_relative_difference(pred[..., 0], expected_pred) < tolerance
    assert max_relative_difference(features, expected_features) < tolerance
  new = load_torch_state_dict(net.state_dict(), num_targets=num_targets, depth=depth, width=width,
                              feature_dim=feature_dim)["batch_stats"]
  assert len(values_per_channel) == len(jax.tree.leaves(new)) // 2
  for name, count in values_per_channel.items():
    flax_stats, torch_stats = subtree(updates["batch_stats"], name), subtree(new, name)
    np.testing.assert_allclose(flax_stats["mean"], torch_stats["mean"], rtol=1e-4, atol=1e-5)
    old_var = old[f"{name}.running_var"].double().numpy()
    unbiased_batch_var = (torch_stats["var"] - 0.9 * old_var) / 0.1
    biased = 0.9 * old_var + 0.1 * unbiased_batch_var * (count - 1) / count
    np.testing.assert_allclose(flax_stats["var"], biased, rtol=1e-4, atol=1e-5)
