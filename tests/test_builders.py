"""GTA5, SYNTHIA and Cityscapes builders on tiny fake copies of the real layouts and formats.

Also the pre-resized configs (gta5 *_1280x720, cityscapes train_1024x512): they must store
exactly the resize that training does, so that training on them sees the same batches.

Each dataset is built once per module into a tmp dir with `seat_jax.datasets.prepare` and
read back with `tfds.data_source`; the expected train ids come from hand-written id tables,
not from seat_jax.labels.
"""

import shutil

from etils import epath
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_builders import common
from data_builders.cityscapes import make_fake_data as fake_cityscapes
from data_builders.gta5 import make_fake_data as fake_gta5
from data_builders.synthia import make_fake_data as fake_synthia
from data_builders.synthia import synthia_dataset_builder
from seat_jax import config_defaults
from seat_jax import datasets
from seat_jax import device_preprocessing
from seat_jax import input_pipeline
from seat_jax import prepare_data

# Hand-written expectations for the ids the fake data uses (REFERENCE 4.1).
CITYSCAPES_EXPECTED = {7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18,
                       0: 255, 1: 255, 4: 255, 29: 255, 30: 255, 34: 255}
SYNTHIA_EXPECTED = {3: 0, 4: 1, 2: 2, 21: 3, 10: 10, 8: 12, 11: 15, 1: 9,
                    0: 255, 13: 255, 16: 255, 22: 255, 300: 255}


def _expected(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
  return np.vectorize(table.__getitem__)(raw.astype(np.int64)).astype(np.uint8)


def _by_id(source) -> dict[str, dict]:
  examples = [source[i] for i in range(len(source))]
  return {e["id"].decode() if isinstance(e["id"], bytes) else e["id"]: e for e in examples}


# ------------------------------------------------------------------------------------ GTA5


@pytest.fixture(scope="module")
def gta5(tmp_path_factory):
  root = tmp_path_factory.mktemp("gta5")
  written = fake_gta5.make_fake_data(root / "manual")
  data_dir = root / "data"
  for config in ("original", "translated"):
    datasets.prepare("gta5", str(data_dir), str(root / "manual"), config)
  return root, data_dir, written


def test_gta5_counts_ids_and_train_ids(gta5):
  _, data_dir, written = gta5
  source = tfds.data_source("gta5/original", split="train", data_dir=str(data_dir), download=False)
  examples = _by_id(source)
  assert sorted(examples) == written["kept"] == ["00001", "00002", "00003"]
  for index, example_id in enumerate(written["ids"][:3]):
    example = examples[example_id]
    label = example["label"]
    assert label.shape == (8, 16, 1) and label.dtype == np.uint8
    raw = fake_gta5.fake_label_ids(index, (8, 16))
    np.testing.assert_array_equal(label[..., 0], _expected(raw, CITYSCAPES_EXPECTED))
    np.testing.assert_array_equal(example["image"], fake_gta5.fake_image(index, (8, 16)))
  # Several ids at chosen pixels of example 0: labelIds 7, 8, 11, 26, 33, 0, 1, 4, 34.
  assert examples["00001"]["label"][0, :9, 0].tolist() == [0, 1, 2, 13, 18, 255, 255, 255, 255]


def test_gta5_size_mismatch_is_skipped_and_reported(gta5, capsys):
  _, data_dir, written = gta5
  builder = datasets.get_builder("gta5", str(data_dir), "original")  # reloaded from disk
  skipped = builder.info.metadata["skipped"]["train"]
  assert [s["id"] for s in skipped] == written["mismatched"] == ["00004"]
  assert skipped[0]["image_size_wh"] == [16, 8] and skipped[0]["label_size_wh"] == [16, 9]
  assert (builder.data_path / "metadata.json").exists()
  report = datasets.summary(builder)
  assert "train: 3 examples" in report and "skipped 1 pairs" in report and "00004" in report


def test_gta5_label_ids_outside_the_table_are_counted_per_file(gta5):
  _, data_dir, written = gta5
  builder = datasets.get_builder("gta5", str(data_dir), "original")
  files = builder.info.metadata["unknown_label_ids"]["train"]
  reported = {f["id"]: f["pixels_by_id"] for f in files}
  expected = {}
  for index, example_id in enumerate(written["ids"][:3]):
    raw = fake_gta5.fake_label_ids(index, (8, 16))
    values, counts = np.unique(raw[raw > 33], return_counts=True)  # Cityscapes labelIds: 0..33
    if values.size:
      expected[example_id] = {str(v): int(n) for v, n in zip(values, counts)}
  assert expected and reported == expected
  report = datasets.summary(builder)
  assert "hold ids outside the dataset's table" in report
  assert f"00001: id 34: {expected['00001']['34']} px" in report


def test_gta5_translated_uses_other_image_folder(gta5):
  _, data_dir, _ = gta5
  builder = datasets.get_builder("gta5", str(data_dir), "translated")
  source = builder.as_data_source("train")
  assert len(source) == 3
  example = _by_id(source)["00002"]
  assert example["image"].shape == (4, 8, 3)  # the rescaled translated image
  assert example["label"].shape == (8, 16, 1)
  expected = 255 - np.asarray(Image.fromarray(fake_gta5.fake_image(1, (8, 16))).resize((8, 4)))
  np.testing.assert_array_equal(example["image"], expected)


def _pil_resize(array: np.ndarray, hw, resample) -> np.ndarray:
  return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), resample))


