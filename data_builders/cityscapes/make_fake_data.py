"""Writes a tiny fake Cityscapes folder in the real layout and formats (for tests).

  python -m data_builders.cityscapes.make_fake_data /tmp/fake_cityscapes

leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png (8-bit RGB) and
gtFine/{train,val}/<city>/<id>_gtFine_labelIds.png (8-bit greyscale labelIds), plus the
gtFine files the builder must ignore (_color.png, _instanceIds.png, _polygons.json).
"""

import sys

from etils import epath
import numpy as np
from PIL import Image

# Raw labelIds in the fake labels: mapped ones and unmapped ones (0, 1, 4, 29, 30 -> 255).
FAKE_LABEL_IDS = (7, 8, 11, 17, 21, 23, 24, 26, 33, 0, 1, 4, 29, 30)
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def fake_label_ids(index: int, size_hw: tuple[int, int]) -> np.ndarray:
  """The labelId map of the fake example with global index `index`."""
  h, w = size_hw
  flat = (np.arange(h * w) + index) % len(FAKE_LABEL_IDS)
  return np.asarray(FAKE_LABEL_IDS, dtype=np.uint8)[flat].reshape(h, w)


def _save(array: np.ndarray, path: epath.Path) -> None:
  with path.open("wb") as f:
    Image.fromarray(array).save(f, format="PNG")


def make_fake_data(root, per_city: int = 2,
                   size_hw: tuple[int, int] = (8, 16)) -> dict[str, dict[str, int]]:
  """Writes the fake dataset under `root`.

  Returns {folder ('train'/'val'): {example id: global index}}; the label of an example is
  `fake_label_ids(global index, size_hw)`.
  """
  root = epath.Path(root)
  written, index = {}, 0
  for folder, cities in CITIES.items():
    written[folder] = {}
    for city in cities:
      image_dir = root / "leftImg8bit" / folder / city
      label_dir = root / "gtFine" / folder / city
      image_dir.mkdir(parents=True, exist_ok=True)
      label_dir.mkdir(parents=True, exist_ok=True)
      for frame in range(per_city):
        example_id = f"{city}_000000_{frame:06d}"
        image = np.random.default_rng(index).integers(0, 256, (*size_hw, 3), dtype=np.uint8)
        _save(image, image_dir / f"{example_id}_leftImg8bit.png")
        _save(fake_label_ids(index, size_hw), label_dir / f"{example_id}_gtFine_labelIds.png")
        # Files of the real release that must not be mistaken for labels.
        _save(image, label_dir / f"{example_id}_gtFine_color.png")
        _save(np.zeros(size_hw, np.uint8), label_dir / f"{example_id}_gtFine_instanceIds.png")
        (label_dir / f"{example_id}_gtFine_polygons.json").write_text("{}")
        written[folder][example_id] = index
        index += 1
  return written


if __name__ == "__main__":
  print(make_fake_data(sys.argv[1]))
