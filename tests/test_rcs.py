"""Rare class sampling: the probabilities, the class pixel counts and their cache, the sampler.

References are written here in NumPy from DAFormer's definitions (uda_dataset.py
`get_rcs_class_probs`, gta.py's per-image stats), not with seat_jax.rcs's helpers.
"""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import helpers
from seat_jax import config_defaults
from seat_jax import errors
from seat_jax import input_pipeline as ip
from seat_jax import labels
from seat_jax import rcs

MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)


def _softmax_probs(counts, temperature):
  """DAFormer's p_c, by hand: f_c over all pixels of present classes, softmax((1 - f) / T)."""
  totals = counts.sum(axis=0).astype(np.float64)
  present = [c for c in range(counts.shape[1]) if totals[c] > 0]
  freq = totals[present] / totals[present].sum()
  weights = np.exp((1 - freq) / temperature)
  return present, weights / weights.sum()


# A split whose class 18 is rare (image 5 only), class 7 is in images 2 and 3, the rest road.
# Image i's label: class 0 everywhere except a left block of class CLASS_OF[i] WIDTH_OF[i] wide.
CLASS_OF = (0, 0, 7, 7, 0, 18)
WIDTH_OF = (0, 0, 20, 6, 0, 12)
HW = (20, 40)


def _examples(n=6, with_label=True, png=False):
  """Image i is a constant colour (i, 2i, 3i) + 10, so a crop of it tells which example it is."""
  out = []
  for i in range(n):
    image = np.empty(HW + (3,), np.uint8)
    image[...] = (10 + i, 10 + 2 * i, 10 + 3 * i)
    example = {"image": image, "id": f"ex_{i}"}
    if with_label:
      label = np.zeros(HW, np.uint8)
      label[:, :WIDTH_OF[i % 6]] = CLASS_OF[i % 6]
      if png:
        buffer = io.BytesIO()
        Image.fromarray(label).save(buffer, format="PNG")
        example["label"] = buffer.getvalue()
      else:
        example["label"] = label[..., None]
    out.append(example)
  return helpers.ListSource(out)


def _example_index(bgr_minus_mean):
  rgb = bgr_minus_mean[..., ::-1] + MEAN_BGR[::-1]
  return int(round(float(rgb[..., 0].mean()))) - 10


def _config(temperature=0.1, min_pixels=50, batch_size=2, **source):
  config = config_defaults.get_config()
  config.train.batch_size = batch_size
  config.data.source.update(name="synthetic_streets", builder_config="source",
                            resize_hw=HW, crop_hw=(10, 20))
  config.data.source.rcs_temperature = temperature
  config.data.source.rcs_min_pixels = min_pixels
  config.data.source.update(**source)
  config.data.prefetch_buffer_size = 1
  config.data.preprocess_on = "host"
  config.data.flip = True
  return config


# ---------------------------------------------------------------------------------------------
# Probabilities.


def test_probabilities_follow_the_formula():
  # Two classes with f = 0.75, 0.25 at T = 0.5: logits 0.5, 1.5, so p = (1, e) / (1 + e).
  counts = np.array([[300, 0], [0, 100]])
  classes, probs = rcs.class_probabilities(counts, 0.5)
  np.testing.assert_array_equal(classes, [0, 1])
  np.testing.assert_allclose(probs, [1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-12)
  # A wider case with an absent class (3): it gets no probability.
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 5000, (7, 6)) * (rng.random((7, 6)) < 0.6)
  counts[:, 3] = 0
  for temperature in (0.01, 0.1, 1.0):
    present, expected = _softmax_probs(counts, temperature)
    classes, probs = rcs.class_probabilities(counts, temperature)
    np.testing.assert_array_equal(classes, present)
    np.testing.assert_allclose(probs, expected, rtol=1e-10)
  # At DAFormer's T = 0.01 the rarest class dominates.
  _, probs = rcs.class_probabilities(np.array([[9000, 900, 100]]), 0.01)
  assert probs[2] > 0.99


