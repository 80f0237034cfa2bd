"""Toldo et al.'s feature-space losses (WACV 2021, LTTM/UDAclustering), as pure jittable functions.

The method adds four terms to source cross-entropy, all on layer4 features (post-ReLU, stride 8)
and on the softmax of the main logits upsampled to the input size:
  - clustering: features close (mean L1) to the centroid of their predicted class, centroids of
    different classes far apart;
  - orthogonality: each feature's softmax over its dot products with the centroids has low
    entropy (one dominant class direction);
  - sparsity: centroids, scaled to a maximum of 1 per class, pushed away from 0.5 per channel;
  - IW-MaxSquare (Chen et al. 2019) on the full-resolution target softmax, with image-wise class
    weights.
Labels come from the predictions of both domains, never from source ground truth (the reference's
default). The reference computes the centroids twice per step: for the clustering term from the
argmax of the softmax bilinearly downsampled to the feature size (pass A), for orthogonality and
sparsity from the full-resolution argmax nearest-downsampled (pass B). Centroids are per-batch
means over source and target features together, not detached and not averaged over steps (the
reference's default `centroid_smoothing` -1), so gradients flow through them.

Static shapes throughout: a class absent from both domains keeps a zero centroid and is masked out
everywhere instead of the reference's +inf row. Two cases where the reference returns NaN return
finite values here (see `cluster_terms` and `sparsity_loss`).
"""

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import models
from seat_jax.methods import base