@pytest.fixture(scope="module")
def gta5_resized(gta5):
  """The data_dir holding the fake GTA5 built with both 1280x720 configs."""
  root = gta5[0]
  data_dir = root / "data_1280x720"
  for config in ("original_1280x720", "translated_1280x720"):
    datasets.prepare("gta5", str(data_dir), str(root / "manual"), config)
  return data_dir


def test_gta5_pre_resized_configs_store_the_training_resize(gta5, gta5_resized):
  _, _, written = gta5
  data_dir = gta5_resized
  original = _by_id(datasets.get_builder("gta5", str(data_dir), "original_1280x720")
                    .as_data_source("train"))
  translated = _by_id(datasets.get_builder("gta5", str(data_dir), "translated_1280x720")
                      .as_data_source("train"))
  assert sorted(original) == sorted(translated) == written["kept"]  # the same pairs skipped
  for index, example_id in enumerate(written["ids"][:3]):
    image = fake_gta5.fake_image(index, (8, 16))
    label = _expected(fake_gta5.fake_label_ids(index, (8, 16)), CITYSCAPES_EXPECTED)
    expected_label = _pil_resize(label, (720, 1280), Image.Resampling.NEAREST)
    for examples, stored in ((original, image),
                             (translated, _pil_resize(255 - image, (4, 8),
                                                      Image.Resampling.BICUBIC))):
      example = examples[example_id]
      np.testing.assert_array_equal(
          example["image"], _pil_resize(stored, (720, 1280), Image.Resampling.BICUBIC))
      np.testing.assert_array_equal(example["label"][..., 0], expected_label)


def test_training_on_a_pre_resized_config_sees_the_same_batches(gta5, gta5_resized):
  """Host path on full-size data == host path and device path on the pre-resized data."""
  root = gta5[0]
  config = config_defaults.get_config()
  config.train.batch_size = 1
  config.data.flip = True
  config.data.source.update(name="gta5", resize_hw=(720, 1280), crop_hw=(512, 1024))
  batches = {}
  for builder_config, data_dir, where in (("original", root / "data", "host"),
                                          ("original_1280x720", gta5_resized, "host"),
                                          ("original_1280x720", gta5_resized, "device")):
    config.data.source.builder_config = builder_config
    config.data.data_dir = str(data_dir)
    config.data.preprocess_on = where
    iterator = input_pipeline.create_train_iterator(config, "source", seed=1)
    batches[builder_config, where] = [next(iterator) for _ in range(2)]
  spec = input_pipeline.device_spec(config, "source")
  for full, resized, raw in zip(*batches.values()):
    device = device_preprocessing.preprocess(raw, spec)
    for batch in (resized, device):
      np.testing.assert_array_equal(np.asarray(batch["image"]), full["image"])
      np.testing.assert_array_equal(np.asarray(batch["label"]), full["label"])


def _copy_manual(gta5, tmp_path) -> epath.Path:
  manual = tmp_path / "manual"
  shutil.copytree(gta5[0] / "manual", manual)
  return manual


