"""Writes a tiny fake GTA5 manual dir in the real layout and file formats (for tests).

  python -m data_builders.gta5.make_fake_data /tmp/fake_gta5

Layout: images/NNNNN.png (RGB), labels/NNNNN.png (palette PNG of Cityscapes labelIds, like the
real release), translated_images/NNNNN.png (RGB at half resolution, which the 'translated'
config accepts). The last pair has a label one row taller than its image, like the handful of
broken pairs in the real data, so the builder must skip it.
"""

import sys

from etils import epath
import numpy as np
from PIL import Image

from seat_jax import labels

# Raw labelIds written into the fake labels: mapped ones and unmapped ones (0, 1, 4, 34 -> 255).
FAKE_LABEL_IDS = (7, 8, 11, 26, 33, 0, 1, 4, 34)


def fake_label_ids(index: int, size_hw: tuple[int, int]) -> np.ndarray:
  """The raw labelId map of fake example `index`: FAKE_LABEL_IDS cycled over the pixels."""
  h, w = size_hw
  flat = (np.arange(h * w) + index) % len(FAKE_LABEL_IDS)
  return np.asarray(FAKE_LABEL_IDS, dtype=np.uint8)[flat].reshape(h, w)


def fake_image(index: int, size_hw: tuple[int, int]) -> np.ndarray:
  rng = np.random.default_rng(index)
  return rng.integers(0, 256, size=(*size_hw, 3), dtype=np.uint8)


def _palette_png(ids: np.ndarray, path: epath.Path) -> None:
  """Saves ids as a palette PNG with the Cityscapes colours, the real GTA5 label format."""
  image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
  palette = np.zeros((256, 3), dtype=np.uint8)
  palette[labels.TRAIN_ID_TO_LABEL_ID] = labels.CITYSCAPES_PALETTE
  image.putpalette(palette.tobytes())
  with path.open("wb") as f:
    image.save(f, format="PNG")


def make_fake_data(root, num_examples: int = 4, size_hw: tuple[int, int] = (8, 16),
                   num_mismatched: int = 1) -> dict[str, list[str]]:
  """Writes the fake dataset under `root`; returns the ids written, kept and mismatched.

  Example i has id f'{i + 1:05d}' and the label `fake_label_ids(i, size_hw)`.
  """
  root = epath.Path(root)
  for folder in ("images", "labels", "translated_images"):
    (root / folder).mkdir(parents=True, exist_ok=True)
  ids = [f"{i + 1:05d}" for i in range(num_examples)]
  mismatched = ids[num_examples - num_mismatched:]
  h, w = size_hw
  for i, example_id in enumerate(ids):
    image = fake_image(i, size_hw)
    label_hw = (h + 1, w) if example_id in mismatched else size_hw
    with (root / "images" / f"{example_id}.png").open("wb") as f:
      Image.fromarray(image).save(f, format="PNG")
    with (root / "translated_images" / f"{example_id}.png").open("wb") as f:
      Image.fromarray(255 - image).resize((w // 2, h // 2)).save(f, format="PNG")
    _palette_png(fake_label_ids(i, label_hw), root / "labels" / f"{example_id}.png")
  return dict(ids=ids, kept=[i for i in ids if i not in mismatched], mismatched=mismatched)


if __name__ == "__main__":
  print(make_fake_data(sys.argv[1]))
