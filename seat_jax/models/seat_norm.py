"""SEAT norm: a BatchNorm that keeps statistics (and optionally the affine) per domain.

It replaces every BatchNorm of the segmenter (the paper's section 3.2). PyTorch semantics are kept
exactly so converted weights behave the same: eps 1e-5; in training the batch is normalised with
its biased variance and the running stats move as `0.9 * old + 0.1 * batch` with the unbiased
variance; in evaluation the running stats of the chosen domain are used.

Modes (variable names are part of the model contract, checkpoints depend on them):
  shared: params {scale, bias}; batch_stats {mean, var}  (plain BN, the AdaptSegNet baseline)
  sat:    params {scale, bias}; batch_stats {source_mean, source_var, target_mean, target_var}
  seat:   params {source_scale, source_bias, target_scale, target_bias}; per-domain batch_stats

`SeatLayerNorm` is the same contract for a LayerNorm (the SegFormer encoder): its statistics are
each token's own, so a domain has none to keep and only the affine can be separated: per domain
in `seat`, shared in `sat` and `shared`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

DOMAINS = ("source", "target")
NORM_MODES = ("shared", "sat", "seat")
# Not a domain of the data: images mixed from both domains (DACS's ClassMix) normalised with
# their own batch statistics, the mean of the two domains' affines, and no running update, so
# neither domain's evaluation statistics absorb mixed pixels. Training only.
MIXED = "mixed"
# Not a domain either: a batch of source and target images interleaved (source 0, target 0,
# source 1, ...), each half normalised and its running statistics moved exactly as a pass of
# its own domain would. The training step sends both domains through the segmenter as one batch
# this way: one kernel per layer instead of two. Training only.
JOINT = "source+target"


def check_domain(domain: Any, allow_mixed: bool = False, allow_joint: bool = False) -> None:
  """Fails early with a readable message; a typo would otherwise silently pick a wrong slot."""
  allowed = DOMAINS + ((MIXED,) if allow_mixed else ()) + ((JOINT,) if allow_joint else ())
  if domain not in allowed:
    raise ValueError(f"domain must be one of {allowed} (a static Python string); got {domain!r}.")


def check_norm_mode(mode: Any) -> None:
  if mode not in NORM_MODES:
    raise ValueError(
        f"model.norm_mode must be one of {NORM_MODES}; got {mode!r}. Set --config.model.norm_mode "
        "to shared (plain BN), sat (shared affine) or seat (per-domain affine).")


def _batch_moments(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Mean and biased variance over every axis but the last (two passes, for accuracy)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return mean, var


def declare_affines(module: nn.Module, features: int, per_domain: bool,
                    trainable: bool = True) -> dict[str, tuple[jnp.ndarray, jnp.ndarray]]:
  """Declares a norm's affine params on `module` (so init creates every slot of the mode);
  returns {domain: (scale, bias)}, one pair per domain or one shared pair."""
  def declare(prefix: str) -> tuple[jnp.ndarray, jnp.ndarray]:
    scale = module.param(prefix + "scale", nn.initializers.ones, (features,), jnp.float32)
    bias = module.param(prefix + "bias", nn.initializers.zeros, (features,), jnp.float32)
    if not trainable:
      scale, bias = lax.stop_gradient(scale), lax.stop_gradient(bias)
    return scale, bias

  if per_domain:
    return {d: declare(d + "_") for d in DOMAINS}
  shared = declare("")
  return {d: shared for d in DOMAINS}


def mixed_affine(affines: dict[str, tuple[jnp.ndarray, jnp.ndarray]]):
  """The affine of mixed images: the mean of the two domains' (equal to either when shared)."""
  scale = (affines["source"][0] + affines["target"][0]) / 2
  bias = (affines["source"][1] + affines["target"][1]) / 2
  return scale, bias


