"""Pseudo-label threshold rules, on numpy arrays (the pseudo_labels pass applies them).

A pixel keeps its argmax where the confidence (max softmax probability) reaches a threshold and
becomes 255 (ignore) otherwise. Two rules:
  global:         one threshold for every class (the paper's setting).
  class_quantile: per class c, the confidence at index round(quantile * N_c) of the ascending
                  confidences of the N_c pixels predicted c over the WHOLE split (BDL's median for
                  0.5, FDA's 0.66), capped at `cap`; classes never predicted get 0.
Storing every confidence of a split would take gigabytes (2975 x 512 x 1024 floats for
Cityscapes), so confidences are quantised to steps of 1/65535 and counted in a per-class
histogram; with quantised confidences the rule is exact, not approximate.
"""

from collections.abc import Sequence

import numpy as np

from seat_jax import labels

RULES = ("global", "class_quantile")
CHECKPOINT_SELECTIONS = ("final", "best_on_val")
CONFIDENCE_LEVELS = 65536  # confidences are stored as round(p * 65535) in the histogram

# --------------------------------------------------------------------------------------------
# The rules, on numpy arrays.
# --------------------------------------------------------------------------------------------


def apply_class_thresholds(confidence: np.ndarray, prediction: np.ndarray,
                           thresholds: Sequence[float]) -> np.ndarray:
  """uint8 labels: the prediction where confidence >= thresholds[prediction], else 255."""
  confidence = np.asarray(confidence)
  prediction = np.asarray(prediction).astype(np.int64)
  thresholds = np.asarray(thresholds, np.float64)
  if confidence.shape != prediction.shape:
    raise ValueError(f"confidence shape {confidence.shape} differs from prediction shape "
                     f"{prediction.shape}.")
  if prediction.size and (prediction.min() < 0 or prediction.max() >= len(thresholds)):
    raise ValueError(f"predictions must lie in [0, {len(thresholds)}) (one threshold per class); "
                     f"found {prediction.min()}..{prediction.max()}.")
  keep = confidence >= thresholds[prediction]
  return np.where(keep, prediction, labels.IGNORE_ID).astype(np.uint8)


def global_threshold_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
  """uint8 labels from probabilities [..., C]: the argmax where max prob >= threshold, else 255."""
  probs = np.asarray(probs)
  prediction = probs.argmax(axis=-1)
  confidence = probs.max(axis=-1)
  return apply_class_thresholds(confidence, prediction, np.full(probs.shape[-1], threshold))


def _check_quantile_rule(quantile: float, cap: float) -> None:
  if not 0.0 <= quantile <= 1.0:
    raise ValueError(f"config.pseudo.quantile must lie in [0, 1]; got {quantile}.")
  if not 0.0 <= cap <= 1.0:
    raise ValueError(f"config.pseudo.cap must lie in [0, 1]; got {cap}.")


def _quantile_index(quantile: float, count: int) -> int:
  """BDL's index round(q * N) into the ascending order (numpy rounding), kept inside the array."""
  return min(int(np.round(quantile * count)), count - 1)


def class_quantile_thresholds(confidence: np.ndarray, prediction: np.ndarray, num_classes: int,
                              quantile: float, cap: float) -> np.ndarray:
  """Per-class thresholds [num_classes] from the confidences of a WHOLE split (any shape).

  Class c: the value at index round(quantile * N_c) of the sorted confidences of pixels predicted
  c, capped at `cap`; 0 for a class never predicted (so its pixels, if any later, are kept).
  """
  _check_quantile_rule(quantile, cap)
  confidence = np.asarray(confidence, np.float64).reshape(-1)
  prediction = np.asarray(prediction).reshape(-1)
  thresholds = np.zeros(num_classes, np.float64)
  for c in range(num_classes):
    values = np.sort(confidence[prediction == c])
    if values.size:
      thresholds[c] = min(values[_quantile_index(quantile, values.size)], cap)
  return thresholds


def quantize_confidence(confidence: np.ndarray) -> np.ndarray:
  """Confidences rounded to multiples of 1 / (CONFIDENCE_LEVELS - 1), as float64."""
  return _confidence_levels(confidence) / (CONFIDENCE_LEVELS - 1)


def _confidence_levels(confidence: np.ndarray) -> np.ndarray:
  levels = np.round(np.clip(np.asarray(confidence, np.float64), 0, 1) * (CONFIDENCE_LEVELS - 1))
  return levels.astype(np.int64)


class ConfidenceHistogram:
  """Per-class histograms of quantised confidence, summed over a split in one streaming pass.

  `thresholds` equals class_quantile_thresholds on quantize_confidence(all confidences).
  """

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.counts = np.zeros((num_classes, CONFIDENCE_LEVELS), np.int64)

  def update(self, confidence: np.ndarray, prediction: np.ndarray) -> None:
    prediction = np.asarray(prediction).reshape(-1).astype(np.int64)
    levels = _confidence_levels(confidence).reshape(-1)
    flat = np.bincount(prediction * CONFIDENCE_LEVELS + levels,
                       minlength=self.num_classes * CONFIDENCE_LEVELS)
    self.counts += flat[:self.num_classes * CONFIDENCE_LEVELS].reshape(self.counts.shape)

  def thresholds(self, quantile: float, cap: float) -> np.ndarray:
    _check_quantile_rule(quantile, cap)
    thresholds = np.zeros(self.num_classes, np.float64)
    for c in range(self.num_classes):
      cumulative = np.cumsum(self.counts[c])
      count = int(cumulative[-1])
      if count:
        level = int(np.searchsorted(cumulative, _quantile_index(quantile, count), side="right"))
        thresholds[c] = min(level / (CONFIDENCE_LEVELS - 1), cap)
    return thresholds


# --------------------------------------------------------------------------------------------
# generate: the pseudo_labels mode.
# --------------------------------------------------------------------------------------------
