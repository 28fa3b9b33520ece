"""The torchvision-compatible ResNet (experiments/common/resnet.py) against independent references:
torchvision's published parameter counts, a float64 NumPy stem with torch's padding, and (where torch
is installed) a torch model with torchvision's key layout (torch_resnet.py) whose state dict is loaded and
compared."""
from __future__ import annotations

import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_resnet import max_relative_difference, one_torch_thread, randomize, subtree, torch_resnet, torchvision_layout

from experiments.common.resnet import ResNet, load_torchvision, load_torchvision_file, resnet


def _variable_shapes(model: ResNet) -> dict:
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _random_variables(model: ResNet, seed: int) -> dict:
  """Random variables of `model`'s shapes drawn in NumPy: `model.init` would compile jax's threefry
  normal once per kernel shape (seconds each on CPU). Kernels N(0, 2 / fan_in) keep activations O(1);
  BN gets non-trivial scale, bias and running stats so that a mix-up of them shows."""
  rng = np.random.default_rng(seed)

  def draw(path, spec):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0, math.sqrt(2 / math.prod(spec.shape[:-1])), spec.shape).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
    return rng.normal(0, 0.1, spec.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(draw, _variable_shapes(model))


def _random_state_dict(depth: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {key: (np.array(7, np.int64) if key.endswith("num_batches_tracked")
                else rng.normal(size=shape).astype(np.float32))
          for key, shape in torchvision_layout(depth, width, num_classes=1000).items()}


# ------------------------------------------------------------------------------------------------ architecture


@pytest.mark.parametrize(("depth", "torchvision_params", "feature_dim"), [
    (18, 11_689_512, 512), (34, 21_797_672, 512), (50, 25_557_032, 2048), (101, 44_549_160, 2048),
    (152, 60_192_808, 2048)])
def test_parameter_count_is_torchvisions_without_fc(depth, torchvision_params, feature_dim):
  # torchvision's published counts (its docs' num_params) include fc: feature_dim * 1000 + 1000.
  model = resnet(depth)
  shapes = _variable_shapes(model)
  assert _count(shapes["params"]) == torchvision_params - (feature_dim * 1000 + 1000)
  assert set(shapes) == {"params", "batch_stats"}
  assert jax.tree.map(lambda s: s.dtype, shapes) == jax.tree.map(lambda s: jnp.dtype(jnp.float32), shapes)
  features = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 64, 64, 3)), train=False), shapes)
  assert features.shape == (2, feature_dim)


def test_unknown_depth_lists_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown ResNet depth 20; valid depths: 10, 18, 34, 50, 101, 152"):
    resnet(20)
  with pytest.raises(ValueError, match=r"valid depths: 10, 18, 34, 50, 101, 152"):
    load_torchvision({}, depth=20)


def _torch_size(size: int, kernel: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - kernel) // stride + 1


@pytest.mark.parametrize(("depth", "width", "expansion"), [(10, 8, 1), (50, 4, 4)])
@pytest.mark.parametrize("hw", [(64, 64), (45, 38)])
def test_stage_shapes_follow_torchs_formula(depth, width, expansion, hw):
  model = resnet(depth, width=width)
  x = jnp.zeros((2, *hw, 3))
  features, stages = jax.eval_shape(lambda v: model.apply(v, x, train=False, return_stages=True),
                                    _variable_shapes(model))
  sizes = [_torch_size(_torch_size(s, 7, 2, 3), 3, 2, 1) for s in hw]  # stem conv, max-pool
  for i, stage in enumerate(stages):
    if i > 0:
      sizes = [_torch_size(s, 3, 2, 1) for s in sizes]  # the first block's strided 3x3 conv
    assert stage.shape == (2, *sizes, width * 2**i * expansion)
    assert stage.dtype == jnp.float32
  assert features.shape == (2, 8 * width * expansion)


def test_rejects_images_that_are_not_nhwc():
  model = resnet(10, width=4)
  with pytest.raises(ValueError, match=r"NHWC images \[n, H, W, c\], got shape \(32, 32, 3\)"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((32, 32, 3)), train=False), _variable_shapes(model))


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_init_is_torchvisions():
  model = resnet(10, width=8)
  # A non-default PRNG only to keep the test fast: threefry's normal compiles for ~10 s on CPU here.
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), train=False))(
      jax.random.key(0, impl="rbg"))
  params, stats = variables["params"], variables["batch_stats"]
  # kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (out_channels * kh * kw)), untruncated.
  kernels = [params["layer4_0"]["conv2"]["kernel"], params["layer3_0"]["conv1"]["kernel"]]  # (3,3,64,64), (3,3,16,32)
  for kernel in kernels:
    h, w, _, out = kernel.shape
    z = np.asarray(kernel).ravel() / math.sqrt(2 / (out * h * w))
    assert abs(z.std() - 1) < 0.06 and abs(z.mean()) < 0.06
    assert np.abs(z).max() > 2.5  # not truncated at 2 sigma
  for bn in [params["bn1"], params["layer2_0"]["downsample_1"]]:
    np.testing.assert_array_equal(bn["scale"], 1)
    np.testing.assert_array_equal(bn["bias"], 0)
  for bn in [stats["bn1"], stats["layer4_0"]["bn2"]]:
    np.testing.assert_array_equal(bn["mean"], 0)
    np.testing.assert_array_equal(bn["var"], 1)


