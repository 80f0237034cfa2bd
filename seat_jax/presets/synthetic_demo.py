"""configs/demo.py: the tiny segmenter on the built-in synthetic_streets shift, and every
method's row at that size."""

import ml_collections

from seat_jax import config_defaults
from seat_jax.methods import clustering as clustering_method
from seat_jax.methods import dacs
from seat_jax.methods import daformer
from seat_jax.methods import differential as differential_method
from seat_jax.methods import mic as mic_method
from seat_jax.presets.rows import (
    CLUSTERING_ROWS, DIFFERENTIAL_ROWS, FDA_ROWS, INTRADA_ROWS, check_row)
from seat_jax.presets.compared import fda, intrada, intrada_stage2
from seat_jax.presets.mixing_recipes import mic_statistics, mixed_image_norm
from seat_jax.presets.transformer_recipes import DECODER_PATTERN, MIT_NORM_PATTERN


def _demo_method(row: str) -> ml_collections.ConfigDict:
  """The compared and mixing methods on the demo's tiny model and budget (configs/demo.py rows).

  Same data, model, batch and 300 steps as the demo's other rows; the methods' losses, weights
  and teachers as their presets, sizes scaled to the 64x128 images (MIC blocks of 16 pixels,
  banks of 8 / 32 features, no warmup, SGD at the demo's lr so the rows compare on equal terms).
  """
  seat = "_seat" in row
  config = demo("seat" if seat else "shared")
  if row.startswith("differential"):
    config.adv.mode = "single"
    config.differential.stuff_weight = differential_method.LAMBDA_STUFF
    config.differential.thing_weight = differential_method.LAMBDA_THING
    config.differential.stuff_bank, config.differential.thing_bank = 8, 32
    return config
  if row.startswith("clustering"):
    config.adv.mode = "none"
    if not row.endswith("_source"):
      for key, value in clustering_method.PUBLISHED_WEIGHTS["gta5"].items():
        config.clustering[key] = value
      config.train.num_steps = config.train.lr_horizon_steps = 100
      config.init_from = f"REQUIRED: --config.init_from=<the demo {row}_source run's workdir>"
    return config
  config.adv.mode = "none"
  config.mix.enabled = True
  mixed_image_norm(config)
  config.mix.teacher_alpha = dacs.DACS_ALPHA
  method = row.removesuffix("_seat")
  if method in ("daformer", "mic"):
    config.mix.fd_weight = daformer.FD_LAMBDA
    config.data.source.rcs_temperature = 0.01
    config.data.source.rcs_min_pixels = 16
  if method == "mic":
    config.mix.mic_weight = mic_method.MASK_LAMBDA
    config.mix.mic_block, config.mix.mic_ratio = 16, mic_method.MASK_RATIO
    mic_statistics(config)
  return config


DEMO_METHOD_ROWS = (*DIFFERENTIAL_ROWS, *CLUSTERING_ROWS, "dacs", "dacs_seat", "daformer",
                    "daformer_seat", "mic", "mic_seat")


# The transformer rows: a tiny MiT with DAFormer's decoder (`_demo_mit`).
MIT_DEMO_ROWS = ("mit_pretrain", "mit_source_only", "daformer_mit", "daformer_mit_sat",
                 "daformer_mit_seat", "mic_mit", "mic_mit_seat")

DEMO_ROWS = ("seat", "sat", "shared", "pretrain", *INTRADA_ROWS, "intrada_stage2",
             "intrada_seat_stage2", *FDA_ROWS, *DEMO_METHOD_ROWS, *MIT_DEMO_ROWS)

# MiT-B0's shape (one block per stage, B0's heads and reductions) at half B0's width: the
# demo's budget on 2 CPU cores. DAFormer's decoder at 64 channels with two ASPP branches.
TINY_MIT = dict(embed_dims=(16, 32, 80, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 5, 8),
                sr_ratios=(8, 4, 2, 1))
TINY_DAFORMER_DECODER = dict(name="daformer", channels=64, embed_dims=64, dilations=(1, 6),
                             dropout=0.1)


