"""Times the whole SEAT iteration (segmenter + discriminator) as training runs it.

    python benchmarks/train_iteration.py                       # paper sizes, float32 and bfloat16
    python benchmarks/train_iteration.py --source_hw=256,512 --target_hw=256,512 --dtypes=float32

One call of `train_step.jit_train_step`: source forward/backward (SEAT norm, CE main + aux), target
forward/backward through the discriminator, discriminator update, SGD + Adam. Batch 1 + 1 by
default, as in the paper. The input pipeline is not part of it (benchmarks/input_pipeline.py).
Reports iterations/s, the XLA FLOP count of the compiled step and, on a GPU with a known peak,
the model-FLOP utilisation. A DeepLabV2-R101 forward is about 0.76 TFLOP at 1024x512 and
1.33 TFLOP at 1280x720 (REFERENCE 1.7); a training step costs roughly 3x the forwards.
"""

import argparse
import json
import os
import statistics
import time

# Dense bf16 / fp32 peaks in FLOP/s (vendor data sheets, SXM parts).
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}


def parse_hw(text: str) -> tuple[int, int]:
  h, w = (int(v) for v in text.split(","))
  return h, w


def peak_for(device, dtype: str):
  kind = getattr(device, "device_kind", "")
  for name, peaks in PEAK_FLOPS.items():
    if name in kind:
      return peaks[dtype]
  return None


def run(args, dtype: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seat_jax import presets, train_step  # pylint: disable=g-import-not-at-top,multiple-imports

  config = presets.gta("mul")
  config.model.dtype = dtype
  if args.depth == "tiny":
    config.model.stage_sizes, config.model.base_width = (1, 1, 1, 1), 8
  config.train.batch_size = args.batch_size
  trainer = train_step.build_trainer(config)
  state = train_step.create_state(trainer, 0)
  step = train_step.jit_train_step(trainer)
  weights = jax.device_put(train_step.loss_weights(config), trainer.replicated)
  key = jax.random.key(0)
  n = args.batch_size
  batch = {
      "source_image": jax.random.normal(key, (n, *args.source_hw, 3), jnp.float32) * 50,
      "source_label": jax.random.randint(key, (n, *args.source_hw), 0, 19),
      "target_image": jax.random.normal(key, (n, *args.target_hw, 3), jnp.float32) * 50,
  }
  batch = jax.device_put(batch, trainer.data_sharding)

  start = time.perf_counter()
  compiled = step.lower(state, batch, weights).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0

  for _ in range(args.warmup):
    state, metrics = compiled(state, batch, weights)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, weights)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  device = jax.devices()[0]
  peak = peak_for(device, dtype)
  return {
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}",
      "depth": args.depth, "dtype": dtype, "batch": n, "source_hw": list(args.source_hw),
      "target_hw": list(args.target_hw), "compile_s": round(compile_s, 1),
      "step_s_median": round(median, 4), "iterations_per_s": round(1 / median, 3),
      "xla_tflop_per_step": round(flops / 1e12, 3),
      "mfu": round(flops / median / peak, 3) if peak and flops else None,
      "loss": float(metrics["loss"]),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source_hw", type=parse_hw, default=(512, 1024),
                      help="source crop H,W (paper: 1280x720 resized, 1024x512 crop)")
  parser.add_argument("--target_hw", type=parse_hw, default=(512, 1024))
  parser.add_argument("--batch_size", type=int, default=1, help="global images per domain")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--depth", choices=("resnet101", "tiny"), default="resnet101")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", default="", help="also write the results to this file")
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  results = [run(args, dtype) for dtype in args.dtypes.split(",")]
  for r in results:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no known peak)"
    print(f"{r['device']} {r['depth']} {r['dtype']} batch {r['batch']}+{r['batch']} "
          f"source {r['source_hw']} target {r['target_hw']}: {r['step_s_median'] * 1e3:.1f} ms/it "
          f"({r['iterations_per_s']:.2f} it/s), {r['xla_tflop_per_step']} TFLOP/it (XLA count), "
          f"MFU {mfu}, compile {r['compile_s']} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
