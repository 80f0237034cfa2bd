"""Input-pipeline cost at the paper's sizes: host CPU per source+target pair, host vs device path.

Usage: python benchmarks/input_pipeline.py [--steps=30] [--workers=0,1,2] [--fda_beta=0.01]
                                           [--device_steps=3] [--num_images=4]

Writes a handful of photo-like PNGs at the datasets' stored sizes (GTA5-like 1914x1052 source
images and labels, Cityscapes-like 2048x1024 target images) and, as the pre-resized builder
configs store them (gta5/*_1280x720, cityscapes/train_1024x512), the same images resized on the
host to 1280x720 and 1024x512. They are kept encoded in memory and decoded with PIL on every
read, as the TFDS data source does for array_record PNG features, so decoding is part of the
timed work. Batch 1 per domain (the paper's setting); source resized to 720x1280 and cropped to
512x1024, target resized to 512x1024, BGR minus the Caffe mean.

It prints:
  * the PNG bytes per example of each storage (what the builds take on disk);
  * a single-thread CPU breakdown of each path (host: decode + PIL resizes + mean; device:
    decode, the rest on the accelerator);
  * host CPU ms per pair and pairs/s through the real grain pipeline, per worker count, for the
    host path (before) and the device path (after) on both storages; CPU time counts every
    process (grain workers too), so it does not depend on what else runs on the machine;
  * the device part (jitted, one call per step) per pair on this JAX backend and how close its
    batches are to the host path's at full size (mean/max |diff|, label agreement).
"""

import argparse
import io
import os
import time

import jax
import numpy as np
from PIL import Image
import psutil

from seat_jax import config_defaults
from seat_jax import device_preprocessing as dp
from seat_jax import input_pipeline as ip

SOURCE_HW = (1052, 1914)  # GTA5 as stored
TARGET_HW = (1024, 2048)  # Cityscapes as stored
SOURCE_RESIZE_HW, TARGET_RESIZE_HW, CROP_HW = (720, 1280), (512, 1024), (512, 1024)


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
  """{'full': (source, target), 'resized': (source, target)}: the same scenes in both storages."""
  rng = np.random.default_rng(seed)
  images = [_street_like(SOURCE_HW, rng) for _ in range(num_images)]
  labels = [_label_like(SOURCE_HW, rng) for _ in range(num_images)]
  targets = [_street_like(TARGET_HW, rng) for _ in range(num_images)]
  resized = {  # what the pre-resized builder configs store (data_builders.common)
      "images": [ip.resize_image(i, SOURCE_RESIZE_HW) for i in images],
      "labels": [ip.resize_label(l, SOURCE_RESIZE_HW) for l in labels],
      "targets": [ip.resize_image(t, TARGET_RESIZE_HW) for t in targets]}
  return {
      "full": (PngSource([_png(i) for i in images], [_png(l) for l in labels]),
               PngSource([_png(t) for t in targets])),
      "resized": (PngSource([_png(i) for i in resized["images"]],
                            [_png(l) for l in resized["labels"]]),
                  PngSource([_png(t) for t in resized["targets"]])),
  }


def paper_config(workers: int, fda_beta: float, preprocess_on: str):
  config = config_defaults.get_config()
  config.data.worker_count = workers
  config.data.fda_beta = fda_beta
  config.data.preprocess_on = preprocess_on
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


def _iterators(config, source, target):
  return (ip.create_train_iterator(config, "source", seed=0, data_source=source,
                                   fda_data_source=target),
          ip.create_train_iterator(config, "target", seed=0, data_source=target))


def time_pairs(source, target, workers, steps, fda_beta, preprocess_on):
  """(pairs per second of wall time, host CPU ms per pair over all processes) of the host side."""
  config = paper_config(workers, fda_beta, preprocess_on)
  source_it, target_it = _iterators(config, source, target)
  for _ in range(3):  # start-up: worker processes, first decodes
    next(source_it), next(target_it)
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(steps):
    next(source_it), next(target_it)
  elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - start_cpu
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


def _decode_parts(source, target, fda_beta):
  """The decodes of one pair (all the device path leaves to the host)."""
  parts = {
      "source image PNG decode": lambda: _decode(source.images[0], 3),
      "source label PNG decode": lambda: _decode(source.labels[0], 1),
      "target image PNG decode": lambda: _decode(target.images[0], 3),
  }
  if fda_beta > 0:
    parts["FDA: partner decode"] = parts["target image PNG decode"]
  return parts


def _host_parts(source, target, fda_beta):
  """The host path's work on one pair of full-size PNGs: decodes, PIL resizes, mean, FDA."""
  src, tgt = source[0], target[0]
  crop = ip.resize_image(src["image"], SOURCE_RESIZE_HW)[:CROP_HW[0], :CROP_HW[1]]
  target_small = ip.resize_image(tgt["image"], TARGET_RESIZE_HW)
  decodes = _decode_parts(source, target, 0.0)
  parts = {
      "source image PNG decode": decodes["source image PNG decode"],
      "source label PNG decode": decodes["source label PNG decode"],
      "source image bicubic resize": lambda: ip.resize_image(src["image"], SOURCE_RESIZE_HW),
      "source label nearest resize": lambda: ip.resize_label(src["label"][..., 0],
                                                             SOURCE_RESIZE_HW),
      "source BGR - mean (512x1024)": lambda: ip.to_model_input(crop),
      "target image PNG decode": decodes["target image PNG decode"],
      "target image bicubic resize": lambda: ip.resize_image(tgt["image"], TARGET_RESIZE_HW),
      "target BGR - mean (512x1024)": lambda: ip.to_model_input(target_small),
  }
  if fda_beta > 0:
    parts["FDA: partner decode"] = decodes["target image PNG decode"]
    parts["FDA: partner resize"] = lambda: ip.resize_image(tgt["image"], CROP_HW)
    parts["FDA: amplitude swap (3 FFTs)"] = lambda: ip.fda.fda_source_to_target(
        crop, target_small, fda_beta)
  return parts


