"""SegFormer: the Mix Transformer encoder (MiT-B0..B5) with DAFormer's or SegFormer's decoder and
SEAT norms (docs/segformer.md).

The layout follows the MiT of NVlabs/SegFormer as DAFormer vendors it
(lhoyer/DAFormer mmseg/models/backbones/mix_transformer.py), so its ImageNet checkpoints
`mit_b*.pth` map 1:1 (`seat_jax.convert`): four stages, each an overlapping patch embedding (a
strided convolution, padding kernel // 2, then a LayerNorm), transformer blocks (efficient
self-attention whose keys and values come from a `sr`-strided convolution of the tokens and a
LayerNorm; a Mix-FFN fc1 -> 3x3 depthwise convolution -> exact GELU -> fc2; pre-norm residuals
with stochastic depth rising linearly from 0 to `drop_path_rate` over all blocks), then a stage
LayerNorm. The patch-embedding and reduction LayerNorms use eps 1e-5 (PyTorch's default), the
block and stage ones `layer_norm_eps` (1e-6 in mmseg's mit_b*, 1e-5 in Hugging Face's port).

Decoders (stride 4, logits float32):
  daformer   DAFormer's context-aware fusion (daformer_head.py with daformer_sepaspp_mitb5.py):
             a linear embedding of each stage, upsampled to stage 1 and concatenated in stage
             order, then a depthwise-separable ASPP (a 1x1 branch and 3x3 depthwise + 1x1
             pointwise branches at the other dilations, each conv followed by BN and ReLU), a
             3x3 bottleneck with BN and ReLU, channel dropout and a 1x1 classifier;
  segformer  SegFormer's all-MLP head as NVlabs and Hugging Face define it (stages concatenated
             last stage first), a 1x1 fusion with BN and ReLU, dropout, a 1x1 classifier.

Norms: every LayerNorm is a `SeatLayerNorm` (per-domain affine in `seat`), every BatchNorm of
the decoder a `SeatNorm` (per-domain statistics in `sat` and `seat`, per-domain affine in
`seat`). Inputs are the project's model inputs (BGR minus the Caffe mean); the model turns them
into the RGB ImageNet mean/std normalisation the MiT weights were trained with. Dropout and
stochastic depth act only in training and only when the caller passes a `dropout` rng
(`rngs={'dropout': key}`); without one the training pass is deterministic (DAFormer's teacher).
"""

import functools
import math
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seat_jax.models.deeplabv2 import REMAT_CHOICES, compute_dtype
from seat_jax.models.input_norm import to_imagenet_normalised
from seat_jax.models.resize import resize_bilinear
from seat_jax.models.seat_norm import SeatLayerNorm, SeatNorm, check_domain, check_norm_mode

# mmseg's mit_b0..mit_b5 (DAFormer's mix_transformer.py): embedding widths and blocks per stage.
# Every variant has heads (1, 2, 5, 8), reduction ratios (8, 4, 2, 1), MLP ratio 4, q/kv biases.
MIT_VARIANTS = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}
MIT_NUM_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)
PATCH_SIZES = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
TORCH_LN_EPS = 1e-5  # nn.LayerNorm's default: the patch-embedding and reduction norms
DECODERS = ("daformer", "segformer")
# source_stages for this model: 1..4 the encoder stages, 5 the decoder (its BatchNorms).
DECODER_STAGE = 5


def mit_config(variant: str) -> dict[str, tuple[int, ...]]:
  """embed_dims, num_heads, depths and sr_ratios of mmseg's `mit_<variant>` (b0 .. b5)."""
  if variant not in MIT_VARIANTS:
    raise ValueError(f"Unknown MiT variant {variant!r}; choose one of {tuple(MIT_VARIANTS)}.")
  return dict(MIT_VARIANTS[variant], num_heads=MIT_NUM_HEADS, sr_ratios=MIT_SR_RATIOS)


# ---------------------------------------------------------------------------------------------
# Initialisers: the references' own (mix_transformer.py `_init_weights`, mmcv's ConvModule and
# PyTorch's nn.Linear), so a fresh decoder starts as DAFormer's does.


def _fan_out_normal(groups: int = 1) -> Callable:
  """N(0, 2 / fan_out) for an HWIO kernel; fan_out = k * k * out / groups (MiT's convs; mmcv's
  kaiming_init with mode fan_out is this with groups = 1 whatever the grouping)."""
  def init(key, shape, dtype=jnp.float32):
    fan_out = shape[0] * shape[1] * shape[3] // groups
    return math.sqrt(2.0 / fan_out) * jax.random.normal(key, shape, dtype)
  return init


