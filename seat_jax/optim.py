"""Optimisers of the paper (SPEC section 4) from optax pieces.

Segmenter: SGD with momentum and coupled weight decay (PyTorch's `weight_decay`), poly decay of the
learning rate, and three parameter groups chosen by regexes over the parameter path
(`layer3/block0/conv1/kernel`): `head` (10x lr), `frozen` (no update, no decay) and `backbone`.
Discriminator: Adam with the same poly decay.
"""

import re
from typing import Any, Sequence

import flax
import optax

# Paths of every SEAT norm's affine parameters (stem bn1, bottleneck bn1-3, downsample_bn).
BN_AFFINE_PATTERN = r"(^|/)(bn\d|downsample_bn)/"


def poly_schedule(base_lr: float, horizon_steps: int, power: float) -> optax.Schedule:
  """lr_i = base * (1 - i / horizon)^power, then 0 (AdaptSegNet's `lr_poly`)."""
  return optax.polynomial_schedule(
      init_value=base_lr, end_value=0.0, power=power, transition_steps=horizon_steps)


def _path_name(path: tuple[str, ...]) -> str:
  return "/".join(path)


def param_groups(params: Any, head_patterns: Sequence[str],
                 frozen_patterns: Sequence[str]) -> Any:
  """A tree like `params` of group names; `frozen` wins over `head`, `backbone` is the rest."""
  heads = [re.compile(p) for p in head_patterns]
  frozen = [re.compile(p) for p in frozen_patterns]

  def group(path: tuple[str, ...], _) -> str:
    name = _path_name(path)
    if any(p.search(name) for p in frozen):
      return "frozen"
    if any(p.search(name) for p in heads):
      return "head"
    return "backbone"

  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: group(k, v) for k, v in flat.items()})


def frozen_patterns(config) -> tuple[str, ...]:
  """The configured frozen patterns, plus the BN affine when the model config freezes it."""
  patterns = tuple(config.optim.frozen_patterns)
  if not config.model.bn_affine_trainable:
    patterns += (BN_AFFINE_PATTERN,)
  return patterns


def segmenter_lr_schedules(config) -> dict[str, optax.Schedule]:
  base = poly_schedule(config.optim.lr, config.train.lr_horizon_steps, config.optim.poly_power)
  head = poly_schedule(config.optim.lr * config.optim.head_lr_mult,
                       config.train.lr_horizon_steps, config.optim.poly_power)
  return {"backbone": base, "head": head}


def make_segmenter_tx(config, params: Any) -> optax.GradientTransformation:
  """SGD + momentum + weight decay + poly lr with 1x/10x/frozen groups for `params`."""
  schedules = segmenter_lr_schedules(config)

  def sgd(schedule):
    return optax.chain(
        optax.add_decayed_weights(config.optim.weight_decay),
        optax.sgd(schedule, momentum=config.optim.momentum))

  labels = param_groups(params, config.optim.head_patterns, frozen_patterns(config))
  return optax.multi_transform(
      {"backbone": sgd(schedules["backbone"]), "head": sgd(schedules["head"]),
       "frozen": optax.set_to_zero()},
      labels)


def disc_lr_schedule(config) -> optax.Schedule:
  return poly_schedule(config.optim.disc_lr, config.train.lr_horizon_steps, config.optim.poly_power)


def lr_schedules(config) -> dict[str, optax.Schedule]:
  """Every learning-rate schedule by group name, for logging: backbone, head, disc."""
  return {**segmenter_lr_schedules(config), "disc": disc_lr_schedule(config)}


def make_disc_tx(config) -> optax.GradientTransformation:
  """Adam(betas 0.9/0.99) with poly lr, no weight decay (AdaptSegNet's discriminator optimiser)."""
  return optax.adam(disc_lr_schedule(config), b1=config.optim.disc_b1, b2=config.optim.disc_b2)
