"""The named experiment presets behind `configs/*.py`: the paper's rows and the compared methods.

`configs/` files are loaded by path (ml_collections `config_flags`), so they cannot import each
other; each is a two-line wrapper around one function here. Every choice the paper leaves open
is made here once and listed in README ("What the presets choose").
"""

import ml_collections

from seat_jax import config_defaults

# Rows of the paper's Tables 5 (GTA5) and 6 (SYNTHIA), in the tables' order.
ABLATION_ROWS = ("aa", "it", "sat", "seat", "mul")
# Table 4: the compared methods with and without SEAT, trained on the original GTA5 images.
TABLE4_ROWS = ("adaptsegnet", "adaptsegnet_seat", "advent", "advent_seat")
# The paper's best layer switch (section 5.2): stages 3-4 on GTA5, stage 4 on SYNTHIA.
GTA_LAYER_SWITCH = (3, 4)
SYNTHIA_LAYER_SWITCH = (4,)


def _paper_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What every real-data preset shares: the references' optimiser, as they ran it."""
  config.optim.reference_duplicate_updates = True  # REFERENCE 1.6; README "Optimiser"
  return config


def _adaptsegnet_single_level(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """AdaptSegNet's single-level recipe: one D on the main head, no aux CE (its README)."""
  config.adv.mode = "single"
  config.loss.aux_weight = 0.0
  return config


def _shared_frozen_bn(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
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
    _shared_frozen_bn(config)
  elif row == "sat":
    config.model.norm_mode = "sat"
  if row != "mul":
    _adaptsegnet_single_level(config)
  return config


def _gta_base() -> ml_collections.ConfigDict:
  config = _paper_recipe(config_defaults.get_config())
  config.data.source.name = "gta5"
  config.data.source.builder_config = "translated"
  config.data.source.resize_hw = (720, 1280)
  config.data.source.crop_hw = (512, 1024)
  config.train.num_steps = 150_000
  return config


def gta(row: str = "mul") -> ml_collections.ConfigDict:
  """GTA5 -> Cityscapes stage 1 at the paper's sizes: a row of Table 5 or of Table 4."""
  row = row or "mul"
  if row in TABLE4_ROWS:
    return _table4(row)
  config = _gta_base()
  if row == "aa":
    config.data.source.builder_config = "original"
  return apply_ablation_row(config, row, GTA_LAYER_SWITCH)


def _table4(row: str) -> ml_collections.ConfigDict:
  """Table 4: AdaptSegNet single level and ADVENT's adversarial model, without/with SEAT.

  On the original GTA5 images (the paper's baselines 40.4 and 43.8). ADVENT's model: two
  discriminators on self-information (entropy) maps, weights 0.001 (main) / 0.0002 (aux), aux CE
  0.1, stopped at 120k steps with a snapshot every 2k (ADVENT reports its best snapshot).
  """
  config = _gta_base()
  config.data.source.builder_config = "original"
  config.eval.source_stages = GTA_LAYER_SWITCH
  if row.startswith("adaptsegnet"):
    _adaptsegnet_single_level(config)
  else:
    config.adv.mode = "two_discriminators"
    config.adv.input = "entropy"
    config.adv.weight, config.adv.weight_aux = 0.001, 0.0002
    config.loss.aux_weight = 0.1
    config.train.num_steps = 120_000
    config.train.checkpoint_every = 2000
  if not row.endswith("_seat"):
    _shared_frozen_bn(config)
  return config


def synthia(row: str = "mul") -> ml_collections.ConfigDict:
  """SYNTHIA -> Cityscapes stage 1, 16-class model scored as mIoU13 (and mIoU16) (Table 6)."""
  row = row or "mul"
  config = _paper_recipe(config_defaults.get_config())
  config.model.num_classes = 16
  config.data.label_space = "synthia16"
  config.data.source.name = "synthia"
  config.data.source.builder_config = ""
  config.data.source.resize_hw = (760, 1280)
  config.data.source.crop_hw = (512, 1024)
  config.train.num_steps = 90_000  # the SYNTHIA schedule of ADVENT/DADA (ADVENT issue #12)
  # The paper: "+SEAT ... 47.0 (no layer switch)", "+Mul ... 47.4 (layer switch 4-4)".
  layer_switch = SYNTHIA_LAYER_SWITCH if row == "mul" else ()
  return apply_ablation_row(config, row, layer_switch)


def stage2(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Self-training (paper section 3.3): re-initialised model, source labels + target pseudo-labels.

  The user points `init_from` at the pretrained init (as stage 1 started from) and
  `data.target.pseudo_label_dir` at the output of `--config.mode=pseudo_labels`. The adversarial
  term stays as in stage 1 (BDL's stage 2 keeps it; the paper's equation 9 is not legible).
  """
  config.loss.target_ce_weight = 1.0
  config.data.target.pseudo_label_dir = "REQUIRED: --config.data.target.pseudo_label_dir=DIR"
  return config


def demo(norm_mode: str = "seat") -> ml_collections.ConfigDict:
  """A tiny segmenter on the built-in `synthetic_streets` shift; minutes on 2 CPU cores."""
  config = config_defaults.get_config()
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 8
  config.data.source.name = "synthetic_streets"
  config.data.source.builder_config = "source"
  config.data.source.resize_hw = (64, 128)
  config.data.source.crop_hw = (64, 128)
  config.data.target.name = "synthetic_streets"
  config.data.target.builder_config = "target"
  config.data.target.resize_hw = (64, 128)
  config.data.val.name = "synthetic_streets"
  config.data.val.builder_config = "target"
  config.data.val.resize_hw = (64, 128)
  config.model.norm_mode = norm_mode
  config.train.batch_size = 4
  config.train.num_steps = 300
  config.train.lr_horizon_steps = 300
  config.optim.lr = 1e-2
  config.optim.disc_lr = 1e-4
  config.train.log_every = 50
  config.train.checkpoint_every = 100
  config.train.eval_every = 100
  config.eval.source_stages = ()
  if norm_mode == "shared":
    config.adv.mode = "none"
  return config
