"""The compared methods' recipes (FDA, differential treatment, Toldo et al.'s clustering,
IntraDA) on a dataset preset."""

import os

import ml_collections

from seat_jax.methods import clustering as clustering_method
from seat_jax.methods import differential as differential_method
from seat_jax.methods import fda as fda_method
from seat_jax.presets.rows import FDA16_ROWS, FDA16_SUFFIX, FDA_BETA_OF_TAG, FDA_ROWS
from seat_jax.presets.paper import shared_frozen_bn


def fda(config: ml_collections.ConfigDict, row: str, layer_switch: tuple[int, ...],
        schedule: bool = True,
        eval_hw: tuple[int, int] | None = fda_method.EVAL_HW) -> ml_collections.ConfigDict:
  """FDA's single-model recipe (YanchaoYang/FDA README and train.py) on a dataset preset.

  No discriminator; one head (FDA's DeepLab has only the layer4 classifier, so the aux head gets
  no loss and is frozen); the source stylised with the row's beta; robust entropy 0.005 (eta 2)
  on the target from the start; plain BN with the affine frozen and batch statistics in
  training, as FDA's model. `schedule`: poly over 150k steps, stopped at 100k, a snapshot every
  2,500 (FDA's options). `eval_hw`: the validation images' size, FDA's 1344x576 (its
  `cs_size_test`, the only size its evaluation script uses); None keeps the config's. MBT
  pseudo-labels: class-wise, quantile 0.66, cap 0.9. `_seat` rows: SEAT norms (affine trained)
  evaluated with `layer_switch`. Stage 2 (FDA's SSL round): `stage2(...)` of this, i.e. + CE on
  the MBT pseudo-labels, again from the init. The dataset preset chooses the outputs (SYNTHIA:
  19 as FDA, or 16 with the `_out16` rows).
  """
  if row not in FDA_ROWS + FDA16_ROWS:
    raise ValueError(f"Unknown FDA row {row!r}; choose one of {FDA_ROWS + FDA16_ROWS}.")
  row = row.removesuffix(FDA16_SUFFIX)
  config.data.fda_beta = FDA_BETA_OF_TAG[row.split("_")[1]]
  config.adv.mode = "none"
  config.loss.aux_weight = 0.0
  config.optim.frozen_patterns = tuple(config.optim.frozen_patterns) + (r"^aux_head/",)
  config.loss.robust_entropy_weight = fda_method.ROBUST_ENTROPY_WEIGHT
  config.loss.robust_entropy_eta = fda_method.ROBUST_ENTROPY_ETA
  config.pseudo.rule = "class_quantile"
  config.pseudo.quantile = fda_method.MBT_QUANTILE
  config.pseudo.cap = fda_method.MBT_CAP
  if schedule:
    config.train.num_steps = fda_method.NUM_STEPS
    config.train.lr_horizon_steps = fda_method.LR_HORIZON_STEPS
    config.train.checkpoint_every = fda_method.CHECKPOINT_EVERY
  if eval_hw:
    config.data.val.resize_hw = tuple(eval_hw)
  if row.endswith("_seat"):
    config.model.norm_mode = "seat"
    config.model.bn_affine_trainable = True
    config.eval.source_stages = layer_switch
  else:
    shared_frozen_bn(config)
  return config


