"""Every method the training step composes, one module each, and their registry.

A method brings its config entries, options, state and loss terms behind `base.Method`; the step
calls the enabled ones in REGISTRY order (source terms, then target terms after the adversary,
then their updates), so adding a method is its module plus one line here. Shared machinery
(the step, the input pipeline, evaluation, pseudo-labels) stays outside, so any method combines
with SEAT norms (`model.norm_mode`). Multi-run procedures (FDA's rounds, IntraDA's stages) are
recipes (`seat_jax.recipes`), above training.
"""

from seat_jax.methods import adabn
from seat_jax.methods import base
from seat_jax.methods import clustering
from seat_jax.methods import dacs
from seat_jax.methods import daformer
from seat_jax.methods import differential
from seat_jax.methods import fda
from seat_jax.methods import intrada
from seat_jax.methods import minent
from seat_jax.methods import self_training

REGISTRY: tuple[type[base.Method], ...] = (
    daformer.FeatureDistance,  # source terms
    dacs.Mixing,  # source terms (own forward passes), teacher update
    fda.RobustEntropy,  # target terms, in this order
    minent.MinEnt,
    self_training.TargetCrossEntropy,
    differential.Differential,
    clustering.Clustering,
    adabn.AdaBN,  # config only: passes and recipes use them
    intrada.IntraDA,
)


def add_config(config) -> None:
  """Every method's config entries, in registry order."""
  for method in REGISTRY:
    method.add_config(config)


def enabled(config) -> tuple[base.Method, ...]:
  """The methods `config` turns on, with their static options, in registry order."""
  return tuple(m.from_config(config) for m in REGISTRY if m.enabled(config))


def problems(config) -> list[str]:
  return [line for method in REGISTRY for line in method.problems(config)]


def weights(config) -> dict[str, float]:
  """Every method's runtime values (disabled ones too, so the step's inputs keep one shape)."""
  out = {}
  for method in REGISTRY:
    out.update(method.weights(config))
  return out
