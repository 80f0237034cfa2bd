"""SIM's stuff/thing banks and losses against a loop-by-loop reference written here.

The reference follows SIM's `train_sim.py` (batch 1 per image): scipy's 3x3 `ndimage.label`
stands in for skimage's `label(connectivity=2)` (same components, same raster-order numbering),
components are ranked by a reversed stable `np.argsort` of their pixel counts, banks are numpy
ring buffers, and the target losses are computed with torch so their gradients can be compared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import torch

from seat_jax.methods import differential as sim

K = 19  # Cityscapes classes
C = 4  # feature channels
H, W = 6, 8  # stride-8 maps
FULL_H, FULL_W = 11, 15  # source labels before the nearest resize
STUFF_SIZE, THING_SIZE = 2, 3
EIGHT = np.ones((3, 3), int)
STUFF = (0, 1, 2, 3, 4, 8, 9, 10)
THINGS = (5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18)

# A nearest-prototype classifier: class k scores <f, P_k> - |P_k|^2 / 2.
_PROTOTYPES = np.random.default_rng(7).normal(size=(K, C)).astype(np.float32) * 2.0
_W = _PROTOTYPES.T.copy()
_B = -0.5 * np.sum(_PROTOTYPES**2, axis=1)


def classify_jax(f):
  return jnp.matmul(f, jnp.asarray(_W), precision=jax.lax.Precision.HIGHEST) + jnp.asarray(_B)


def classify_np(f):
  return f.astype(np.float64) @ _W.astype(np.float64) + _B


# ---------------------------------------------------------------------------------------------
# The independent reference.


def ref_nearest(label_full, hw):
  t = torch.tensor(label_full, dtype=torch.float32)[None, None]
  return torch.nn.functional.interpolate(t, size=hw, mode="nearest")[0, 0].long().numpy()


def ref_gap(feat, mask):
  """sum(F * M) / max(sum(M), 1e-12) over [h, w, C] (numpy or torch)."""
  m = mask.astype(np.float64)
  if isinstance(feat, torch.Tensor):
    mt = torch.tensor(m, dtype=feat.dtype)
    return (feat * mt[..., None]).sum(dim=(0, 1)) / max(m.sum(), 1e-12)
  return (feat.astype(np.float64) * m[..., None]).sum(axis=(0, 1)) / max(m.sum(), 1e-12)


def ref_instances(mask, limit=10):
  """[(component mask)] of the <= limit largest 8-connected components, SIM's order."""
  seg, num = scipy.ndimage.label(mask, structure=EIGHT)
  if num == 0:
    return []
  pixelnum = np.array([np.sum(seg == i + 1) for i in range(num)])
  order = np.argsort(pixelnum, kind="stable")[::-1]
  return [seg == order[i] + 1 for i in range(min(limit, num))]


class RefBanks:
  """SIM's src_cls_features / src_ins_features and their pointers, one image at a time."""

  def __init__(self, stuff_size=STUFF_SIZE, thing_size=THING_SIZE):
    self.stuff = np.zeros((len(STUFF), stuff_size, C))
    self.stuff_ptr = np.zeros(len(STUFF), int)
    self.thing = np.zeros((len(THINGS), thing_size, C))
    self.thing_ptr = np.zeros(len(THINGS), int)
    self.rejected = 0

  def update(self, feat, logits, label_full):
    pred = logits.argmax(-1)
    right = ref_nearest(label_full, pred.shape)
    right[right != pred] = 255
    for ii, c in enumerate(STUFF):
      mask = right == c
      if mask.sum() == 0:
        continue
      f = ref_gap(feat, mask)
      if classify_np(f[None])[0].argmax() != c:
        self.rejected += 1
        continue
      self.stuff[ii, self.stuff_ptr[ii] % self.stuff.shape[1]] = f
      self.stuff_ptr[ii] += 1
    for ii, c in enumerate(THINGS):
      for mask in ref_instances(right == c):
        f = ref_gap(feat, mask)
        if classify_np(f[None])[0].argmax() != c:
          self.rejected += 1
          continue
        self.thing[ii, self.thing_ptr[ii] % self.thing.shape[1]] = f
        self.thing_ptr[ii] += 1

  def losses(self, feat_t, logits_t):
    """(l_cls, l_ins) of one target image; feat_t a float64 torch tensor [h, w, C]."""
    pred = logits_t.argmax(-1)
    l_cls = torch.zeros((), dtype=torch.float64)
    l_ins = torch.zeros((), dtype=torch.float64)
    for ii, c in enumerate(STUFF):
      if self.stuff_ptr[ii] / self.stuff.shape[1] <= 1:
        continue
      f = ref_gap(feat_t, pred == c)
      if classify_np(f.detach().numpy()[None])[0].argmax() != c:
        continue
      bank = torch.tensor(self.stuff[ii])
      l_cls = l_cls + torch.min(torch.sum(torch.abs(f[None] - bank), dim=1) / C)
    for ii, c in enumerate(THINGS):
      if self.thing_ptr[ii] / self.thing.shape[1] <= 1:
        continue
      masks = ref_instances(pred == c)
      bank = torch.tensor(self.thing[ii])
      for mask in masks:
        f = ref_gap(feat_t, mask)
        l_ins = l_ins + torch.min(torch.sum(torch.abs(f[None] - bank), dim=1) / C) / len(masks)
    return l_cls, l_ins


