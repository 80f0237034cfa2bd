"""The named experiment presets behind `configs/*.py`: the paper's rows and the compared methods.

`configs/` files are loaded by path (ml_collections `config_flags`), so they cannot import each
other; each is a two-line wrapper around one function here. Every choice the paper leaves open
is made here once and listed in README ("What the presets choose").
"""

import difflib
import textwrap

import ml_collections

from seat_jax import config_defaults
from seat_jax import errors
from seat_jax.methods import clustering as clustering_method
from seat_jax.methods import dacs
from seat_jax.methods import daformer
from seat_jax.methods import differential as differential_method
from seat_jax.methods import fda as fda_method
from seat_jax.methods import mic as mic_method

# Rows of the paper's Tables 5 (GTA5) and 6 (SYNTHIA), in the tables' order.
ABLATION_ROWS = ("aa", "it", "sat", "seat", "mul")
# Table 4: the compared methods with and without SEAT, trained on the original GTA5 images.
TABLE4_ROWS = ("adaptsegnet", "adaptsegnet_seat", "advent", "advent_seat")
# Baselines without an adversary: source only (AdaBN starts from it: --config.mode=adabn) and
# CyCADA's pixel-level adaptation alone (its CycleGAN-translated GTA5 images as the source).
SOURCE_ONLY_ROWS = ("source_only", "cycada")
# IntraDA (Pan et al. 2020): its stage 1 (ADVENT's adversarial model), without / with SEAT norms;
# the same names select its stage 2 in configs/gta_stage2.py.
INTRADA_ROWS = ("intrada", "intrada_seat")
# FDA (Yang and Soatto 2020): one model per beta (fda_b001, fda_b005, fda_b009), without / with
# SEAT norms; configs/*_stage2.py with the same row is its self-training round.
_FDA_BETA_OF_TAG = {fda_method.beta_tag(b): b for b in fda_method.BETAS}
FDA_ROWS = tuple(f"fda_{tag}{suffix}" for tag in _FDA_BETA_OF_TAG for suffix in ("", "_seat"))
# Differential treatment (Wang et al. 2020; the paper's Table 4 adds SEAT to it): the
# output-space adversary plus stuff/thing feature losses, without its self-training round.
DIFFERENTIAL_ROWS = ("differential", "differential_seat")
# Toldo et al. 2021: a source-only stage, then feature clustering from it (each with a `_seat`
# twin, since a shared-BN checkpoint cannot initialise a SEAT-norm model).
CLUSTERING_ROWS = ("clustering_source", "clustering", "clustering_seat_source", "clustering_seat")
# Mixing-based self-training with a mean teacher (issue 13): DACS, DAFormer's strategy on
# DeepLabV2 and MIC on top of it, each without / with SEAT norms.
MIX_ROWS = tuple(f"{m}{suffix}" for m in ("dacs", "daformer_dlv2", "mic_dlv2")
                 for suffix in ("", "_seat"))
# Every row each configs/*.py file accepts after its colon ("" = the file's default row).
GTA_ROWS = (*ABLATION_ROWS, *TABLE4_ROWS, *SOURCE_ONLY_ROWS, *INTRADA_ROWS, *FDA_ROWS,
            *DIFFERENTIAL_ROWS, *CLUSTERING_ROWS, *MIX_ROWS)
SYNTHIA_ROWS = (*ABLATION_ROWS, *FDA_ROWS, *DIFFERENTIAL_ROWS, *CLUSTERING_ROWS, *MIX_ROWS)
# Stage 2 self-trains after an adversarial row (the paper), is IntraDA's second adaptation, or
# one of FDA's self-training rounds.
GTA_STAGE2_ROWS = (*ABLATION_ROWS, *TABLE4_ROWS, *INTRADA_ROWS, *FDA_ROWS)
SYNTHIA_STAGE2_ROWS = (*ABLATION_ROWS, *FDA_ROWS)


class UnknownPresetError(errors.UsageError):
  """A configs/*.py row that does not exist; the message lists the file's rows."""