def test_min_pixels_selects_images_and_drops_classes_without_any():
  counts = np.array([[5000, 10, 0], [4000, 3001, 0], [100, 3000, 7]])
  sampling = rcs.class_sampling(counts, 0.1, 3000)
  # DAFormer keeps an image for class c when it has more than min_pixels of c (strictly).
  np.testing.assert_array_equal(sampling.images_of(0), [0, 1])
  np.testing.assert_array_equal(sampling.images_of(1), [1])
  assert sampling.dropped == (2,)  # present (7 px) but never above 3000: not sampled
  present, expected = _softmax_probs(counts, 0.1)  # f still counts class 2 and every image
  assert present == [0, 1, 2]
  np.testing.assert_allclose(sampling.probs, expected[:2] / expected[:2].sum(), rtol=1e-12)
  with pytest.raises(errors.InvalidInputError, match="rcs_min_pixels=6000"):
    rcs.class_sampling(counts, 0.1, 6000)


def test_bad_temperatures_and_unlabelled_splits_are_clear_errors():
  for bad in (0.0, -0.5, float("nan")):
    with pytest.raises(errors.UsageError, match="temperature > 0"):
      rcs.class_probabilities(np.ones((2, 3)), bad)
  with pytest.raises(errors.InvalidInputError, match="no labelled pixels"):
    rcs.class_probabilities(np.zeros((4, 19), np.int64), 0.01)  # all-ignore labels
  with pytest.raises(errors.UsageError, match="rcs_temperature=-0.01"):
    ip.create_train_iterator(_config(temperature=-0.01), "source", seed=0,
                             data_source=_examples())
  with pytest.raises(errors.InvalidInputError, match="has no 'label'"):
    ip.create_train_iterator(_config(), "source", seed=0,
                             data_source=_examples(with_label=False))
  all_ignore = _examples()
  for example in all_ignore._examples:
    example["label"] = np.full(HW + (1,), 255, np.uint8)
  with pytest.raises(errors.InvalidInputError, match="no labelled pixels"):
    ip.create_train_iterator(_config(), "source", seed=0, data_source=all_ignore)


# ---------------------------------------------------------------------------------------------
# Class pixel counts.


def _reference_counts(label_maps, num_classes, lut=None):
  out = np.zeros((len(label_maps), num_classes), np.int64)
  for i, label in enumerate(label_maps):
    mapped = label if lut is None else np.array([[lut[v] for v in row] for row in label])
    for c in range(num_classes):
      out[i, c] = int((mapped == c).sum())
  return out


def test_counts_on_an_injected_source_with_a_lut_and_png_labels():
  rng = np.random.default_rng(1)
  maps = [rng.choice(np.array([0, 9, 14, 16, 18, 19, 200, 255], np.uint8), size=(6, 9))
          for _ in range(4)]
  source = helpers.ListSource([{"image": np.zeros((6, 9, 3), np.uint8), "label": m[..., None],
                                "id": f"m{i}"} for i, m in enumerate(maps)])
  counts, ids = rcs.class_pixel_counts(source, 19, progress=False)
  assert ids == ["m0", "m1", "m2", "m3"]
  np.testing.assert_array_equal(counts, _reference_counts(maps, 19))  # 19, 200, 255 not counted
  # Read as SYNTHIA's 16 classes: terrain (9), truck (14), train (16) become ignore.
  counts, _ = rcs.class_pixel_counts(source, 16, labels.TRAIN19_TO_TRAIN16, progress=False,
                                     threads=1)
  np.testing.assert_array_equal(counts, _reference_counts(maps, 16, labels.TRAIN19_TO_TRAIN16))
  png_counts, _ = rcs.class_pixel_counts(_examples(png=True), 19, progress=False)
  expected = np.zeros((6, 19), np.int64)
  for i in range(6):
    expected[i, CLASS_OF[i]] += HW[0] * WIDTH_OF[i]
    expected[i, 0] += HW[0] * (HW[1] - WIDTH_OF[i])
  np.testing.assert_array_equal(png_counts, expected)


def _split_config(config):
  config.data.source.update(resize_hw=(32, 64), crop_hw=(16, 32))
  return config


