"""AdaBN (Li et al. 2018): target-domain norm statistics from one pass over the target split.

A source-only model normalises target images with source statistics (or, with SEAT norms, with
target slots nothing ever updated). AdaBN replaces each norm's statistics by the population mean
and variance of its inputs over the target images, leaving weights and affines as they are; the
paper estimates them exactly with an online algorithm over all spatial positions of all target
images, not with a moving average (docs/compared-methods-research.md section 6).

Here the model runs over the target train split one image at a time in train mode on the target
norms (so each norm's input is normalised upstream by the image's own statistics, as PyTorch's
cumulative `momentum=None` pass does), every norm's per-image moments are collected (SeatNorm
sows them) and pooled exactly over all pixels in float64. The adapted variables are written as a
checkpoint that evaluation and pseudo-labels read like any other.
"""

import functools
import json
from collections.abc import Iterable
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from etils import epath

from seat_jax import checkpointing
from seat_jax import input_pipeline
from seat_jax import models
from seat_jax import progress

PathKey = tuple[str, ...]


class PooledMoments:
  """Exact mean and (biased) variance of everything added, from per-chunk counts and moments."""

  def __init__(self):
    self.count, self.total, self.total_sq = 0, 0.0, 0.0

  def add(self, count: int, mean: np.ndarray, var: np.ndarray) -> None:
    mean = np.asarray(mean, np.float64)
    self.count += count
    self.total = self.total + count * mean
    self.total_sq = self.total_sq + count * (np.asarray(var, np.float64) + mean ** 2)

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    mean = self.total / self.count
    return mean, np.maximum(self.total_sq / self.count - mean ** 2, 0.0)


@functools.lru_cache(maxsize=4)
def _moments_fn(model):
  """Jitted fn(variables, images) -> {norm path: (count, mean, var)} of a target train pass."""

  @jax.jit
  def moments(variables, images):
    _, state = model.apply(variables, images, domain="target", train=True,
                           mutable=["batch_stats", "intermediates"])
    flat = flax.traverse_util.flatten_dict(state["intermediates"])
    return {path[:-1]: sown[0] for path, sown in flat.items() if path[-1] == "batch_moments"}

  return moments


def target_statistics(model: Any, variables: Any, examples: Iterable[dict[str, Any]],
                      total: int | None = None, enabled: bool = True) -> dict[PathKey, tuple]:
  """{norm module path: (population mean, population var)} over the images of `examples`."""
  moments_fn = _moments_fn(model)
  pooled: dict[PathKey, PooledMoments] = {}
  meter = progress.Progress("adabn", total, unit="images", every_secs=5.0, enabled=enabled)
  meter(0)
  count = 0
  for example in examples:
    for path, (n, mean, var) in moments_fn(variables, example["image"]).items():
      pooled.setdefault(path, PooledMoments()).add(int(n), np.asarray(mean), np.asarray(var))
    count += 1
    meter(count)
  if not count:
    raise ValueError("AdaBN: the target split has no images; check config.data.target.")
  return {path: moments.result() for path, moments in pooled.items()}


def with_target_statistics(variables: Any, statistics: dict[PathKey, tuple]) -> dict[str, Any]:
  """A copy of `variables` whose target (or, in `shared` mode, only) statistics are replaced."""
  batch_stats = flax.traverse_util.flatten_dict(jax.device_get(variables["batch_stats"]))
  replaced = dict(batch_stats)
  for path, (mean, var) in statistics.items():
    prefix = "target_" if path + ("target_mean",) in batch_stats else ""
    for name, value in ((prefix + "mean", mean), (prefix + "var", var)):
      old = batch_stats[path + (name,)]
      replaced[path + (name,)] = np.asarray(value, old.dtype).reshape(old.shape)
  return {"params": variables["params"],
          "batch_stats": flax.traverse_util.unflatten_dict(replaced)}


def output_dir(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  return epath.Path(config.adabn.output_dir or epath.Path(workdir) / "adabn")


def adapt(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """The adabn mode: the final (or eval.step) checkpoint with target statistics, written out.

  Reads the checkpoint from config.eval.checkpoint (else the workdir's), passes
  config.adabn.max_images images (0: all) of the target train split at its resize_hw, and
  writes <output_dir>/checkpoints/<step> (items model and meta) plus summary.json. Evaluate it
  with --config.mode=eval --config.eval.checkpoint=<output_dir>.
  """
  directory, steps = checkpointing.find_steps(config.eval.checkpoint or workdir, config.eval.step)
  step = steps[-1]
  model = models.build_segmenter(config.model)
  variables = checkpointing.restore_model(directory, checkpointing.abstract_variables(model), step)
  split_config = config.data.target
  limit = int(config.adabn.max_images)
  total = input_pipeline.num_eval_examples(config, split_config, max_examples=limit)
  examples = input_pipeline.create_eval_iterator(config, split_config, max_examples=limit)
  split_name = f"{split_config.name}/{split_config.split}"
  is_writer_host = jax.process_index() == 0
  print(f"AdaBN: target statistics of {directory} step {step} over {total} images of "
        f"{split_name} at {tuple(split_config.resize_hw)}", flush=True)
  statistics = target_statistics(model, variables, examples, total, enabled=is_writer_host)
  adapted = with_target_statistics(variables, statistics)
  out = output_dir(config, workdir)
  summary = {"checkpoint": str(directory), "step": step, "split": split_name,
             "num_images": total, "norm_mode": config.model.norm_mode,
             "num_norms": len(statistics), "output": str(out / "checkpoints")}
  checkpointing.save_variables(out / "checkpoints", adapted, {"adabn": summary}, step=step)
  if is_writer_host:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"AdaBN: {len(statistics)} norms adapted -> {out / 'checkpoints'} (evaluate with "
        f"--config.mode=eval --config.eval.checkpoint={out})", flush=True)
  return summary
