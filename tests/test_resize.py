"""resize_bilinear against PyTorch's align_corners=True bilinear interpolation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seat_jax.models import resize_bilinear


def _torch_resize(x_nhwc, out_hw):
  x = torch.tensor(x_nhwc.transpose(0, 3, 1, 2))
  y = torch.nn.functional.interpolate(x, size=tuple(out_hw), mode="bilinear", align_corners=True)
  return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("in_hw, out_hw", [
    ((9, 17), (65, 129)),    # stride-8 logits up to input size (non-square)
    ((65, 129), (512, 1024)),
    ((40, 30), (13, 7)),     # downsampling both axes
    ((12, 20), (30, 8)),     # up one axis, down the other
    ((7, 11), (7, 23)),      # one axis unchanged
    ((5, 6), (1, 1)),        # single output pixel
])
def test_matches_torch_align_corners_true(in_hw, out_hw):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  y = jax.jit(resize_bilinear, static_argnums=1)(jnp.asarray(x), out_hw)
  assert y.shape == (2, *out_hw, 3)
  np.testing.assert_allclose(y, _torch_resize(x, out_hw), rtol=1e-6, atol=2e-6)


def test_differs_from_half_pixel_resize():
  """Guards against silently using jax.image.resize (align_corners=False)."""
  x = np.random.default_rng(1).normal(size=(1, 9, 17, 2)).astype(np.float32)
  half_pixel = jax.image.resize(jnp.asarray(x), (1, 65, 129, 2), "bilinear")
  assert np.abs(np.asarray(resize_bilinear(jnp.asarray(x), (65, 129)) - half_pixel)).max() > 1e-2


def test_corners_are_exact():
  x = np.random.default_rng(2).normal(size=(1, 9, 17, 4)).astype(np.float32)
  y = np.asarray(resize_bilinear(jnp.asarray(x), (65, 129)))
  for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
    np.testing.assert_array_equal(y[0, i, j], x[0, i, j])


def test_gradient_is_finite_and_conserves_mass():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 9, 17, 2)), jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(resize_bilinear(v, (33, 65))))(x)
  assert np.all(np.isfinite(grad))
  # Each output pixel's weights sum to 1, so the summed gradient counts the output pixels.
  np.testing.assert_allclose(np.sum(grad), 33 * 65 * 2, rtol=1e-5)


def test_bfloat16_in_bfloat16_out():
  x = jnp.ones((1, 5, 6, 2), jnp.bfloat16)
  y = resize_bilinear(x, (9, 11))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), 1.0)


def test_bad_input_is_explained():
  with pytest.raises(ValueError, match="NHWC"):
    resize_bilinear(jnp.ones((5, 6, 2)), (3, 3))
  with pytest.raises(ValueError, match="positive"):
    resize_bilinear(jnp.ones((1, 5, 6, 2)), (0, 3))


@pytest.mark.parametrize("in_hw, out_hw", [((9, 17), (65, 129)), ((40, 30), (13, 7)),
                                           ((5, 6), (1, 1))])
def test_symbolic_sizes_give_the_static_weights(in_hw, out_hw):
  """Under jax.export with symbolic height and width (seat_jax.export), the weights are built on
  the device; they equal the host-built ones."""
  from jax import export  # pylint: disable=g-import-not-at-top
  from seat_jax.models import resize  # pylint: disable=g-import-not-at-top
  for i, o in zip(in_hw, out_hw):
    np.testing.assert_array_equal(resize.symbolic_interpolation_matrix(i, o),
                                  resize.interpolation_matrix(i, o))
  h, w, oh, ow = export.symbolic_shape("h, w, oh, ow")
  exported = export.export(jax.jit(lambda x, o: resize_bilinear(x, o.shape)))(
      jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32), jax.ShapeDtypeStruct((oh, ow), jnp.int8))
  x = np.random.default_rng(4).normal(size=(2, *in_hw, 3)).astype(np.float32)
  got = exported.call(x, np.zeros(out_hw, np.int8))
  np.testing.assert_allclose(got, resize_bilinear(jnp.asarray(x), out_hw), rtol=1e-6, atol=1e-6)
