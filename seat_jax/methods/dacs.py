"""DACS (Tranheden et al., WACV 2021): mean teacher, ClassMix and strong augmentation in pure JAX.

DACS trains a student on source images and on "mixed" images: half of the classes of a source
image (its pixels, image and label) pasted onto a target image whose remaining pixels carry the
EMA teacher's pseudo-labels. DAFormer and MIC (`daformer.py`, `mic.py`) keep this self-training
core, so the pieces here are shared by the three methods; each is a pure function of explicit
`jax.random` keys with static shapes, so the whole step jits.

Facts follow vikolss/DACS (trainUDA.py, utils/transformsgpu.py, utils/transformmasks.py,
utils/loss.py), lhoyer/DAFormer (mmseg/models/uda/dacs.py, mmseg/models/utils/dacs_transforms.py)
and kornia 0.5 (ColorJitter, GaussianBlur2d, which both repositories call). Where DACS and
DAFormer differ it is said at the function. Images are model inputs: float32 NHWC, BGR minus the
Caffe mean on the 0-255 scale; labels int [N, H, W] with 255 = ignore.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seat_jax import batch as batch_keys
from seat_jax.device_preprocessing import CAFFE_MEAN_BGR
from seat_jax.labels import IGNORE_ID
from seat_jax.methods import base
from seat_jax.methods import mic
from seat_jax.models import seat_norm

# Teacher EMA: DACS hard-codes 0.99 (trainUDA.py); DAFormer's final recipe and MIC use 0.999.
DACS_ALPHA = 0.99
DAFORMER_ALPHA = 0.999
# DACS scores the student on Cityscapes val with the labels nearest-resized to 512x1024
# (trainUDA.py evaluate, evaluateUDA.py); DAFormer and MIC score full-size labels.
EVAL_LABEL_HW = (512, 1024)
# A target pixel counts as confident when its teacher max-probability is >= this (all three).
PSEUDO_THRESHOLD = 0.968
# Colour-jitter strength s: brightness, contrast and saturation factors in [1 - s, 1 + s], hue
# shift in [-s, s] turns. DACS calls transformsgpu.colorJitter with its default s = 0.25;
# DAFormer and MIC pass color_jitter_strength = 0.2.
DACS_JITTER_STRENGTH = 0.25
DAFORMER_JITTER_STRENGTH = 0.2
# Both jitter when a uniform draw exceeds 0.2 (DACS's literal, DAFormer's color_jitter_p), i.e.
# with probability 0.8; both blur when a uniform draw exceeds 0.5, i.e. with probability 0.5.
JITTER_PROBABILITY = 0.8
BLUR_PROBABILITY = 0.5
# Blur sigma ~ U(0.15, 1.15) (np.random.uniform), drawn for each mixed image.
BLUR_SIGMA_RANGE = (0.15, 1.15)
# kornia's rgb_to_hsv: S = (max - min) / (max + eps).
_HSV_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Mean teacher.


def ema_update(teacher, student, step, alpha: float):
  """Leaf-wise teacher <- a * teacher + (1 - a) * student with a = min(1 - 1/(step + 1), alpha).

  Works on any pytree (params, batch_stats, ...); non-float leaves are copied from `student`.
  DACS calls this after the optimizer step of iteration `step` (0-based), so at step 0 a = 0 and
  the teacher becomes the student; the early steps take the true running average until the
  exponential one is more accurate. DAFormer (and MIC's EMATeacher) use the same formula
  alpha_t = min(1 - 1/(iter + 1), alpha): the teacher is a copy of the student at local_iter 0
  and is updated at the start of each later iteration k >= 1 with alpha_t(k). Both references
  average `module.parameters()` only (not BatchNorm buffers); DACS runs its teacher in train mode,
  so its BN uses batch statistics. Whether to pass batch_stats is the caller's choice.
  """
  step = jnp.asarray(step, jnp.float32)
  a = jnp.minimum(1.0 - 1.0 / (step + 1.0), jnp.float32(alpha))

  def update(t, s):
    t, s = jnp.asarray(t), jnp.asarray(s)
    if not jnp.issubdtype(t.dtype, jnp.inexact):
      return s
    mixed = a * t.astype(jnp.float32) + (1.0 - a) * s.astype(jnp.float32)
    return mixed.astype(t.dtype)

  return jax.tree.map(update, teacher, student)


# ---------------------------------------------------------------------------------------------
# ClassMix.


def _choose_half(key, present):
  """ceil(n / 2) of the n present slots, uniformly without replacement (np.random.choice)."""
  n = jnp.sum(present.astype(jnp.int32))
  k = (n + n % 2) // 2
  # A uniformly random order of the present slots: random scores, absent slots last.
  scores = jnp.where(present, jax.random.uniform(key, present.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(scores))
  return present & (rank < k)


# config mix.classmix_classes: where ClassMix's candidate classes come from.
CLASSMIX_CLASSES = ("image", "batch")


def class_mix_masks(key, source_labels, num_classes: int, count_ignore: bool = True,
                    classes_from: str = "image"):
  """DACS ClassMix masks: bool [N, H, W], True where the source pixel is taken.

  Per image, the present classes are `torch.unique(label)`, which in DACS includes the ignore id
  255 whenever the label has ignore pixels (the line that drops it is commented out), so ignore
  counts as one class and may be pasted (its pixels stay ignored in the mixed label). Of the n
  present classes, int((n + n % 2) / 2) = ceil(n / 2) are chosen uniformly without replacement
  (np.random.choice). An all-ignore label has n = 1 and pastes the whole (ignored) source image.
  `count_ignore=False` drops 255 from the candidates instead. `classes_from="batch"` is
  DAFormer's and MIC's `get_class_masks`: the candidates are `torch.unique` of the whole batch
  of labels, each image draws its own half of that union, and a chosen class absent from the
  image pastes nothing (so an image may paste none or all of its pixels). Labels must lie in
  [0, num_classes) or be 255.
  """
  if classes_from not in CLASSMIX_CLASSES:
    raise ValueError(f"classes_from must be one of {CLASSMIX_CLASSES}; got {classes_from!r}")
  labels = jnp.asarray(source_labels)
  batch = labels.shape[0]
  slots = num_classes + 1  # slot num_classes stands for the ignore id
  slot = jnp.where(labels == IGNORE_ID, num_classes, labels).astype(jnp.int32).reshape(batch, -1)
  present = jnp.zeros((batch, slots), jnp.bool_).at[
      jnp.arange(batch)[:, None], slot].set(True, mode="drop")
  if not count_ignore:
    present = present.at[:, num_classes].set(False)
  if classes_from == "batch":
    present = jnp.broadcast_to(jnp.any(present, axis=0), present.shape)
  chosen = jax.vmap(_choose_half)(jax.random.split(key, batch), present)
  return jnp.take_along_axis(chosen, slot, axis=1, mode="clip").reshape(labels.shape)


def mix(mask, source, target):
  """Source where `mask` [N, H, W] is True, else target; images [N, H, W, C] or maps [N, H, W]."""
  mask = jnp.asarray(mask, jnp.bool_)
  source, target = jnp.asarray(source), jnp.asarray(target)
  if source.ndim == mask.ndim + 1:
    mask = mask[..., None]
  return jnp.where(mask, source, target)


# ---------------------------------------------------------------------------------------------
# Pseudo-labels and the weighted loss.


def pseudo_labels_and_weight(teacher_probs, threshold: float = PSEUDO_THRESHOLD,
                             ignore_top: int = 0, ignore_bottom: int = 0):
  """Teacher softmax [N, H, W, C] -> (argmax labels int32 [N, H, W], weights float32 [N, H, W]).

  The weight is ONE scalar for the whole batch, broadcast to every pixel: the fraction of all
  N*H*W pixels whose max probability is >= threshold (DACS's "threshold_uniform", identical in
  DAFormer and MIC, which also compute it over the batch). DAFormer's pseudo-label crop zeroes
  the weight of the top `ignore_top` and bottom `ignore_bottom` rows (15 and 120 in its final
  GTA->Cityscapes recipe, 0 in its base config and in DACS). Mix the weights with ones on the
  source pixels: `mix(mask, jnp.ones_like(w), w)`.
  """
  probs = jnp.asarray(teacher_probs, jnp.float32)
  labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  confident = jnp.max(probs, axis=-1) >= threshold
  weight = jnp.mean(confident.astype(jnp.float32))
  weights = jnp.full(labels.shape, weight, jnp.float32)
  height = labels.shape[1]
  rows = jnp.arange(height)[None, :, None]
  keep = (rows >= ignore_top) & (rows < height - ignore_bottom)
  return labels, jnp.where(keep, weights, 0.0)


def weighted_cross_entropy(logits, labels, pixel_weights, ignore_id: int = IGNORE_ID):
  """mean over all N*H*W pixels of weight * CE; ignore pixels add 0 but count in the mean.

  DACS's CrossEntropyLoss2dPixelWiseWeighted: nn.CrossEntropyLoss(ignore_index, reduction='none')
  times the weights, then torch.mean (mmseg's weighted CE in DAFormer reduces the same way).
  logits [N, H, W, C] at the label resolution; float32 throughout.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  valid = labels != ignore_id
  log_p = jax.nn.log_softmax(logits, axis=-1)
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
  per_pixel = jnp.where(valid, nll * jnp.asarray(pixel_weights, jnp.float32), 0.0)
  return jnp.mean(per_pixel)


# ---------------------------------------------------------------------------------------------
# Strong augmentation: kornia's colour jitter and Gaussian blur.


def rgb_to_hsv(rgb):
  """kornia's rgb_to_hsv on [..., 3] in [0, 1]: H in [0, 2 pi), S = delta / (V + 1e-6), V = max."""
  maxc = jnp.max(rgb, axis=-1)
  minc = jnp.min(rgb, axis=-1)
  first_max = jnp.argmax(rgb, axis=-1)  # first channel holding the max, as kornia picks it
  delta = maxc - minc
  s = delta / (maxc + _HSV_EPS)
  delta = jnp.where(delta == 0, 1.0, delta)
  rc, gc, bc = jnp.moveaxis(maxc[..., None] - rgb, -1, 0)
  candidates = jnp.stack([bc - gc, 2.0 * delta + rc - bc, 4.0 * delta + gc - rc], axis=-1)
  h = jnp.take_along_axis(candidates, first_max[..., None], axis=-1)[..., 0] / delta
  h = jnp.mod(h / 6.0, 1.0) * (2.0 * math.pi)
  return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv):
  """kornia's hsv_to_rgb: sector hi = floor(6 h) mod 6 with remainder semantics for h < 0."""
  h = hsv[..., 0] / (2.0 * math.pi)
  s, v = hsv[..., 1], hsv[..., 2]
  hi = jnp.mod(jnp.floor(h * 6.0), 6.0)
  f = jnp.mod(h * 6.0, 6.0) - hi
  p = v * (1.0 - s)
  q = v * (1.0 - f * s)
  t = v * (1.0 - (1.0 - f) * s)
  sector = hi.astype(jnp.int32)[..., None]
  pick = lambda table: jnp.take_along_axis(jnp.stack(table, axis=-1), sector, axis=-1)[..., 0]
  return jnp.stack([pick([v, q, p, p, t, v]), pick([t, v, v, q, p, p]),
                    pick([p, p, t, v, v, q])], axis=-1)


def _adjust_brightness(rgb, factor):
  return jnp.clip(rgb + (factor - 1.0), 0.0, 1.0)  # kornia adds factor - 1 (OpenCV-like)


def _adjust_contrast(rgb, factor):
  return jnp.clip(rgb * factor, 0.0, 1.0)  # kornia scales, unlike torchvision's blend to mean


def _adjust_saturation(rgb, factor):
  hsv = rgb_to_hsv(rgb)
  return hsv_to_rgb(hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * factor, 0.0, 1.0)))


