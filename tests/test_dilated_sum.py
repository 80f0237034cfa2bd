"""The head's sum of dilated convolutions as one matrix product equals XLA's convolutions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from seat_jax.models import dilated_sum

DILATIONS = (6, 12, 18, 24)


def _convolutions(x, kernels, dilations):
  """The reference, written here: each branch as `lax.conv_general_dilated`, summed."""
  total = 0.0
  for kernel, d in zip(kernels, dilations):
    total = total + lax.conv_general_dilated(
        x, kernel, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
        dimension_numbers=("NHWC", "HWIO", "NHWC")).astype(jnp.float32)
  return total


def _inputs(shape, channels=6, classes=5, branches=4, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(*shape, channels)).astype(np.float32))
  kernels = tuple(jnp.asarray(rng.normal(size=(3, 3, channels, classes)).astype(np.float32))
                  for _ in range(branches))
  return x, kernels


EPS32 = float(np.finfo(np.float32).eps)


def _assert_within_summation_error(got, want, magnitude, terms):
  """|got - want| <= 2 * terms * eps * sum |products| per element: the worst-case float32
  error of a sum of `terms` products, for either side, in any order."""
  np.testing.assert_array_less(np.abs(np.asarray(got) - np.asarray(want)),
                               2 * terms * EPS32 * np.asarray(magnitude) + 1e-30)


@pytest.mark.parametrize("shape,dilations", [
    ((2, 30, 41), DILATIONS),   # every tap reaches inside
    ((1, 9, 20), DILATIONS),    # rows: only dilation 6 reaches inside; columns: 6, 12, 18
    ((3, 1, 1), DILATIONS),     # pooled feature vectors: the centre taps alone
    ((1, 13, 13), (6, 12)),     # AdaptSegNet's two summed branches
])
def test_forward_and_gradients_equal_the_convolutions(shape, dilations):
  x, kernels = _inputs(shape, branches=len(dilations))
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(*shape, 5)).astype(np.float32))

  def forward_and_vjp(fn, x, kernels, cotangent):
    y, vjp = jax.vjp(lambda x, k: fn(x, k, dilations), x, kernels)
    return y, vjp(cotangent)

  got = jax.jit(functools.partial(forward_and_vjp, dilated_sum.dilated_conv_sum))(
      x, kernels, cotangent)
  want = jax.jit(functools.partial(forward_and_vjp, _convolutions))(x, kernels, cotangent)
  # the same sums of products with every factor made positive bound each element's error
  magnitude = forward_and_vjp(_convolutions, jnp.abs(x), tuple(map(jnp.abs, kernels)),
                              jnp.abs(cotangent))
  n, h, w, channels = x.shape
  terms = (len(dilations) * 9 * channels,  # y: taps x input channels
           len(dilations) * 9 * 5,         # dx: taps x classes
           n * h * w)                      # dk: every pixel
  for g, w_, m, t in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(magnitude),
                         (terms[0], terms[1]) + (terms[2],) * len(dilations)):
    _assert_within_summation_error(g, w_, m, t)
  # the matrix-product backward itself, without the platform switch
  got_x, got_k = dilated_sum._gemm_backward(x, kernels, cotangent, dilations)
  _assert_within_summation_error(got_x, want[1][0], magnitude[1][0], terms[1])
  for g, w_, m in zip(got_k, want[1][1], magnitude[1][1]):
    _assert_within_summation_error(g, w_, m, terms[2])


def test_taps_outside_the_map_are_dropped_and_the_centres_merged():
  taps = dilated_sum._taps(DILATIONS, 9, 20)
  offsets = [offset for offset, _ in taps]
  assert (0, 0) in offsets and len(dict(taps)[(0, 0)]) == 4  # one tap for four centres
  assert all(abs(di) < 9 and abs(dj) < 20 for di, dj in offsets)
  # dilation 6: all 9 taps; 12 and 18: only row 0, columns +-d (centre merged); 24: centre
  assert len(offsets) == 9 + 2 + 2
  assert len(dilated_sum._taps(DILATIONS, 100, 100)) == 33


def test_bfloat16_keeps_its_dtype_and_stays_near_float32():
  x, kernels = _inputs((1, 20, 24), channels=32, classes=7)
  kernels = tuple(k * 0.1 for k in kernels)

  def grads(dtype):
    return jax.grad(lambda x, k: jnp.sum(dilated_sum.dilated_conv_sum(x, k, DILATIONS) ** 2),
                    (0, 1))(x.astype(dtype), tuple(k.astype(dtype) for k in kernels))

  got, want = grads(jnp.bfloat16), grads(jnp.float32)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == jnp.bfloat16
    # bf16 operands: ~3 significant digits
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0,
                               atol=0.03 * float(jnp.max(jnp.abs(w))))


def test_cpu_lowering_is_matrix_products_and_other_platforms_keep_convolutions():
  x, kernels = _inputs((1, 30, 41))

  def step(x, kernels):
    return jax.grad(lambda x, k: jnp.sum(dilated_sum.dilated_conv_sum(x, k, DILATIONS) ** 2),
                    (0, 1))(x, kernels)

  traced = jax.jit(step).trace(x, kernels)
  cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
  cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
  assert "stablehlo.convolution" not in cpu and "stablehlo.dot_general" in cpu
  assert "stablehlo.convolution" in cuda
