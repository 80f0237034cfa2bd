"""What every dataset builder shares: reading and checking files, id tables, the build report.

Every failure names the file, says what was expected and what was found. Images are decoded with
PIL (no TensorFlow), and file paths are `etils.epath` paths so that the builders also run under
`tfds.testing`, which mocks `os`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from absl import logging
from etils import epath
import numpy as np
from PIL import Image

from seat_jax import errors

# Our own decoding: PIL's pixel-count guard is meant for untrusted web images, not datasets.
Image.MAX_IMAGE_PIXELS = None

_T = TypeVar("_T")
_R = TypeVar("_R")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(errors.UserError, ValueError):
  """Missing, misplaced or unreadable input data. The message says what to fix."""

  exit_code = 2  # the --manual_dir the user gave does not hold what the dataset needs


def manual_dir(dl_manager: Any, dataset: str, layout: str, source: str) -> epath.Path:
  """`dl_manager.manual_dir`, with an error that shows the expected layout and download source."""
  try:
    return epath.Path(dl_manager.manual_dir)
  except (AssertionError, ValueError) as e:
    reason = str(e).split(". ")[0]  # TFDS's first sentence names the folder
    raise DataError(
        f"{dataset}: the manual directory is missing or empty ({reason}).\n"
        f"Download the data from {source} and extract it so that --manual_dir=DIR holds:\n"
        f"{layout}") from None


def require_dirs(root: epath.Path, relative_dirs: Sequence[str], dataset: str, layout: str,
                 source: str) -> None:
  """Raises DataError naming every expected sub-folder of `root` that does not exist."""
  missing = [d for d in relative_dirs if not (root / d).is_dir()]
  if not missing:
    return
  found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:10]
  hint = _nested_root_hint(root, relative_dirs[0])
  raise DataError(
      f"{dataset}: wrong layout in manual dir {root}: missing "
      + ", ".join(str(root / d) for d in missing)
      + f".\nFound instead: {found or 'nothing'}.{hint}\n"
      f"Expected layout (data from {source}):\n{layout}")


def _nested_root_hint(root: epath.Path, first_dir: str) -> str:
  """Suggests the right --manual_dir when the data sits one or two folders deeper."""
  top = first_dir.split("/")[0]
  for child in sorted(p for p in root.iterdir() if p.is_dir()):
    if (child / top).is_dir():
      return f"\nIt looks like the data is one level down: try --manual_dir={child}"
    for grandchild in sorted(p for p in child.iterdir() if p.is_dir()):
      if (grandchild / top).is_dir():
        return f"\nIt looks like the data is two levels down: try --manual_dir={grandchild}"
  return ""


def list_files(folder: epath.Path, suffixes: Sequence[str] = (".png",),
               strip_suffix: str = "") -> dict[str, epath.Path]:
  """Maps id -> path for the files in `folder` with one of `suffixes`, sorted by id.

  The id is the file name without its extension and without `strip_suffix` (for example
  Cityscapes' '_leftImg8bit'), so that an image and its label share the id.
  """
  files = {}
  for path in folder.iterdir():
    if path.suffix.lower() not in suffixes:
      continue
    stem = path.stem
    if strip_suffix:
      if not stem.endswith(strip_suffix):
        continue
      stem = stem[: -len(strip_suffix)]
    if stem in files:
      raise DataError(f"Two files with the id {stem!r} in {folder}: {files[stem].name} and "
                      f"{path.name}. Keep one of them.")
    files[stem] = path
  return dict(sorted(files.items()))


def pair_files(
    images: dict[str, epath.Path], labels: dict[str, epath.Path], image_dir: epath.Path,
    label_dir: epath.Path,
) -> list[tuple[str, epath.Path, epath.Path]]:
  """(id, image, label) triples; raises DataError when an image has no label or vice versa.

  We refuse instead of skipping because unmatched files almost always mean an archive that was
  only partly extracted, which would silently shrink the dataset.
  """
  if not images:
    raise DataError(f"No images found in {image_dir}.")
  no_label = sorted(set(images) - set(labels))
  no_image = sorted(set(labels) - set(images))
  if no_label or no_image:
    parts = []
    if no_label:
      parts.append(f"{len(no_label)} images in {image_dir} have no label in {label_dir} "
                   f"(first: {[images[i].name for i in no_label[:5]]})")
    if no_image:
      parts.append(f"{len(no_image)} labels in {label_dir} have no image in {image_dir} "
                   f"(first: {[labels[i].name for i in no_image[:5]]})")
    raise DataError("Unmatched files: " + "; ".join(parts) + ". Each image needs a label with "
                    "the same name; re-extract the missing archive parts.")
  return [(i, images[i], labels[i]) for i in images]


def _unreadable(path: epath.Path, error: Exception) -> DataError:
  return DataError(f"Cannot read {path}: {type(error).__name__}: {error}. The file is corrupt "
                   "or truncated; extract it again from the downloaded archive.")


def image_size(path: epath.Path) -> tuple[int, int]:
  """(width, height) from the file header only: cheap enough for a scan of every file."""
  try:
    with path.open("rb") as f:
      return Image.open(f).size
  except (OSError, SyntaxError, ValueError) as e:
    raise _unreadable(path, e) from None


def split_size_mismatches(
    triples: Iterable[tuple[str, epath.Path, epath.Path]], *, allow_rescaled_image: bool = False,
) -> tuple[list[tuple[str, epath.Path, epath.Path]], list[dict[str, Any]]]:
  """Separates (id, image, label) triples whose image and label sizes differ.

  Returns (kept, skipped); each skipped entry is a JSON-able dict with the id, both paths and
  both sizes. With `allow_rescaled_image` an image at another resolution but the same aspect
  ratio (within 1%) is kept: the input pipeline resizes image and label separately anyway.
  """
  kept, skipped = [], []
  sized = ordered_map(lambda t: (t, image_size(t[1]), image_size(t[2])), triples)
  for (example_id, image_path, label_path), image_wh, label_wh in sized:
    if image_wh == label_wh or (allow_rescaled_image and _same_aspect(image_wh, label_wh)):
      kept.append((example_id, image_path, label_path))
    else:
      skipped.append(dict(id=example_id, image=os.fspath(image_path), label=os.fspath(label_path),
                          image_size_wh=list(image_wh), label_size_wh=list(label_wh)))
  return kept, skipped


def _same_aspect(a_wh: tuple[int, int], b_wh: tuple[int, int]) -> bool:
  return abs(a_wh[0] * b_wh[1] - b_wh[0] * a_wh[1]) <= 0.01 * a_wh[0] * b_wh[1]


def record_skipped(info: Any, split: str, skipped: list[dict[str, Any]]) -> None:
  """Logs the skipped examples and stores them in the builder's metadata.json.

  `builder.info.metadata['skipped'][split]` is the list; it is written next to
  dataset_info.json in the prepared data dir, so the report survives the build.
  """
  metadata = info.metadata
  metadata.setdefault("skipped", {})[split] = skipped
  if skipped:
    names = ", ".join(s["id"] for s in skipped)
    logging.warning("Skipped %d %s examples whose image and label sizes differ: %s",
                    len(skipped), split, names)


def read_rgb_png(path: epath.Path, stored_hw: Sequence[int] | None = None) -> bytes:
  """PNG bytes of an RGB image, after checking that the whole file decodes.

  An RGB PNG is passed through unchanged (no re-encoding cost); anything else (JPEG, RGBA,
  palette) is converted to RGB and encoded as PNG, so every stored image decodes to [H, W, 3].
  With `stored_hw` (height, width) the image is resized to it with PIL's BICUBIC, the exact
  resize the training input pipeline would do (`resize_rgb`).
  """
  data = path.read_bytes()
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise _unreadable(path, e) from None
  if stored_hw and image.size != (stored_hw[1], stored_hw[0]):
    return encode_png(resize_rgb(np.asarray(image.convert("RGB")), stored_hw))
  if image.format == "PNG" and image.mode == "RGB":
    return data
  return encode_png(image.convert("RGB"))


def resize_rgb(rgb: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """PIL BICUBIC resize of uint8 [H, W, 3] to (height, width): seat_jax's training resize."""
  return np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))