def test_split_counts_are_computed_once_stored_and_recomputed_when_stale(synthetic_data_dir,
                                                                         monkeypatch, tmp_path):
  from seat_jax import datasets  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  config = _split_config(_config(min_pixels=3000))
  config.data.data_dir = synthetic_data_dir
  builder = datasets.get_builder("synthetic_streets", synthetic_data_dir, "source")
  stats_file = os.path.join(str(builder.data_dir), "rcs_class_pixels.train.cityscapes19.json")
  if os.path.exists(stats_file):
    os.remove(stats_file)
  counts = rcs.split_class_pixel_counts(config.data.source, synthetic_data_dir, "cityscapes19",
                                        None, progress=False)
  # Against the decoded labels of the data source, counted here.
  decoded = builder.as_data_source("train")
  assert counts.shape == (len(decoded), 19)
  for i in (0, 7, len(decoded) - 1):
    label = np.asarray(decoded[i]["label"])[..., 0]
    np.testing.assert_array_equal(counts[i], _reference_counts([label], 19)[0])
  with open(stats_file, encoding="utf-8") as f:
    stored = json.load(f)
  assert stored["key"]["num_examples"] == len(decoded) and stored["key"]["version"] == "1.0.0"
  assert stored["ids"][0] == ip._as_str(decoded[0]["id"])

  def no_recount(*args, **kwargs):
    raise AssertionError("the stored counts should have been read")

  monkeypatch.setattr(rcs, "class_pixel_counts", no_recount)
  np.testing.assert_array_equal(
      rcs.split_class_pixel_counts(config.data.source, synthetic_data_dir, "cityscapes19", None),
      counts)
  monkeypatch.undo()
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  # Another build of the split (here: another example count in the key) is counted again.
  stored["key"]["num_examples"] += 1
  stored["counts"][0][0] = -1
  with open(stats_file, "w", encoding="utf-8") as f:
    json.dump(stored, f)
  again = rcs.split_class_pixel_counts(config.data.source, synthetic_data_dir, "cityscapes19",
                                       None, progress=False)
  np.testing.assert_array_equal(again, counts)
  # A read-only dataset folder: the counts go to the cache dir instead.
  os.remove(stats_file)
  write = rcs._write_stats

  def read_only_data_dir(path, *args):
    if path == stats_file:
      raise PermissionError(path)
    write(path, *args)

  monkeypatch.setattr(rcs, "_write_stats", read_only_data_dir)
  rcs.split_class_pixel_counts(config.data.source, synthetic_data_dir, "cityscapes19", None,
                               progress=False)
  cached = rcs.stats_paths(builder, "train", "cityscapes19")[-1]
  assert cached.startswith(str(tmp_path / "cache")) and os.path.exists(cached)
  assert not os.path.exists(stats_file)


def test_tfds_stream_with_an_ids_file_uses_the_listed_examples_counts(synthetic_data_dir,
                                                                      tmp_path):
  config = _split_config(_config(min_pixels=3000))
  config.data.data_dir = synthetic_data_dir
  ids = ip._split_example_ids(config.data.source, synthetic_data_dir, None, True)
  listed = ids[3:40:3]
  (tmp_path / "ids.txt").write_text("\n".join(listed) + "\n")
  config.data.source.ids_file = str(tmp_path / "ids.txt")
  _, subset, _, _ = ip._train_split(config, "source", None, None)
  from_cache = rcs.stream_sampling(config, subset, from_tfds=True, subset=subset.indices,
                                   lut=None, verbose=False)
  direct = rcs.stream_sampling(config, subset, from_tfds=False, subset=None, lut=None,
                               verbose=False)
  for field in ("classes", "probs", "offsets", "images"):
    np.testing.assert_array_equal(getattr(from_cache, field), getattr(direct, field))
  assert from_cache.images.max() < len(listed)
  batch = next(ip.create_train_iterator(config, "source", seed=0))
  assert batch["image"].shape == (2, 16, 32, 3)


# ---------------------------------------------------------------------------------------------
# The sampler.


