"""The device path gives the host path's batches: PIL-equivalent resizes, same draws, exact resume.

Tolerance (host = PIL, device = jitted jnp): images may differ by one grey level where PIL's
fixed-point weights round the other way (measured: ~0.02 % of pixels at the paper's sizes), so
mean |diff| < 0.05 and max |diff| <= 1 (+ float error after FDA); labels are identical.
"""

import os

import jax
import numpy as np
from PIL import Image
import pytest

import helpers
from seat_jax import config_defaults
from seat_jax import device_preprocessing as dp
from seat_jax import input_pipeline as ip

MEAN_ABS_TOL, MAX_ABS_TOL = 0.05, 1.0 + 1e-3


ListSource = helpers.ListSource


def _photo_like(hw, seed):
  """Smooth shading, flat blocks with sharp edges and sensor noise (what PNG photos hold)."""
  rng = np.random.default_rng(seed)
  height, width = hw
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  image = 110 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None] * [1, .8, .6]
  for _ in range(12):
    top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
    image[top:top + rng.integers(3, 20), left:left + rng.integers(3, 30)] = rng.integers(0, 256, 3)
  image += rng.normal(0, 6, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _label_like(hw, seed):
  rng = np.random.default_rng(seed)
  label = np.zeros(hw, np.uint8)
  for _ in range(15):
    top, left = rng.integers(0, hw[0] - 2), rng.integers(0, hw[1] - 2)
    label[top:top + rng.integers(2, 15), left:left + rng.integers(2, 25)] = rng.choice(
        [1, 2, 5, 8, 11, 13, 16, 255])
  return label


def _examples(n, hw, label_hw=None, seed=0):
  return ListSource([{"image": _photo_like(hw, seed + i),
                      "label": _label_like(label_hw or hw, seed + i)[..., None],
                      "id": f"e{i}"} for i in range(n)])


def _config(**data):
  config = config_defaults.get_config()
  config.train.batch_size = 2
  config.data.source.update(name="synthetic_streets", builder_config="source",
                            resize_hw=(36, 64), crop_hw=(24, 48))
  config.data.target.update(name="synthetic_streets", builder_config="target",
                            resize_hw=(24, 48), crop_hw=())
  config.data.prefetch_buffer_size = 1
  for key, value in data.items():
    config.data[key] = value
  return config


def _host_and_device(config, domain, steps, **sources):
  """`steps` batches of `domain` from both paths (the device ones preprocessed, as numpy)."""
  config.data.preprocess_on = "host"
  host = ip.create_train_iterator(config, domain, seed=4, **sources)
  host = [next(host) for _ in range(steps)]
  config.data.preprocess_on = "device"
  raw = ip.create_train_iterator(config, domain, seed=4, **sources)
  fn = jax.jit(lambda batch: dp.preprocess(batch, ip.device_spec(config, domain)))
  device = [jax.device_get(fn(next(raw))) for _ in range(steps)]
  return host, device


def _assert_close(host_images, device_images):
  diff = np.abs(np.asarray(host_images) - np.asarray(device_images))
  assert diff.mean() < MEAN_ABS_TOL and diff.max() <= MAX_ABS_TOL, (diff.mean(), diff.max())


# ---------------------------------------------------------------------------------------------
# The resizes against PIL.


@pytest.mark.parametrize("stored_hw, resize_hw", [((105, 191), (72, 128)),  # shrink (antialias)
                                                  ((24, 40), (36, 60))])  # enlarge
def test_bicubic_resize_and_crop_match_pil(stored_hw, resize_hw):
  images = np.stack([_photo_like(stored_hw, seed) for seed in range(2)])
  expected = np.stack([np.asarray(Image.fromarray(i).resize(resize_hw[::-1],
                                                            Image.Resampling.BICUBIC))
                       for i in images]).astype(np.float32)
  resize = jax.jit(dp.resize_crop_images, static_argnums=(1, 2))
  full = resize(images, resize_hw, resize_hw)
  _assert_close(expected, full)
  # A crop folded into the resize is the same window of the full resize (up to a rounding tie
  # broken the other way: the sample positions are computed in another order).
  offsets = np.array([[0, 3], [resize_hw[0] - 20, resize_hw[1] - 30]], np.int32)
  crops = resize(images, resize_hw, (20, 30), offsets)
  for crop, whole, (top, left) in zip(np.asarray(crops), np.asarray(full), offsets):
    _assert_close(whole[top:top + 20, left:left + 30], crop)


def test_nearest_indices_are_pils():
  rng = np.random.default_rng(0)
  sizes = [(1052, 720), (1914, 1280), (2048, 1024), (1024, 512), (760, 512), (8, 16), (16, 8)]
  sizes += [tuple(int(v) for v in pair) for pair in rng.integers(2, 3000, (60, 2))]
  for in_size, out_size in sizes:
    ramp = Image.fromarray(np.arange(in_size, dtype=np.int32)[None].repeat(2, 0), mode="I")
    expected = np.asarray(ramp.resize((out_size, 2), Image.Resampling.NEAREST))[0]
    np.testing.assert_array_equal(dp.pil_nearest_indices(in_size, out_size), expected,
                                  err_msg=f"{in_size} -> {out_size}")


# ---------------------------------------------------------------------------------------------
# Whole streams: the device path against the host path.


def test_device_path_matches_host_path_with_crop_flip_fda_and_label_lut():
  config = _config(flip=True, fda_beta=0.05, label_space="synthia16")
  source = _examples(5, (53, 97))
  targets = ListSource([{"image": _photo_like((30, 57), 50 + i), "id": f"t{i}"}
                        for i in range(3)])
  host, device = _host_and_device(config, "source", 3, data_source=source,
                                  fda_data_source=targets)
  for h, d in zip(host, device):
    assert d["image"].shape == h["image"].shape == (2, 24, 48, 3)
    assert d["image"].dtype == np.float32 and d["label"].dtype == np.int32
    _assert_close(h["image"], d["image"])
    np.testing.assert_array_equal(h["label"], d["label"])
  # The target stream (no crop, no label in stage 1) from an image smaller than resize_hw.
  host, device = _host_and_device(config, "target", 2,
                                  data_source=_examples(3, (20, 33), seed=9))
  for h, d in zip(host, device):
    assert set(d) == set(h) == {"image"}
    _assert_close(h["image"], d["image"])


def test_gaussian_blur_is_pils_up_to_its_box_approximation():
  """Toldo et al. call PIL's GaussianBlur(radius=sigma), three box blurs approximating the
  Gaussian that `dp.gaussian_blur` computes; sigma 0 leaves the image as it is."""
  from PIL import ImageFilter  # pylint: disable=g-import-not-at-top
  image = _photo_like((60, 90), 1)
  np.testing.assert_array_equal(dp.gaussian_blur(image[None], np.zeros(1))[0], image)
  for sigma in (0.3, 0.6, 0.99):
    ours = dp.gaussian_blur(image[None], np.array([sigma]))[0]
    pil = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)))
    change = np.abs(pil.astype(np.float32) - image).mean()
    assert np.abs(ours - pil).mean() < 1.0 and (sigma < 0.5 or change > 3.0), sigma
  device = jax.jit(lambda x, s: dp.gaussian_blur(x, s, jax.numpy))(
      image[None].astype(np.float32), np.array([0.7], np.float32))
  _assert_close(np.asarray(device)[0], dp.gaussian_blur(image[None], np.array([0.7]))[0])


