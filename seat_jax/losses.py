"""Losses of the adversarial step (AdaptSegNet's and ADVENT's), all computed in float32."""

import jax
import jax.numpy as jnp

from seat_jax import labels as label_tables

# AdaptSegNet's domain labels for the discriminator: source 0, target 1.
SOURCE_DOMAIN_LABEL = 0.0
TARGET_DOMAIN_LABEL = 1.0


# config loss.ce_normalise: the source CE's mean over labelled pixels (PyTorch's
# CrossEntropyLoss, the DeepLab references) or over every pixel, ignored ones adding 0
# (mmsegmentation 0.16's reduction, which DAFormer and MIC use).
CE_NORMALISATIONS = ("valid", "all")


def cross_entropy(logits: jax.Array, labels: jax.Array, over_all_pixels: bool = False
                  ) -> jax.Array:
  """Mean pixel cross-entropy over pixels whose label is not 255 (`over_all_pixels`: divided
  by every pixel instead).

  logits: [N, H, W, C]; labels: [N, H, W] integer train ids. Returns 0 (not NaN, as PyTorch would)
  when every pixel is ignored, so a crop of pure void does not poison training.
  """
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  valid = labels != label_tables.IGNORE_ID
  safe_labels = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  total = -jnp.sum(jnp.where(valid, picked, 0.0))
  if over_all_pixels:
    return total / labels.size
  return total / jnp.maximum(jnp.sum(valid), 1)


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
  """Mean binary cross-entropy of raw discriminator logits against a constant domain label."""
  logits = logits.astype(jnp.float32)
  # log(1 + exp(-|x|)) formulation, the numerically stable form PyTorch uses too.
  per_element = jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return jnp.mean(per_element)


def self_information(probs: jax.Array) -> jax.Array:
  """ADVENT's weighted self-information map -p log2(p) / log2(C), per channel."""
  num_classes = probs.shape[-1]
  probs = probs.astype(jnp.float32)
  return -probs * jnp.log2(probs + 1e-30) / jnp.log2(num_classes)


def entropy_loss(probs: jax.Array) -> jax.Array:
  """ADVENT MinEnt: the mean over pixels of the normalised entropy (in [0, 1])."""
  return jnp.mean(jnp.sum(self_information(probs), axis=-1))
