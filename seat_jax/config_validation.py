"""Checks of a resolved config that catch a user's mistakes before any compile or data read."""

import ml_collections

from seat_jax import adversary
from seat_jax import config_defaults
from seat_jax import datasets
from seat_jax import errors
from seat_jax import labels
from seat_jax import losses
from seat_jax import methods
from seat_jax import models
from seat_jax import optim
from seat_jax import predict
from seat_jax import pseudo_label_rules

# Each choice list is owned by the module that acts on it.
CHOICES = {
    "mode": config_defaults.MODES,
    "model.name": models.MODEL_NAMES,
    "model.norm_mode": models.NORM_MODES,
    "model.dtype": models.COMPUTE_DTYPES,
    "model.aspp_branches": models.ASPP_BRANCHES,
    "model.remat": models.REMAT_CHOICES,
    "model.resnet_variant": models.RESNET_VARIANTS,
    "model.input_normalisation": models.INPUT_NORMALISATIONS,
    "adv.mode": adversary.ADV_MODES,
    "adv.input": adversary.ADV_INPUTS,
    "loss.ce_normalise": losses.CE_NORMALISATIONS,
    "data.label_space": labels.LABEL_SPACES,
    "data.source.name": datasets.NAMES,
    "data.target.name": datasets.NAMES,
    "data.val.name": datasets.NAMES,
    "pseudo.rule": pseudo_label_rules.RULES,
    "pseudo.checkpoint": pseudo_label_rules.CHECKPOINT_SELECTIONS,
    "optim.name": optim.SEGMENTER_OPTIMIZERS,
    "init_domain": ("",) + models.DOMAINS,
}
PLACEHOLDER = "REQUIRED"
# `init_from` value that starts a real-data run from random weights on purpose.
SCRATCH = "scratch"


class ConfigError(errors.UsageError):
  """The config holds values the program cannot run with; the message lists each of them."""


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


# Keys that only training reads (stage 2's pseudo-labels, IntraDA's split lists, the init). A
# stage-2 or IntraDA preset leaves them REQUIRED; the other modes do not need them.
TRAINING_INPUTS = ("init_from", "data.source.pseudo_label_dir", "data.source.ids_file",
                   "data.target.pseudo_label_dir", "data.target.ids_file")


def clear_training_placeholders(config: ml_collections.ConfigDict) -> None:
  """Outside train mode, empties the REQUIRED placeholders of `TRAINING_INPUTS`, in place, so a
  stage-2 preset evaluates or pseudo-labels with its own config."""
  if config.mode == "train":
    return
  for key in TRAINING_INPUTS:
    parent, _, name = key.rpartition(".")
    node = _get(config, parent) if parent else config
    if str(node.get(name, "")).startswith(PLACEHOLDER):
      node[name] = ""


def _placeholders(config, prefix=""):
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _placeholders(value, name + ".")
    elif isinstance(value, str) and value.startswith(PLACEHOLDER):
      yield name, value


