"""What several test files share: the tiny run, an in-memory data source, random variables."""

import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import presets

REPO = pathlib.Path(__file__).resolve().parents[1]


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


def demo_checkpoint(workdir, seed: int = 0, step: int = 3, head_kernel_scale: float = 1.0,
                    **model_overrides):
  """A run's workdir holding the demo model (configs/demo.py, with `model_overrides`) with
  random variables at `step` (`random_variables`), saved as training saves it: (config,
  variables). Nothing is compiled."""
  from seat_jax import checkpointing, models  # pylint: disable=g-import-not-at-top,multiple-imports
  config = presets.demo("seat")
  config.model.update(model_overrides)
  variables = random_variables(models.build_segmenter(config.model), seed,
                               head_kernel_scale=head_kernel_scale)
  checkpointing.save_variables(f"{workdir}/checkpoints", variables, {}, step=step)
  return config, variables


def write_video(path, frames, rate: int = 5) -> None:
  """uint8 RGB frames [H, W, 3] (even sizes) as an H.264 file through PyAV."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def read_video(path) -> list:
  """Every frame of the file's first video stream as uint8 RGB [H, W, 3]."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path)) as container:
    return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def suite_env():
  """The environment for a command in a subprocess: this checkout first on the path and the
  suite's compile settings (tests/conftest.py), so it shares the suite's XLA cache."""
  import os  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  repo = str(pathlib.Path(__file__).resolve().parents[1])
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
  return env


def load_script(relative_path: str):
  """A repository script (benchmarks/*.py, tools/*.py) imported as a module, to call its main."""
  path = REPO / relative_path
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
