"""Frames/s of `python -m seat_jax.segment` and the size of `python -m seat_jax.export`'s files.

  python benchmarks/segment_speed.py [--models=demo,resnet101] [--frames=4] [--batch=1]
      [--export] [--end_to_end]

For each model (random weights: speed does not depend on them):
  device path  `predict.make_image_predict_fn`, what segment runs per batch: model-size input
               on the device -> labels at the frame's size on the host. The demo model on
               128x256 frames (its synthetic images, model input 64x128); ResNet-101 on
               2048x1024 frames (Cityscapes' size, model input 1024x512, the paper's scale).
               Compile time is excluded (one warm-up batch); median over `--frames / --batch`
               batches.
  end to end   (--end_to_end) `segment.segment` over a folder of PNG frames: reading,
               resizing, the device, writing the four PNGs per frame.
  export       (--export) the sizes of model.jax (jax.export, weights inside) and saved_model/
               (jax2tf, weights as variables), lowered for cpu and cuda, and the time to write
               them.
Prints one markdown table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from seat_jax import export
from seat_jax import labels
from seat_jax import models
from seat_jax import predict
from seat_jax import presets
from seat_jax import segment

# model -> (model config overrides, frame size (height, width), model input size).
MODELS = {
    "demo": ({}, (128, 256), (64, 128)),
    "resnet101": ({"stage_sizes": models.RESNET101_STAGES, "base_width": 64}, (1024, 2048),
                  (512, 1024)),
}


def _restored(name: str) -> segment.Restored:
  overrides, _, model_hw = MODELS[name]
  config = presets.demo("seat")
  config.model.update(overrides)
  model = models.build_segmenter(config.model)
  variables = jax.jit(models.init_variables, static_argnums=0)(model, jax.random.key(0))
  return segment.Restored(model=model, variables=variables,
                          space=labels.get_label_space("cityscapes19"), directory="(random)",
                          step=0, domain="target", source_stages=(), trained_hw=model_hw)


def device_path(restored: segment.Restored, frame_hw, frames: int, batch: int) -> dict:
  fn = predict.make_image_predict_fn(restored.model, restored.source_stages)
  model_hw = predict.model_input_hw(frame_hw, "", restored.trained_hw)
  rng = np.random.default_rng(0)
  inputs = jax.device_put(rng.normal(0, 50, (batch, *model_hw, 3)).astype(np.float32))
  start = time.perf_counter()
  np.asarray(fn(restored.variables, inputs, frame_hw))  # compile + first run
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(max(1, frames // batch)):
    start = time.perf_counter()
    np.asarray(fn(restored.variables, inputs, frame_hw))
    times.append(time.perf_counter() - start)
  return {"frames/s": batch / statistics.median(times), "compile s": compile_s,
          "model input": f"{model_hw[0]}x{model_hw[1]}"}


def end_to_end(restored: segment.Restored, frame_hw, frames: int, batch: int) -> float:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    rng = np.random.default_rng(1)
    for i in range(frames + batch):
      Image.fromarray(rng.integers(0, 255, (*frame_hw, 3), np.uint8)).save(f"{tmp}/{i:03d}.png")
    segmenter = segment.Segmenter(
        predict_fn=predict.make_image_predict_fn(restored.model, restored.source_stages),
        variables=restored.variables, space=restored.space, trained_hw=restored.trained_hw,
        batch_size=batch)
    warm = segment.expand_inputs([f"{tmp}/{i:03d}.png" for i in range(batch)])
    segment.segment(segmenter, warm, f"{tmp}/out", progress=False)  # compiles
    timed = segment.expand_inputs([f"{tmp}/{i:03d}.png" for i in range(batch, frames + batch)])
    return segment.segment(segmenter, timed, f"{tmp}/out", progress=False).frames_per_second


def export_sizes(restored: segment.Restored) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    export.export_jax(restored, f"{tmp}/model.jax", ("cpu", "cuda"))
    jax_s = time.perf_counter() - start
    start = time.perf_counter()
    export.export_saved_model(restored, f"{tmp}/saved_model", ("cpu", "cuda"))
    tf_s = time.perf_counter() - start
    return {"model.jax": export._size(f"{tmp}/model.jax"),  # pylint: disable=protected-access
            "saved_model/": export._size(f"{tmp}/saved_model"),  # pylint: disable=protected-access
            "export s (jax, saved_model)": f"{jax_s:.0f}, {tf_s:.0f}"}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="demo,resnet101")
  parser.add_argument("--frames", type=int, default=4)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--export", action="store_true")
  parser.add_argument("--end_to_end", action="store_true")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} host cores, "
        f"batch {args.batch}, {args.frames} timed frames", flush=True)
  rows = []
  for name in args.models.split(","):
    _, frame_hw, _ = MODELS[name]
    restored = _restored(name)
    row = {"model": name, "frame": f"{frame_hw[0]}x{frame_hw[1]}"}
    row.update(device_path(restored, frame_hw, args.frames, args.batch))
    if args.end_to_end:
      row["end to end frames/s"] = end_to_end(restored, frame_hw, args.frames, args.batch)
    if args.export:
      row.update(export_sizes(restored))
    print(row, flush=True)
    rows.append(row)
  keys = list(dict.fromkeys(k for row in rows for k in row))
  print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
  for row in rows:
    print("| " + " | ".join(f"{row.get(k, ''):.2f}" if isinstance(row.get(k), float)
                            else str(row.get(k, "")) for k in keys) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
