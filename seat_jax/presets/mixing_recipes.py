"""Mixing-based self-training with a mean teacher: DACS, DAFormer's strategy and MIC on
DeepLabV2."""

import ml_collections

from seat_jax.methods import dacs
from seat_jax.methods import daformer
from seat_jax.methods import mic as mic_method
from seat_jax.presets.compared import norms, single_head

# GTA5's images (height, width) and DAFormer's GTA5 Resize img_scale (width, height); mmseg keeps
# the ratio (configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py).
GTA5_STORED_HW = (1052, 1914)
GTA5_IMG_SCALE_WH = (1280, 720)
# DAFormer's source RandomCrop (the same dataset configs).
CAT_MAX_RATIO = 0.75


def mixed_image_norm(config: ml_collections.ConfigDict) -> None:
  """SEAT norms: the default `batch` (best on the synthetic shift). One shared BN: `target`,
  so its single set of statistics absorbs the mixed images as the references' BN does."""
  if config.model.norm_mode == "shared":
    config.mix.norm = "target"


def keep_ratio_hw(stored_hw, img_scale_wh) -> tuple[int, int]:
  """(height, width) mmseg's Resize(img_scale, keep_ratio=True) gives an image of `stored_hw`:
  mmcv's rescale_size, the largest scale keeping the long side <= max(img_scale) and the short
  side <= min(img_scale), each side rounded half up (GTA5's 1914x1052 -> 1280x704)."""
  height, width = stored_hw
  factor = min(max(img_scale_wh) / max(height, width), min(img_scale_wh) / min(height, width))
  return int(height * factor + 0.5), int(width * factor + 0.5)


def mmseg_dlv2(config: ml_collections.ConfigDict) -> None:
  """DAFormer's and MIC's DeepLabV2 network: mmseg's ResNet-101 V1c (init: open-mmlab://
  resnet101_v1c converted, docs/pretrained-weights.md) with its ImageNet mean/std input
  (lhoyer/DAFormer experiments.py `get_pretraining_file`, configs/_base_/models/
  deeplabv2red_r50-d8.py, the dataset configs' img_norm_cfg); the feature distance anchored to
  the init, which is the ImageNet model DAFormer's `imnet_model` loads."""
  config.model.resnet_variant = "v1c"
  config.model.input_normalisation = "imagenet"
  config.mix.fd_reference = daformer.FD_REFERENCE_INIT


def mmseg_source_data(config: ml_collections.ConfigDict) -> None:
  """DAFormer's source data, whatever the network (configs/_base_/datasets/
  uda_{gta,synthia}_to_cityscapes_512x512.py): GTA5 resized keeping its ratio, source crops with
  cat_max_ratio 0.75."""
  config.data.source.cat_max_ratio = CAT_MAX_RATIO
  if config.data.source.name == "gta5":
    config.data.source.resize_hw = keep_ratio_hw(GTA5_STORED_HW, GTA5_IMG_SCALE_WH)