def single_head(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """One classifier on layer4 (SIM, DACS, DAFormer's DeepLabV2): the aux head has no loss and
  stays frozen."""
  config.loss.aux_weight = 0.0
  config.optim.frozen_patterns = tuple(config.optim.frozen_patterns) + (r"^aux_head/",)
  return config


def norms(config: ml_collections.ConfigDict, seat: bool,
           layer_switch: tuple[int, ...] = ()) -> ml_collections.ConfigDict:
  """A compared method's own BN (shared, affine frozen) or SEAT norms with `layer_switch`."""
  if seat:
    config.model.norm_mode = "seat"
    config.model.bn_affine_trainable = True
    config.eval.source_stages = layer_switch
    return config
  return shared_frozen_bn(config)


def differential(config: ml_collections.ConfigDict, row: str,
                 layer_switch: tuple[int, ...]) -> ml_collections.ConfigDict:
  """Differential treatment without self-training (the SIM repository's `train_sim.py`).

  One head on layer4 with AdaptSegNet's two-branch ASPP, one output-space discriminator
  (0.001), stuff loss 0.01 against 50 source features per class, thing loss 0.01 against 500
  instance features per class; CycleGAN-translated source images at 1280x720 without crop;
  200k of a 250k-step poly schedule, the best snapshot on val (every 5k). `_seat`: SEAT norms
  with `layer_switch` (Table 4's "+SEAT").
  """
  config.data.source.builder_config = "translated"
  config.data.source.crop_hw = ()
  config.model.aspp_branches = 2
  single_head(config)
  config.adv.mode = "single"
  config.adv.weight = 0.001
  config.differential.stuff_weight = differential_method.LAMBDA_STUFF
  config.differential.thing_weight = differential_method.LAMBDA_THING
  config.differential.stuff_bank = differential_method.STUFF_BANK_SIZE
  config.differential.thing_bank = differential_method.THING_BANK_SIZE
  config.train.num_steps = 200_000
  config.train.lr_horizon_steps = 250_000
  config.train.checkpoint_every = 5000
  config.pseudo.checkpoint = "best_on_val"
  return norms(config, row.endswith("_seat"), layer_switch)


# Toldo et al.'s Cityscapes train list (LTTM/UDAclustering datasets/Cityscapes/train.txt at
# 034c30e, as example ids): 2,475 of the 2,975 train images; its val.txt holds out the other
# 500 for model selection, and its test.txt is the official validation split.
UDACLUSTERING_CITYSCAPES_TRAIN = os.path.join(os.path.dirname(__file__), "splits",
                                              "udaclustering_cityscapes_train.txt")
# Its dataset classes' default Gaussian blur (p 0.5, PIL radius random()) on source and target.
UDACLUSTERING_BLUR_PROBABILITY = 0.5
# Its validation labels are nearest-resized to the 1024x512 input (_val_sync_transform).
UDACLUSTERING_EVAL_LABEL_HW = (512, 1024)


def clustering(config: ml_collections.ConfigDict, row: str,
               dataset: str) -> ml_collections.ConfigDict:
  """Toldo et al.'s two stages (LTTM/UDAclustering README): source only, then clustering.

  Both stages: the original source images (its README; GTA5 not translated), whole and resized
  (no crop), random flip and Gaussian blur (p 0.5, sigma U(0, 1)) on source and target images;
  validation labels scored at 1024x512 as its evaluation does.
  `*_source`: source CE only, 80k of a 200k-step poly schedule. The adaptation stage starts from
  that model (`init_from`, REQUIRED) with no discriminator: clustering, orthogonality, sparsity
  and the image-wise MaxSquare entropy with the dataset's published weights, 10 epochs of its
  2,475-image Cityscapes train list (24,750 steps, batch 1, the poly horizon equal to the run).
  One head on layer4 with AdaptSegNet's two-branch ASPP; BN affine trained (the reference
  freezes only the stem's, as here). `_seat` rows: SEAT norms in both stages.
  """
  seat = "_seat" in row
  config.data.source.builder_config = "original"
  config.data.source.crop_hw = ()
  config.data.flip = True
  config.data.blur_probability = UDACLUSTERING_BLUR_PROBABILITY
  config.eval.label_hw = UDACLUSTERING_EVAL_LABEL_HW
  config.model.aspp_branches = 2
  single_head(config)  # DeeplabResnetFeat: one classifier on layer4
  config.adv.mode = "none"
  config.optim.frozen_patterns = tuple(config.optim.frozen_patterns) + (r"^bn1/",)
  norms(config, seat)
  config.model.bn_affine_trainable = True
  if row.endswith("_source"):
    config.train.num_steps = 80_000
    config.train.lr_horizon_steps = 200_000
    return config
  for key, value in clustering_method.PUBLISHED_WEIGHTS[dataset].items():
    config.clustering[key] = value
  config.data.target.ids_file = UDACLUSTERING_CITYSCAPES_TRAIN
  config.train.num_steps = config.train.lr_horizon_steps = 24_750
  config.train.checkpoint_every = 2475
  config.init_from = (f"REQUIRED: --config.init_from=<the {row}_source run's workdir>")
  return config


def intrada(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """IntraDA's stage 1 (feipanir/IntraDA README step 1): ADVENT's adversarial model as ADVENT
  runs it, then `--config.mode=entropy_rank` on its best-on-val checkpoint.

  `config` already has ADVENT's losses and schedule (two entropy-map discriminators 0.001 /
  0.0002, aux CE 0.1, 120k steps, a checkpoint every 2k for the best-on-val choice). ADVENT
  trains on the whole 1280x720 GTA5 image, so no crop (`:advent` keeps the paper's crops).
  The ranking: lambda 0.67 with the rare-class normaliser (IntraDA's published 46.3).
  """
  config.data.source.crop_hw = ()
  config.pseudo.checkpoint = "best_on_val"
  config.intrada.lambda_easy = 0.67
  config.intrada.normalize = True
  return config


def intrada_stage2(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """IntraDA's stage 2 after `intrada(config)`: the same adversarial training, easy -> hard.

  The "source" stream reads the target train split restricted to the easy ids, labelled with
  the ranking's pseudo-labels, at the target's size without crop (IntraDA `intrada.yml`: both
  1024x512); the "target" stream the hard ids. Re-initialised: `init_from` is the init stage 1
  started from (IntraDA: ADVENT's ImageNet DeepLab), not the stage-1 model. With SEAT norms the
  source norm learns easy target images and the target norm hard ones.
  """
  target = config.data.target
  config.data.source.update(
      name=target.name, builder_config=target.builder_config, split=target.split,
      resize_hw=tuple(target.resize_hw), crop_hw=(),
      ids_file="REQUIRED: --config.data.source.ids_file=<stage-1 workdir>/entropy_rank/"
               "easy_split.txt",
      pseudo_label_dir="REQUIRED: --config.data.source.pseudo_label_dir=<stage-1 workdir>/"
                       "entropy_rank/pseudo_labels")
  config.data.target.ids_file = ("REQUIRED: --config.data.target.ids_file=<stage-1 workdir>/"
                                 "entropy_rank/hard_split.txt")
  return config
