"""DACS / DAFormer / MIC building blocks against independent NumPy / PyTorch computations.

Each reference below is written in the test from the published definitions (DACS trainUDA.py and
utils/loss.py, kornia 0.5's colour formulas via Python's colorsys, DAFormer's
downscale_label_ratio via torch pooling, MIC's mmseg nearest resize via torch.interpolate), not
by calling the module's helpers.
"""

import colorsys
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seat_jax.device_preprocessing import CAFFE_MEAN_BGR
from seat_jax.methods import dacs, daformer, mic

IGNORE = 255


# ---------------------------------------------------------------------------------------------
# EMA teacher.


def test_ema_update_matches_dacs_rule_for_early_and_late_steps():
  rng = np.random.RandomState(0)
  teacher = {"params": {"w": rng.randn(3, 2).astype(np.float32), "b": rng.randn(2)},
             "batch_stats": {"mean": rng.randn(4).astype(np.float32)},
             "count": np.array(3, np.int32)}
  student = jax.tree.map(lambda x: (x + 1.5 * np.ones_like(x)).astype(x.dtype), teacher)
  teacher["params"]["b"] = teacher["params"]["b"].astype(np.float32)
  student["params"]["b"] = student["params"]["b"].astype(np.float32)
  student["count"] = np.array(7, np.int32)
  jitted = jax.jit(lambda t, s, step: dacs.ema_update(t, s, step, 0.99))
  for step, expected_alpha in ((0, 0.0), (1, 0.5), (10, 1 - 1 / 11), (1000, 0.99)):
    for out in (dacs.ema_update(teacher, student, step, 0.99), jitted(teacher, student, step)):
      for path in (("params", "w"), ("params", "b"), ("batch_stats", "mean")):
        t, s = teacher[path[0]][path[1]], student[path[0]][path[1]]
        want = expected_alpha * t.astype(np.float64) + (1 - expected_alpha) * s
        got = out[path[0]][path[1]]
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
      assert int(out["count"]) == 7  # integer leaves follow the student
  # alpha caps the average: 0.999 is reached only after step 999.
  out = dacs.ema_update(teacher, student, 1000, 0.999)
  want = 0.999 * teacher["params"]["w"] + 0.001 * student["params"]["w"]
  np.testing.assert_allclose(np.asarray(out["params"]["w"]), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ClassMix.


def _chosen_classes(label, mask):
  """The classes a ClassMix mask takes, checking the mask is a union of whole classes."""
  chosen = set()
  for c in np.unique(label):
    values = np.unique(mask[label == c])
    assert len(values) == 1, f"class {c} is split by the mask"
    if values[0]:
      chosen.add(int(c))
  return chosen


def test_class_mix_takes_ceil_half_of_present_classes_including_ignore():
  rng = np.random.RandomState(1)
  labels = np.stack([
      rng.choice([0, 3, 5, IGNORE], (6, 7)),  # 4 "classes" with ignore -> 2
      rng.choice([1, 2, 4, 7, 9], (6, 7)),  # 5 -> 3
      np.full((6, 7), 18),  # 1 -> 1 (the whole image)
      rng.choice([0, 1, 2, 3, 4, 5, IGNORE], (6, 7)),  # 7 -> 4
  ]).astype(np.int32)
  for seed in range(3):
    masks = np.asarray(dacs.class_mix_masks(jax.random.key(seed), labels, 19))
    assert masks.dtype == bool and masks.shape == labels.shape
    for label, mask in zip(labels, masks):
      present = set(np.unique(label).tolist())
      chosen = _chosen_classes(label, mask)
      assert chosen <= present
      n = len(present)
      assert len(chosen) == int((n + n % 2) / 2)  # DACS's count rule, ignore counted


def test_class_mix_all_ignore_label_and_count_ignore_flag():
  labels = np.full((2, 4, 5), IGNORE, np.int32)
  labels[1, :2] = 6  # classes {6, 255}
  masks = np.asarray(dacs.class_mix_masks(jax.random.key(0), labels, 19))
  assert masks[0].all()  # n = 1 -> the (ignored) source image is pasted whole
  assert len(_chosen_classes(labels[1], masks[1])) == 1
  masks = np.asarray(dacs.class_mix_masks(jax.random.key(0), labels, 19, count_ignore=False))
  assert not masks[0].any()  # no candidate class at all
  assert _chosen_classes(labels[1], masks[1]) == {6}  # n = 1 without ignore -> take class 6


def test_class_mix_choices_vary_with_key_and_are_uniform():
  label = np.arange(24).reshape(4, 6) % 6  # six classes, choose three
  subsets = set()
  for seed in range(8):
    mask = np.asarray(dacs.class_mix_masks(jax.random.key(seed), label[None], 19))[0]
    subsets.add(frozenset(_chosen_classes(label, mask)))
  assert len(subsets) > 1
  # Over many images each of four classes is taken half of the time.
  label4 = np.array([[0, 1], [2, 3]])
  masks = np.asarray(dacs.class_mix_masks(jax.random.key(5), np.tile(label4, (800, 1, 1)), 4))
  assert (masks.reshape(800, 4).sum(1) == 2).all()
  np.testing.assert_allclose(masks.reshape(800, 4).mean(0), 0.5, atol=0.07)


def test_class_mix_batch_classes_draw_half_of_the_union_as_daformer():
  """DAFormer's get_class_masks: `torch.unique(labels)` over the batch, ceil(n / 2) of that union
  per image, the mask from the image's own label. Image 0 holds {0, 1}, image 1 {2, 3} + ignore:
  the union has five candidates, three are drawn; image 0 pastes nothing when none of 0, 1 is
  drawn (C(3,3) / C(5,3) = 1/10), both when both are (C(3,1) / C(5,3) = 3/10)."""
  labels = np.zeros((2, 2, 4), np.int32)
  labels[0, :, 2:] = 1
  labels[1] = [[2, 2, 3, 3], [2, IGNORE, 3, 3]]
  draws = 3000
  keys = jax.random.split(jax.random.key(11), draws)
  masks = np.asarray(jax.vmap(lambda k: dacs.class_mix_masks(k, labels, 19,
                                                             classes_from="batch"))(keys))
  taken0 = masks[:, 0].reshape(draws, -1).mean(1)  # 0, 0.5 or 1 of image 0's pixels
  sigma = math.sqrt(0.1 * 0.9 / draws)
  assert abs((taken0 == 0).mean() - 0.1) < 5 * sigma
  assert abs((taken0 == 1).mean() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / draws)
  for label, mask in zip(labels, masks[0]):
    assert _chosen_classes(label, mask) <= set(np.unique(label).tolist())
  # The images draw independently: image 1's draw is not image 0's.
  chosen = [[frozenset(_chosen_classes(labels[i], m[i])) for i in range(2)] for m in masks[:50]]
  assert len({c[1] for c in chosen}) > 1 and len({c[0] for c in chosen}) > 1
  # Per-image classes (DACS) never leave image 0 empty: one of its two classes, always.
  per_image = np.asarray(jax.vmap(lambda k: dacs.class_mix_masks(k, labels, 19))(keys[:200]))
  assert (per_image[:, 0].reshape(200, -1).mean(1) == 0.5).all()
  with pytest.raises(ValueError, match="classes_from"):
    dacs.class_mix_masks(keys[0], labels, 19, classes_from="union")


def test_mix_uses_one_mask_for_images_labels_and_weights():
  rng = np.random.RandomState(2)
  src_lbl = rng.choice([0, 2, 4, IGNORE], (2, 5, 6)).astype(np.int32)
  tgt_lbl = rng.choice([1, 3], (2, 5, 6)).astype(np.int32)
  src_img = rng.randn(2, 5, 6, 3).astype(np.float32)
  tgt_img = rng.randn(2, 5, 6, 3).astype(np.float32)
  mask = np.asarray(dacs.class_mix_masks(jax.random.key(3), src_lbl, 19))
  img = np.asarray(dacs.mix(mask, src_img, tgt_img))
  lbl = np.asarray(dacs.mix(mask, src_lbl, tgt_lbl))
  weight = np.asarray(dacs.mix(mask, np.ones((2, 5, 6), np.float32),
                               np.full((2, 5, 6), 0.25, np.float32)))
  m = mask.astype(np.float32)  # DACS's float blend mask * a + (1 - mask) * b
  np.testing.assert_array_equal(img, m[..., None] * src_img + (1 - m[..., None]) * tgt_img)
  np.testing.assert_array_equal(lbl, np.where(mask, src_lbl, tgt_lbl))
  np.testing.assert_array_equal(weight, np.where(mask, 1.0, 0.25))
  assert 0 < mask.mean() < 1


# ---------------------------------------------------------------------------------------------
# Pseudo-labels and the weighted loss.


def test_pseudo_weight_is_one_batch_fraction_by_hand():
  # Max probabilities per pixel, image 0: 0.99, 0.5, 0.968 (counts: >=), 0.9; image 1: 0.97,
  # 0.4, 0.6, 0.45 -> 3 of 8 confident -> weight 0.375 everywhere.
  maxp = np.array([[[0.99, 0.5], [0.968, 0.9]], [[0.97, 0.4], [0.6, 0.45]]], np.float32)
  winner = np.array([[[2, 0], [1, 1]], [[0, 2], [1, 0]]])
  probs = np.zeros((2, 2, 2, 3), np.float32)
  for idx in np.ndindex(2, 2, 2):
    rest = (1 - maxp[idx]) / 2
    probs[idx] = rest
    probs[idx + (winner[idx],)] = maxp[idx]
  labels, weights = dacs.pseudo_labels_and_weight(probs)
  np.testing.assert_array_equal(np.asarray(labels), winner)
  np.testing.assert_allclose(np.asarray(weights), np.full((2, 2, 2), 0.375), rtol=1e-6)
  # DAFormer's pseudo-label crop zeroes whole rows; the fraction still counts every pixel.
  tall = np.repeat(probs, 3, axis=1)  # H = 6
  _, weights = dacs.pseudo_labels_and_weight(tall, ignore_top=1, ignore_bottom=2)
  expected = np.zeros((2, 6, 2), np.float32)
  expected[:, 1:4] = 0.375
  np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-6)


