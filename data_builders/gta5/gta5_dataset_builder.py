"""GTA5 ("Playing for Data", Richter et al. 2016): 24,966 synthetic street scenes, 19 classes.

Labels are PNGs of Cityscapes labelIds (palette PNGs: the palette index is the id). They are mapped
to the 19 train ids at build time (`seat_jax.labels.LABEL_ID_TO_TRAIN_ID`; all other ids -> 255),
so the stored 'label' is ready to train on.

Configs:
  original:   the game images from `images/`.
  translated: GTA5 images restyled as Cityscapes by CycleGAN (as in CyCADA/BDL), read from
              `translated_images/` with the same file names as `labels/`. A translated image may
              have another resolution than its label if the aspect ratio is the same (CycleGAN
              outputs are often rescaled; the input pipeline resizes image and label separately).
  original_1280x720, translated_1280x720: the same, stored at the paper's input size 1280x720
              (PIL bicubic images, nearest labels: exactly the resize training would do), so
              training decodes 2.2x fewer pixels (~11 ms less host CPU per example) and the
              device has nothing to resample. Disk: at most 46 % of the full-size PNG bytes
              (the pixel ratio; 37 % on photo-like fakes, benchmarks/RESULTS.md "Input
              pipeline"). Train with the source resize_hw (720, 1280), the presets' value.

Checks made before anything is written:
  * an image without a label or a label without an image is an error (a partly extracted
    archive would otherwise shrink the dataset silently);
  * a pair whose image and label sizes differ (a handful exist in the real GTA5 release) is
    skipped; the skipped ids are logged at the end of the build and stored in
    `builder.info.metadata['skipped']['train']` (the file metadata.json in the prepared dir);
  * a file PIL cannot read raises an error naming the file.
"""

import dataclasses

import tensorflow_datasets as tfds

from data_builders import common
from seat_jax import labels

_SOURCE = "https://download.visinf.tu-darmstadt.de/data/from_games/"
# The references' GTA5 input size (height, width): AdaptSegNet/ADVENT resize to 1280x720.
PAPER_HW = (720, 1280)
_LAYOUT = """\
  <manual_dir>/
    images/             00001.png ... 24966.png  (RGB, 1914x1052; from the 10 *_images.zip parts)
    labels/             00001.png ... 24966.png  (Cityscapes labelIds; from the *_labels.zip parts)
    translated_images/  00001.png ...            (only for --builder_config=translated: your
                                                  CycleGAN GTA5->Cityscapes images, same names)"""


@dataclasses.dataclass(eq=False)
class Gta5Config(tfds.core.BuilderConfig):
  """Which image folder to read; labels always come from `labels/`."""

  image_dir: str = "images"
  allow_rescaled_image: bool = False
  stored_hw: tuple[int, int] | None = None  # (height, width) to store at; None = as read


class Builder(tfds.core.GeneratorBasedBuilder):
  """GTA5 images with 19-class Cityscapes train-id labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 19 train ids, size-mismatched pairs skipped."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download the images and labels (10 parts each) from {_SOURCE}
  and extract all parts into one folder, so that --manual_dir points at:
{_LAYOUT}
  """
  BUILDER_CONFIGS = [
      Gta5Config(name="original", image_dir="images",
                 description="The original game images (images/)."),
      Gta5Config(name="translated", image_dir="translated_images", allow_rescaled_image=True,
                 description="CycleGAN GTA5->Cityscapes images (translated_images/)."),
      Gta5Config(name="original_1280x720", image_dir="images", stored_hw=PAPER_HW,
                 description="The original game images stored at 1280x720."),
      Gta5Config(name="translated_1280x720", image_dir="translated_images",
                 allow_rescaled_image=True, stored_hw=PAPER_HW,
                 description="CycleGAN GTA5->Cityscapes images stored at 1280x720."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(
        self, __doc__,
        homepage="https://download.visinf.tu-darmstadt.de/data/from_games/",
        citation="Richter, Vineet, Roth, Koltun. Playing for Data: Ground Truth from Computer "
                 "Games. ECCV 2016.")

  def _split_generators(self, dl_manager):
    config = self.builder_config
    root = common.manual_dir(dl_manager, "gta5", _LAYOUT, _SOURCE)
    common.require_dirs(root, [config.image_dir, "labels"], "gta5", _LAYOUT, _SOURCE)
    image_dir, label_dir = root / config.image_dir, root / "labels"
    triples = common.pair_files(
        common.list_files(image_dir, common.IMAGE_SUFFIXES),
        common.list_files(label_dir), image_dir, label_dir)
    kept, skipped = common.split_size_mismatches(
        triples, allow_rescaled_image=config.allow_rescaled_image)
    common.record_skipped(self.info, "train", skipped)
    return {"train": self._generate_examples(kept)}

  def _generate_examples(self, triples):
    return common.generate_paired_examples(
        triples, common.read_label_ids, CITYSCAPES_ID_TABLE, self.info, "train",
        stored_hw=self.builder_config.stored_hw)


# GTA5 labels store Cityscapes labelIds.
CITYSCAPES_ID_TABLE = common.IdTable(labels.LABEL_ID_TO_TRAIN_ID,
                                     labels.KNOWN_CITYSCAPES_LABEL_IDS)
