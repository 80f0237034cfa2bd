"""Input pipeline (host path): preprocessing values, alignment, determinism, state, eval, errors.

Most tests inject tiny in-memory data sources; the last ones build the real synthetic_streets
builder (when it exists) into a temporary data_dir.
"""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import helpers
from seat_jax import config_defaults
from seat_jax import config_validation
from seat_jax import datasets
from seat_jax import errors
from seat_jax import fda
from seat_jax import input_pipeline as ip

MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)


ListSource = helpers.ListSource


def _constant_examples(n, hw=(20, 40), labels=True):
  """Example i is a constant colour (i, 2i, 3i) + 10 with label i: identifiable after any crop."""
  examples = []
  for i in range(n):
    image = np.empty(hw + (3,), np.uint8)
    image[...] = (10 + i, 10 + 2 * i, 10 + 3 * i)
    example = {"image": image, "id": f"ex_{i:03d}"}
    if labels:
      example["label"] = np.full(hw + (1,), i, np.uint8)
    examples.append(example)
  return ListSource(examples)


def _example_index(bgr_minus_mean):
  """Which constant example produced this [h, w, 3] model input."""
  rgb = bgr_minus_mean[..., ::-1] + MEAN_BGR[::-1]
  return int(round(float(rgb[..., 0].mean()))) - 10


def _config(batch_size=2, **data):
  config = config_defaults.get_config()
  config.train.batch_size = batch_size
  config.data.source.update(name="synthetic_streets", builder_config="source",
                            resize_hw=(24, 48), crop_hw=(16, 32))
  config.data.target.update(name="synthetic_streets", builder_config="target",
                            resize_hw=(16, 32), crop_hw=())
  config.data.val.update(name="synthetic_streets", builder_config="target", split="validation",
                         resize_hw=(16, 32))
  config.data.prefetch_buffer_size = 1
  # These tests check the host path's values; tests/test_device_preprocessing.py checks that the
  # device path (the default) gives the same batches.
  config.data.preprocess_on = "host"
  for key, value in data.items():
    config.data[key] = value
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Shapes and values.


def test_train_batches_have_the_contract_shapes_and_dtypes():
  config = _config()
  source = ip.create_train_iterator(config, "source", seed=0, data_source=_constant_examples(5))
  batch = next(source)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (2, 16, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (2, 16, 32) and batch["label"].dtype == np.int32
  target = ip.create_train_iterator(config, "target", seed=0,
                                    data_source=_constant_examples(5, hw=(32, 64), labels=False))
  batch = next(target)
  assert set(batch) == {"image"}  # UDA: no target labels in stage 1
  assert batch["image"].shape == (2, 16, 32, 3) and batch["image"].dtype == np.float32


def test_bgr_order_and_caffe_mean_are_exact_on_a_constant_image():
  image = np.empty((20, 40, 3), np.uint8)
  image[...] = (10, 20, 30)  # R, G, B
  expected = np.array([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434], np.float32)
  out = ip.preprocess_image(image, (13, 29))  # bicubic resize of a constant stays constant
  assert out.shape == (13, 29, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))
  config = _config()
  source = ListSource([{"image": image, "label": np.zeros((20, 40, 1), np.uint8), "id": "c"}])
  batch = next(ip.create_train_iterator(config, "source", seed=0, data_source=source))
  np.testing.assert_array_equal(batch["image"], np.broadcast_to(expected, batch["image"].shape))


def test_preprocess_image_is_pil_bicubic():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
  resized = np.asarray(Image.fromarray(image).resize((20, 12), Image.Resampling.BICUBIC))
  expected = resized[..., ::-1].astype(np.float32) - MEAN_BGR
  np.testing.assert_allclose(ip.preprocess_image(image, (12, 20)), expected, atol=1e-5)


def test_labels_are_resized_with_nearest_and_never_mix_ids():
  rng = np.random.default_rng(1)
  label = rng.choice(np.array([0, 18, 255], np.uint8), size=(30, 50))
  expected = np.asarray(Image.fromarray(label).resize((80, 48), Image.Resampling.NEAREST))
  np.testing.assert_array_equal(ip.resize_label(label, (48, 80)), expected)
  data = ListSource([{"image": np.zeros((30, 50, 3), np.uint8), "label": label[..., None],
                      "id": "n"}])
  batch = next(ip.create_train_iterator(_config(batch_size=1), "source", seed=0,
                                        data_source=data))
  assert set(np.unique(batch["label"])) == {0, 18, 255}


