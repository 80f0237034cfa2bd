"""Command: segment your own images, folders and videos with a trained model.

  python -m seat_jax.segment --config=configs/gta.py --checkpoint=runs/gta_seat \
      [--domain=target] [--scale=1024] [--out=segmented] [--batch_size=4] INPUTS...

INPUTS are image files, folders (searched recursively for images and videos), globs
('frames/*.jpg') and video files. Every image, whatever its size, is resized to the scale the
model was trained at (`predict.model_input_hw`: the preset's width, aspect ratio kept; --scale
overrides), predicted with the preset's norms and layer switch exactly as evaluation predicts
(`predict`), and the labels are upsampled back to the image's own size. Per image, in --out:
  <name>_color.png     the label map in the label space's palette
  <name>_overlay.png   the colours blended over the image (--overlay_alpha)
  <name>_trainIds.png  the class ids (0..C-1), what the model predicts
  <name>_labelIds.png  Cityscapes labelIds (cityscapesscripts' format)
and per video <name>_overlay.mp4 (H.264) plus, with --video_frames, those PNGs per frame in
<name>_frames/. Video needs PyAV (`pip install -e '.[video]'`).

A thread reads and resizes the next batch and puts it on the device while the device predicts
the current one; the host writes the previous batch's files meanwhile. A file that cannot be read
is reported and skipped; the rest goes on, and the run ends with one `error:` block that counts
the skipped files (exit code 1).

Flags are defined when the module runs as a command (`define_flags`), not on import: --config
and --out are also flags of other commands that the tests import in one process, and absl
accepts each name once per process.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from seat_jax import cli
from seat_jax import cpu_malloc
from seat_jax import errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".ts")
OUTPUTS = ("color", "overlay", "trainIds", "labelIds")
DOMAINS = ("target", "source")
VIDEO_INSTALL_HINT = "pip install -e '.[video]'"


# ---------------------------------------------------------------------------------------------
# What to segment.


@dataclasses.dataclass
class Inputs:
  """The files the INPUTS arguments name, in order: images, videos, and arguments naming none."""
  images: list[str] = dataclasses.field(default_factory=list)
  videos: list[str] = dataclasses.field(default_factory=list)
  missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (argument, why)


def _media_files(folder: str) -> list[str]:
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.join(root, f) for f in sorted(files)
              if f.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES)]
  return found


def expand_inputs(arguments: Sequence[str]) -> Inputs:
  """Files, folders (recursive; images and videos by suffix) and globs -> Inputs.

  A file named directly is an image unless its suffix is a video's, whatever its suffix, so a
  mislabelled file is reported by the reader rather than ignored.
  """
  inputs, seen = Inputs(), set()

  def add(path: str) -> None:
    key = os.path.abspath(path)
    if key in seen:
      return
    seen.add(key)
    (inputs.videos if path.lower().endswith(VIDEO_SUFFIXES) else inputs.images).append(path)

  for argument in arguments:
    if os.path.isdir(argument):
      files = _media_files(argument)
      if not files:
        inputs.missing.append((argument, "a folder without images or videos"))
      for path in files:
        add(path)
    elif os.path.isfile(argument):
      add(argument)
    elif glob.has_magic(argument):
      matches = sorted(glob.glob(argument, recursive=True))
      files = [f for m in matches for f in (_media_files(m) if os.path.isdir(m) else [m])
               if f.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES)]
      if not files:
        inputs.missing.append((argument, "matches no image or video"))
      for path in files:
        add(path)
    else:
      inputs.missing.append((argument, "no such file or folder"))
  return inputs


def output_names(paths: Sequence[str]) -> dict[str, str]:
  """A distinct file-name stem per input: its own stem, then _2, _3 for repeats."""
  names, used = {}, set()
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0] or "input"
    name, n = stem, 1
    while name in used:
      n += 1
      name = f"{stem}_{n}"
    used.add(name)
    names[path] = name
  return names


# ---------------------------------------------------------------------------------------------
# Reading.


def read_image(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3], upright as a camera's EXIF orientation says. Raises
  errors.InvalidInputError when the file is not a readable image."""
  from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      return np.asarray(image.convert("RGB"))
  except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
    raise errors.InvalidInputError(f"not a readable image ({type(e).__name__}: {e})") from None


