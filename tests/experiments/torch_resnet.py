"""A torch reference ResNet with torchvision's module names, its state-dict layout, and helpers to compare flax
models with it: shared by test_resnet.py (the ResNet alone) and test_nyud2_models.py (the depth network's encoder).

Written from torchvision's resnet.py (and the published nyud2-dir/models/resnet.py, the same blocks), not from
experiments/common/resnet.py. torch is imported inside the functions that need it, so this module imports
without it. From a test in tests/experiments/ (pytest's "prepend" import mode puts that folder on sys.path):

    from torch_resnet import STAGES, one_torch_thread, randomize, torch_resnet
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

# depth -> (blocks per stage, bottleneck).
STAGES = {10: ((1, 1, 1, 1), False), 18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}


def torchvision_layout(depth: int, width: int, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
  """torchvision resnet{depth}'s state-dict keys and shapes (OIHW), num_batches_tracked included, written from
  torchvision's `_make_layer` (base width `width` instead of 64); with fc.* for `num_classes` classes if given."""
  stage_sizes, bottleneck = STAGES[depth]
  expansion = 4 if bottleneck else 1
  layout = {}

  def bn(name, c):
    layout.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                   f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

  layout["conv1.weight"] = (width, 3, 7, 7)
  bn("bn1", width)
  inplanes = width
  for i, blocks in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(blocks):
      stride = 2 if i > 0 and j == 0 else 1
      p = f"layer{i + 1}.{j}"
      if bottleneck:
        convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
      else:
        convs = [(planes, inplanes, 3), (planes, planes, 3)]
      for k, (out, inp, size) in enumerate(convs, 1):
        layout[f"{p}.conv{k}.weight"] = (out, inp, size, size)
        bn(f"{p}.bn{k}", out)
      if j == 0 and (stride != 1 or inplanes != planes * expansion):
        layout[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  if num_classes is not None:
    layout["fc.weight"] = (num_classes, inplanes)
    layout["fc.bias"] = (num_classes,)
  return layout


def subtree(tree: dict, torch_name: str) -> dict:
  """The subtree of torch module `torch_name`: "layer1.0.downsample.1" -> tree["layer1_0"]["downsample_1"],
  "D.up1" -> tree["D"]["up1"] (the documented naming: an index joins the name before it with '_')."""
  parts = []
  for part in torch_name.split("."):
    if part.isdigit():
      parts[-1] += f"_{part}"
    else:
      parts.append(part)
  for part in parts:
    tree = tree[part]
  return tree


@contextlib.contextmanager
def one_torch_thread() -> Iterator:
  """torch (the test is skipped without it), on one thread inside: its thread pool's start costs seconds on a
  busy CI machine, more than these small convolutions gain from it."""
  torch = pytest.importorskip("torch")
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield torch
  finally:
    torch.set_num_threads(threads)


def torch_resnet(depth: int, width: int, num_classes: int | None = None):
  """A torch model with torchvision's module names and forward (BasicBlock / Bottleneck v1.5), base width
  `width`, with fc (`num_classes` outputs) if given; forward returns (pooled features, [layer1..4 maps]), fc
  unused. Its state dict's keys and shapes are `torchvision_layout(depth, width, num_classes)`'s. Weights
  as torch's defaults: `randomize` them."""
  import torch
  from torch import nn as tnn

  stage_sizes, bottleneck = STAGES[depth]
  expansion = 4 if bottleneck else 1

  class Block(tnn.Module):
    def __init__(self, inplanes, planes, stride):
      super().__init__()
      if bottleneck:
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
      else:
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn1, self.bn2 = tnn.BatchNorm2d(planes), tnn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inplanes != planes * expansion:
        self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes * expansion, 1, stride, bias=False),
                                         tnn.BatchNorm2d(planes * expansion))

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      if bottleneck:
        out = self.bn3(self.conv3(torch.relu(out)))
      identity = x if self.downsample is None else self.downsample(x)
      return torch.relu(out + identity)

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = tnn.BatchNorm2d(width)
      self.maxpool = tnn.MaxPool2d(3, 2, 1)
      inplanes = width
      for i, blocks in enumerate(stage_sizes):
        layer = []
        for j in range(blocks):
          layer.append(Block(inplanes, width * 2**i, 2 if i > 0 and j == 0 else 1))
          inplanes = width * 2**i * expansion
        setattr(self, f"layer{i + 1}", tnn.Sequential(*layer))
      if num_classes is not None:
        self.fc = tnn.Linear(inplanes, num_classes)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      stages = []
      for i in range(len(stage_sizes)):
        x = getattr(self, f"layer{i + 1}")(x)
        stages.append(x)
      return x.mean((2, 3)), stages

  return Net()


def randomize(net, kaiming_mode: str):
  """`net` (returned) with random convs and BN, in place: conv weights torch's kaiming_normal_ (`kaiming_mode`
  "fan_in" or "fan_out", ReLU gain), conv biases N(0, 0.1); BN scale and running variance U(0.5, 1.5), bias
  and running mean N(0, 0.1), so that a mix-up of them shows. Other layers (fc) keep their init."""
  import torch
  from torch import nn as tnn

  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, tnn.Conv2d):
        tnn.init.kaiming_normal_(m.weight, mode=kaiming_mode, nonlinearity="relu")
        if m.bias is not None:
          m.bias.normal_(0, 0.1)
      elif isinstance(m, tnn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return net


def max_relative_difference(flax_out, torch_out) -> float:
  """max |flax - torch| / max |torch|: flax NHWC maps against torch NCHW ones, or [n, c] against [n, c]."""
  reference = torch_out.detach().numpy()
  if reference.ndim == 4:
    reference = reference.transpose(0, 2, 3, 1)
  return float(np.abs(np.asarray(flax_out) - reference).max() / np.abs(reference).max())