def _painted_examples(n, hw=(40, 80)):
  """Labels in 20x20 blocks whose value grows left to right; image R = 12 * label."""
  yy, xx = np.mgrid[: hw[0], : hw[1]]
  examples = []
  for i in range(n):
    label = ((yy // 20 + i) % 2) * 8 + xx // 20  # 0..3 or 8..11 in each row band
    image = np.stack([12 * label, 255 - 12 * label, np.full_like(label, 7 * i)], -1)
    examples.append({"image": image.astype(np.uint8), "label": label[..., None].astype(np.uint8),
                     "id": f"p{i}"})
  return ListSource(examples)


def test_image_and_label_stay_aligned_through_resize_crop_and_flip():
  config = _config(batch_size=4, flip=True)
  config.data.source.update(resize_hw=(60, 120), crop_hw=(40, 80))
  iterator = ip.create_train_iterator(config, "source", seed=3, data_source=_painted_examples(6))
  orientations = set()
  for batch in _take(iterator, 4):
    red = batch["image"][..., 2] + MEAN_BGR[2]  # BGR -> the R channel
    for red_i, label_i in zip(red, batch["label"]):
      # Bicubic blurs block edges; compare where the label is constant in a 9x9 neighbourhood
      # that lies inside the crop (just outside it there may be an unseen edge).
      windows = np.lib.stride_tricks.sliding_window_view(label_i, (9, 9))
      interior = windows.min(axis=(-2, -1)) == windows.max(axis=(-2, -1))
      red_i, label_i = red_i[4:-4, 4:-4], label_i[4:-4, 4:-4]
      assert interior.mean() > 0.3
      np.testing.assert_allclose(red_i[interior], 12.0 * label_i[interior], atol=1e-3)
      # Columns of one row band: values grow left to right unless the pair was flipped.
      row = label_i[interior.any(axis=1)][0] % 8
      orientations.add("flipped" if row[0] > row[-1] else "kept" if row[0] < row[-1] else "flat")
  assert {"flipped", "kept"} <= orientations


def test_same_seed_same_batches_and_different_seed_different():
  config = _config(flip=True)
  data = _painted_examples(6)
  first = _take(ip.create_train_iterator(config, "source", seed=5, data_source=data), 4)
  again = _take(ip.create_train_iterator(config, "source", seed=5, data_source=data), 4)
  other = _take(ip.create_train_iterator(config, "source", seed=6, data_source=data), 4)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other))


def test_domains_get_independent_seeds():
  assert ip.domain_seeds(0, "source") != ip.domain_seeds(0, "target")
  assert ip.domain_seeds(0, "source") != ip.domain_seeds(1, "source")
  assert ip.domain_seeds(7, "target") == ip.domain_seeds(7, "target")