# ---------------------------------------------------------------------------------------------
# Inputs and the jitted functions under test.


def make_batch(rng, n, classes=(0, 2, 10, 5, 13, 11, 255), p=(.2, .15, .15, .15, .15, .1, .1)):
  """Source-like inputs: labels at full res, logits that mostly agree, class-shaped features."""
  label_full = rng.choice(np.array(classes), size=(n, FULL_H, FULL_W), p=np.array(p))
  small = np.stack([ref_nearest(l, (H, W)) for l in label_full])
  onehot = np.eye(K)[np.where(small == 255, 0, small)] * (small != 255)[..., None]
  logits = (2.0 * onehot + rng.normal(size=(n, H, W, K))).astype(np.float32)
  proto = np.where((small == 255)[..., None], 0.0, _PROTOTYPES[np.where(small == 255, 0, small)])
  feat = (proto + 0.8 * rng.normal(size=(n, H, W, C))).astype(np.float32)
  return feat, logits, label_full.astype(np.int32)


_update = jax.jit(lambda b, f, lo, la: sim.update_banks(b, f, lo, la, classify_jax))
_losses = jax.jit(lambda b, f, lo: sim.target_losses(b, f, lo, classify_jax))
_grad = jax.jit(jax.grad(lambda f, b, lo: sum(sim.target_losses(b, f, lo, classify_jax))))


def banks_with(ref, stuff_size=STUFF_SIZE, thing_size=THING_SIZE):
  banks = sim.init_banks(K, C, "cityscapes19", stuff_size, thing_size)
  return dict(banks, stuff=jnp.asarray(ref.stuff, jnp.float32),
              stuff_count=jnp.asarray(ref.stuff_ptr, jnp.int32),
              thing=jnp.asarray(ref.thing, jnp.float32),
              thing_count=jnp.asarray(ref.thing_ptr, jnp.int32))


def ref_batch_losses(ref, feat_t, logits_t, with_grad=False):
  ft = torch.tensor(feat_t.astype(np.float64), requires_grad=True)
  pairs = [ref.losses(ft[i], logits_t[i]) for i in range(len(feat_t))]
  l_cls = sum(p[0] for p in pairs) / len(pairs)
  l_ins = sum(p[1] for p in pairs) / len(pairs)
  if with_grad:
    (l_cls + l_ins).backward()
    return l_cls.item(), l_ins.item(), ft.grad.numpy()
  return l_cls.item(), l_ins.item()


# ---------------------------------------------------------------------------------------------
# Tests.


def test_class_split_by_name():
  assert sim.class_split("cityscapes19") == (STUFF, THINGS)
  # SYNTHIA's 16: no terrain (9), truck (14), train (16); the rest renumbered.
  assert sim.class_split("synthia16") == ((0, 1, 2, 3, 4, 8, 9), (5, 6, 7, 10, 11, 12, 13, 14, 15))
  with pytest.raises(ValueError, match="num_classes"):
    sim.init_banks(16, C, "cityscapes19")
  banks = sim.init_banks(16, 2048, "synthia16")
  assert banks["stuff"].shape == (7, 50, 2048) and banks["thing"].shape == (9, 500, 2048)


def test_nearest_resize_matches_torch():
  for (hh, ww), out in (((FULL_H, FULL_W), (H, W)), ((720, 1280), (91, 161)),
                        ((512, 1024), (65, 129)), ((5, 7), (9, 13))):
    label = np.arange(hh * ww, dtype=np.int32).reshape(1, hh, ww)
    got = np.asarray(sim.nearest_resize_labels(jnp.asarray(label), out))[0]
    np.testing.assert_array_equal(got, ref_nearest(label[0], out))