def _torch_linear_uniform(fan_in: int) -> Callable:
  """nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weight and bias alike."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


MIT_LINEAR_INIT = nn.initializers.normal(stddev=0.02)  # timm's trunc_normal_(std=.02)


class Dense(nn.Module):
  """x @ kernel + bias over the last axis; float32 params, computed in `dtype`."""
  features: int
  dtype: Any = jnp.float32
  kernel_init: Callable | None = None
  torch_default_init: bool = False  # nn.Linear's uniform init for kernel and bias

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    fan_in = x.shape[-1]
    if self.torch_default_init:
      kernel_init = bias_init = _torch_linear_uniform(fan_in)
    else:
      kernel_init, bias_init = self.kernel_init or MIT_LINEAR_INIT, nn.initializers.zeros
    kernel = self.param("kernel", kernel_init, (fan_in, self.features), jnp.float32)
    bias = self.param("bias", bias_init, (self.features,), jnp.float32)
    y = lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                        (((x.ndim - 1,), (0,)), ((), ())))
    return y + bias.astype(y.dtype)


class Conv(nn.Module):
  """Square NHWC convolution (grouped when `groups` > 1), HWIO kernel stored float32."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable | None = None
  output_dtype: Any = None  # float32 for logits: cast before the bias is added

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init or _fan_out_normal(self.groups),
                        (k, k, x.shape[-1] // self.groups, self.features), jnp.float32)
    y = lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride),
        padding=((self.padding, self.padding), (self.padding, self.padding)),
        rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    if self.output_dtype is not None:
      y = y.astype(self.output_dtype)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(y.dtype)
    return y


def _stochastic(module: nn.Module, train: bool) -> bool:
  """Dropout and stochastic depth act when training with a `dropout` rng (see the module doc)."""
  return train and module.has_rng("dropout")


def drop_path(module: nn.Module, x: jnp.ndarray, rate: float, train: bool) -> jnp.ndarray:
  """Stochastic depth (timm's DropPath): each sample's branch kept with 1 - rate, scaled up."""
  if rate <= 0.0 or not _stochastic(module, train):
    return x
  keep_prob = 1.0 - rate
  noise = jax.random.uniform(module.make_rng("dropout"), (x.shape[0],) + (1,) * (x.ndim - 1))
  keep = jnp.floor(keep_prob + noise)
  return (x.astype(jnp.float32) / keep_prob * keep).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# The encoder.


class EfficientAttention(nn.Module):
  """Multi-head attention of every token to the `sr_ratio`-reduced tokens (NHWC in and out)."""
  num_heads: int
  sr_ratio: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str) -> jnp.ndarray:
    n, h, w, c = x.shape
    head_dim = c // self.num_heads
    dense = functools.partial(Dense, dtype=self.dtype)
    q = dense(c, name="q")(x).reshape(n, h * w, self.num_heads, head_dim)
    reduced = x
    if self.sr_ratio > 1:
      reduced = Conv(c, self.sr_ratio, stride=self.sr_ratio, dtype=self.dtype, name="sr")(x)
      reduced = self.norm(epsilon=TORCH_LN_EPS, name="norm")(reduced, domain)
    kv = dense(2 * c, name="kv")(reduced).reshape(n, -1, 2, self.num_heads, head_dim)
    k, v = kv[:, :, 0], kv[:, :, 1]
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) * jnp.asarray(head_dim**-0.5, q.dtype)
    attn = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", attn, v).reshape(n, h, w, c)
    return dense(c, name="proj")(out)


class MixFFN(nn.Module):
  """fc1 -> 3x3 depthwise conv (the positional information) -> exact GELU -> fc2."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    y = Conv(self.hidden, 3, padding=1, groups=self.hidden, dtype=self.dtype, name="dwconv")(y)
    y = nn.gelu(y, approximate=False)
    return Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class MiTBlock(nn.Module):
  """Pre-norm transformer block: x + path(attn(norm1 x)), then x + path(ffn(norm2 x))."""
  num_heads: int
  sr_ratio: int
  mlp_ratio: int
  drop_path_rate: float
  norm: Callable[..., nn.Module]
  epsilon: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str, train: bool) -> jnp.ndarray:
    y = self.norm(epsilon=self.epsilon, name="norm1")(x, domain)
    y = EfficientAttention(self.num_heads, self.sr_ratio, self.norm, self.dtype, name="attn")(
        y, domain)
    x = x + drop_path(self, y, self.drop_path_rate, train)
    y = self.norm(epsilon=self.epsilon, name="norm2")(x, domain)
    y = MixFFN(x.shape[-1] * self.mlp_ratio, self.dtype, name="mlp")(y)
    return x + drop_path(self, y, self.drop_path_rate, train)


class PatchEmbed(nn.Module):
  """Overlapping patch embedding: a strided conv (padding kernel // 2), then a LayerNorm."""
  features: int
  patch_size: int
  stride: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str) -> jnp.ndarray:
    x = Conv(self.features, self.patch_size, stride=self.stride, padding=self.patch_size // 2,
             dtype=self.dtype, name="proj")(x)
    return self.norm(epsilon=TORCH_LN_EPS, name="norm")(x, domain)


