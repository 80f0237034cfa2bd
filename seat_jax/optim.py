"""Optimisers of the paper (its section 4.3) from optax pieces.

Segmenter: SGD with momentum and coupled weight decay (PyTorch's `weight_decay`), poly decay of the
learning rate, and three parameter groups chosen by regexes over the parameter path
(`layer3/block0/conv1/kernel`): `head` (10x lr), `frozen` (no update, no decay) and `backbone`.
Discriminator: Adam with the same poly decay.

`optim.reference_duplicate_updates` reproduces the reference optimiser's repeated listing of
backbone weights (docs/reproducing-seat.md, the duplicate updates); see `listing_multiplicity`
and `duplicate_listing_sgd`.
"""

import re
from typing import Any, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

# Paths of every SEAT norm's affine parameters (stem bn1 or V1c stem/bn1-3, bottleneck bn1-3,
# downsample_bn).
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
  """The configured frozen patterns, the BN affine when the model freezes it, unused branches.

  Head branches that are not summed (`model.aspp_branches` < the number of dilations, as in
  AdaptSegNet) get no gradient; PyTorch's SGD then skips them, so they must not decay here.
  """
  patterns = tuple(config.optim.frozen_patterns)
  if not config.model.bn_affine_trainable:
    patterns += (BN_AFFINE_PATTERN,)
  unused = range(config.model.aspp_branches, len(config.model.aspp_dilations))
  if unused:
    patterns += (rf"^(aux_head|main_head)/branch({'|'.join(map(str, unused))})/",)
  return patterns


# Segmenter optimisers (config optim.name): the references' SGD, or AdamW as DAFormer and MIC
# train DeepLabV2 (lr 6e-5, weight decay 0.01, betas 0.9/0.999).
SEGMENTER_OPTIMIZERS = ("sgd", "adamw")


def with_linear_warmup(schedule: optax.Schedule, warmup_steps: int,
                       start_ratio: float = 1e-6) -> optax.Schedule:
  """mmcv's linear warmup over a schedule (DAFormer: 1500 steps from 1e-6 of the lr).

  lr_i = schedule(i) * (1 - (1 - i / warmup) * (1 - start_ratio)) for i < warmup, then schedule(i).
  """
  if warmup_steps <= 0:
    return schedule

  def warmed(step):
    progress = jnp.minimum(step / warmup_steps, 1.0)
    # = 1 - (1 - progress) * (1 - start_ratio), written so float32 keeps start_ratio exact.
    return schedule(step) * (start_ratio + progress * (1.0 - start_ratio))
  return warmed


def segmenter_lr_schedules(config) -> dict[str, optax.Schedule]:
  warmup = config.optim.get("warmup_steps", 0)

  def schedule(lr):
    return with_linear_warmup(
        poly_schedule(lr, config.train.lr_horizon_steps, config.optim.poly_power), warmup)
  return {"backbone": schedule(config.optim.lr),
          "head": schedule(config.optim.lr * config.optim.head_lr_mult)}


# How often AdaptSegNet's `get_1x_lr_params_NOscale` / ADVENT's `get_1x_lr_params_no_scale` list
# a backbone tensor: once per module whose recursive `parameters()` hold it. First match wins;
# anything else (stem conv1/bn1, the heads of the 10x group) is listed once.
LISTING_RULES = (
    (re.compile(r"^layer\d/block\d+/downsample_(conv|bn)/"), 4),  # layerN, block, Sequential, conv
    (re.compile(r"^layer\d/block\d+/(conv|bn)\d/"), 3),  # layerN, block, conv
)


def listing_multiplicity(params: Any) -> Any:
  """A tree like `params` of how many times the references' SGD lists each tensor.

  Stem `conv1`/`bn1` and the heads: 1; `layerN/blockI/(conv|bn)K`: 3;
  `layerN/block0/downsample_(conv|bn)`: 4. BN affines (trainable in sat/seat) count like their
  sibling convs, as they would in the reference walk; frozen tensors are dropped by the caller.
  """
  def count(path: tuple[str, ...], _) -> int:
    name = _path_name(path)
    return next((k for pattern, k in LISTING_RULES if pattern.search(name)), 1)

  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: count(k, v) for k, v in flat.items()})


class DuplicateListingSgdState(NamedTuple):
  count: jax.Array  # optimiser steps taken; 0 selects torch's buffer-less first step
  trace: Any  # one momentum buffer per tensor, shared by all of its listings


