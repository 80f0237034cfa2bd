"""DeepLab-V2 / ResNet-101 multi-level segmenter with SEAT norms.

Layout follows AdaptSegNet's `deeplab_multi.py` exactly, so its PyTorch checkpoints map 1:1:
Caffe-style stride on the first 1x1 conv of a block, ceil-mode 3x3/2 max-pool, dilation 2 in
every layer3 block and 4 in every layer4 block (output stride 8), a downsample branch on the
first block of every stage, and two heads that sum dilated 3x3 convs with bias: `aux_head` on
layer3, `main_head` on layer4. `aspp_branches=2` sums only the first two branches
(AdaptSegNet's early-return bug) while all four exist as parameters.

`resnet_variant='v1c'` is instead mmseg's ResNetV1c as DAFormer's and MIC's DeepLabV2 build it
(lhoyer/DAFormer mmseg/models/backbones/resnet.py, mmseg/models/utils/res_layer.py,
configs/_base_/models/deeplabv2_r50-d8.py): a deep stem of three 3x3 convs (stride 2, then 1,
1; widths base/2, base/2, base), each with a norm and ReLU, then a floor-mode 3x3/2 max-pool;
the stride on the 3x3 conv of a block ('pytorch' style); the first block of a dilated stage at
half the dilation (`contract_dilation`: 1 in layer3, 2 in layer4); logits resized with
half-pixel centres (mmseg's align_corners=False). The heads are this file's either way.
`input_normalisation` says what the weights expect (`input_norm`).

Parameters are float32; `dtype` sets the compute precision; logits are float32. 1x1 convs are
dots over channels (XLA:CPU runs them 2-4x faster than a 1x1 convolution, measured with jax 0.10);
the kernel gradient of the wider 3x3 convs is one dot per tap on the CPU (`conv_kernel_grad`).
Also on the CPU only: each block's output is written to memory once (`materialise`) and the
heads run as one matrix product (`dilated_sum`); GPU programs are XLA's usual ones.
"""

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seat_jax.models import conv_kernel_grad
from seat_jax.models import dilated_sum
from seat_jax.models import input_norm
from seat_jax.models.materialise import materialise
from seat_jax.models.seat_norm import JOINT, SeatNorm, check_domain, check_norm_mode

RESNET101_STAGES = (3, 4, 23, 3)
STAGE_STRIDES = (1, 2, 1, 1)  # layer1..layer4
STAGE_DILATIONS = (1, 1, 2, 4)
NUM_STAGES = 5  # 0 = stem (conv1/bn1), 1..4 = layer1..layer4; indices of `source_stages`
COMPUTE_DTYPES = ("float32", "bfloat16")
# Summed head branches: 4 = all (ADVENT, BDL, FDA); 2 = AdaptSegNet's early-return bug, which its
# released checkpoints need.
ASPP_BRANCHES = (2, 4)
# Rematerialisation: "blocks" keeps only each bottleneck's input for the backward pass and
# recomputes the rest (memory for compute; docs/benchmarks.md).
REMAT_CHOICES = ("none", "blocks")
HEAD_NAMES = ("aux_head", "main_head")
# config model.resnet_variant: caffe = AdaptSegNet's Caffe DeepLab ResNet (7x7 stem); v1c =
# mmseg's ResNetV1c (deep stem; DAFormer's and MIC's DeepLabV2).
RESNET_VARIANTS = ("caffe", "v1c")
BOTTLENECK_EXPANSION = 4  # a bottleneck's output has 4x its planes


def layer4_channels(base_width: int) -> int:
  """Channels of layer4's output (2048 for ResNet-101): the feature-space losses' vectors."""
  return base_width * 2**3 * BOTTLENECK_EXPANSION

conv_kernel_init = nn.initializers.normal(stddev=0.01)  # AdaptSegNet's conv init