def test_connected_components_match_scipy():
  rng = np.random.default_rng(0)
  cc = jax.jit(sim.connected_components)
  masks = [rng.random((13, 17)) < p for p in (0.3, 0.45, 0.6, 0.75)]
  spiral = np.zeros((13, 17), bool)  # a long thin snake: many propagation rounds
  spiral[::2, :] = True
  spiral[1::4, -1] = True
  spiral[3::4, 0] = True
  masks += [spiral, np.zeros((13, 17), bool), np.ones((13, 17), bool)]
  for mask in masks:
    seg, num = scipy.ndimage.label(mask, structure=EIGHT)
    expected = np.full(mask.shape, -1)
    for i in range(1, num + 1):
      expected[seg == i] = np.flatnonzero(seg == i).min()
    np.testing.assert_array_equal(np.asarray(cc(jnp.asarray(mask))), expected)
  snake = np.asarray(cc(jnp.asarray(spiral)))
  assert set(np.unique(snake[spiral])) == {0}  # one component, named by pixel 0


def test_top_k_by_max_is_top_k_with_ties():
  """The sort-free top-k gives lax.top_k's values and indices, ties in index order."""
  rng = np.random.default_rng(5)
  for n, k in ((1, 1), (7, 7), (40, 10), (300, 10)):
    keys = rng.integers(-1, 3, (3, n)).astype(np.int32)  # mostly ties
    expected = jax.lax.top_k(keys, k)
    got = sim._top_k_by_max(jnp.asarray(keys), k)  # pylint: disable=protected-access
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))


def test_largest_components_sizes_and_ties():
  rng = np.random.default_rng(1)
  ids = jnp.asarray([13, 11, 5], jnp.int32)
  capped = False
  for _ in range(3):
    class_map = rng.choice(np.array([13, 11, 0, 255]), size=(12, 12), p=(.3, .1, .3, .3))
    labels, roots, sizes, valid = jax.jit(sim.largest_components)(jnp.asarray(class_map), ids)
    roots, sizes, valid = map(np.asarray, (roots, sizes, valid))
    for t, c in enumerate((13, 11, 5)):
      comps = ref_instances(class_map == c)
      capped |= len(ref_instances(class_map == c, limit=100)) > 10
      assert valid[t].sum() == len(comps)
      for i, comp in enumerate(comps):
        assert roots[t, i] == np.flatnonzero(comp).min()
        assert sizes[t, i] == comp.sum()
        np.testing.assert_array_equal(np.asarray(labels) == roots[t, i], comp)
    assert not valid[2].any()  # class 5 absent
  assert capped  # some class had more than 10 components: only 10 were kept


