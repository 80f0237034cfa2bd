"""Input pipelines: prepared TFDS splits read through grain (no tf.data), as device batches.

Training (`create_train_iterator`): one infinite stream per domain, each with its own seed, so
the source and target streams never share shuffles or crops. A stream is

  data source -> this host's slice -> shuffle -> repeat (reshuffled every epoch)
  -> random_map(decode, draw crop/flip/FDA partner/blur[, resize, crop, flip, blur, FDA, BGR
     minus mean])
  -> batch -> to_iter_dataset -> mp_prefetch (when the worker count is > 0).

With rare class sampling (config.data.source.rcs_temperature > 0, seat_jax/rcs.py) the source
stream's slice, shuffle and repeat become DAFormer's class-then-image draws from the whole split.

Where the pixel work runs is config.data.preprocess_on: 'device' (default) sends uint8 images at
their stored size plus the drawn parameters, and `device_preprocessing` does the rest on the
accelerator (`TrainingBatches` applies it); 'host' does it all here with PIL (`TrainTransform`),
as the references do. Both draw the same random numbers in the same order, so they give the same
batches up to rare one-level rounding differences (tests/test_device_preprocessing.py).

All randomness comes from grain's per-index generators, so a stream is a pure function of
(seed, position): the same seed gives the same batches whatever the worker count, and an
iterator state (`get_state()`, a small JSON-serialisable dict) restores the exact position.

Either domain's stream can be restricted to the examples listed in `data.<domain>.ids_file`
(one example id per line) and take its labels from `data.<domain>.pseudo_label_dir`
(`<id>.png` train ids) instead of the stored ones: SEAT's stage 2 labels the target this way,
and IntraDA's stage 2 trains on an easy list of target images with pseudo-labels as its
"source" and the hard list as its "target" (seat_jax/methods/intrada.py).

Evaluation (`create_eval_iterator`): a finite stream of single examples in the data source's
order, the image at model size, the label at full resolution.

Preprocessing follows the references (AdaptSegNet's and ADVENT's datasets): PIL bicubic for
images (it antialiases when shrinking), nearest for labels, RGB -> BGR, subtract the Caffe mean,
no std division, because the pretrained DeepLab weights expect exactly that.

`TrainingBatches` merges the two domain streams into the global batch of the train step: it
owns the batch key names, the sharding over the mesh's `data` axis and the streams' positions
that checkpoints store.

Every function that opens a dataset takes an optional `data_source` (anything with `__len__`
and `__getitem__` returning {'image': uint8 [H, W, 3], 'label': uint8 [H, W, 1], 'id': str or
bytes}) so tests and benchmarks can inject tiny in-memory sources.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np
from PIL import Image

from seat_jax import batch as batch_keys
from seat_jax import datasets
from seat_jax import device_preprocessing as dp
from seat_jax import errors
from seat_jax import fda
from seat_jax import labels
from seat_jax import rcs
from seat_jax.models.seat_norm import DOMAINS

# Caffe ImageNet mean in B, G, R order (AdaptSegNet IMG_MEAN).
CAFFE_MEAN_BGR = dp.CAFFE_MEAN_BGR

# config.data.preprocess_on: where resize, crop, flip, FDA and the mean subtraction run.
PREPROCESS_ON = ("device", "host")
# config.data.worker_count: this value picks the count with `auto_worker_count`.
AUTO_WORKERS = -1
# mmseg's RandomCrop with cat_max_ratio < 1 checks a crop and redraws it at most this often; the
# last redraw stands unchecked (lhoyer/DAFormer mmseg/datasets/pipelines/transforms.py).
CAT_MAX_TRIES = 10

# The keys of the global batch the train step reads.
SOURCE_IMAGE, SOURCE_LABEL = batch_keys.SOURCE_IMAGE, batch_keys.SOURCE_LABEL
TARGET_IMAGE, TARGET_LABEL = batch_keys.TARGET_IMAGE, batch_keys.TARGET_LABEL


# ---------------------------------------------------------------------------------------------
# Per-example preprocessing (pure numpy/PIL; reused by evaluate.py and pseudo_labels.py).


def _check_hw(hw: Sequence[int], what: str) -> tuple[int, int]:
  hw = tuple(int(v) for v in hw)
  if len(hw) != 2 or min(hw) <= 0:
    raise ValueError(f"{what} must be (height, width) with positive entries, got {hw}.")
  return hw


def resize_image(rgb: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """PIL bicubic resize of a uint8 [H, W, 3] image to `hw` = (height, width)."""
  height, width = hw
  if rgb.shape[:2] == (height, width):
    return rgb
  return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def resize_label(label: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """PIL nearest resize of a uint8 [H, W] label map (never mixes class ids)."""
  height, width = hw
  if label.shape[:2] == (height, width):
    return label
  return np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))


def to_model_input(rgb: np.ndarray) -> np.ndarray:
  """RGB on the 0-255 scale -> float32 BGR minus the Caffe mean (no std division)."""
  return np.subtract(rgb[..., ::-1], CAFFE_MEAN_BGR, dtype=np.float32)  # one pass, no temp


def preprocess_image(rgb_uint8: np.ndarray, resize_hw: Sequence[int]) -> np.ndarray:
  """uint8 RGB [H, W, 3] -> float32 BGR-minus-mean [h, w, 3] at `resize_hw` (bicubic)."""
  return to_model_input(resize_image(rgb_uint8, _check_hw(resize_hw, "resize_hw")))


def _as_str(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _label_2d(label: np.ndarray) -> np.ndarray:
  return label[..., 0] if label.ndim == 3 else label


def _same_aspect(a_hw: Sequence[int], b_hw: Sequence[int]) -> bool:
  """Aspect ratios equal within 1% (the gta5 'translated' builder's rule for rescaled images)."""
  return abs(a_hw[0] * b_hw[1] - b_hw[0] * a_hw[1]) <= 0.01 * a_hw[1] * b_hw[0]


def _read_example(example: Mapping[str, Any], dataset: str, *, with_label: bool,
                  allow_rescaled: bool = False):
  """(image uint8 [H, W, 3], label uint8 [H, W] or None, id) with a checked image/label size.

  `allow_rescaled` accepts an image at another resolution than its label but with the same
  aspect ratio (CycleGAN-translated GTA5): training resizes both to resize_hw anyway.
  """
  image = np.asarray(example["image"])
  example_id = _as_str(example["id"])
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(
        f"Example '{example_id}' of {dataset}: expected a uint8 [H, W, 3] image, got "
        f"{image.dtype} {image.shape}.")
  if not with_label:
    return image, None, example_id
  label = _label_2d(np.asarray(example["label"]))
  if label.shape != image.shape[:2] and not (allow_rescaled
                                             and _same_aspect(label.shape, image.shape)):
    raise ValueError(
        f"Example '{example_id}' of {dataset}: image is {image.shape[0]}x{image.shape[1]} "
        f"but its label is {label.shape[0]}x{label.shape[1]} (height x width); they must match"
        f"{' or at least have the same aspect ratio' if allow_rescaled else ''}. "
        "Rebuild the dataset or fix the source files.")
  return image, label, example_id


def label_lut(label_space: str, dataset_name: str) -> np.ndarray | None:
  """The LUT that maps `dataset_name`'s stored ids into `label_space` (None: already there)."""
  stored = datasets.get(dataset_name).stored_label_space
  try:
    return labels.conversion_lut(stored, label_space)
  except ValueError:
    raise errors.UsageError(
        f"config.data.label_space={label_space!r} cannot be read from dataset {dataset_name!r}, "
        f"which stores {stored} labels; expected one of {labels.LABEL_SPACES}.") from None


def domain_pseudo_label_dir(config, domain: str) -> str:
  """config.data.<domain>.pseudo_label_dir ('' when unset: the stored labels, if any)."""
  return config.data[domain].get("pseudo_label_dir", "") or ""


def read_pseudo_label(pseudo_label_dir: str, example_id: str,
                      domain: str = "target") -> np.ndarray:
  """The pseudo-label `<pseudo_label_dir>/<example_id>.png` as uint8 [H, W] train ids."""
  path = os.path.join(pseudo_label_dir, example_id + ".png")
  if not os.path.exists(path):
    raise errors.MissingInputError(
        f"Missing pseudo-label for {domain} example '{example_id}': {path} does not exist "
        f"(config.data.{domain}.pseudo_label_dir={pseudo_label_dir!r}). Generate the "
        "pseudo-labels for every example the stream reads (mode=pseudo_labels, or "
        "mode=entropy_rank for IntraDA's easy split), point pseudo_label_dir at the directory "
        "that holds them, or restrict the stream to the labelled ids (config.data."
        f"{domain}.ids_file).")
  with Image.open(path) as png:
    if png.mode not in ("L", "P"):
      raise errors.InvalidInputError(
          f"Pseudo-label {path} has PIL mode {png.mode!r}; expected a single-channel PNG "
          "('L' or 'P') of train ids with 255 = ignore.")
    return np.asarray(png, np.uint8)


# ---------------------------------------------------------------------------------------------
# Crop checks.


@dataclasses.dataclass(frozen=True, eq=False)
class CategoryRatioCheck:
  """mmseg RandomCrop's `cat_max_ratio` (DAFormer's source crops: 0.75): a crop is kept when it
  holds at least two classes and the largest covers less than `max_ratio` of its labelled
  pixels (255 not counted); else it is redrawn, at most CAT_MAX_TRIES times.

  Pixels are counted on the label at resize_hw (nearest) in the model's label space, as the crop
  sees it; the same map serves rare class sampling's check (`rcs.CropCheck`).
  """
  max_ratio: float
  label_lut: np.ndarray | None = None

  def label_at(self, label: np.ndarray, resize_hw: Sequence[int]) -> np.ndarray:
    """The stored uint8 [H, W] label at `resize_hw` in the label space."""
    return rcs.CropCheck(0, self.label_lut).label_at(label, resize_hw)

  def accepts(self, window: np.ndarray) -> bool:
    counts = np.bincount(window.ravel(), minlength=256)[:labels.IGNORE_ID]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < self.max_ratio


# ---------------------------------------------------------------------------------------------
# Grain transforms (picklable, so they run in mp_prefetch workers too).


@dataclasses.dataclass(frozen=True, eq=False)
class TrainTransform(grain.transforms.RandomMap):
  """One training example -> {'image': float32 [h, w, 3], 'label': int32 [h, w]} (label optional).

  Order: resize (bicubic / nearest) -> random crop -> random flip -> random Gaussian blur (image
  only) -> FDA -> BGR minus mean. Crop and flip use one draw for image and label, so they stay
  aligned.
  """

  dataset: str  # for error messages: "<name>/<builder_config>:<split>"
  resize_hw: tuple[int, int]
  crop_hw: tuple[int, int] | None = None
  flip: bool = False
  with_label: bool = True
  label_lut: np.ndarray | None = None
  pseudo_label_dir: str = ""
  fda_beta: float = 0.0
  fda_images: Any = None  # a data source of target-train images for FDA
  domain: str = "target"  # whose config key error messages name
  rcs_crop: rcs.CropCheck | None = None  # rare class sampling: redraw crops missing the class
  blur_probability: float = 0.0  # Gaussian blur with sigma U(0, dp.BLUR_MAX_SIGMA) this often
  cat_max: CategoryRatioCheck | None = None  # redraw crops one class dominates (mmseg)

  def random_map(self, example, rng: np.random.Generator):
    stored_label = self.with_label and not self.pseudo_label_dir
    image, label, example_id = _read_example(example, self.dataset, with_label=stored_label,
                                             allow_rescaled=True)
    top, left, flipped, fda_index, blur_sigma = self.draw(rng, *self._crop_checks(example, label))
    stored_hw = image.shape[:2]
    image = resize_image(image, self.resize_hw)
    if self.pseudo_label_dir:
      label = self._pseudo_label(example_id, stored_hw)
    elif label is not None:
      label = resize_label(label, self.resize_hw)
    if self.crop_hw:
      window = (slice(top, top + self.crop_hw[0]), slice(left, left + self.crop_hw[1]))
      image, label = image[window], (None if label is None else label[window])
    if flipped:
      image = image[:, ::-1]
      label = None if label is None else label[:, ::-1]
    if blur_sigma > 0:
      image = dp.gaussian_blur(image[None], np.array([blur_sigma]))[0].astype(np.uint8)
    pixels = image
    if fda_index is not None:
      partner = resize_image(np.asarray(self.fda_images[fda_index]["image"]), image.shape[:2])
      pixels = fda.fda_source_to_target(image, partner, self.fda_beta)
    out = {"image": to_model_input(pixels)}
    if label is not None:
      if self.label_lut is not None:
        label = self.label_lut[label]
      out["label"] = label.astype(np.int32)
    return out

  def draw(self, rng: np.random.Generator, crop_label: np.ndarray | None = None,
           rcs_class: int | None = None) -> tuple[int, int, bool, int | None, float]:
    """(crop top, crop left, flip, FDA partner index or None, blur sigma): every random choice
    of an example.

    Both preprocessing paths draw through here, in this order, so they see the same numbers.
    `crop_label` is the label at resize_hw in the label space when a crop check needs it. With
    `cat_max` each crop is mmseg's RandomCrop: redrawn while the check rejects it, at most
    CAT_MAX_TRIES times. With rare class sampling (`rcs_class`: the class drawn for this example)
    that crop is redrawn, up to rcs.CROP_TRIES times, until `rcs_crop` finds enough of the class
    in it; the last one stands if none does (DAFormer reruns the pipeline, RandomCrop included).
    """
    top = left = 0
    if self.crop_hw:
      (height, width), (crop_h, crop_w) = self.resize_hw, self.crop_hw
      if crop_h > height or crop_w > width:
        raise ValueError(
            f"{self.dataset}: crop_hw {self.crop_hw} is larger than resize_hw {self.resize_hw}.")
      for _ in range(rcs.CROP_TRIES if rcs_class is not None else 1):
        top, left = self._random_crop(rng, crop_label)
        if rcs_class is not None and self.rcs_crop.holds(crop_label, rcs_class, top, left,
                                                         self.crop_hw):
          break
    flipped = bool(self.flip and rng.random() < 0.5)
    fda_index = None
    if self.fda_beta > 0:
      fda_index = int(rng.integers(0, len(self.fda_images)))
    blur_sigma = 0.0
    if self.blur_probability > 0:  # Toldo et al.: random() < 0.5, then radius random()
      blurred = rng.random() < self.blur_probability
      blur_sigma = float(rng.random() * dp.BLUR_MAX_SIGMA) if blurred else 0.0
    return top, left, flipped, fda_index, blur_sigma

  def _random_crop(self, rng: np.random.Generator, crop_label: np.ndarray | None
                   ) -> tuple[int, int]:
    """(top, left) of one crop: a uniform draw, redrawn by `cat_max` as mmseg's RandomCrop."""
    (height, width), (crop_h, crop_w) = self.resize_hw, self.crop_hw
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    if self.cat_max is not None and crop_label is not None:
      for _ in range(CAT_MAX_TRIES):
        if self.cat_max.accepts(crop_label[top:top + crop_h, left:left + crop_w]):
          break
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
    return top, left

  def _crop_checks(self, example, label) -> tuple[np.ndarray | None, int | None]:
    """(label at resize_hw in the label space, drawn RCS class) for `draw`'s crop checks; None
    for what no check needs."""
    if not self.crop_hw or label is None:
      return None, None
    rcs_class = None
    if self.rcs_crop is not None and rcs.CLASS_KEY in example:
      rcs_class = int(example[rcs.CLASS_KEY])
    if self.cat_max is not None:
      return self.cat_max.label_at(label, self.resize_hw), rcs_class
    if rcs_class is not None:
      return self.rcs_crop.label_at(label, self.resize_hw), rcs_class
    return None, None

  def _pseudo_label(self, example_id: str, stored_hw) -> np.ndarray:
    label = read_pseudo_label(self.pseudo_label_dir, example_id, self.domain)
    if label.shape == tuple(self.resize_hw):
      return label
    if label.shape == tuple(stored_hw):
      return resize_label(label, self.resize_hw)
    raise ValueError(
        f"Pseudo-label of '{example_id}' in {self.pseudo_label_dir} is {label.shape[0]}x"
        f"{label.shape[1]}; expected the {self.domain} resize_hw {tuple(self.resize_hw)} or the "
        f"stored image size {tuple(stored_hw)}. Regenerate the pseudo-labels with this config.")


def _at_size(array: np.ndarray, hw: tuple[int, int] | None, resize) -> np.ndarray:
  """`array` at `hw` (its stream's stored size): resized on the host only if it is not."""
  return array if hw is None or array.shape[:2] == tuple(hw) else resize(array, hw)


@dataclasses.dataclass(frozen=True, eq=False)
class RawTrainTransform(TrainTransform):
  """One training example -> what `device_preprocessing.preprocess` needs (the device path).

  {'image': uint8 [H, W, 3], 'label': uint8 [h, w] (optional), 'crop': int32 [2], 'flip':
  bool, 'fda_image': uint8 [Ht, Wt, 3] (with FDA)}: decoded pixels at the stream's stored sizes
  and the example's random draws (`draw`, as the host path). A batch must have one shape, and
  the device compiles once per shape, so an image (label, FDA partner) at another size than
  `image_hw` (`label_hw`, `fda_hw`), the sizes of the split's first example, is resized to it
  here with PIL. The prepared datasets store one size per split, so that never happens there.
  Pseudo-labels arrive at resize_hw. The label LUT is applied on the device.
  """

  image_hw: tuple[int, int] | None = None
  label_hw: tuple[int, int] | None = None
  fda_hw: tuple[int, int] | None = None

  def random_map(self, example, rng: np.random.Generator):
    stored_label = self.with_label and not self.pseudo_label_dir
    image, label, example_id = _read_example(example, self.dataset, with_label=stored_label,
                                             allow_rescaled=True)
    top, left, flipped, fda_index, blur_sigma = self.draw(rng, *self._crop_checks(example, label))
    out = {dp.IMAGE: _at_size(image, self.image_hw, resize_image),
           dp.CROP: np.array([top, left], np.int32), dp.FLIP: np.bool_(flipped)}
    if self.blur_probability > 0:
      out[dp.BLUR] = np.float32(blur_sigma)
    if self.pseudo_label_dir:
      out[dp.LABEL] = self._pseudo_label(example_id, image.shape[:2])
    elif label is not None:
      out[dp.LABEL] = _at_size(label, self.label_hw, resize_label)
    if fda_index is not None:
      partner = np.asarray(self.fda_images[fda_index]["image"])
      out[dp.FDA_IMAGE] = _at_size(partner, self.fda_hw, resize_image)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class EvalTransform(grain.transforms.Map):
  """One example -> model-size image, full-resolution label (or at `label_hw`, PIL nearest),
  raw image and id (batch axis 1)."""

  dataset: str
  resize_hw: tuple[int, int]
  label_lut: np.ndarray | None = None
  label_hw: tuple[int, int] | None = None

  def map(self, example):
    image, label, example_id = _read_example(example, self.dataset, with_label=True)
    if self.label_hw:
      label = resize_label(label, self.label_hw)
    if self.label_lut is not None:
      label = self.label_lut[label]
    return {
        "image": preprocess_image(image, self.resize_hw)[None],
        "label": np.asarray(label, np.uint8)[None],
        "raw_image": image[None],
        "id": example_id,
    }


def _dataset_desc(split_config) -> str:
  config_part = f"/{split_config.builder_config}" if split_config.get("builder_config") else ""
  return f"{split_config.name}{config_part}:{split_config.split}"


# ---------------------------------------------------------------------------------------------
# Training streams.


def domain_seeds(seed: int, domain: str) -> tuple[int, int]:
  """(shuffle seed, augmentation seed) of one domain; stable across runs and Python versions."""
  entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(domain.encode())]
  shuffle_seed, aug_seed = np.random.SeedSequence(entropy).generate_state(2)
  return int(shuffle_seed), int(aug_seed)


