"""MIC (Hoyer et al., CVPR 2023): masked image consistency on top of DAFormer-style self-training.

MIC adds one loss: the student must predict, from a target image with most of its blocks blanked
out, the EMA teacher's pseudo-labels of the full image, so it learns to use context. The masked
image is the colour-augmented target image (`dacs.strong_augment`, no mixing; mask_mode
'separatetrgaug'), the labels and their confidence weight are those of the self-training teacher
(mask_alpha and mask_pseudo_threshold 'same'), and the loss is the weighted CE
(`dacs.weighted_cross_entropy`) times MASK_LAMBDA. Facts follow lhoyer/MIC
(seg/mmseg/models/uda/masking_consistency_module.py, seg/mmseg/models/utils/masking_transforms.py,
seg/configs/mic/gtaHR2csHR_mic_hrda.py).
"""

import jax
import jax.numpy as jnp
import numpy as np

# MIC's published configuration (gtaHR2csHR_mic_hrda.py).
MASK_RATIO = 0.7  # share of blocks blanked out
MASK_BLOCK_SIZE = 64  # block side in input pixels
MASK_LAMBDA = 1.0  # weight of the masked-image loss
MASK_ALPHA = 0.999  # 'same' teacher as self-training, whose alpha is DAFormer's 0.999
MASK_MODE = "separatetrgaug"  # mask the colour-augmented target images only


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch 'nearest' upsampling source index of each output index (float32 scale, floored)."""
  if in_size == out_size:
    return np.arange(out_size)
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def mask_grid_shape(height: int, width: int, block_size: int = MASK_BLOCK_SIZE):
  """MIC's coarse grid: (round(H / block), round(W / block)), at least one cell per side.

  Python's round (half to even) as in the reference; a side under half a block would give 0
  cells there (an error in PyTorch), so it is raised to 1 here.
  """
  return max(1, round(height / block_size)), max(1, round(width / block_size))


def masking(key, images, block_size: int = MASK_BLOCK_SIZE, ratio: float = MASK_RATIO):
  """MIC's block masking of [N, H, W, C] model inputs -> (masked images, keep mask [N, H, W]).

  A uniform draw per cell of the `mask_grid_shape` grid, kept where `rand > ratio` (so about
  1 - ratio of the cells survive), nearest-upsampled to H x W with mmseg's resize (PyTorch
  'nearest': cells are H / rows px tall, not exactly `block_size` when H is not a multiple), then
  image * mask. Zero is the mean colour of normalised inputs (here the Caffe mean), as in MIC.
  The mask is float32 1 = kept.
  """
  images = jnp.asarray(images)
  n, height, width = images.shape[:3]
  rows, cols = mask_grid_shape(height, width, block_size)
  keep = (jax.random.uniform(key, (n, rows, cols)) > ratio).astype(jnp.float32)
  keep = keep[:, _nearest_indices(rows, height)][:, :, _nearest_indices(cols, width)]
  return images * keep[..., None].astype(images.dtype), keep
