"""Rare class sampling (RCS, DAFormer, Hoyer et al. 2022) for the source stream.

Synthetic source sets are dominated by road, building, sky and vegetation; rare classes (rider,
train, motorcycle, bicycle) show up in few images and few pixels, so a uniformly shuffled epoch
rarely teaches them. RCS instead draws every source example in two steps: a class c with
probability p_c = softmax((1 - f_c) / T) over the classes present in the split, f_c being c's
share of all labelled pixels, then an image uniformly among those holding more than `min_pixels`
pixels of c. DAFormer's values: T = 0.01, min_pixels = 3000 (counted on GTA5's full-resolution
labels), and a crop is redrawn until it holds more than min_pixels * min_crop_ratio (0.5) pixels
of c, at most `CROP_TRIES` times.

The per-image class pixel counts (train ids of config.data.label_space, 255 excluded, at the
stored label resolution) are computed once per prepared split with a progress line and written
as JSON into the TFDS dataset version folder (`<data_dir>/<name>/<config>/<version>/`), or, when
that is not writable, into `$XDG_CACHE_HOME/seat_jax/rcs/` (default `~/.cache/seat_jax/rcs/`).
The file is keyed by the dataset, builder version, split, its example count and byte size and
the label space; a mismatch recomputes it.

Resuming exactly is the point of the sampler's design: the k-th example of process p is a pure
function of (seed, p, k), hashed with SplitMix64 (no generator state), so the stream is a grain
`MapDataset` like the shuffled one and grain's iterator state restores its position.

Config (config.data.source): rcs_temperature (0 = off, the shuffled epochs; DAFormer 0.01),
rcs_min_pixels (3000), rcs_min_crop_ratio (0.5; 0 = no crop redraws).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import sys
import uuid
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from seat_jax import errors
from seat_jax import labels

# The key under which a sampled example carries its drawn class into the transforms.
CLASS_KEY = "rcs_class"
# Crop draws per example at most when the crop must hold the drawn class (DAFormer: 10).
CROP_TRIES = 10
# DAFormer's published values (configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_...py).
DAFORMER_TEMPERATURE = 0.01
DEFAULT_MIN_PIXELS = 3000
DEFAULT_MIN_CROP_RATIO = 0.5

_FORMAT = 1  # bump when the stats file's content changes meaning
_STREAM_TAG = 0x5C5  # separates the sampler's key from other uses of the same seed


# ---------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class Settings:
  """RCS's config values: temperature (0 = off), min_pixels and min_crop_ratio."""
  temperature: float
  min_pixels: int
  min_crop_ratio: float

  @property
  def enabled(self) -> bool:
    return self.temperature > 0


def settings(config) -> Settings:
  """config.data.source.rcs_* with their defaults, checked."""
  source = config.data.source
  temperature = float(source.get("rcs_temperature", 0.0))
  min_pixels = int(source.get("rcs_min_pixels", DEFAULT_MIN_PIXELS))
  ratio = float(source.get("rcs_min_crop_ratio", DEFAULT_MIN_CROP_RATIO))
  if not temperature >= 0:  # also catches NaN
    raise errors.UsageError(
        f"config.data.source.rcs_temperature={temperature}: use 0 to turn rare class sampling "
        f"off or a positive temperature (DAFormer: {DAFORMER_TEMPERATURE}).")
  if min_pixels < 0 or not ratio >= 0:
    raise errors.UsageError(
        f"config.data.source.rcs_min_pixels={min_pixels} and rcs_min_crop_ratio={ratio} must "
        f"be >= 0 (DAFormer: {DEFAULT_MIN_PIXELS} and {DEFAULT_MIN_CROP_RATIO}).")
  return Settings(temperature, min_pixels, ratio)


# ---------------------------------------------------------------------------------------------
# Per-image class pixel counts.


def _decoded_label(value: Any) -> np.ndarray:
  """A label as uint8 [H, W]: decoded here when the data source left it as PNG bytes."""
  if isinstance(value, (bytes, np.bytes_)):
    with Image.open(io.BytesIO(bytes(value))) as png:
      value = np.asarray(png)
  value = np.asarray(value)
  return value[..., 0] if value.ndim == 3 else value