class MixVisionTransformer(nn.Module):
  """The MiT encoder: four stages' NHWC outputs at strides 4, 8, 16, 32.

  Params as mmseg names them: patch_embed{i}, block{i}_{j} (mmseg's block{i}.{j}), norm{i}.
  """
  embed_dims: Sequence[int]
  num_heads: Sequence[int]
  depths: Sequence[int]
  sr_ratios: Sequence[int]
  mlp_ratio: int = 4
  drop_path_rate: float = 0.1
  layer_norm_eps: float = 1e-6
  norm_mode: str = "seat"
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, stage_domains: Sequence[str], train: bool
               ) -> list[jnp.ndarray]:
    norm = functools.partial(SeatLayerNorm, mode=self.norm_mode)
    # DropPath rates as torch.linspace(0, rate, sum(depths)) (float32, like the reference).
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths), dtype=np.float32)
    # domain and train (arguments 2 and 3, after self and x) shape the graph: static.
    block = nn.remat(MiTBlock, static_argnums=(2, 3)) if self.remat else MiTBlock
    outputs, cursor = [], 0
    for i, (dim, heads, depth, sr) in enumerate(
        zip(self.embed_dims, self.num_heads, self.depths, self.sr_ratios)):
      domain = stage_domains[i]
      x = PatchEmbed(dim, PATCH_SIZES[i], PATCH_STRIDES[i], norm, self.dtype,
                     name=f"patch_embed{i + 1}")(x, domain)
      for j in range(depth):
        x = block(heads, sr, self.mlp_ratio, float(rates[cursor + j]), norm, self.layer_norm_eps,
                  self.dtype, name=f"block{i + 1}_{j}")(x, domain, train)
      cursor += depth
      x = norm(epsilon=self.layer_norm_eps, name=f"norm{i + 1}")(x, domain)
      outputs.append(x)
    return outputs


# ---------------------------------------------------------------------------------------------
# The decoders.


class ConvModule(nn.Module):
  """mmcv's ConvModule with a norm: conv (no bias) -> SEAT BatchNorm -> ReLU."""
  features: int
  kernel_size: int
  norm: Callable[..., nn.Module]
  padding: int = 0
  dilation: int = 1
  groups: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str, train: bool) -> jnp.ndarray:
    y = Conv(self.features, self.kernel_size, padding=self.padding, dilation=self.dilation,
             groups=self.groups, use_bias=False, dtype=self.dtype, kernel_init=_fan_out_normal(),
             name="conv")(x)
    return nn.relu(self.norm(name="bn")(y, domain, train))


class SeparableConvModule(nn.Module):
  """mmcv's DepthwiseSeparableConvModule: a depthwise ConvModule, then a pointwise one."""
  features: int
  dilation: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str, train: bool) -> jnp.ndarray:
    channels = x.shape[-1]
    y = ConvModule(channels, 3, self.norm, padding=self.dilation, dilation=self.dilation,
                   groups=channels, dtype=self.dtype, name="depthwise")(x, domain, train)
    return ConvModule(self.features, 1, self.norm, dtype=self.dtype, name="pointwise")(
        y, domain, train)


def _embed_and_upsample(features: Sequence[jnp.ndarray], width: int, name: str,
                        dtype: Any) -> list[jnp.ndarray]:
  """Each stage linearly embedded (nn.Linear's init), bilinearly resized to stage 1's size."""
  size = features[0].shape[1:3]
  out = []
  for i, f in enumerate(features):
    e = Dense(width, dtype=dtype, torch_default_init=True, name=f"{name}{i}")(f)
    if e.shape[1:3] != size:
      e = resize_bilinear(e, size, align_corners=False)
    out.append(e)
  return out


def _classify(module: nn.Module, x: jnp.ndarray, num_classes: int, rate: float, train: bool,
              name: str, dtype: Any) -> jnp.ndarray:
  """mmseg's cls_seg: channel dropout (Dropout2d), then a 1x1 conv N(0, 0.01) with bias."""
  if rate > 0:
    x = nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not _stochastic(module, train))(x)
  return Conv(num_classes, 1, dtype=dtype, kernel_init=nn.initializers.normal(0.01),
              output_dtype=jnp.float32, name=name)(x)


