"""The pseudo_labels pass: stage-2 pseudo-labels of the target train split from a stage-1 model.

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

The class rule needs the whole split before it can label any image (`pseudo_label_rules`): a
first pass counts quantised confidences per class, a second recomputes the predictions and
thresholds them.
"""

import json
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
from seat_jax.pseudo_label_rules import (CHECKPOINT_SELECTIONS, RULES, ConfidenceHistogram,
                                         apply_class_thresholds, quantize_confidence)

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