def test_gta5_missing_manual_dir_names_source(tmp_path):
  with pytest.raises(common.DataError,
                     match=r"(?s)manual directory is missing.*download\.visinf\.tu-darmstadt\.de"
                           r".*images/.*labels/"):
    datasets.prepare("gta5", str(tmp_path / "data"), str(tmp_path / "nowhere"))


def test_gta5_wrong_layout_names_expected_paths(gta5, tmp_path):
  manual = _copy_manual(gta5, tmp_path)
  shutil.rmtree(manual / "labels")
  with pytest.raises(common.DataError, match=r"(?s)wrong layout.*missing .*labels"):
    datasets.prepare("gta5", str(tmp_path / "data"), str(manual))


def test_gta5_data_one_level_down_gets_a_hint(gta5, tmp_path):
  outer = tmp_path / "outer"
  shutil.copytree(gta5[0] / "manual", outer / "GTA5")
  with pytest.raises(common.DataError, match=r"try --manual_dir=.*outer/GTA5"):
    datasets.prepare("gta5", str(tmp_path / "data"), str(outer))


def test_gta5_unmatched_files_are_an_error(gta5, tmp_path):
  manual = _copy_manual(gta5, tmp_path)
  (manual / "labels" / "00002.png").unlink()
  with pytest.raises(common.DataError, match=r"1 images in .* have no label.*00002\.png"):
    datasets.prepare("gta5", str(tmp_path / "data"), str(manual))


def test_gta5_corrupt_label_names_the_file(gta5, tmp_path):
  manual = _copy_manual(gta5, tmp_path)
  (manual / "labels" / "00002.png").write_bytes(b"not a png at all")
  with pytest.raises(common.DataError, match=r"Cannot read .*labels/00002\.png"):
    datasets.prepare("gta5", str(tmp_path / "data"), str(manual))


def test_gta5_truncated_image_names_the_file(gta5, tmp_path):
  manual = _copy_manual(gta5, tmp_path)
  path = manual / "images" / "00003.png"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
  with pytest.raises(common.DataError, match=r"Cannot read .*images/00003\.png"):
    datasets.prepare("gta5", str(tmp_path / "data"), str(manual))


def test_gta5_colour_label_is_refused(gta5, tmp_path):
  manual = _copy_manual(gta5, tmp_path)
  Image.new("RGB", (16, 8)).save(manual / "labels" / "00001.png")
  with pytest.raises(common.DataError, match=r"00001\.png: expected a single-channel"):
    datasets.prepare("gta5", str(tmp_path / "data"), str(manual))


def test_cli_prints_counts_and_skipped_report(gta5, tmp_path, capsys):
  manual = gta5[0] / "manual"
  code = prepare_data.main(["gta5", f"--manual_dir={manual}", f"--data_dir={tmp_path}"])
  out = capsys.readouterr().out
  assert code == 0
  assert "Prepared gta5/original" in out and "train: 3 examples" in out and "00004" in out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
  code = prepare_data.main(["cityscapes", f"--manual_dir={tmp_path / 'x'}",
                            f"--data_dir={tmp_path}"])
  assert code == 2
  assert "cityscapes-dataset.com" in capsys.readouterr().err


def test_get_builder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"python -m seat_jax.prepare_data synthia "
                                              r"--builder_config=original "
                                              r"--manual_dir=<folder with the raw synthia files>"):
    datasets.get_builder("synthia", str(tmp_path))
  with pytest.raises(ValueError, match=r"expected one of \['original', 'translated', "
                                       r"'original_1280x720', 'translated_1280x720'\]"):
    datasets.get_builder("gta5", str(tmp_path), "cyclegan")
  with pytest.raises(ValueError, match=r"expected one of \['original', 'translated'\]"):
    datasets.get_builder("synthia", str(tmp_path), "fine")
  with pytest.raises(ValueError, match="Unknown dataset 'kitti'"):
    datasets.get_builder("kitti", str(tmp_path))


# --------------------------------------------------------------------------------- SYNTHIA


