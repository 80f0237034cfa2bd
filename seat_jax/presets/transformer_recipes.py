"""DAFormer and MIC as published: SegFormer's MiT-B5 with DAFormer's decoder
(docs/segformer.md has each number beside the reference file it comes from)."""

import ml_collections

from seat_jax import models
from seat_jax.methods import dacs
from seat_jax.methods import daformer as daformer_method
from seat_jax.methods import mic as mic_method
from seat_jax.presets.mixing_recipes import mic_statistics, mixed_image_norm

# mmseg's paramwise_cfg `norm=dict(decay_mult=0.)` (DAFormer's and MIC's configs) matches every
# parameter whose name holds "norm": the MiT LayerNorms; the decoder's BatchNorms are `bn`.
MIT_NORM_PATTERN = r"^backbone/(.*/)?norm\d*/"
DECODER_PATTERN = r"^decode_head/"


def segformer_model(config: ml_collections.ConfigDict, seat: bool,
                    variant: str = "b5") -> ml_collections.ConfigDict:
  """MiT-`variant` with DAFormer's decoder (daformer_sepaspp_mitb5.py); SEAT norms or the
  reference's (LayerNorms and the decoder's BatchNorms trained, batch statistics)."""
  m = config.model
  m.name = "segformer"
  m.mit.update(**models.mit_config(variant), mlp_ratio=4, drop_path_rate=0.1,
               layer_norm_eps=1e-6)
  m.decoder.update(name="daformer", channels=256, embed_dims=256, dilations=(1, 6, 12, 18),
                   dropout=0.1)
  m.norm_mode = "seat" if seat else "shared"
  m.bn_affine_trainable = True
  m.bn_train_stats = True
  config.loss.aux_weight = 0.0  # one head
  config.eval.source_stages = ()
  return config


def daformer(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """DAFormer (lhoyer/DAFormer gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py)
  and MIC on it (lhoyer/MIC seg/experiments.py id 81, daformer_sepaspp / mitb5); `_seat` rows:
  SEAT norms, mixed images normalised with their own batch statistics (`mix.norm`).

  `config` is a dataset preset (source, resize, label space); this sets the model, the
  optimiser (AdamW 6e-5, 10x decoder, no decay on the MiT norms, 1,500-step linear warmup,
  poly 1.0 over 40k steps), 512x512 crops with flips, batch 2, DAFormer's self-training (EMA
  0.999, confidence 0.968, pseudo-label crop 15/120, colour jitter 0.2), RCS (T 0.01, 3,000 px,
  crop ratio 0.5) and the thing-class feature distance (0.005), with DAFormer's teacher timing
  and mmseg's CE mean over every pixel; `mic` rows add the masked target images (32-px blocks,
  ratio 0.7, weight 1).
  """
  method = row.removesuffix("_seat")
  segformer_model(config, row.endswith("_seat"))
  config.adv.mode = "none"
  config.data.source.crop_hw = (512, 512)
  config.data.target.crop_hw = (512, 512)
  config.data.target.resize_hw = (512, 1024)
  config.data.flip = True
  config.train.batch_size = 2
  config.train.num_steps = config.train.lr_horizon_steps = 40_000
  config.train.checkpoint_every = 4000
  config.optim.reference_duplicate_updates = False  # mmseg's optimiser lists each tensor once
  config.optim.name = "adamw"
  config.optim.lr = 6e-5
  config.optim.adam_b1, config.optim.adam_b2 = 0.9, 0.999
  config.optim.weight_decay = 0.01
  config.optim.head_lr_mult = 10.0
  config.optim.head_patterns = (DECODER_PATTERN,)
  config.optim.no_decay_patterns = (MIT_NORM_PATTERN,)
  config.optim.frozen_patterns = ()
  config.optim.poly_power = 1.0
  config.optim.warmup_steps = 1500
  config.mix.enabled = True
  mixed_image_norm(config)
  config.mix.teacher_alpha = dacs.DAFORMER_ALPHA
  config.mix.teacher_schedule = "daformer"  # the EMA at the start of each iteration (dacs.py)
  config.loss.ce_normalise = "all"  # mmseg 0.16's CE: the mean over every pixel
  config.mix.confidence = dacs.PSEUDO_THRESHOLD
  config.mix.augment = True
  config.mix.jitter_strength = dacs.DAFORMER_JITTER_STRENGTH
  config.mix.pseudo_ignore_top = daformer_method.PSEUDO_WEIGHT_IGNORE_TOP
  config.mix.pseudo_ignore_bottom = daformer_method.PSEUDO_WEIGHT_IGNORE_BOTTOM
  config.mix.fd_weight = daformer_method.FD_LAMBDA
  config.data.source.rcs_temperature = 0.01
  config.data.source.rcs_min_pixels = 3000
  config.data.source.rcs_min_crop_ratio = 0.5
  config.eval.label_hw = ()  # full-size labels (DAFormer, MIC)
  if method == "mic":
    config.mix.mic_weight = mic_method.MASK_LAMBDA
    config.mix.mic_block = 32  # experiments.py id 81: half of HRDA's 64 at 512x512 crops
    config.mix.mic_ratio = mic_method.MASK_RATIO
    mic_statistics(config)
  return config
