"""Differential treatment (SIM; Wang et al., CVPR 2020): stuff and thing feature banks, in JAX.

SIM aligns target features to source features in two ways (docs/compared-methods-research.md
section 3): a "stuff" class (road, sky, ...) is one region per image, so the target's class
feature is pulled towards the nearest of the last 50 source class features; a "thing" class
(car, person, ...) comes in instances, so each of the <= 10 largest target instances (8-connected
components of the predicted class) is pulled towards the nearest of the last 500 source instance
features. The reference (SHI-Labs/Unsupervised-Domain-Adaptation-with-Differential-Treatment,
`train_sim.py`, `utils/functions.py`) runs skimage and Python loops on the host per image; here
every part has static shapes so it jits inside the train step:
  * connected components: min-label propagation over 3x3 neighbourhoods with pointer jumping in
    a `jax.lax.while_loop`; a component is named by its first pixel in raster order (its
    smallest flat index), the order skimage numbers them in;
  * the <= 10 largest components per class: ten max-reductions over every pixel with validity
    masks (`_top_k_by_max`; a `top_k` over every pixel is a full sort on GPUs);
  * banks: ring buffers with per-class write counters in a dict of arrays (`init_banks`).

Everything runs at the features' stride-8 resolution (layer4 output, logits of the main head).
Source images only fill the banks (`update_banks`, features stop-gradiented); target images only
give losses (`target_losses`), whose gradient reaches the network through the target features.
`classify` is the caller's classifier check: the main head applied to pooled features as 1x1
inputs, [M, C] -> [M, K] logits (the reference runs it in fp16; the caller picks the dtype).

Left to the caller: the weights (`LAMBDA_STUFF`, `LAMBDA_THING`), the reference's extra
`i_iter > 0` guard (implied by the activation rule with the published bank sizes, since a source
image writes at most 1 stuff and 10 thing features per class), and the SSL stage's 0.001 weights.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import batch as batch_keys
from seat_jax import labels as label_tables
from seat_jax import models
from seat_jax.methods import base

# Published weights (train_sim.py LAMBDA_ADV_CLS / LAMBDA_ADV_INS) and bank sizes
# (NUM_PROTOTYPE, and 10x that per thing class).
LAMBDA_STUFF = 0.01
LAMBDA_THING = 0.01
STUFF_BANK_SIZE = 50
THING_BANK_SIZE = 500
MAX_INSTANCES = 10  # the largest components kept per thing class and image
# train_sim_ssl.py (the self-training stage, not used by SEAT) lowers both weights to this.
LAMBDA_SSL = 0.001

# train_sim.py BG_LABEL (stuff) and FG_LABEL (things) as Cityscapes train ids, here by name so
# the 16-class SYNTHIA space (no terrain, truck, train) takes the same split.
STUFF_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "vegetation", "terrain", "sky")
THING_CLASSES = ("pole", "traffic light", "traffic sign", "person", "rider", "car", "truck",
                 "bus", "train", "motorcycle", "bicycle")

Banks = dict[str, jax.Array]
Classify = Callable[[jax.Array], jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST


def class_split(label_space: str | label_tables.LabelSpace) -> tuple[tuple[int, ...],
                                                                      tuple[int, ...]]:
  """(stuff class ids, thing class ids) of a label space, in its own id order."""
  space = (label_tables.get_label_space(label_space) if isinstance(label_space, str)
           else label_space)
  unknown = [c for c in space.classes if c not in STUFF_CLASSES + THING_CLASSES]
  if unknown:
    raise ValueError(f"SIM has no stuff/thing split for classes {unknown} of {space.name!r}.")
  stuff = tuple(i for i, c in enumerate(space.classes) if c in STUFF_CLASSES)
  things = tuple(i for i, c in enumerate(space.classes) if c in THING_CLASSES)
  return stuff, things


def init_banks(num_classes: int, channels: int, label_space: str | label_tables.LabelSpace,
               stuff_size: int = STUFF_BANK_SIZE, thing_size: int = THING_BANK_SIZE) -> Banks:
  """Empty banks: zero ring buffers, zero write counters and the class ids of each row.

  stuff [S, stuff_size, C] f32, thing [T, thing_size, C] f32; *_count [S] / [T] int32 writes so
  far (the next slot is count % size); *_ids the class id of each row.
  """
  space = (label_tables.get_label_space(label_space) if isinstance(label_space, str)
           else label_space)
  if num_classes != space.num_classes:
    raise ValueError(f"SIM banks: num_classes {num_classes} does not match label space "
                     f"{space.name!r} ({space.num_classes} classes).")
  if stuff_size < 1 or thing_size < 1:
    raise ValueError(f"SIM bank sizes must be >= 1, got {stuff_size} and {thing_size}.")
  stuff, things = class_split(space)
  return {
      "stuff": jnp.zeros((len(stuff), stuff_size, channels), jnp.float32),
      "stuff_count": jnp.zeros((len(stuff),), jnp.int32),
      "stuff_ids": jnp.asarray(stuff, jnp.int32),
      "thing": jnp.zeros((len(things), thing_size, channels), jnp.float32),
      "thing_count": jnp.zeros((len(things),), jnp.int32),
      "thing_ids": jnp.asarray(things, jnp.int32),
  }


# --------------------------------------------------------------------------------------------
# Connected components and the largest ones per class.


def _component_labels(class_map: jax.Array, foreground: jax.Array) -> jax.Array:
  """8-connected components of foreground pixels that share a class id, [h, w] int32.

  A foreground pixel gets the smallest flat index of its component; background gets h * w.
  Each round takes the minimum label over the 3x3 neighbours of the same class, then jumps
  every label to its target's label (labels only point inside the component and never grow, so
  the fixed point is the component's smallest index).
  """
  h, w = class_map.shape
  size = h * w
  ids = jnp.where(foreground, class_map.astype(jnp.int32), -1)
  padded_ids = jnp.pad(ids, 1, constant_values=-2)
  same = [padded_ids[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == ids
          for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
  start = jnp.where(foreground, jnp.arange(size, dtype=jnp.int32).reshape(h, w), size)

  def one_round(lab):
    padded = jnp.pad(lab, 1, constant_values=size)
    neighbours = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    low = lab
    for nb, ok in zip(neighbours, same):
      low = jnp.minimum(low, jnp.where(ok, nb, size))
    flat = jnp.concatenate([low.reshape(-1), jnp.array([size], jnp.int32)])
    return flat[flat[:-1]].reshape(h, w)

  def body(carry):
    lab, _ = carry
    new = one_round(lab)
    return new, jnp.any(new != lab)

  labels, _ = jax.lax.while_loop(lambda c: c[1], body, (start, jnp.array(True)))
  return labels


def connected_components(mask: jax.Array) -> jax.Array:
  """8-connected components of a boolean [h, w] map (skimage `connectivity=2`).

  Returns [h, w] int32: each True pixel holds the flat index (y * w + x) of its component's
  first pixel in raster order; False pixels hold -1.
  """
  mask = jnp.asarray(mask, bool)
  labels = _component_labels(jnp.zeros(mask.shape, jnp.int32), mask)
  return jnp.where(mask, labels, -1)


def _top_k_by_max(keys: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k(keys, k)` for int32 keys > INT32_MIN, as k max-reductions over the last axis.

  Same values and indices, ties included (the lower index first). Why not top_k: XLA:GPU lowers
  a top_k over thousands of pixels to a full sort, which for sm_70 becomes a CUB radix sort whose
  workspace query needs the CUDA runtime at compile time (a deviceless V100 compile fails); for
  k = 10 the reductions are also less work than sorting every row.
  """
  floor = jnp.iinfo(jnp.int32).min
  values, indices = [], []
  for _ in range(k):
    index = jnp.argmax(keys, axis=-1)
    values.append(jnp.max(keys, axis=-1))
    indices.append(index)
    taken = jnp.arange(keys.shape[-1]) == index[..., None]
    keys = jnp.where(taken, floor, keys)
  return jnp.stack(values, axis=-1), jnp.stack(indices, axis=-1).astype(jnp.int32)


