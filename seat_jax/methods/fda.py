"""FDA (Yang and Soatto, CVPR 2020): its robust entropy and its recipe's constants.

What FDA brings beyond the shared machinery, and where each part runs:
  * the source image takes a target image's low-frequency amplitude (`seat_jax.fda`, applied by
    the input pipeline with `data.fda_beta`);
  * a Charbonnier-penalised entropy of the target's stride-8 main logits (`robust_entropy`,
    the step's `RobustEntropy` plug-in, `loss.robust_entropy_weight` and `_eta`);
  * multi-band transfer (MBT): one model per beta (0.01, 0.05, 0.09), their softmax averaged
    (`eval.ensemble`, in `predict`, `evaluate` and `pseudo_labels`), class-wise pseudo-labels from
    the average (`pseudo.rule=class_quantile`, quantile 0.66, cap 0.9), then self-training
    rounds that train the three models again from the init on those labels (the recipe
    `seat_jax.recipes.fda_rounds`, `--config.mode=fda_rounds`, with this module's `fda.*`
    entries).
Facts are from YanchaoYang/FDA (docs/compared-methods-research.md section 2).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from seat_jax.methods import base

# FDA's README recipe (train.py / SStrain.py flags): --LB, --entW, --ita, with switch2entropy 0.
BETAS = (0.01, 0.05, 0.09)
ROBUST_ENTROPY_WEIGHT = 0.005
ROBUST_ENTROPY_ETA = 2.0
# Added to the squared normalised entropy before the power (model/deeplab.py; the paper's
# equation writes 0.001^2 on the raw entropy instead).
ROBUST_ENTROPY_EPSILON = 1e-8
# getSudoLabel_multi.py: per class, the confidence at index round(0.66 N) of the ascending
# confidences, capped at 0.9 (so about the top third of each class is kept).
MBT_QUANTILE = 0.66
MBT_CAP = 0.9
# FDA's schedule (options/train_options.py): poly over 150k steps, stopped at 100k, a
# snapshot every 2,500.
# The validation images' (height, width) in FDA's evaluation_multi.py (data/__init__.py
# cs_size_test 1344x576; both papers state 1024x512, FDA issue #24 asks why, unanswered).
EVAL_HW = (576, 1344)
LR_HORIZON_STEPS = 150_000
NUM_STEPS = 100_000
CHECKPOINT_EVERY = 2_500


def robust_entropy(logits: jax.Array, eta: jax.Array | float = ROBUST_ENTROPY_ETA) -> jax.Array:
  """FDA's robust entropy: mean over pixels of ((H / ln C)^2 + 1e-8)^eta, a float32 scalar.

  logits: [N, h, w, C] at the head's own resolution (FDA: stride 8, before any upsampling).
  H is the natural-log entropy of softmax(logits); dividing by ln C puts it in [0, 1] (FDA
  hard-codes 2.9444, ln 19 to 4 decimals). With eta = 2 the penalty is ~e^4: uncertain pixels
  carry the gradient and nearly certain ones get almost none.
  """
  logits = logits.astype(jnp.float32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1) / math.log(logits.shape[-1])
  return jnp.mean((jnp.square(entropy) + ROBUST_ENTROPY_EPSILON) ** eta)


def beta_tag(beta: float) -> str:
  """0.01 -> 'b001': the suffix of the presets and of the per-beta workdirs."""
  return f"b{round(beta * 100):03d}"


@dataclasses.dataclass(frozen=True)
class RobustEntropy(base.Method):
  """FDA's robust entropy on the target pass's stride-8 main logits; owns the MBT rounds'
  entries too (`fda.*`, read by the fda_rounds recipe)."""
  needs_target_pass = True

  @staticmethod
  def add_config(config):
    loss = base.section(config, "loss")
    # FDA's robust entropy on the target's stride-8 main logits (FDA: 0.005, eta 2); 0 = off.
    loss.robust_entropy_weight = 0.0
    loss.robust_entropy_eta = 2.0  # the robust entropy's exponent eta (FDA: 2)
    fda = base.section(config, "fda")
    fda.rounds = 2  # fda_rounds mode: self-training rounds after T=0 (FDA: 2)
    fda.betas = BETAS  # fda_rounds mode: one model per beta, their softmax averaged (MBT)
    fda.evaluate_members = True  # fda_rounds mode: also score each model alone

  @staticmethod
  def enabled(config):
    return bool(config.loss.get("robust_entropy_weight", 0.0))

  @staticmethod
  def problems(config):
    problems = []
    if config.loss.get("robust_entropy_weight", 0.0) and config.loss.robust_entropy_eta <= 0:
      problems.append(f"config.loss.robust_entropy_eta={config.loss.robust_entropy_eta} must "
                      "be > 0 (FDA: 2.0)")
    if config.fda.rounds < 0 or not config.fda.betas:
      problems.append(f"config.fda.rounds={config.fda.rounds} must be >= 0 and config.fda.betas "
                      f"={tuple(config.fda.betas)} hold at least one beta")
    return problems

  @staticmethod
  def weights(config):
    # Configs written before these keys existed have the robust entropy off.
    return {"robust_entropy_weight": config.loss.get("robust_entropy_weight", 0.0),
            "robust_entropy_eta": config.loss.get("robust_entropy_eta", 2.0)}

  def target_terms(self, ctx):
    w = ctx.weights
    robust = robust_entropy(ctx.target.main8, w["robust_entropy_eta"])
    return w["robust_entropy_weight"] * robust, {"robust_entropy": robust}