def _adjust_hue(rgb, turns):
  hsv = rgb_to_hsv(rgb)
  two_pi = 2.0 * math.pi
  return hsv_to_rgb(hsv.at[..., 0].set(jnp.fmod(hsv[..., 0] + turns * two_pi, two_pi)))


def _jitter_one(rgb, brightness, contrast, saturation, hue, order):
  """One image [H, W, 3] through the four adjustments in `order` (0 b, 1 c, 2 s, 3 h)."""
  branches = [
      lambda x: _adjust_brightness(x, brightness),
      lambda x: _adjust_contrast(x, contrast),
      lambda x: _adjust_saturation(x, saturation),
      lambda x: _adjust_hue(x, hue),
  ]
  for position in range(4):
    rgb = lax.switch(order[position], branches, rgb)
  return rgb


def color_jitter_with_factors(rgb, brightness, contrast, saturation, hue, order):
  """kornia 0.5 ColorJitter with given per-image factors, on RGB [N, H, W, 3] in [0, 1].

  brightness, contrast, saturation: kornia's factors (1 = identity) [N]; brightness adds
  (factor - 1) and clips, contrast multiplies and clips, saturation scales HSV S (clipped to
  [0, 1]); hue [N] is a shift in turns (kornia's [-0.5, 0.5], applied as fmod(H + 2 pi hue, 2 pi)).
  order [N, 4]: a permutation of 0..3 (brightness, contrast, saturation, hue); kornia draws one
  randperm(4) per call and DACS/DAFormer call it once per mixed image.
  """
  rgb = jnp.asarray(rgb, jnp.float32)
  factors = [jnp.asarray(f, jnp.float32) for f in (brightness, contrast, saturation, hue)]
  return jax.vmap(_jitter_one)(rgb, *factors, jnp.asarray(order, jnp.int32))