def _demo_mit(row: str) -> ml_collections.ConfigDict:
  """DAFormer and MIC on a tiny MiT at the demo's size and budget (configs/demo.py:*mit*).

  `mit_pretrain` is the stand-in for the ImageNet MiT the references start from (trained once
  with labels on the `pretrain` style, as the DeepLab rows' `pretrain`); every other row starts
  from it. `mit_source_only`: source images only. `daformer_mit[_sat|_seat]`: DAFormer's
  self-training (ClassMix, EMA teacher with DAFormer's timing, thing-class feature distance,
  RCS; the EMA at the demo's 0.99) with the reference's shared norms, SAT or SEAT norms; `mic_mit[_seat]` adds MIC's masked
  target images (16-pixel blocks at 64x128). AdamW with a 10x decoder and no decay on the
  LayerNorms as DAFormer, at a learning rate scaled to 300 steps (6e-4, no warmup).
  """
  norm_mode = {"_sat": "sat", "_seat": "seat"}.get(row[row.rfind("_"):], "shared")
  config = demo(norm_mode)
  m = config.model
  m.name = "segformer"
  m.mit.update(**TINY_MIT, mlp_ratio=4, drop_path_rate=0.1, layer_norm_eps=1e-6)
  m.decoder.update(**TINY_DAFORMER_DECODER)
  config.loss.aux_weight = 0.0  # one head
  config.adv.mode = "none"
  config.optim.name = "adamw"
  config.optim.lr = 6e-4
  config.optim.weight_decay = 0.01
  config.optim.head_patterns = (DECODER_PATTERN,)
  config.optim.no_decay_patterns = (MIT_NORM_PATTERN,)
  config.optim.poly_power = 1.0
  if row == "mit_pretrain":
    for split in (config.data.source, config.data.target, config.data.val):
      split.builder_config = "pretrain"
    config.train.eval_every = 0
  if row in ("mit_pretrain", "mit_source_only"):
    return config
  config.mix.enabled = True
  mixed_image_norm(config)
  config.mix.teacher_alpha = dacs.DACS_ALPHA  # the demo's other mixing rows' (300 steps)
  config.mix.teacher_schedule = "daformer"
  config.mix.jitter_strength = dacs.DAFORMER_JITTER_STRENGTH
  config.mix.fd_weight = daformer.FD_LAMBDA
  config.data.source.rcs_temperature = 0.01
  config.data.source.rcs_min_pixels = 16
  if row.startswith("mic"):
    config.mix.mic_weight = mic_method.MASK_LAMBDA
    config.mix.mic_block, config.mix.mic_ratio = 16, mic_method.MASK_RATIO
    mic_statistics(config)
  return config


def _demo_fda(row: str) -> ml_collections.ConfigDict:
  """FDA on the demo's tiny model and budget (configs/demo.py:fda_b001 ... :fda_b009_seat)."""
  return fda(demo("seat" if row.endswith("_seat") else "shared"), row, (), schedule=False,
             eval_hw=None)


def demo_intrada(row: str) -> ml_collections.ConfigDict:
  """IntraDA on the demo's tiny model and budget (configs/demo.py:intrada[_seat][_stage2]).

  Shared BN as the demo's source-only row (affine trainable), or SEAT norms; ADVENT's losses as
  in `table4`; a checkpoint every 100 steps, so eval mode can pick the best on val.
  """
  config = demo("seat" if row.startswith("intrada_seat") else "shared")
  config.adv.mode = "two_discriminators"
  config.adv.input = "entropy"
  config.adv.weight, config.adv.weight_aux = 0.001, 0.0002
  config.loss.aux_weight = 0.1
  config = intrada(config)
  return intrada_stage2(config) if row.endswith("_stage2") else config


def demo_row(row: str = "seat") -> ml_collections.ConfigDict:
  """configs/demo.py's rows: a norm mode (shared = source only, sat, seat) or a method's row."""
  row = row or "seat"
  check_row(row, DEMO_ROWS, "configs/demo.py", default="seat")
  if row in FDA_ROWS:  # :fda_b001 ... :fda_b009_seat
    return _demo_fda(row)
  if row.startswith("intrada"):  # :intrada[_seat][_stage2]
    return demo_intrada(row)
  if row in DEMO_METHOD_ROWS:
    return _demo_method(row)
  if row in MIT_DEMO_ROWS:
    return _demo_mit(row)
  if row == "pretrain":
    return demo_pretrain()
  return demo(row)


def demo_pretrain() -> ml_collections.ConfigDict:
  """The demo's stand-in for the pretrained DeepLab weights every paper run starts from.

  The tiny segmenter trained once with labels on synthetic_streets' `pretrain` style (neither
  the source's nor the target's), plain BN, no adversary, the demo's budget. Every demo run
  starts from it (`init_from`), and stage 2 re-initialises to it, as the paper's pipeline does.
  """
  config = demo("shared")
  for split in (config.data.source, config.data.target, config.data.val):
    split.builder_config = "pretrain"
  config.train.eval_every = 0
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
