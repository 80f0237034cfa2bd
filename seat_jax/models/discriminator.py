"""AdaptSegNet's fully-convolutional discriminator.

Five 4x4 stride-2 convs (width, 2w, 4w, 8w, 1) with bias and LeakyReLU(0.2) between them; no
normalisation; raw logits out (a patch map of about 1/32 of the input). PyTorch's default
init (kaiming_uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)) for weights and biases), so a
fresh discriminator starts where the reference starts.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

LEAKY_SLOPE = 0.2
KERNEL = 4


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class FCDiscriminator(nn.Module):
  """Patch discriminator on NHWC class maps (softmax or ADVENT's self-information), float32."""
  width: int = 64
  negative_slope: float = LEAKY_SLOPE

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x: (N, H, W, C) maps; returns (N, ~H/32, ~W/32, 1) logits (source 0 / target 1)."""
    if x.ndim != 4:
      raise ValueError(f"FCDiscriminator expects NHWC maps (4 dims); got shape {x.shape}.")
    x = x.astype(jnp.float32)
    widths = (self.width, 2 * self.width, 4 * self.width, 8 * self.width)
    for i, features in enumerate(widths):
      x = self._conv(x, features, f"conv{i + 1}")
      x = nn.leaky_relu(x, self.negative_slope)
    return self._conv(x, 1, "classifier")

  def _conv(self, x: jnp.ndarray, features: int, name: str) -> jnp.ndarray:
    bound = 1.0 / math.sqrt(KERNEL * KERNEL * x.shape[-1])
    return nn.Conv(
        features, (KERNEL, KERNEL), strides=(2, 2), padding=((1, 1), (1, 1)),
        kernel_init=_uniform(bound), bias_init=_uniform(bound), name=name)(x)