def test_stream_repeats_with_a_new_shuffle_each_epoch():
  config = _config(batch_size=1)
  iterator = ip.create_train_iterator(config, "source", seed=0, data_source=_constant_examples(8))
  order = [_example_index(batch["image"][0]) for batch in _take(iterator, 24)]
  epochs = [order[0:8], order[8:16], order[16:24]]
  for epoch in epochs:
    assert sorted(epoch) == list(range(8))
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_restored_iterator_continues_where_it_stopped():
  config = _config(flip=True)
  data = _painted_examples(5)  # 5 examples, batch 2: the 3rd batch crosses an epoch boundary
  iterator = ip.create_train_iterator(config, "source", seed=1, data_source=data)
  _take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))  # JSON round trip, as in a checkpoint
  expected = _take(iterator, 3)
  restored = ip.create_train_iterator(config, "source", seed=1, data_source=data)
  restored.set_state(state)
  for a, b in zip(expected, _take(restored, 3)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_crop_larger_than_resize_is_a_clear_error():
  config = _config()
  config.data.source.crop_hw = (16, 64)
  with pytest.raises(ValueError, match=r"crop_hw=\(16, 64\) must fit inside resize_hw=\(24, 48\)"):
    ip.create_train_iterator(config, "source", seed=0, data_source=_constant_examples(2))


def test_each_host_reads_its_own_slice():
  transform = ip.TrainTransform(dataset="t", resize_hw=(20, 40))
  seen = {}
  for process_index in (0, 1):
    ds = ip.make_train_dataset(_constant_examples(6), transform, batch_size=1, seed=0,
                               domain="source", process_index=process_index, process_count=2)
    seen[process_index] = {_example_index(ds[i]["image"][0]) for i in range(6)}
  assert seen == {0: {0, 2, 4}, 1: {1, 3, 5}}
  with pytest.raises(ValueError, match="not divisible by the 2 processes"):
    ip.local_batch_size(3, 2)


def test_fda_in_the_pipeline_uses_a_target_image_before_mean_subtraction():
  config = _config(batch_size=1, fda_beta=0.1)
  config.data.source.update(resize_hw=(16, 32), crop_hw=())
  source = _painted_examples(1, hw=(16, 32))
  rng = np.random.default_rng(0)
  target_image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
  targets = ListSource([{"image": target_image, "id": "t0"}])
  batch = next(ip.create_train_iterator(config, "source", seed=0, data_source=source,
                                        fda_data_source=targets))
  styled = fda.fda_source_to_target(source[0]["image"], ip.resize_image(target_image, (16, 32)),
                                    0.1)
  np.testing.assert_allclose(batch["image"][0], ip.to_model_input(styled), atol=1e-4)
  plain = ip.to_model_input(source[0]["image"])
  assert np.abs(batch["image"][0] - plain).max() > 1.0
  np.testing.assert_array_equal(batch["label"][0], source[0]["label"][..., 0])


def test_worker_processes_give_the_same_batches():
  data = _painted_examples(4)
  config = _config(flip=True)
  expected = _take(ip.create_train_iterator(config, "source", seed=2, data_source=data), 3)
  config.data.worker_count = 1
  iterator = ip.create_train_iterator(config, "source", seed=2, data_source=data)
  try:
    got = _take(iterator, 3)
    for a, b in zip(expected, got):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
    json.dumps(iterator.get_state())
  finally:
    iterator.close()


# ---------------------------------------------------------------------------------------------
# Evaluation stream and label spaces.


def test_eval_stream_has_full_resolution_labels_and_model_size_images():
  config = _config()
  data = _painted_examples(3, hw=(40, 80))
  stream = ip.create_eval_iterator(config, data_source=data)
  examples = list(stream)
  assert [e["id"] for e in examples] == ["p0", "p1", "p2"]  # fixed order
  for example, raw in zip(examples, data._examples):
    assert example["image"].shape == (1, 16, 32, 3) and example["image"].dtype == np.float32
    assert example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["label"], raw["label"][None, ..., 0])
    np.testing.assert_array_equal(example["raw_image"], raw["image"][None])
    np.testing.assert_allclose(example["image"][0], ip.preprocess_image(raw["image"], (16, 32)))
  assert [e["id"] for e in stream] == ["p0", "p1", "p2"]  # re-iterable, same order
  assert len(list(ip.create_eval_iterator(config, data_source=data, max_examples=2))) == 2
  assert ip.num_eval_examples(config, data_source=data, max_examples=2) == 2
  config.data.val.max_examples = 1
  assert ip.num_eval_examples(config, data_source=data) == 1


_LABEL19 = [*range(19), 255]
_LABEL16 = [*range(16), 255, 255, 255, 255]


