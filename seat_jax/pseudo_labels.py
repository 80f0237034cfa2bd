"""Stage-2 pseudo-labels from a stage-1 model: the threshold rules and the pseudo_labels mode.

SPEC section 6, REFERENCE 6.

The model (target norm, the configured layer switch) labels every image of the target TRAIN split
at model size; a pixel keeps its argmax where the confidence (max softmax probability) reaches a
threshold and becomes 255 (ignore) otherwise. Two rules:
  global:         one threshold for every class (the paper's setting).
  class_quantile: per class c, the confidence at index round(quantile * N_c) of the ascending
                  confidences of the N_c pixels predicted c over the WHOLE split (BDL's median for
                  0.5, FDA's 0.66), capped at `cap`; classes never predicted get 0.
As in BDL, the softmax is upsampled (align_corners) to the input size before argmax/confidence.
With `eval.ensemble` the labels come from the weighted mean softmax of several models instead
(FDA's multi-band transfer: each model's logits upsampled, softmaxed, averaged; `predict`).

The class rule needs the whole split before it can label any image. Storing every confidence would
take gigabytes (2975 x 512 x 1024 floats for Cityscapes), so confidences are quantised to steps of
1/65535 and counted in a per-class histogram in a first pass; a second pass recomputes the
predictions and thresholds them. With quantised confidences the rule is exact, not approximate.
"""

import json
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from seat_jax import checkpointing
from seat_jax import errors
from seat_jax import input_pipeline
from seat_jax import labels
from seat_jax import models
from seat_jax import predict
from seat_jax import progress
from seat_jax import reports

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


