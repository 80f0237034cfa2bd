"""ADVENT's MinEnt (Vu et al., CVPR 2019): minimise the target predictions' entropy directly.

The loss is `entropy_weight * H(main) + entropy_weight_aux * H(aux)`, H the mean over pixels of
the self-information summed over classes and normalised by log2(C) (`losses.entropy_loss`), on
the upsampled target maps. The step computes both entropies on every target pass (they are
logged as diagnostics); this plug-in adds them to the loss when its weights are set
(ADVENT's `train_minent`: 0.001 on the main head, 0.0002 on the aux head).
"""

import dataclasses

from seat_jax.methods import base


@dataclasses.dataclass(frozen=True)
class MinEnt(base.Method):
  needs_target_pass = True

  @staticmethod
  def add_config(config):
    loss = base.section(config, "loss")
    loss.entropy_weight = 0.0  # ADVENT MinEnt on target, main head; 0 = off
    loss.entropy_weight_aux = 0.0  # ADVENT MinEnt on the aux head (ADVENT: 0.0002)

  @staticmethod
  def enabled(config):
    return bool(config.loss.entropy_weight or config.loss.entropy_weight_aux)

  @staticmethod
  def weights(config):
    return {"entropy_weight": config.loss.entropy_weight,
            "entropy_weight_aux": config.loss.entropy_weight_aux}

  def target_terms(self, ctx):
    w, target = ctx.weights, ctx.target
    return (w["entropy_weight"] * target.entropy + w["entropy_weight_aux"] * target.entropy_aux,
            {})
