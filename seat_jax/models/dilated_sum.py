"""The DeepLab-V2 head's sum of dilated 3x3 convolutions, as one matrix product on the CPU.

Why: the head maps 1024 or 2048 channels to 19 classes through four 3x3 convolutions (dilation
6, 12, 18, 24, padding = dilation, stride 1). XLA:CPU (jax 0.10.2) runs each as a convolution
with only 19 output channels, which uses the cores poorly, and its kernel gradient as a
convolution over the whole map. The four convolutions are 36 taps, 33 distinct offsets (the
four centres coincide), and each tap is a 1x1 product shifted in space, so

  forward   z = x @ W           W = [Ci, taps * Co], one GEMM; y = sum of z's tap slices,
                                each shifted by its offset (zero outside the map);
  backward  D = dy shifted back by each tap's offset, side by side [.., taps * Co];
            dx = D @ W^T and dW = D^T @ x, two GEMMs.

Only 19-channel maps are shifted, never x. Taps that lie wholly outside the map (small maps,
e.g. pooled feature vectors) are dropped. On other platforms (cuDNN) the sum is the usual
four convolutions and their gradient: `lax.platform_dependent` picks when the step is lowered,
and both branches keep the same residuals (x and the kernels). Measured in
benchmarks/RESULTS.md (2026-12-04, "the head as one GEMM").
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from seat_jax.models import conv_kernel_grad


def _reaches_inside(offset: int, size) -> bool:
  # a symbolic size (jax.export) could be any: keep the tap, it reads zeros where it is outside
  return not isinstance(size, int) or abs(offset) < size


def _taps(dilations: Sequence[int], height, width):
  """[(di, dj), [(branch, a, b), ...]] for every offset that reaches inside an H x W map."""
  taps = {}
  for branch, d in enumerate(dilations):
    for a in range(3):
      for b in range(3):
        offset = ((a - 1) * d, (b - 1) * d)
        if _reaches_inside(offset[0], height) and _reaches_inside(offset[1], width):
          taps.setdefault(offset, []).append((branch, a, b))
  return list(taps.items())


def _padded(z, offsets):
  """z padded with zeros on H and W by the largest offset: (padded, pad_h, pad_w)."""
  pad_h = max(abs(di) for di, _ in offsets)
  pad_w = max(abs(dj) for _, dj in offsets)
  return jnp.pad(z, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0))), pad_h, pad_w


def _shift_sum(z, offsets, channels: int):
  """sum over t of z[..., t*C:(t+1)*C] read at p + offset_t (zero outside), for [N, H, W, T*C]."""
  _, height, width, _ = z.shape
  padded, pad_h, pad_w = _padded(z, offsets)
  total = None
  for t, (di, dj) in enumerate(offsets):
    part = padded[:, pad_h + di:pad_h + di + height, pad_w + dj:pad_w + dj + width,
                  t * channels:(t + 1) * channels]
    total = part if total is None else total + part
  return total


def _shift_stack(dy, offsets):
  """[N, H, W, T*C]: dy read at p - offset_t (zero outside), side by side for every tap."""
  _, height, width, _ = dy.shape
  padded, pad_h, pad_w = _padded(dy, offsets)
  return jnp.concatenate([
      padded[:, pad_h - di:pad_h - di + height, pad_w - dj:pad_w - dj + width, :]
      for di, dj in offsets], axis=-1)


def _tap_matrix(kernels, taps):
  """W [Ci, T*Co]: per tap the sum (in float32) of the kernel slices that share its offset."""
  columns = [sum(kernels[j][a, b].astype(jnp.float32) for j, a, b in members)
             for _, members in taps]
  return jnp.concatenate(columns, axis=-1).astype(kernels[0].dtype)


def _gemm_forward(x, kernels, dilations):
  taps = _taps(dilations, x.shape[1], x.shape[2])
  z = lax.dot_general(x, _tap_matrix(kernels, taps), (((3,), (0,)), ((), ())))
  return _shift_sum(z.astype(jnp.float32), [offset for offset, _ in taps],
                    kernels[0].shape[-1])


def _gemm_backward(x, kernels, grad_out, dilations):
  taps = _taps(dilations, x.shape[1], x.shape[2])
  stacked = _shift_stack(grad_out, [offset for offset, _ in taps]).astype(x.dtype)
  grad_x = lax.dot_general(stacked, _tap_matrix(kernels, taps), (((3,), (1,)), ((), ())))
  grad_w = lax.dot_general(stacked, x, (((0, 1, 2), (0, 1, 2)), ((), ())))  # [T*Co, Ci]
  classes = kernels[0].shape[-1]
  grad_kernels = [jnp.zeros(k.shape, grad_w.dtype) for k in kernels]
  for t, (_, members) in enumerate(taps):
    tap_grad = grad_w[t * classes:(t + 1) * classes].T
    for j, a, b in members:
      grad_kernels[j] = grad_kernels[j].at[a, b].set(tap_grad)
  return grad_x, tuple(g.astype(k.dtype) for g, k in zip(grad_kernels, kernels))


def _conv_forward(x, kernels, dilations):
  total = None
  for kernel, d in zip(kernels, dilations):
    y = conv_kernel_grad.nhwc_conv(x, kernel, 1, d, d).astype(jnp.float32)
    total = y if total is None else total + y
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dilated_conv_sum(x, kernels, dilations):
  """sum over j of conv(x, kernels[j], dilation = padding = dilations[j]), float32 out.

  x [N, H, W, Ci]; kernels a tuple of [3, 3, Ci, Co] in x's dtype; dilations static ints.
  """
  return _forward(x, kernels, dilations)[0]


def _forward(x, kernels, dilations):
  y = lax.platform_dependent(
      x, kernels, cpu=functools.partial(_gemm_forward, dilations=dilations),
      default=functools.partial(_conv_forward, dilations=dilations))
  return y, (x, kernels)


def _backward(dilations, residuals, grad_out):
  x, kernels = residuals

  def convolutions(x, kernels, grad_out):
    return jax.vjp(functools.partial(_conv_forward, dilations=dilations), x, kernels)[1](
        grad_out)

  return lax.platform_dependent(
      x, kernels, grad_out, cpu=functools.partial(_gemm_backward, dilations=dilations),
      default=convolutions)


dilated_conv_sum.defvjp(_forward, _backward)
