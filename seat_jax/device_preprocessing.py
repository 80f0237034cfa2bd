"""Training-batch preprocessing on the accelerator: resize, crop, flip, blur, FDA, BGR minus mean.

With config.data.preprocess_on='device' (the default) the host only decodes the stored PNGs and
draws each example's crop, flip and FDA partner from grain's per-example generator (so a resumed
run sees the same batches); the images travel as uint8 at their stored size and everything else
runs here, jitted and batched, just before the train step. The result reproduces the host path
(`input_pipeline.TrainTransform`, PIL) up to rare one-level differences:

  * images: PIL's BICUBIC is the Keys kernel (a = -0.5) with its support widened by the shrink
    factor (antialiasing) and renormalised at the borders, applied one axis at a time, width
    first, each pass rounded half up and clipped to uint8. `jax.image.scale_and_translate`
    ('cubic', antialias=True) computes the same weights, so doing the same two rounded passes
    matches PIL on all but ~0.02 % of pixels, which differ by one level (float vs PIL's
    fixed-point weights). A random crop is folded into the resize as a translation, so only
    the kept window is computed;
  * labels: PIL's NEAREST source indices are tabulated on the host (`pil_nearest_indices`,
    exact) and gathered here, so labels are identical;
  * FDA: the centred-window variant of `seat_jax.fda`, with jnp FFTs;
  * Gaussian blur (`data.blur_probability`, Toldo et al.'s augmentation): `gaussian_blur`, the
    same float32 function on both paths (numpy on the host), rounded to uint8 levels.

Every input array has static shape (the stored size of the stream's split), so jit compiles
once per stream layout. Cost: the resize is a dense float32 weight-matrix product (precision
HIGHEST), ~32 GFLOP per pair from full-size GTA5 + Cityscapes images, nothing from the
pre-resized builder configs (stored at resize_hw: only the crop is left).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import fda

# Caffe ImageNet mean in B, G, R order (AdaptSegNet IMG_MEAN).
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)

# The keys of one domain's raw host batch (`input_pipeline.create_train_iterator` in device mode).
IMAGE, LABEL = "image", "label"  # uint8 [B, H, W, 3], uint8 [B, h, w] at their stored sizes
CROP = "crop"  # int32 [B, 2]: (top, left) of the crop in the resized frame
FLIP = "flip"  # bool [B]
FDA_IMAGE = "fda_image"  # uint8 [B, Ht, Wt, 3]: the FDA partner at the target's stored size
BLUR = "blur_sigma"  # float32 [B]: each example's Gaussian blur sigma in pixels (0 = none)
# Taps either side of the blur kernel: 3 sigma for the largest sigma drawn (BLUR_MAX_SIGMA).
BLUR_MAX_SIGMA = 1.0  # Toldo et al.: PIL GaussianBlur(radius=random.random())
BLUR_RADIUS = 3


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """What one domain's stream asks of the device; hashable, so jit specialises on it."""

  resize_hw: tuple[int, int]
  crop_hw: tuple[int, int] | None = None
  flip: bool = False
  label_lut: tuple[int, ...] | None = None  # 256 entries: stored id -> label-space id
  fda_beta: float = 0.0
  blur: bool = False  # the raw batch carries BLUR sigmas to apply

  @property
  def out_hw(self) -> tuple[int, int]:
    return tuple(self.crop_hw or self.resize_hw)


def pil_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """The source index of each output sample of PIL's NEAREST resize (int32 [out_size]).

  PIL walks the output with a running float64 sum starting at step / 2 and truncates it; a
  sequential cumulative sum reproduces its rounding exactly (the closed form floor((i + 0.5) *
  step) differs from it at a few sizes).
  """
  step = in_size / out_size
  positions = np.full(out_size, step, np.float64)
  positions[0] = step * 0.5
  return np.minimum(np.cumsum(positions).astype(np.int64), in_size - 1).astype(np.int32)


def _round_to_levels(x: jax.Array) -> jax.Array:
  """PIL's uint8 result of a resampling pass: round half up, clip to 0..255 (kept as float32)."""
  return jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)


