"""DAFormer (Hoyer et al., CVPR 2022): thing-class ImageNet feature distance and its constants.

DAFormer keeps DACS's self-training (`dacs.py`, with alpha 0.999) and adds, besides rare class
sampling (elsewhere in this project) and a learning-rate warmup, a feature distance (FD): on
source images, the student's bottleneck features are pulled towards those of a frozen copy of
the ImageNet-initialised model, only at coarse cells that a "thing" class (traffic light, sign,
person, rider and vehicles) covers to at least 75 %. That keeps the recognisable object features
ImageNet learnt from being overwritten by the synthetic source. Facts follow lhoyer/DAFormer
(mmseg/models/uda/dacs.py, mmseg/utils/utils.py, configs/daformer/
gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seat_jax import batch as batch_keys
from seat_jax.labels import CITYSCAPES_CLASSES, IGNORE_ID, SYNTHIA16_CLASSES
from seat_jax.methods import base

# imnet_feature_dist_classes = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18] (Cityscapes train ids).
THING_CLASS_NAMES = ("traffic light", "traffic sign", "person", "rider", "car", "truck", "bus",
                     "train", "motorcycle", "bicycle")
# The same classes by name in each label space (SYNTHIA's 16 lack truck and train; DAFormer
# itself trains SYNTHIA in the 19-class space with the list above).
THING_CLASSES = {
    "cityscapes19": tuple(CITYSCAPES_CLASSES.index(c) for c in THING_CLASS_NAMES),
    "synthia16": tuple(SYNTHIA16_CLASSES.index(c) for c in THING_CLASS_NAMES
                       if c in SYNTHIA16_CLASSES),
    "synthia19": tuple(CITYSCAPES_CLASSES.index(c) for c in THING_CLASS_NAMES),
}
FD_LAMBDA = 0.005  # imnet_feature_dist_lambda
FD_SCALE_MIN_RATIO = 0.75  # imnet_feature_dist_scale_min_ratio
# Student and reference features closer than this (relative to the reference's norm) count as
# identical in the feature distance: a few hundred float32 ulps (`feature_distance_loss`).
FD_SAME_FEATURES = 2.0**-16
# DAFormer's final recipe: teacher alpha 0.999 and the pseudo-label crop, which zeroes the
# pseudo-label weight of the top 15 and bottom 120 rows of each 512 x 512 target crop
# (`dacs.pseudo_labels_and_weight(ignore_top=..., ignore_bottom=...)`).
ALPHA = 0.999
PSEUDO_WEIGHT_IGNORE_TOP = 15
PSEUDO_WEIGHT_IGNORE_BOTTOM = 120


def downscale_label_ratio(labels, scale: int, min_ratio: float, num_classes: int):
  """DAFormer's label downscaling: [N, H, W] -> int32 [N, H // scale, W // scale].

  Each coarse cell (a scale x scale average pool, trailing rows/columns dropped) takes its most
  frequent class, ignore (255) counting as a class of its own; the cell is 255 when that class
  is ignore or covers less than `min_ratio` of the cell. Ties go to the lower class id.
  """
  if scale <= 1:
    raise ValueError(f"downscale_label_ratio: scale must be > 1 (as in DAFormer); got {scale}.")
  labels = jnp.asarray(labels, jnp.int32)
  n, height, width = labels.shape
  rows, cols = height // scale, width // scale
  slot = jnp.where(labels == IGNORE_ID, num_classes, labels)[:, :rows * scale, :cols * scale]
  onehot = jax.nn.one_hot(slot, num_classes + 1, dtype=jnp.float32)
  counts = onehot.reshape(n, rows, scale, cols, scale, num_classes + 1).sum(axis=(2, 4))
  ratio = counts / float(scale * scale)
  best = jnp.argmax(ratio, axis=-1).astype(jnp.int32)
  keep = (best != num_classes) & (jnp.max(ratio, axis=-1) >= min_ratio)
  return jnp.where(keep, best, IGNORE_ID)


def _pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """0/1 [out, in] rows selecting each coarse cell's input pixels.

  DAFormer's rule (kernel in_size // out_size, trailing pixels dropped) when it lands on
  `out_size` cells; otherwise PyTorch adaptive-pooling bins [floor(i in/out), ceil((i+1) in/out)).
  """
  matrix = np.zeros((out_size, in_size), np.float32)
  scale = in_size // out_size
  for i in range(out_size):
    if scale >= 1 and in_size // scale == out_size:
      start, end = i * scale, (i + 1) * scale
    else:
      start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0
  return matrix


def thing_mask(source_labels, out_hw, thing_classes, min_ratio: float = FD_SCALE_MIN_RATIO):
  """bool [N, h, w]: coarse cells whose label is a thing class covering >= min_ratio of the cell.

  Equals `isin(downscale_label_ratio(...), thing_classes)` when the grid is labels // scale
  with scale = in // out on each side (DAFormer's rule; min_ratio > 0.5 makes a class over the
  ratio the cell's unique majority, so only the thing classes need counting). DeepLabV2 here
  gives a 65 x 65 grid for 512 x 512 inputs, which that rule cannot produce (512 // 65 = 7 ->
  73 cells); such grids use PyTorch adaptive-pooling bins instead (a documented deviation;
  neighbouring cells then share up to one pixel row or column).
  """
  if not min_ratio > 0.5:
    raise ValueError(f"thing_mask needs min_ratio > 0.5 (DAFormer uses 0.75); got {min_ratio}.")
  labels = jnp.asarray(source_labels, jnp.int32)
  height, width = labels.shape[1:]
  out_h, out_w = (int(s) for s in out_hw)
  pool_h = _pool_matrix(height, out_h)
  pool_w = _pool_matrix(width, out_w)
  if pool_h.sum(1).min() == 0 or pool_w.sum(1).min() == 0:
    raise ValueError(f"thing_mask: cannot pool labels {labels.shape[1:]} to {(out_h, out_w)}.")
  classes = jnp.asarray(thing_classes, jnp.int32)
  onehot = (labels[..., None] == classes).astype(jnp.float32)  # [N, H, W, T]
  counts = jnp.einsum("ih,nhwt,jw->nijt", jnp.asarray(pool_h), onehot, jnp.asarray(pool_w),
                      precision=lax.Precision.HIGHEST)
  area = np.outer(pool_h.sum(1), pool_w.sum(1))  # exact pixel counts per cell
  return jnp.any(counts >= jnp.asarray(min_ratio * area)[None, :, :, None], axis=-1)


def feature_distance_loss(student_feat, imagenet_feat, source_labels, thing_classes,
                          min_ratio: float = FD_SCALE_MIN_RATIO):
  """DAFormer's masked feature distance (not yet times FD_LAMBDA), a float32 scalar.

  student_feat, imagenet_feat: [N, h, w, C] bottleneck features of the source images (the last
  backbone stage; the ImageNet model's are frozen, a stop_gradient is applied here).
  source_labels: [N, H, W]. The per-cell distance is the L2 norm over channels (not squared),
  averaged over the cells `thing_mask` selects. Deviation: with no such cell DAFormer's
  torch.mean of an empty tensor gives NaN; this returns 0. The norm's gradient is 0 (not NaN) at
  identical features, as in PyTorch; and a distance within float32 rounding of the features
  (below FD_SAME_FEATURES of the reference's norm) counts as identical: at the first iteration
  PyTorch's two passes give bitwise-equal features (distance 0, gradient 0), whereas XLA
  computes the student's pass and the reference's as different programs, and the norm's
  gradient, the direction of the difference, would be float noise at full size.
  """
  student = jnp.asarray(student_feat, jnp.float32)
  frozen = lax.stop_gradient(jnp.asarray(imagenet_feat, jnp.float32))
  mask = thing_mask(source_labels, student.shape[1:3], thing_classes, min_ratio)
  squared = jnp.sum(jnp.square(student - frozen), axis=-1)
  positive = squared > FD_SAME_FEATURES**2 * jnp.sum(jnp.square(frozen), axis=-1)
  dist = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  count = jnp.sum(mask.astype(jnp.float32))
  return jnp.sum(jnp.where(mask, dist, 0.0)) / jnp.maximum(count, 1.0)


# ---------------------------------------------------------------------------------------------
# The step's plug-in.


# config mix.fd_reference: the frozen model the feature distance anchors to is a copy of the
# segmenter as training starts (DAFormer's `imnet_model` is the same ImageNet init, built from
# the same config), unless the value names a checkpoint to read instead.
FD_REFERENCE_INIT = "init"


@dataclasses.dataclass(frozen=True)
class FeatureDistance(base.Method):
  """DAFormer's FD on the source pass: thing-class layer4 features stay near a frozen reference
  model (its state `fd_reference`, evaluated with the source norms in eval mode): a copy of the
  initial model, or the checkpoint `reference` names (read once at a fresh start; a resumed
  run takes it from its checkpoint)."""
  label_space: str = "cityscapes19"
  reference: str = FD_REFERENCE_INIT
  needs_source_features = True

  @staticmethod
  def add_config(config):
    mix = base.section(config, "mix")
    mix.fd_weight = 0.0  # DAFormer: thing-class feature distance to the initial model (0.005)
    # The feature distance's frozen reference: init = the segmenter as training starts (from
    # init_from: DAFormer's ImageNet model when that is the ImageNet conversion), or a checkpoint
    # (a converted ImageNet init, a run) read at a fresh start into this model's variables.
    mix.fd_reference = FD_REFERENCE_INIT  # init | a checkpoint dir (DAFormer: the ImageNet init)

  @staticmethod
  def problems(config):
    reference = str(config.mix.get("fd_reference", FD_REFERENCE_INIT))
    if config.mix.fd_weight and not reference.strip():
      return [f"config.mix.fd_reference is empty; use {FD_REFERENCE_INIT!r} (a copy of the "
              "initial model) or a checkpoint directory (e.g. the converted ImageNet init)"]
    return []

  @staticmethod
  def enabled(config):
    return bool(config.mix.fd_weight)

  @staticmethod
  def weights(config):
    return {"fd_weight": config.mix.fd_weight}

  @classmethod
  def from_config(cls, config):
    return cls(label_space=config.data.label_space,
               reference=str(config.mix.get("fd_reference", FD_REFERENCE_INIT)))

  def init_state(self, variables):
    return {"fd_reference": base.copy_tree(variables)}

  def load_state(self, method_state, restore):
    if self.reference == FD_REFERENCE_INIT:
      return method_state
    return {**method_state,
            "fd_reference": restore(self.reference, "config.mix.fd_reference")}

  def source_terms(self, ctx):
    images, labels_s = ctx.batch[batch_keys.SOURCE_IMAGE], ctx.batch[batch_keys.SOURCE_LABEL]
    _, ref = ctx.model.apply(ctx.method_state["fd_reference"], images, domain="source",
                             train=False, mutable=["intermediates"])
    ref_feats = lax.stop_gradient(ref["intermediates"]["layer4_output"][0])
    fd = feature_distance_loss(ctx.source.features, ref_feats, labels_s,
                               THING_CLASSES[self.label_space])
    return ctx.weights["fd_weight"] * fd, {"feature_distance": fd}