def blur_kernel_size(size: int) -> int:
  """DACS's kernel size for a side of `size` px: ceil(0.1 size), minus 1 when even (odd size)."""
  k = np.ceil(0.1 * size)  # float64 arithmetic exactly as the reference (0.1 * 30 -> 4)
  return int(np.floor(k - 0.5 + k % 2))


def gaussian_kernel_1d(size: int, sigma):
  """kornia's normalised Gaussian window: exp(-x^2 / (2 sigma^2)), x centred on size // 2."""
  x = jnp.arange(size, dtype=jnp.float32) - size // 2
  if size % 2 == 0:
    x = x + 0.5
  g = jnp.exp(-jnp.square(x) / (2.0 * jnp.square(jnp.asarray(sigma, jnp.float32))))
  return g / jnp.sum(g)


def _blur_one(image, sigma, kernel_hw):
  """One [H, W, C] image: separable Gaussian with reflect padding (kornia GaussianBlur2d)."""
  channels = image.shape[-1]
  out = image[None]
  for axis, size in ((1, kernel_hw[0]), (2, kernel_hw[1])):
    if size <= 1:
      continue
    pad = [(0, 0)] * 4
    pad[axis] = (size // 2, size // 2)
    out = jnp.pad(out, pad, mode="reflect")
    g = gaussian_kernel_1d(size, sigma)
    shape = (size, 1) if axis == 1 else (1, size)
    kernel = jnp.broadcast_to(g.reshape(shape + (1, 1)), shape + (1, channels))
    out = lax.conv_general_dilated(
        out, kernel, window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
        precision=lax.Precision.HIGHEST)
  return out[0]


def gaussian_blur_with_sigma(images, sigma):
  """kornia GaussianBlur2d with DACS's kernel size, per-image sigma [N], on [N, H, W, C].

  Kernel size from `blur_kernel_size` of each side; border 'reflect' (no edge repeat).
  """
  images = jnp.asarray(images, jnp.float32)
  kernel_hw = (blur_kernel_size(images.shape[1]), blur_kernel_size(images.shape[2]))
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), images.shape[:1])
  return jax.vmap(lambda x, s: _blur_one(x, s, kernel_hw))(images, sigma)


