"""An independent PyTorch DeepLab-V2 "multi" segmenter, for tests and benchmarks only.

Written from the layer table in REFERENCE section 1.1 (not from the JAX model) so that the
converter and the Flax model can be checked against a second implementation. Its state_dict
keys follow AdaptSegNet's `deeplab_multi.py` layout (conv1, bn1, layer1..4.i.{conv,bn}K,
layerL.0.downsample.{0,1}, layer5/layer6.conv2d_list.j), which is what the converter reads.

Importing this module imports torch; seat_jax itself never imports it.
"""

import collections
import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from seat_jax.device_preprocessing import CAFFE_MEAN_BGR

# mmseg's img_norm_cfg (DAFormer's dataset configs): RGB on the 0-255 scale.
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53])
IMAGENET_STD = np.array([58.395, 57.12, 57.375])

RESNET101_STAGES = (3, 4, 23, 3)
STAGE_DILATIONS = (1, 1, 2, 4)
STAGE_STRIDES = (1, 2, 1, 1)
EXPANSION = 4


class Bottleneck(nn.Module):
  """Caffe-style bottleneck: the stride sits on the first 1x1 conv."""

  def __init__(self, in_channels: int, planes: int, stride: int, dilation: int,
               with_downsample: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, planes, 1, stride=stride, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
    self.downsample = None
    if with_downsample:
      self.downsample = nn.Sequential(
          nn.Conv2d(in_channels, planes * EXPANSION, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes * EXPANSION))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(out + shortcut)


class ClassifierModule(nn.Module):
  """Sum of dilated 3x3 convs with bias; `num_used` < len(dilations) mimics the early return."""

  def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int], num_used: int):
    super().__init__()
    self.conv2d_list = nn.ModuleList(
        nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
        for d in dilations)
    self.num_used = num_used

  def forward(self, x):
    return sum(conv(x) for conv in list(self.conv2d_list)[:self.num_used])


class DeepLabMultiTorch(nn.Module):
  """ResNet backbone at output stride 8 with an aux head on layer3 and a main head on layer4."""

  def __init__(self, num_classes: int = 19, stage_sizes: Sequence[int] = RESNET101_STAGES,
               base_width: int = 64, aspp_branches: int = 4,
               aspp_dilations: Sequence[int] = (6, 12, 18, 24)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(base_width)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    in_channels = base_width
    for stage, num_blocks in enumerate(stage_sizes):
      planes = base_width * 2**stage
      blocks = []
      for i in range(num_blocks):
        blocks.append(Bottleneck(
            in_channels, planes, stride=STAGE_STRIDES[stage] if i == 0 else 1,
            dilation=STAGE_DILATIONS[stage], with_downsample=(i == 0)))
        in_channels = planes * EXPANSION
      setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
    self.layer5 = ClassifierModule(base_width * 16, num_classes, aspp_dilations, aspp_branches)
    self.layer6 = ClassifierModule(base_width * 32, num_classes, aspp_dilations, aspp_branches)
    self._init_like_deeplab()

  def _init_like_deeplab(self):
    """REFERENCE 1.2: conv weights N(0, 0.01), BN 1/0; head biases keep the torch default."""
    for module in self.modules():
      if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.01)
      elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer2(self.layer1(x))
    x3 = self.layer3(x)
    x4 = self.layer4(x3)
    return self.layer5(x3), self.layer6(x4)