def mixing(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """DACS, DAFormer's training strategy on DeepLabV2, MIC on top of it (docs/mixing-methods.md).

  Facts from the reference code (docs/mixing-methods-research.md). dacs (vikolss/DACS):
  ClassMix with an EMA teacher (0.99), confidence 0.968, colour jitter and blur, SGD 2.5e-4
  poly 0.9 over 250k steps, batch 2 + 2, 512x512 crops of 1280x720 source and 1024x512 target
  images, one head with the two-branch ASPP, BN affine frozen. daformer_dlv2 (lhoyer/DAFormer):
  AdamW 6e-5 (weight decay 0.01, 10x heads), 1500 warmup steps, poly 1.0 over 40k steps,
  teacher 0.999, BN trained, random flip, rare class sampling (T 0.01, 3000 pixels),
  thing-class feature distance 0.005, on mmseg's DeepLabV2 (`mmseg_dlv2`). mic_dlv2 (lhoyer/MIC,
  its DeepLabV2 experiment): + masked target images (32-pixel blocks, ratio 0.7, weight 1).
  `_seat`: SEAT norms (affine trained); mixed images normalised by their own batch statistics
  (config mix.norm, `mixed_image_norm`).
  """
  method = row.removesuffix("_seat")
  norms(config, row.endswith("_seat"))
  single_head(config)
  config.model.aspp_branches = 2
  config.adv.mode = "none"
  config.mix.enabled = True
  mixed_image_norm(config)
  config.mix.teacher_alpha = dacs.DACS_ALPHA
  config.mix.confidence = dacs.PSEUDO_THRESHOLD
  config.data.source.crop_hw = (512, 512)
  config.data.target.crop_hw = (512, 512)
  config.train.batch_size = 2
  config.train.num_steps = config.train.lr_horizon_steps = 250_000
  config.train.checkpoint_every = 5000
  if method == "dacs":
    config.mix.jitter_strength = dacs.DACS_JITTER_STRENGTH
    config.eval.label_hw = dacs.EVAL_LABEL_HW
    return config
  config.model.bn_affine_trainable = True
  daformer_self_training(config, mic=method == "mic_dlv2")
  mmseg_dlv2(config)
  return config


def daformer_self_training(config: ml_collections.ConfigDict, mic: bool) -> None:
  """DAFormer's training strategy, one for its DeepLabV2 and its SegFormer rows (the network is
  the caller's): lhoyer/DAFormer configs/_base_/uda/dacs_a999_fdthings.py (EMA 0.999 with its
  teacher timing, ClassMix from the batch's classes, confidence 0.968, pseudo-label crop
  15/120, colour jitter 0.2, thing-class feature distance 0.005), schedules/adamw.py +
  poly10warm.py (AdamW 6e-5, weight decay 0.01, 10x heads, 1,500-step warmup, poly 1.0 over
  40k steps), experiments.py (RCS T 0.01, 3,000 px, crop ratio 0.5; 512x512 crops with flips,
  batch 2), the dataset configs (`mmseg_source_data`) and mmseg 0.16's CE, the mean over every
  pixel. `mic`: MIC's masked target images (lhoyer/MIC seg/experiments.py: 32-px blocks, ratio
  0.7, weight 1) with its statistics choice (`mic_statistics`). Call after the norms are set."""
  config.adv.mode = "none"
  config.data.source.crop_hw = (512, 512)
  config.data.target.crop_hw = (512, 512)
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
  config.optim.poly_power = 1.0
  config.optim.warmup_steps = 1500
  config.loss.ce_normalise = "all"
  config.mix.enabled = True
  mixed_image_norm(config)
  config.mix.teacher_alpha = dacs.DAFORMER_ALPHA
  config.mix.teacher_schedule = "daformer"  # the EMA at the start of each iteration (dacs.py)
  config.mix.classmix_classes = "batch"  # dacs_transforms.py get_class_masks: the batch's union
  config.mix.confidence = dacs.PSEUDO_THRESHOLD
  config.mix.augment = True
  config.mix.jitter_strength = dacs.DAFORMER_JITTER_STRENGTH
  config.mix.pseudo_ignore_top = daformer.PSEUDO_WEIGHT_IGNORE_TOP
  config.mix.pseudo_ignore_bottom = daformer.PSEUDO_WEIGHT_IGNORE_BOTTOM
  config.mix.fd_weight = daformer.FD_LAMBDA
  config.data.source.rcs_temperature = 0.01
  config.data.source.rcs_min_pixels = 3000
  config.data.source.rcs_min_crop_ratio = 0.5
  config.eval.label_hw = ()  # full-size labels (lhoyer/DAFormer#23)
  mmseg_source_data(config)
  if mic:
    config.mix.mic_weight = mic_method.MASK_LAMBDA
    config.mix.mic_block = 32  # experiments.py id 81 (64 is MIC's HRDA setting)
    config.mix.mic_ratio = mic_method.MASK_RATIO
    mic_statistics(config)


def mic_statistics(config: ml_collections.ConfigDict) -> None:
  """MIC's masked pass in the running statistics: as MIC's code with one shared BN (its student
  runs `forward_train` in train mode, lhoyer/MIC seg/mmseg/models/uda/dacs.py). SEAT norms keep
  them to unmasked target images: the target norm's running statistics are the ones evaluation
  normalises target images with, and a batch 70 % blanked to the mean colour has a smaller
  variance than any image evaluation meets."""
  config.mix.mic_update_stats = config.model.norm_mode == "shared"