def test_weighted_cross_entropy_matches_torch_pixelwise_weighted_ce():
  rng = np.random.RandomState(4)
  logits = (3 * rng.randn(2, 3, 4, 5)).astype(np.float32)
  labels = rng.randint(0, 5, (2, 3, 4)).astype(np.int64)
  labels[0, 0, :3] = IGNORE
  weights = rng.uniform(0, 1, (2, 3, 4)).astype(np.float32)
  ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="none")
  want = torch.mean(ce(torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels))
                    * torch.from_numpy(weights)).item()
  got = float(jax.jit(dacs.weighted_cross_entropy)(logits, labels, weights))
  assert got == pytest.approx(want, rel=1e-5)
  all_ignore = np.full_like(labels, IGNORE)
  assert float(dacs.weighted_cross_entropy(logits, all_ignore, weights)) == 0.0


# ---------------------------------------------------------------------------------------------
# MIC masking.


def test_mic_mask_is_nearest_upsampled_blocks_and_masks_the_image():
  images = np.random.RandomState(5).randn(3, 100, 70, 3).astype(np.float32)
  masked, keep = mic.masking(jax.random.key(0), images, block_size=32, ratio=0.5)
  keep = np.asarray(keep)
  assert keep.shape == (3, 100, 70) and set(np.unique(keep)) <= {0.0, 1.0}
  # round(100 / 32) = 3, round(70 / 32) = 2 cells; the first pixel of each torch-nearest cell
  # (cells span rows 0-33, 34-66, 67-99 and columns 0-34, 35-69) holds the cell value.
  coarse = keep[:, [10, 50, 90]][:, :, [10, 60]]
  upsampled = F.interpolate(torch.from_numpy(coarse)[:, None], size=(100, 70), mode="nearest")
  np.testing.assert_array_equal(keep, upsampled[:, 0].numpy())
  np.testing.assert_array_equal(np.asarray(masked), images * keep[..., None])