def test_blur_draws_half_the_examples_and_both_paths_apply_it():
  config = _config(blur_probability=0.5, preprocess_on="device")
  data = _examples(4, (53, 97))
  raw = ip.create_train_iterator(config, "source", seed=3, data_source=data)
  sigmas = np.concatenate([next(raw)[dp.BLUR] for _ in range(20)])
  assert sigmas.dtype == np.float32 and 0.3 < np.mean(sigmas > 0) < 0.7
  assert sigmas.max() < 1.0
  again = ip.create_train_iterator(config, "source", seed=3, data_source=data)
  np.testing.assert_array_equal(np.concatenate([next(again)[dp.BLUR] for _ in range(20)]),
                                sigmas)  # deterministic per seed
  # The other draws are those of a run without blur (blur draws come last).
  off = ip.create_train_iterator(_config(preprocess_on="device"), "source", seed=3,
                                 data_source=data)
  np.testing.assert_array_equal(next(off)[dp.CROP], next(
      ip.create_train_iterator(config, "source", seed=3, data_source=data))[dp.CROP])
  config = _config(flip=True, blur_probability=1.0)
  host, device = _host_and_device(config, "source", 2, data_source=data)
  plain, _ = _host_and_device(_config(flip=True), "source", 2, data_source=data)
  for h, d, p in zip(host, device, plain):
    _assert_close(h["image"], d["image"])
    np.testing.assert_array_equal(h["label"], p["label"])  # labels are not blurred
    assert np.abs(h["image"] - p["image"]).mean() > 1.0
  host, device = _host_and_device(config, "target", 2, data_source=_examples(3, (20, 33)))
  for h, d in zip(host, device):
    _assert_close(h["image"], d["image"])