# README commands of LTTM/UDAclustering for ResNet-101 (`tools/train_UDA.py` flags lambda_cluster,
# lambda_ortho, lambda_sparse, lambda_entropy, IW_ratio; IW_ratio defaults to 0.2).
PUBLISHED_WEIGHTS = {
    "gta5": {"cluster": 2e-2, "ortho": 2.0, "sparse": 0.5, "entropy": 0.1, "iw_ratio": 0.2},
    "synthia": {"cluster": 2e-2, "ortho": 0.1, "sparse": 1.0, "entropy": 5e-2, "iw_ratio": 0.0},
}
# Fixed defaults of `train_UDA.py` that the README commands never change.
ORTHO_TEMPERATURE = 1.0  # --ortho_temp
SPARSE_RHO = 0.5  # --sparse_rho (the exponent, --sparse_norm_order, is 2)
# --cluster_norm_order 1: the distance is sum |x| / numel, i.e. mean |x|.

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------
# Label maps at the feature resolution.


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of PyTorch's `interpolate(mode='nearest')` along one axis (static).

  PyTorch takes min(floor(i * scale), in - 1) with scale = in / out rounded to float32 and the
  product in float32; reproduced in float32 so the rare rounding cases agree as well.
  """
  if in_size == out_size:
    return np.arange(out_size)
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def labels_bilinear(probs: jax.Array, out_hw: Sequence[int]) -> jax.Array:
  """Pass A labels: argmax of `probs` [N, H, W, K] resized (align_corners) to `out_hw`."""
  small = models.resize_bilinear(probs.astype(jnp.float32), out_hw)
  return jax.lax.stop_gradient(jnp.argmax(small, axis=-1).astype(jnp.int32))


def labels_nearest(probs: jax.Array, out_hw: Sequence[int]) -> jax.Array:
  """Pass B labels: argmax of `probs` [N, H, W, K] at full size, nearest-downsampled."""
  full = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  rows = nearest_indices(probs.shape[1], int(out_hw[0]))
  cols = nearest_indices(probs.shape[2], int(out_hw[1]))
  return jax.lax.stop_gradient(full[:, rows][:, :, cols])


# --------------------------------------------------------------------------------------------
# Centroids and the three feature losses.


def _abs(x: jax.Array) -> jax.Array:
  """|x| whose gradient at 0 is 0, as torch.norm(p=1) in the reference (jnp.abs gives 1 there).

  Exact zeros are common here: post-ReLU channels that are 0 for every feature of a class, and a
  class with a single feature, which equals its centroid.
  """
  return x * jax.lax.stop_gradient(jnp.sign(x))


def _flat(feat: jax.Array, labels: jax.Array, num_classes: int):
  """Features [N, h, w, C] -> [M, C] float32 and the one-hot of their labels [M, K] float32."""
  feat = feat.astype(jnp.float32).reshape(-1, feat.shape[-1])
  one_hot = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32)
  return feat, one_hot


def class_centroids(feat_s: jax.Array, feat_t: jax.Array, labels_s: jax.Array,
                    labels_t: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
  """Per-class means over source and target features together: (centroids [K, C], valid [K]).

  A class is valid when at least one feature of either domain carries it; invalid rows are 0.
  Count-weighted across domains (the mean of the concatenation), differentiable w.r.t. features.
  """
  fs, hs = _flat(feat_s, labels_s, num_classes)
  ft, ht = _flat(feat_t, labels_t, num_classes)
  sums = (jnp.einsum("mk,mc->kc", hs, fs, precision=_HIGHEST)
          + jnp.einsum("mk,mc->kc", ht, ft, precision=_HIGHEST))
  counts = jnp.sum(hs, axis=0) + jnp.sum(ht, axis=0)
  return sums / jnp.maximum(counts, 1.0)[:, None], counts > 0


def _feat_to_centroid(feat: jax.Array, labels: jax.Array, centroids: jax.Array) -> jax.Array:
  """Mean over the classes present in this domain of mean |c_k - f| over their features."""
  num_classes, channels = centroids.shape
  flat, one_hot = _flat(feat, labels, num_classes)
  own = centroids[labels.reshape(-1)]  # [M, C]: each feature's own class centroid
  per_feature = jnp.sum(_abs(own - flat), axis=-1)  # [M]
  per_class = jnp.einsum("mk,m->k", one_hot, per_feature, precision=_HIGHEST)
  counts = jnp.sum(one_hot, axis=0)
  present = counts > 0
  per_class = per_class / (jnp.maximum(counts, 1.0) * channels)
  return jnp.sum(jnp.where(present, per_class, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def cluster_terms(feat_s: jax.Array, feat_t: jax.Array, labels_s: jax.Array,
                  labels_t: jax.Array, centroids: jax.Array,
                  valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(c_dist, f_dist_source, f_dist_target) of the reference's clustering loss (norm order 1).

  f_dist_D: over the classes present in domain D, mean |c_k - f| over the features labelled k.
  c_dist: over valid classes k, mean |c_k - c_j| over the other valid centroids j and channels.
  With a single valid class the reference divides 0 by 0 (NaN); here c_dist is 0 then: there is
  no other centroid to push away from, so the term has nothing to measure.
  """
  num_classes, channels = centroids.shape
  f_dist_s = _feat_to_centroid(feat_s, labels_s, centroids)
  f_dist_t = _feat_to_centroid(feat_t, labels_t, centroids)
  pair_l1 = jnp.sum(_abs(centroids[:, None, :] - centroids[None, :, :]), axis=-1)  # [K, K]
  pairs = valid[:, None] & valid[None, :] & ~jnp.eye(num_classes, dtype=bool)
  num_valid = jnp.sum(valid)
  others = jnp.maximum(num_valid - 1, 1) * channels
  per_class = jnp.sum(jnp.where(pairs, pair_l1, 0.0), axis=1) / others
  c_dist = jnp.sum(jnp.where(valid, per_class, 0.0)) / jnp.maximum(num_valid, 1)
  return c_dist, f_dist_s, f_dist_t