def test_mic_keep_fraction_is_one_minus_ratio():
  images = np.ones((64, 64, 64, 1), np.float32)
  _, keep = jax.jit(lambda k, x: mic.masking(k, x, block_size=8, ratio=0.7))(
      jax.random.key(1), images)
  assert float(jnp.mean(keep)) == pytest.approx(0.3, abs=0.03)  # 4096 cells
  _, none_kept = mic.masking(jax.random.key(2), images[:2], block_size=8, ratio=1.0)
  assert float(jnp.max(none_kept)) == 0.0  # rand > 1 never holds
  assert mic.MASK_RATIO == 0.7 and mic.MASK_BLOCK_SIZE == 64 and mic.MASK_LAMBDA == 1.0


# ---------------------------------------------------------------------------------------------
# Colour jitter and blur.


def _np_jitter(rgb, brightness, contrast, saturation, hue, order):
  """kornia 0.5 ColorJitter formulas per pixel with colorsys for the HSV steps."""
  out = rgb.astype(np.float64).copy()
  for step in order:
    if step == 0:
      out = np.clip(out + (brightness - 1), 0, 1)
    elif step == 1:
      out = np.clip(out * contrast, 0, 1)
    else:
      flat = out.reshape(-1, 3)
      for i, (r, g, b) in enumerate(flat):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        if step == 2:
          s = min(max(s * saturation, 0.0), 1.0)
        else:
          h = (h + hue) % 1.0
        flat[i] = colorsys.hsv_to_rgb(h, s, v)
      out = flat.reshape(out.shape)
  return out


