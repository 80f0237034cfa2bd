"""DAFormer and MIC as published: SegFormer's MiT-B5 with DAFormer's decoder
(docs/segformer.md has each number beside the reference file it comes from)."""

import ml_collections

from seat_jax import models
from seat_jax.presets.mixing_recipes import daformer_self_training

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

  `config` is a dataset preset (source, resize, label space); this sets the model, the MiT's
  optimiser groups (10x decoder, no decay on the MiT norms) and DAFormer's training strategy
  (`mixing_recipes.daformer_self_training`, shared with the DeepLabV2 rows).
  """
  segformer_model(config, row.endswith("_seat"))
  config.data.target.resize_hw = (512, 1024)
  config.optim.head_patterns = (DECODER_PATTERN,)
  config.optim.no_decay_patterns = (MIT_NORM_PATTERN,)
  config.optim.frozen_patterns = ()
  daformer_self_training(config, mic=row.removesuffix("_seat") == "mic")
  return config
