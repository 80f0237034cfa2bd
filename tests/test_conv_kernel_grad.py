"""The CPU kernel gradient by tap dots equals XLA's convolution gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from seat_jax.models import conv_kernel_grad


def _xla_conv(x, kernel, stride, padding, dilation):
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel_size,stride,padding,dilation,shape", [
    (3, 1, 1, 1, (2, 9, 11)),   # layer1/2 3x3
    (3, 1, 2, 2, (1, 9, 11)),   # layer3: dilation 2
    (3, 1, 4, 4, (2, 7, 6)),    # layer4: dilation 4, taps reaching past the map
    (3, 2, 1, 1, (2, 10, 13)),  # strided 3x3 (V1c), odd output edge
    (7, 2, 3, 1, (1, 12, 12)),  # 7x7 stem geometry
])
def test_tap_gradients_equal_xla_convolution_gradients(kernel_size, stride, padding, dilation,
                                                       shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(*shape, 5)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 5, 4)).astype(np.float32))

  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, stride, padding, dilation)))

  got = jax.jit(jax.value_and_grad(loss(conv_kernel_grad.conv2d), (0, 1)))(x, kernel)
  want = jax.jit(jax.value_and_grad(loss(_xla_conv), (0, 1)))(x, kernel)
  np.testing.assert_array_equal(got[0], want[0])  # the same forward
  np.testing.assert_array_equal(got[1][0], want[1][0])  # the same input gradient (XLA's)
  # kernel gradient: sums over N*Ho*Wo <= 100 products in another order; float32 rounding
  scale = float(jnp.max(jnp.abs(want[1][1])))
  np.testing.assert_allclose(got[1][1], want[1][1], rtol=0, atol=1e-5 * scale)
  # and the tap formula itself, without the platform switch
  grad_out = jnp.cos(_xla_conv(x, kernel, stride, padding, dilation))  # d sum(sin y) / dy
  taps = conv_kernel_grad.kernel_grad_by_taps(x, grad_out, kernel_size, stride, padding,
                                              dilation)
  np.testing.assert_allclose(taps, want[1][1], rtol=0, atol=1e-5 * scale)


def test_bfloat16_kernel_gradient_keeps_its_dtype_and_accumulates_in_float32():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 12, 12, 64)).astype(np.float32)
  kernel = (rng.normal(size=(3, 3, 64, 32)) * 0.1).astype(np.float32)

  def kernel_grad(conv, dtype):
    return jax.grad(lambda k: jnp.sum(conv(jnp.asarray(x, dtype), k, 1, 2, 2).astype(
        jnp.float32) ** 2))(jnp.asarray(kernel, dtype))

  got = kernel_grad(conv_kernel_grad.conv2d, jnp.bfloat16)
  assert got.dtype == jnp.bfloat16
  want = kernel_grad(_xla_conv, jnp.float32)
  # bf16 inputs and output gradient: ~3 significant digits; the sum itself is float32
  np.testing.assert_allclose(np.asarray(got, np.float32), want,
                             rtol=0, atol=0.02 * float(jnp.max(jnp.abs(want))))


def test_only_wide_kernels_take_the_tap_gradient():
  assert conv_kernel_grad.uses_tap_kernel_grad(256, 256, 3)
  assert conv_kernel_grad.uses_tap_kernel_grad(32, 64, 3)  # V1c stem conv3
  assert not conv_kernel_grad.uses_tap_kernel_grad(3, 64, 7)  # RGB stem
  assert not conv_kernel_grad.uses_tap_kernel_grad(2048, 19, 3)  # heads: 19 classes
  assert not conv_kernel_grad.uses_tap_kernel_grad(256, 256, 1)  # 1x1: already a dot


def test_dot_1x1_gradients_equal_autodiff_of_the_dot():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 5, 7, 12)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(12, 20)).astype(np.float32))
  cotangent = jnp.asarray(rng.normal(size=(2, 5, 7, 20)).astype(np.float32))

  def dot(x, k):
    return lax.dot_general(x, k, (((3,), (0,)), ((), ())))

  got_y, got_vjp = jax.vjp(conv_kernel_grad.dot_1x1, x, kernel)
  want_y, want_vjp = jax.vjp(dot, x, kernel)
  np.testing.assert_array_equal(got_y, want_y)
  got, want = jax.jit(got_vjp)(cotangent), jax.jit(want_vjp)(cotangent)
  np.testing.assert_array_equal(got[0], want[0])  # input gradient: the same dot
  # kernel gradient: x^T dy instead of (dy^T x)^T, 70 products per entry in another order
  magnitude = jax.vjp(dot, jnp.abs(x), jnp.abs(kernel))[1](jnp.abs(cotangent))[1]
  eps = float(np.finfo(np.float32).eps)
  np.testing.assert_array_less(np.abs(got[1] - want[1]), 2 * 70 * eps * magnitude + 1e-30)
  bf16 = jax.grad(lambda k: jnp.sum(conv_kernel_grad.dot_1x1(
      x.astype(jnp.bfloat16), k).astype(jnp.float32)))(kernel.astype(jnp.bfloat16))
  assert bf16.dtype == jnp.bfloat16


def test_strided_1x1_is_the_strided_convolution_on_every_platform():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 12)).astype(np.float32))  # odd sizes: ceil(n / 2)
  kernel = jnp.asarray(rng.normal(size=(1, 1, 12, 20)).astype(np.float32))
  cotangent = jnp.asarray(rng.normal(size=(2, 5, 6, 20)).astype(np.float32))
  got_y, got_vjp = jax.vjp(lambda x, k: conv_kernel_grad.strided_1x1(x, k, 2), x, kernel)
  want_y, want_vjp = jax.vjp(lambda x, k: _xla_conv(x, k, 2, 0, 1), x, kernel)
  eps = float(np.finfo(np.float32).eps)
  # 12 products per output (60 per kernel entry) summed in another order than the convolution's
  y_scale = _xla_conv(jnp.abs(x), jnp.abs(kernel), 2, 0, 1)
  np.testing.assert_array_less(np.abs(got_y - want_y), 2 * 12 * eps * y_scale + 1e-30)
  got, want = got_vjp(cotangent), want_vjp(cotangent)
  scale = jax.vjp(lambda x, k: _xla_conv(x, k, 2, 0, 1), jnp.abs(x), jnp.abs(kernel))[1](
      jnp.abs(cotangent))
  for g, w, s in zip(got, want, scale):
    np.testing.assert_array_less(np.abs(g - w), 2 * 60 * eps * s + 1e-30)
  # A GPU program holds XLA's strided convolution and no dot: XLA:GPU aborted when its Triton
  # GEMM fusion took the strided slice of the dot form (benchmarks/RESULTS.md, H200).
  step = jax.jit(lambda x, k: jax.vjp(lambda x, k: conv_kernel_grad.strided_1x1(x, k, 2),
                                      x, k)[1](cotangent))
  for platform, convolutions, dots in (("cuda", 2, 0), ("cpu", 0, 2)):
    text = step.trace(x, kernel).lower(lowering_platforms=(platform,)).as_text()
    assert (text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")) == (
        convolutions, dots), platform