def output_dir(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  return epath.Path(config.pseudo.output_dir or epath.Path(workdir) / "pseudo_labels")


def _summary(space: labels.LabelSpace, thresholds: np.ndarray, predicted: np.ndarray,
             kept: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
  classes = []
  for c, name in enumerate(space.classes):
    classes.append({
        "id": c, "class": name, "threshold": float(thresholds[c]),
        "predicted_pixels": int(predicted[c]), "kept_pixels": int(kept[c]),
        "kept_fraction_of_predicted": float(kept[c] / predicted[c]) if predicted[c] else None})
  total = int(predicted.sum())
  return dict(meta, classes=classes, total_pixels=total, kept_pixels=int(kept.sum()),
              kept_fraction=float(kept.sum() / total) if total else None)


def chosen_step(selection: str, directory: epath.Path, steps: list[int], workdir) -> int:
  """The final step, or the best-on-val step that eval mode wrote down for these checkpoints."""
  if selection == "final":
    return steps[-1]
  if selection != "best_on_val":
    raise errors.UsageError(
        f"config.pseudo.checkpoint must be one of {CHECKPOINT_SELECTIONS}; got {selection!r}.")
  summary_path = epath.Path(workdir) / "eval" / "summary.json"
  how_to = (f"run eval mode first with the same --workdir={workdir} (--config.mode=eval), which "
            "scores every checkpoint and writes the best-on-val step there")
  if not summary_path.exists():
    raise errors.MissingInputError(
        f"config.pseudo.checkpoint=best_on_val needs {summary_path}: {how_to}.")
  summary = json.loads(summary_path.read_text())
  if summary["checkpoints"] != str(directory):
    raise errors.InvalidInputError(
        f"{summary_path} scored the checkpoints in {summary['checkpoints']}, not {directory}: "
        f"{how_to}.")
  step = int(summary["best_on_val"]["step"])
  if step not in steps:
    raise errors.MissingInputError(
        f"The best-on-val step {step} ({summary_path}) is not saved in {directory} any more; "
        f"saved steps: {steps}.")
  return step


def generate(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Writes <output_dir>/<id>.png (uint8 train ids, 255 = ignore) for the target train split.

  Also previews/<id>.png (input | pseudo-label) for the first config.eval.num_panels images and
  summary.md / summary.json (kept pixels per class, thresholds). Returns the summary.
  """
  space = labels.label_space_for(config)
  rule = config.pseudo.rule
  if rule not in RULES:
    raise ValueError(f"config.pseudo.rule must be one of {RULES}; got {rule!r}.")
  model = models.build_segmenter(config.model)
  members = None
  if predict.ensemble_paths(config.eval.get("ensemble", ())):
    # Each model's own final or best-on-val step (best_on_val: eval mode run in its workdir).
    members, variables = predict.restore_ensemble(
        config, model, lambda d, steps, path: chosen_step(config.pseudo.checkpoint, d, steps,
                                                           path))
    confidence_fn = predict.make_predict_fn(model, config.eval.source_stages, output="confidence",
                                            ensemble_weights=[m["weight"] for m in members])
    directory = ", ".join(m["checkpoint"] for m in members)
    step = [m["step"] for m in members]
  else:
    directory, steps = checkpointing.find_steps(config.eval.checkpoint or workdir,
                                                config.eval.step)
    step = chosen_step(config.pseudo.checkpoint, directory, steps, workdir)
    variables = checkpointing.restore_model(
        directory, checkpointing.abstract_variables(model), step)
    confidence_fn = predict.make_predict_fn(model, config.eval.source_stages,
                                            output="confidence")
  split_config = config.data.target
  total = input_pipeline.num_eval_examples(config, split_config)
  split_name = f"{split_config.name}/{split_config.split}"
  out = output_dir(config, workdir)
  is_writer_host = jax.process_index() == 0

  def split_predictions(what: str):
    """(index, example id, example, prediction, confidence) at the model input size."""
    meter = progress.Progress(what, total, unit="images", every_secs=5.0, enabled=is_writer_host)
    meter(0)
    examples = input_pipeline.create_eval_iterator(config, split_config)
    input_hw = lambda example: np.shape(example["image"])[1:3]
    for index, example, (prediction, confidence) in predict.predict_split(
        confidence_fn, variables, examples, input_hw):
      yield index, predict.example_id(example, index), example, prediction, confidence
      meter(index + 1)

  print(f"Pseudo-labels for {split_name} from {directory} step {step} "
        f"({config.pseudo.checkpoint.replace('_', ' ')}; {rule} rule) -> {out}", flush=True)
  if rule == "class_quantile":
    histogram = ConfidenceHistogram(space.num_classes)
    for _, _, _, prediction, confidence in split_predictions("pseudo-labels pass 1/2"):
      histogram.update(confidence, prediction)
    thresholds = histogram.thresholds(config.pseudo.quantile, config.pseudo.cap)
    rule_confidence = quantize_confidence  # the thresholds were found on quantised values
    what = "pseudo-labels pass 2/2"
  else:
    thresholds = np.full(space.num_classes, float(config.pseudo.threshold))
    rule_confidence = np.asarray
    what = "pseudo-labels"

  predicted = np.zeros(space.num_classes, np.int64)
  kept = np.zeros(space.num_classes, np.int64)
  count = 0
  size_hw = None
  for index, example_id, example, prediction, confidence in split_predictions(what):
    pseudo = apply_class_thresholds(rule_confidence(confidence), prediction, thresholds)
    predicted += np.bincount(prediction.reshape(-1), minlength=space.num_classes)[
        :space.num_classes]
    kept_ids = pseudo[pseudo != labels.IGNORE_ID]
    kept += np.bincount(kept_ids, minlength=space.num_classes)[:space.num_classes]
    count += 1
    size_hw = prediction.shape
    if not is_writer_host:
      continue
    reports.write_png(out / f"{example_id}.png", pseudo)
    if index < config.eval.num_panels:
      reports.write_png(out / "previews" / f"{reports.safe_file_stem(example_id)}.png",
                        reports.labelled_panel(example, [pseudo], space))
  if count == 0:
    raise ValueError(f"No examples in {split_name}; check config.data.target.")

  meta = {
      "checkpoint": str(directory), "step": step,
      "checkpoint_selection": config.pseudo.checkpoint, "split": split_name, "num_images": count,
      "size_hw": list(size_hw), "source_stages": list(config.eval.source_stages), "rule": rule,
      "threshold": float(config.pseudo.threshold), "quantile": float(config.pseudo.quantile),
      "cap": float(config.pseudo.cap), "label_space": space.name}
  if members is not None:
    meta["ensemble"] = members
  summary = _summary(space, thresholds, predicted, kept, meta)
  if is_writer_host:
    markdown = reports.pseudo_label_summary_markdown(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown)
    print(markdown, flush=True)
  return summary
