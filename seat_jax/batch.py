"""The names of a training batch's arrays: the contract between the input pipeline and the step.

{SOURCE_IMAGE, SOURCE_LABEL[, TARGET_IMAGE[, TARGET_LABEL]]}: images NHWC float32 (model input),
labels NHW int32 train ids with 255 ignored; the target label exists in stage 2 (pseudo-labels).
"""

SOURCE_IMAGE, SOURCE_LABEL = "source_image", "source_label"
TARGET_IMAGE, TARGET_LABEL = "target_image", "target_label"


def target_has_labels(config) -> bool:
  """Whether training batches carry TARGET_LABEL: data.target.pseudo_label_dir is set."""
  return bool(config.data.target.get("pseudo_label_dir", ""))
