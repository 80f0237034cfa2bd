"""What each method adds to the time of one training step, so users can plan a GPU budget.

Times the real jitted step (`train_step.jit_train_step`) on fixed random batches for a list of
variants that switch one method on at a time, each against the same model and batch:

  python benchmarks/method_step_cost.py [--model=demo|resnet101] [--hw=64x128] [--batch=4]

Prints a markdown table: variant, median seconds per step, and the ratio to source-only
training with SEAT norms (one source pass). Compile time is excluded; the first call is a
warm-up.
"""

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import presets
from seat_jax import train_step

# variant -> config overrides on top of the demo's SEAT config without an adversary.
VARIANTS = {
    "source only (SEAT norms)": {},
    "SEAT adversarial (the paper: D on the fused map)": {"adv.mode": "multi_level_sum"},
    "Differential treatment (+ D, stuff/thing memory)": {
        "adv.mode": "single", "differential.stuff_weight": 0.01,
        "differential.thing_weight": 0.01},
    "Toldo et al. clustering": {"clustering.cluster": 0.02, "clustering.ortho": 2.0,
                                "clustering.sparse": 0.5, "clustering.entropy": 0.1},
    "DACS (EMA teacher, ClassMix, jitter/blur; mixed images through the target norm)": {
        "mix.enabled": True, "mix.norm": "target"},
    "DACS, mix.norm=batch (default; + a target statistics pass)": {"mix.enabled": True},
    "DACS, mix.norm=source (+ a target statistics pass)": {
        "mix.enabled": True, "mix.norm": "source"},
    "DACS + FD (DAFormer's feature distance)": {"mix.enabled": True, "mix.fd_weight": 0.005},
    "DACS + FD + MIC (masked target image)": {"mix.enabled": True, "mix.fd_weight": 0.005,
                                             "mix.mic_weight": 1.0},
}


def _config(model: str, hw, batch: int, overrides: dict):
  config = presets.demo("seat")
  config.adv.mode = "none"
  config.train.batch_size = batch
  if model == "resnet101":
    config.model.stage_sizes = (3, 4, 23, 3)
    config.model.base_width = 64
  config.mix.mic_block = max(8, min(hw) // 8)
  config.update_from_flattened_dict(overrides)
  return config


def _batch(hw, batch: int, num_classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  h, w = hw
  labels = rng.integers(0, num_classes, size=(batch, h, w)).astype(np.int32)
  return {"source_image": jnp.asarray(rng.normal(size=(batch, h, w, 3)) * 50, jnp.float32),
          "source_label": jnp.asarray(labels),
          "target_image": jnp.asarray(rng.normal(size=(batch, h, w, 3)) * 50, jnp.float32)}


def time_variant(model: str, hw, batch: int, overrides: dict, steps: int) -> float:
  config = _config(model, hw, batch, overrides)
  trainer = train_step.build_trainer(config, devices=jax.devices()[:1])
  state = train_step.create_state(trainer, 0)
  step = train_step.jit_train_step(trainer)
  weights = jax.device_put(train_step.loss_weights(config), trainer.replicated)
  data = jax.device_put(_batch(hw, batch, config.model.num_classes), trainer.data_sharding)
  state, metrics = step(state, data, weights)  # compile + warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    begin = time.perf_counter()
    state, metrics = step(state, data, weights)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - begin)
  return statistics.median(times)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("demo", "resnet101"), default="demo")
  parser.add_argument("--hw", default="64x128", help="image height x width")
  parser.add_argument("--batch", type=int, default=4, help="images per domain")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
  args = parser.parse_args(argv)
  hw = tuple(int(v) for v in args.hw.split("x"))
  print(f"{jax.devices()[0].platform}, model {args.model}, {args.hw}, batch {args.batch} + "
        f"{args.batch}, median of {args.steps} steps", flush=True)
  rows, base = [], None
  for name, overrides in VARIANTS.items():
    seconds = time_variant(args.model, hw, args.batch, overrides, args.steps)
    base = base or seconds
    rows.append(f"| {name} | {seconds:.3f} | {seconds / base:.2f} |")
    print(rows[-1], flush=True)
  print("\n| variant | s / step | x source only |\n|---|---:|---:|\n" + "\n".join(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