# ------------------------------------------------------------------------------------------ NumPy references


def _conv_reference(x: np.ndarray, kernel: np.ndarray, stride: int, pad: tuple[int, int]) -> np.ndarray:
  """Cross-correlation in float64: x [n, H, W, c] zero-padded by pad = (before, after), kernel HWIO."""
  x = np.pad(x.astype(np.float64), ((0, 0), pad, pad, (0, 0)))
  kh, kw = kernel.shape[:2]
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      out += window @ kernel[i, j].astype(np.float64)
  return out


def _max_pool_reference(x: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
  """torch's MaxPool2d(3, stride=2, padding=1): pads with -inf."""
  x = np.pad(x, ((0, 0), pad, pad, (0, 0)), constant_values=-np.inf)
  oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  windows = [x[:, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2] for i in range(3) for j in range(3)]
  return np.max(windows, axis=0)


def _bn_reference(x: np.ndarray, params: dict, stats: dict) -> np.ndarray:
  scale, bias, mean, var = (np.asarray(a, np.float64) for a in (params["scale"], params["bias"], stats["mean"],
                                                                stats["var"]))
  return (x - mean) / np.sqrt(var + 1e-5) * scale + bias


def _apply(model: ResNet, variables, x, **kwargs):
  """model.apply(variables, x, **kwargs) under jit: one XLA compile costs less on CPU than eager mode's
  compile per op and shape."""
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _capture(model: ResNet, variables, x, names: dict[str, str]) -> dict[str, jax.Array]:
  """An eval-mode forward that returns top-level modules' outputs ("out") or first inputs ("in") by name."""
  def run(variables, x):
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if context.method_name == "__call__" and isinstance(module.parent, ResNet) and module.name in names:
        seen[module.name] = out if names[module.name] == "out" else args[0]
      return out

    with nn.intercept_methods(interceptor):
      model.apply(variables, x, train=False)
    return seen

  return jax.jit(run)(variables, x)


@pytest.mark.parametrize("hw", [(32, 32), (33, 33), (32, 35)])
def test_stem_padding_is_torchs(hw):
  model = resnet(10, width=8)
  variables = _random_variables(model, seed=1)
  x = np.random.default_rng(2).normal(size=(2, *hw, 3)).astype(np.float32)
  seen = _capture(model, variables, x, {"conv1": "out", "layer1_0": "in"})
  conv = _conv_reference(x, np.asarray(variables["params"]["conv1"]["kernel"]), 2, (3, 3))
  conv_size = tuple(_torch_size(s, 7, 2, 3) for s in hw)
  assert conv.shape[1:3] == seen["conv1"].shape[1:3] == conv_size
  np.testing.assert_allclose(seen["conv1"], conv, rtol=1e-5, atol=1e-5 * np.abs(conv).max())
  stem = _max_pool_reference(
      np.maximum(_bn_reference(conv, variables["params"]["bn1"], variables["batch_stats"]["bn1"]), 0), (1, 1))
  assert stem.shape[1:3] == seen["layer1_0"].shape[1:3] == tuple(_torch_size(s, 3, 2, 1) for s in conv_size)
  np.testing.assert_allclose(seen["layer1_0"], stem, rtol=1e-5, atol=1e-5 * np.abs(stem).max())
  if hw == (32, 32):
    # The reference tells the paddings apart: flax's 'SAME' pads this even size by (2, 3).
    same = _conv_reference(x, np.asarray(variables["params"]["conv1"]["kernel"]), 2, (2, 3))
    assert same.shape == conv.shape and not np.allclose(same, conv, atol=1e-2)


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_train_mode_updates_batch_stats_and_eval_mode_uses_them():
  model = resnet(10, width=8)
  variables = _random_variables(model, seed=3)
  x = np.random.default_rng(4).normal(size=(4, 32, 32, 3)).astype(np.float32)
  train_features, updates = _apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert set(updates) == {"batch_stats"}
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
  # bn1 against torch's rule with momentum 0.1 (biased batch variance: flax's, see the module docstring).
  conv = _conv_reference(x, np.asarray(variables["params"]["conv1"]["kernel"]), 2, (3, 3))
  old, new = variables["batch_stats"]["bn1"], updates["batch_stats"]["bn1"]
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * conv.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * conv.var((0, 1, 2)), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(updates["batch_stats"])):
    assert not np.allclose(a, b)

  # Train mode normalises with the batch's statistics, so one sample's features depend on the batch;
  # eval mode with the running ones, so they do not, and they change with the stored stats.
  alone = _apply(model, variables, x[:1], train=True, mutable=["batch_stats"])[0]
  assert not np.allclose(alone, train_features[:1], rtol=1e-3)
  eval_features = _apply(model, variables, x, train=False)
  np.testing.assert_allclose(_apply(model, variables, x[:1], train=False), eval_features[:1], rtol=1e-5, atol=1e-6)
  updated = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  assert not np.allclose(_apply(model, updated, x, train=False), eval_features, rtol=1e-3)
  assert not np.allclose(train_features, eval_features, rtol=1e-3)


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_bfloat16_compute_keeps_float32_params_and_features():
  model = resnet(10, width=8, dtype=jnp.bfloat16)
  shapes = _variable_shapes(model)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  variables = _random_variables(resnet(10, width=8), seed=5)
  x = np.random.default_rng(6).normal(size=(2, 32, 32, 3)).astype(np.float32)
  features, stages = _apply(model, variables, x, train=False, return_stages=True)
  assert features.dtype == jnp.float32 and {s.dtype for s in stages} == {jnp.dtype(jnp.bfloat16)}
  reference = _apply(resnet(10, width=8), variables, x, train=False)
  assert np.abs(features - reference).max() < 0.05 * np.abs(reference).max()