class DAFormerHead(nn.Module):
  """DAFormer's decoder (daformer_sepaspp): embeddings, separable ASPP fusion, classifier."""
  num_classes: int
  embed_dims: int = 256
  channels: int = 256
  dilations: Sequence[int] = (1, 6, 12, 18)
  dropout: float = 0.1
  norm: Callable[..., nn.Module] = SeatNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], domain: str, train: bool) -> jnp.ndarray:
    x = jnp.concatenate(_embed_and_upsample(features, self.embed_dims, "embed", self.dtype),
                        axis=-1)
    branches = []
    for j, d in enumerate(self.dilations):
      if d == 1:
        branch = ConvModule(self.channels, 1, self.norm, dtype=self.dtype, name=f"aspp{j}")
      else:
        branch = SeparableConvModule(self.channels, d, self.norm, self.dtype, name=f"aspp{j}")
      branches.append(branch(x, domain, train))
    x = ConvModule(self.channels, 3, self.norm, padding=1, dtype=self.dtype, name="bottleneck")(
        jnp.concatenate(branches, axis=-1), domain, train)
    return _classify(self, x, self.num_classes, self.dropout, train, "conv_seg", self.dtype)


class SegFormerHead(nn.Module):
  """SegFormer's all-MLP decoder (NVlabs / Hugging Face: concatenated last stage first)."""
  num_classes: int
  channels: int = 768
  dropout: float = 0.1
  norm: Callable[..., nn.Module] = SeatNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], domain: str, train: bool) -> jnp.ndarray:
    embedded = _embed_and_upsample(features, self.channels, "linear_c", self.dtype)
    x = ConvModule(self.channels, 1, self.norm, dtype=self.dtype, name="linear_fuse")(
        jnp.concatenate(embedded[::-1], axis=-1), domain, train)
    return _classify(self, x, self.num_classes, self.dropout, train, "linear_pred", self.dtype)


# ---------------------------------------------------------------------------------------------
# The segmenter.


