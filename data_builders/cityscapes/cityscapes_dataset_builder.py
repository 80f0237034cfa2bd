"""Cityscapes (fine annotations), the target domain: splits 'train' (2,975) and 'validation' (500).

Reads the extracted `leftImg8bit/` and `gtFine/` folders (not the zips) and maps the
`*_gtFine_labelIds.png` ids to the 19 train ids at build time
(`seat_jax.labels.LABEL_ID_TO_TRAIN_ID`; every id outside the 19 classes -> 255). The example
id is the file stem without its suffix, e.g. 'aachen_000000_000019', which is also the name
stage-2 pseudo-labels are saved under. The 'test' split is not built: its labels are withheld.

Configs:
  full (default):  images and labels as released (2048x1024).
  train_1024x512:  the train split stored at the paper's input size 1024x512 (PIL bicubic images,
                   nearest labels: exactly the resize training would do), so training decodes 4x
                   fewer pixels (~16 ms less host CPU per example); the validation split stays
                   full size, because evaluation scores at full label resolution, so this config
                   serves data.val too. Disk: train images at most 25 % of their full-size bytes
                   (~1.6 GB instead of ~6.5 GB), about a third of the full build with validation
                   (benchmarks/RESULTS.md, "Input pipeline").
Before 1.1.0 the builder had no configs and was stored in <data_dir>/cityscapes/1.0.0/; the
same data is now the `full` config (<data_dir>/cityscapes/full/1.1.0/), so rebuild it there.

Named `cityscapes` like TFDS's own Cityscapes builder: importing this module registers ours
under that name, so use `seat_jax.datasets.get_builder('cityscapes', ...)`, which imports it
first. (TFDS loads its own builder lazily, only when the name is not registered yet.)
"""

import dataclasses

import tensorflow_datasets as tfds

from data_builders import common
from seat_jax import labels

_SOURCE = ("https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip and "
           "gtFine_trainvaltest.zip; registration required)")
_LAYOUT = """\
  <manual_dir>/
    leftImg8bit/
      train/<city>/<city>_<seq>_<frame>_leftImg8bit.png   (2,975 images, 18 cities)
      val/<city>/<city>_<seq>_<frame>_leftImg8bit.png     (500 images, 3 cities)
    gtFine/
      train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
      val/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    (gtFine's *_color.png, *_instanceIds.png, *_polygons.json and test/ are not read)"""

_SPLITS = {"train": "train", "validation": "val"}
_IMAGE_SUFFIX = "_leftImg8bit"
_LABEL_SUFFIX = "_gtFine_labelIds"


ID_TABLE = common.IdTable(labels.LABEL_ID_TO_TRAIN_ID, labels.KNOWN_CITYSCAPES_LABEL_IDS)


@dataclasses.dataclass(eq=False)
class CityscapesConfig(tfds.core.BuilderConfig):
  """The size the train split is stored at; validation is always stored as released."""

  train_hw: tuple[int, int] | None = None  # (height, width); None = as released


class Builder(tfds.core.GeneratorBasedBuilder):
  """Cityscapes images with 19-class train-id labels."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: gtFine labelIds mapped to 19 train ids.",
      "1.1.0": "Configs: full (the 1.0.0 data) and train_1024x512 (train split pre-resized).",
  }
  BUILDER_CONFIGS = [
      CityscapesConfig(name="full", description="Images and labels as released (2048x1024)."),
      CityscapesConfig(name="train_1024x512", train_hw=(512, 1024),
                       description="The train split stored at 1024x512; validation as released."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download {_SOURCE}, unzip both into one folder and point --manual_dir at it:
{_LAYOUT}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return common.segmentation_info(
        self, __doc__,
        homepage="https://www.cityscapes-dataset.com",
        citation="Cordts et al. The Cityscapes Dataset for Semantic Urban Scene Understanding. "
                 "CVPR 2016.")

  def _split_generators(self, dl_manager):
    root = common.manual_dir(dl_manager, "cityscapes", _LAYOUT, _SOURCE)
    folders = [f"{top}/{split}" for top in ("leftImg8bit", "gtFine") for split in _SPLITS.values()]
    common.require_dirs(root, folders, "cityscapes", _LAYOUT, _SOURCE)
    generators = {}
    for split, folder in _SPLITS.items():
      triples = self._split_triples(root, folder)
      kept, skipped = common.split_size_mismatches(triples)
      common.record_skipped(self.info, split, skipped)
      stored_hw = self.builder_config.train_hw if split == "train" else None
      generators[split] = self._generate_examples(kept, split, stored_hw)
    return generators

  def _split_triples(self, root, folder: str):
    """(id, image, label) of every city of one split folder ('train' or 'val')."""
    image_root, label_root = root / "leftImg8bit" / folder, root / "gtFine" / folder
    cities = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    label_cities = sorted(p.name for p in label_root.iterdir() if p.is_dir())
    if cities != label_cities:
      raise common.DataError(
          f"cityscapes: the city folders differ between {image_root} ({cities}) and "
          f"{label_root} ({label_cities}); extract both zips completely.")
    triples = []
    for city in cities:
      image_dir, label_dir = image_root / city, label_root / city
      triples += common.pair_files(
          common.list_files(image_dir, strip_suffix=_IMAGE_SUFFIX),
          common.list_files(label_dir, strip_suffix=_LABEL_SUFFIX), image_dir, label_dir)
    if not triples:
      raise common.DataError(f"cityscapes: no images found under {image_root}.")
    return triples

  def _generate_examples(self, triples, split, stored_hw=None):
    return common.generate_paired_examples(
        triples, common.read_label_ids, ID_TABLE, self.info, split, stored_hw=stored_hw)
