"""Self-training on target pseudo-labels (the paper's stage 2, IntraDA's and FDA's rounds).

When `data.target.pseudo_label_dir` is set, the input pipeline reads a label for every target
image from it, and this plug-in adds `target_ce_weight * (CE(main) + aux_weight * CE(aux))` on
the upsampled target maps, ignoring the pixels the pseudo-labels leave at 255. The labels come
from `--config.mode=pseudo_labels` (or IntraDA's ranking); the recipes chain the stages.
"""

import dataclasses

from seat_jax import batch as batch_keys
from seat_jax import losses
from seat_jax.methods import base


@dataclasses.dataclass(frozen=True)
class TargetCrossEntropy(base.Method):
  needs_target_pass = True

  @staticmethod
  def add_config(config):
    loss = base.section(config, "loss")
    loss.target_ce_weight = 1.0  # stage 2: CE on target pseudo-labels

  @staticmethod
  def enabled(config):
    return batch_keys.target_has_labels(config)

  @staticmethod
  def weights(config):
    return {"target_ce_weight": config.loss.target_ce_weight}

  def target_terms(self, ctx):
    w, labels = ctx.weights, ctx.batch[batch_keys.TARGET_LABEL]
    tgt_main = losses.cross_entropy(ctx.target.main, labels)
    tgt_aux = base.on_aux(losses.cross_entropy, ctx.target.aux, labels)
    return (w["target_ce_weight"] * (tgt_main + w["aux_weight"] * tgt_aux),
            {"target_seg_main": tgt_main})