def orthogonality_loss(feat_s: jax.Array, feat_t: jax.Array, centroids: jax.Array,
                       valid: jax.Array, temperature: float = ORTHO_TEMPERATURE) -> jax.Array:
  """Mean over features and valid classes of -p log p, p = softmax over valid classes of f.c/T.

  Features of both domains, raw dot products with the centroids (no normalisation).
  """
  channels = centroids.shape[-1]
  feat = jnp.concatenate([feat_s.astype(jnp.float32).reshape(-1, channels),
                          feat_t.astype(jnp.float32).reshape(-1, channels)], axis=0)
  z = jnp.einsum("mc,kc->mk", feat, centroids, precision=_HIGHEST) / temperature
  # Softmax restricted to the valid columns. Invalid columns are set to the row maximum before
  # exp so nothing overflows in the masked-out branch (its gradient would be NaN otherwise).
  row_max = jnp.max(jnp.where(valid, z, -jnp.inf), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  shifted = jnp.where(valid, z, row_max) - row_max
  exp = jnp.where(valid, jnp.exp(shifted), 0.0)
  total = jnp.sum(exp, axis=-1, keepdims=True)
  log_p = shifted - jnp.log(total)
  plogp = jnp.where(valid, (exp / total) * log_p, 0.0)
  return -jnp.sum(plogp) / (feat.shape[0] * jnp.maximum(jnp.sum(valid), 1))


def sparsity_loss(centroids: jax.Array, valid: jax.Array, rho: float = SPARSE_RHO) -> jax.Array:
  """-mean over valid centroids and channels of (c / max_channel(c) - rho)^2.

  The reference divides by each centroid's maximum; an all-zero centroid (every feature of the
  class dead after the ReLU) gives 0/0 = NaN there. Here such a centroid is left out of the mean
  (it has no direction to sparsify); with none left the loss is 0.
  """
  peak = jnp.max(centroids, axis=-1)
  usable = valid & (peak != 0)
  scaled = centroids / jnp.where(usable, peak, 1.0)[:, None]
  per_class = jnp.sum((scaled - rho) ** 2, axis=-1)
  rows = jnp.maximum(jnp.sum(usable), 1) * centroids.shape[-1]
  return -jnp.sum(jnp.where(usable, per_class, 0.0)) / rows


# --------------------------------------------------------------------------------------------
# IW-MaxSquare.


def iw_max_square_loss(probs: jax.Array, ratio) -> jax.Array:
  """MaxSquare with image-wise class weights on the softmax `probs` [N, H, W, K].

  Per image, n_c = pixels whose argmax is c; a pixel of argmax c weighs
  1 / max(n_c^ratio * (H W)^(1 - ratio), 1) (no gradient). Loss = -sum p^2 * weight / (N K): a
  sum over pixels, not a mean. ratio 0 gives 1 / (H W). The reference broadcasts its [N, H, W]
  weights against [N, K, H, W] probabilities, which only works for N = 1; here every image uses
  its own weights (the same numbers for N = 1).
  """
  probs = probs.astype(jnp.float32)
  n, h, w, k = probs.shape
  argmax = jnp.argmax(probs, axis=-1)  # [N, H, W]
  counts = jnp.sum(jax.nn.one_hot(argmax, k, dtype=jnp.float32), axis=(1, 2))  # [N, K]
  ratio = jnp.asarray(ratio, jnp.float32)
  class_weight = 1.0 / jnp.maximum(
      jnp.power(counts, ratio) * jnp.power(jnp.float32(h * w), 1.0 - ratio), 1.0)
  pixel_weight = jnp.take_along_axis(class_weight, argmax.reshape(n, -1), axis=1).reshape(n, h, w)
  pixel_weight = jax.lax.stop_gradient(pixel_weight)
  return -jnp.sum(probs ** 2 * pixel_weight[..., None]) / (n * k)


# --------------------------------------------------------------------------------------------
# The entry point of the train step.


def clustering_losses(feat_s: jax.Array, feat_t: jax.Array, probs_s: jax.Array,
                      probs_t: jax.Array,
                      weights: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted sum of Toldo et al.'s adaptation terms and the unweighted terms by name.

  feat_*: layer4 features [N, h, w, C] (post-ReLU); probs_*: softmax of the main logits at the
  input size [N, H, W, K]. weights: `cluster`, `ortho`, `sparse`, `entropy`, `iw_ratio`.
  total = entropy * IW-MaxSquare(probs_t) + cluster * (f_dist_s + f_dist_t - c_dist)
          + ortho * L_ortho + sparse * L_sparse (source cross-entropy is the train step's).
  """
  num_classes = probs_s.shape[-1]
  if probs_t.shape[-1] != num_classes:
    raise ValueError(f"probs_s and probs_t disagree on classes: {probs_s.shape} vs "
                     f"{probs_t.shape}.")
  hw_s, hw_t = feat_s.shape[1:3], feat_t.shape[1:3]

  # Pass A: bilinear-then-argmax labels, centroids for the clustering term.
  lab_s, lab_t = labels_bilinear(probs_s, hw_s), labels_bilinear(probs_t, hw_t)
  centroids, valid = class_centroids(feat_s, feat_t, lab_s, lab_t, num_classes)
  c_dist, f_dist_s, f_dist_t = cluster_terms(feat_s, feat_t, lab_s, lab_t, centroids, valid)
  cluster = f_dist_s + f_dist_t - c_dist

  # Pass B: argmax-then-nearest labels, centroids recomputed for orthogonality and sparsity.
  lab_s, lab_t = labels_nearest(probs_s, hw_s), labels_nearest(probs_t, hw_t)
  centroids, valid = class_centroids(feat_s, feat_t, lab_s, lab_t, num_classes)
  ortho = orthogonality_loss(feat_s, feat_t, centroids, valid)
  sparse = sparsity_loss(centroids, valid)

  entropy = iw_max_square_loss(probs_t, weights["iw_ratio"])
  total = (weights["entropy"] * entropy + weights["cluster"] * cluster
           + weights["ortho"] * ortho + weights["sparse"] * sparse)
  metrics = {"cluster": cluster, "c_dist": c_dist, "f_dist_source": f_dist_s,
             "f_dist_target": f_dist_t, "ortho": ortho, "sparse": sparse,
             "iw_max_square": entropy}
  return jnp.asarray(total, jnp.float32), metrics


# --------------------------------------------------------------------------------------------
# The step's plug-in.

WEIGHT_KEYS = ("cluster", "ortho", "sparse", "entropy")


@dataclasses.dataclass(frozen=True)
class Clustering(base.Method):
  """On the target pass: the four terms of `clustering_losses` on both domains' features."""
  needs_target_pass = True
  needs_source_features = True
  needs_target_features = True

  @staticmethod
  def add_config(config):
    # Toldo et al. 2021: clustering, orthogonality and sparsity losses on layer4 features plus an
    # image-wise weighted MaxSquare entropy on the target. All 0 = off (presets set the values).
    c = base.section(config, "clustering")
    c.cluster = 0.0  # clustering term weight (GTA5 0.02)
    c.ortho = 0.0  # orthogonality term weight (GTA5 2.0, SYNTHIA 0.1)
    c.sparse = 0.0  # sparsity term weight (GTA5 0.5, SYNTHIA 1.0)
    c.entropy = 0.0  # IW-MaxSquare term weight (GTA5 0.1, SYNTHIA 0.05)
    c.iw_ratio = 0.2  # MaxSquare's image-wise class weighting exponent (0 = uniform)

  @staticmethod
  def enabled(config):
    return any(bool(config.clustering[k]) for k in WEIGHT_KEYS)

  @staticmethod
  def weights(config):
    return {k: config.clustering[k] for k in WEIGHT_KEYS + ("iw_ratio",)}

  def target_terms(self, ctx):
    source, target = ctx.source, ctx.target
    return clustering_losses(
        source.features, target.features, jax.nn.softmax(source.main, axis=-1),
        jax.nn.softmax(target.main, axis=-1),
        {k: ctx.weights[k] for k in WEIGHT_KEYS + ("iw_ratio",)})