def test_color_jitter_matches_numpy_formulas_for_fixed_factors():
  rng = np.random.RandomState(6)
  rgb = rng.uniform(0, 1, (4, 3, 5, 3)).astype(np.float32)
  rgb[0, 0, 0] = [0.5, 0.5, 0.5]  # grey: hue undefined, must stay grey
  rgb[1, 0, 0] = [0.9, 0.9, 0.1]  # R and G tie for the maximum
  brightness = np.array([1.2, 0.85, 1.0, 1.05], np.float32)
  contrast = np.array([0.8, 1.25, 1.0, 1.2], np.float32)
  saturation = np.array([1.25, 0.75, 1.0, 0.9], np.float32)
  hue = np.array([0.2, -0.25, 0.0, -0.05], np.float32)
  order = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]], np.int32)
  got = np.asarray(jax.jit(dacs.color_jitter_with_factors)(
      rgb, brightness, contrast, saturation, hue, order))
  for i in range(4):
    want = _np_jitter(rgb[i], brightness[i], contrast[i], saturation[i], hue[i], order[i])
    np.testing.assert_allclose(got[i], want, atol=2e-5, err_msg=f"image {i}")
  np.testing.assert_allclose(got[2], rgb[2], atol=2e-5)  # identity factors


def test_blur_kernel_rule_and_normalisation():
  # floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2): odd ceil kept, even ceil minus one; 0.1 * 30 is
  # 3.0000000000000004 in float64, so 30 -> 4 -> 3.
  for size, want in ((512, 51), (1024, 103), (720, 71), (30, 3), (20, 1), (50, 5)):
    assert dacs.blur_kernel_size(size) == want, size
  for size, sigma in ((51, 0.15), (51, 1.15), (5, 0.7), (1, 1.0)):
    kernel = np.asarray(dacs.gaussian_kernel_1d(size, sigma))
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(kernel, kernel[::-1], atol=1e-7)
  constant = np.full((2, 50, 70, 3), -37.5, np.float32)
  out = np.asarray(dacs.gaussian_blur_with_sigma(constant, np.array([0.2, 1.1], np.float32)))
  np.testing.assert_allclose(out, constant, atol=1e-4)