@pytest.mark.parametrize("label_space,dataset,stored,expected", [
    # 19 -> 16: terrain (9), truck (14), train (16) are not SYNTHIA classes; the rest close up.
    ("synthia16", "cityscapes", _LABEL19,
     [0, 1, 2, 3, 4, 5, 6, 7, 8, 255, 9, 10, 11, 12, 255, 13, 255, 14, 15, 255]),
    ("synthia16", "synthia", _LABEL19, _LABEL19),  # SYNTHIA already stores 16 ids: as stored
    # FDA's 19-output SYNTHIA model: SYNTHIA's 16 stored ids become the 19 train ids (its
    # data/synthia_dataset.py maps to them); Cityscapes labels are read as they are.
    ("synthia19", "synthia", _LABEL16,
     [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18, 255, 255, 255, 255]),
    ("synthia19", "cityscapes", _LABEL16, _LABEL16),
])
def test_label_space_maps_the_stored_labels(label_space, dataset, stored, expected):
  config = _config(label_space=label_space)
  config.data.val.name = dataset
  label = np.asarray(stored, np.uint8).reshape(4, 5, 1)
  data = ListSource([{"image": np.zeros((4, 5, 3), np.uint8), "label": label, "id": "x"}])
  got = next(iter(ip.create_eval_iterator(config, data_source=data)))["label"].ravel()
  np.testing.assert_array_equal(got, expected)


def test_eval_label_hw_scores_validation_labels_at_that_size():
  """DACS and Toldo et al. score nearest-resized 512x1024 labels: config.eval.label_hw, for the
  validation split only (pseudo-labelling and ranking read other splits at full size)."""
  config = _config()
  label = np.arange(8 * 16, dtype=np.uint8).reshape(8, 16, 1) % 19
  data = ListSource([{"image": np.zeros((8, 16, 3), np.uint8), "label": label, "id": "x"}])
  full = next(iter(ip.create_eval_iterator(config, data_source=data)))
  assert full["label"].shape == (1, 8, 16)
  config.eval.label_hw = (4, 8)
  small = next(iter(ip.create_eval_iterator(config, data_source=data)))
  expected = np.asarray(Image.fromarray(label[..., 0]).resize((8, 4), Image.Resampling.NEAREST))
  np.testing.assert_array_equal(small["label"][0], expected)
  assert small["raw_image"].shape == (1, 8, 16, 3)
  other = next(iter(ip.create_eval_iterator(config, config.data.target, data_source=data)))
  assert other["label"].shape == (1, 8, 16)


def test_unknown_label_space_is_a_clear_error():
  with pytest.raises(ValueError, match="label_space='voc'.*'cityscapes'"):
    ip.label_lut("voc", "cityscapes")


# ---------------------------------------------------------------------------------------------
# Pseudo-labels and read-time errors.


def test_pseudo_labels_are_read_by_example_id(tmp_path):
  data = _constant_examples(3, hw=(32, 64), labels=False)
  for i in range(3):
    pseudo = np.full((16, 32), 255, np.uint8)
    pseudo[:, : 10 + i] = i + 1  # a distinct pattern per id
    Image.fromarray(pseudo).save(tmp_path / f"ex_{i:03d}.png")
  config = _config(batch_size=1)
  config.data.target.pseudo_label_dir = str(tmp_path)
  iterator = ip.create_train_iterator(config, "target", seed=0, data_source=data)
  for batch in _take(iterator, 3):
    i = _example_index(batch["image"][0])
    expected = np.full((16, 32), 255, np.int32)
    expected[:, : 10 + i] = i + 1
    assert batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"][0], expected)


def test_missing_pseudo_label_names_the_file_and_directory(tmp_path):
  data = _constant_examples(1, hw=(32, 64), labels=False)
  config = _config(batch_size=1)
  config.data.target.pseudo_label_dir = str(tmp_path)
  iterator = ip.create_train_iterator(config, "target", seed=0, data_source=data)
  with pytest.raises(FileNotFoundError) as error:
    next(iterator)
  message = str(error.value)
  assert os.path.join(str(tmp_path), "ex_000.png") in message
  assert "pseudo_label_dir" in message and str(tmp_path) in message
  config.data.target.pseudo_label_dir = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope.*not a directory"):
    ip.create_train_iterator(config, "target", seed=0, data_source=data)