def largest_components(class_map: jax.Array, class_ids: jax.Array,
                       max_count: int = MAX_INSTANCES) -> tuple[jax.Array, ...]:
  """The <= max_count largest 8-connected components of each class in `class_ids`.

  class_map: [h, w] int ids (any id outside class_ids, e.g. 255, is background); class_ids: [T].
  Returns (labels [h, w] as `_component_labels`, roots [T, L] flat index naming each selected
  component, sizes [T, L] pixel counts, valid [T, L] bool), L = max_count, largest first. Equal
  sizes put the component whose first pixel comes later first, as SIM's reversed
  `np.argsort(pixelnum)` does for a stable sort over skimage's raster-order numbering.
  """
  h, w = class_map.shape
  size = h * w
  if size * (size + 1) >= 2**31:
    raise ValueError(f"largest_components: a {h}x{w} map is too large for int32 sort keys.")
  class_map = class_map.astype(jnp.int32)
  class_ids = jnp.asarray(class_ids, jnp.int32)
  foreground = jnp.any(class_map[..., None] == class_ids, axis=-1)
  labels = _component_labels(class_map, foreground)
  flat = labels.reshape(-1)
  counts = jax.ops.segment_sum(foreground.reshape(-1).astype(jnp.int32), flat,
                               num_segments=size + 1)[:size]
  index = jnp.arange(size, dtype=jnp.int32)
  is_root = foreground.reshape(-1) & (flat == index)
  of_class = is_root[None, :] & (class_map.reshape(-1)[None, :] == class_ids[:, None])
  keys = jnp.where(of_class, counts[None, :] * size + index[None, :], -1)
  top_keys, roots = _top_k_by_max(keys, min(max_count, size))
  if max_count > size:  # pad to the static slot count
    pad = ((0, 0), (0, max_count - size))
    top_keys = jnp.pad(top_keys, pad, constant_values=-1)
    roots = jnp.pad(roots, pad)
  valid = top_keys >= 0
  sizes = jnp.where(valid, top_keys // size, 0)
  return labels, roots.astype(jnp.int32), sizes, valid


# --------------------------------------------------------------------------------------------
# Pooling, the classifier check and the per-image slots.


def masked_average_pool(feat: jax.Array, weights: jax.Array) -> jax.Array:
  """SIM's `global_avg_pool`: sum(F * M) / max(sum(M), 1e-12), float32.

  feat [h, w, C]; weights [M, h, w] (0/1 masks, held constant) -> [M, C]. An empty mask gives a
  zero vector.
  """
  weights = jax.lax.stop_gradient(weights.astype(jnp.float32)).reshape(weights.shape[0], -1)
  feat = feat.astype(jnp.float32).reshape(-1, feat.shape[-1])
  sums = jnp.matmul(weights, feat, precision=_HIGHEST)
  return sums / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-12)


