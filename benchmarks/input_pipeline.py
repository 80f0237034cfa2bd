"""Input-pipeline throughput at the paper's sizes: source+target pairs per second per worker count.

Usage: python benchmarks/input_pipeline.py [--steps=40] [--workers=0,1,2] [--fda_beta=0.01]

Writes a handful of full-size PNGs (GTA5-like 1914x1052 source images and labels, Cityscapes-like
2048x1024 target images), keeps them encoded in memory and decodes them with PIL on every read,
as the TFDS data source does for array_record PNG features, so decoding is part of the timed
work. The source is resized to 720x1280 (bicubic image, nearest label) and cropped to 512x1024;
the target is resized to 512x1024; both are converted to BGR minus the Caffe mean. Batch 1 per
domain (the paper's setting). A separate single-thread breakdown says where the CPU time goes,
which gives the number of cores needed to keep up with a training step of a given length.
"""

import argparse
import io
import os
import time

import numpy as np
from PIL import Image
import psutil

from seat_jax import config_defaults
from seat_jax import input_pipeline as ip

SOURCE_HW = (1052, 1914)  # GTA5
TARGET_HW = (1024, 2048)  # Cityscapes


def _street_like(hw, rng):
  """An image with photo-like entropy: smooth shading, flat regions, edges and sensor noise."""
  height, width = hw
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  base = 90 + 50 * np.sin(xx / 97.0)[..., None] * np.cos(yy / 53.0)[..., None]
  base = base + np.array([20, 0, -15], np.float32) * (yy / height)[..., None]
  for _ in range(40):  # flat "objects"
    top, left = rng.integers(0, height - 50), rng.integers(0, width - 50)
    bottom, right = top + rng.integers(20, 300), left + rng.integers(20, 400)
    base[top:bottom, left:right] = rng.integers(0, 256, 3)
  noise = rng.normal(0, 4, (height, width, 3)).astype(np.float32)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def _label_like(hw, rng):
  height, width = hw
  label = np.zeros(hw, np.uint8)
  label[height // 2:] = 0  # road
  label[: height // 3] = 10  # sky
  for _ in range(60):
    top, left = rng.integers(0, height - 20), rng.integers(0, width - 20)
    label[top:top + rng.integers(10, 200), left:left + rng.integers(10, 300)] = rng.choice(
        [1, 2, 5, 8, 11, 13, 255])
  return label


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _decode(png_bytes, channels):
  with Image.open(io.BytesIO(png_bytes)) as image:
    array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 and array.ndim == 2 else array


class PngSource:
  """In-memory PNGs decoded on every read, like tfds.data_source over array_record.

  It pretends to hold `length` examples (GTA5 has 24,966) by cycling through the few PNGs:
  grain's index shuffle is unusually slow (ms per index) on datasets of a handful of examples.
  """

  def __init__(self, images, labels=None, length=25_000):
    self.images = images  # encoded PNG bytes
    self.labels = labels
    self._length = length

  def __len__(self):
    return self._length

  def __getitem__(self, index):
    index %= len(self.images)
    example = {"image": _decode(self.images[index], 3), "id": f"bench_{index:04d}"}
    if self.labels is not None:
      example["label"] = _decode(self.labels[index], 1)
    return example


def make_sources(num_images: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  source = PngSource([_png(_street_like(SOURCE_HW, rng)) for _ in range(num_images)],
                     [_png(_label_like(SOURCE_HW, rng)) for _ in range(num_images)])
  target = PngSource([_png(_street_like(TARGET_HW, rng)) for _ in range(num_images)])
  return source, target


def paper_config(workers: int, fda_beta: float):
  config = config_defaults.get_config()
  config.data.worker_count = workers
  config.data.fda_beta = fda_beta
  config.train.batch_size = 1
  # Small buffers: elements prefetched before the timer starts would count as free work.
  config.data.prefetch_buffer_size = 1
  return config


def _cpu_seconds():
  """CPU time of this process and its live children (grain workers), user + system."""
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.NoSuchProcess:
      pass
  return total


def time_pairs(source, target, workers, steps, fda_beta):
  """(pairs per second of wall time, CPU milliseconds per pair over all processes)."""
  config = paper_config(workers, fda_beta)
  source_it = ip.create_train_iterator(config, "source", seed=0, data_source=source,
                                       fda_data_source=target)
  target_it = ip.create_train_iterator(config, "target", seed=0, data_source=target)
  for _ in range(3):  # start-up: worker processes, first decodes
    next(source_it), next(target_it)
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(steps):
    batch_s, batch_t = next(source_it), next(target_it)
  elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - start_cpu
  assert batch_s["image"].shape == (1, 512, 1024, 3) and batch_s["label"].shape == (1, 512, 1024)
  assert batch_t["image"].shape == (1, 512, 1024, 3)
  del batch_s, batch_t
  for iterator in (source_it, target_it):
    if workers:
      iterator.close()
  return steps / elapsed, cpu / steps * 1e3


def _cpu_ms(fn, repeats=5):
  """CPU (not wall) milliseconds per call: the machine may be busy with other work."""
  fn()
  start = time.process_time()
  for _ in range(repeats):
    fn()
  return (time.process_time() - start) / repeats * 1e3


def breakdown(source, target, fda_beta):
  """Single-thread milliseconds per step of each piece of work."""
  src = source[0]
  tgt = target[0]
  resized = ip.resize_image(src["image"], (720, 1280))
  crop = resized[:512, :1024]
  target_small = ip.resize_image(tgt["image"], (512, 1024))
  parts = {
      "source image PNG decode": lambda: _decode(source.images[0], 3),
      "source label PNG decode": lambda: _decode(source.labels[0], 1),
      "source image bicubic resize": lambda: ip.resize_image(src["image"], (720, 1280)),
      "source label nearest resize": lambda: ip.resize_label(src["label"][..., 0], (720, 1280)),
      "source BGR - mean (512x1024)": lambda: ip.to_model_input(crop),
      "target image PNG decode": lambda: _decode(target.images[0], 3),
      "target image bicubic resize": lambda: ip.resize_image(tgt["image"], (512, 1024)),
      "target BGR - mean (512x1024)": lambda: ip.to_model_input(target_small),
  }
  if fda_beta > 0:
    parts["FDA: extra target decode"] = parts["target image PNG decode"]
    parts["FDA: extra target resize"] = parts["target image bicubic resize"]
    parts["FDA: amplitude swap (3 FFTs)"] = lambda: ip.fda.fda_source_to_target(
        crop, target_small, fda_beta)
  return {name: _cpu_ms(fn) for name, fn in parts.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--workers", default="0,1,2", help="per-domain worker counts to time")
  parser.add_argument("--num_images", type=int, default=4)
  parser.add_argument("--fda_beta", type=float, default=0.0)
  args = parser.parse_args()

  start = time.perf_counter()
  source, target = make_sources(args.num_images)
  sizes = [len(b) for b in source.images + target.images]
  print(f"wrote {2 * args.num_images} PNGs in {time.perf_counter() - start:.1f}s "
        f"(mean {np.mean(sizes) / 2**20:.1f} MiB); CPUs: {os.cpu_count()}")

  parts = breakdown(source, target, args.fda_beta)
  total = sum(parts.values())
  print("\nsingle-thread CPU ms per source+target pair:")
  for name, ms in parts.items():
    print(f"  {name:32s} {ms:7.1f}")
  print(f"  {'total':32s} {total:7.1f}")
  for step_ms in (20, 50):
    print(f"  cores to feed a {step_ms} ms step (batch 1): {total / step_ms:.1f}")

  print(f"\nthrough the pipeline (batch 1 per domain, fda_beta={args.fda_beta}); wall time depends "
        f"on what else runs (load average now {os.getloadavg()[0]:.1f}), CPU time does not:")
  for workers in [int(w) for w in args.workers.split(",")]:
    rate, cpu_ms = time_pairs(source, target, workers, args.steps, args.fda_beta)
    print(f"  worker_count={workers} per domain ({2 * workers} worker processes): "
          f"{rate:6.2f} pairs/s = {1e3 / rate:6.1f} ms/pair wall, {cpu_ms:6.1f} CPU ms/pair; "
          f"cores to feed a 20 / 50 ms step: {cpu_ms / 20:.1f} / {cpu_ms / 50:.1f}")


if __name__ == "__main__":
  main()