def check_row(row: str, rows: tuple[str, ...], config_file: str, default: str = "mul") -> None:
  """Raises UnknownPresetError naming the closest row and every row of `config_file`."""
  if row in rows:
    return
  close = difflib.get_close_matches(row, rows, n=1, cutoff=0.5)
  hint = f" Did you mean --config={config_file}:{close[0]}?" if close else ""
  listing = textwrap.fill(", ".join(rows), width=96, initial_indent="  ",
                          subsequent_indent="  ")
  raise UnknownPresetError(
      f"{config_file} has no preset {row!r}.{hint}\nIts presets, --config={config_file}:<row> "
      f"(without a row: {default}):\n{listing}")


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
  """GTA5 -> Cityscapes stage 1 at the paper's sizes: a row of Table 5 or 4, or a baseline."""
  row = row or "mul"
  check_row(row, GTA_ROWS, "configs/gta.py")
  if row in TABLE4_ROWS:
    return _table4(row)
  if row in SOURCE_ONLY_ROWS:
    return source_only(_gta_base(), translated=row == "cycada")
  if row in INTRADA_ROWS:
    return intrada(_table4(row.replace("intrada", "advent")))
  if row in FDA_ROWS:  # FDA trains on the original GTA5 images
    config = _gta_base()
    config.data.source.builder_config = "original"
    return fda(config, row, GTA_LAYER_SWITCH)
  if row in DIFFERENTIAL_ROWS:
    return differential(_gta_base(), row, GTA_LAYER_SWITCH)
  if row in CLUSTERING_ROWS:
    return clustering(_gta_base(), row, "gta5")
  if row in MIX_ROWS:
    config = _gta_base()
    config.data.source.builder_config = "original"
    return mixing(config, row)
  config = _gta_base()
  if row == "aa":
    config.data.source.builder_config = "original"
  return apply_ablation_row(config, row, GTA_LAYER_SWITCH)


def source_only(config: ml_collections.ConfigDict,
                translated: bool = False) -> ml_collections.ConfigDict:
  """Source labels only: no adversary, no target pass (so no target statistics), shared BN.

  The references' source-only baseline (AdaptSegNet's single-level recipe with lambda_adv 0).
  AdaBN then fills in target statistics (`--config.mode=adabn`); `translated` uses CycleGAN's
  GTA5-as-Cityscapes images, the input side of CyCADA (its CycleGAN training and its feature
  discriminator are not part of this package).
  """
  config.data.source.builder_config = "translated" if translated else "original"
  _adaptsegnet_single_level(_shared_frozen_bn(config))
  config.adv.mode = "none"
  return config


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
  check_row(row, SYNTHIA_ROWS, "configs/synthia.py")
  config = _paper_recipe(config_defaults.get_config())
  config.model.num_classes = 16
  config.data.label_space = "synthia16"
  config.data.source.name = "synthia"
  config.data.source.builder_config = ""
  config.data.source.resize_hw = (760, 1280)
  config.data.source.crop_hw = (512, 1024)
  config.train.num_steps = 90_000  # the SYNTHIA schedule of ADVENT/DADA (ADVENT issue #12)
  if row in FDA_ROWS:
    # FDA trains 19 outputs on SYNTHIA too; the synthia builder stores 16 classes (README).
    return fda(config, row, SYNTHIA_LAYER_SWITCH)
  if row in DIFFERENTIAL_ROWS:
    return differential(config, row, SYNTHIA_LAYER_SWITCH)
  if row in CLUSTERING_ROWS:
    config.data.source.resize_hw = (760, 1280)  # Toldo et al. train on the whole 1280x760 image
    return clustering(config, row, "synthia")
  if row in MIX_ROWS:
    return mixing(config, row)
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


def fda(config: ml_collections.ConfigDict, row: str, layer_switch: tuple[int, ...],
        schedule: bool = True) -> ml_collections.ConfigDict:
  """FDA's single-model recipe (YanchaoYang/FDA README and train.py) on a dataset preset.

  No discriminator; one head (FDA's DeepLab has only the layer4 classifier, so the aux head gets
  no loss and is frozen); the source stylised with the row's beta; robust entropy 0.005 (eta 2)
  on the target from the start; plain BN with the affine frozen and batch statistics in
  training, as FDA's model. `schedule`: poly over 150k steps, stopped at 100k, a snapshot every
  2,500 (FDA's options). MBT pseudo-labels: class-wise, quantile 0.66, cap 0.9. `_seat` rows:
  SEAT norms (affine trained) evaluated with `layer_switch`. Stage 2 (FDA's SSL round):
  `stage2(...)` of this, i.e. + CE on the MBT pseudo-labels, again from the init.
  """
  if row not in FDA_ROWS:
    raise ValueError(f"Unknown FDA row {row!r}; choose one of {FDA_ROWS}.")
  config.data.fda_beta = _FDA_BETA_OF_TAG[row.split("_")[1]]
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
  if row.endswith("_seat"):
    config.model.norm_mode = "seat"
    config.model.bn_affine_trainable = True
    config.eval.source_stages = layer_switch
  else:
    _shared_frozen_bn(config)
  return config