def _example_id(example: Any, index: int) -> str:
  value = example.get("id", index) if hasattr(example, "get") else index
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def class_pixel_counts(data_source, num_classes: int, lut: np.ndarray | None = None, *,
                       what: str = "source", threads: int | None = None,
                       progress: bool = True) -> tuple[np.ndarray, list[str]]:
  """(int64 [N, num_classes] pixel count of each class in each example's label, the N ids).

  `lut` maps the stored ids into the label space first; 255 and ids >= num_classes are not
  counted. Labels may be arrays or undecoded PNG bytes. Raises InvalidInputError when the source
  has no labels.
  """
  from seat_jax import progress as progress_lib  # pylint: disable=g-import-not-at-top
  total = len(data_source)
  if total == 0:
    raise errors.InvalidInputError(f"Rare class sampling: {what} has no examples.")

  def count(index: int) -> tuple[np.ndarray, str]:
    example = data_source[index]
    if "label" not in example:
      raise errors.InvalidInputError(
          f"Rare class sampling needs labelled source examples, but example {index} of {what} "
          "has no 'label'. Use a labelled source split or set "
          "config.data.source.rcs_temperature=0.")
    label = _decoded_label(example["label"])
    if lut is not None:
      label = lut[label]
    return np.bincount(label.ravel(), minlength=256)[:num_classes], _example_id(example, index)

  counts = np.zeros((total, num_classes), np.int64)
  ids = []
  meter = progress_lib.Progress(f"RCS class pixel counts of {what}", total, unit="images",
                                every_secs=10.0, enabled=progress)
  meter(0)
  threads = threads or min(8, len(os.sched_getaffinity(0)))
  # PNG decoding releases the GIL, so threads overlap it; map keeps the split's order.
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for index, (row, example_id) in enumerate(pool.map(count, range(total))):
      counts[index] = row
      ids.append(example_id)
      meter(index + 1)
  return counts, ids


def _cache_root() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "seat_jax", "rcs")


def stats_paths(builder, split: str, label_space: str) -> list[str]:
  """Where a split's counts are kept: the dataset version folder (a local one), the cache dir."""
  config = builder.builder_config_name or ""
  file_name = f"rcs_class_pixels.{split}.{label_space}.json"
  fallback = "_".join(p for p in (builder.name, config, str(builder.version), file_name) if p)
  paths = [os.path.join(_cache_root(), fallback)]
  if "://" not in str(builder.data_dir):  # a bucket's folder is read through TFDS, not open()
    paths.insert(0, os.path.join(str(builder.data_dir), file_name))
  return paths


def _read_stats(path: str, key: dict[str, Any]) -> np.ndarray | None:
  """The counts stored at `path` when its key is `key`; None when absent, stale or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return None
  if stored.get("key") != key:
    return None
  counts = np.asarray(stored.get("counts", []), np.int64)
  if counts.shape != (key["num_examples"], key["num_classes"]):
    return None
  return counts


def _write_stats(path: str, key: dict[str, Any], counts: np.ndarray, ids: list[str],
                 class_names: Sequence[str]) -> None:
  """Writes atomically (a temporary file renamed), so concurrent processes never see half."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temp = f"{path}.tmp-{uuid.uuid4().hex}"
  try:
    with open(temp, "w", encoding="utf-8") as f:
      json.dump({"key": key, "classes": list(class_names), "ids": ids,
                 "counts": counts.tolist()}, f)
    os.replace(temp, path)
  finally:
    if os.path.exists(temp):
      os.remove(temp)