def _ensure_absl_flags_parsed() -> None:
  # Grain's worker processes read absl flags; outside `absl.app.run` nothing has parsed them
  # (reading an unparsed flag raises). Marking them parsed keeps every flag at its default.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _to_iterator(ds: grain.MapDataset, worker_count: int, buffer_size: int, read_threads: int):
  # More threads than buffered elements cannot run at once (grain warns about it).
  read_threads = max(1, min(read_threads, buffer_size))
  iter_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=buffer_size))
  if worker_count > 0:
    _ensure_absl_flags_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=max(1, buffer_size)))
  return iter(iter_ds)


def make_train_dataset(
    data_source,
    transform: TrainTransform,
    *,
    batch_size: int,
    seed: int,
    domain: str,
    process_index: int = 0,
    process_count: int = 1,
    rcs_sampling: rcs.ClassSampling | None = None,
) -> grain.MapDataset:
  """The batched, infinite MapDataset of one domain (this host's slice of `data_source`).

  With `rcs_sampling` every host draws from the whole of `data_source` instead: rare class
  sampling, keyed by the shuffle seed and the process index.
  """
  if len(data_source) < process_count:
    raise ValueError(
        f"{transform.dataset} has {len(data_source)} examples, fewer than the "
        f"{process_count} processes that each need a slice.")
  shuffle_seed, aug_seed = domain_seeds(seed, domain)
  if rcs_sampling is not None:
    ds = rcs.sampled_dataset(data_source, rcs_sampling, seed=shuffle_seed,
                             process_index=process_index)
  else:
    ds = grain.MapDataset.source(data_source)[process_index::process_count]
    ds = ds.shuffle(seed=shuffle_seed).repeat()
  ds = ds.random_map(transform, seed=aug_seed)
  return ds.batch(batch_size, drop_remainder=True)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"config.train.batch_size={global_batch_size} is not divisible by the "
        f"{process_count} processes; use a multiple of {process_count}.")
  return global_batch_size // process_count