class SegFormer(nn.Module):
  """MiT encoder + decoder returning (None, logits at stride 4): one head, no auxiliary one.

  Attributes mirror the model config (`config_defaults.get_model_config`: model.mit.*,
  model.decoder.*, and the shared norm_mode, bn_*, dtype, remat).
  """
  num_classes: int = 19
  embed_dims: Sequence[int] = MIT_VARIANTS["b5"]["embed_dims"]
  num_heads: Sequence[int] = MIT_NUM_HEADS
  depths: Sequence[int] = MIT_VARIANTS["b5"]["depths"]
  sr_ratios: Sequence[int] = MIT_SR_RATIOS
  mlp_ratio: int = 4
  drop_path_rate: float = 0.1
  layer_norm_eps: float = 1e-6
  decoder: str = "daformer"
  decoder_channels: int = 256
  decoder_embed_dims: int = 256
  decoder_dilations: Sequence[int] = (1, 6, 12, 18)
  decoder_dropout: float = 0.1
  norm_mode: str = "seat"
  bn_affine_trainable: bool = True
  bn_train_stats: bool = True
  dtype: Any = "float32"
  remat: str = "none"
  # Logits are resized with half-pixel centres, as mmseg does (DeepLabV2: align_corners=True).
  align_corners: ClassVar[bool] = False

  @nn.compact
  def __call__(self, images: jnp.ndarray, domain: str = "target", train: bool = False,
               source_stages: Sequence[int] = ()) -> tuple[None, jnp.ndarray]:
    """images: NHWC float32 model inputs (BGR minus the Caffe mean).

    domain: 'source' | 'target' (static), or 'mixed' in training (seat_norm.MIXED); train:
    batch statistics and running updates in the decoder's BatchNorms (pass
    `mutable=['batch_stats']`), dropout and stochastic depth with a `dropout` rng;
    source_stages: stages (1..4 encoder, 5 decoder) that use the source norms whatever `domain`
    is (the evaluation-time layer switch). Sows the last stage's output as
    `intermediates/layer4_output` (DAFormer's feature distance reads it).
    """
    self.check_attributes()
    check_domain(domain, allow_mixed=True)
    source_stages = check_source_stages(source_stages)
    if images.ndim != 4:
      raise ValueError(f"SegFormer expects NHWC images (4 dims); got shape {images.shape}.")
    dtype = compute_dtype(self.dtype)

    def stage_domain(stage: int) -> str:
      return "source" if stage in source_stages else domain

    x = to_imagenet_normalised(images)
    features = MixVisionTransformer(
        embed_dims=tuple(self.embed_dims), num_heads=tuple(self.num_heads),
        depths=tuple(self.depths), sr_ratios=tuple(self.sr_ratios), mlp_ratio=self.mlp_ratio,
        drop_path_rate=self.drop_path_rate, layer_norm_eps=self.layer_norm_eps,
        norm_mode=self.norm_mode, dtype=dtype, remat=self.remat == "blocks", name="backbone")(
            x, tuple(stage_domain(s) for s in range(1, 5)), train)
    self.sow("intermediates", "layer4_output", features[-1])
    norm = functools.partial(
        SeatNorm, mode=self.norm_mode, affine_trainable=self.bn_affine_trainable,
        use_batch_stats_in_train=self.bn_train_stats)
    if self.decoder == "daformer":
      head = DAFormerHead(
          self.num_classes, self.decoder_embed_dims, self.decoder_channels,
          tuple(self.decoder_dilations), self.decoder_dropout, norm, dtype, name="decode_head")
    else:
      head = SegFormerHead(self.num_classes, self.decoder_channels, self.decoder_dropout, norm,
                           dtype, name="decode_head")
    return None, head(features, stage_domain(DECODER_STAGE), train)

  def check_attributes(self) -> None:
    """Readable errors for a config the encoder or decoder cannot be built from."""
    check_norm_mode(self.norm_mode)
    compute_dtype(self.dtype)
    lists = {"embed_dims": self.embed_dims, "num_heads": self.num_heads, "depths": self.depths,
             "sr_ratios": self.sr_ratios}
    bad = [f"model.mit.{k}={tuple(v)}" for k, v in lists.items()
           if len(tuple(v)) != 4 or any(int(n) < 1 for n in v)]
    if bad:
      raise ValueError(f"{', '.join(bad)}: each must be four positive numbers, one per MiT "
                       f"stage (MiT-B5: {mit_config('b5')}).")
    uneven = [(d, h) for d, h in zip(self.embed_dims, self.num_heads) if d % h]
    if uneven:
      raise ValueError(f"model.mit.embed_dims must be multiples of model.mit.num_heads; "
                       f"{uneven} are not.")
    if self.decoder not in DECODERS:
      raise ValueError(f"model.decoder.name must be one of {DECODERS}; got {self.decoder!r}.")
    if self.decoder == "segformer" and self.decoder_embed_dims != self.decoder_channels:
      raise ValueError("The segformer decoder embeds and fuses at one width: set "
                       "model.decoder.embed_dims equal to model.decoder.channels.")
    if self.remat not in REMAT_CHOICES:
      raise ValueError(f"model.remat must be one of {REMAT_CHOICES}; got {self.remat!r}.")


def check_source_stages(source_stages: Sequence[int]) -> tuple[int, ...]:
  stages = tuple(int(s) for s in source_stages)
  bad = [s for s in stages if not 1 <= s <= DECODER_STAGE]
  if bad:
    raise ValueError(
        f"source_stages (config eval.source_stages) holds SegFormer stage indices 1..4 (the MiT "
        f"stages) and {DECODER_STAGE} (the decoder); got {stages}, invalid: {bad}.")
  return stages


def build(model_config: Any) -> SegFormer:
  """A SegFormer from the model config (model.mit.*, model.decoder.* and the shared fields)."""
  mit, dec = model_config.mit, model_config.decoder
  model = SegFormer(
      num_classes=int(model_config.num_classes),
      embed_dims=tuple(int(n) for n in mit.embed_dims),
      num_heads=tuple(int(n) for n in mit.num_heads),
      depths=tuple(int(n) for n in mit.depths),
      sr_ratios=tuple(int(n) for n in mit.sr_ratios),
      mlp_ratio=int(mit.mlp_ratio), drop_path_rate=float(mit.drop_path_rate),
      layer_norm_eps=float(mit.layer_norm_eps),
      decoder=str(dec.name), decoder_channels=int(dec.channels),
      decoder_embed_dims=int(dec.embed_dims),
      decoder_dilations=tuple(int(d) for d in dec.dilations),
      decoder_dropout=float(dec.dropout),
      norm_mode=str(model_config.norm_mode),
      bn_affine_trainable=bool(model_config.bn_affine_trainable),
      bn_train_stats=bool(model_config.bn_train_stats),
      dtype=str(model_config.dtype), remat=str(model_config.remat))
  model.check_attributes()
  return model
