"""Class tables and id mappings: the single source of truth for every label space.

Numbers follow the references (AdaptSegNet `info.json`, cityscapesScripts `labels.py`,
DADA `synthia.py`). All lookup tables (LUTs) are read-only uint8 arrays of length 256 indexed by
the raw id, so mapping a label image is one fancy-indexing step: `LUT[raw_ids]`.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

IGNORE_ID = 255

# The 19 Cityscapes evaluation classes, in train-id order.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

# Cityscapes labelIds (also what GTA5 label PNGs store) of the 19 classes, in train-id order.
_CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)

# SYNTHIA raw class ids (the R channel of GT/LABELS/*.png), from CRST `labels_synthia.py`.
SYNTHIA_RAW_IDS = {
    "void": 0, "sky": 1, "building": 2, "road": 3, "sidewalk": 4, "fence": 5,
    "vegetation": 6, "pole": 7, "car": 8, "traffic sign": 9, "pedestrian": 10,
    "bicycle": 11, "motorcycle": 12, "parking-slot": 13, "road-work": 14,
    "traffic light": 15, "terrain": 16, "rider": 17, "truck": 18, "bus": 19,
    "train": 20, "wall": 21, "lanemarking": 22,
}

# The 16-class protocol (ADVENT/DADA's SYNTHIA): the 19 classes minus terrain, truck and train.
_NOT_IN_SYNTHIA16 = ("terrain", "truck", "train")
SYNTHIA16_CLASSES = tuple(c for c in CITYSCAPES_CLASSES if c not in _NOT_IN_SYNTHIA16)
_TRAIN19_OF_16 = tuple(CITYSCAPES_CLASSES.index(c) for c in SYNTHIA16_CLASSES)
SYNTHIA16_PALETTE = CITYSCAPES_PALETTE[list(_TRAIN19_OF_16)]

# mIoU13 = mIoU16 without wall, fence and pole; indices in the 16-class space.
_NOT_IN_MIOU13 = ("wall", "fence", "pole")
MIOU13_OF_16 = tuple(i for i, c in enumerate(SYNTHIA16_CLASSES) if c not in _NOT_IN_MIOU13)
# The same means over a 19-output model (FDA trains SYNTHIA with 19 outputs and scores its
# 19-class IoU over these indices, `evaluation_multi.py`): indices in the 19-class space.
MIOU16_OF_19 = _TRAIN19_OF_16
MIOU13_OF_19 = tuple(i for i in _TRAIN19_OF_16 if CITYSCAPES_CLASSES[i] not in _NOT_IN_MIOU13)


def _lut(pairs: dict[int, int]) -> np.ndarray:
  """A read-only length-256 uint8 LUT that maps the given keys and sends the rest to 255."""
  lut = np.full(256, IGNORE_ID, dtype=np.uint8)
  for raw, mapped in pairs.items():
    lut[raw] = mapped
  lut.setflags(write=False)
  return lut


# Cityscapes/GTA5 labelId -> train id; every other id (0-6, 9, 10, 14-16, 18, 29, 30, ...) -> 255.
LABEL_ID_TO_TRAIN_ID = _lut({lid: tid for tid, lid in enumerate(_CITYSCAPES_LABEL_IDS)})
TRAIN_ID_TO_LABEL_ID = np.array(_CITYSCAPES_LABEL_IDS, dtype=np.uint8)
TRAIN_ID_TO_LABEL_ID.setflags(write=False)

# SYNTHIA raw id -> 16-class id (DADA's map). lanemarking (22) -> 255 as in DADA and FDA (CRST
# sends it to road instead); we follow DADA/FDA so our numbers compare with theirs. Void,
# parking-slot, road-work and the classes outside the 16 also go to 255.
_SYNTHIA_NAME_ALIASES = {"pedestrian": "person"}
SYNTHIA_RAW_TO_TRAIN16 = _lut({
    raw: SYNTHIA16_CLASSES.index(_SYNTHIA_NAME_ALIASES.get(name, name))
    for name, raw in SYNTHIA_RAW_IDS.items()
    if _SYNTHIA_NAME_ALIASES.get(name, name) in SYNTHIA16_CLASSES
})

# 19 train ids -> 16-class ids, for evaluating a SYNTHIA model on Cityscapes ground truth.
TRAIN19_TO_TRAIN16 = _lut({t19: t16 for t16, t19 in enumerate(_TRAIN19_OF_16)})
# 16-class ids -> 19 train ids, for training a 19-output model on SYNTHIA's stored labels (FDA).
TRAIN16_TO_TRAIN19 = _lut(dict(enumerate(_TRAIN19_OF_16)))

# Every raw id the tables know: Cityscapes labelIds 0..33 (GTA5 labels store the same ids; the
# license plate's -1 never appears in a labelId PNG) and SYNTHIA's 0..22. An id outside these is
# not in the dataset's table at all (e.g. 250 in a damaged GTA5 label); builders count them.
NUM_CITYSCAPES_LABEL_IDS = 34
KNOWN_CITYSCAPES_LABEL_IDS = tuple(range(NUM_CITYSCAPES_LABEL_IDS))
KNOWN_SYNTHIA_RAW_IDS = tuple(sorted(SYNTHIA_RAW_IDS.values()))

# synthia19: SYNTHIA -> Cityscapes with 19 outputs (FDA's SYNTHIA model): the Cityscapes classes,
# scored as mIoU13 / mIoU16 over the 19-class IoU (terrain, truck and train stay in the
# confusion matrix, as FDA's evaluation keeps them), plus mIoU19.
LABEL_SPACES = ("cityscapes19", "synthia16", "synthia19")


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """The classes a model predicts: names, colours, Cityscapes labelIds and the reported means."""
  name: str
  classes: tuple[str, ...]
  palette: np.ndarray  # [C, 3] uint8
  cityscapes_label_ids: np.ndarray  # [C] the Cityscapes labelId of each class
  # Reported means, headline first: metric name -> class indices (None = every class).
  subsets: dict[str, tuple[int, ...] | None]

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def headline(self) -> str:
    return next(iter(self.subsets))


def _synthia16_to_train19() -> np.ndarray:
  """Inverts TRAIN19_TO_TRAIN16 so 16-class predictions can be written as label ids."""
  inverse = np.full(len(SYNTHIA16_CLASSES), -1, np.int64)
  for train19, train16 in enumerate(TRAIN19_TO_TRAIN16[:len(CITYSCAPES_CLASSES)]):
    if train16 != IGNORE_ID:
      inverse[train16] = train19
  if (inverse < 0).any():
    raise ValueError("TRAIN19_TO_TRAIN16 does not cover every one of the 16 classes.")
  return inverse


def get_label_space(name: str) -> LabelSpace:
  """The label space named by config.data.label_space: 'cityscapes19' or 'synthia16'."""
  cityscapes_ids = np.asarray(TRAIN_ID_TO_LABEL_ID, np.int64)
  if name == "cityscapes19":
    return LabelSpace(
        name=name, classes=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE,
        cityscapes_label_ids=cityscapes_ids, subsets={"mIoU19": None})
  if name == "synthia16":
    return LabelSpace(
        name=name, classes=SYNTHIA16_CLASSES, palette=SYNTHIA16_PALETTE,
        cityscapes_label_ids=cityscapes_ids[_synthia16_to_train19()],
        # The paper reports 13 classes on SYNTHIA (section 4.1); mIoU16 is printed beside it.
        subsets={"mIoU13": MIOU13_OF_16, "mIoU16": None})
  if name == "synthia19":
    return LabelSpace(
        name=name, classes=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE,
        cityscapes_label_ids=cityscapes_ids,
        subsets={"mIoU13": MIOU13_OF_19, "mIoU16": MIOU16_OF_19, "mIoU19": None})
  raise ValueError(
      f"config.data.label_space must be one of {LABEL_SPACES}; got {name!r}. Use cityscapes19 "
      "for GTA5 -> Cityscapes and synthia16 for SYNTHIA -> Cityscapes (synthia19: FDA's "
      "19-output SYNTHIA model).")


def label_space_for(config) -> LabelSpace:
  """The config's label space, checked against the model's number of outputs."""
  space = get_label_space(config.data.label_space)
  if config.model.num_classes != space.num_classes:
    raise ValueError(
        f"config.model.num_classes is {config.model.num_classes} but config.data.label_space "
        f"{space.name!r} has {space.num_classes} classes. Set --config.model.num_classes="
        f"{space.num_classes} or choose the matching label space.")
  return space


def conversion_lut(stored: str, wanted: str) -> np.ndarray | None:
  """The LUT that maps labels stored in label space `stored` into `wanted` (None: the same).

  19 -> 16 (terrain/truck/train -> ignore) for a 16-class SYNTHIA model read on Cityscapes
  labels; 16 -> 19 for a 19-output SYNTHIA model (synthia19) read on SYNTHIA's stored labels,
  whose Cityscapes labels are already its ids.
  """
  if stored == wanted or (stored, wanted) == ("cityscapes19", "synthia19"):
    return None
  if (stored, wanted) == ("cityscapes19", "synthia16"):
    return TRAIN19_TO_TRAIN16
  if (stored, wanted) == ("synthia16", "synthia19"):
    return TRAIN16_TO_TRAIN19
  raise ValueError(f"labels stored as {stored!r} cannot be read as {wanted!r}; expected one of "
                   f"{LABEL_SPACES} with a conversion 'cityscapes19' -> 'synthia16'|'synthia19' "
                   "or 'synthia16' -> 'synthia19'.")


def colorize(train_ids: np.ndarray,
             palette: np.ndarray | Sequence = CITYSCAPES_PALETTE) -> np.ndarray:
  """Paints a train-id map [H, W] with a palette; 255 and any id outside the palette -> black."""
  palette = np.asarray(palette, dtype=np.uint8)
  ids = np.asarray(train_ids)
  if ids.ndim != 2:
    raise ValueError(f"colorize expects a 2-D [H, W] id map, got shape {ids.shape}.")
  lut = np.zeros((256, 3), dtype=np.uint8)
  lut[: len(palette)] = palette
  ids = ids.astype(np.int64)
  out_of_range = (ids < 0) | (ids > 255)
  colours = lut[np.clip(ids, 0, 255)]
  colours[out_of_range] = 0
  return colours