def test_blur_matches_torch_reflect_padded_gaussian_conv():
  rng = np.random.RandomState(7)
  images = rng.randn(2, 50, 70, 3).astype(np.float32)  # kernel 5 x 7
  sigmas = np.array([0.4, 1.1], np.float32)
  got = np.asarray(jax.jit(dacs.gaussian_blur_with_sigma)(images, sigmas))
  for i, sigma in enumerate(sigmas):
    ky = np.exp(-np.arange(-2, 3) ** 2 / (2 * float(sigma) ** 2))
    kx = np.exp(-np.arange(-3, 4) ** 2 / (2 * float(sigma) ** 2))
    k2 = np.outer(ky / ky.sum(), kx / kx.sum())
    x = torch.from_numpy(images[i]).permute(2, 0, 1)[None].double()
    x = F.pad(x, (3, 3, 2, 2), mode="reflect")
    w = torch.from_numpy(k2)[None, None].repeat(3, 1, 1, 1)
    want = F.conv2d(x, w, groups=3)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_strong_augment_jitters_in_rgb_and_respects_probabilities():
  rng = np.random.RandomState(8)
  rgb255 = rng.uniform(0, 255, (2, 20, 30, 3)).astype(np.float32)
  rgb255[1] = rgb255[0]  # two identical images get different factors
  images = rgb255[..., ::-1] - CAFFE_MEAN_BGR
  fn = jax.jit(dacs.strong_augment, static_argnames=("jitter_probability", "blur"))
  same = np.asarray(fn(jax.random.key(0), images, jitter_probability=0.0, blur=False))
  np.testing.assert_array_equal(same, images)
  out = np.asarray(fn(jax.random.key(0), images, jitter_probability=1.0, blur=False))
  np.testing.assert_array_equal(out, np.asarray(
      fn(jax.random.key(0), images, jitter_probability=1.0, blur=False)))
  back = (out + CAFFE_MEAN_BGR)[..., ::-1] / 255.0
  assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
  assert np.abs(out[0] - images[0]).max() > 1.0
  assert np.abs(out[0] - out[1]).max() > 1.0
  # Over many keys the batch is jittered about 80 % of the time.
  small = images[:1, :4, :4]
  many = jax.jit(jax.vmap(lambda k: dacs.strong_augment(k, small, blur=False)))(
      jax.random.split(jax.random.key(1), 200))
  changed = np.abs(np.asarray(many) - small).reshape(200, -1).max(1) > 1e-3
  assert 0.7 < changed.mean() < 0.9


# ---------------------------------------------------------------------------------------------
# DAFormer: label downscaling and the thing-class feature distance.


def _torch_downscale_label_ratio(labels, scale, min_ratio, n_classes):
  """DAFormer's mmseg/utils/utils.py downscale_label_ratio, on [N, H, W] numpy labels."""
  gt = torch.from_numpy(labels.astype(np.int64))
  gt = torch.where(gt == IGNORE, torch.tensor(n_classes), gt)
  onehot = F.one_hot(gt, n_classes + 1).permute(0, 3, 1, 2).float()
  ratio, out = torch.max(F.avg_pool2d(onehot, kernel_size=scale), dim=1)
  out[out == n_classes] = IGNORE
  out[ratio < min_ratio] = IGNORE
  return out.numpy()


def test_downscale_label_ratio_by_hand_and_against_torch():
  # 4 x 6 -> 2 x 3 cells of 2 x 2.
  labels = np.array([[[5, 5, 1, 2, IGNORE, IGNORE],
                      [5, 3, 1, 2, IGNORE, 7],
                      [4, 4, 0, 0, 9, 9],
                      [4, 4, 0, IGNORE, 9, 9]]], np.int32)
  # 3/4 class 5 -> 5; 2/4 + 2/4 -> ignore; ignore majority -> ignore; 4/4 -> 4; 3/4 -> 0; 9.
  want = np.array([[[5, IGNORE, IGNORE], [4, 0, 9]]])
  got = np.asarray(daformer.downscale_label_ratio(labels, 2, 0.75, 10))
  np.testing.assert_array_equal(got, want)
  rng = np.random.RandomState(9)
  labels = rng.choice([0, 1, 2, IGNORE], (2, 13, 17), p=[0.6, 0.2, 0.1, 0.1]).astype(np.int32)
  labels[:, :8, :8] = 1  # some uniform cells
  for scale, ratio in ((2, 0.75), (4, 0.75), (3, 0.5)):
    got = np.asarray(daformer.downscale_label_ratio(labels, scale, ratio, 3))
    np.testing.assert_array_equal(got, _torch_downscale_label_ratio(labels, scale, ratio, 3))


