"""The paper's rows: the references' recipe, Tables 4-6, source only, stage 2."""

import ml_collections

from seat_jax import config_defaults
from seat_jax.presets.rows import ABLATION_ROWS, GTA_LAYER_SWITCH


def paper_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What every real-data preset shares: the references' optimiser, as they ran it."""
  config.optim.reference_duplicate_updates = True  # docs/reproducing-seat.md
  return config


def adaptsegnet_single_level(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """AdaptSegNet's single-level recipe: one D on the main head, no aux CE (its README)."""
  config.adv.mode = "single"
  config.loss.aux_weight = 0.0
  return config


def shared_frozen_bn(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Plain BN with the pretrained affine frozen, as AdaptSegNet and ADVENT train it."""
  config.model.norm_mode = "shared"
  config.model.bn_affine_trainable = False
  config.eval.source_stages = ()  # one set of statistics: nothing to switch
  return config


def apply_ablation_row(config: ml_collections.ConfigDict, row: str,
                       layer_switch: tuple[int, ...]) -> ml_collections.ConfigDict:
  """Turns a stage-1 preset into one row of the paper's Tables 5/6, in place.

  aa: AdaptSegNet single level, shared BN with frozen affine, original images; it: + translated
  source images; sat: per-domain statistics with a shared affine (for comparison; not a paper
  row); seat: per-domain statistics and affine, single level; mul: + multi-level adaptation
  (lambda 0.05; the presets' default). `layer_switch` is the row's evaluation-time layer switch.
  """
  if row not in ABLATION_ROWS:
    raise ValueError(f"Unknown ablation row {row!r}; choose one of {ABLATION_ROWS}.")
  config.eval.source_stages = layer_switch
  if row in ("aa", "it"):
    shared_frozen_bn(config)
  elif row == "sat":
    config.model.norm_mode = "sat"
  if row != "mul":
    adaptsegnet_single_level(config)
  return config


def gta_base() -> ml_collections.ConfigDict:
  config = paper_recipe(config_defaults.get_config())
  config.data.source.name = "gta5"
  config.data.source.builder_config = "translated"
  config.data.source.resize_hw = (720, 1280)
  config.data.source.crop_hw = (512, 1024)
  config.train.num_steps = 150_000
  return config


def source_only(config: ml_collections.ConfigDict,
                translated: bool = False) -> ml_collections.ConfigDict:
  """Source labels only: no adversary, no target pass (so no target statistics), shared BN.

  The references' source-only baseline (AdaptSegNet's single-level recipe with lambda_adv 0).
  AdaBN then fills in target statistics (`--config.mode=adabn`); `translated` uses CycleGAN's
  GTA5-as-Cityscapes images, the input side of CyCADA (its CycleGAN training and its feature
  discriminator are not part of this package).
  """
  config.data.source.builder_config = "translated" if translated else "original"
  adaptsegnet_single_level(shared_frozen_bn(config))
  config.adv.mode = "none"
  return config


def table4(row: str) -> ml_collections.ConfigDict:
  """Table 4: AdaptSegNet single level and ADVENT's adversarial model, without/with SEAT.

  On the original GTA5 images (the paper's baselines 40.4 and 43.8). ADVENT's model: two
  discriminators on self-information (entropy) maps, weights 0.001 (main) / 0.0002 (aux), aux CE
  0.1, stopped at 120k steps with a snapshot every 2k (ADVENT reports its best snapshot).
  """
  config = gta_base()
  config.data.source.builder_config = "original"
  config.eval.source_stages = GTA_LAYER_SWITCH
  if row.startswith("adaptsegnet"):
    adaptsegnet_single_level(config)
  else:
    config.adv.mode = "two_discriminators"
    config.adv.input = "entropy"
    config.adv.weight, config.adv.weight_aux = 0.001, 0.0002
    config.loss.aux_weight = 0.1
    config.train.num_steps = 120_000
    config.train.checkpoint_every = 2000
  if not row.endswith("_seat"):
    shared_frozen_bn(config)
  return config


def stage2(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Self-training (paper section 3.3): re-initialised model, source labels + target pseudo-labels.

  The user points `init_from` at the pretrained init (as stage 1 started from) and
  `data.target.pseudo_label_dir` at the output of `--config.mode=pseudo_labels`. The adversarial
  term stays as in stage 1 (BDL's stage 2 keeps it; the paper's equation 9 is not legible).
  """
  config.loss.target_ce_weight = 1.0
  config.data.target.pseudo_label_dir = "REQUIRED: --config.data.target.pseudo_label_dir=DIR"
  return config