class SeatNorm(nn.Module):
  """BatchNorm over the last axis with per-domain running statistics (and affine in `seat`).

  Attributes:
    mode: 'shared' | 'sat' | 'seat' (see the module docstring).
    affine_trainable: False stops the gradient of scale/bias (AdaptSegNet freezes them).
    use_batch_stats_in_train: False normalises with the running stats even when training and
      leaves them untouched (frozen BN).
    momentum: PyTorch-style momentum: new = (1 - momentum) * old + momentum * batch.
    epsilon: added to the variance.
  """
  mode: str = "seat"
  affine_trainable: bool = True
  use_batch_stats_in_train: bool = True
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str = "target", train: bool = False) -> jnp.ndarray:
    """Normalises `x` (..., C) with `domain`'s statistics; returns the dtype of `x`."""
    check_norm_mode(self.mode)
    check_domain(domain, allow_mixed=True, allow_joint=True)
    if domain == MIXED and not (train and self.use_batch_stats_in_train):
      raise ValueError("domain 'mixed' normalises with batch statistics: training only, with "
                       "model.bn_train_stats=True.")
    features = x.shape[-1]
    affines, stats = self._affines(features), self._running_stats(features)
    if domain == JOINT:
      return self._joint(x, affines, stats, train)
    if domain == MIXED:  # (no running stats: they are declared above and left as they are)
      scale, bias = mixed_affine(affines)
    else:
      scale, bias = affines[domain]
      running_mean, running_var = stats[domain]

    x32 = x.astype(jnp.float32)
    if train and self.use_batch_stats_in_train:  # always the case for MIXED (checked above)
      mean, var = _batch_moments(x32)
      if domain != MIXED:
        count = x.size // features
        # Kept only when the caller makes `intermediates` mutable (AdaBN's statistics pass).
        self.sow("intermediates", "batch_moments", (count, mean, var))
        if not self.is_initializing():  # init leaves the stats at 0 / 1, as the contract says
          self._move_running_stats(stats[domain], mean, var, count)
    else:
      mean, var = running_mean.value, running_var.value

    multiplier = scale * lax.rsqrt(var + self.epsilon)
    y = (x32 - mean) * multiplier + bias
    return y.astype(x.dtype)

  def _joint(self, x: jnp.ndarray, affines, stats, train: bool) -> jnp.ndarray:
    """`x` interleaved (source, target, source, ...): each domain's half normalised with its own
    statistics and affine, as two calls with one domain each would (same running updates, source
    first: in `shared` mode both move the one set, in that order)."""
    images, features = x.shape[0], x.shape[-1]
    if images % 2:
      raise ValueError(f"domain {JOINT!r} needs source and target images in pairs; got a batch "
                       f"of {images}.")
    # Per-image reductions, then per domain on the small [images, C]: every big array keeps the
    # 4-D shape of the convolutions beside it (a [pairs, 2, ...] reshape of the activations
    # compiled to 5-D copies; 0.03-0.04 GiB more on the H100 and the V100).
    pixels = tuple(range(1, x.ndim - 1))

    def domain_mean(values):  # [images, ..., C] -> [2, C]: each domain's images and pixels
      return jnp.mean(jnp.mean(values, axis=pixels).reshape(images // 2, 2, features), axis=0)

    def per_image(by_domain):  # [2, C] -> [images, 1, ..., 1, C]: each image's domain's row
      return jnp.tile(by_domain, (images // 2, 1)).reshape(
          (images,) + (1,) * len(pixels) + (features,))

    x32 = x.astype(jnp.float32)
    if train and self.use_batch_stats_in_train:
      mean = domain_mean(x32)
      var = domain_mean(jnp.square(x32 - per_image(mean)))
      if not self.is_initializing():
        for i, domain in enumerate(DOMAINS):
          self._move_running_stats(stats[domain], mean[i], var[i], x.size // features // 2)
    else:
      mean, var = (jnp.stack([stats[d][k].value for d in DOMAINS]) for k in (0, 1))
    scale, bias = (jnp.stack([affines[d][k] for d in DOMAINS]) for k in (0, 1))
    multiplier = scale * lax.rsqrt(var + self.epsilon)
    y = (x32 - per_image(mean)) * per_image(multiplier) + per_image(bias)
    return y.astype(x.dtype)

  def _move_running_stats(self, running, mean, var, count: int) -> None:
    """PyTorch's update of one domain's (mean, var) variables from a batch's moments over
    `count` values: momentum toward the mean and the unbiased variance."""
    running_mean, running_var = running
    unbiased_var = var * (count / max(count - 1, 1))
    keep = 1.0 - self.momentum
    running_mean.value = keep * running_mean.value + self.momentum * lax.stop_gradient(mean)
    running_var.value = keep * running_var.value + self.momentum * lax.stop_gradient(unbiased_var)

  def _affines(self, features: int) -> dict[str, tuple[jnp.ndarray, jnp.ndarray]]:
    return declare_affines(self, features, self.mode == "seat", self.affine_trainable)

  def _running_stats(self, features: int) -> dict[str, tuple[Any, Any]]:
    """Declares every stats slot of the mode; {domain: (mean, var) variables}."""
    def declare(prefix: str):
      mean = self.variable("batch_stats", prefix + "mean", jnp.zeros, (features,), jnp.float32)
      var = self.variable("batch_stats", prefix + "var", jnp.ones, (features,), jnp.float32)
      return mean, var

    if self.mode == "shared":
      shared = declare("")
      return {d: shared for d in DOMAINS}
    return {d: declare(d + "_") for d in DOMAINS}


class SeatLayerNorm(nn.Module):
  """LayerNorm over the last axis with the affine per domain in `seat` mode (PyTorch semantics:
  biased variance of each token, `epsilon` added to it; computed in float32).

  `domain` 'mixed' takes the mean of the two domains' affines, as `SeatNorm` does; the mode's
  `sat` and `shared` are the same LayerNorm (they differ only in the BatchNorms beside it).
  """
  mode: str = "seat"
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jnp.ndarray, domain: str = "target") -> jnp.ndarray:
    check_norm_mode(self.mode)
    check_domain(domain, allow_mixed=True)
    affines = declare_affines(self, x.shape[-1], self.mode == "seat")
    scale, bias = mixed_affine(affines) if domain == MIXED else affines[domain]
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(x.dtype)
