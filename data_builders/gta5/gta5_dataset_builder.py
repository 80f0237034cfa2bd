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
        triples, common.read_label_ids, CITYSCAPES_ID_TABLE, self.info, "train")


# GTA5 labels store Cityscapes labelIds.
CITYSCAPES_ID_TABLE = common.IdTable(labels.LABEL_ID_TO_TRAIN_ID,
                                     labels.KNOWN_CITYSCAPES_LABEL_IDS)