def classifier_agrees(classify: Classify, pooled: jax.Array, class_ids: jax.Array) -> jax.Array:
  """SIM's check ok(f, c): argmax of the head on each pooled feature equals its class, [M] bool."""
  logits = classify(pooled)
  return jnp.argmax(logits.astype(jnp.float32), axis=-1) == class_ids


def _image_slots(feat: jax.Array, class_map: jax.Array, stuff_ids: jax.Array,
                 thing_ids: jax.Array, max_instances: int) -> tuple[jax.Array, ...]:
  """One image's pooled features: stuff [S, C] + present [S], things [T, L, C] + valid [T, L]."""
  h, w, channels = feat.shape
  stuff_masks = class_map[None] == stuff_ids[:, None, None]
  labels, roots, _, valid = largest_components(class_map, thing_ids, max_instances)
  thing_masks = (labels[None, None] == roots[..., None, None]) & valid[..., None, None]
  masks = jnp.concatenate([stuff_masks, thing_masks.reshape(-1, h, w)], axis=0)
  pooled = masked_average_pool(feat, masks)
  num_stuff = stuff_ids.shape[0]
  stuff = pooled[:num_stuff]
  things = pooled[num_stuff:].reshape(thing_ids.shape[0], max_instances, channels)
  return stuff, jnp.any(stuff_masks, axis=(1, 2)), things, valid