def split_class_pixel_counts(split_config, data_dir: str, label_space: str,
                             lut: np.ndarray | None, *, progress: bool = True) -> np.ndarray:
  """The int64 [N, C] counts of a prepared split, read from its stats file or computed once.

  Computed on undecoded records (only the label PNGs are decoded) and stored beside the built
  dataset, else in the cache dir; see the module docstring for the key.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from seat_jax import datasets  # pylint: disable=g-import-not-at-top
  builder = datasets.get_builder(split_config.name, data_dir,
                                 split_config.get("builder_config", "") or None)
  split = split_config.split
  if split not in builder.info.splits:
    raise errors.UsageError(f"dataset {datasets.full_name(builder)!r} has no split {split!r}; "
                            f"it has {sorted(builder.info.splits)}.")
  space = labels.get_label_space(label_space)
  info = builder.info.splits[split]
  key = {"format": _FORMAT, "dataset": datasets.full_name(builder),
         "version": str(builder.version), "split": split, "num_examples": int(info.num_examples),
         "num_bytes": int(info.num_bytes), "label_space": label_space,
         "num_classes": space.num_classes}
  paths = stats_paths(builder, split, label_space)
  for path in paths:
    counts = _read_stats(path, key)
    if counts is not None:
      return counts
  skip = tfds.decode.SkipDecoding()
  records = builder.as_data_source(split, decoders={"image": skip, "label": skip})
  counts, ids = class_pixel_counts(records, space.num_classes, lut, progress=progress,
                                   what=f"{key['dataset']}:{split}")
  for path in paths:
    try:
      _write_stats(path, key, counts, ids, space.classes)
    except OSError:
      continue
    if progress:
      print(f"RCS class pixel counts written to {path}", flush=True)
    break
  return counts


# ---------------------------------------------------------------------------------------------
# Class probabilities and the sampler.


def class_probabilities(counts: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
  """(class ids present in `counts`, their probabilities softmax((1 - f_c) / T)).

  f_c is class c's share of all counted pixels of the split (DAFormer `get_rcs_class_probs`:
  every image counts, whatever min_pixels is). Classes without a single pixel get no probability.
  """
  if not temperature > 0:
    raise errors.UsageError(
        f"Rare class sampling needs a temperature > 0, got {temperature} "
        f"(config.data.source.rcs_temperature; DAFormer: {DAFORMER_TEMPERATURE}).")
  totals = np.asarray(counts, np.int64).sum(axis=0)
  classes = np.flatnonzero(totals > 0)
  if classes.size == 0:
    raise errors.InvalidInputError(
        "Rare class sampling: the source split has no labelled pixels (every label is 255 or "
        "outside the label space). Use a labelled source split or set "
        "config.data.source.rcs_temperature=0.")
  freq = totals[classes] / totals.sum()
  logits = (1.0 - freq) / float(temperature)
  probs = np.exp(logits - logits.max())
  return classes, probs / probs.sum()


@dataclasses.dataclass(frozen=True, eq=False)
class ClassSampling:
  """What the sampler draws from: classes, their probabilities and the images of each class.

  The images of `classes[i]` are `images[offsets[i]:offsets[i + 1]]` (indices into the stream's
  data source). Classes whose images all have <= min_pixels of them are left out and the other
  probabilities renormalised; `dropped` lists them.
  """
  classes: np.ndarray  # int64 [K]
  probs: np.ndarray  # float64 [K], sums to 1
  offsets: np.ndarray  # int64 [K + 1]
  images: np.ndarray  # int64 [offsets[-1]]
  dropped: tuple[int, ...] = ()

  def images_of(self, class_id: int) -> np.ndarray:
    i = int(np.flatnonzero(self.classes == class_id)[0])
    return self.images[self.offsets[i]:self.offsets[i + 1]]

  def draw(self, key: int, positions) -> tuple[np.ndarray, np.ndarray]:
    """(image index, class id) of each position of the stream keyed by `key` (vectorised)."""
    positions = np.atleast_1d(np.asarray(positions, np.uint64))
    cdf = np.cumsum(self.probs)
    pick = np.searchsorted(cdf, uniforms(key, positions, 0) * cdf[-1], side="right")
    pick = np.minimum(pick, len(self.classes) - 1)
    sizes = self.offsets[pick + 1] - self.offsets[pick]
    within = np.minimum((uniforms(key, positions, 1) * sizes).astype(np.int64), sizes - 1)
    return self.images[self.offsets[pick] + within], self.classes[pick]

  def describe(self, class_names: Sequence[str]) -> str:
    parts = [f"{class_names[c]} {p:.3f} ({self.offsets[i + 1] - self.offsets[i]} images)"
             for i, (c, p) in enumerate(zip(self.classes, self.probs))]
    text = "RCS class probabilities: " + ", ".join(parts)
    if self.dropped:
      text += ("; not sampled (no image has more than rcs_min_pixels of them): "
               + ", ".join(class_names[c] for c in self.dropped))
    return text


def class_sampling(counts: np.ndarray, temperature: float, min_pixels: int) -> ClassSampling:
  """The sampling distribution of a split's [N, C] counts (DAFormer's rule, see the module)."""
  counts = np.asarray(counts, np.int64)
  classes, probs = class_probabilities(counts, temperature)
  members = [np.flatnonzero(counts[:, c] > min_pixels) for c in classes]
  keep = np.array([m.size > 0 for m in members])
  if not keep.any():
    raise errors.InvalidInputError(
        f"Rare class sampling: no source image has more than rcs_min_pixels={min_pixels} pixels "
        "of any class. Lower config.data.source.rcs_min_pixels (it counts pixels at the stored "
        "label resolution).")
  kept = [m for m, k in zip(members, keep) if k]
  offsets = np.concatenate([[0], np.cumsum([m.size for m in kept])]).astype(np.int64)
  return ClassSampling(
      classes=classes[keep], probs=probs[keep] / probs[keep].sum(), offsets=offsets,
      images=np.concatenate(kept).astype(np.int64),
      dropped=tuple(int(c) for c in classes[~keep]))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
  """SplitMix64's output mix (Steele, Lea, Flood 2014): a bijective, well-spread uint64 hash."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def uniforms(key: int, positions, stream: int) -> np.ndarray:
  """float64 in [0, 1), one per position: a pure function of (key, position, stream in {0, 1})."""
  positions = np.atleast_1d(np.asarray(positions, np.uint64))
  with np.errstate(over="ignore"):
    counters = positions * np.uint64(2) + np.uint64(stream) + np.uint64(1)
    bits = _splitmix64(np.uint64(key) + counters * _GOLDEN)
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def stream_key(seed: int, process_index: int) -> int:
  """The sampler's uint64 key of one process's stream (a different stream per process)."""
  entropy = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, int(process_index),
             _STREAM_TAG]
  return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class _SampledExample(grain.transforms.Map):
  """Stream position k -> the example RCS draws there, with its class under CLASS_KEY."""
  source: Any
  sampling: ClassSampling
  key: int

  def map(self, position):
    index, class_id = self.sampling.draw(self.key, position)
    example = dict(self.source[int(index[0])])
    example[CLASS_KEY] = int(class_id[0])
    return example