def test_image_label_size_mismatch_names_the_example():
  data = ListSource([{"image": np.zeros((20, 40, 3), np.uint8),
                      "label": np.zeros((20, 41, 1), np.uint8), "id": b"bad_example_7"}])
  config = _config(batch_size=1)
  with pytest.raises(ValueError, match=r"'bad_example_7'.*20x40.*20x41"):
    next(ip.create_train_iterator(config, "source", seed=0, data_source=data))
  with pytest.raises(ValueError, match="'bad_example_7'"):
    list(ip.create_eval_iterator(config, data_source=data))


def test_to_global_batch_shards_over_the_data_axis():
  sharding = helpers.data_sharding()
  batch = {"image": np.ones((2, 4, 6, 3), np.float32), "label": np.zeros((2, 4, 6), np.int32),
           "id": np.array(["a", "b"])}
  out = ip.to_global_batch(batch, sharding)
  assert set(out) == {"image", "label"}  # strings stay on the host
  for key in out:
    assert isinstance(out[key], jax.Array)
    assert out[key].shape == batch[key].shape
    assert out[key].dtype == batch[key].dtype
    assert out[key].sharding == sharding
    assert out[key].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(out[key]), batch[key])


# ---------------------------------------------------------------------------------------------
# Integration with the real builders (synthetic_data_dir comes from conftest.py).


def test_synthetic_streets_through_the_real_builder(synthetic_data_dir):
  config = _config()
  config.data.data_dir = synthetic_data_dir
  for split_config in (config.data.target, config.data.val):
    split_config.builder_config = "source"
  source = next(ip.create_train_iterator(config, "source", seed=0))
  target = next(ip.create_train_iterator(config, "target", seed=0))
  assert source["image"].shape == (2, 16, 32, 3) and source["label"].shape == (2, 16, 32)
  assert set(np.unique(source["label"])) <= set(range(19)) | {255}
  assert set(target) == {"image"} and target["image"].shape == (2, 16, 32, 3)
  examples = list(ip.create_eval_iterator(config, max_examples=2))
  assert len(examples) == 2 and isinstance(examples[0]["id"], str)
  height, width = examples[0]["raw_image"].shape[1:3]
  assert examples[0]["label"].shape == (1, height, width)
  assert examples[0]["image"].shape == (1, 16, 32, 3)
  assert ip.num_eval_examples(config) >= 2


def test_unprepared_gta5_through_the_real_get_builder(tmp_path):
  config = _config()
  config.data.data_dir = str(tmp_path)  # empty: nothing prepared here
  config.data.source.update(name="gta5", builder_config="original")
  with pytest.raises(datasets.DatasetNotPreparedError) as error:
    ip.create_train_iterator(config, "source", seed=0)
  message = str(error.value)
  assert "'gta5'" in message and str(tmp_path) in message
  assert (f"python -m seat_jax.prepare_data gta5 --builder_config=original "
          f"--manual_dir=<folder with the raw gta5 files> --data_dir={tmp_path}") in message
  assert datasets.prepare_command("synthetic_streets", "target", "/d") == (
      "python -m seat_jax.prepare_data synthetic_streets --builder_config=target --data_dir=/d")


# ---------------------------------------------------------------------------------------------
# mmseg's cat_max_ratio crop check (DAFormer's source crops).


def test_cat_max_ratio_keeps_crops_like_mmseg_random_crop():
  """Kept: two or more classes and the largest under the ratio of the labelled pixels."""
  check = ip.CategoryRatioCheck(0.75)
  window = np.zeros((4, 5), np.uint8)
  assert not check.accepts(window)  # one class
  window[:, 4] = 1  # 16 : 4 -> 0.8
  assert not check.accepts(window)
  window[0, 3] = 1  # 15 : 5 -> 0.75, not below it
  assert not check.accepts(window)
  window[1, 3] = 1  # 14 : 6 -> 0.7
  assert check.accepts(window)
  window[2:, :3] = 255  # 255 does not count: 8 : 6 -> 0.57 ...
  assert check.accepts(window)
  window[:, 3:] = 255  # ... and 6 : 0 is one class
  assert not check.accepts(window)
  assert not check.accepts(np.full((4, 5), 255, np.uint8))


class _ScriptedRng:
  """An rng whose integer draws are given in advance (the crop's top and left in turn)."""

  def __init__(self, values):
    self.values, self.calls = list(values), 0

  def integers(self, low, high):
    value = self.values.pop(0)
    assert low <= value < high
    self.calls += 1
    return value


