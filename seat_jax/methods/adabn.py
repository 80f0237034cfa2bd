"""AdaBN (Li et al. 2018): target-domain norm statistics from one pass over the target split.

A source-only model normalises target images with source statistics (or, with SEAT norms, with
target slots nothing ever updated). AdaBN replaces each norm's statistics by the population mean
and variance of its inputs over the target images, leaving weights and affines as they are; the
paper estimates them exactly with an online algorithm over all spatial positions of all target
images, not with a moving average (docs/compared-methods-research.md section 6).

Here the model runs over the target train split one image at a time in train mode on the target
norms (so each norm's input is normalised upstream by the image's own statistics, as PyTorch's
cumulative `momentum=None` pass does), every norm's per-image moments are collected (SeatNorm
sows them) and pooled exactly over all pixels in float64 (the pass: `seat_jax.adabn_statistics`).
The adapted variables are written as a checkpoint that evaluation and pseudo-labels read like
any other.
"""

import dataclasses
import functools
from typing import Any

import flax
import jax
import numpy as np

from seat_jax.methods import base

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
def moments_fn(model):
  """Jitted fn(variables, images) -> {norm path: (count, mean, var)} of a target train pass."""

  @jax.jit
  def moments(variables, images):
    _, state = model.apply(variables, images, domain="target", train=True,
                           mutable=["batch_stats", "intermediates"])
    flat = flax.traverse_util.flatten_dict(state["intermediates"])
    return {path[:-1]: sown[0] for path, sown in flat.items() if path[-1] == "batch_moments"}

  return moments


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




@dataclasses.dataclass(frozen=True)
class AdaBN(base.Method):
  """No step terms: AdaBN is a pass over the target split (`seat_jax.adabn_statistics`, mode
  adabn) after a source-only run. Owns the `adabn.*` entries."""

  @staticmethod
  def add_config(config):
    # AdaBN (mode adabn): target statistics of a source-only model from the target train split.
    adabn = base.section(config, "adabn")
    adabn.max_images = 0  # target images the statistics are pooled over; 0 = the whole split
    adabn.output_dir = ""  # where the adapted checkpoint goes; "" = <workdir>/adabn