def nearest_resize_labels(labels: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """[N, H, W] -> [N, h, w] as PyTorch `F.interpolate(mode='nearest')`: src = floor(dst * H / h).

  The source indices use float32 arithmetic like PyTorch's kernel, computed on the host.
  """
  def table(n_in, n_out):
    if n_in == n_out:
      return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)

  rows = table(labels.shape[1], out_hw[0])
  cols = table(labels.shape[2], out_hw[1])
  return labels[:, rows][:, :, cols]


def _check_shapes(banks: Banks, feat: jax.Array, logits: jax.Array) -> None:
  if feat.ndim != 4 or logits.ndim != 4 or feat.shape[:3] != logits.shape[:3]:
    raise ValueError(f"SIM needs features [N, h, w, C] and logits [N, h, w, K] at the same "
                     f"resolution, got {feat.shape} and {logits.shape}.")
  if feat.shape[-1] != banks["stuff"].shape[-1]:
    raise ValueError(f"SIM banks hold {banks['stuff'].shape[-1]} channels, features have "
                     f"{feat.shape[-1]}.")


# --------------------------------------------------------------------------------------------
# Source side: fill the banks.


def _ring_write(bank: jax.Array, count: jax.Array, feats: jax.Array,
                accept: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Appends the accepted rows of feats [R, C] (in order) to one ring buffer [B, C]."""
  slots = bank.shape[0]
  accept = accept.astype(jnp.int32)
  rank = jnp.cumsum(accept) - accept  # position among this image's accepted rows
  total = jnp.sum(accept)
  # Only the last `slots` accepted rows survive a wrap; writing just those keeps targets unique.
  keep = (accept > 0) & (rank >= total - slots)
  where = jnp.where(keep, (count + rank) % slots, slots)
  return bank.at[where].set(feats, mode="drop"), count + total


def update_banks(banks: Banks, feat_s: jax.Array, logits_s: jax.Array, labels_s: jax.Array,
                 classify: Classify, max_instances: int = MAX_INSTANCES) -> Banks:
  """Source memory update: writes correctly classified class / instance features, no loss.

  feat_s [N, h, w, C] layer4 features; logits_s [N, h, w, K] main-head logits at the same
  stride; labels_s [N, H, W] train ids (255 ignored), nearest-resized to [h, w]. Per image, in
  batch order as the reference's batch-1 loop would: pixels whose label differs from the argmax
  become 255; a present stuff class writes its pooled feature, each of the <= 10 largest
  components of a thing class writes its own, both only when `classify` agrees.
  """
  _check_shapes(banks, feat_s, logits_s)
  n, h, w, _ = feat_s.shape
  feat_s = jax.lax.stop_gradient(feat_s.astype(jnp.float32))
  pred = jnp.argmax(jax.lax.stop_gradient(logits_s).astype(jnp.float32), axis=-1)
  gt = nearest_resize_labels(labels_s.astype(jnp.int32), (h, w))
  right = jnp.where(gt == pred, gt, label_tables.IGNORE_ID)
  stuff_ids, thing_ids = banks["stuff_ids"], banks["thing_ids"]
  stuff, present, things, valid = jax.vmap(
      lambda f, m: _image_slots(f, m, stuff_ids, thing_ids, max_instances))(feat_s, right)
  num_stuff, num_things, channels = stuff.shape[1], things.shape[1], feat_s.shape[-1]
  pooled = jnp.concatenate([stuff.reshape(-1, channels), things.reshape(-1, channels)], axis=0)
  slot_ids = jnp.concatenate([
      jnp.broadcast_to(stuff_ids, (n, num_stuff)).reshape(-1),
      jnp.broadcast_to(thing_ids[None, :, None], (n, num_things, max_instances)).reshape(-1)])
  agrees = classifier_agrees(classify, pooled, slot_ids)
  stuff_ok = present & agrees[:n * num_stuff].reshape(n, num_stuff)
  thing_ok = valid & agrees[n * num_stuff:].reshape(n, num_things, max_instances)

  def one_image(carry, xs):
    stuff_bank, stuff_count, thing_bank, thing_count = carry
    s_feat, s_ok, t_feat, t_ok = xs
    stuff_bank, stuff_count = jax.vmap(_ring_write)(
        stuff_bank, stuff_count, s_feat[:, None], s_ok[:, None])
    thing_bank, thing_count = jax.vmap(_ring_write)(thing_bank, thing_count, t_feat, t_ok)
    return (stuff_bank, stuff_count, thing_bank, thing_count), None

  carry = (banks["stuff"], banks["stuff_count"], banks["thing"], banks["thing_count"])
  (stuff_bank, stuff_count, thing_bank, thing_count), _ = jax.lax.scan(
      one_image, carry, (stuff, stuff_ok, things, thing_ok))
  return dict(banks, stuff=stuff_bank, stuff_count=stuff_count, thing=thing_bank,
              thing_count=thing_count)


# --------------------------------------------------------------------------------------------
# Target side: the losses.


def _nearest_l1(queries: jax.Array, bank: jax.Array) -> jax.Array:
  """min_j mean_c |q - bank_j| for queries [R, C] against one bank [B, C], [R] float32.

  The nearest entry is found without gradient (the reference's min passes its gradient to that
  entry only); the distance to it is then recomputed with gradient for the queries.
  """
  fixed = jax.lax.stop_gradient(queries)
  dist = jnp.mean(jnp.abs(fixed[:, None, :] - bank[None]), axis=-1)
  nearest = bank[jnp.argmin(dist, axis=-1)]
  return jnp.mean(jnp.abs(queries - nearest), axis=-1)


def target_losses(banks: Banks, feat_t: jax.Array, logits_t: jax.Array, classify: Classify,
                  max_instances: int = MAX_INSTANCES) -> tuple[jax.Array, jax.Array]:
  """(l_stuff, l_thing), float32 scalars, averaged over the N target images.

  feat_t [N, h, w, C]; logits_t [N, h, w, K] at the same stride (their argmax is the class map).
  A class counts only once its bank was written more often than it holds (count > size, the
  reference's `ptr / size > 1`). Stuff: per active class, the pooled feature of its predicted
  pixels (a zero vector when absent, as in the reference) must pass `classify`; the loss adds
  its min mean-abs distance to the bank. Things: per active class with k >= 1 components among
  the <= 10 largest, the loss adds each component's min distance / k, with no classifier check.
  Banks are constants; the gradient reaches the network through feat_t only.
  """
  _check_shapes(banks, feat_t, logits_t)
  n = feat_t.shape[0]
  pred = jnp.argmax(jax.lax.stop_gradient(logits_t).astype(jnp.float32), axis=-1)
  stuff_ids, thing_ids = banks["stuff_ids"], banks["thing_ids"]
  stuff, _, things, valid = jax.vmap(
      lambda f, m: _image_slots(f, m, stuff_ids, thing_ids, max_instances))(feat_t, pred)
  num_stuff, channels = stuff.shape[1], feat_t.shape[-1]
  agrees = classifier_agrees(classify, jax.lax.stop_gradient(stuff).reshape(-1, channels),
                             jnp.tile(stuff_ids, n)).reshape(n, num_stuff)
  stuff_bank = jax.lax.stop_gradient(banks["stuff"])
  thing_bank = jax.lax.stop_gradient(banks["thing"])
  stuff_active = banks["stuff_count"] > stuff_bank.shape[1]
  thing_active = banks["thing_count"] > thing_bank.shape[1]

  # [S, N] distances, one class (its bank) at a time.
  stuff_dist = jax.vmap(_nearest_l1)(jnp.swapaxes(stuff, 0, 1), stuff_bank)
  stuff_terms = jnp.where(stuff_active[:, None] & agrees.T, stuff_dist, 0.0)
  l_stuff = jnp.sum(stuff_terms) / n

  # Thing classes one after another (lax.map) to keep the [N*L, B, C] distance block small.
  def thing_class(xs):
    queries, bank = xs  # [N, L, C], [B, C]
    return _nearest_l1(queries.reshape(-1, channels), bank).reshape(n, max_instances)

  thing_dist = jax.lax.map(thing_class, (jnp.swapaxes(things, 0, 1), thing_bank))  # [T, N, L]
  valid = jnp.swapaxes(valid, 0, 1)
  per_instance = jnp.where(valid, thing_dist, 0.0)
  k = jnp.sum(valid, axis=-1)
  per_class = jnp.sum(per_instance, axis=-1) / jnp.maximum(k, 1)
  l_thing = jnp.sum(jnp.where(thing_active[:, None], per_class, 0.0)) / n
  return l_stuff, l_thing


# ---------------------------------------------------------------------------------------------
# The step's plug-in.


def head_classifier(model, head_params) -> Classify:
  """The main head applied to pooled feature vectors [M, C] -> logits [M, K] (SIM's check).

  On a 1x1 input only the centre tap of each dilated branch and the biases contribute, as in
  the reference's `layer6(f.view(1, C, 1, 1))`.
  """
  head = models.head_factory(model)()

  def classify(vectors: jax.Array) -> jax.Array:
    logits = head.apply({"params": jax.lax.stop_gradient(head_params)}, vectors[:, None, None, :])
    return logits[:, 0, 0, :].astype(jnp.float32)
  return classify


@dataclasses.dataclass(frozen=True)
class Differential(base.Method):
  """On the target pass: source features fill the stuff/thing banks (state `banks`), target
  features are pulled to their nearest bank entries."""
  num_classes: int = 19
  channels: int = 2048
  label_space: str = "cityscapes19"
  stuff_bank: int = STUFF_BANK_SIZE
  thing_bank: int = THING_BANK_SIZE
  needs_target_pass = True
  needs_source_features = True
  needs_target_features = True

  @staticmethod
  def add_config(config):
    # Differential treatment (Wang et al. 2020): stuff classes matched to a class-wise memory of
    # source features, thing instances to an instance-wise one (layer4 features). 0 = off.
    d = base.section(config, "differential")
    d.stuff_weight = 0.0  # stuff loss weight (published 0.01)
    d.thing_weight = 0.0  # thing loss weight (published 0.01)
    d.stuff_bank = 50  # memory slots per stuff class
    d.thing_bank = 500  # memory slots per thing class

  @staticmethod
  def enabled(config):
    return bool(config.differential.stuff_weight or config.differential.thing_weight)

  @staticmethod
  def weights(config):
    return {"stuff_weight": config.differential.stuff_weight,
            "thing_weight": config.differential.thing_weight}

  @classmethod
  def from_config(cls, config):
    return cls(num_classes=int(config.model.num_classes),
               channels=models.layer4_channels(config.model.base_width),
               label_space=config.data.label_space,
               stuff_bank=int(config.differential.stuff_bank),
               thing_bank=int(config.differential.thing_bank))

  def init_state(self, variables):
    del variables
    return {"banks": init_banks(self.num_classes, self.channels, self.label_space,
                                stuff_size=self.stuff_bank, thing_size=self.thing_bank)}

  def target_terms(self, ctx):
    w, source, target = ctx.weights, ctx.source, ctx.target
    classify = head_classifier(ctx.model, ctx.params["main_head"])
    banks = update_banks(
        ctx.method_state["banks"], jax.lax.stop_gradient(source.features),
        jax.lax.stop_gradient(source.main8), ctx.batch[batch_keys.SOURCE_LABEL], classify)
    stuff, thing = target_losses(banks, target.features, target.main8, classify)
    ctx.method_state["banks"] = banks
    return (w["stuff_weight"] * stuff + w["thing_weight"] * thing,
            {"stuff_loss": stuff, "thing_loss": thing})