def _real_data(config) -> bool:
  """Whether the run reads a downloaded dataset (not only generated ones such as the demo's)."""
  names = (config.data.source.name, config.data.target.name)
  return any(name in datasets.REGISTRY and not datasets.get(name).generated for name in names)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming every bad config key and the accepted values.

  With `num_devices` (known once JAX has started its backends) the batch is checked against it.
  """
  problems = []
  for key, choices in CHOICES.items():
    if _get(config, key) not in choices:
      problems.append(f"config.{key}={_get(config, key)!r} is not one of {choices}")
  for key, value in _placeholders(config):
    problems.append(f"config.{key} must be set: {value}")
  if config.data.label_space in labels.LABEL_SPACES:
    expected = labels.get_label_space(config.data.label_space).num_classes
    if config.model.num_classes != expected:
      problems.append(f"config.model.num_classes={config.model.num_classes} but "
                      f"config.data.label_space={config.data.label_space!r} has {expected} "
                      "classes")
  if config.mode == "train" and not (config.init_from or config.resume) and _real_data(config):
    if models.model_name(config.model) == "segformer":
      init_file, init_dir, why = "mit_b5.pth", "mit_b5", "DAFormer and MIC start from ImageNet"
    elif config.model.get("resnet_variant", "caffe") == "v1c":
      init_file, init_dir, why = ("resnet101_v1c-e67eebb6.pth", "resnet101_v1c",
                                  "DAFormer and MIC start from open-mmlab://resnet101_v1c")
    else:
      init_file, init_dir, why = ("DeepLab_resnet_pretrained_init-f81d91e8.pth", "deeplab_init",
                                  "AdaptSegNet issues #35, #81")
    problems.append(
        "config.init_from is empty, so the segmenter would start from random weights, which does "
        f"not reproduce the paper ({why}). Convert the init once (it then starts every "
        "preset of this model):\n"
        f"      python -m seat_jax.convert --torch={init_file} --out=$HOME/weights/{init_dir}\n"
        f"    then add --config.init_from=$HOME/weights/{init_dir} (docs/pretrained-weights.md); or --config.init_from={SCRATCH} to train from random weights on purpose")
  problems += methods.problems(config)
  problems += _segformer_problems(config)
  cat_max_ratio = float(config.data.source.get("cat_max_ratio", 1.0))
  if not 0.0 < cat_max_ratio <= 1.0:
    problems.append(f"config.data.source.cat_max_ratio={cat_max_ratio} must lie in (0, 1] "
                    "(DAFormer: 0.75; 1 = off)")
  elif cat_max_ratio < 1.0 and config.data.source.get("pseudo_label_dir"):
    # Here, not at the top: the pipeline (and grain) would load for every validation, also
    # `seat_jax.segment`'s, for one message.
    from seat_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    problems.append(input_pipeline.CAT_MAX_RATIO_WITH_PSEUDO_LABELS)
  if not 0.0 <= float(config.data.get("blur_probability", 0.0)) <= 1.0:
    problems.append(f"config.data.blur_probability={config.data.blur_probability} must lie in "
                    "[0, 1] (Toldo et al.: 0.5; 0 = off)")
  label_hw = tuple(config.eval.get("label_hw", ()))
  if label_hw and (len(label_hw) != 2 or min(label_hw) <= 0):
    problems.append(f"config.eval.label_hw={label_hw} must be () (full resolution) or "
                    "(height, width) with positive entries (DACS, Toldo et al.: (512, 1024))")
  if config.train.batch_size < 1:
    problems.append("config.train.batch_size must be >= 1")
  if num_devices and config.mode == "train" and config.train.batch_size % num_devices:
    problems.append(f"config.train.batch_size={config.train.batch_size} must be a multiple of "
                    f"the {num_devices} devices (the batch is split across them)")
  problems += _ensemble_problems(config)
  if problems:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def _segformer_problems(config) -> list[str]:
  """SegFormer has one head (no layer3 classifier) and its own stage numbering and sizes."""
  if models.model_name(config.model) != "segformer":
    return []
  problems = []
  if config.adv.mode in ("multi_level_sum", "two_discriminators"):
    problems.append(f"config.adv.mode={config.adv.mode!r} needs DeepLabV2's aux head; "
                    "model.name='segformer' has one head: use adv.mode none or single")
  for name in ("aux_weight", "entropy_weight_aux"):
    if float(config.loss.get(name, 0.0)):
      problems.append(f"config.loss.{name} weighs the aux head, which model.name='segformer' "
                      "lacks; set it to 0")
  try:
    models.build_segmenter(config.model)
  except ValueError as e:
    problems.append(str(e))
  try:
    models.segformer.check_source_stages(config.eval.source_stages)
  except ValueError as e:
    problems.append(str(e))
  return problems


def _ensemble_problems(config) -> list[str]:
  """Evaluating several runs' average (FDA's MBT): one weight per model, no single checkpoint."""
  problems = []
  paths = predict.ensemble_paths(config.eval.get("ensemble", ()))
  weights = tuple(config.eval.get("ensemble_weights", ()))
  if weights and len(weights) != len(paths):
    problems.append(f"config.eval.ensemble_weights has {len(weights)} values for the "
                    f"{len(paths)} models of config.eval.ensemble; give one per model or () "
                    "for equal weights")
  if paths and config.eval.checkpoint:
    problems.append("config.eval.checkpoint and config.eval.ensemble are both set; clear one "
                    "(--config.eval.checkpoint='')")
  return problems