def test_sampler_draws_classes_with_p_and_images_holding_the_class():
  rng = np.random.default_rng(2)
  counts = rng.integers(0, 4000, (40, 8)) * (rng.random((40, 8)) < 0.5)
  counts[:3, 5] = 4000  # class 5: 3 images
  sampling = rcs.class_sampling(counts, 0.1, 1000)
  n = 200_000
  images, classes = sampling.draw(rcs.stream_key(11, 0), np.arange(n))
  # Class frequencies against the hand-computed p (over the classes with an image > 1000 px).
  present, probs = _softmax_probs(counts, 0.1)
  eligible = [i for i, c in enumerate(present) if (counts[:, c] > 1000).any()]
  expected = probs[eligible] / probs[eligible].sum()
  observed = np.array([(classes == present[i]).sum() for i in eligible])
  chi2 = (((observed - n * expected) ** 2) / (n * expected)).sum()
  dof = len(eligible) - 1
  assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, observed, n * expected)
  # Every drawn image has more than min_pixels of its drawn class, and the images of a class are
  # drawn uniformly.
  assert (counts[images, classes] > 1000).all()
  members = np.flatnonzero(counts[:, 5] > 1000)
  picks = np.array([(images[classes == 5] == m).sum() for m in members])
  assert picks.min() > 0.9 * picks.mean()
  # A pure function of (key, position): any slice of positions gives the same draws.
  again = sampling.draw(rcs.stream_key(11, 0), np.arange(1000, 1010))
  np.testing.assert_array_equal(again[0], images[1000:1010])
  other = sampling.draw(rcs.stream_key(11, 1), np.arange(1000))[0]
  assert not np.array_equal(other, images[:1000])  # another process, another stream


def test_uniforms_are_uniform_and_independent_of_the_stream():
  u0 = rcs.uniforms(rcs.stream_key(3, 0), np.arange(100_000), 0)
  u1 = rcs.uniforms(rcs.stream_key(3, 0), np.arange(100_000), 1)
  assert 0 <= u0.min() and u0.max() < 1
  hist = np.histogram(u0, bins=20, range=(0, 1))[0]
  assert np.abs(hist - 5000).max() < 5 * np.sqrt(5000)
  assert abs(np.corrcoef(u0, u1)[0, 1]) < 0.02


def _stream_indices(iterator, n_batches):
  return [[_example_index(image) for image in next(iterator)["image"]] for _ in range(n_batches)]


