"""Models: the DeepLab-V2 segmenter with SEAT norms, the discriminator and the resize."""

from seat_jax.models.deeplabv2 import (
    ASPP_BRANCHES, COMPUTE_DTYPES, REMAT_CHOICES, RESNET101_STAGES, DeepLabV2,
    build_segmenter, count_conv_params, head_factory, init_variables, layer4_channels,
    max_pool_3x3_s2_ceil)
from seat_jax.models.discriminator import FCDiscriminator
from seat_jax.models.resize import resize_bilinear
from seat_jax.models.seat_norm import DOMAINS, NORM_MODES, SeatNorm

__all__ = [
    "ASPP_BRANCHES", "COMPUTE_DTYPES", "DOMAINS", "NORM_MODES", "REMAT_CHOICES",
    "RESNET101_STAGES", "DeepLabV2", "FCDiscriminator", "SeatNorm",
    "build_segmenter", "count_conv_params", "head_factory", "init_variables", "layer4_channels",
    "max_pool_3x3_s2_ceil",
    "resize_bilinear",
]
