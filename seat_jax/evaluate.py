"""Eval mode: score checkpoints on the target validation split and name the final and best step.

The protocol is the references' (AdaptSegNet's `evaluate_cityscapes.py`): the image goes in at
model size, the main head's logits are upsampled (align_corners=True) to the label's FULL
resolution (`predict`), and one confusion matrix is summed over the whole split (`metrics`).

`evaluate` scores one set of variables (also the periodic evaluation of training);
`evaluate_checkpoints` is eval mode: it restores only the model item of each checkpoint and
reports the final-step and the best-on-val figure, named as such. With `eval.ensemble` set, eval
mode scores the average of several runs' softmax instead (`evaluate_ensemble`, FDA's MBT).
"""

import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from seat_jax import checkpointing
from seat_jax import input_pipeline
from seat_jax import labels
from seat_jax import metrics
from seat_jax import models
from seat_jax import predict
from seat_jax import progress as progress_lib
from seat_jax import reports

# Where eval mode writes an ensemble's scores, under the workdir.
ENSEMBLE_DIR = "eval_ensemble"


def _label_of(example: dict[str, Any]) -> np.ndarray:
  """The example's full-resolution ground truth [H, W] (its batch axis dropped)."""
  if "label" not in example:
    raise KeyError(
        "evaluate: examples need a 'label' (the full-resolution ground truth); got keys "
        f"{sorted(example)}. Evaluate on a labelled split (config.data.val).")
  label = np.asarray(example["label"])[0]
  return label[..., 0] if label.ndim == 3 else label


def evaluate(model: Any, variables: Any, examples: Iterable[dict[str, Any]],
             config: ml_collections.ConfigDict, out_dir, *, step: int | None = None,
             writer: Any = None, progress: bool = True, total: int | None = None,
             predict_fn: Callable[..., jax.Array] | None = None,
             run_name: str | None = None) -> dict[str, Any]:
  """Scores `variables` on `examples` (from input_pipeline.create_eval_iterator).

  Writes under out_dir/eval_step_<step> (or out_dir/eval): iou.md, iou.csv, panels/<id>.png
  (input | ground truth | prediction) for the first config.eval.num_panels examples and, when
  config.eval.write_predictions, predictions/<id>_pred_labelIds.png for cityscapesscripts.
  Returns {'step', 'num_images', 'miou' (the headline mean), each reported mean by name (e.g.
  'mIoU19'), 'iou' [C] per class (fractions, NaN = absent), 'classes', 'confusion', 'dir'}.
  `predict_fn` (predict.make_predict_fn) lets callers pass their own compiled function;
  `run_name` replaces the eval_step_<step> folder name.
  """
  space = labels.label_space_for(config)
  predict_fn = predict_fn or predict.make_predict_fn(model, config.eval.source_stages)
  is_writer_host = jax.process_index() == 0
  run_dir = epath.Path(out_dir) / (
      run_name or (f"eval_step_{step}" if step is not None else "eval"))
  if is_writer_host:
    run_dir.mkdir(parents=True, exist_ok=True)
  if total is None and hasattr(examples, "__len__"):
    total = len(examples)
  meter = progress_lib.Progress("eval", total, unit="images", every_secs=5.0,
                                enabled=progress and is_writer_host)
  meter(0)
  accumulator = metrics.ConfusionAccumulator(space.num_classes)
  count = 0
  label_hw = lambda example: _label_of(example).shape
  for index, example, prediction in predict.predict_split(predict_fn, variables, examples,
                                                          label_hw):
    label = _label_of(example)
    accumulator.update(label, prediction)
    count += 1
    meter(count)
    if not is_writer_host:
      continue
    stem = reports.safe_file_stem(predict.example_id(example, index))
    if index < config.eval.num_panels:
      reports.write_png(run_dir / "panels" / f"{stem}.png",
                        reports.labelled_panel(example, [label, prediction], space))
    if config.eval.write_predictions:
      reports.write_png(run_dir / "predictions" / f"{stem}_pred_labelIds.png",
                        reports.to_label_id_image(prediction, space))
  if count == 0:
    raise ValueError("evaluate: the example iterable is empty; check config.data.val.")

  ious = metrics.iou_per_class(accumulator.matrix)
  means = metrics.summary_metrics(ious, space)
  title = f"Evaluation at step {step}" if step is not None else "Evaluation"
  title += f" ({count} images, {space.name})"
  if is_writer_host:
    print(title)
    print(reports.iou_table_text(ious, means, space), flush=True)
    (run_dir / "iou.md").write_text(reports.iou_table_markdown(ious, means, space, title))
    reports.write_iou_csv(run_dir / "iou.csv", ious, means, space)
  if writer is not None:
    writer.write_scalars(step if step is not None else 0, reports.iou_scalars(ious, means, space))
  result = {
      "step": step, "num_images": count, "miou": means[space.headline],
      "headline": space.headline, "iou": ious, "classes": space.classes,
      "confusion": accumulator.matrix, "dir": str(run_dir)}
  result.update(means)
  return result