def import_av(videos: Sequence[str] = ()):
  """PyAV, or a usage error naming the install command when it is missing."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError:
    shown = ", ".join(videos[:3]) + (" ..." if len(videos) > 3 else "")
    raise errors.UsageError(
        f"Segmenting videos ({shown}) needs PyAV, which is not installed. Install the video "
        f"extra: {VIDEO_INSTALL_HINT}\n(or leave the videos out of the inputs).") from None
  return av


def video_frame_count(path: str) -> int | None:
  """Frames in the file's first video stream as its header says (None if unknown/unreadable)."""
  av = import_av([path])
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      if stream.frames:
        return int(stream.frames)
      if stream.duration and stream.time_base and stream.average_rate:
        return int(round(float(stream.duration * stream.time_base * stream.average_rate)))
  except (av.FFmpegError, IndexError, OSError):
    pass
  return None


# ---------------------------------------------------------------------------------------------
# The model.


@dataclasses.dataclass
class Segmenter:
  """A restored model and how it predicts batches of images of one size."""
  predict_fn: Callable[..., Any]  # (variables, images [B, h, w, 3], out_hw) -> uint8 [B, *out_hw]
  variables: Any
  space: Any  # labels.LabelSpace
  trained_hw: tuple[int, int]
  scale: str = ""
  batch_size: int = 4
  description: str = ""

  def input_hw(self, image_hw: Sequence[int]) -> tuple[int, int]:
    from seat_jax import predict  # pylint: disable=g-import-not-at-top
    return predict.model_input_hw(image_hw, self.scale, self.trained_hw)

  def model_inputs(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """float32 [batch_size, h, w, 3] model inputs of same-size images, padded with the last one
    to a full batch (one compile per size)."""
    from seat_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    hw = self.input_hw(images[0].shape[:2])
    batch = [input_pipeline.preprocess_image(image, hw) for image in images]
    batch += [batch[-1]] * (max(self.batch_size, len(batch)) - len(batch))
    return np.stack(batch)


@dataclasses.dataclass
class Restored:
  """A checkpoint's model, ready to predict (shared by segment and seat_jax.export)."""
  model: Any
  variables: Any
  space: Any  # labels.LabelSpace
  directory: Any  # the checkpoint directory
  step: int
  domain: str
  source_stages: tuple[int, ...]
  trained_hw: tuple[int, int]  # config.data.val.resize_hw: the size evaluation feeds

  def description(self) -> str:
    switch = (f", layer switch: stages {self.source_stages} on source norms"
              if self.source_stages else "")
    return (f"{self.directory} step {self.step} ({self.space.name}, {self.domain} "
            f"norms{switch}; trained at {self.trained_hw[0]}x{self.trained_hw[1]})")


def restore(config, checkpoint: str, domain: str = "target") -> Restored:
  """The model of `config` with the checkpoint's variables (its last step, or the step folder
  named), to predict with `domain`'s norms and config.eval.source_stages. A checkpoint of
  another model fails with the differing entries named (checkpointing.restore_model)."""
  from seat_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from seat_jax import config_validation  # pylint: disable=g-import-not-at-top
  from seat_jax import labels  # pylint: disable=g-import-not-at-top
  from seat_jax import models  # pylint: disable=g-import-not-at-top

  if domain not in DOMAINS:
    raise errors.UsageError(f"--domain={domain!r} is not one of {DOMAINS}.")
  config.mode = "eval"  # inference: training-only requirements (init_from, ...) do not apply
  config_validation.clear_training_placeholders(config)
  config_validation.validate(config)
  space = labels.label_space_for(config)
  directory, steps = checkpointing.find_steps(checkpoint, -1)
  model = models.build_segmenter(config.model)
  variables = checkpointing.restore_model(directory, checkpointing.abstract_variables(model),
                                          steps[-1])
  return Restored(model=model, variables=variables, space=space, directory=directory,
                  step=int(steps[-1]), domain=domain,
                  source_stages=tuple(int(s) for s in config.eval.source_stages),
                  trained_hw=tuple(int(v) for v in config.data.val.resize_hw))


def load_segmenter(config, checkpoint: str, *, domain: str = "target", scale: str = "",
                   batch_size: int = 4) -> Segmenter:
  """`restore` and the predict function of `predict.make_image_predict_fn`."""
  from seat_jax import predict  # pylint: disable=g-import-not-at-top

  if batch_size < 1:
    raise errors.UsageError(f"--batch_size={batch_size} must be at least 1.")
  predict.parse_scale(scale)  # a typo fails before the restore
  restored = restore(config, checkpoint, domain)
  return Segmenter(
      predict_fn=predict.make_image_predict_fn(restored.model, restored.source_stages,
                                               domain=domain),
      variables=restored.variables, space=restored.space, trained_hw=restored.trained_hw,
      scale=scale, batch_size=batch_size, description=restored.description())


# ---------------------------------------------------------------------------------------------
# Writing.


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
  """The colour map blended over the image: (1 - alpha) * image + alpha * colours, uint8."""
  mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colors.astype(np.float32)
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _write_png(path: str, array: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(array).save(path, format="PNG", compress_level=1)  # fast; sizes vary little


def write_outputs(prefix: str, image: np.ndarray, class_ids: np.ndarray, space,
                  outputs: Sequence[str], alpha: float) -> np.ndarray:
  """Writes `<prefix>_<output>.png` for each of `outputs`; returns the overlay."""
  from seat_jax import labels  # pylint: disable=g-import-not-at-top
  from seat_jax import reports  # pylint: disable=g-import-not-at-top
  colors = labels.colorize(class_ids, space.palette)
  blended = overlay(image, colors, alpha)
  arrays = {"color": lambda: colors, "overlay": lambda: blended, "trainIds": lambda: class_ids,
            "labelIds": lambda: reports.to_label_id_image(class_ids, space)}
  for name in outputs:
    _write_png(f"{prefix}_{name}.png", arrays[name]())
  return blended


class VideoWriter:
  """An H.264 (yuv420p) video of overlay frames at the input's frame rate; even sizes (the
  codec's need), so an odd last row or column is dropped."""

  def __init__(self, path: str, rate, hw: Sequence[int]):
    av = import_av([path])
    from fractions import Fraction  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._container = av.open(path, "w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    self._stream = self._container.add_stream(codec, rate=Fraction(rate or 25).limit_denominator(
        100000))
    self._hw = (int(hw[0]) // 2 * 2, int(hw[1]) // 2 * 2)
    self._stream.height, self._stream.width = self._hw
    self._stream.pix_fmt = "yuv420p"
    self._av = av

  def write(self, rgb: np.ndarray) -> None:
    frame = self._av.VideoFrame.from_ndarray(
        np.ascontiguousarray(rgb[:self._hw[0], :self._hw[1]]), format="rgb24")
    for packet in self._stream.encode(frame):
      self._container.mux(packet)

  def close(self) -> None:
    for packet in self._stream.encode():
      self._container.mux(packet)
    self._container.close()


# ---------------------------------------------------------------------------------------------
# The loop: a reader thread, the device, the writer.


@dataclasses.dataclass
class _Batch:
  """Same-size frames read and resized by the reader thread, already on the device."""
  images: list[np.ndarray]
  names: list[str]  # output prefixes (images) or frame indices as text (videos)
  model_input: Any  # device array [batch_size, h, w, 3]
  video: str | None = None  # the video's path; None for images
  rate: Any = None  # the video's frame rate
  last: bool = False  # the video's last batch


@dataclasses.dataclass
class Summary:
  images: int = 0
  videos: int = 0
  frames: int = 0  # every prediction: images and video frames
  seconds: float = 0.0
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)
  written: list[str] = dataclasses.field(default_factory=list)  # video files

  @property
  def frames_per_second(self) -> float:
    return self.frames / max(self.seconds, 1e-9)


def _reader(inputs: Inputs, segmenter: Segmenter, out_dir: str, names: dict[str, str],
            skip: Callable[[str, str], None]) -> Iterator[_Batch]:
  """Batches of same-size images (buffered per size, flushed when full and at the end), then
  each video's frames in order."""
  import jax  # pylint: disable=g-import-not-at-top

  def batch(images, prefixes, **kwargs) -> _Batch:
    return _Batch(images, prefixes, jax.device_put(segmenter.model_inputs(images)), **kwargs)

  pending: dict[tuple[int, ...], tuple[list, list]] = {}
  for path in inputs.images:
    try:
      image = read_image(path)
      segmenter.input_hw(image.shape[:2])  # an image too small for the scale is skipped
    except errors.InvalidInputError as e:
      skip(path, str(e))
      continue
    images, prefixes = pending.setdefault(image.shape, ([], []))
    images.append(image)
    prefixes.append(os.path.join(out_dir, names[path]))
    if len(images) == segmenter.batch_size:
      yield batch(*pending.pop(image.shape))
  for images, prefixes in pending.values():
    yield batch(images, prefixes)

  for path in inputs.videos:
    yield from _video_batches(path, segmenter, skip, batch)


def _video_batches(path: str, segmenter: Segmenter, skip, batch) -> Iterator[_Batch]:
  av = import_av([path])
  try:
    container = av.open(path)
    stream = container.streams.video[0]
  except (av.FFmpegError, IndexError, OSError) as e:
    skip(path, f"not a readable video ({type(e).__name__}: {e})")
    return
  rate = stream.average_rate or stream.guessed_rate
  frames, index, held = [], 0, None
  try:
    try:
      for frame in container.decode(stream):
        frames.append(frame.to_ndarray(format="rgb24"))
        if len(frames) == segmenter.batch_size:
          if held is not None:
            yield held
          held = batch(frames, [str(i) for i in range(index, index + len(frames))], video=path,
                       rate=rate)
          index += len(frames)
          frames = []
    except (av.FFmpegError, OSError) as e:
      skip(path, f"damaged after frame {index + len(frames)}; the frames before it were "
           f"segmented ({type(e).__name__}: {e})")
  finally:
    container.close()
  if frames:
    if held is not None:
      yield held
    held = batch(frames, [str(i) for i in range(index, index + len(frames))], video=path,
                 rate=rate)
  if held is not None:
    held.last = True
    yield held
  elif not frames:
    skip(path, "a video without frames")


def _prefetched(iterator: Iterator[_Batch], depth: int = 1) -> Iterator[_Batch]:
  """`iterator`'s items produced by a thread, `depth` ahead of the consumer."""
  items: queue.Queue = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        if stop.is_set():
          return
        items.put(item)
      items.put(done)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      items.put(e)

  thread = threading.Thread(target=produce, name="segment-reader", daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        items.get(timeout=0.1)
      except queue.Empty:
        pass


def segment(segmenter: Segmenter, inputs: Inputs, out_dir: str, *,
            outputs: Sequence[str] = OUTPUTS, alpha: float = 0.5, video_frames: bool = False,
            progress: bool = True, log: Callable[[str], None] = print) -> Summary:
  """Segments every input into `out_dir` (module doc); returns what was done and skipped."""
  from seat_jax import progress as progress_lib  # pylint: disable=g-import-not-at-top

  unknown = [o for o in outputs if o not in OUTPUTS]
  if unknown:
    raise errors.UsageError(f"--outputs: {unknown} are not outputs; choose from {OUTPUTS}.")
  summary = Summary()
  lock = threading.Lock()

  image_paths = set(inputs.images)
  unread_images = [0]  # images the reader skipped: they count as done for the progress line

  def skip(path: str, why: str) -> None:
    with lock:
      summary.skipped.append((path, why))
      unread_images[0] += path in image_paths
    print(f"skipped {path}: {why}", file=sys.stderr, flush=True)

  for argument, why in inputs.missing:
    skip(argument, why)
  if inputs.videos:
    import_av(inputs.videos)
  names = output_names(inputs.images + inputs.videos)
  counts = [video_frame_count(v) for v in inputs.videos]
  total = len(inputs.images) + sum(c or 0 for c in counts) if None not in counts else None
  meter = progress_lib.Progress("segment", total, unit="frames", every_secs=5.0,
                                on_steps=(total,) if total else (), enabled=progress)
  meter(0)
  os.makedirs(out_dir, exist_ok=True)
  writers: dict[str, VideoWriter] = {}
  start = time.perf_counter()

  def write(item: _Batch, labels) -> None:
    class_ids = np.asarray(labels)[:len(item.images)]
    for image, name, ids in zip(item.images, item.names, class_ids):
      if item.video is None:
        write_outputs(name, image, ids, segmenter.space, outputs, alpha)
        summary.images += 1
        continue
      stem = os.path.join(out_dir, names[item.video])
      if video_frames:
        prefix = os.path.join(f"{stem}_frames", f"frame_{int(name):06d}")
        blended = write_outputs(prefix, image, ids, segmenter.space, outputs, alpha)
      else:
        blended = overlay(image, _colorize(ids, segmenter.space), alpha)
      if item.video not in writers:
        writers[item.video] = VideoWriter(f"{stem}_overlay.mp4", item.rate, image.shape[:2])
      writers[item.video].write(blended)
    summary.frames += len(item.images)
    if item.video is not None and item.last:
      writers.pop(item.video).close()
      summary.videos += 1
      summary.written.append(f"{os.path.join(out_dir, names[item.video])}_overlay.mp4")
    with lock:
      meter(summary.frames + unread_images[0])

  held = None
  try:
    for item in _prefetched(_reader(inputs, segmenter, out_dir, names, skip)):
      labels = segmenter.predict_fn(segmenter.variables, item.model_input,
                                    item.images[0].shape[:2])  # dispatched; runs on the device
      if held is not None:
        write(*held)  # meanwhile, the host writes the previous batch
      held = (item, labels)
    if held is not None:
      write(*held)
  finally:
    for writer in writers.values():
      writer.close()
  summary.seconds = time.perf_counter() - start
  return summary


def _count(n: int, word: str) -> str:
  return f"{n} {word}{'' if n == 1 else 's'}"


def _colorize(class_ids: np.ndarray, space) -> np.ndarray:
  from seat_jax import labels  # pylint: disable=g-import-not-at-top
  return labels.colorize(class_ids, space.palette)


# ---------------------------------------------------------------------------------------------
# The command.

_FLAGS: dict[str, Any] = {}


def define_flags() -> None:
  """The command's absl flags (module doc: why not on import)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _FLAGS.update(
      config=config_flags.DEFINE_config_file(
          "config", None, "The preset the model was trained with, e.g. configs/gta.py or "
          "configs/demo.py (its model, label space, layer switch and scale).", lock_config=True),
      checkpoint=flags.DEFINE_string(
          "checkpoint", None, "A run's workdir, its checkpoints/ folder or one step folder "
          "(default step: the last one)."),
      domain=flags.DEFINE_enum("domain", "target", list(DOMAINS),
                               "Whose norms predict: the target's (as evaluation) or the "
                               "source's."),
      scale=flags.DEFINE_string(
          "scale", "", "Model input size: '' = the width the model was trained at, aspect "
          "ratio kept; W = that width; HxW = exactly that size; 'input' = each image's own."),
      out=flags.DEFINE_string("out", "segmented", "Where the outputs go."),
      batch_size=flags.DEFINE_integer("batch_size", 4, "Images or frames per device batch.",
                                      lower_bound=1),
      outputs=flags.DEFINE_list("outputs", list(OUTPUTS),
                                f"Which PNGs to write per image, from {list(OUTPUTS)}."),
      overlay_alpha=flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the colours in the "
                                       "overlay.", lower_bound=0.0, upper_bound=1.0),
      video_frames=flags.DEFINE_boolean("video_frames", False, "Also write the PNGs of every "
                                        "video frame (in <name>_frames/)."),
  )


def run(argv: list[str]) -> int:
  arguments = argv[1:]
  if not arguments:
    raise errors.UsageError(
        "No inputs: name image files, folders, globs or videos after the flags, e.g. "
        "python -m seat_jax.segment --config=configs/demo.py --checkpoint=demo_workdir/seat "
        "demo_workdir/target_images")
  if _FLAGS["config"].value is None or not _FLAGS["checkpoint"].value:
    raise errors.UsageError("--config and --checkpoint are required, e.g. "
                            "--config=configs/gta.py --checkpoint=runs/gta_seat.")
  unknown = [o for o in _FLAGS["outputs"].value if o not in OUTPUTS]
  if unknown:
    raise errors.UsageError(f"--outputs: {unknown} are not outputs; choose from {OUTPUTS}.")
  inputs = expand_inputs(arguments)
  if not inputs.images and not inputs.videos:
    listing = "\n".join(f"  {argument}: {why}" for argument, why in inputs.missing)
    raise errors.MissingInputError(
        f"No images or videos to segment:\n{listing}\nImages: "
        f"{' '.join(IMAGE_SUFFIXES)}; videos: {' '.join(VIDEO_SUFFIXES)}.")
  if inputs.videos:
    import_av(inputs.videos)  # before the slow restore
  segmenter = load_segmenter(_FLAGS["config"].value, _FLAGS["checkpoint"].value,
                             domain=_FLAGS["domain"].value, scale=_FLAGS["scale"].value,
                             batch_size=_FLAGS["batch_size"].value)
  out_dir = _FLAGS["out"].value
  count = len(inputs.images) + len(inputs.videos)
  print(f"Segmenting {_count(len(inputs.images), 'image')} and "
        f"{_count(len(inputs.videos), 'video')} into {out_dir} with {segmenter.description}",
        flush=True)
  summary = segment(segmenter, inputs, out_dir, outputs=_FLAGS["outputs"].value,
                    alpha=_FLAGS["overlay_alpha"].value,
                    video_frames=_FLAGS["video_frames"].value)
  print(f"Segmented {_count(summary.images, 'image')} and {_count(summary.videos, 'video')} "
        f"({summary.frames} frames, {summary.frames_per_second:.2f} frames/s) into {out_dir}",
        flush=True)
  if summary.skipped:
    listing = "\n".join(f"  {path}: {why}" for path, why in summary.skipped)
    raise errors.InvalidInputError(
        f"{len(summary.skipped)} of {count + len(inputs.missing)} inputs could not be read and "
        f"were skipped:\n{listing}\nThe others were segmented into {out_dir}.")
  return 0


if __name__ == "__main__":
  cpu_malloc.restart_with_tuned_malloc()
  define_flags()
  sys.exit(cli.run(run, configs=[_FLAGS["config"]]))
