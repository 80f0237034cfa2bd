"""Writes a tiny fake SYNTHIA-RAND-CITYSCAPES folder in the real layout and formats (for tests).

  python -m data_builders.synthia.make_fake_data /tmp/fake_synthia

RGB/NNNNNNN.png are 8-bit RGB; translated_RGB/NNNNNNN.png (for the 'translated' config) are the
inverted images at half resolution (CycleGAN outputs are often rescaled); GT/LABELS/NNNNNNN.png are 16-bit RGB PNGs with the class id in R
and a fake instance id (up to 976, as in the real files) in G, written by `write_png16`, a small
PNG encoder independent of the reader under test. It cycles through all five PNG row filters
(None, Sub, Up, Average, Paeth), as libpng's adaptive filtering would, so a reader that undoes
a filter wrongly fails the round trip.
"""

import struct
import sys
import zlib

from etils import epath
import numpy as np
from PIL import Image

# Raw ids written into the fake labels: mapped ones and ignored ones (0 void, 13 parking-slot,
# 16 terrain, 22 lanemarking, 300 (not a SYNTHIA id; > 255)).
FAKE_RAW_IDS = (3, 4, 2, 21, 10, 8, 11, 1, 0, 13, 16, 22, 300)


def fake_raw_labels(index: int, size_hw: tuple[int, int], channels: int = 3) -> np.ndarray:
  """uint16 [H, W, C] of fake example `index`: ids cycle over pixels in R, instances in G."""
  h, w = size_hw
  flat = (np.arange(h * w) + index) % len(FAKE_RAW_IDS)
  out = np.zeros((h, w, channels), dtype=np.uint16)
  out[..., 0] = np.asarray(FAKE_RAW_IDS, dtype=np.uint16)[flat].reshape(h, w)
  out[..., 1] = (np.arange(h * w).reshape(h, w) * 37 + index) % 977
  if channels == 4:
    out[..., 3] = 65535
  return out


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  p = a + b - c
  pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
  return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_row(kind: int, row: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
  """PNG filter `kind` (0..4) of one row of bytes, given the previous (unfiltered) row."""
  x = row.astype(np.int32)
  up = previous.astype(np.int32)
  left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
  up_left = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
  predictor = {0: 0, 1: left, 2: up, 3: (left + up) // 2, 4: _paeth(left, up, up_left)}[kind]
  return ((x - predictor) % 256).astype(np.uint8)


def encode_png16(samples: np.ndarray) -> bytes:
  """PNG bytes of a uint16 [H, W, 3 or 4] array (RGB or RGBA, 16 bits per sample)."""
  if samples.dtype != np.uint16 or samples.ndim != 3 or samples.shape[2] not in (3, 4):
    raise ValueError(f"expected uint16 [H, W, 3|4], got {samples.dtype} {samples.shape}")
  h, w, c = samples.shape
  rows = samples.astype(">u2").reshape(h, w * c).view(np.uint8)  # big-endian bytes
  bpp = 2 * c
  previous = np.zeros(rows.shape[1], np.uint8)
  raw = bytearray()
  for y in range(h):
    kind = y % 5
    raw.append(kind)
    raw += _filter_row(kind, rows[y], previous, bpp).tobytes()
    previous = rows[y]
  color_type = 2 if c == 3 else 6
  header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
          + _chunk(b"IDAT", zlib.compress(bytes(raw))) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, payload: bytes) -> bytes:
  crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
  return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def write_png16(path, samples: np.ndarray) -> None:
  epath.Path(path).write_bytes(encode_png16(samples))


def make_fake_data(root, num_examples: int = 3, size_hw: tuple[int, int] = (8, 16)) -> list[str]:
  """Writes the fake dataset under `root`; returns the ids. Example i has id f'{i:07d}'."""
  root = epath.Path(root)
  (root / "RGB").mkdir(parents=True, exist_ok=True)
  (root / "translated_RGB").mkdir(parents=True, exist_ok=True)
  (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
  ids = [f"{i:07d}" for i in range(num_examples)]
  for i, example_id in enumerate(ids):
    image = np.random.default_rng(i).integers(0, 256, size=(*size_hw, 3), dtype=np.uint8)
    with (root / "RGB" / f"{example_id}.png").open("wb") as f:
      Image.fromarray(image).save(f, format="PNG")
    with (root / "translated_RGB" / f"{example_id}.png").open("wb") as f:
      Image.fromarray(255 - image).resize((size_hw[1] // 2, size_hw[0] // 2)).save(f, format="PNG")
    write_png16(root / "GT" / "LABELS" / f"{example_id}.png", fake_raw_labels(i, size_hw))
  return ids


if __name__ == "__main__":
  print(make_fake_data(sys.argv[1]))
