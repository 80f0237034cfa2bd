"""FDA amplitude swap: checked in the full (two-sided) spectrum, independently of the rfft code."""

import numpy as np
import pytest

from seat_jax import fda


def _images(shape=(32, 48, 3), seed=0):
  rng = np.random.default_rng(seed)
  # Smooth-ish images with a strong low-frequency part, like photos.
  yy, xx = np.mgrid[: shape[0], : shape[1]]
  base = 100 + 60 * np.sin(xx / 7.0)[..., None] + 40 * np.cos(yy / 5.0)[..., None]
  source = np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
  target = np.clip(255 - base * 0.7 + rng.normal(0, 30, shape), 0, 255).astype(np.uint8)
  return source, target


def _window(shape_hw, b):
  """Boolean mask of |ky| <= b and |kx| <= b on the full, unshifted spectrum."""
  ky = np.abs(np.arange(shape_hw[0]) - shape_hw[0] * (np.arange(shape_hw[0]) > shape_hw[0] // 2))
  kx = np.abs(np.arange(shape_hw[1]) - shape_hw[1] * (np.arange(shape_hw[1]) > shape_hw[1] // 2))
  return (ky[:, None] <= b) & (kx[None, :] <= b)


def _reference_centred_np(source, target, beta):
  """The reference's numpy variant, written out: fftshift, swap [c-b, c+b], ifftshift."""
  source = source.astype(np.float64).transpose(2, 0, 1)
  target = target.astype(np.float64).transpose(2, 0, 1)
  fs = np.fft.fftshift(np.fft.fft2(source, axes=(-2, -1)), axes=(-2, -1))
  ft = np.fft.fftshift(np.fft.fft2(target, axes=(-2, -1)), axes=(-2, -1))
  amp_s, pha_s, amp_t = np.abs(fs), np.angle(fs), np.abs(ft)
  h, w = source.shape[-2:]
  b = int(np.floor(min(h, w) * beta))
  ch, cw = h // 2, w // 2
  amp_s[:, ch - b:ch + b + 1, cw - b:cw + b + 1] = amp_t[:, ch - b:ch + b + 1, cw - b:cw + b + 1]
  mixed = np.fft.ifftshift(amp_s * np.exp(1j * pha_s), axes=(-2, -1))
  out = np.fft.ifft2(mixed, axes=(-2, -1))
  return out.real.transpose(1, 2, 0), np.abs(out.imag).max()


def test_half_width_matches_reference_numbers():
  # REFERENCE 7.1: b = 5, 25, 46 for beta 0.01, 0.05, 0.09 at 512x1024.
  assert [fda.low_freq_half_width(512, 1024, beta) for beta in (0.01, 0.05, 0.09)] == [5, 25, 46]
  with pytest.raises(ValueError, match="beta"):
    fda.low_freq_half_width(512, 1024, 0.6)


def test_beta_zero_is_identity():
  source, target = _images()
  out = fda.fda_source_to_target(source, target, 0.0)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, source.astype(np.float32))


@pytest.mark.parametrize("shape", [(32, 48, 3), (31, 45, 3)])
def test_window_takes_target_amplitude_and_keeps_source_phase(shape):
  source, target = _images(shape)
  beta = 0.1
  b = fda.low_freq_half_width(*shape[:2], beta)
  assert b == 3
  out = fda.fda_source_to_target(source, target, beta)
  assert out.shape == shape and out.dtype == np.float32
  f_out = np.fft.fft2(out.astype(np.float64), axes=(0, 1))
  f_src = np.fft.fft2(source.astype(np.float64), axes=(0, 1))
  f_tgt = np.fft.fft2(target.astype(np.float64), axes=(0, 1))
  window = _window(shape[:2], b)
  scale = np.abs(f_src).max()
  # Inside the window: |F_out| = |F_tgt| and arg F_out = arg F_src.
  np.testing.assert_allclose(np.abs(f_out[window]), np.abs(f_tgt[window]), atol=1e-5 * scale)
  src_in = f_src[window]
  strong = np.abs(src_in) > 1e-3 * scale
  np.testing.assert_allclose(np.exp(1j * np.angle(f_out[window][strong])),
                             np.exp(1j * np.angle(src_in[strong])), atol=1e-4)
  # Outside the window the source spectrum is untouched.
  np.testing.assert_allclose(f_out[~window], f_src[~window], atol=1e-5 * scale)
  # The swap did something (the two images differ in their low frequencies).
  assert np.abs(np.abs(f_src[window]) - np.abs(f_tgt[window])).max() > 1e-2 * scale


def test_matches_the_reference_numpy_variant():
  source, target = _images((40, 64, 3), seed=3)
  for beta in (0.01, 0.05, 0.09):  # b = 0 (DC only), 2, 3 (3 / 40 * 40 != 3 in floats)
    expected, imag = _reference_centred_np(source, target, beta)
    assert imag < 1e-6  # the centred window keeps the spectrum Hermitian
    np.testing.assert_allclose(fda.fda_source_to_target(source, target, beta), expected,
                               atol=2e-3)


def test_mismatched_sizes_raise():
  source, _ = _images((32, 48, 3))
  _, target = _images((32, 40, 3))
  with pytest.raises(ValueError, match=r"same \[H, W, C\] shape.*\(32, 48, 3\).*\(32, 40, 3\)"):
    fda.fda_source_to_target(source, target, 0.05)
