"""NHWC convolution whose kernel gradient is, on the CPU, one dot per kernel tap.

Why: XLA:CPU (jax 0.10.2) computes a convolution's kernel gradient as another convolution whose
window is the whole feature map. For the ResNet's 3x3 convolutions that ran 1.7-1.9x slower than
PyTorch's oneDNN kernel (33x65 map, 512 -> 512 channels, dilation 4: 147 ms against 84 ms),
while the same gradient written as k*k dots, dy^T @ x shifted by tap (i, j), took 78-88 ms
(`benchmarks/train_step.py --profile_ops`; the whole step: `--variants=reference,xla_kernel_grad`,
benchmarks/RESULTS.md). It loses where the output has few channels (the heads' 19
classes: 101 against 61 ms) or the input few (the RGB stem), so the model uses it only where both
have at least `MIN_CHANNELS`. On any other platform (cuDNN's backward-filter on GPUs) the
gradient is the usual one: `lax.platform_dependent` picks the branch when the step is lowered.
The input gradient is XLA's own in both cases.

`dot_1x1` is the same idea for the 1x1 convolutions (dots over channels): JAX's transpose rule
writes their kernel gradient as dy^T @ x, and XLA:CPU then copies dy, the BN backward's fused
output, into channel-major order, recomputing that fusion with strided writes (the
`copy_bitcast_fusion`s of a profile, ~0.4 s of a 2.2 s 128x256 iteration). Written as x^T @ dy
the copy is of x instead, an activation already in memory: 14.5 against 32 ms for a
33x65 map, 512 -> 2048 channels (benchmarks/RESULTS.md, 2026-12-04). That pays only once the
residual stream is in memory (`materialise`); before, the copy of x recomputed the stream.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

MIN_CHANNELS = 32  # both sides; measured crossover between the dots and XLA's kernel gradient
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def nhwc_conv(x, kernel, stride: int, padding: int, dilation: int):
  """XLA's convolution: NHWC input, HWIO kernel, square stride, padding and dilation."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=_DIMENSIONS)


def kernel_grad_by_taps(x, grad_out, kernel_size: int, stride: int, padding: int,
                        dilation: int):
  """d loss / d kernel [k, k, Ci, Co] (float32) from the input x [N, H, W, Ci] and d loss /
  d output [N, Ho, Wo, Co]: for each tap (i, j), grad_out^T @ (x padded, shifted by
  (i, j) * dilation, strided), contracted over N, Ho and Wo."""
  n, ho, wo, _ = grad_out.shape
  channels = x.shape[-1]
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  taps = []
  for i in range(kernel_size):
    for j in range(kernel_size):
      start = (0, i * dilation, j * dilation, 0)
      limit = (n, start[1] + stride * (ho - 1) + 1, start[2] + stride * (wo - 1) + 1, channels)
      shifted = lax.slice(padded, start, limit, (1, stride, stride, 1))
      taps.append(lax.dot_general(grad_out, shifted, (((0, 1, 2), (0, 1, 2)), ((), ())),
                                   preferred_element_type=jnp.float32))
  kernel_t = jnp.stack(taps).reshape(kernel_size, kernel_size, *taps[0].shape)  # [k, k, Co, Ci]
  return jnp.swapaxes(kernel_t, 2, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x, kernel, stride: int = 1, padding: int = 0, dilation: int = 1):
  """`lax.conv_general_dilated` (NHWC, HWIO, square stride/padding/dilation); same forward."""
  return nhwc_conv(x, kernel, stride, padding, dilation)


def _forward(x, kernel, stride, padding, dilation):
  return nhwc_conv(x, kernel, stride, padding, dilation), (x, kernel)


def _backward(stride, padding, dilation, residuals, grad_out):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: nhwc_conv(x_, kernel, stride, padding, dilation), x)
  (grad_x,) = input_vjp(grad_out)

  def xla_kernel_grad(x, grad_out):
    _, kernel_vjp = jax.vjp(lambda k: nhwc_conv(x, k, stride, padding, dilation), kernel)
    return kernel_vjp(grad_out)[0]

  def tap_kernel_grad(x, grad_out):
    return kernel_grad_by_taps(x, grad_out, kernel.shape[0], stride, padding,
                               dilation).astype(kernel.dtype)

  grad_kernel = lax.platform_dependent(x, grad_out, cpu=tap_kernel_grad,
                                       default=xla_kernel_grad)
  return grad_x, grad_kernel


conv2d.defvjp(_forward, _backward)


def uses_tap_kernel_grad(in_channels: int, out_channels: int, kernel_size: int) -> bool:
  """Whether the model routes a convolution through `conv2d` (see MIN_CHANNELS)."""
  return kernel_size > 1 and min(in_channels, out_channels) >= MIN_CHANNELS


def _dot_channels(x, kernel):
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def dot_1x1(x, kernel):
  """x [..., Ci] @ kernel [Ci, Co]: a 1x1 convolution; same forward and input gradient."""
  return _dot_channels(x, kernel)


def _dot_forward(x, kernel):
  return _dot_channels(x, kernel), (x, kernel)


def _dot_backward(residuals, grad_out):
  x, kernel = residuals
  grad_x = lax.dot_general(grad_out, kernel, (((grad_out.ndim - 1,), (1,)), ((), ())))
  batch_dims = tuple(range(x.ndim - 1))

  def x_transposed(x, grad_out):
    return lax.dot_general(x, grad_out.astype(x.dtype), ((batch_dims, batch_dims), ((), ())))

  def jax_rule(x, grad_out):
    return jax.vjp(lambda k: _dot_channels(x, k), kernel)[1](grad_out)[0]

  grad_kernel = lax.platform_dependent(x, grad_out, cpu=x_transposed, default=jax_rule)
  return grad_x, grad_kernel


dot_1x1.defvjp(_dot_forward, _dot_backward)


def strided_1x1(x, kernel, stride: int):
  """A 1x1 convolution with `stride` (kernel [1, 1, Ci, Co]): on the CPU a dot over channels on
  the strided input (faster there); elsewhere XLA's strided convolution. Why not the dot on a
  GPU: XLA:GPU's Triton GEMM fusion (jax 0.10.2 and 0.11.2) pulls the strided slice into the
  dot's operand and aborts the process ("Check failed: subdim_size_accumulator == dim_size
  (8385 vs. 257)", triton_tiling_propagation.cc) when the forward is recomputed
  (model.remat=blocks); it did so on an H200 (benchmarks/RESULTS.md)."""
  return lax.platform_dependent(
      x, kernel, cpu=lambda x, k: dot_1x1(_strided(x, stride), k[0, 0]),
      default=lambda x, k: nhwc_conv(x, k, stride, 0, 1))


def _strided(x, stride: int):
  """x[:, ::stride, ::stride], its size written as the convolution's, floor((n - 1) / s) + 1, so
  that symbolic shapes (export to several platforms) see the two branches as the same shape."""
  n, h, w, c = x.shape
  limit = (n, stride * ((h - 1) // stride) + 1, stride * ((w - 1) // stride) + 1, c)
  return lax.slice(x, (0, 0, 0, 0), limit, (1, stride, stride, 1))
