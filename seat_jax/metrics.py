"""Segmentation scores: the confusion matrix of a split, IoU per class, mIoU19/16/13.

The protocol is the references' (AdaptSegNet's `compute_iou.py`): one confusion matrix summed
over every pixel of the split before IoU is computed (never averaged per image); mIoU is the
nanmean over classes, so a class absent from both ground truth and prediction does not count.
"""

from collections.abc import Sequence

import numpy as np

from seat_jax import labels


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, num_classes] int64 counts, rows = ground truth, columns = prediction.

  Pixels whose ground truth is outside [0, num_classes) (255 = ignore) are left out.
  """
  gt = np.asarray(gt)
  pred = np.asarray(pred)
  if gt.shape != pred.shape:
    raise ValueError(
        f"confusion_matrix: ground truth shape {gt.shape} differs from prediction shape "
        f"{pred.shape}; predictions must be upsampled to the label's resolution.")
  gt = gt.reshape(-1).astype(np.int64)
  pred = pred.reshape(-1).astype(np.int64)
  valid = (gt >= 0) & (gt < num_classes)
  gt, pred = gt[valid], pred[valid]
  if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
    raise ValueError(
        f"confusion_matrix: predictions must lie in [0, {num_classes}); found values "
        f"{pred.min()}..{pred.max()}.")
  counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


class ConfusionAccumulator:
  """Sums confusion matrices over a split, so IoU is computed once over all its pixels."""

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.matrix = np.zeros((num_classes, num_classes), np.int64)

  def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
    self.matrix += confusion_matrix(gt, pred, self.num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
  """IoU_c = TP / (TP + FP + FN); NaN for a class absent from both ground truth and prediction."""
  conf = np.asarray(conf, np.float64)
  tp = np.diag(conf)
  denom = conf.sum(axis=0) + conf.sum(axis=1) - tp
  return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def mean_iou(ious: np.ndarray, subset: Sequence[int] | None = None) -> float:
  """nanmean of `ious` (over `subset`, class indices, when given); NaN if no class counts."""
  ious = np.asarray(ious, np.float64)
  if subset is not None:
    ious = ious[np.asarray(subset, np.int64)]
  present = ious[~np.isnan(ious)]
  return float(present.mean()) if present.size else float("nan")


def summary_metrics(ious: np.ndarray, space: labels.LabelSpace) -> dict[str, float]:
  """The means the papers report for this label space (mIoU19, or mIoU13 and mIoU16)."""
  return {name: mean_iou(ious, subset) for name, subset in space.subsets.items()}