# -------------------------------------------------------------------------------------------------- loader


def test_load_torchvision_maps_names_and_layouts():
  state_dict = _random_state_dict(10, 8)
  variables = load_torchvision(state_dict, depth=10, width=8)
  shapes = _variable_shapes(resnet(10, width=8))
  assert jax.tree.structure(variables) == jax.tree.structure(shapes)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["conv1"]["kernel"], state_dict["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["layer2_0"]["downsample_0"]["kernel"],
                                state_dict["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["layer3_0"]["downsample_1"]["scale"],
                                state_dict["layer3.0.downsample.1.weight"])
  for name in ("bn1", "layer1.0.bn2", "layer4.0.downsample.1"):
    p, s = subtree(params, name), subtree(stats, name)
    np.testing.assert_array_equal(p["scale"], state_dict[f"{name}.weight"])
    np.testing.assert_array_equal(p["bias"], state_dict[f"{name}.bias"])
    np.testing.assert_array_equal(s["mean"], state_dict[f"{name}.running_mean"])
    np.testing.assert_array_equal(s["var"], state_dict[f"{name}.running_var"])


@pytest.mark.parametrize("depth", [18, 50])
def test_load_torchvision_accepts_full_size_layout(depth):
  # torchvision's own key set at width 64 (zeros: the shapes are what is checked).
  layout = torchvision_layout(depth, 64, num_classes=1000)
  variables = load_torchvision({k: np.zeros(shape, np.float32) for k, shape in layout.items()}, depth=depth)
  fc = math.prod(layout["fc.weight"]) + math.prod(layout["fc.bias"])
  tensors = {k: s for k, s in layout.items() if not k.endswith("num_batches_tracked")}
  assert _count(variables) == sum(math.prod(s) for s in tensors.values()) - fc
  assert _count(variables["params"]) == {18: 11_176_512, 50: 23_508_032}[depth]


def test_load_torchvision_errors_name_the_keys():
  good = _random_state_dict(10, 8)
  missing = dict(good)
  del missing["layer1.0.bn1.running_var"]
  with pytest.raises(ValueError, match=r"missing key 'layer1\.0\.bn1\.running_var' \(expected shape \(8,\)\)"):
    load_torchvision(missing, depth=10, width=8)
  with pytest.raises(ValueError, match=r"unexpected key 'layer1\.0\.conv1\.bias' with shape \(8,\)"):
    load_torchvision({**good, "layer1.0.conv1.bias": np.zeros(8)}, depth=10, width=8)
  with pytest.raises(ValueError, match=r"'conv1\.weight': state dict has \(8, 3, 3, 3\), expected \(8, 3, 7, 7\)"):
    load_torchvision({**good, "conv1.weight": np.zeros((8, 3, 3, 3))}, depth=10, width=8)
  # Wrong depth or width: every difference is counted, the first ones named.
  with pytest.raises(ValueError, match=r"resnet\(18, width=8\): 0 shape mismatches, 40 missing keys, 0 unexpected"
                                       r".*missing key 'layer1\.1\.bn1\.bias'"):
    load_torchvision(good, depth=18, width=8)
  with pytest.raises(ValueError, match=r"resnet\(10, width=16\): 60 shape mismatches, 0 missing keys, 0 unexp.*"
                                       r"'bn1\.bias': state dict has \(8,\), expected \(16,\).*and 40 more"):
    load_torchvision(good, depth=10, width=16)


def test_load_torchvision_file_npz_and_errors(tmp_path, monkeypatch):
  state_dict = _random_state_dict(10, 8)
  np.savez(tmp_path / "w.npz", **state_dict)
  loaded = load_torchvision_file(tmp_path / "w.npz", depth=10, width=8)
  jax.tree.map(np.testing.assert_array_equal, loaded, load_torchvision(state_dict, depth=10, width=8))
  with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
    load_torchvision_file(tmp_path / "absent.pth", depth=10)
  (tmp_path / "w.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match=r"Unknown weights file type '\.safetensors'"):
    load_torchvision_file(tmp_path / "w.safetensors", depth=10)
  (tmp_path / "w.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
  with pytest.raises(ImportError, match=r"w\.pth' needs PyTorch"):
    load_torchvision_file(tmp_path / "w.pth", depth=10)


# ------------------------------------------------------------------------------------ torch reference model


@pytest.fixture
def torch_one_thread():
  """torch on one thread for this test (torch_resnet.one_torch_thread); skips without torch."""
  with one_torch_thread() as torch:
    yield torch


# Batch 4 and >= 2x2 maps in layer4: batch statistics over 2 values per channel are ill-conditioned
# (train-mode outputs then differ by ~1e-3 from rounding alone).
@pytest.mark.parametrize(("depth", "width", "hw"), [
    (10, 16, (45, 38)), (18, 8, (48, 48)), (50, 8, (64, 64)),
    pytest.param(50, 64, (64, 64), marks=pytest.mark.slow, id="resnet50-full-width")])
def test_matches_torch_model_loaded_from_its_state_dict(depth, width, hw, tmp_path, torch_one_thread):
  torch = torch_one_thread
  torch.manual_seed(depth)
  # torchvision's module names, forward and init (kaiming fan_out) with random BN, and an fc the loader ignores.
  net = randomize(torch_resnet(depth, width, num_classes=10), kaiming_mode="fan_out")
  x = np.random.default_rng(7).normal(size=(4, 3, *hw)).astype(np.float32)  # NCHW for torch
  state_dict = net.state_dict()  # torch tensors, with fc.* and num_batches_tracked
  variables = load_torchvision(state_dict, depth=depth, width=width)
  model = resnet(depth, width=width)

  net.eval()
  with torch.no_grad():
    expected, expected_stages = net(torch.from_numpy(x))
  features, stages = _apply(model, variables, x.transpose(0, 2, 3, 1), train=False, return_stages=True)
  assert max_relative_difference(features, expected) < 1e-4
  for stage, expected_stage in zip(stages, expected_stages):
    assert max_relative_difference(stage, expected_stage) < 1e-4

  # Training mode: same batch-statistics forward and running means; flax's running var uses the biased
  # batch variance where torch's uses the unbiased one (m values per channel).
  values_per_channel = {}
  hooks = [m.register_forward_hook(lambda m, i, o, name=name: values_per_channel.__setitem__(
      name, o.shape[0] * o.shape[2] * o.shape[3])) for name, m in net.named_modules()
      if isinstance(m, torch.nn.BatchNorm2d)]
  old = {k: v.clone() for k, v in state_dict.items()}
  net.train()
  with torch.no_grad():
    expected_train, _ = net(torch.from_numpy(x))
  for hook in hooks:
    hook.remove()
  # The loaded variables own their memory: torch's in-place updates of its running stats left them alone.
  jax.tree.map(np.testing.assert_array_equal, variables, load_torchvision(old, depth=depth, width=width))
  train_features, updates = _apply(model, variables, x.transpose(0, 2, 3, 1), train=True,
                                   mutable=["batch_stats"])
  assert max_relative_difference(train_features, expected_train) < 1e-4
  new = load_torchvision(net.state_dict(), depth=depth, width=width)["batch_stats"]
  for name, count in values_per_channel.items():
    flax_stats, torch_stats = subtree(updates["batch_stats"], name), subtree(new, name)
    np.testing.assert_allclose(flax_stats["mean"], torch_stats["mean"], rtol=1e-4, atol=1e-5)
    old_var = old[f"{name}.running_var"].numpy()
    unbiased_batch_var = (torch_stats["var"] - 0.9 * old_var) / 0.1
    biased = 0.9 * old_var + 0.1 * unbiased_batch_var * (count - 1) / count
    np.testing.assert_allclose(flax_stats["var"], biased, rtol=1e-4, atol=1e-5)

  # The same (pre-training) state dict through files: torch's .pth and numpy's .npz.
  torch.save(old, tmp_path / "w.pth")
  np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in old.items()})
  for name in ("w.pth", "w.npz"):
    jax.tree.map(np.testing.assert_array_equal, load_torchvision_file(tmp_path / name, depth=depth, width=width),
                 variables)