def model_input_to_rgb01(images):
  """BGR minus the Caffe mean (0-255) -> RGB in [0, 1] (values outside stay unclipped)."""
  return (jnp.asarray(images, jnp.float32) + jnp.asarray(CAFFE_MEAN_BGR))[..., ::-1] / 255.0


def rgb01_to_model_input(rgb):
  """Inverse of `model_input_to_rgb01`."""
  return (jnp.asarray(rgb, jnp.float32) * 255.0)[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR)


def strong_augment(key, images, jitter_strength: float = DAFORMER_JITTER_STRENGTH,
                   jitter_probability: float = JITTER_PROBABILITY, blur: bool = True,
                   blur_probability: float = BLUR_PROBABILITY,
                   sigma_range: tuple[float, float] = BLUR_SIGMA_RANGE):
  """DACS's strong augmentation of (mixed) model inputs [N, H, W, 3]: colour jitter, then blur.

  As in DACS and DAFormer, ONE draw per call decides whether the batch is jittered (probability
  0.8) and one whether it is blurred (0.5); the jitter factors, their order and the blur sigma
  are drawn per image (the references call kornia once per mixed image). The jitter runs on the
  0-1 RGB image rebuilt from BGR-minus-mean and is converted back. Deviation: DACS adds the mean
  and divides by 255 but leaves the channels in BGR order, so kornia's HSV sees B as R; hue
  shifts are symmetric in [-s, s], so only the sign convention of a given shift differs. The blur
  is linear with weights summing to 1 (reflect padding), so it is applied to the model input
  directly, equal to blurring the 0-1 image. Default strength 0.2 is DAFormer/MIC's; DACS's
  code uses 0.25 (`DACS_JITTER_STRENGTH`).
  """
  images = jnp.asarray(images, jnp.float32)
  n = images.shape[0]
  k_jit, k_blur, k_factors, k_order, k_sigma = jax.random.split(key, 5)
  s = float(jitter_strength)

  def jitter(x):
    kb, kc, ks, kh = jax.random.split(k_factors, 4)
    low = max(0.0, 1.0 - s)
    brightness = jax.random.uniform(kb, (n,), minval=low, maxval=1.0 + s)
    contrast = jax.random.uniform(kc, (n,), minval=low, maxval=1.0 + s)
    saturation = jax.random.uniform(ks, (n,), minval=low, maxval=1.0 + s)
    hue = jax.random.uniform(kh, (n,), minval=-s, maxval=s)
    order = jax.vmap(lambda k: jax.random.permutation(k, 4))(jax.random.split(k_order, n))
    rgb = color_jitter_with_factors(model_input_to_rgb01(x), brightness, contrast, saturation,
                                    hue, order)
    return rgb01_to_model_input(rgb)

  do_jitter = jax.random.uniform(k_jit) < jitter_probability
  images = lax.cond(do_jitter, jitter, lambda x: x, images)
  if blur:
    sigma = jax.random.uniform(k_sigma, (n,), minval=sigma_range[0], maxval=sigma_range[1])
    do_blur = jax.random.uniform(k_blur) < blur_probability
    images = lax.cond(do_blur, lambda x: gaussian_blur_with_sigma(x, sigma), lambda x: x, images)
  return images