def resize_ids(ids: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """PIL NEAREST resize of a uint8 [H, W] id map (never mixes ids): seat_jax's label resize."""
  if ids.shape == tuple(hw):
    return ids
  return np.asarray(Image.fromarray(ids).resize((hw[1], hw[0]), Image.Resampling.NEAREST))


def read_label_ids(path: epath.Path) -> np.ndarray:
  """The raw class ids of a single-channel label PNG (mode L, P or 16-bit grey) as [H, W].

  Palette ('P') PNGs such as GTA5's are read as their palette indices, which are the ids; the
  colours are ignored.
  """
  try:
    with path.open("rb") as f:
      image = Image.open(f)
      image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise _unreadable(path, e) from None
  if image.mode not in ("L", "P", "I", "I;16", "I;16B"):
    raise DataError(
        f"{path}: expected a single-channel label PNG of class ids (mode L or P), found mode "
        f"{image.mode!r}. Colour-coded label images (e.g. *_color.png) cannot be used.")
  return np.asarray(image)


def map_ids(raw_ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
  """Applies a length-256 LUT; ids outside 0..255 (16-bit files) map to 255."""
  if raw_ids.dtype == np.uint8:
    return lut[raw_ids]
  raw = raw_ids.astype(np.int64)
  inside = (raw >= 0) & (raw < 256)
  return np.where(inside, lut[np.where(inside, raw, 0)], 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class IdTable:
  """A dataset's raw label ids: the LUT to train ids and the ids its table defines at all.

  Ids the table defines but the model does not learn (void, parking, ...) map to 255 silently;
  ids the table does not define (e.g. 250 in a damaged file) map to 255 too, but are counted so
  the build can report them.
  """
  lut: np.ndarray  # length 256, raw id -> train id (255 = ignore)
  known_ids: tuple[int, ...]

  def to_train_ids(self, raw_ids: np.ndarray) -> np.ndarray:
    return map_ids(raw_ids, self.lut)

  def unknown_id_counts(self, raw_ids: np.ndarray) -> dict[int, int]:
    """{raw id: pixel count} of the ids outside the table."""
    values, counts = np.unique(np.asarray(raw_ids).reshape(-1), return_counts=True)
    unknown = ~np.isin(values, np.asarray(self.known_ids))
    return {int(v): int(n) for v, n in zip(values[unknown], counts[unknown])}


def record_unknown_ids(info: Any, split: str, files: list[dict[str, Any]]) -> None:
  """Stores (and logs) the label files that hold ids outside the table, for the build report.

  `builder.info.metadata['unknown_label_ids'][split]` lists {id, label, pixels_by_id}; it is
  written to metadata.json next to dataset_info.json.
  """
  info.metadata.setdefault("unknown_label_ids", {})[split] = files
  if files:
    logging.warning("%d %s label files hold ids outside the dataset's table (stored as 255): %s",
                    len(files), split, ", ".join(f["id"] for f in files[:20]))


def encode_png(image: Image.Image | np.ndarray) -> bytes:
  """PNG bytes of a PIL image or a uint8 array ([H, W] or [H, W, 3])."""
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ValueError(f"encode_png expects uint8, got {image.dtype}")
    image = Image.fromarray(image)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T],
                num_threads: int | None = None) -> Iterator[_R]:
  """`map(fn, items)` on a thread pool, yielding results in input order.

  PIL decodes and zlib compresses without the GIL, so threads speed up the build on every
  runner (tfds writes from a plain Python generator). At most 2 * num_threads items are in
  flight, so memory stays bounded.
  """
  num_threads = num_threads or min(8, os.cpu_count() or 1)
  if num_threads <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 2 * num_threads:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def segmentation_features() -> Any:
  """The features every seat_jax dataset has (the data contract): image, label, id."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.features.FeaturesDict({
      # Encoded PNGs; data sources decode them with PIL into uint8 [H, W, 3] / [H, W, 1].
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
      # Train ids, 255 = ignore.
      "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
      # A stable id: the file stem, e.g. 'aachen_000000_000019'.
      "id": tfds.features.Text(),
  })


def segmentation_info(builder: Any, description: str, homepage: str = "", citation: str = "",
                      metadata: dict[str, Any] | None = None) -> Any:
  """The DatasetInfo every seat_jax builder returns: the shared features, (image, label) pairs."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.core.DatasetInfo(
      builder=builder, description=description, features=segmentation_features(),
      supervised_keys=("image", "label"), homepage=homepage or None, citation=citation or None,
      metadata=tfds.core.MetadataDict(**(metadata or {})))


