"""SYNTHIA-RAND-CITYSCAPES: 9,400 synthetic street scenes (1280x760), 16-class protocol.

The label files GT/LABELS/*.png are 16-bit PNGs with 3 or 4 channels: the class id is in the R
channel (channel 0 in RGB order; OpenCV, which reads BGR, sees it last) and another channel
holds instance ids. PIL decodes such files to 8 bits by keeping each sample's high byte, which
loses the ids, so `read_png16` asks PIL's PNG decoder twice for the same file, once for the high
and once for the low byte of every sample, and joins them: exact 16-bit values at C speed with
no extra dependency.

Raw ids are mapped with `seat_jax.labels.SYNTHIA_RAW_TO_TRAIN16` to the 16 classes of the
ADVENT/DADA protocol; lanemarking (22), void, parking-slot, road-work and
terrain/truck/train become 255. A label that is not a 16-bit multi-channel PNG (for example one
of the 8-bit "parsed" or "mapped to Cityscapes" copies that other repos distribute) is refused:
its values would be other ids.

Configs:
  original:   the rendered images from `RGB/` (the 1.0.0 data).
  translated: SYNTHIA images restyled as Cityscapes (BDL's CycleGAN "SYNTHIA as CityScapes
              (DeepLab)" set, which differential treatment/SIM trains on), read from
              `translated_RGB/` with the same file names as `GT/LABELS/`. The user supplies them,
              as for gta5's translated config; an image at another resolution than its label is
              kept when the aspect ratio is the same (the input pipeline resizes both).

No pre-resized config: SYNTHIA is stored at 1280x760, already the references' input size, so
training neither resizes it nor decodes more pixels than it uses.
"""

import dataclasses
import io
import struct

from etils import epath
import numpy as np
from PIL import Image, ImageFile
import tensorflow_datasets as tfds

from data_builders import common
from seat_jax import labels

_SOURCE = "https://synthia-dataset.net (SYNTHIA-RAND-CITYSCAPES, file SYNTHIA_RAND_CITYSCAPES.rar)"
_LAYOUT = """\
  <manual_dir>/             (the extracted RAND_CITYSCAPES/ folder)
    RGB/          0000000.png ... 0009399.png  (RGB, 1280x760)
    GT/LABELS/    0000000.png ... 0009399.png  (16-bit multi-channel PNG, class id in R)
    translated_RGB/  0000000.png ...           (only for --builder_config=translated: your
                                                CycleGAN SYNTHIA->Cityscapes images, same names)
    (GT/COLOR/ and Depth/ may be present; they are not read)"""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_MODE_OF_COLOR_TYPE = {2: "RGB", 6: "RGBA"}