def select_final_and_best(results: Sequence[dict[str, Any]]) -> tuple[dict, dict]:
  """Final = the highest step; best = the highest headline mIoU (ties: the earlier step)."""
  final = max(results, key=lambda r: r["step"])
  scored = [r for r in results if not math.isnan(r["miou"])]
  best = max(scored, key=lambda r: (r["miou"], -r["step"])) if scored else final
  return final, best


def evaluate_checkpoints(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Eval mode: scores config.eval.step (or every step when -1) of the checkpoints.

  The checkpoints are config.eval.checkpoint (a run's workdir, its checkpoints/ folder, one step
  folder or converted weights), else this workdir's. Only the model item is restored. Writes
  per-step results and summary.md / summary.json under <workdir>/eval and TensorBoard scalars
  there. Returns {'results': [...], 'final': ..., 'best': ...}.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (it imports TensorFlow)

  if predict.ensemble_paths(config.eval.get("ensemble", ())):
    result = evaluate_ensemble(config, workdir)
    return {"results": [result], "final": result, "best": result}
  directory, steps = checkpointing.find_steps(config.eval.checkpoint or workdir, config.eval.step)
  space = labels.label_space_for(config)
  model = models.build_segmenter(config.model)
  abstract = checkpointing.abstract_variables(model)
  predict_fn = predict.make_predict_fn(model, config.eval.source_stages)
  out_dir = epath.Path(workdir) / "eval"
  is_writer_host = jax.process_index() == 0
  if is_writer_host:
    out_dir.mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(
      str(out_dir), just_logging=not is_writer_host, asynchronous=False)
  total = input_pipeline.num_eval_examples(config)  # honours config.data.val.max_examples

  results = []
  for step in steps:
    print(f"Evaluating step {step} of {directory} on {config.data.val.name}/"
          f"{config.data.val.split} ({total} images, {space.name}, source_stages="
          f"{tuple(config.eval.source_stages)})", flush=True)
    variables = checkpointing.restore_model(directory, abstract, step)
    examples = input_pipeline.create_eval_iterator(config)
    results.append(evaluate(model, variables, examples, config, out_dir, step=step,
                            writer=writer, total=total, predict_fn=predict_fn))
  writer.flush()
  writer.close()

  final, best = select_final_and_best(results)
  for line in reports.selection_lines(final, best):
    print(line, flush=True)
  if is_writer_host:
    (out_dir / "summary.md").write_text(
        reports.eval_summary_markdown(results, final, best, directory))
    summary = {
        "checkpoints": str(directory), "label_space": space.name,
        "source_stages": list(config.eval.source_stages),
        "steps": {str(r["step"]): {n: r[n] for n in r if n.startswith("mIoU")} for r in results},
        "final": {"step": final["step"], final["headline"]: final["miou"]},
        "best_on_val": {"step": best["step"], best["headline"]: best["miou"]},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
  return {"results": results, "final": final, "best": best}


def evaluate_ensemble(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Scores the weighted mean softmax of the config.eval.ensemble models (FDA's MBT).

  Each model is a run's final checkpoint (or config.eval.step); the mean is taken at the output
  stride and upsampled to the label's resolution (FDA `evaluation_multi.py`), on the images at
  config.data.val.resize_hw (FDA feeds 1344x576 there, as the FDA presets do). Writes
  <workdir>/eval_ensemble/ (iou.md, iou.csv, panels, predictions, summary.json) and returns
  evaluate()'s result plus 'members'.
  """
  space = labels.label_space_for(config)
  model = models.build_segmenter(config.model)
  members, variables = predict.restore_ensemble(config, model)
  predict_fn = predict.make_predict_fn(model, config.eval.source_stages,
                                       ensemble_weights=[m["weight"] for m in members])
  total = input_pipeline.num_eval_examples(config)
  print(f"Evaluating the mean softmax of {len(members)} models on {config.data.val.name}/"
        f"{config.data.val.split} ({total} images, {space.name}, source_stages="
        f"{tuple(config.eval.source_stages)}):", flush=True)
  for m in members:
    print(f"  {m['checkpoint']} step {m['step']} (weight {m['weight']:.4f})", flush=True)
  result = evaluate(model, variables, input_pipeline.create_eval_iterator(config), config,
                    workdir, total=total, predict_fn=predict_fn, run_name=ENSEMBLE_DIR)
  result["members"] = members
  if jax.process_index() == 0:
    summary = {"members": members, "label_space": space.name,
               "source_stages": list(config.eval.source_stages), "num_images": result["num_images"],
               "means": {n: result[n] for n in result if n.startswith("mIoU")}}
    (epath.Path(result["dir"]) / "summary.json").write_text(
        json.dumps(summary, indent=2, allow_nan=True) + "\n")
  return result
