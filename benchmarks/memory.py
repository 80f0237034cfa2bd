"""Peak device memory of the compiled SEAT iteration, from XLA's own buffer assignment.

    python benchmarks/memory.py                         # paper sizes, fp32/bf16 x remat none/blocks
    python benchmarks/memory.py --depth=tiny --source_hw=64,128 --target_hw=64,128

The iteration (segmenter + discriminator, both optimisers; `train_step.jit_train_step`) is lowered
and compiled for abstract inputs and never run, so this works on any backend, the CPU included.
Peak = arguments + outputs + temporaries - aliased (donated) bytes, as XLA assigned them on the
backend it compiled for; a GPU's figure differs by what its compiler fuses (benchmarks/
gpu_check.py reads the GPU's own peak). Batch 1 + 1 at the paper's sizes by default: a 1024x512
crop of the 1280x720 source and a 1024x512 target image.
"""

import argparse
import itertools
import json
import os
import time

GIB = 1024 ** 3


def parse_hw(text: str) -> tuple[int, int]:
  h, w = (int(v) for v in text.split(","))
  return h, w


def paper_config(dtype: str = "float32", remat: str = "none", depth: str = "resnet101",
                 batch_size: int = 1):
  """The GTA5 multi-level SEAT preset with the given compute dtype and rematerialisation."""
  from seat_jax import presets  # pylint: disable=g-import-not-at-top
  config = presets.gta("mul")
  config.model.dtype = dtype
  config.model.remat = remat
  if depth == "tiny":
    config.model.stage_sizes, config.model.base_width = (1, 1, 1, 1), 8
  config.train.batch_size = batch_size
  return config


def abstract_batch(config, source_hw, target_hw, sharding):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seat_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  n = config.train.batch_size
  shape = lambda s, dt: jax.ShapeDtypeStruct(s, dt, sharding=sharding)
  return {ip.SOURCE_IMAGE: shape((n, *source_hw, 3), jnp.float32),
          ip.SOURCE_LABEL: shape((n, *source_hw), jnp.int32),
          ip.TARGET_IMAGE: shape((n, *target_hw, 3), jnp.float32)}


def compile_iteration(config, source_hw, target_hw):
  """(compiled step, seconds to compile) for abstract state and batch; nothing is computed."""
  import jax  # pylint: disable=g-import-not-at-top
  from seat_jax import train_step  # pylint: disable=g-import-not-at-top
  trainer = train_step.build_trainer(config)
  state = train_step.abstract_state(trainer)
  weights = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=trainer.replicated),
      train_step.loss_weights(config))
  batch = abstract_batch(config, source_hw, target_hw, trainer.data_sharding)
  start = time.perf_counter()
  compiled = train_step.jit_train_step(trainer).lower(state, batch, weights).compile()
  return compiled, time.perf_counter() - start


def memory_of(compiled) -> dict:
  """XLA's buffer sizes of a compiled function, in GiB, and the peak they add up to."""
  stats = compiled.memory_analysis()
  arguments = stats.argument_size_in_bytes
  outputs = stats.output_size_in_bytes
  temps = stats.temp_size_in_bytes
  aliased = stats.alias_size_in_bytes
  return {"arguments_gib": round(arguments / GIB, 3), "outputs_gib": round(outputs / GIB, 3),
          "temporaries_gib": round(temps / GIB, 3), "aliased_gib": round(aliased / GIB, 3),
          "peak_gib": round((arguments + outputs + temps - aliased) / GIB, 3)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source_hw", type=parse_hw, default=(512, 1024))
  parser.add_argument("--target_hw", type=parse_hw, default=(512, 1024))
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--remats", default="none,blocks")
  parser.add_argument("--depth", choices=("resnet101", "tiny"), default="resnet101")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # pylint: disable=g-import-not-at-top
  rows = []
  for dtype, remat in itertools.product(args.dtypes.split(","), args.remats.split(",")):
    config = paper_config(dtype, remat, args.depth, args.batch_size)
    compiled, seconds = compile_iteration(config, args.source_hw, args.target_hw)
    row = {"backend": jax.devices()[0].platform, "depth": args.depth, "dtype": dtype,
           "remat": remat, "source_hw": list(args.source_hw), "target_hw": list(args.target_hw),
           "batch": args.batch_size, "compile_s": round(seconds, 1), **memory_of(compiled)}
    rows.append(row)
    print(f"| {row['backend']} | {dtype} | {remat} | {row['peak_gib']:.2f} | "
          f"{row['arguments_gib']:.2f} | {row['temporaries_gib']:.2f} | {row['compile_s']} |",
          flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