def test_update_and_losses_match_reference_over_steps():
  rng = np.random.default_rng(3)
  ref = RefBanks()
  banks = sim.init_banks(K, C, "cityscapes19", STUFF_SIZE, THING_SIZE)
  seen_active = seen_stuff_loss = seen_thing_loss = 0
  for _ in range(5):
    feat, logits, label_full = make_batch(rng, 2)
    for i in range(2):
      ref.update(feat[i], logits[i], label_full[i])
    banks = _update(banks, jnp.asarray(feat), jnp.asarray(logits), jnp.asarray(label_full))
    np.testing.assert_array_equal(np.asarray(banks["stuff_count"]), ref.stuff_ptr)
    np.testing.assert_array_equal(np.asarray(banks["thing_count"]), ref.thing_ptr)
    np.testing.assert_allclose(np.asarray(banks["stuff"]), ref.stuff, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(banks["thing"]), ref.thing, rtol=1e-5, atol=1e-6)

    feat_t, logits_t, _ = make_batch(rng, 2)
    got = _losses(banks, jnp.asarray(feat_t), jnp.asarray(logits_t))
    want = ref_batch_losses(ref, feat_t, logits_t)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    seen_active += (ref.stuff_ptr > STUFF_SIZE).sum() + (ref.thing_ptr > THING_SIZE).sum()
    seen_stuff_loss += want[0] > 0
    seen_thing_loss += want[1] > 0
  # The run exercised rejections, ring wrap-around, inactive classes and both losses.
  assert ref.rejected > 0 and ref.thing_ptr.max() > 2 * THING_SIZE
  assert (ref.thing_ptr > THING_SIZE).any() and (ref.thing_ptr <= THING_SIZE).any()
  assert (ref.stuff_ptr > STUFF_SIZE).any() and (ref.stuff_ptr == 0).any()
  assert seen_active and seen_stuff_loss and seen_thing_loss

  # The gradient reaches the target features only where the reference's does.
  grad = np.asarray(_grad(jnp.asarray(feat_t), banks, jnp.asarray(logits_t)))
  _, _, want_grad = ref_batch_losses(ref, feat_t, logits_t, with_grad=True)
  assert np.abs(want_grad).sum() > 0
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_many_instances_in_one_image_wrap_the_ring():
  """Seven cars (sizes 3, 2, 2, 1, 1, 1, 1) in one image: only the last 3 accepted writes stay."""
  small = np.full((H, W), 255)
  for y, x in ((0, 0), (0, 1), (1, 0), (0, 3), (0, 4), (0, 6), (1, 7), (3, 0), (3, 2), (3, 4),
               (5, 7)):
    small[y, x] = 13
  small[5, :3] = 0  # some road too
  # Full-res labels whose nearest resize gives back `small` exactly.
  src = ref_nearest(np.arange(FULL_H * FULL_W).reshape(FULL_H, FULL_W), (H, W))
  label_full = np.full((1, FULL_H * FULL_W), 255, np.int32)
  label_full[0, src.ravel()] = small.ravel()
  label_full = label_full.reshape(1, FULL_H, FULL_W)
  kept = ref_nearest(label_full[0], (H, W))
  np.testing.assert_array_equal(kept, small)
  logits = np.eye(K)[np.where(kept == 255, 1, kept)][None].astype(np.float32) * 5
  rng = np.random.default_rng(5)
  feat = (_PROTOTYPES[np.where(kept == 255, 1, kept)] + 0.3 * rng.normal(size=(H, W, C)))[None]
  feat = feat.astype(np.float32)
  ref = RefBanks()
  ref.update(feat[0], logits[0], label_full[0])
  assert ref.thing_ptr[THINGS.index(13)] > THING_SIZE  # the wrap happened within one image
  banks = _update(sim.init_banks(K, C, "cityscapes19", STUFF_SIZE, THING_SIZE),
                  jnp.asarray(feat), jnp.asarray(logits), jnp.asarray(label_full))
  np.testing.assert_array_equal(np.asarray(banks["thing_count"]), ref.thing_ptr)
  np.testing.assert_allclose(np.asarray(banks["thing"]), ref.thing, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(banks["stuff"]), ref.stuff, rtol=1e-5, atol=1e-6)


def test_activation_needs_more_writes_than_the_bank_holds():
  rng = np.random.default_rng(11)
  ref = RefBanks()
  ref.stuff[:] = rng.normal(size=ref.stuff.shape)
  ref.thing[:] = rng.normal(size=ref.thing.shape)
  feat_t, logits_t, _ = make_batch(rng, 1)
  # Full but never overwritten (count == size): no loss at all, as `ptr / size > 1` says.
  ref.stuff_ptr[:] = STUFF_SIZE
  ref.thing_ptr[:] = THING_SIZE
  got = _losses(banks_with(ref), jnp.asarray(feat_t), jnp.asarray(logits_t))
  np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0])
  # One more write activates every class; stuff classes absent from the prediction still count
  # when the zero vector passes the classifier check (as in the reference).
  ref.stuff_ptr[:] = STUFF_SIZE + 1
  ref.thing_ptr[:] = THING_SIZE + 1
  got = np.asarray(_losses(banks_with(ref), jnp.asarray(feat_t), jnp.asarray(logits_t)))
  want = ref_batch_losses(ref, feat_t, logits_t)
  assert want[0] > 0 and want[1] > 0
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_all_ignore_source_writes_nothing_and_empty_target_things_give_zero():
  rng = np.random.default_rng(2)
  feat, logits, _ = make_batch(rng, 2)
  banks = sim.init_banks(K, C, "cityscapes19", STUFF_SIZE, THING_SIZE)
  label_full = np.full((2, FULL_H, FULL_W), 255, np.int32)
  out = _update(banks, jnp.asarray(feat), jnp.asarray(logits), jnp.asarray(label_full))
  assert not np.asarray(out["stuff_count"]).any() and not np.asarray(out["thing_count"]).any()
  assert not np.asarray(out["thing"]).any()
  # Active thing banks but a target predicted as road everywhere: no instances, no thing loss.
  active = dict(out, thing_count=jnp.full((len(THINGS),), THING_SIZE + 1, jnp.int32),
                thing=jnp.ones_like(out["thing"]))
  road = np.zeros((2, H, W, K), np.float32)
  road[..., 0] = 1.0
  _, l_thing = _losses(active, jnp.asarray(feat), jnp.asarray(road))
  assert float(l_thing) == 0.0
