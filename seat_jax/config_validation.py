"""Checks of a resolved config that catch mistakes before any compile or data read."""

import ml_collections

CHOICES = {
    "mode": ("train", "eval", "pseudo_labels"),
    "model.norm_mode": ("shared", "sat", "seat"),
    "model.dtype": ("float32", "bfloat16"),
    "model.aspp_branches": (2, 4),
    "adv.mode": ("none", "single", "multi_level_sum", "two_discriminators"),
    "adv.input": ("softmax", "entropy"),
    "data.label_space": ("cityscapes19", "synthia16"),
    "pseudo.rule": ("global", "class_quantile"),
}
NUM_CLASSES = {"cityscapes19": 19, "synthia16": 16}
PLACEHOLDER = "REQUIRED"


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def _placeholders(config, prefix=""):
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _placeholders(value, name + ".")
    elif isinstance(value, str) and value.startswith(PLACEHOLDER):
      yield name, value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the config key and the accepted values."""
  problems = []
  for key, choices in CHOICES.items():
    if _get(config, key) not in choices:
      problems.append(f"config.{key}={_get(config, key)!r} is not one of {choices}")
  for key, value in _placeholders(config):
    problems.append(f"config.{key} must be set: {value}")
  expected = NUM_CLASSES.get(config.data.label_space)
  if expected and config.model.num_classes != expected:
    problems.append(f"config.model.num_classes={config.model.num_classes} but "
                    f"config.data.label_space={config.data.label_space!r} has {expected} classes")
  if config.train.batch_size < 1:
    problems.append("config.train.batch_size must be >= 1")
  import jax  # pylint: disable=g-import-not-at-top  (keeps this module cheap to import)
  if config.mode == "train" and config.train.batch_size % jax.device_count():
    problems.append(f"config.train.batch_size={config.train.batch_size} must be a multiple of "
                    f"the {jax.device_count()} devices (the batch is split across them)")
  if problems:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))
