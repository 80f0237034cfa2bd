"""Class tables against hand-copied references (REFERENCE 4.1) and cityscapesScripts."""

import numpy as np
import pytest

from seat_jax import labels

# AdaptSegNet info.json label2train, copied by hand from REFERENCE 4.1.
LABEL2TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
               25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# DADA synthia.py, 16 classes.
SYNTHIA_TO_16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11,
                 8: 12, 19: 13, 12: 14, 11: 15}
# FDA/BDL synthia_dataset.py, 19 classes.
SYNTHIA_TO_19 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11,
                 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def _expected_lut(pairs):
  return np.array([pairs.get(i, 255) for i in range(256)], dtype=np.uint8)


def test_label_id_to_train_id_matches_info_json():
  lut = labels.LABEL_ID_TO_TRAIN_ID
  assert lut.dtype == np.uint8 and lut.shape == (256,)
  np.testing.assert_array_equal(lut, _expected_lut(LABEL2TRAIN))
  np.testing.assert_array_equal(labels.TRAIN_ID_TO_LABEL_ID, sorted(LABEL2TRAIN))
  assert not lut.flags.writeable


def test_cityscapes_tables_match_cityscapesscripts():
  from cityscapesscripts.helpers import labels as cs  # the official definitions

  for label in cs.labels:
    if 0 <= label.id < 256:
      expected = label.trainId if 0 <= label.trainId < 19 else 255
      assert labels.LABEL_ID_TO_TRAIN_ID[label.id] == expected, label.name
    if 0 <= label.trainId < 19:
      assert labels.CITYSCAPES_CLASSES[label.trainId] == label.name
      assert tuple(labels.CITYSCAPES_PALETTE[label.trainId]) == label.color


def test_synthia_to_16_matches_dada_with_lanemarking_ignored():
  np.testing.assert_array_equal(labels.SYNTHIA_RAW_TO_TRAIN16, _expected_lut(SYNTHIA_TO_16))
  assert labels.SYNTHIA_RAW_TO_TRAIN16[labels.SYNTHIA_RAW_IDS["lanemarking"]] == 255


def test_train19_to_train16_agrees_with_both_synthia_maps():
  lut = labels.TRAIN19_TO_TRAIN16
  for name in ("terrain", "truck", "train"):
    assert lut[labels.CITYSCAPES_CLASSES.index(name)] == 255
  assert lut[255] == 255 and lut[19] == 255
  # Going raw -> 19 -> 16 must equal raw -> 16 for every SYNTHIA id.
  for raw in range(256):
    via19 = lut[SYNTHIA_TO_19[raw]] if raw in SYNTHIA_TO_19 else 255
    assert via19 == labels.SYNTHIA_RAW_TO_TRAIN16[raw], raw


def test_synthia16_classes_palette_and_miou13():
  assert len(labels.SYNTHIA16_CLASSES) == 16
  assert labels.SYNTHIA16_CLASSES[9] == "sky" and labels.SYNTHIA16_CLASSES[15] == "bicycle"
  assert tuple(labels.SYNTHIA16_PALETTE[12]) == (0, 0, 142)  # car
  assert labels.MIOU13_OF_16 == (0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)


def test_colorize_paints_ids_and_blacks_out_ignore_and_unknown():
  ids = np.array([[0, 13, 255], [18, 19, 10]], dtype=np.uint8)
  out = labels.colorize(ids)
  assert out.shape == (2, 3, 3) and out.dtype == np.uint8
  assert tuple(out[0, 0]) == (128, 64, 128) and tuple(out[0, 1]) == (0, 0, 142)
  assert tuple(out[0, 2]) == (0, 0, 0) and tuple(out[1, 1]) == (0, 0, 0)
  assert tuple(out[1, 0]) == (119, 11, 32)
  out16 = labels.colorize(np.array([[15, 16]]), labels.SYNTHIA16_PALETTE)
  assert tuple(out16[0, 0]) == (119, 11, 32) and tuple(out16[0, 1]) == (0, 0, 0)


def test_label_space_classes():
  space = labels.get_label_space("synthia16")
  assert space.classes == labels.SYNTHIA16_CLASSES and space.palette.shape == (16, 3)
  assert labels.get_label_space("cityscapes19").classes == labels.CITYSCAPES_CLASSES
  with pytest.raises(ValueError, match="cityscapes19"):
    labels.get_label_space("pascal")
