"""Models: the segmenters (DeepLab-V2 and SegFormer) with SEAT norms, the discriminator and the
resize; `build_segmenter` picks the segmenter named by `model.name`."""

from typing import Any

import jax

from seat_jax.models import deeplabv2
from seat_jax.models import segformer
from seat_jax.models.deeplabv2 import (
    ASPP_BRANCHES, COMPUTE_DTYPES, REMAT_CHOICES, RESNET101_STAGES, RESNET_VARIANTS, DeepLabV2,
    count_conv_params, head_factory, init_variables, layer4_channels, max_pool_3x3_s2,
    max_pool_3x3_s2_ceil)
from seat_jax.models.discriminator import FCDiscriminator
from seat_jax.models.input_norm import INPUT_NORMALISATIONS
from seat_jax.models.resize import resize_bilinear
from seat_jax.models.seat_norm import DOMAINS, JOINT, NORM_MODES, SeatLayerNorm, SeatNorm
from seat_jax.models.segformer import DECODERS, MIT_VARIANTS, SegFormer, mit_config

# config model.name: the segmenter. deeplabv2 is every preset's default.
MODEL_NAMES = ("deeplabv2", "segformer")


def model_name(model_config: Any) -> str:
  """config model.name; configs written before SegFormer existed have none: DeepLabV2."""
  return str(getattr(model_config, "name", None) or "deeplabv2")


def build_segmenter(model_config: Any):
  """The segmenter `model_config.name` names, from the model config (an ml_collections
  ConfigDict or any object with the fields of `config_defaults.get_model_config`)."""
  name = model_name(model_config)
  if name == "segformer":
    return segformer.build(model_config)
  if name != "deeplabv2":
    raise ValueError(f"model.name must be one of {MODEL_NAMES}; got {name!r}.")
  return deeplabv2.build_segmenter(model_config)


def upsample_logits(model: Any, logits: jax.Array, out_hw) -> jax.Array:
  """Logits resized to `out_hw` the way `model`'s reference does: align_corners=True for the
  Caffe DeepLabV2 (AdaptSegNet and its successors), half-pixel centres for mmseg's models
  (SegFormer, and DeepLabV2 with resnet_variant='v1c')."""
  return resize_bilinear(logits, out_hw, align_corners=getattr(model, "align_corners", True))


__all__ = [
    "ASPP_BRANCHES", "COMPUTE_DTYPES", "DECODERS", "DOMAINS", "INPUT_NORMALISATIONS", "JOINT",
    "MIT_VARIANTS", "MODEL_NAMES", "NORM_MODES", "REMAT_CHOICES", "RESNET101_STAGES",
    "RESNET_VARIANTS", "DeepLabV2", "FCDiscriminator",
    "SeatLayerNorm", "SeatNorm", "SegFormer",
    "build_segmenter", "count_conv_params", "head_factory", "init_variables", "layer4_channels",
    "max_pool_3x3_s2", "max_pool_3x3_s2_ceil", "mit_config", "model_name", "resize_bilinear",
    "upsample_logits",
]