def _single_head(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """One classifier on layer4 (SIM, DACS, DAFormer's DeepLabV2): the aux head has no loss and
  stays frozen."""
  config.loss.aux_weight = 0.0
  config.optim.frozen_patterns = tuple(config.optim.frozen_patterns) + (r"^aux_head/",)
  return config


def _norms(config: ml_collections.ConfigDict, seat: bool,
           layer_switch: tuple[int, ...] = ()) -> ml_collections.ConfigDict:
  """A compared method's own BN (shared, affine frozen) or SEAT norms with `layer_switch`."""
  if seat:
    config.model.norm_mode = "seat"
    config.model.bn_affine_trainable = True
    config.eval.source_stages = layer_switch
    return config
  return _shared_frozen_bn(config)


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
  _single_head(config)
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
  return _norms(config, row.endswith("_seat"), layer_switch)


def clustering(config: ml_collections.ConfigDict, row: str,
               dataset: str) -> ml_collections.ConfigDict:
  """Toldo et al.'s two stages (LTTM/UDAclustering README): source only, then clustering.

  `*_source`: source CE only, whole source images resized (no crop), random flip, 80k of a
  200k-step poly schedule. The adaptation stage starts from that model (`init_from`, REQUIRED)
  with no discriminator: clustering, orthogonality, sparsity and the image-wise MaxSquare
  entropy with the dataset's published weights, 10 epochs of Cityscapes train (24,750 steps,
  batch 1, the poly horizon equal to the run). One head on layer4 with AdaptSegNet's two-branch
  ASPP; BN affine trained (the reference freezes only the stem's, as here). `_seat` rows: SEAT norms in both stages.
  """
  seat = "_seat" in row
  config.data.source.crop_hw = ()
  config.data.flip = True
  config.model.aspp_branches = 2
  _single_head(config)  # DeeplabResnetFeat: one classifier on layer4
  config.adv.mode = "none"
  config.optim.frozen_patterns = tuple(config.optim.frozen_patterns) + (r"^bn1/",)
  _norms(config, seat)
  config.model.bn_affine_trainable = True
  if row.endswith("_source"):
    config.train.num_steps = 80_000
    config.train.lr_horizon_steps = 200_000
    return config
  for key, value in clustering_method.PUBLISHED_WEIGHTS[dataset].items():
    config.clustering[key] = value
  config.train.num_steps = config.train.lr_horizon_steps = 24_750
  config.train.checkpoint_every = 2475
  config.init_from = (f"REQUIRED: --config.init_from=<the {row}_source run's workdir>")
  return config


def _mixed_image_norm(config: ml_collections.ConfigDict) -> None:
  """SEAT norms: the default `batch` (best on the synthetic shift). One shared BN: `target`,
  so its single set of statistics absorbs the mixed images as the references' BN does."""
  if config.model.norm_mode == "shared":
    config.mix.norm = "target"


def mixing(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """DACS, DAFormer's training strategy on DeepLabV2, MIC on top of it (README "Mixing").

  Facts from the reference code (docs/mixing-methods-research.md). dacs (vikolss/DACS):
  ClassMix with an EMA teacher (0.99), confidence 0.968, colour jitter and blur, SGD 2.5e-4
  poly 0.9 over 250k steps, batch 2 + 2, 512x512 crops of 1280x720 source and 1024x512 target
  images, one head with the two-branch ASPP, BN affine frozen. daformer_dlv2 (lhoyer/DAFormer):
  AdamW 6e-5 (weight decay 0.01, 10x heads), 1500 warmup steps, poly 1.0 over 40k steps,
  teacher 0.999, BN trained, random flip, rare class sampling (T 0.01, 3000 pixels),
  thing-class feature distance 0.005. mic_dlv2 (lhoyer/MIC, its DeepLabV2 experiment): + masked
  target images (32-pixel blocks, ratio 0.7, weight 1). `_seat`: SEAT norms (affine trained);
  mixed images normalised by their own batch statistics (config mix.norm, `_mixed_image_norm`).
  """
  method = row.removesuffix("_seat")
  _norms(config, row.endswith("_seat"))
  _single_head(config)
  config.model.aspp_branches = 2
  config.adv.mode = "none"
  config.mix.enabled = True
  _mixed_image_norm(config)
  config.mix.teacher_alpha = dacs.DACS_ALPHA
  config.mix.confidence = dacs.PSEUDO_THRESHOLD
  config.data.source.crop_hw = (512, 512)
  config.data.target.crop_hw = (512, 512)
  config.train.batch_size = 2
  config.train.num_steps = config.train.lr_horizon_steps = 250_000
  config.train.checkpoint_every = 5000
  if method == "dacs":
    config.mix.jitter_strength = dacs.DACS_JITTER_STRENGTH
    return config
  config.model.bn_affine_trainable = True
  config.data.flip = True
  config.optim.reference_duplicate_updates = False  # mmseg's optimiser lists each tensor once
  config.optim.name = "adamw"
  config.optim.lr = 6e-5
  config.optim.weight_decay = 0.01
  config.optim.poly_power = 1.0
  config.optim.warmup_steps = 1500
  config.train.num_steps = config.train.lr_horizon_steps = 40_000
  config.train.checkpoint_every = 4000
  config.mix.teacher_alpha = dacs.DAFORMER_ALPHA
  config.mix.jitter_strength = dacs.DAFORMER_JITTER_STRENGTH
  config.mix.pseudo_ignore_top = daformer.PSEUDO_WEIGHT_IGNORE_TOP
  config.mix.pseudo_ignore_bottom = daformer.PSEUDO_WEIGHT_IGNORE_BOTTOM
  config.mix.fd_weight = daformer.FD_LAMBDA
  config.data.source.rcs_temperature = 0.01
  config.data.source.rcs_min_pixels = 3000
  if method == "mic_dlv2":
    config.mix.mic_weight = mic_method.MASK_LAMBDA
    config.mix.mic_block = 32  # MIC's DeepLabV2 experiment (64 is its HRDA setting)
    config.mix.mic_ratio = mic_method.MASK_RATIO
  return config


def _demo_method(row: str) -> ml_collections.ConfigDict:
  """Issue 12/13 methods on the demo's tiny model and budget (configs/demo.py rows).

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
  _mixed_image_norm(config)
  config.mix.teacher_alpha = dacs.DACS_ALPHA
  method = row.removesuffix("_seat")
  if method in ("daformer", "mic"):
    config.mix.fd_weight = daformer.FD_LAMBDA
    config.data.source.rcs_temperature = 0.01
    config.data.source.rcs_min_pixels = 16
  if method == "mic":
    config.mix.mic_weight = mic_method.MASK_LAMBDA
    config.mix.mic_block, config.mix.mic_ratio = 16, mic_method.MASK_RATIO
  return config


DEMO_METHOD_ROWS = (*DIFFERENTIAL_ROWS, *CLUSTERING_ROWS, "dacs", "dacs_seat", "daformer",
                    "daformer_seat", "mic", "mic_seat")
DEMO_ROWS = ("seat", "sat", "shared", "pretrain", *INTRADA_ROWS, "intrada_stage2",
             "intrada_seat_stage2", *FDA_ROWS, *DEMO_METHOD_ROWS)


def _demo_fda(row: str) -> ml_collections.ConfigDict:
  """FDA on the demo's tiny model and budget (configs/demo.py:fda_b001 ... :fda_b009_seat)."""
  return fda(demo("seat" if row.endswith("_seat") else "shared"), row, (), schedule=False)


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


def demo_intrada(row: str) -> ml_collections.ConfigDict:
  """IntraDA on the demo's tiny model and budget (configs/demo.py:intrada[_seat][_stage2]).

  Shared BN as the demo's source-only row (affine trainable), or SEAT norms; ADVENT's losses as
  in `_table4`; a checkpoint every 100 steps, so eval mode can pick the best on val.
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