def png_header(data: bytes) -> tuple[int, int, int, int]:
  """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
  if len(data) < 29 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
    raise ValueError("not a PNG file (bad signature or no IHDR chunk)")
  width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
  return width, height, bit_depth, color_type


def _describe(bit_depth: int, color_type: int) -> str:
  return f"{bit_depth}-bit {_COLOR_TYPES.get(color_type, f'colour type {color_type}')}"


def read_png16(path: epath.Path) -> np.ndarray:
  """Exact samples of a 16-bit RGB or RGBA PNG as uint16 [H, W, 3 or 4].

  Raises common.DataError for any other kind of PNG, naming what was found.
  """
  data = path.read_bytes()
  try:
    _, _, bit_depth, color_type = png_header(data)
  except ValueError as e:
    raise common.DataError(f"Cannot read {path}: {e}.") from None
  if bit_depth != 16 or color_type not in _MODE_OF_COLOR_TYPE:
    raise common.DataError(
        f"{path}: expected a SYNTHIA label, a 16-bit multi-channel (RGB or RGBA) PNG with the "
        f"class id in the R channel; found: {_describe(bit_depth, color_type)} PNG. Labels "
        "converted to 8 bits (e.g. parsed_LABELS/ or synthia_mapped_to_cityscapes/) hold other "
        "ids; point --manual_dir at the original RAND_CITYSCAPES folder with GT/LABELS/.")
  mode = _MODE_OF_COLOR_TYPE[color_type]
  try:
    high = _decode_bytes_of_samples(data, mode, f"{mode};16B")
    low = _decode_bytes_of_samples(data, mode, f"{mode};16L")
  except (OSError, SyntaxError, ValueError) as e:
    raise common.DataError(
        f"Cannot read {path}: {type(e).__name__}: {e}. The file is corrupt or truncated; "
        "extract it again from the downloaded archive.") from None
  return (high.astype(np.uint16) << 8) | low


def _decode_bytes_of_samples(data: bytes, mode: str, rawmode: str) -> np.ndarray:
  """Decodes a 16-bit PNG with PIL's PNG decoder, keeping one byte of each sample.

  PNG stores samples big-endian. PIL's unpacker 'RGB;16B' keeps the first byte of each 2-byte
  sample (the high byte) and 'RGB;16L' keeps the second (for big-endian data, the low byte).
  Both unpack 48 (64) bits per pixel, so the PNG row filters are undone correctly.
  """
  image = Image.open(io.BytesIO(data))
  if image.mode != mode or len(image.tile) != 1:
    raise ValueError(f"unexpected PIL decoding setup (mode {image.mode}, {len(image.tile)} tiles)")
  codec, extents, offset, args = image.tile[0]
  args = (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode
  image.tile = [ImageFile._Tile(codec, extents, offset, args)]  # pylint: disable=protected-access
  image.load()
  return np.asarray(image)


def read_class_ids(path: epath.Path) -> np.ndarray:
  """The raw SYNTHIA class ids (uint16 [H, W], the R channel) of a label file."""
  return read_png16(path)[..., 0]


ID_TABLE = common.IdTable(labels.SYNTHIA_RAW_TO_TRAIN16, labels.KNOWN_SYNTHIA_RAW_IDS)


def _check_label_format(path: epath.Path) -> None:
  """Fails fast, before any writing, when a label is not the 16-bit multi-channel format."""
  with path.open("rb") as f:
    head = f.read(29)
  try:
    _, _, bit_depth, color_type = png_header(head)
  except ValueError as e:
    raise common.DataError(f"Cannot read {path}: {e}.") from None
  if bit_depth != 16 or color_type not in _MODE_OF_COLOR_TYPE:
    read_png16(path)  # raises the full explanation


@dataclasses.dataclass(eq=False)
class SynthiaConfig(tfds.core.BuilderConfig):
  """Which image folder to read; labels always come from `GT/LABELS/`."""

  image_dir: str = "RGB"
  allow_rescaled_image: bool = False


class Builder(tfds.core.GeneratorBasedBuilder):
  """SYNTHIA-RAND-CITYSCAPES images with 16-class labels (one split: 'train')."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: 16 classes, lanemarking -> 255.",
      "1.1.0": "Configs: original (the 1.0.0 data) and translated (translated_RGB/).",
  }
  BUILDER_CONFIGS = [
      SynthiaConfig(name="original", image_dir="RGB",
                    description="The rendered images (RGB/)."),
      SynthiaConfig(name="translated", image_dir="translated_RGB", allow_rescaled_image=True,
                    description="CycleGAN SYNTHIA->Cityscapes images (translated_RGB/)."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download SYNTHIA-RAND-CITYSCAPES from {_SOURCE},
  extract it and point --manual_dir at the RAND_CITYSCAPES folder:
{_LAYOUT}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(
        self, __doc__,
        homepage="https://synthia-dataset.net",
        citation="Ros, Sellart, Materzynska, Vazquez, Lopez. The SYNTHIA Dataset: A Large "
                 "Collection of Synthetic Images for Semantic Segmentation of Urban Scenes. "
                 "CVPR 2016.")

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = common.manual_dir(dl_manager, "synthia", _LAYOUT, _SOURCE)
    common.require_dirs(root, [config.image_dir, "GT/LABELS"], "synthia", _LAYOUT, _SOURCE)
    image_dir, label_dir = root / config.image_dir, root / "GT" / "LABELS"
    triples = common.pair_files(
        common.list_files(image_dir, common.IMAGE_SUFFIXES),
        common.list_files(label_dir), image_dir, label_dir)
    for _, _, label_path in triples:
      _check_label_format(label_path)
    kept, skipped = common.split_size_mismatches(
        triples, allow_rescaled_image=config.allow_rescaled_image)
    common.record_skipped(self.info, "train", skipped)
    return {"train": self._generate_examples(kept)}

  def _generate_examples(self, triples):
    return common.generate_paired_examples(triples, read_class_ids, ID_TABLE, self.info, "train")