def _crop_axis(x: jax.Array, axis: int, out: int, offsets: jax.Array | None) -> jax.Array:
  """The `out` samples of batch `x` along `axis` from each example's offset (None: from 0)."""
  if offsets is None or out == x.shape[axis]:
    return jax.lax.slice_in_dim(x, 0, out, axis=axis)
  return jax.vmap(lambda xi, o: jax.lax.dynamic_slice_in_dim(xi, o, out, axis - 1))(x, offsets)


def _bicubic_axis(x: jax.Array, axis: int, resize: int, out: int,
                  offsets: jax.Array | None) -> jax.Array:
  """Resizes batch `x` along `axis` to `resize` samples and keeps `out` of them from `offsets`."""
  size = x.shape[axis]
  if size == resize:  # nothing to resample: a plain (possibly empty) crop
    return _crop_axis(x, axis, out, offsets)
  scale = jnp.asarray([resize / size], jnp.float32)
  if offsets is None:
    shape = x.shape[:axis] + (out,) + x.shape[axis + 1:]
    y = jax.image.scale_and_translate(x, shape, (axis,), scale, jnp.zeros(1, jnp.float32),
                                      "cubic", antialias=True)
    return _round_to_levels(y)

  def one(xi, offset):
    shape = xi.shape[:axis - 1] + (out,) + xi.shape[axis:]
    # A translation of -offset makes output sample i the resized sample offset + i.
    shift = -offset.astype(jnp.float32)[None]
    return jax.image.scale_and_translate(xi, shape, (axis - 1,), scale, shift, "cubic",
                                         antialias=True)

  return _round_to_levels(jax.vmap(one)(x, offsets))