@pytest.fixture(scope="module")
def synthia(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthia")
  ids = fake_synthia.make_fake_data(root / "manual")
  data_dir = root / "data"
  datasets.prepare("synthia", str(data_dir), str(root / "manual"))
  return root, data_dir, ids


def test_synthia_counts_and_16_class_ids(synthia):
  _, data_dir, ids = synthia
  source = tfds.data_source("synthia", split="train", data_dir=str(data_dir), download=False)
  examples = _by_id(source)
  assert sorted(examples) == ids == ["0000000", "0000001", "0000002"]
  for index, example_id in enumerate(ids):
    raw = fake_synthia.fake_raw_labels(index, (8, 16))[..., 0]
    label = examples[example_id]["label"][..., 0]
    np.testing.assert_array_equal(label, _expected(raw, SYNTHIA_EXPECTED))
  # Chosen pixels of example 0: road, sidewalk, building, wall, person, car, bicycle, sky,
  # then void, parking-slot, terrain, lanemarking and an id > 255, all ignored.
  assert examples["0000000"]["label"][0, :13, 0].tolist() == [
      0, 1, 2, 3, 10, 12, 15, 9, 255, 255, 255, 255, 255]


def test_synthia_raw_ids_outside_the_table_are_counted(synthia):
  _, data_dir, ids = synthia
  builder = datasets.get_builder("synthia", str(data_dir))
  files = builder.info.metadata["unknown_label_ids"]["train"]
  reported = {f["id"]: f["pixels_by_id"] for f in files}
  expected = {}
  for index, example_id in enumerate(ids):
    raw = fake_synthia.fake_raw_labels(index, (8, 16))[..., 0]
    values, counts = np.unique(raw[raw > 22], return_counts=True)  # SYNTHIA raw ids: 0..22
    if values.size:
      expected[example_id] = {str(v): int(n) for v, n in zip(values, counts)}
  assert expected and reported == expected


def test_synthia_translated_uses_other_image_folder(synthia):
  root, _, ids = synthia
  data_dir = root / "data_translated"
  datasets.prepare("synthia", str(data_dir), str(root / "manual"), "translated")
  source = _by_id(datasets.get_builder("synthia", str(data_dir), "translated")
                  .as_data_source("train"))
  original = _by_id(datasets.get_builder("synthia", str(root / "data")).as_data_source("train"))
  assert sorted(source) == ids
  for index, example_id in enumerate(ids):
    example = source[example_id]
    assert example["image"].shape == (4, 8, 3)  # the rescaled translated image
    image = np.random.default_rng(index).integers(0, 256, size=(8, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        example["image"], np.asarray(Image.fromarray(255 - image).resize((8, 4))))
    np.testing.assert_array_equal(example["label"], original[example_id]["label"])


def test_synthia_translated_without_its_folder_names_it(synthia, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(synthia[0] / "manual", manual)
  shutil.rmtree(manual / "translated_RGB")
  with pytest.raises(common.DataError, match=r"(?s)missing .*translated_RGB.*your\s+CycleGAN"):
    datasets.prepare("synthia", str(tmp_path / "data"), str(manual), "translated")


def test_synthia_build_from_before_the_configs_gets_a_hint(tmp_path):
  (tmp_path / "synthia" / "1.0.0").mkdir(parents=True)
  with pytest.raises(datasets.DatasetNotPreparedError,
                     match=r"(?s)builder_config 'original'.*synthia/1\.0\.0 holds a build"):
    datasets.get_builder("synthia", str(tmp_path))


@pytest.mark.parametrize("channels", [3, 4])
def test_png16_round_trip(tmp_path, channels):
  rng = np.random.default_rng(channels)
  samples = rng.integers(0, 65536, size=(23, 37, channels)).astype(np.uint16)
  samples[..., 0] = rng.integers(0, 23, size=(23, 37))
  samples[:3] = 65535  # saturated rows exercise the filters' wrap-around
  fake_synthia.write_png16(tmp_path / "x.png", samples)
  read = synthia_dataset_builder.read_png16(epath.Path(tmp_path / "x.png"))
  assert read.dtype == np.uint16
  np.testing.assert_array_equal(read, samples)


@pytest.mark.parametrize("mode, found", [("L", "8-bit greyscale"), ("RGB", "8-bit RGB"),
                                         ("I;16", "16-bit greyscale")])
def test_synthia_refuses_labels_that_are_not_16bit_multichannel(synthia, tmp_path, mode, found):
  manual = tmp_path / "manual"
  shutil.copytree(synthia[0] / "manual", manual)
  Image.new(mode, (16, 8)).save(manual / "GT" / "LABELS" / "0000001.png")
  with pytest.raises(common.DataError,
                     match=rf"(?s)0000001\.png: expected a SYNTHIA label, a 16-bit multi-channel"
                           rf".*found: {found} PNG"):
    datasets.prepare("synthia", str(tmp_path / "data"), str(manual))


def test_synthia_wrong_layout(tmp_path):
  (tmp_path / "manual" / "RGB").mkdir(parents=True)
  with pytest.raises(common.DataError,
                     match=r"(?s)missing .*GT/LABELS.*synthia-dataset\.net"):
    datasets.prepare("synthia", str(tmp_path / "data"), str(tmp_path / "manual"))


# ------------------------------------------------------------------------------ Cityscapes


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
  root = tmp_path_factory.mktemp("cityscapes")
  written = fake_cityscapes.make_fake_data(root / "manual")
  data_dir = root / "data"
  datasets.prepare("cityscapes", str(data_dir), str(root / "manual"))
  return root, data_dir, written


def test_cityscapes_splits_ids_and_train_ids(cityscapes):
  _, data_dir, written = cityscapes
  builder = datasets.get_builder("cityscapes", str(data_dir))
  for split, folder in (("train", "train"), ("validation", "val")):
    source = builder.as_data_source(split)
    examples = _by_id(source)
    assert sorted(examples) == sorted(written[folder])
    for example_id, index in written[folder].items():
      raw = fake_cityscapes.fake_label_ids(index, (8, 16))
      np.testing.assert_array_equal(examples[example_id]["label"][..., 0],
                                    _expected(raw, CITYSCAPES_EXPECTED))
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.splits["validation"].num_examples == 2
  assert "aachen_000000_000001" in written["train"]


def test_cityscapes_train_1024x512_resizes_train_only(cityscapes):
  root, _, written = cityscapes
  data_dir = root / "data"
  datasets.prepare("cityscapes", str(data_dir), str(root / "manual"), "train_1024x512")
  builder = datasets.get_builder("cityscapes", str(data_dir), "train_1024x512")
  train = _by_id(builder.as_data_source("train"))
  for example_id, index in written["train"].items():
    image = np.random.default_rng(index).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    label = _expected(fake_cityscapes.fake_label_ids(index, (8, 16)), CITYSCAPES_EXPECTED)
    np.testing.assert_array_equal(train[example_id]["image"],
                                  _pil_resize(image, (512, 1024), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(train[example_id]["label"][..., 0],
                                  _pil_resize(label, (512, 1024), Image.Resampling.NEAREST))
  validation = builder.as_data_source("validation")  # full size: evaluation needs full labels
  assert validation[0]["image"].shape == (8, 16, 3) and validation[0]["label"].shape == (8, 16, 1)


def test_cityscapes_build_from_before_the_configs_gets_a_hint(tmp_path):
  (tmp_path / "cityscapes" / "1.0.0").mkdir(parents=True)
  with pytest.raises(datasets.DatasetNotPreparedError,
                     match=r"(?s)builder_config 'full'.*cityscapes/1\.0\.0 holds a build from "
                           r"before 'cityscapes' had builder configs"):
    datasets.get_builder("cityscapes", str(tmp_path))


def test_cityscapes_data_source_by_name(cityscapes):
  _, data_dir, _ = cityscapes
  source = tfds.data_source("cityscapes/full", split="validation", data_dir=str(data_dir),
                            download=False)
  example = source[0]
  assert len(source) == 2 and example["image"].shape == (8, 16, 3)


def test_cityscapes_missing_val_folder(cityscapes, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(cityscapes[0] / "manual", manual)
  shutil.rmtree(manual / "gtFine" / "val")
  with pytest.raises(common.DataError, match=r"(?s)missing .*gtFine/val.*leftImg8bit/"):
    datasets.prepare("cityscapes", str(tmp_path / "data"), str(manual))