def _uniform(bound: float) -> Callable:
  """PyTorch's default conv-bias init U(-bound, bound)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Conv2D(nn.Module):
  """Square NHWC convolution, HWIO kernel stored float32, computed in `dtype`.

  A 1x1 kernel is applied as a dot over channels (on the CPU also when strided; same numbers,
  faster), unless `dot_1x1` is False: a strided 1x1 beside a strided 3x3 (the V1c downsample)
  then has the same output size expression, floor((n - 1) / s) + 1, which symbolic shapes
  (export) need to add the two branches. Larger kernels between wide layers take
  `conv_kernel_grad.conv2d` (same forward; a faster kernel gradient on the CPU).
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  bias_init: Callable | None = None
  output_dtype: Any = None  # e.g. float32 for logits: cast before the bias is added
  dot_1x1: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    kernel = self.param(
        "kernel", conv_kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if k == 1 and self.padding == 0 and self.dot_1x1:
      y = (conv_kernel_grad.strided_1x1(x, kernel, self.stride) if self.stride > 1
           else conv_kernel_grad.dot_1x1(x, kernel[0, 0]))
    elif conv_kernel_grad.uses_tap_kernel_grad(x.shape[-1], self.features, k):
      y = conv_kernel_grad.conv2d(x, kernel, self.stride, self.padding, self.dilation)
    else:
      y = conv_kernel_grad.nhwc_conv(x, kernel, self.stride, self.padding, self.dilation)
    if self.output_dtype is not None:
      y = y.astype(self.output_dtype)
    if self.use_bias:
      bias = self.param("bias", self.bias_init or nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(y.dtype)
    return y


def max_pool_3x3_s2(x: jnp.ndarray) -> jnp.ndarray:
  """PyTorch MaxPool2d(3, stride=2, padding=1) on NHWC (mmseg's ResNet stem; floor mode)."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def max_pool_3x3_s2_ceil(x: jnp.ndarray) -> jnp.ndarray:
  """PyTorch MaxPool2d(3, stride=2, padding=1, ceil_mode=True) on NHWC (AdaptSegNet's stem).

  Pads with -inf: 1 low and 1 + extra high, where extra makes room for the ceil-mode window;
  like PyTorch, a last window that would start inside the right padding is dropped.
  """
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n + 2 - 3) // 2) + 1
    if (out - 1) * 2 >= n + 1:
      out -= 1
    pads.append((1, (out - 1) * 2 + 3 - n - 1))
  init = -jnp.inf  # a Python scalar: lax.reduce_window is only differentiable with one
  return lax.reduce_window(
      x, init, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), pads[0], pads[1], (0, 0)))


class DeepStem(nn.Module):
  """mmseg's ResNetV1c stem before the max-pool: three 3x3 convs (stride 2, 1, 1; widths
  width/2, width/2, width), each followed by a norm and ReLU. Named conv1..3 and bn1..3 inside
  `stem`, so the norm and affine patterns of the rest of the project (bnN) cover them."""
  width: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str, train: bool) -> jnp.ndarray:
    widths = (self.width // 2, self.width // 2, self.width)
    for j, width in enumerate(widths, start=1):
      x = Conv2D(width, 3, stride=2 if j == 1 else 1, padding=1, dtype=self.dtype,
                 name=f"conv{j}")(x)
      x = nn.relu(self.norm(name=f"bn{j}")(x, domain, train))
    return x


class Bottleneck(nn.Module):
  """1x1 -> 3x3 dilated -> 1x1 x4, each with a norm; residual add. The stride sits on the first
  1x1 (Caffe style) or, with `stride_in_3x3`, on the 3x3 (mmseg's and torchvision's style)."""
  planes: int
  stride: int
  dilation: int
  downsample: bool
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  stride_in_3x3: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str, train: bool) -> jnp.ndarray:
    conv = functools.partial(Conv2D, dtype=self.dtype)
    stride1, stride2 = (1, self.stride) if self.stride_in_3x3 else (self.stride, 1)
    y = conv(self.planes, 1, stride=stride1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, domain, train))
    y = conv(self.planes, 3, stride=stride2, padding=self.dilation, dilation=self.dilation,
             name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y, domain, train))
    y = conv(self.planes * BOTTLENECK_EXPANSION, 1, name="conv3")(y)
    y = self.norm(name="bn3")(y, domain, train)
    if self.downsample:
      x = conv(self.planes * BOTTLENECK_EXPANSION, 1, stride=self.stride,
               dot_1x1=not (self.stride_in_3x3 and self.stride > 1), name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, domain, train)
    # the residual stream: computed once, not inside every fusion that reads it (materialise)
    return materialise(nn.relu(y + x.astype(y.dtype)))


class ResNetStage(nn.Module):
  """`num_blocks` bottlenecks named block0..; the first one strides and has the downsample.

  mmseg's style (`mmseg_style`): the stride on each block's 3x3 conv, and the first block of a
  dilated stage at half the dilation (its ResLayer's contract_dilation).
  """
  num_blocks: int
  planes: int
  stride: int
  dilation: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  remat: bool = False
  mmseg_style: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str, train: bool) -> jnp.ndarray:
    # domain and train (arguments 2 and 3, after self and x) shape the graph: static.
    block = nn.remat(Bottleneck, static_argnums=(2, 3)) if self.remat else Bottleneck
    for i in range(self.num_blocks):
      dilation = self.dilation
      if i == 0 and self.mmseg_style and dilation > 1:
        dilation //= 2
      x = block(
          planes=self.planes, stride=self.stride if i == 0 else 1, dilation=dilation,
          downsample=i == 0, norm=self.norm, dtype=self.dtype, stride_in_3x3=self.mmseg_style,
          name=f"block{i}")(x, domain, train)
    return x


class BranchParams(nn.Module):
  """The kernel [3, 3, Cin, classes] and bias of one head branch, created as `Conv2D` creates
  them (same names, order and initialisers), so checkpoints and converters see one layout."""
  features: int
  in_features: int
  bias_init: Callable

  @nn.compact
  def __call__(self) -> tuple[jnp.ndarray, jnp.ndarray]:
    kernel = self.param("kernel", conv_kernel_init, (3, 3, self.in_features, self.features),
                        jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return kernel, bias


class DilatedSumHead(nn.Module):
  """DeepLab-V2 classifier: the sum of parallel dilated 3x3 convs with bias, float32 out.

  All `len(dilations)` branches exist as params; only the first `num_used` are summed, by
  `dilated_sum.dilated_conv_sum` (one matrix product on the CPU, the convolutions elsewhere).
  """
  num_classes: int
  dilations: Sequence[int]
  num_used: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    bias_init = _uniform(1.0 / math.sqrt(9 * x.shape[-1]))  # PyTorch default, fan_in = 9 * Cin
    branches = [BranchParams(self.num_classes, x.shape[-1], bias_init, name=f"branch{j}")()
                for j in range(len(self.dilations))]  # every branch's params exist
    used = branches[:self.num_used]
    x = x.astype(self.dtype)
    logits = dilated_sum.dilated_conv_sum(
        x, tuple(kernel.astype(self.dtype) for kernel, _ in used),
        tuple(self.dilations[:self.num_used]))
    return logits + sum(bias for _, bias in used)


class DeepLabV2(nn.Module):
  """DeepLab-V2 / ResNet multi-level segmenter returning (aux_logits, main_logits) at stride 8.

  Attributes mirror the model config (seat_jax/config_defaults.py `get_model_config`).
  """
  num_classes: int = 19
  stage_sizes: Sequence[int] = RESNET101_STAGES
  base_width: int = 64
  aspp_branches: int = 4
  aspp_dilations: Sequence[int] = (6, 12, 18, 24)
  norm_mode: str = "seat"
  bn_affine_trainable: bool = True
  bn_train_stats: bool = True
  dtype: Any = "float32"
  remat: str = "none"
  resnet_variant: str = "caffe"
  input_normalisation: str = "caffe"

  @property
  def align_corners(self) -> bool:
    """How logits are resized: align_corners=True as the DeepLab references (Caffe variant);
    half-pixel centres as mmseg (V1c: DAFormer's DLV2Head has align_corners=False)."""
    return self.resnet_variant == "caffe"

  @nn.compact
  def __call__(self, images: jnp.ndarray, domain: str = "target", train: bool = False,
               source_stages: Sequence[int] = ()) -> tuple[jnp.ndarray, jnp.ndarray]:
    """images: NHWC float32 (BGR, Caffe mean subtracted; the model applies
    `input_normalisation` itself).

    domain: 'source' | 'target' (static), or in training 'mixed' (ClassMix images: batch
    statistics, mean affine, no running update; seat_norm.MIXED) or 'source+target' (source
    and target images interleaved, each normalised as its own domain; seat_norm.JOINT);
    train: batch statistics + running updates of that domain (pass `mutable=['batch_stats']`);
    source_stages: stages (0 stem, 1..4 layer1..4) that use the source norm whatever `domain`
    is (the evaluation-time layer switch).
    """
    self._check_attributes()
    check_domain(domain, allow_mixed=True, allow_joint=True)
    source_stages = _check_source_stages(source_stages)
    if domain == JOINT and source_stages:
      raise ValueError("source_stages (the evaluation-time layer switch) needs one domain; got "
                       f"domain {JOINT!r}.")
    dtype = compute_dtype(self.dtype)
    norm = functools.partial(
        SeatNorm, mode=self.norm_mode, affine_trainable=self.bn_affine_trainable,
        use_batch_stats_in_train=self.bn_train_stats)

    def stage_domain(stage: int) -> str:
      return "source" if stage in source_stages else domain

    if images.ndim != 4:
      raise ValueError(f"DeepLabV2 expects NHWC images (4 dims); got shape {images.shape}.")
    x = input_norm.normalise(images, self.input_normalisation)
    mmseg_style = self.resnet_variant == "v1c"
    if mmseg_style:
      x = DeepStem(self.base_width, norm, dtype, name="stem")(x, stage_domain(0), train)
      x = max_pool_3x3_s2(x)
    else:
      x = Conv2D(self.base_width, 7, stride=2, padding=3, dtype=dtype, name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x, stage_domain(0), train))
      x = max_pool_3x3_s2_ceil(x)

    stage_outputs = []
    for k, num_blocks in enumerate(self.stage_sizes):
      x = ResNetStage(
          num_blocks=num_blocks, planes=self.base_width * 2**k, stride=STAGE_STRIDES[k],
          dilation=STAGE_DILATIONS[k], norm=norm, dtype=dtype, remat=self.remat == "blocks",
          mmseg_style=mmseg_style, name=f"layer{k + 1}")(x, stage_domain(k + 1), train)
      stage_outputs.append(x)

    head = head_factory(self)
    # The layer4 features, kept only when the caller makes `intermediates` mutable (the
    # feature-space losses of methods/differential.py, methods/clustering.py and DAFormer's
    # feature distance); `init` leaves that collection out.
    self.sow("intermediates", "layer4_output", stage_outputs[3])
    aux_logits = head(name="aux_head")(stage_outputs[2])
    main_logits = head(name="main_head")(stage_outputs[3])
    return aux_logits, main_logits

  def _check_attributes(self) -> None:
    check_norm_mode(self.norm_mode)
    compute_dtype(self.dtype)
    if len(tuple(self.stage_sizes)) != 4 or any(int(n) < 1 for n in self.stage_sizes):
      raise ValueError(
          f"model.stage_sizes must be four positive block counts (layer1..layer4), e.g. "
          f"{RESNET101_STAGES} for ResNet-101; got {tuple(self.stage_sizes)}.")
    if self.remat not in REMAT_CHOICES:
      raise ValueError(f"model.remat must be one of {REMAT_CHOICES}; got {self.remat!r}.")
    if self.resnet_variant not in RESNET_VARIANTS:
      raise ValueError(f"model.resnet_variant must be one of {RESNET_VARIANTS}; got "
                       f"{self.resnet_variant!r}.")
    if self.input_normalisation not in input_norm.INPUT_NORMALISATIONS:
      raise ValueError(f"model.input_normalisation must be one of "
                       f"{input_norm.INPUT_NORMALISATIONS}; got {self.input_normalisation!r}.")
    if self.resnet_variant == "v1c" and self.base_width % 2:
      raise ValueError(f"model.base_width={self.base_width} must be even with "
                       "resnet_variant='v1c' (its stem's first convs are half as wide).")
    if not 1 <= self.aspp_branches <= len(tuple(self.aspp_dilations)):
      raise ValueError(
          f"model.aspp_branches must be between 1 and len(model.aspp_dilations)="
          f"{len(tuple(self.aspp_dilations))}; got {self.aspp_branches}. Use 4 (all branches) "
          "or 2 (AdaptSegNet's checkpoints).")


def head_factory(model: "DeepLabV2") -> Callable[..., DilatedSumHead]:
  """`DilatedSumHead` with `model`'s classes, dilations, branches and dtype (give it a `name`).

  The model builds its two heads with it; the Differential-treatment step applies the main
  head's params to pooled feature vectors through it.
  """
  return functools.partial(
      DilatedSumHead, num_classes=model.num_classes, dilations=tuple(model.aspp_dilations),
      num_used=model.aspp_branches, dtype=compute_dtype(model.dtype))


def compute_dtype(name: Any) -> jnp.dtype:
  """The compute dtype for a config string; only float32 and bfloat16 are supported."""
  dtype = jnp.dtype(name)
  if dtype.name not in COMPUTE_DTYPES:
    raise ValueError(f"model.dtype must be one of {COMPUTE_DTYPES}; got {name!r}.")
  return dtype


def _check_source_stages(source_stages: Sequence[int]) -> tuple[int, ...]:
  stages = tuple(int(s) for s in source_stages)
  bad = [s for s in stages if not 0 <= s < NUM_STAGES]
  if bad:
    raise ValueError(
        f"source_stages (config eval.source_stages) holds stage indices 0 (stem) .. 4 (layer4); "
        f"got {stages}, invalid: {bad}. Example: (3, 4) for the paper's 'LS 3-4'.")
  return stages


INIT_IMAGES_SHAPE = (1, 33, 33, 3)  # any size with a >= 1 pixel stride-8 map


def init_variables(model: nn.Module, rng: jax.Array) -> dict[str, Any]:
  """The model's variables ({params, batch_stats}); every domain slot of every norm included.

  Variable shapes do not depend on the image size, so a tiny dummy image keeps init cheap.
  """
  return dict(model.init(rng, jnp.zeros(INIT_IMAGES_SHAPE, jnp.float32)))


def build_segmenter(model_config: Any) -> DeepLabV2:
  """A DeepLabV2 from the model config (an ml_collections.ConfigDict or any object with the
  fields of `config_defaults.get_model_config`)."""
  fields = ("num_classes", "stage_sizes", "base_width", "aspp_branches", "aspp_dilations",
            "norm_mode", "bn_affine_trainable", "bn_train_stats", "dtype", "remat")
  missing = [f for f in fields if not hasattr(model_config, f)]
  if missing:
    raise ValueError(
        f"The model config lacks {missing}; expected the fields of "
        "seat_jax/config_defaults.py get_model_config().")
  model = DeepLabV2(
      num_classes=int(model_config.num_classes),
      stage_sizes=tuple(int(n) for n in model_config.stage_sizes),
      base_width=int(model_config.base_width),
      aspp_branches=int(model_config.aspp_branches),
      aspp_dilations=tuple(int(d) for d in model_config.aspp_dilations),
      norm_mode=str(model_config.norm_mode),
      bn_affine_trainable=bool(model_config.bn_affine_trainable),
      bn_train_stats=bool(model_config.bn_train_stats),
      dtype=str(model_config.dtype),
      remat=str(model_config.remat),
      # Configs written before these keys existed describe the Caffe DeepLab.
      resnet_variant=str(getattr(model_config, "resnet_variant", None) or "caffe"),
      input_normalisation=str(getattr(model_config, "input_normalisation", None) or "caffe"))
  model._check_attributes()  # fail at build time, with the config key named
  return model


def count_conv_params(params: Any, aspp_branches: int | None = None) -> int:
  """Conv kernels + head biases (the "conv params" AdaptSegNet counts; BN affines excluded).

  Works on arrays or `jax.ShapeDtypeStruct`s. With `aspp_branches`, only the head branches
  that are summed count (43.45 M for AdaptSegNet's 2-branch model).
  """
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(p, "key", str(p)) for p in path]
    in_head = names[0] in HEAD_NAMES
    if names[-1] != "kernel" and not (in_head and names[-1] == "bias"):
      continue
    if in_head and aspp_branches is not None:
      branch = int(names[1].removeprefix("branch"))
      if branch >= aspp_branches:
        continue
    total += int(np.prod(leaf.shape))
  return total