def resize_crop_images(images: jax.Array, resize_hw, out_hw,
                       offsets: jax.Array | None = None) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 [B, h, w, C] on 0..255 levels: PIL bicubic to `resize_hw`,
  then the `out_hw` window at `offsets` (int [B, 2], top and left; None: the top-left corner).

  Width first, as PIL does, each pass rounded to uint8 levels.
  """
  x = images.astype(jnp.float32)
  tops = lefts = None
  if offsets is not None:
    tops, lefts = offsets[:, 0], offsets[:, 1]
  x = _bicubic_axis(x, 2, resize_hw[1], out_hw[1], lefts)
  return _bicubic_axis(x, 1, resize_hw[0], out_hw[0], tops)


def _nearest_axis(y: jax.Array, axis: int, resize: int, out: int,
                  offsets: jax.Array | None) -> jax.Array:
  size = y.shape[axis]
  if size == resize:  # nothing to resample: a plain (possibly empty) crop
    return _crop_axis(y, axis, out, offsets)
  table = jnp.asarray(pil_nearest_indices(size, resize))
  if offsets is None:
    return jnp.take(y, table[:out], axis=axis)
  return jax.vmap(lambda yi, o: jnp.take(yi, jax.lax.dynamic_slice_in_dim(table, o, out),
                                         axis=axis - 1))(y, offsets)


def resize_crop_labels(labels: jax.Array, resize_hw, out_hw,
                       offsets: jax.Array | None = None) -> jax.Array:
  """[B, H, W] -> [B, h, w]: PIL nearest to `resize_hw`, then the `out_hw` window at `offsets`."""
  tops = lefts = None
  if offsets is not None:
    tops, lefts = offsets[:, 0], offsets[:, 1]
  labels = _nearest_axis(labels, 2, resize_hw[1], out_hw[1], lefts)
  return _nearest_axis(labels, 1, resize_hw[0], out_hw[0], tops)


def _flip(x: jax.Array, flip: jax.Array) -> jax.Array:
  """Mirrors the examples whose `flip` is set (horizontal: axis 2)."""
  return jnp.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)), x[:, :, ::-1], x)


def gaussian_blur(images, sigma, xp=np):
  """Gaussian blur of each image, [B, H, W, C] 0-255 levels -> the same, rounded to levels.

  `sigma` [B] in pixels (0 leaves an image as it is); separable (width, then height) with
  2 * BLUR_RADIUS + 1 normalised float32 taps and edge pixels repeated at the borders. `xp` is
  numpy (the host path) or jax.numpy (the device path): one formula for both. PIL's
  GaussianBlur, which Toldo et al. call, approximates the same Gaussian by three box blurs.
  """
  offsets = xp.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=xp.float32)
  sigma = xp.maximum(xp.asarray(sigma, xp.float32), 1e-3)[:, None]  # 1e-3: a delta in float32
  taps = xp.exp(-0.5 * xp.square(offsets[None, :] / sigma))
  taps = taps / xp.sum(taps, axis=1, keepdims=True)
  out = xp.asarray(images, xp.float32)
  for axis in (2, 1):
    widths = [(0, 0)] * 4
    widths[axis] = (BLUR_RADIUS, BLUR_RADIUS)
    padded = xp.pad(out, widths, mode="edge")
    size = out.shape[axis]
    out = sum(taps[:, k, None, None, None] * xp.take(padded, xp.arange(k, k + size), axis=axis)
              for k in range(2 * BLUR_RADIUS + 1))
  return xp.clip(xp.floor(out + 0.5), 0.0, 255.0)


def fda_source_to_target(source: jax.Array, target: jax.Array, beta: float) -> jax.Array:
  """Batched `seat_jax.fda.fda_source_to_target`: [B, H, W, C] float32 images, same shapes."""
  height, width = source.shape[1:3]
  b = fda.low_freq_half_width(height, width, beta)
  if beta == 0:
    return source
  # The (2b+1) x (2b+1) window around DC in rfft2's layout (rows full, columns half).
  ky = np.rint(np.fft.fftfreq(height) * height)
  kx = np.rint(np.fft.rfftfreq(width) * width)
  window = jnp.asarray((np.abs(ky)[:, None] <= b) & (kx[None, :] <= b))[None, :, :, None]
  source_spec = jnp.fft.rfft2(source, axes=(1, 2))
  target_amp = jnp.abs(jnp.fft.rfft2(target, axes=(1, 2)))
  swapped = target_amp * jnp.exp(1j * jnp.angle(source_spec))
  mixed = jnp.where(window, swapped, source_spec)
  return jnp.fft.irfft2(mixed, s=(height, width), axes=(1, 2)).astype(jnp.float32)


def to_model_input(rgb: jax.Array) -> jax.Array:
  """RGB on the 0-255 scale -> float32 BGR minus the Caffe mean (no std division)."""
  return rgb[..., ::-1].astype(jnp.float32) - jnp.asarray(CAFFE_MEAN_BGR)


def preprocess(raw: Mapping[str, jax.Array], spec: StreamSpec) -> dict[str, jax.Array]:
  """One domain's raw batch -> {'image': float32 [B, h, w, 3], 'label': int32 [B, h, w]}.

  The order is the host path's: resize -> crop -> flip -> blur -> FDA -> BGR minus mean; the
  label (when the batch has one) follows the same crop and flip.
  """
  out_hw = spec.out_hw
  offsets = raw[CROP] if spec.crop_hw else None
  image = resize_crop_images(raw[IMAGE], spec.resize_hw, out_hw, offsets)
  label = None
  if LABEL in raw:
    label = resize_crop_labels(raw[LABEL], spec.resize_hw, out_hw, offsets)
  if spec.flip:
    image = _flip(image, raw[FLIP])
    label = None if label is None else _flip(label, raw[FLIP])
  if spec.blur:
    image = gaussian_blur(image, raw[BLUR], jnp)
  if spec.fda_beta > 0:
    partner = resize_crop_images(raw[FDA_IMAGE], out_hw, out_hw)
    image = fda_source_to_target(image, partner, spec.fda_beta)
  out = {"image": to_model_input(image)}
  if label is not None:
    if spec.label_lut is not None:
      label = jnp.asarray(np.asarray(spec.label_lut, np.uint8))[label]
    out["label"] = label.astype(jnp.int32)
  return out


def preprocess_streams(raw: Mapping[str, Mapping[str, jax.Array]],
                       specs: Mapping[str, StreamSpec]) -> dict[str, dict[str, jax.Array]]:
  """`preprocess` of each domain's raw batch: {domain: raw batch} -> {domain: model batch}."""
  return {domain: preprocess(batch, specs[domain]) for domain, batch in raw.items()}
