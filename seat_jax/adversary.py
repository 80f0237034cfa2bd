"""The output-space adversary, the paper's method and the step's core: what each discriminator
sees, the segmenter's adversarial term and the discriminators' own loss.

Modes and the discriminators each trains: none (source only, or a method without adversary),
single (one D on the main head), multi_level_sum (the paper: one D on the fused map
map(main) + lambda * map(aux)), two_discriminators (AdaptSegNet's multi-level: D `main` and
D `aux`). A map is the softmax (AdaptSegNet) or ADVENT's self-information (`adv.input`).
"""

from typing import Any, Callable

import jax

from seat_jax import losses

PyTree = Any

DISCRIMINATORS = {"none": (), "single": ("main",), "multi_level_sum": ("main",),
                  "two_discriminators": ("main", "aux")}
ADV_MODES = tuple(DISCRIMINATORS)
ADV_INPUTS = ("softmax", "entropy")


def discriminator_names(adv_mode: str) -> tuple[str, ...]:
  return DISCRIMINATORS[adv_mode]


def _output_map(logits: jax.Array, adv_input: str) -> jax.Array:
  probs = jax.nn.softmax(logits.astype("float32"), axis=-1)
  return losses.self_information(probs) if adv_input == "entropy" else probs


def discriminator_input(name: str, main: jax.Array, aux: jax.Array, opts: Any,
                        multi_level_lambda: jax.Array | float = 0.0) -> jax.Array:
  """What discriminator `name` sees for upsampled logits (main, aux); `opts` has `adv_mode` and
  `adv_input` (the step's options)."""
  if name == "aux":
    return _output_map(aux, opts.adv_input)
  fused = _output_map(main, opts.adv_input)
  if opts.adv_mode == "multi_level_sum":
    fused = fused + multi_level_lambda * _output_map(aux, opts.adv_input)
  return fused


def fooling_terms(apply_disc: Callable, disc_params: PyTree, main: jax.Array, aux: jax.Array,
                  opts: Any, weights: dict[str, jax.Array]):
  """The segmenter's adversarial loss on the target maps: each discriminator (held constant)
  should take them for source. Returns (weighted loss, {adv_<name>: loss})."""
  total, metrics = 0.0, {}
  for name in discriminator_names(opts.adv_mode):
    maps = discriminator_input(name, main, aux, opts, weights["multi_level_lambda"])
    adv = losses.bce_with_logits(apply_disc(disc_params, name, maps), losses.SOURCE_DOMAIN_LABEL)
    total += weights["adv_weight_aux" if name == "aux" else "adv_weight"] * adv
    metrics[f"adv_{name}"] = adv
  return total, metrics


def discriminator_loss(apply_disc: Callable, disc_params: PyTree, outputs: dict[str, tuple],
                       opts: Any, weights: dict[str, jax.Array]):
  """Each discriminator's BCE on the detached maps, source label 0 and target label 1, each
  half weighted. `outputs`: {domain: (main, aux) upsampled logits}."""
  total, metrics = 0.0, {}
  for name in discriminator_names(opts.adv_mode):
    per_domain = {}
    for domain, label in (("source", losses.SOURCE_DOMAIN_LABEL),
                          ("target", losses.TARGET_DOMAIN_LABEL)):
      main, aux = outputs[domain]
      maps = jax.lax.stop_gradient(
          discriminator_input(name, main, aux, opts, weights["multi_level_lambda"]))
      per_domain[domain] = losses.bce_with_logits(apply_disc(disc_params, name, maps), label)
    total += 0.5 * per_domain["source"] + 0.5 * per_domain["target"]
    metrics[f"d_{name}_source"] = per_domain["source"]
    metrics[f"d_{name}_target"] = per_domain["target"]
  return total, metrics