def sampled_dataset(data_source, sampling: ClassSampling, *, seed: int,
                    process_index: int) -> grain.MapDataset:
  """The infinite MapDataset of one process's RCS draws from the whole of `data_source`."""
  return grain.MapDataset.range(0, sys.maxsize).map(
      _SampledExample(data_source, sampling, stream_key(seed, process_index)))


# ---------------------------------------------------------------------------------------------
# Crop redraws.


@dataclasses.dataclass(frozen=True, eq=False)
class CropCheck:
  """Whether a crop holds enough of the drawn class (DAFormer's min_crop_ratio rule).

  Pixels are counted on the label at resize_hw (nearest) in the model's label space, as the
  crop sees it.
  """
  min_pixels: float  # a crop must hold more than this many pixels of the class
  label_lut: np.ndarray | None = None

  def label_at(self, label: np.ndarray, resize_hw: Sequence[int]) -> np.ndarray:
    """The stored uint8 [H, W] label at `resize_hw` in the label space."""
    height, width = resize_hw
    if label.shape[:2] != (height, width):
      label = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))
    return label if self.label_lut is None else self.label_lut[label]

  def holds(self, label: np.ndarray, class_id: int, top: int, left: int,
            crop_hw: Sequence[int]) -> bool:
    window = label[top:top + crop_hw[0], left:left + crop_hw[1]]
    return int(np.count_nonzero(window == class_id)) > self.min_pixels


# ---------------------------------------------------------------------------------------------
# The stream's sampling, from the config.


def stream_sampling(config, data_source, *, from_tfds: bool, subset: Sequence[int] | None,
                    lut: np.ndarray | None, verbose: bool = True) -> ClassSampling:
  """The source stream's ClassSampling for config.data.source.rcs_* (RCS must be on).

  Args:
    config: the full config.
    data_source: the stream's examples (an id-file subset already applied).
    from_tfds: the stream reads config.data.source's prepared split, whose counts are cached;
      else (injected sources) they are computed here every time.
    subset: the split indices the stream reads (config.data.source.ids_file), None = all.
    lut: stored ids -> config.data.label_space (None: the same).
    verbose: print the progress and the probabilities.
  """
  rcs = settings(config)
  space = labels.get_label_space(config.data.label_space)
  if from_tfds:
    counts = split_class_pixel_counts(config.data.source, config.data.data_dir, space.name, lut,
                                      progress=verbose)
    if subset is not None:
      counts = counts[np.asarray(subset, np.int64)]
  else:
    counts, _ = class_pixel_counts(data_source, space.num_classes, lut, progress=verbose)
  sampling = class_sampling(counts, rcs.temperature, rcs.min_pixels)
  if verbose:
    print(sampling.describe(space.classes), flush=True)
  return sampling