def breakdown(sources, fda_beta):
  """Single-thread CPU milliseconds per pair of each piece of host work, per path."""
  parts = {"host path, full-size PNGs": _host_parts(*sources["full"], fda_beta)}
  for storage in ("full", "resized"):
    parts[f"device path, {storage} PNGs (decode only)"] = _decode_parts(*sources[storage],
                                                                        fda_beta)
  return {path: {name: _cpu_ms(fn) for name, fn in items.items()}
          for path, items in parts.items()}


def device_part(sources, fda_beta, steps):
  """(ms per pair of the jitted device work on this backend, host-vs-device agreement)."""
  source, target = sources["full"]
  host = _iterators(paper_config(0, fda_beta, "host"), source, target)
  config = paper_config(0, fda_beta, "device")
  raw = _iterators(config, source, target)
  specs = {domain: ip.device_spec(config, domain) for domain in ("source", "target")}
  fn = jax.jit(lambda batches: dp.preprocess_streams(batches, specs))
  diffs, label_equal = [], []
  elapsed = 0.0
  for step in range(steps + 1):
    batches = {"source": next(raw[0]), "target": next(raw[1])}
    on_device = jax.device_put(batches)
    start = time.perf_counter()
    out = jax.block_until_ready(fn(on_device))
    if step:  # the first call compiles
      elapsed += time.perf_counter() - start
    expected = {"source": next(host[0]), "target": next(host[1])}
    for domain in ("source", "target"):
      diffs.append(np.abs(np.asarray(out[domain]["image"]) - expected[domain]["image"]))
    label_equal.append(np.mean(np.asarray(out["source"]["label"]) == expected["source"]["label"]))
  diff = np.concatenate([d.ravel() for d in diffs])
  agreement = dict(mean=float(diff.mean()), max=float(diff.max()),
                   differing=float(np.mean(diff > 1e-3)), labels=float(np.mean(label_equal)))
  return elapsed / max(steps, 1) * 1e3, agreement


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--workers", default="0,1,2", help="per-domain worker counts to time")
  parser.add_argument("--num_images", type=int, default=4)
  parser.add_argument("--fda_beta", type=float, default=0.0)
  parser.add_argument("--device_steps", type=int, default=3,
                      help="steps of the device part to time and compare (0: skip)")
  args = parser.parse_args()

  start = time.perf_counter()
  sources = make_sources(args.num_images)
  print(f"wrote {5 * args.num_images} PNGs in {time.perf_counter() - start:.1f}s; "
        f"CPUs: {len(os.sched_getaffinity(0))}; JAX backend: {jax.default_backend()}")
  print("\nPNG bytes per example (image + label for the source):")
  for storage, (source, target) in sources.items():
    source_mib = np.mean([len(i) + len(l) for i, l in zip(source.images, source.labels)]) / 2**20
    target_mib = np.mean([len(t) for t in target.images]) / 2**20
    print(f"  {storage:8s} source {source_mib:5.2f} MiB, target image {target_mib:5.2f} MiB")

  print("\nsingle-thread CPU ms per source+target pair:")
  for path, parts in breakdown(sources, args.fda_beta).items():
    total = sum(parts.values())
    print(f"  {path}: total {total:.1f} (cores for a 20 / 12 ms step: "
          f"{total / 20:.1f} / {total / 12:.1f})")
    for name, ms in parts.items():
      print(f"    {name:32s} {ms:7.1f}")

  print(f"\nhost side through the grain pipeline (batch 1 per domain, fda_beta={args.fda_beta}); "
        f"wall time depends on what else runs (load average now {os.getloadavg()[0]:.1f}), "
        "CPU time does not:")
  for path, storage in (("host", "full"), ("device", "full"), ("device", "resized")):
    for workers in [int(w) for w in args.workers.split(",")]:
      rate, cpu_ms = time_pairs(*sources[storage], workers, args.steps, args.fda_beta, path)
      print(f"  preprocess_on={path:6s} {storage:7s} PNGs, worker_count={workers}: "
            f"{rate:6.2f} pairs/s, {cpu_ms:6.1f} host CPU ms/pair "
            f"(cores for a 20 / 12 ms step: {cpu_ms / 20:.1f} / {cpu_ms / 12:.1f})")

  if args.device_steps > 0:
    ms, agreement = device_part(sources, args.fda_beta, args.device_steps)
    print(f"\ndevice part on {jax.devices()[0].device_kind} ({jax.default_backend()}), full-size "
          f"inputs: {ms:.1f} ms per pair ({1e3 / ms:.1f} pairs/s)")
    print(f"  vs the host path: mean |diff| {agreement['mean']:.4f}, max {agreement['max']:.3f} "
          f"grey levels, {100 * agreement['differing']:.3f} % of values differ; labels equal: "
          f"{100 * agreement['labels']:.3f} %")


if __name__ == "__main__":
  main()