def test_pipeline_draws_rare_images_is_deterministic_and_resumes_exactly():
  data = _examples()
  config = _config(batch_size=2)
  first = _stream_indices(ip.create_train_iterator(config, "source", seed=5, data_source=data),
                          30)
  drawn = np.array(first).ravel()
  # Counts: class 0 in every image, 7 in images 2, 3 (400 and 120 px), 18 in image 5 (240 px).
  # min_pixels 50: class 7 -> images {2, 3}, class 18 -> {5}. At T = 0.1, p = (road 0.0005,
  # sign 0.36, bicycle 0.64).
  assert set(drawn) <= set(range(6))
  assert (drawn == 5).mean() > 0.4 and ((drawn == 2) | (drawn == 3)).mean() > 0.15
  # The stream is the sampler's pure function of (seed, process, position).
  shuffle_seed, _ = ip.domain_seeds(5, "source")
  sampling = rcs.class_sampling(_reference_counts(
      [np.asarray(e["label"])[..., 0] for e in data._examples], 19), 0.1, 50)
  expected, _ = sampling.draw(rcs.stream_key(shuffle_seed, 0), np.arange(60))
  np.testing.assert_array_equal(drawn, expected)
  again = _stream_indices(ip.create_train_iterator(config, "source", seed=5, data_source=data),
                          30)
  assert again == first
  other = _stream_indices(ip.create_train_iterator(config, "source", seed=6, data_source=data),
                          30)
  assert other != first
  # Resume: the state after 4 batches, through JSON, gives the same next batches.
  iterator = ip.create_train_iterator(config, "source", seed=5, data_source=data)
  for _ in range(4):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  expected_batches = [next(iterator) for _ in range(3)]
  restored = ip.create_train_iterator(config, "source", seed=5, data_source=data)
  restored.set_state(state)
  for a, b in zip(expected_batches, [next(restored) for _ in range(3)]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_temperature_zero_keeps_the_shuffled_epochs():
  data = _examples()
  plain = _config()
  del plain.data.source["rcs_temperature"]  # an old config without the key
  off = _config(temperature=0.0)
  a = _stream_indices(ip.create_train_iterator(plain, "source", seed=1, data_source=data), 6)
  b = _stream_indices(ip.create_train_iterator(off, "source", seed=1, data_source=data), 6)
  assert a == b
  assert sorted(np.array(a).ravel()[:6]) == list(range(6))  # an epoch is a permutation


def test_each_process_draws_its_own_stream_from_the_whole_split():
  config = _config()
  data = _examples()
  sampling = rcs.stream_sampling(config, data, from_tfds=False, subset=None, lut=None,
                                 verbose=False)
  transform = ip.TrainTransform(dataset="t", resize_hw=HW)
  streams = []
  for process_index in (0, 1):
    ds = ip.make_train_dataset(data, transform, batch_size=1, seed=0, domain="source",
                               process_index=process_index, process_count=2,
                               rcs_sampling=sampling)
    streams.append([_example_index(ds[i]["image"][0]) for i in range(40)])
  assert streams[0] != streams[1]
  assert {5, 2} <= set(streams[0]) and {5, 2} <= set(streams[1])  # not a per-host slice


def test_worker_processes_give_the_same_rcs_batches():
  data = _examples()
  config = _config()
  expected = _stream_indices(ip.create_train_iterator(config, "source", seed=2, data_source=data),
                             4)
  config.data.worker_count = 1
  iterator = ip.create_train_iterator(config, "source", seed=2, data_source=data)
  try:
    assert _stream_indices(iterator, 4) == expected
  finally:
    iterator.close()


def test_pseudo_labels_and_rcs_is_a_usage_error(tmp_path):
  config = _config(pseudo_label_dir=str(tmp_path))
  with pytest.raises(errors.UsageError, match="pseudo_label_dir"):
    ip.create_train_iterator(config, "source", seed=0, data_source=_examples())


# ---------------------------------------------------------------------------------------------
# Crop redraws.


def test_crops_are_redrawn_until_they_hold_the_drawn_class():
  # Class 1 fills the left half of a 20x40 label; a 20x20 crop at `left` holds 20 * (20 - left)
  # pixels of it (0 for left >= 20). Threshold 600 * 0.5 = 300 px: left < 5 (5 of 21 lefts).
  label = np.zeros((20, 40, 1), np.uint8)
  label[:, :20] = 1
  example = {"image": np.zeros((20, 40, 3), np.uint8), "label": label, "id": "h",
             rcs.CLASS_KEY: 1}
  check = rcs.CropCheck(600 * 0.5)
  lefts = {}
  for name, transform in (
      ("host", ip.TrainTransform(dataset="t", resize_hw=(20, 40), crop_hw=(20, 20),
                                 rcs_crop=check)),
      ("device", ip.RawTrainTransform(dataset="t", resize_hw=(20, 40), crop_hw=(20, 20),
                                      rcs_crop=check, image_hw=(20, 40), label_hw=(20, 40))),
      ("off", ip.TrainTransform(dataset="t", resize_hw=(20, 40), crop_hw=(20, 20)))):
    lefts[name] = []
    for seed in range(300):
      out = transform.random_map(example, np.random.default_rng(seed))
      if name == "device":
        lefts[name].append(int(out["crop"][1]))
      else:
        # Recover the crop's left edge from its class-1 columns.
        lefts[name].append(20 - int((out["label"][0] == 1).sum()))
  # Per draw 5/21 succeed; 10 draws miss with probability (16/21)^10 = 6.6%.
  held = {name: np.mean([left < 5 for left in values]) for name, values in lefts.items()}
  assert held["host"] > 0.85 and held["device"] > 0.85, held
  assert held["off"] < 0.4, held
  assert lefts["host"] == lefts["device"]  # both paths draw the same numbers
  # Without a drawn class (RCS off) the draws are the plain two integers, as before.
  plain = {k: v for k, v in example.items() if k != rcs.CLASS_KEY}
  rng = np.random.default_rng(7)
  out = ip.RawTrainTransform(dataset="t", resize_hw=(20, 40), crop_hw=(20, 20), rcs_crop=check,
                             image_hw=(20, 40), label_hw=(20, 40)).random_map(
                                 plain, np.random.default_rng(7))
  assert out["crop"].tolist() == [int(rng.integers(0, 1)), int(rng.integers(0, 21))]
