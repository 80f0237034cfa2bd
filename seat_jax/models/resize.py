"""Bilinear resize with PyTorch's align_corners=True or False semantics.

The DeepLab references upsample logits with align_corners=True, which costs about 1.5 mIoU if
missed (AdaptSegNet issue #11); mmsegmentation (DAFormer, MIC, SegFormer) uses half-pixel
centres (align_corners=False) without antialiasing, which `jax.image.resize` does not promise
for downsampling. Bilinear interpolation is separable, so the resize is two small matrix
products with constant interpolation matrices built on the host: cheap, differentiable and fine
under `jit`. Under `jax.export` with symbolic sizes (seat_jax.export: any image height and
width) the same weights are computed on the device instead, with the same float32 arithmetic.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def interpolation_matrix(in_size: int, out_size: int, align_corners: bool = True) -> np.ndarray:
  """(out_size, in_size) weights of PyTorch's bilinear interpolation along one axis.

  align_corners=True: output i samples input position i * (in - 1) / (out - 1).
  align_corners=False: position (i + 0.5) * in / out - 0.5, clamped at 0 (half-pixel centres).
  Positions and fractions are computed in float32 the way PyTorch does (scale rounded to
  float32 first), so the weights agree with it to the last bit rather than to ~1e-5.
  """
  index = np.arange(out_size, dtype=np.float32)
  if align_corners:
    if out_size == 1:
      scale = np.float32(0.0)  # PyTorch's scale is 0 here: the output reads pixel 0
    else:
      scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    positions = scale * index
  else:
    scale = np.float32(in_size) / np.float32(out_size)
    positions = np.maximum(scale * (index + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
  low = np.clip(np.floor(positions).astype(np.int64), 0, in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = np.clip(positions - low.astype(np.float32), 0.0, 1.0).astype(np.float64)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, low), 1.0 - frac)
  np.add.at(matrix, (rows, high), frac)
  return matrix.astype(np.float32)


def _is_symbolic(size: Any) -> bool:
  return jax.export.is_symbolic_dim(size)


def symbolic_interpolation_matrix(in_size: Any, out_size: Any,
                                  align_corners: bool = True) -> jnp.ndarray:
  """`interpolation_matrix` for sizes known only at run time (jax.export symbolic dimensions).

  The same float32 positions and fractions, so the weights equal the host-built ones; each
  row's two weights land on their columns through comparisons with an iota instead of a scatter.
  """
  in_f = jnp.asarray(in_size, jnp.float32)
  out_f = jnp.asarray(out_size, jnp.float32)
  index = lax.iota(jnp.float32, out_size)
  if align_corners:
    scale = jnp.where(out_f > 1, (in_f - 1) / jnp.maximum(out_f - 1, 1), jnp.float32(0))
    positions = scale * index
  else:
    positions = jnp.maximum((in_f / out_f) * (index + 0.5) - 0.5, 0.0)
  last = jnp.asarray(in_size, jnp.int32) - 1
  low = jnp.clip(jnp.floor(positions).astype(jnp.int32), 0, last)
  high = jnp.minimum(low + 1, last)
  frac = jnp.clip(positions - low.astype(jnp.float32), 0.0, 1.0)
  columns = lax.iota(jnp.int32, in_size)[None, :]
  return (jnp.where(columns == low[:, None], 1.0 - frac[:, None], 0.0)
          + jnp.where(columns == high[:, None], frac[:, None], 0.0)).astype(jnp.float32)


def _matrix(in_size: Any, out_size: Any, align_corners: bool) -> jnp.ndarray:
  if _is_symbolic(in_size) or _is_symbolic(out_size):
    return symbolic_interpolation_matrix(in_size, out_size, align_corners)
  return jnp.asarray(interpolation_matrix(in_size, out_size, align_corners))


def _resize_height(x: jnp.ndarray, out_h: Any, align_corners: bool) -> jnp.ndarray:
  return jnp.einsum("oh,nhwc->nowc", _matrix(x.shape[1], out_h, align_corners), x,
                    precision=lax.Precision.HIGHEST)


def _resize_width(x: jnp.ndarray, out_w: Any, align_corners: bool) -> jnp.ndarray:
  return jnp.einsum("ow,nhwc->nhoc", _matrix(x.shape[2], out_w, align_corners), x,
                    precision=lax.Precision.HIGHEST)


def resize_bilinear(x: jnp.ndarray, out_hw: Sequence[int], align_corners: bool = True
                    ) -> jnp.ndarray:
  """Resizes NHWC `x` to `out_hw` = (height, width) like PyTorch's bilinear interpolation.

  Equals `torch.nn.functional.interpolate(mode='bilinear', align_corners=...)` with a `size`
  for up- and downsampling (no antialiasing, as in PyTorch). `out_hw` must be static, or
  symbolic dimensions under jax.export. Computed in float32 (HIGHEST matmul precision, so GPUs
  do not round the weights to TF32); returns the input dtype.
  """
  if x.ndim != 4:
    raise ValueError(f"resize_bilinear expects an NHWC array (4 dims); got shape {x.shape}.")
  in_dtype = x.dtype
  in_h, in_w = x.shape[1], x.shape[2]
  if any(_is_symbolic(s) for s in (*out_hw, in_h, in_w)):
    # Costs cannot be compared on symbols: width first, the cheaper order for upsampling
    # landscape images (the static path's choice for them).
    y = _resize_height(_resize_width(x.astype(jnp.float32), out_hw[1], align_corners),
                      out_hw[0], align_corners)
    return y.astype(in_dtype)
  out_h, out_w = (int(s) for s in out_hw)
  if out_h < 1 or out_w < 1:
    raise ValueError(f"resize_bilinear: out_hw must be two positive sizes; got {tuple(out_hw)}.")
  y = x.astype(jnp.float32)
  # Contract the axis first whose product is cheaper; an unchanged axis is an identity, skipped.
  height_first_cost = out_h * in_h * in_w + out_h * in_w * out_w
  width_first_cost = in_h * in_w * out_w + out_h * in_h * out_w
  steps = [(_resize_height, out_h, in_h), (_resize_width, out_w, in_w)]
  if width_first_cost < height_first_cost:
    steps.reverse()
  for resize_axis, out_size, in_size in steps:
    if out_size != in_size:
      y = resize_axis(y, out_size, align_corners)
  return y.astype(in_dtype)
