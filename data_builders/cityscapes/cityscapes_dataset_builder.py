"""Cityscapes (fine annotations), the target domain: splits 'train' (2,975) and 'validation' (500).

Reads the extracted `leftImg8bit/` and `gtFine/` folders (not the zips) and maps the
`*_gtFine_labelIds.png` ids to the 19 train ids at build time
(`seat_jax.labels.LABEL_ID_TO_TRAIN_ID`; every id outside the 19 classes -> 255). The example
id is the file stem without its suffix, e.g. 'aachen_000000_000019', which is also the name
stage-2 pseudo-labels are saved under. The 'test' split is not built: its labels are withheld.

Named `cityscapes` like TFDS's own Cityscapes builder: importing this module registers ours
under that name, so use `seat_jax.datasets.get_builder('cityscapes', ...)`, which imports it
first. (TFDS loads its own builder lazily, only when the name is not registered yet.)
"""

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


class Builder(tfds.core.GeneratorBasedBuilder):
  """Cityscapes images with 19-class train-id labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: gtFine labelIds mapped to 19 train ids."}
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
      generators[split] = self._generate_examples(kept, split)
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

  def _generate_examples(self, triples, split):
    return common.generate_paired_examples(
        triples, common.read_label_ids, ID_TABLE, self.info, split)