def preprocess_on(config) -> str:
  """config.data.preprocess_on, checked: 'device' or 'host'."""
  where = config.data.get("preprocess_on", "device")
  if where not in PREPROCESS_ON:
    raise errors.UsageError(
        f"config.data.preprocess_on={where!r} is not one of {PREPROCESS_ON}: 'device' resizes, "
        "crops, flips and normalises on the accelerator (fast), 'host' does it with PIL on the "
        "CPU (the references' exact code path).")
  return where


# Host CPU per training example of the costlier stream on the device path, from full-size PNGs
# (source image + label decode, draws, batching: ~35 ms measured, benchmarks/RESULTS.md), and
# the shortest step time per example on one accelerator the workers must keep up with (the
# issue's H100/H200 estimate at the paper's sizes).
HOST_MS_PER_EXAMPLE = 40.0
FASTEST_STEP_MS = 12.0


def auto_worker_count(cpu_count: int, backend: str, local_devices: int) -> int:
  """Grain worker processes per domain for config.data.worker_count = -1 (the default).

  On the CPU backend the train step itself uses every core, so workers would only compete with
  it: 0 (grain's reader threads still prefetch). On accelerators, which each take an example
  per FASTEST_STEP_MS at best, enough workers to decode that many (local_devices * 40 / 12,
  rounded up), within the host's cores less 2 (the training process and grain's readers)
  shared by the two domains; at least 1, so input always overlaps with the step.
  """
  if backend == "cpu":
    return 0
  needed = -(-local_devices * HOST_MS_PER_EXAMPLE // FASTEST_STEP_MS)
  return int(max(1, min(needed, (cpu_count - 2) // 2)))


def worker_count(config) -> int:
  """config.data.worker_count, or the automatic choice when it is -1."""
  count = int(config.data.get("worker_count", AUTO_WORKERS))
  if count == AUTO_WORKERS:
    return auto_worker_count(len(os.sched_getaffinity(0)), jax.default_backend(),
                             jax.local_device_count())
  if count < 0:
    raise errors.UsageError(
        f"config.data.worker_count={count}: use -1 (automatic), 0 (no worker processes) or a "
        "number of grain worker processes per domain.")
  return count


def _stored_hw(data_source, key: str, what: str) -> tuple[int, int]:
  """The (height, width) of `key` in the first example: the stream's stored size."""
  if len(data_source) == 0:
    raise errors.InvalidInputError(f"{what} has no examples; rebuild it or pick another split.")
  return tuple(int(v) for v in np.shape(data_source[0][key])[:2])


@dataclasses.dataclass(frozen=True, eq=False)
class SubsetSource:
  """The examples of `source` at `indices`, in that order: a split restricted to an id list.

  A plain random-access source (picklable when `source` is), so grain shuffles, slices per host
  and checkpoints positions over the subset exactly as over a whole split.
  """

  source: Any
  indices: tuple[int, ...]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[self.indices[index]]


def read_ids_file(path: str, key: str) -> list[str]:
  """The example ids listed in `path`, one per line (blank lines skipped), checked."""
  if not os.path.isfile(path):
    raise errors.MissingInputError(
        f"{key}={path!r} is not a file. Point it at a list of example ids, one per line (e.g. "
        "easy_split.txt or hard_split.txt of mode=entropy_rank), or clear it to read the whole "
        "split.")
  with open(path, encoding="utf-8") as f:
    ids = [line.strip() for line in f if line.strip()]
  if not ids:
    raise errors.InvalidInputError(f"{key}={path!r} lists no example ids; expected one per line.")
  repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
  if repeated:
    raise errors.InvalidInputError(
        f"{key}={path!r} lists {len(repeated)} id(s) more than once (e.g. {repeated[:3]}); each "
        "example may appear once. Regenerate the list.")
  return ids


def _split_example_ids(split_config, data_dir: str, data_source, opened: bool) -> list[str]:
  """Every example id of the split, in the data source's order.

  An opened TFDS split is read again without decoding its images and labels (a full-size
  Cityscapes PNG costs ~40 ms to decode; the ids of 2,975 records take a second or two).
  """
  if opened:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = datasets.get_builder(split_config.name, data_dir,
                                   split_config.get("builder_config", "") or None)
    skip = tfds.decode.SkipDecoding()
    data_source = builder.as_data_source(split_config.split,
                                         decoders={"image": skip, "label": skip})
  return [_as_str(data_source[i]["id"]) for i in range(len(data_source))]


def _restrict_to_ids(split_config, domain: str, data_dir: str, data_source, opened: bool):
  """`data_source` restricted to config.data.<domain>.ids_file, in split order."""
  key = f"config.data.{domain}.ids_file"
  wanted = read_ids_file(split_config.ids_file, key)
  index_of = {example_id: index for index, example_id in enumerate(
      _split_example_ids(split_config, data_dir, data_source, opened))}
  missing = [i for i in wanted if i not in index_of]
  if missing:
    raise errors.MissingInputError(
        f"{key}={split_config.ids_file!r} lists {len(missing)} id(s) that "
        f"{_dataset_desc(split_config)} does not hold (e.g. {missing[:3]}). The list must come "
        "from this split (mode=entropy_rank ranks config.data.target's split).")
  return SubsetSource(data_source, tuple(sorted(index_of[i] for i in wanted)))


def _train_split(config, domain: str, data_source, fda_data_source):
  """What a domain's stream reads: (split config, data source, FDA source, pseudo_label_dir)."""
  if domain not in DOMAINS:
    raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}.")
  data = config.data
  split_config = data[domain]
  labels_from = domain_pseudo_label_dir(config, domain)
  if labels_from and not os.path.isdir(labels_from):
    raise errors.MissingInputError(
        f"config.data.{domain}.pseudo_label_dir={labels_from!r} is not a directory; generate "
        "pseudo-labels first (mode=pseudo_labels, or mode=entropy_rank for IntraDA) or clear the "
        "field.")
  with_label = domain == "source" or bool(labels_from)
  opened = data_source is None
  if opened:
    data_source = datasets.open_data_source(split_config, data.data_dir,
                                            decode_label=with_label and not labels_from)
  if split_config.get("ids_file", ""):
    data_source = _restrict_to_ids(split_config, domain, data.data_dir, data_source, opened)
  fda_beta = float(data.get("fda_beta", 0.0)) if domain == "source" else 0.0
  fda.low_freq_half_width(1, 1, fda_beta)  # validates beta early
  if fda_beta > 0 and fda_data_source is None:
    fda_data_source = datasets.open_data_source(data.target, data.data_dir, decode_label=False)
  return split_config, data_source, (fda_data_source if fda_beta > 0 else None), labels_from


def _sizes(split_config, domain: str) -> tuple[tuple[int, int], tuple[int, int] | None]:
  resize_hw = _check_hw(split_config.resize_hw, f"config.data.{domain}.resize_hw")
  crop_hw = None
  if split_config.get("crop_hw"):
    crop_hw = _check_hw(split_config.crop_hw, f"config.data.{domain}.crop_hw")
    if crop_hw[0] > resize_hw[0] or crop_hw[1] > resize_hw[1]:
      raise ValueError(
          f"config.data.{domain}.crop_hw={crop_hw} must fit inside resize_hw={resize_hw}.")
  return resize_hw, crop_hw


def device_spec(config, domain: str) -> dp.StreamSpec:
  """What the device does to `domain`'s raw batches (config.data.preprocess_on='device')."""
  split_config = config.data[domain]
  resize_hw, crop_hw = _sizes(split_config, domain)
  # Pseudo-labels are written by the model, so they are already in its label space.
  pseudo = bool(domain_pseudo_label_dir(config, domain))
  lut = None if pseudo else label_lut(config.data.label_space, split_config.name)
  return dp.StreamSpec(
      resize_hw=resize_hw, crop_hw=crop_hw, flip=bool(config.data.get("flip", False)),
      label_lut=None if lut is None else tuple(int(v) for v in lut),
      fda_beta=float(config.data.get("fda_beta", 0.0)) if domain == "source" else 0.0,
      blur=float(config.data.get("blur_probability", 0.0)) > 0)


def _rare_class_sampling(config, domain: str, data_source, from_tfds: bool, labels_from: str):
  """The source stream's (ClassSampling, CropCheck or None) when RCS is on, else (None, None)."""
  settings = rcs.settings(config)
  if domain != "source" or not settings.enabled:
    return None, None
  if labels_from:
    raise errors.UsageError(
        "Rare class sampling (config.data.source.rcs_temperature > 0) counts the classes of the "
        "stored source labels; it cannot be combined with config.data.source.pseudo_label_dir. "
        "Set rcs_temperature=0.")
  lut = label_lut(config.data.label_space, config.data.source.name)
  sampling = rcs.stream_sampling(
      config, data_source, from_tfds=from_tfds, lut=lut, verbose=jax.process_index() == 0,
      subset=data_source.indices if isinstance(data_source, SubsetSource) else None)
  crop = None
  if settings.min_crop_ratio > 0 and config.data.source.get("crop_hw"):
    crop = rcs.CropCheck(settings.min_pixels * settings.min_crop_ratio, lut)
  return sampling, crop


# Said by config validation (before a run) and here (direct API use) alike.
CAT_MAX_RATIO_WITH_PSEUDO_LABELS = (
    "config.data.source.cat_max_ratio < 1 checks crops on the stored source labels; it cannot "
    "be combined with config.data.source.pseudo_label_dir")


def _category_ratio_check(config, domain: str, labels_from: str) -> CategoryRatioCheck | None:
  """The source stream's crop check when config.data.source.cat_max_ratio < 1, else None."""
  ratio = float(config.data.source.get("cat_max_ratio", 1.0))
  if domain != "source" or ratio >= 1.0 or not config.data.source.get("crop_hw"):
    return None
  if labels_from:
    raise errors.UsageError(CAT_MAX_RATIO_WITH_PSEUDO_LABELS + ". Set cat_max_ratio=1.")
  return CategoryRatioCheck(ratio, label_lut(config.data.label_space, config.data.source.name))


def create_train_iterator(
    config,
    domain: str,
    *,
    seed: int,
    data_source=None,
    fda_data_source=None,
    read_threads: int | None = None,
):
  """An infinite grain iterator of per-host training batches of `domain` ('source'|'target').

  With config.data.preprocess_on='host' batches are {'image': float32 [B_local, h, w, 3] BGR
  minus mean, 'label': int32 [B_local, h, w]}. With 'device' they are the raw batches that
  `device_preprocessing.preprocess(batch, device_spec(config, domain))` turns into those:
  uint8 pixels at their stored size plus each example's crop and flip draws (and FDA partner).
  The target has a label only when config.data.target.pseudo_label_dir is set; a domain with a
  pseudo_label_dir reads its labels there, and one with an ids_file reads only those examples.
  With config.data.source.rcs_temperature > 0 the source examples come from rare class sampling.
  The iterator supports get_state()/set_state(); the state is a JSON-serialisable dict (grain's
  own orbax `save`/`load` write it as JSON).

  Args:
    config: the full config (data.*, train.batch_size).
    domain: 'source' or 'target'.
    seed: the run seed; each domain derives its own shuffle and augmentation seeds from it.
    data_source: injected examples instead of the prepared TFDS split (tests, benchmarks).
    fda_data_source: injected target-train images for FDA (default: config.data.target's split).
    read_threads: grain read threads per process (default 1 with workers, else 2).
  """
  on_device = preprocess_on(config) == "device"
  from_tfds = data_source is None
  split_config, data_source, fda_data_source, labels_from = _train_split(
      config, domain, data_source, fda_data_source)
  resize_hw, crop_hw = _sizes(split_config, domain)
  with_label = domain == "source" or bool(labels_from)
  desc = _dataset_desc(split_config)
  rcs_sampling, rcs_crop = _rare_class_sampling(config, domain, data_source, from_tfds,
                                                labels_from)
  cat_max = _category_ratio_check(config, domain, labels_from)
  common = dict(
      dataset=desc, resize_hw=resize_hw, crop_hw=crop_hw, flip=bool(config.data.get("flip", False)),
      with_label=with_label, pseudo_label_dir=labels_from,
      fda_beta=float(config.data.get("fda_beta", 0.0)) if fda_data_source is not None else 0.0,
      fda_images=fda_data_source, domain=domain, rcs_crop=rcs_crop, cat_max=cat_max,
      blur_probability=float(config.data.get("blur_probability", 0.0)))
  if on_device:
    transform = RawTrainTransform(
        **common,
        image_hw=_stored_hw(data_source, "image", desc),
        label_hw=(_stored_hw(data_source, "label", desc)
                  if with_label and not labels_from else None),
        fda_hw=(None if fda_data_source is None
                else _stored_hw(fda_data_source, "image", "the FDA target images")))
  else:
    # Pseudo-labels are written by the model, so they are already in its label space.
    lut = None if labels_from else label_lut(config.data.label_space, split_config.name)
    transform = TrainTransform(**common, label_lut=lut)
  process_count = jax.process_count()
  batch_size = local_batch_size(config.train.batch_size, process_count)
  ds = make_train_dataset(
      data_source, transform, batch_size=batch_size, seed=seed, domain=domain,
      process_index=jax.process_index(), process_count=process_count, rcs_sampling=rcs_sampling)
  workers = worker_count(config)
  if read_threads is None:
    read_threads = 1 if workers > 0 else 2
  return _to_iterator(ds, workers, int(config.data.get("prefetch_buffer_size", 2)), read_threads)


# ---------------------------------------------------------------------------------------------
# Evaluation stream.


def _eval_length(split_config, data_source, max_examples: int) -> int:
  limit = max_examples or split_config.get("max_examples", 0) or 0
  return min(len(data_source), limit) if limit > 0 else len(data_source)


def num_eval_examples(config, split_config=None, *, max_examples: int = 0,
                      data_source=None) -> int:
  """How many examples `create_eval_iterator` yields for the same arguments."""
  split_config = split_config or config.data.val
  if data_source is None:
    data_source = datasets.open_data_source(split_config, config.data.data_dir)
  return _eval_length(split_config, data_source, max_examples)


def create_eval_iterator(config, split_config=None, *, max_examples: int = 0, data_source=None):
  """A finite, re-iterable stream of single examples in the data source's fixed order.

  Each element: {'image': float32 [1, h, w, 3] at split_config.resize_hw (model input),
  'label': uint8 [1, H, W] at full stored resolution in config.data.label_space (the validation
  split: at config.eval.label_hw when set, the resolution some references score at),
  'raw_image': uint8 [1, H, W, 3] original RGB, 'id': str}. Every process sees every example.

  Args:
    config: the full config.
    split_config: defaults to config.data.val (then config.eval.label_hw applies).
    max_examples: the first N examples (0: split_config.max_examples, and 0 there = all).
    data_source: injected examples instead of the prepared TFDS split.
  """
  label_hw = None
  if split_config is None and config.eval.get("label_hw", ()):
    label_hw = _check_hw(config.eval.label_hw, "config.eval.label_hw")
  split_config = split_config or config.data.val
  if data_source is None:
    data_source = datasets.open_data_source(split_config, config.data.data_dir)
  transform = EvalTransform(
      dataset=_dataset_desc(split_config),
      resize_hw=_check_hw(split_config.resize_hw, "resize_hw of the evaluation split"),
      label_lut=label_lut(config.data.label_space, split_config.name), label_hw=label_hw)
  ds = grain.MapDataset.source(data_source)[:_eval_length(split_config, data_source, max_examples)]
  ds = ds.map(transform)
  buffer_size = max(2, int(config.data.get("prefetch_buffer_size", 2)))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=buffer_size))


# ---------------------------------------------------------------------------------------------
# Host batches -> global arrays.


def data_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Batch sharding: the leading axis split over the mesh's 'data' axis."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def to_global_batch(batch: Mapping[str, Any],
                    sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Per-host numpy batch -> global jax.Arrays (leading axis = process_count * B_local).

  Non-numeric fields (ids, strings) are left out: they cannot live on a device.
  """
  out = {}
  for key, value in batch.items():
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
      out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


class TrainingBatches:
  """The train step's global batches: one stream per domain, merged, sharded and preprocessed.

  Yields {SOURCE_IMAGE, SOURCE_LABEL[, TARGET_IMAGE[, TARGET_LABEL]]} as global jax.Arrays
  sharded by `sharding`. A source-only run reads no target; the target carries labels only in
  stage 2 (`batch.target_has_labels`). With config.data.preprocess_on='device' the host batches are
  raw uint8 pixels and draws, and one jitted call per step (sharded like the batch, dispatched
  asynchronously ahead of the step) turns them into model inputs. `get_state()` / `set_state()`
  are the streams' positions, the JSON the checkpoints keep so a resumed run sees the same
  batches; the device part is a pure function of the raw batch, so it needs no state.
  """

  def __init__(self, config, sharding: jax.sharding.Sharding, *, with_target: bool = True):
    domains = DOMAINS if with_target else ("source",)
    self.iterators = {
        domain: create_train_iterator(config, domain, seed=config.seed) for domain in domains}
    self.target_labels = with_target and batch_keys.target_has_labels(config)
    self.sharding = sharding
    self.device_fn = None
    if preprocess_on(config) == "device":
      specs = {domain: device_spec(config, domain) for domain in domains}
      # Every op is per example, so each device preprocesses its own shard: shard_map says so
      # (under plain jit XLA's partitioner gathers the batch around the FFTs).
      self.device_fn = jax.jit(jax.shard_map(
          functools.partial(dp.preprocess_streams, specs=specs), mesh=sharding.mesh,
          in_specs=(sharding.spec,), out_specs=sharding.spec), out_shardings=sharding)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    streams = {domain: next(it) for domain, it in self.iterators.items()}
    if self.device_fn is not None:
      streams = self.device_fn(
          {domain: to_global_batch(batch, self.sharding) for domain, batch in streams.items()})
    batch = {SOURCE_IMAGE: streams["source"]["image"], SOURCE_LABEL: streams["source"]["label"]}
    if "target" in streams:
      batch[TARGET_IMAGE] = streams["target"]["image"]
      if self.target_labels:
        batch[TARGET_LABEL] = streams["target"]["label"]
    return batch if self.device_fn is not None else to_global_batch(batch, self.sharding)

  def get_state(self) -> dict[str, Any]:
    return {domain: it.get_state() for domain, it in self.iterators.items()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    for domain, it in self.iterators.items():
      it.set_state(state[domain])