def duplicate_listing_sgd(learning_rate: optax.ScalarOrSchedule, momentum: float,
                          weight_decay: float, multiplicity: Any) -> optax.GradientTransformation:
  """torch.optim.SGD (coupled decay, momentum, no Nesterov) on a tensor listed k times in a group.

  Why: the references' 1x group lists backbone tensors 3-4 times and SGD updates once per
  listing, so their backbone trains at a larger effective rate (docs/reproducing-seat.md).
  Measured on torch 2.13 (CPU single-tensor SGD), one `step()` with the same gradient g for all
  listings:
    - for j in 1..k: d = g + wd * p (p already moved by listings < j); p -= lr * buf, where
      buf = m * buf + d on later steps: the listings share one buffer (`state[p]`), advanced k
      times per step;
    - on the first step every listing starts a fresh buffer buf = d (the buffers are gathered
      from `state` before the loop, all None), and the last listing's buffer is the one stored.
  With g = 1, wd = 0, m = 0.9: k = 3 moves 3.0x the k = 1 displacement after 1 step, 3.81x after
  2, 4.75x after 10, 3.02x after 1000 (k = 4: 4.0x, 5.57x, 6.88x, 4.02x): 3x (4x) in steady
  state, faster early because the buffer decays by m^k per step. Weight decay is k x too.
  Not reproduced: torch 0.3/0.4 (which the references ran) added the decay into `p.grad` in place
  (listing j then sees g + wd * (p_1 + ... + p_j)) and shared the buffer from the first step.

  multiplicity: k >= 0 per tensor (a tree like the params, or one int for all); 0 never moves.
  Updates are `p_final - p`, so `apply_updates` lands on torch's value up to one rounding.
  """
  schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

  def ks(tree):
    if isinstance(multiplicity, int):
      return jax.tree.map(lambda _: multiplicity, tree)
    return multiplicity

  def init_fn(params):
    return DuplicateListingSgdState(count=jnp.zeros((), jnp.int32),
                                    trace=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("duplicate_listing_sgd needs the params (weight decay reads them).")
    lr = schedule(state.count)
    first = state.count == 0

    def leaf(k, g, p, buf):
      p_new = p
      for _ in range(k):
        d = g + weight_decay * p_new
        buf = jnp.where(first, d, momentum * buf + d)
        p_new = p_new - lr * buf
      return p_new - p, buf

    grads, treedef = jax.tree.flatten(updates)
    rest = (treedef.flatten_up_to(t) for t in (ks(updates), params, state.trace))
    pairs = [leaf(k, g, p, buf) for g, k, p, buf in zip(grads, *rest)]
    new_updates = treedef.unflatten([u for u, _ in pairs])
    trace = treedef.unflatten([buf for _, buf in pairs])
    return new_updates, DuplicateListingSgdState(optax.safe_int32_increment(state.count), trace)

  return optax.GradientTransformation(init_fn, update_fn)


def decay_mask(no_decay_patterns: Sequence[str]):
  """fn(params) -> a tree like `params`: False where a `no_decay_patterns` regex matches the
  path (mmseg's `decay_mult=0`, which DAFormer and MIC give every MiT LayerNorm), else True.

  A function rather than a tree: `multi_transform` hands each group's optimiser its own subset
  of the params, and the mask must take that subset's shape.
  """
  patterns = [re.compile(p) for p in no_decay_patterns]

  def mask(params):
    def decays(path, _):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      return not any(p.search(name) for p in patterns)
    return jax.tree_util.tree_map_with_path(decays, params)
  return mask


def make_segmenter_tx(config, params: Any) -> optax.GradientTransformation:
  """SGD + momentum + weight decay + poly lr with 1x/10x/frozen groups for `params` (or AdamW).

  With `optim.reference_duplicate_updates`, each trainable tensor is updated as often per step
  as the references' optimiser lists it (`listing_multiplicity`, `duplicate_listing_sgd`).
  Params matching `optim.no_decay_patterns` get no weight decay (AdamW and plain SGD).
  """
  schedules = segmenter_lr_schedules(config)
  labels = param_groups(params, config.optim.head_patterns, frozen_patterns(config))
  no_decay = tuple(config.optim.get("no_decay_patterns", ()))
  mask = decay_mask(no_decay) if no_decay else None
  if config.optim.get("name", "sgd") == "adamw":
    def adamw(schedule):
      return optax.adamw(schedule, b1=config.optim.adam_b1, b2=config.optim.adam_b2,
                         eps=config.optim.get("adam_eps", 1e-8),
                         weight_decay=config.optim.weight_decay, mask=mask)
    return optax.multi_transform(
        {"backbone": adamw(schedules["backbone"]), "head": adamw(schedules["head"]),
         "frozen": optax.set_to_zero()}, labels)
  if config.optim.reference_duplicate_updates:
    return _duplicate_listing_tx(config, schedules, labels, listing_multiplicity(params))

  def sgd(schedule):
    return optax.chain(
        optax.add_decayed_weights(config.optim.weight_decay, mask=mask),
        optax.sgd(schedule, momentum=config.optim.momentum))

  return optax.multi_transform(
      {"backbone": sgd(schedules["backbone"]), "head": sgd(schedules["head"]),
       "frozen": optax.set_to_zero()},
      labels)


def _duplicate_listing_tx(config, schedules, labels, multiplicity) -> optax.GradientTransformation:
  """One `duplicate_listing_sgd` per (group, multiplicity) pair; frozen tensors stay put."""
  def label(group: str, k: int) -> str:
    return group if group == "frozen" else f"{group}_x{k}"

  pair_labels = jax.tree.map(label, labels, multiplicity)
  transforms = {"frozen": optax.set_to_zero()}
  for name in set(jax.tree.leaves(pair_labels)) - {"frozen"}:
    group, k = name.rsplit("_x", 1)
    transforms[name] = duplicate_listing_sgd(
        schedules[group], config.optim.momentum, config.optim.weight_decay, int(k))
  return optax.multi_transform(transforms, pair_labels)


def disc_lr_schedule(config) -> optax.Schedule:
  return poly_schedule(config.optim.disc_lr, config.train.lr_horizon_steps, config.optim.poly_power)


def lr_schedules(config) -> dict[str, optax.Schedule]:
  """Every learning-rate schedule by group name, for logging: backbone, head, disc."""
  return {**segmenter_lr_schedules(config), "disc": disc_lr_schedule(config)}


def make_disc_tx(config) -> optax.GradientTransformation:
  """Adam(betas 0.9/0.99) with poly lr, no weight decay (AdaptSegNet's discriminator optimiser)."""
  return optax.adam(disc_lr_schedule(config), b1=config.optim.disc_b1, b2=config.optim.disc_b2)