def test_rescaled_images_and_odd_sizes_are_handled_on_both_paths():
  # CycleGAN-translated GTA5: the image at half the label's resolution, same aspect ratio.
  config = _config()
  translated = _examples(3, (30, 54), label_hw=(60, 108))
  host, device = _host_and_device(config, "source", 2, data_source=translated)
  for h, d in zip(host, device):
    _assert_close(h["image"], d["image"])
    np.testing.assert_array_equal(h["label"], d["label"])
  # An example at another size than the split's first is brought to that size on the host, so
  # the batch keeps one shape (and the device one compile).
  transform = ip.RawTrainTransform(dataset="d", resize_hw=(36, 64), crop_hw=(24, 48),
                                   image_hw=(53, 97), label_hw=(53, 97))
  odd = _examples(1, (40, 70))[0]
  out = transform.random_map(odd, np.random.default_rng(0))
  assert out["image"].shape == (53, 97, 3) and out["label"].shape == (53, 97)
  assert out["crop"].dtype == np.int32 and out["flip"].dtype == np.bool_


# ---------------------------------------------------------------------------------------------
# The global batch, exact resume and the config.


def test_training_batches_match_host_and_resume_exactly(synthetic_data_dir):
  sharding = helpers.data_sharding()
  config = _config(data_dir=synthetic_data_dir, flip=True)
  config.data.target.builder_config = "source"  # only source-domain images are needed here
  state, expected = helpers.batches_after_checkpoint(config, sharding, skip=2, take=2)
  assert set(expected[0]) == {ip.SOURCE_IMAGE, ip.SOURCE_LABEL, ip.TARGET_IMAGE}
  for value in expected[0].values():
    assert value.sharding.spec == jax.sharding.PartitionSpec("data")
  resumed = ip.TrainingBatches(config, sharding)
  resumed.set_state(state)
  for a, b in zip(expected, [next(resumed) for _ in range(2)]):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  config.data.preprocess_on = "host"
  host = ip.TrainingBatches(config, sharding)
  host.set_state(state)
  for a, b in zip(expected, [next(host) for _ in range(2)]):
    for key in (ip.SOURCE_IMAGE, ip.TARGET_IMAGE):
      _assert_close(b[key], a[key])
    np.testing.assert_array_equal(b[ip.SOURCE_LABEL], a[ip.SOURCE_LABEL])


def test_worker_processes_give_the_same_raw_batches():
  config = _config(flip=True, preprocess_on="device")
  data = _examples(4, (53, 97))
  expected = ip.create_train_iterator(config, "source", seed=2, data_source=data)
  expected = [next(expected) for _ in range(3)]
  config.data.worker_count = 1
  iterator = ip.create_train_iterator(config, "source", seed=2, data_source=data)
  try:
    for a in expected:
      jax.tree.map(np.testing.assert_array_equal, a, next(iterator))
  finally:
    iterator.close()


def test_auto_worker_count_rule():
  assert ip.auto_worker_count(64, "cpu", 8) == 0  # the CPU step uses every core itself
  assert ip.auto_worker_count(2, "gpu", 1) == 1  # at least one, so input overlaps the step
  assert ip.auto_worker_count(16, "gpu", 1) == 4  # ceil(1 device * 40 ms / 12 ms)
  assert ip.auto_worker_count(16, "gpu", 8) == 7  # (16 - 2) // 2: capped by the cores
  assert ip.auto_worker_count(128, "gpu", 8) == 27  # ceil(8 * 40 / 12)
  automatic = ip.auto_worker_count(len(os.sched_getaffinity(0)), jax.default_backend(),
                                   jax.local_device_count())
  assert ip.worker_count(_config(worker_count=-1)) == automatic
  assert ip.worker_count(_config(worker_count=3)) == 3
  with pytest.raises(ValueError, match=r"config.data.worker_count=-3"):
    ip.worker_count(_config(worker_count=-3))


def test_unknown_preprocess_on_is_a_usage_error():
  with pytest.raises(ValueError, match=r"config.data.preprocess_on='gpu' is not one of"):
    ip.create_train_iterator(_config(preprocess_on="gpu"), "source", seed=0,
                             data_source=_examples(1, (8, 8)))
