"""The experiment presets behind `configs/*.py`, kept in the package so they can share code.

`configs/` files are loaded by path (ml_collections `config_flags`), so they cannot import each
other; each is a two-line wrapper around one function here.
"""

import ml_collections

from seat_jax import config_defaults

ABLATION_ROWS = ("aa", "it", "sat", "seat", "mul")


def apply_ablation_row(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """Turns a stage-1 preset into one row of the paper's Tables 5/6, in place.

  aa: AdaptSegNet single level, shared BN with frozen affine; it: + translated source images;
  sat: per-domain statistics, shared affine; seat: per-domain statistics and affine (+ layer
  switch); mul: + multi-level adaptation (the presets' default).
  """
  if row not in ABLATION_ROWS:
    raise ValueError(f"Unknown ablation row {row!r}; choose one of {ABLATION_ROWS}.")
  if row in ("aa", "it"):
    config.model.norm_mode = "shared"
    config.model.bn_affine_trainable = False
    config.eval.source_stages = ()
  elif row == "sat":
    config.model.norm_mode = "sat"
  if row != "mul":
    config.adv.mode = "single"  # one discriminator on the main head
  return config


def gta(row: str = "mul") -> ml_collections.ConfigDict:
  """GTA5 -> Cityscapes stage 1 at the paper's sizes (Table 5)."""
  row = row or "mul"
  config = config_defaults.get_config()
  config.data.source.name = "gta5"
  config.data.source.builder_config = "original" if row == "aa" else "translated"
  config.data.source.resize_hw = (720, 1280)
  config.data.source.crop_hw = (512, 1024)
  config.train.num_steps = 150_000
  config.eval.source_stages = (3, 4)  # the paper's best layer switch on GTA5 ("LS 3-4")
  return apply_ablation_row(config, row)


def synthia(row: str = "mul") -> ml_collections.ConfigDict:
  """SYNTHIA -> Cityscapes stage 1, 16-class model scored as mIoU16/13 (Table 6)."""
  row = row or "mul"
  config = config_defaults.get_config()
  config.model.num_classes = 16
  config.data.label_space = "synthia16"
  config.data.source.name = "synthia"
  config.data.source.builder_config = ""
  config.data.source.resize_hw = (760, 1280)
  config.data.source.crop_hw = (512, 1024)
  config.train.num_steps = 90_000  # the SYNTHIA schedule of ADVENT/DADA (ADVENT issue #12)
  config.eval.source_stages = (4,)  # "LS 4-4", the paper's SYNTHIA layer switch
  return apply_ablation_row(config, row)


def stage2(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Self-training (paper section 3.3): re-initialised model, source labels + target pseudo-labels.

  The user points `init_from` at the pretrained init (as stage 1 started from) and
  `data.target.pseudo_label_dir` at the output of `--config.mode=pseudo_labels`.
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
