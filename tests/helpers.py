"""What several test files share: the tiny run, an in-memory data source, random variables."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import presets


def tiny_train_config(data_dir, num_steps: int = 4):
  """The tiny run (compiled once per machine, thanks to the XLA cache): SEAT on synthetic_streets at 32x64, batch 2, a checkpoint every 2 steps, logs every step."""
  config = presets.demo("seat")
  config.data.data_dir = data_dir
  for split in (config.data.source, config.data.target, config.data.val):
    split.resize_hw = (32, 64)
  config.data.source.crop_hw = (32, 64)
  config.train.batch_size = 2
  config.train.num_steps = num_steps
  config.train.lr_horizon_steps = 100
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.eval_every = 0
  return config


def step_config(overrides: dict | None = None):
  """The demo model with 5 classes, no adversary and batch 2: the method-step tests' base, with
  `overrides` as {dotted key: value}."""
  config = presets.demo("seat")
  config.model.num_classes = 5
  config.adv.mode = "none"
  config.optim.weight_decay = 0.0
  config.train.batch_size = 2
  config.update_from_flattened_dict(overrides or {})
  return config


class ListSource:
  """A random-access data source over a list of examples (what tfds.data_source looks like)."""

  def __init__(self, examples):
    self._examples = list(examples)

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]


def random_variables(model, seed: int, *, other_std: float = 0.1, head_kernel_scale: float = 1.0):
  """Variables of `model` with useful spread, filled by numpy (nothing compiled).

  He-scaled kernels (heads' times `head_kernel_scale`: small heads give soft predictions),
  running variances in [0.5, 1.5], scales 1 + 0.1 N(0, 1), means and biases `other_std` N(0, 1).
  """
  from seat_jax import models  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = math.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      if str(path[1].key).endswith("_head"):
        std *= head_kernel_scale
      return (rng.normal(size=leaf.shape) * std).astype(np.float32)
    if name.endswith("var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name.endswith("scale"):
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    return (other_std * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def tiny_model_config(model_hw):
  """The base config with the tiny model (a block per stage, width 8), target/val at model_hw."""
  from seat_jax import config_defaults  # pylint: disable=g-import-not-at-top
  config = config_defaults.get_config()
  config.model.stage_sizes, config.model.base_width = (1, 1, 1, 1), 8
  config.data.val.resize_hw = model_hw
  config.data.target.resize_hw = model_hw
  return config


def fake_step_batch(seed: int = 0, h: int = 32, w: int = 48, num_classes: int = 5):
  """A fixed random batch of two images per domain for the step (top 4 label rows ignored)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=(2, h, w)).astype(np.int32)
  labels[:, :4] = 255
  return {"source_image": jnp.asarray(rng.normal(size=(2, h, w, 3)) * 50, jnp.float32),
          "source_label": jnp.asarray(labels),
          "target_image": jnp.asarray(rng.normal(size=(2, h, w, 3)) * 30 + 20, jnp.float32)}


def data_sharding():
  """The train step's batch sharding over every local device (train_step.make_mesh)."""
  from seat_jax import input_pipeline, train_step  # pylint: disable=g-import-not-at-top
  return input_pipeline.data_sharding(train_step.make_mesh())


def batches_after_checkpoint(config, sharding, skip: int, take: int):
  """(iterator state after `skip` batches, JSON round-tripped as a checkpoint stores it, and the
  `take` batches that follow it) of a fresh `TrainingBatches`."""
  from seat_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  batches = input_pipeline.TrainingBatches(config, sharding)
  for _ in range(skip):
    next(batches)
  state = json.loads(json.dumps(batches.get_state()))
  return state, [next(batches) for _ in range(take)]