# ---------------------------------------------------------------------------------------------
# The step's plug-in: DACS's ClassMix with an EMA teacher, and MIC's masked target image.

# How mixed images are normalised (config mix.norm): as target images, as source images, or with
# their own batch statistics and the mean affine (seat_norm.MIXED).
MIX_NORMS = {"target": "target", "source": "source", "batch": seat_norm.MIXED}
# config mix.teacher_schedule: when the teacher follows the student (see `add_config`).
TEACHER_SCHEDULES = ("dacs", "daformer")


@dataclasses.dataclass(frozen=True)
class Mixing(base.Method):
  """Mixing-based self-training on the source pass: the teacher labels the clean target batch,
  ClassMix pastes half of each source image's classes onto it, the student learns the mixed
  image (and, with MIC, the masked target image); the teacher then follows the student (EMA)."""
  mix_norm: str = "target"
  augment: bool = True
  jitter_strength: float = 0.2
  pseudo_ignore_rows: tuple[int, int] = (0, 0)  # DAFormer's pseudo-label crop (top, bottom)
  mic: bool = False
  mic_block: int = 64
  mic_ratio: float = 0.7
  mic_update_stats: bool = False
  teacher_schedule: str = "dacs"
  classmix_classes: str = "image"
  num_classes: int = 19
  needs_target_images = True

  @staticmethod
  def add_config(config):
    mix = base.section(config, "mix")
    mix.enabled = False  # ClassMix with an EMA teacher (DACS; DAFormer and MIC build on it)
    # The norm mixed images go through: target | source | batch (their own batch statistics, the
    # mean affine, no running update; best on the synthetic shift, benchmarks/RESULTS.md).
    mix.norm = "batch"
    mix.teacher_alpha = 0.99  # EMA of the teacher (DACS 0.99; DAFormer, MIC 0.999)
    # When the teacher follows: dacs (after iteration t's update, alpha_t: the teacher of t + 1
    # is the student of t + 1) | daformer (DAFormer and MIC: at the start of iteration t >= 1,
    # alpha_t, i.e. alpha_{t+1} after t's update: the teacher of 1 is half the initial model).
    mix.teacher_schedule = "dacs"
    # ClassMix's candidate classes: image (DACS: each source image's own) | batch (DAFormer,
    # MIC: the union of the batch's source labels, each image drawing half of it).
    mix.classmix_classes = "image"
    mix.confidence = 0.968  # pseudo-label weight = share of teacher pixels above this
    mix.augment = True  # colour jitter + Gaussian blur on the mixed image (DACS)
    mix.jitter_strength = 0.2  # colour jitter's strength (DACS 0.25, DAFormer/MIC 0.2)
    # DAFormer's pseudo-label crop: no weight on the top / bottom rows of the target crop (the
    # ego car's hood, the image border; DAFormer on GTA5: 15 / 120). 0 = none (DACS).
    mix.pseudo_ignore_top = 0  # rows at the top of the target crop without pseudo-label weight
    mix.pseudo_ignore_bottom = 0  # rows at the bottom without pseudo-label weight
    mix.weight = 1.0  # CE weight of the mixed image
    mix.mic_weight = 0.0  # MIC: CE of the masked target image (MIC: 1.0); 0 = off
    mix.mic_block = 64  # MIC's masked patches: block size in pixels
    mix.mic_ratio = 0.7  # MIC's masked patches: share of blocks masked
    # MIC's student runs the masked image in train mode (the shared-BN presets follow it).
    mix.mic_update_stats = False  # MIC: the masked pass updates the running target statistics

  @staticmethod
  def enabled(config):
    return bool(config.mix.enabled)

  @staticmethod
  def problems(config):
    problems, mix = [], config.mix
    if mix.norm not in MIX_NORMS:
      problems.append(f"config.mix.norm={mix.norm!r} is not one of {tuple(MIX_NORMS)}")
    if mix.get("teacher_schedule", "dacs") not in TEACHER_SCHEDULES:
      problems.append(f"config.mix.teacher_schedule={mix.teacher_schedule!r} is not one of "
                      f"{TEACHER_SCHEDULES}")
    if mix.get("classmix_classes", "image") not in CLASSMIX_CLASSES:
      problems.append(f"config.mix.classmix_classes={mix.classmix_classes!r} is not one of "
                      f"{CLASSMIX_CLASSES} (DACS: image, DAFormer/MIC: batch)")
    if not 0.0 <= mix.teacher_alpha < 1.0:
      problems.append(f"config.mix.teacher_alpha={mix.teacher_alpha} must be in [0, 1) "
                      "(DACS 0.99, DAFormer/MIC 0.999)")
    if not 0.0 <= mix.mic_ratio < 1.0 or mix.mic_block < 1:
      problems.append(f"config.mix.mic_ratio={mix.mic_ratio} must be in [0, 1) and "
                      f"config.mix.mic_block={mix.mic_block} >= 1 (MIC: 0.7, 64)")
    if mix.mic_weight and not mix.enabled:
      problems.append("config.mix.mic_weight is set but config.mix.enabled is False: MIC's "
                      "masked images are labelled by the mixing teacher; add "
                      "--config.mix.enabled=True")
    if mix.enabled and mix.norm == "batch" and not config.model.bn_train_stats:
      problems.append("config.mix.norm='batch' normalises with batch statistics, which "
                      "config.model.bn_train_stats=False turns off; choose target or source")
    return problems

  @staticmethod
  def weights(config):
    mix = config.mix
    return {"mix_weight": mix.weight, "mix_confidence": mix.confidence,
            "teacher_alpha": mix.teacher_alpha, "mic_weight": mix.mic_weight}

  @classmethod
  def from_config(cls, config):
    mix = config.mix
    return cls(mix_norm=mix.norm, augment=bool(mix.augment),
               jitter_strength=float(mix.jitter_strength),
               pseudo_ignore_rows=(int(mix.pseudo_ignore_top), int(mix.pseudo_ignore_bottom)),
               mic=bool(mix.mic_weight), mic_block=int(mix.mic_block),
               mic_ratio=float(mix.mic_ratio),
               mic_update_stats=bool(mix.get("mic_update_stats", False)),
               teacher_schedule=str(mix.get("teacher_schedule", "dacs")),
               classmix_classes=str(mix.get("classmix_classes", "image")),
               num_classes=int(config.model.num_classes))

  def init_state(self, variables):
    return {"teacher": base.copy_tree(variables)}

  def source_terms(self, ctx):
    w, forward, up = ctx.weights, ctx.forward, ctx.upsample
    src_img, tgt_img = ctx.batch[batch_keys.SOURCE_IMAGE], ctx.batch[batch_keys.TARGET_IMAGE]
    src_lbl = ctx.batch[batch_keys.SOURCE_LABEL]
    key_mix, key_aug, key_mic = jax.random.split(ctx.key, 3)
    teacher = lax.stop_gradient(ctx.method_state["teacher"])
    # The teacher sees the clean target batch with the target norm's batch statistics (DACS's
    # teacher runs in train mode); its running statistics are an EMA of the student's.
    _, t_main, _, _ = forward(teacher["params"], teacher["batch_stats"], tgt_img, "target",
                              keep_stats=False)
    t_probs = jax.nn.softmax(up(t_main, tgt_img), axis=-1)
    pseudo, weight = pseudo_labels_and_weight(t_probs, w["mix_confidence"],
                                              *self.pseudo_ignore_rows)
    mask = class_mix_masks(key_mix, src_lbl, self.num_classes,
                           classes_from=self.classmix_classes)
    mixed_img = mix(mask, src_img, tgt_img)
    mixed_lbl = mix(mask, src_lbl, pseudo)
    mixed_w = mix(mask, jnp.ones_like(weight), weight)
    if self.augment:
      mixed_img = strong_augment(key_aug, mixed_img, self.jitter_strength)
    aux_m, main_m, ctx.batch_stats, _ = forward(ctx.params, ctx.batch_stats, mixed_img,
                                                MIX_NORMS[self.mix_norm],
                                                rng=base.dropout_key(ctx.key, "mixed"))
    mix_main = weighted_cross_entropy(up(main_m, mixed_img), mixed_lbl, mixed_w)
    mix_aux = base.on_aux(weighted_cross_entropy, up(aux_m, mixed_img), mixed_lbl, mixed_w)
    total = w["mix_weight"] * (mix_main + w["aux_weight"] * mix_aux)
    metrics = {"mix_main": mix_main, "pseudo_weight": jnp.mean(weight)}
    if self.mic:
      key_mic, key_mic_aug = jax.random.split(key_mic)
      masked = tgt_img
      if self.augment:  # MIC: the masked image gets the mixed image's augmentation
        masked = strong_augment(key_mic_aug, masked, self.jitter_strength)
      masked, _ = mic.masking(key_mic, masked, self.mic_block, self.mic_ratio)
      # Normalised with its batch statistics as a target image. MIC's student runs it in train
      # mode, so its statistics enter the running ones (`mic_update_stats`); without, only
      # unmasked images, what evaluation meets, make the running target statistics.
      aux_k, main_k, ctx.batch_stats, _ = forward(ctx.params, ctx.batch_stats, masked, "target",
                                                  keep_stats=self.mic_update_stats,
                                                  rng=base.dropout_key(ctx.key, "masked"))
      mic_main = weighted_cross_entropy(up(main_k, masked), pseudo, weight)
      mic_aux = base.on_aux(weighted_cross_entropy, up(aux_k, masked), pseudo, weight)
      total += w["mic_weight"] * (mic_main + w["aux_weight"] * mic_aux)
      metrics["mic_main"] = mic_main
    if self.mix_norm != "target" and not ctx.has_target_pass:
      # Nothing else shows the student's target norm a target image: a forward pass without
      # gradient keeps its running target statistics current for evaluation.
      _, _, ctx.batch_stats, _ = forward(lax.stop_gradient(ctx.params), ctx.batch_stats,
                                         tgt_img, "target")
    return total, metrics

  def after_update(self, ctx):
    step = ctx.step + (1 if self.teacher_schedule == "daformer" else 0)
    ctx.method_state["teacher"] = ema_update(
        ctx.method_state["teacher"], {"params": ctx.params, "batch_stats": ctx.batch_stats},
        step, ctx.weights["teacher_alpha"])