def generate_paired_examples(
    triples: Sequence[tuple[str, epath.Path, epath.Path]],
    read_raw_ids: Callable[[epath.Path], np.ndarray],
    table: IdTable,
    info: Any,
    split: str,
    stored_hw: Sequence[int] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
  """(key, example) pairs for TFDS from (id, image, label) triples, decoded on threads.

  `read_raw_ids(label_path)` returns the label file's raw ids [H, W]; `table` maps them to train
  ids. Files holding ids outside the table are recorded in the build's metadata at the end.
  With `stored_hw` (height, width) images and labels are stored resized to it (bicubic /
  nearest, as the input pipeline resizes), so training decodes fewer pixels.
  """

  def make_example(triple):
    example_id, image_path, label_path = triple
    image = read_rgb_png(image_path, stored_hw)
    raw_ids = read_raw_ids(label_path)
    train_ids = table.to_train_ids(raw_ids)
    if stored_hw:
      train_ids = resize_ids(train_ids, stored_hw)
    return (example_id, label_path, image, train_ids, table.unknown_id_counts(raw_ids))

  unknown = []
  for example_id, label_path, image, train_ids, counts in ordered_map(make_example, triples):
    if counts:
      unknown.append({"id": example_id, "label": os.fspath(label_path),
                      "pixels_by_id": {str(k): v for k, v in counts.items()}})
    yield example_id, {"image": image, "label": encode_png(train_ids), "id": example_id}
  record_unknown_ids(info, split, unknown)