def test_thing_classes_by_name():
  assert daformer.THING_CLASSES["cityscapes19"] == (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
  # SYNTHIA-16: light 6, sign 7, person 10, rider 11, car 12, bus 13, motorcycle 14, bicycle 15.
  assert daformer.THING_CLASSES["synthia16"] == (6, 7, 10, 11, 12, 13, 14, 15)


def test_feature_distance_by_hand():
  car, road = 13, 0
  labels = np.array([[[car, car, car, road],
                      [car, car, car, car],
                      [car, road, IGNORE, IGNORE],
                      [car, road, IGNORE, car]]], np.int32)
  # Cells: (0,0) 4/4 car -> in; (0,1) 3/4 car -> in; (1,0) 2/4 -> out; (1,1) ignore -> out.
  frozen = np.zeros((1, 2, 2, 2), np.float32)
  student = np.array([[[[3, 4], [0, 1]], [[10, 10], [7, 7]]]], np.float32)
  things = daformer.THING_CLASSES["cityscapes19"]
  loss = jax.jit(daformer.feature_distance_loss, static_argnums=3)(
      student, frozen, labels, things)
  assert float(loss) == pytest.approx((5.0 + 1.0) / 2)
  no_things = np.full_like(labels, road)
  assert float(daformer.feature_distance_loss(student, frozen, no_things, things)) == 0.0
  # The gradient is finite (zero) where student and frozen features coincide.
  grad = jax.grad(daformer.feature_distance_loss)(frozen + 0.0, frozen, labels, things)
  assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).sum()) == 0.0
  grad = np.asarray(jax.grad(daformer.feature_distance_loss)(student, frozen, labels, things))
  np.testing.assert_allclose(grad[0, 0, 0], np.array([3, 4]) / 5 / 2, rtol=1e-6)
  np.testing.assert_allclose(grad[0, 1], 0.0)


def test_thing_mask_on_non_multiple_grids_matches_torch_pooling():
  rng = np.random.RandomState(10)
  things = (6, 7)
  labels = rng.choice([6, 7, 1, IGNORE], (2, 10, 11), p=[0.7, 0.1, 0.1, 0.1]).astype(np.int32)
  onehot = torch.from_numpy(np.stack([labels == c for c in things], 1).astype(np.float32))
  # (3, 3): DAFormer's rule, kernel 3 with the last row and two columns dropped.
  want = (F.avg_pool2d(onehot, 3) >= 0.75).any(1).numpy()
  np.testing.assert_array_equal(np.asarray(daformer.thing_mask(labels, (3, 3), things)), want)
  # (4, 4): 10 // 4 = 2 would give 5 cells, so PyTorch adaptive-pooling bins are used.
  want = (F.adaptive_avg_pool2d(onehot, (4, 4)) >= 0.75).any(1).numpy()
  got = np.asarray(daformer.thing_mask(labels, (4, 4), things))
  np.testing.assert_array_equal(got, want)
  assert 0 < got.mean() < 1
  with pytest.raises(ValueError, match="min_ratio"):
    daformer.thing_mask(labels, (4, 4), things, min_ratio=0.5)


def test_published_constants():
  assert daformer.FD_LAMBDA == 0.005 and daformer.FD_SCALE_MIN_RATIO == 0.75
  assert dacs.PSEUDO_THRESHOLD == 0.968 and dacs.DACS_ALPHA == 0.99
  assert daformer.ALPHA == 0.999 and mic.MASK_ALPHA == 0.999
  assert math.isclose(dacs.JITTER_PROBABILITY, 0.8) and dacs.BLUR_PROBABILITY == 0.5