def _cat_max_transform(ratio, lut=None, **kw):
  check = ip.CategoryRatioCheck(ratio, lut) if ratio < 1 else None
  return ip.TrainTransform(dataset="t", resize_hw=(20, 40), crop_hw=(20, 20), cat_max=check,
                           **kw)


def test_cat_max_ratio_redraws_a_crop_at_most_ten_times():
  """Class 1 fills columns 0-9 of a 20x40 label, class 0 the rest: a 20x20 crop at `left` keeps
  class 0 below 0.75 only for left < 5. mmseg checks the first draw and up to 9 redraws and
  keeps the 11th draw unchecked."""
  label = np.zeros((20, 40), np.uint8)
  label[:, :10] = 1
  transform = _cat_max_transform(0.75)
  rng = _ScriptedRng([0, 15, 0, 12, 0, 4, 0, 0])
  assert transform.draw(rng, label)[:2] == (0, 4) and rng.calls == 6
  rng = _ScriptedRng([0, 5] * 10 + [0, 20, 0, 0])  # 5: 0.75 exactly, rejected
  assert transform.draw(rng, label)[:2] == (0, 20) and rng.calls == 22
  rng = _ScriptedRng([0, 20, 0, 0])  # off (ratio 1): one draw, whatever the label
  assert _cat_max_transform(1.0).draw(rng, label)[:2] == (0, 20) and rng.calls == 2


def test_cat_max_ratio_counts_the_label_space_on_both_paths():
  """The check sees the stored label resized to resize_hw and mapped by the label space's LUT:
  stored ids 7 and 8 are two classes under one LUT and one class under another. Host and device
  paths take the same crop."""
  stored = np.full((10, 20, 1), 7, np.uint8)
  stored[:, :5] = 8  # at resize_hw (20, 40): columns 0-9
  example = {"image": np.zeros((10, 20, 3), np.uint8), "label": stored, "id": "a"}
  two, one = np.full(256, 255, np.uint8), np.full(256, 255, np.uint8)
  two[[7, 8]] = (0, 1)
  one[[7, 8]] = 0
  script = [0, 0] + [0, 12] * 9 + [0, 3] + [0, 0]
  rng = _ScriptedRng(script)
  out = _cat_max_transform(0.75, two, label_lut=two).random_map(example, rng)
  assert rng.calls == 2 and out["label"].shape == (20, 20)
  assert (out["label"][:, :10] == 1).all() and (out["label"][:, 10:] == 0).all()
  for transform in (_cat_max_transform(0.75, one, label_lut=one),
                    ip.RawTrainTransform(dataset="t", resize_hw=(20, 40), crop_hw=(20, 20),
                                         cat_max=ip.CategoryRatioCheck(0.75, one),
                                         image_hw=(10, 20), label_hw=(10, 20))):
    rng = _ScriptedRng(script)
    out = transform.random_map(example, rng)
    assert rng.calls == 22  # every crop holds one class: the 11th draw stands
    if "crop" in out:
      assert out["crop"].tolist() == [0, 3]
    else:
      assert (out["label"] == 0).all()


def test_cat_max_ratio_config_applies_to_source_crops_only():
  config = _config()
  assert ip._category_ratio_check(config, "source", "") is None  # the default 1.0: off
  config.data.source.cat_max_ratio = 0.75
  check = ip._category_ratio_check(config, "source", "")
  assert check.max_ratio == 0.75
  assert ip._category_ratio_check(config, "target", "") is None
  with pytest.raises(errors.UsageError, match="pseudo_label_dir"):
    ip._category_ratio_check(config, "source", "/some/labels")
  for bad in (0.0, 1.5):
    config.data.source.cat_max_ratio = bad
    with pytest.raises(config_validation.ConfigError, match="cat_max_ratio"):
      config_validation.validate(config)
  config.data.source.cat_max_ratio = 0.75
  config.data.source.pseudo_label_dir = "/some/labels"
  with pytest.raises(config_validation.ConfigError, match="combined with config.data.source.pse"):
    config_validation.validate(config)