def randomize_(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
  """Gives every weight and every BN statistic non-trivial random values, in place.

  Conv weights get He-scaled normals so activations keep their size through the depth; the BN
  running statistics are first set to the batch statistics of `images` (so eval-mode
  normalisation is well scaled) and then perturbed, and the BN affines are random, so a
  converter that drops or swaps any BN tensor changes the logits.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) *
                            math.sqrt(2.0 / fan_in))
        if module.bias is not None:
          module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
      elif isinstance(module, nn.BatchNorm2d):
        module.momentum = 1.0  # the next train-mode pass stores exactly the batch statistics
        module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    was_training = model.training
    model.train()
    model(images)
    model.train(was_training)
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.momentum = 0.1
        std = module.running_var.sqrt()
        module.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=gen))
        module.running_var.mul_(0.7 + 0.6 * torch.rand(std.shape, generator=gen))
        module.running_var.add_(1e-3)
  return model


def deeplab_state_dict(model: nn.Module, prefix: str = "") -> "collections.OrderedDict":
  """The model's state_dict in the DeepLab layout, optionally with a key prefix like `Scale.`."""
  return collections.OrderedDict((prefix + k, v) for k, v in model.state_dict().items())


def torchvision_state_dict(model: nn.Module, num_fc_classes: int = 1000,
                           seed: int = 0) -> "collections.OrderedDict":
  """The backbone of `model` in torchvision ResNet key layout: no heads, plus a random `fc`.

  torchvision puts the stride on conv2 instead of conv1, which changes no weight shape, so the
  backbone keys and shapes are identical to the DeepLab layout.
  """
  gen = torch.Generator().manual_seed(seed)
  state = collections.OrderedDict(
      (k, v) for k, v in model.state_dict().items()
      if not k.startswith(("layer5.", "layer6.")))
  fc_in = model.layer4[-1].conv3.out_channels
  state["fc.weight"] = torch.randn((num_fc_classes, fc_in), generator=gen) * 0.01
  state["fc.bias"] = torch.zeros(num_fc_classes)
  return state


def deeplab_init_state_dict(model: nn.Module, num_init_classes: int = 21,
                            seed: int = 0) -> "collections.OrderedDict":
  """Mimics `DeepLab_resnet_pretrained_init`: `Scale.` prefix, layer5 = classifier on layer4.

  The released init file holds a VOC/COCO classifier on the 2048-channel layer4 output as
  `layer5` and no `layer6`, so a converter must not load it into the 1024-channel aux head.
  """
  gen = torch.Generator().manual_seed(seed)
  state = collections.OrderedDict(
      ("Scale." + k, v) for k, v in model.state_dict().items()
      if not k.startswith(("layer5.", "layer6.")))
  main_in = model.layer6.conv2d_list[0].in_channels
  for j in range(len(model.layer6.conv2d_list)):
    state[f"Scale.layer5.conv2d_list.{j}.weight"] = torch.randn(
        (num_init_classes, main_in, 3, 3), generator=gen) * 0.01
    state[f"Scale.layer5.conv2d_list.{j}.bias"] = torch.zeros(num_init_classes)
  return state


def train_step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, aux_weight: float = 0.1):
  """One source-domain step as in the JAX benchmark: CE(main) + aux_weight * CE(aux) at input size."""

  def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    aux, main = model(images)
    size = images.shape[-2:]
    aux = F.interpolate(aux, size=size, mode="bilinear", align_corners=True)
    main = F.interpolate(main, size=size, mode="bilinear", align_corners=True)
    loss = (F.cross_entropy(main, labels, ignore_index=255) +
            aux_weight * F.cross_entropy(aux, labels, ignore_index=255))
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def imagenet_pixels(inputs: np.ndarray) -> torch.Tensor:
  """Model inputs (BGR minus the Caffe mean, NHWC) as mmseg normalises the same images: RGB,
  ImageNet mean/std, NCHW float64."""
  rgb = inputs.astype(np.float64)[..., ::-1] + CAFFE_MEAN_BGR[::-1].astype(np.float64)
  normalised = (rgb - IMAGENET_MEAN) / IMAGENET_STD
  return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))


def imagenet_model_inputs(image_hw: Sequence[int], seed: int = 0):
  """Two random images as model inputs (float32) and as mmseg's `imagenet_pixels`."""
  rgb = np.random.default_rng(seed).uniform(0, 255, (2, *image_hw, 3))
  inputs = (rgb[..., ::-1] - CAFFE_MEAN_BGR.astype(np.float64)).astype(np.float32)
  return inputs, imagenet_pixels(inputs)
