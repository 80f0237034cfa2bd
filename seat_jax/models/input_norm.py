"""The normalisation pretrained weights expect, applied inside the model.

Every data path (training, evaluation, prediction, export) gives a segmenter the project's one
model input: BGR minus the Caffe mean, no std (the DeepLab weights' own). Weights trained with
mmseg's or torchvision's RGB ImageNet mean/std (MiT, ResNet V1c) get that normalisation from the
segmenter's first operation, an exact per-channel affine map of the same pixels, so the data
pipelines, colour augmentation and exported functions stay one.
"""

import jax.numpy as jnp

from seat_jax.device_preprocessing import CAFFE_MEAN_BGR

# mmseg's img_norm_cfg (DAFormer's dataset configs) and torchvision's, RGB on the 0-255 scale.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# config model.input_normalisation (DeepLabV2): caffe = the input as it is (BGR minus the Caffe
# mean, the DeepLab weights); imagenet = RGB, ImageNet mean/std (mmseg's ResNet V1c weights).
INPUT_NORMALISATIONS = ("caffe", "imagenet")


def to_imagenet_normalised(images: jnp.ndarray) -> jnp.ndarray:
  """BGR minus the Caffe mean (the project's model input) -> (RGB - mean) / std as mmseg."""
  caffe_rgb = jnp.asarray(CAFFE_MEAN_BGR[::-1].copy())
  rgb = images.astype(jnp.float32)[..., ::-1] + caffe_rgb
  return (rgb - jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32)) / jnp.asarray(
      IMAGENET_STD_RGB, jnp.float32)


def normalise(images: jnp.ndarray, input_normalisation: str) -> jnp.ndarray:
  """The model input in the normalisation `input_normalisation` names (INPUT_NORMALISATIONS)."""
  if input_normalisation == "caffe":
    return images
  if input_normalisation == "imagenet":
    return to_imagenet_normalised(images)
  raise ValueError(f"model.input_normalisation must be one of {INPUT_NORMALISATIONS}; got "
                   f"{input_normalisation!r}.")
