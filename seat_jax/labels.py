"""Class tables and id mappings: the single source of truth for every label space.

Numbers follow REFERENCE section 4.1 (AdaptSegNet `info.json`, cityscapesScripts `labels.py`,
DADA `synthia.py`). All lookup tables (LUTs) are read-only uint8 arrays of length 256 indexed by
the raw id, so mapping a label image is one fancy-indexing step: `LUT[raw_ids]`.
"""

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

# The 16-class protocol (REFERENCE 4.2 (a)): the 19 classes minus terrain, truck and train.
_NOT_IN_SYNTHIA16 = ("terrain", "truck", "train")
SYNTHIA16_CLASSES = tuple(c for c in CITYSCAPES_CLASSES if c not in _NOT_IN_SYNTHIA16)
_TRAIN19_OF_16 = tuple(CITYSCAPES_CLASSES.index(c) for c in SYNTHIA16_CLASSES)
SYNTHIA16_PALETTE = CITYSCAPES_PALETTE[list(_TRAIN19_OF_16)]

# mIoU13 = mIoU16 without wall, fence and pole; indices in the 16-class space.
MIOU13_OF_16 = tuple(
    i for i, c in enumerate(SYNTHIA16_CLASSES) if c not in ("wall", "fence", "pole"))


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

_LABEL_SPACES = {
    "cityscapes19": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    "synthia16": (SYNTHIA16_CLASSES, SYNTHIA16_PALETTE),
}


def label_space_classes(name: str) -> tuple[tuple[str, ...], np.ndarray]:
  """(class names, palette) of a label space: 'cityscapes19' or 'synthia16'."""
  if name not in _LABEL_SPACES:
    raise ValueError(
        f"Unknown label space {name!r}; expected one of {sorted(_LABEL_SPACES)}.")
  return _LABEL_SPACES[name]


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
