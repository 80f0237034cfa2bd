"""The adabn pass: a model's norm statistics replaced by the target split's (AdaBN).

Runs the checkpoint over the target train split on the target norms, pools every norm's input
moments exactly (`methods.adabn`) and writes the adapted variables as a checkpoint that eval and
pseudo_labels read like any other.
"""

import json
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from seat_jax import checkpointing
from seat_jax import input_pipeline
from seat_jax import models
from seat_jax import progress
from seat_jax.methods.adabn import PathKey, PooledMoments, moments_fn, with_target_statistics


def target_statistics(model: Any, variables: Any, examples: Iterable[dict[str, Any]],
                      total: int | None = None, enabled: bool = True) -> dict[PathKey, tuple]:
  """{norm module path: (population mean, population var)} over the images of `examples`."""
  compute_moments = moments_fn(model)
  pooled: dict[PathKey, PooledMoments] = {}
  meter = progress.Progress("adabn", total, unit="images", every_secs=5.0, enabled=enabled)
  meter(0)
  count = 0
  for example in examples:
    for path, (n, mean, var) in compute_moments(variables, example["image"]).items():
      pooled.setdefault(path, PooledMoments()).add(int(n), np.asarray(mean), np.asarray(var))
    count += 1
    meter(count)
  if not count:
    raise ValueError("AdaBN: the target split has no images; check config.data.target.")
  return {path: moments.result() for path, moments in pooled.items()}


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
