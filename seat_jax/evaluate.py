"""Evaluation: one confusion matrix per split, IoU tables, pictures and Cityscapes labelId PNGs.

The protocol is the reference one (SPEC section 6, REFERENCE 5): the image goes in at model size,
the main head's logits are upsampled (align_corners=True) to the label's FULL resolution, and the
argmax is scored against the full-resolution label. The confusion matrix is summed over the whole
split before IoU is computed (never averaged per image); mIoU is the nanmean over classes, so a
class absent from both ground truth and prediction does not count.

`evaluate` scores one set of variables; `evaluate_checkpoints` is eval mode: it restores only the
model item of each checkpoint and reports the final-step and the best-on-val figure, named as such.
"""

import csv
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from seat_jax import checkpointing
from seat_jax import input_pipeline
from seat_jax import labels
from seat_jax import models

# --------------------------------------------------------------------------------------------
# Label spaces: class names, colours, Cityscapes label ids and the reported mIoU subsets.
# --------------------------------------------------------------------------------------------

LABEL_SPACES = ("cityscapes19", "synthia16")


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """What evaluation needs to know about the classes a model predicts."""
  name: str
  classes: tuple[str, ...]
  palette: np.ndarray  # [C, 3] uint8
  cityscapes_label_ids: np.ndarray  # [C] the Cityscapes labelId of each class
  # Reported means, headline first: metric name -> class indices (None = every class).
  subsets: dict[str, tuple[int, ...] | None]

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def headline(self) -> str:
    return next(iter(self.subsets))


def _synthia16_to_train19() -> np.ndarray:
  """Inverts labels.TRAIN19_TO_TRAIN16 so 16-class predictions can be written as label ids."""
  lut = np.asarray(labels.TRAIN19_TO_TRAIN16)
  num16 = len(labels.SYNTHIA16_CLASSES)
  inverse = np.full(num16, -1, np.int64)
  for train19 in range(len(labels.CITYSCAPES_CLASSES)):
    train16 = int(lut[train19])
    if train16 != labels.IGNORE_ID:
      inverse[train16] = train19
  if (inverse < 0).any():
    raise ValueError("labels.TRAIN19_TO_TRAIN16 does not cover every one of the 16 classes.")
  return inverse


def get_label_space(name: str) -> LabelSpace:
  """The label space named by config.data.label_space."""
  cityscapes_ids = np.asarray(labels.TRAIN_ID_TO_LABEL_ID, np.int64)
  if name == "cityscapes19":
    return LabelSpace(
        name=name, classes=tuple(labels.CITYSCAPES_CLASSES),
        palette=np.asarray(labels.CITYSCAPES_PALETTE, np.uint8),
        cityscapes_label_ids=cityscapes_ids, subsets={"mIoU19": None})
  if name == "synthia16":
    return LabelSpace(
        name=name, classes=tuple(labels.SYNTHIA16_CLASSES),
        palette=np.asarray(labels.SYNTHIA16_PALETTE, np.uint8),
        cityscapes_label_ids=cityscapes_ids[_synthia16_to_train19()],
        subsets={"mIoU16": None, "mIoU13": tuple(int(i) for i in labels.MIOU13_OF_16)})
  raise ValueError(
      f"config.data.label_space must be one of {LABEL_SPACES}; got {name!r}. Use cityscapes19 "
      "for GTA5 -> Cityscapes and synthia16 for SYNTHIA -> Cityscapes.")


def label_space_for(config: ml_collections.ConfigDict) -> LabelSpace:
  """The config's label space, checked against the model's number of outputs."""
  space = get_label_space(config.data.label_space)
  if config.model.num_classes != space.num_classes:
    raise ValueError(
        f"config.model.num_classes is {config.model.num_classes} but config.data.label_space "
        f"{space.name!r} has {space.num_classes} classes. Set --config.model.num_classes="
        f"{space.num_classes} or choose the matching label space.")
  return space


# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------


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


def summary_metrics(ious: np.ndarray, space: LabelSpace) -> dict[str, float]:
  """The means the papers report for this label space (mIoU19, or mIoU16 and mIoU13)."""
  return {name: mean_iou(ious, subset) for name, subset in space.subsets.items()}


# --------------------------------------------------------------------------------------------
# Prediction.
# --------------------------------------------------------------------------------------------


def upsampled_main_logits(model: Any, variables: Any, image: jnp.ndarray, out_hw: Sequence[int],
                          source_stages: Sequence[int]) -> jnp.ndarray:
  """Main-head logits of the target-norm model, bilinearly upsampled (align_corners) to out_hw."""
  _, main_logits = model.apply(
      variables, image, domain="target", train=False, source_stages=tuple(source_stages))
  return models.resize_bilinear(main_logits.astype(jnp.float32), tuple(out_hw))


def make_predict_fn(model: Any, source_stages: Sequence[int] = ()) -> Callable[..., jax.Array]:
  """Jitted fn(variables, image [1, h, w, 3], label_hw) -> uint8 train ids [1, *label_hw].

  `label_hw` is static; the prediction is made at the label's resolution, not the model input's.
  The function is cached per (model, source_stages), so periodic evaluation compiles once.
  """
  source_stages = tuple(int(s) for s in source_stages)
  try:
    return _cached_predict_fn(model, source_stages)
  except TypeError:  # an unhashable model: no caching
    return _build_predict_fn(model, source_stages)


@functools.lru_cache(maxsize=8)
def _cached_predict_fn(model: Any, source_stages: tuple[int, ...]) -> Callable[..., jax.Array]:
  return _build_predict_fn(model, source_stages)


def _build_predict_fn(model: Any, source_stages: tuple[int, ...]) -> Callable[..., jax.Array]:

  @functools.partial(jax.jit, static_argnames=("label_hw",))
  def predict(variables, image, label_hw):
    logits = upsampled_main_logits(model, variables, image, label_hw, source_stages)
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8)

  return predict


# --------------------------------------------------------------------------------------------
# Files: tables, panels, labelId PNGs.
# --------------------------------------------------------------------------------------------


def _percent(value: float) -> str:
  return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def iou_table_markdown(ious: np.ndarray, metrics: dict[str, float], space: LabelSpace,
                       title: str) -> str:
  """A markdown table of per-class IoU (%) followed by the reported means."""
  lines = [f"# {title}", "", "| id | class | IoU (%) |", "|---:|---|---:|"]
  for index, (name, iou) in enumerate(zip(space.classes, ious)):
    lines.append(f"| {index} | {name} | {_percent(iou)} |")
  for name, value in metrics.items():
    lines.append(f"|  | **{name}** | **{_percent(value)}** |")
  lines += ["", "n/a: the class is absent from both ground truth and prediction; it is left out "
            "of the means."]
  return "\n".join(lines) + "\n"


def iou_table_text(ious: np.ndarray, metrics: dict[str, float], space: LabelSpace) -> str:
  """The same table in fixed-width text for stdout."""
  width = max(len(name) for name in list(space.classes) + list(metrics))
  lines = [f"{'id':>3}  {'class':<{width}}  IoU (%)"]
  for index, (name, iou) in enumerate(zip(space.classes, ious)):
    lines.append(f"{index:>3}  {name:<{width}}  {_percent(iou):>7}")
  for name, value in metrics.items():
    lines.append(f"{'':>3}  {name:<{width}}  {_percent(value):>7}")
  return "\n".join(lines)


def write_iou_csv(path: epath.Path, ious: np.ndarray, metrics: dict[str, float],
                  space: LabelSpace) -> None:
  """IoU as fractions in [0, 1] (empty for n/a), one row per class then one per mean."""
  with path.open("w") as f:
    out = csv.writer(f)
    out.writerow(["id", "class", "iou"])
    for index, (name, iou) in enumerate(zip(space.classes, ious)):
      out.writerow([index, name, "" if math.isnan(iou) else f"{iou:.6f}"])
    for name, value in metrics.items():
      out.writerow(["", name, "" if math.isnan(value) else f"{value:.6f}"])


def scalar_name(index: int, class_name: str) -> str:
  """TensorBoard tag of one class's IoU: iou/<NN>_<name>, spaces replaced by underscores."""
  return f"iou/{index:02d}_{class_name.replace(' ', '_')}"


def to_label_id_image(train_ids: np.ndarray, space: LabelSpace) -> np.ndarray:
  """Maps predicted class ids to Cityscapes labelIds (uint8); anything else becomes 0 (void)."""
  lut = np.zeros(256, np.uint8)
  lut[:space.num_classes] = space.cityscapes_label_ids
  return lut[np.asarray(train_ids, np.uint8)]


def safe_file_stem(example_id: str) -> str:
  """Keeps the `<city>_<seq>_<frame>` stem cityscapesscripts matches on; no subdirectories."""
  return example_id.replace("/", "_").replace(os.sep, "_")


def _resize_tile(tile: np.ndarray, width: int, resample: int) -> np.ndarray:
  if tile.shape[1] == width:
    return tile
  height = max(1, round(tile.shape[0] * width / tile.shape[1]))
  return np.asarray(Image.fromarray(tile).resize((width, height), resample))


def make_panel(tiles: Sequence[tuple[np.ndarray, bool]], max_tile_width: int = 1024) -> np.ndarray:
  """Tiles (array, is_label) side by side, each scaled to one width (labels without blending)."""
  width = min(max_tile_width, max(tile.shape[1] for tile, _ in tiles))
  resized = [
      _resize_tile(tile, width, Image.NEAREST if is_label else Image.BILINEAR)
      for tile, is_label in tiles]
  height = max(tile.shape[0] for tile in resized)
  padded = [np.pad(tile, ((0, height - tile.shape[0]), (0, 0), (0, 0))) for tile in resized]
  return np.concatenate(padded, axis=1)


def write_png(path: epath.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    Image.fromarray(array).save(f, format="PNG")


# --------------------------------------------------------------------------------------------
# Progress.
# --------------------------------------------------------------------------------------------


class Progress:
  """Prints `count/total, images/s, ETA` at most every `interval` seconds (and at the end)."""

  def __init__(self, what: str, total: int | None, enabled: bool = True, interval: float = 5.0):
    self.what, self.total, self.enabled, self.interval = what, total, enabled, interval
    self.start = self.last = time.perf_counter()
    self.count = 0

  def update(self, count: int = 1) -> None:
    self.count += count
    now = time.perf_counter()
    if self.enabled and now - self.last >= self.interval:
      self.last = now
      print(self.line(now), flush=True)

  def done(self) -> None:
    if self.enabled:
      print(self.line(time.perf_counter()) + " (done)", flush=True)

  def line(self, now: float) -> str:
    elapsed = max(now - self.start, 1e-9)
    rate = self.count / elapsed
    text = f"{self.what}: {self.count}"
    if self.total:
      text += f"/{self.total}"
    text += f" images, {rate:.2f} images/s, elapsed {_duration(elapsed)}"
    if self.total and rate > 0 and self.count < self.total:
      text += f", ETA {_duration((self.total - self.count) / rate)}"
    return text


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _num_examples(examples: Iterable[Any]) -> int | None:
  try:
    return len(examples)  # type: ignore[arg-type]
  except TypeError:
    return None


# --------------------------------------------------------------------------------------------
# evaluate: one set of variables over one split.
# --------------------------------------------------------------------------------------------


def _first(array: Any) -> np.ndarray:
  """Drops the batch axis of a batch-1 example field."""
  array = np.asarray(array)
  return array[0]


def example_id_of(example: dict[str, Any], index: int) -> str:
  value = example.get("id", f"example_{index:05d}")
  if isinstance(value, (np.ndarray, list, tuple)):
    value = np.asarray(value).reshape(-1)[0]
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  return str(value)


def evaluate(model: Any, variables: Any, examples: Iterable[dict[str, Any]],
             config: ml_collections.ConfigDict, out_dir, *, step: int | None = None,
             writer: Any = None, progress: bool = True, total: int | None = None,
             predict_fn: Callable[..., jax.Array] | None = None) -> dict[str, Any]:
  """Scores `variables` on `examples` (from input_pipeline.create_eval_iterator).

  Writes under out_dir/eval_step_<step> (or out_dir/eval): iou.md, iou.csv, panels/<id>.png
  (input | ground truth | prediction) for the first config.eval.num_panels examples and, when
  config.eval.write_predictions, predictions/<id>_pred_labelIds.png for cityscapesscripts.
  Returns {'step', 'num_images', 'miou' (the headline mean), each reported mean by name (e.g.
  'mIoU19'), 'iou' [C] per class (fractions, NaN = absent), 'classes', 'confusion', 'dir'}.
  `predict_fn` lets callers reuse one compiled prediction function across checkpoints.
  """
  space = label_space_for(config)
  predict = predict_fn or make_predict_fn(model, config.eval.source_stages)
  is_writer_host = jax.process_index() == 0
  run_dir = epath.Path(out_dir) / (f"eval_step_{step}" if step is not None else "eval")
  if is_writer_host:
    run_dir.mkdir(parents=True, exist_ok=True)
  accumulator = ConfusionAccumulator(space.num_classes)
  meter = Progress("eval", total if total is not None else _num_examples(examples),
                   enabled=progress and is_writer_host)

  def finish(index: int, example: dict[str, Any], label: np.ndarray, prediction: jax.Array):
    prediction = np.asarray(prediction)[0]
    accumulator.update(label, prediction)
    meter.update()
    if not is_writer_host:
      return
    stem = safe_file_stem(example_id_of(example, index))
    if index < config.eval.num_panels:
      tiles = []
      if "raw_image" in example:
        tiles.append((_first(example["raw_image"]).astype(np.uint8), False))
      tiles.append((labels.colorize(label, space.palette), True))
      tiles.append((labels.colorize(prediction, space.palette), True))
      write_png(run_dir / "panels" / f"{stem}.png", make_panel(tiles))
    if config.eval.write_predictions:
      write_png(run_dir / "predictions" / f"{stem}_pred_labelIds.png",
                to_label_id_image(prediction, space))

  # One example in flight: the device predicts example i while the host scores example i - 1.
  pending = None
  count = 0
  for index, example in enumerate(examples):
    if "label" not in example:
      raise KeyError(
          "evaluate: examples need a 'label' (the full-resolution ground truth); got keys "
          f"{sorted(example)}. Evaluate on a labelled split (config.data.val).")
    label = _first(example["label"])
    if label.ndim == 3:
      label = label[..., 0]
    prediction = predict(variables, jnp.asarray(example["image"], jnp.float32),
                         label_hw=tuple(label.shape))
    if pending is not None:
      finish(*pending)
    pending = (index, example, label, prediction)
    count += 1
  if pending is not None:
    finish(*pending)
  meter.done()
  if count == 0:
    raise ValueError("evaluate: the example iterable is empty; check config.data.val.")

  ious = iou_per_class(accumulator.matrix)
  metrics = summary_metrics(ious, space)
  title = f"Evaluation at step {step}" if step is not None else "Evaluation"
  title += f" ({count} images, {space.name})"
  if is_writer_host:
    print(title)
    print(iou_table_text(ious, metrics, space), flush=True)
    (run_dir / "iou.md").write_text(iou_table_markdown(ious, metrics, space, title))
    write_iou_csv(run_dir / "iou.csv", ious, metrics, space)
  if writer is not None:
    scalars = dict(metrics)
    scalars.update({scalar_name(i, name): iou for i, (name, iou) in
                    enumerate(zip(space.classes, ious))})
    writer.write_scalars(step if step is not None else 0, scalars)
  result = {
      "step": step, "num_images": count, "miou": metrics[space.headline],
      "headline": space.headline, "iou": ious, "classes": space.classes,
      "confusion": accumulator.matrix, "dir": str(run_dir)}
  result.update(metrics)
  return result


# --------------------------------------------------------------------------------------------
# Restoring checkpoints (model item only) and eval mode.
# --------------------------------------------------------------------------------------------


def checkpoint_dir(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  """config.eval.checkpoint, else the training checkpoints under <workdir>/checkpoints."""
  if config.eval.checkpoint:
    return epath.Path(config.eval.checkpoint)
  return epath.Path(workdir) / "checkpoints"


def abstract_variables(model: Any, config: ml_collections.ConfigDict) -> Any:
  """Shapes/dtypes of the model's variables (no compute), placed on the first local device."""
  height, width = config.data.val.resize_hw
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, height, width, 3), jnp.float32)))
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def steps_to_evaluate(directory: epath.Path, step: int) -> list[int]:
  """config.eval.step if >= 0 (it must exist), else every saved step, ascending."""
  steps = checkpointing.list_steps(directory)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {directory}. Train first (checkpoints go to <workdir>/checkpoints), or "
        "point --config.eval.checkpoint at a checkpoint or converted-weights directory.")
  if step is not None and step >= 0:
    if step not in steps:
      raise FileNotFoundError(
          f"config.eval.step={step} is not saved in {directory}; saved steps: {steps}. Use one "
          "of them, or -1 for all.")
    return [step]
  return steps


def _selection_lines(final: dict[str, Any], best: dict[str, Any]) -> list[str]:
  name = final["headline"]
  return [
      f"final (step {final['step']}): {name} = {_percent(final['miou'])}",
      f"best on val (step {best['step']}): {name} = {_percent(best['miou'])}",
  ]


def summary_markdown(results: Sequence[dict[str, Any]], final: dict[str, Any],
                     best: dict[str, Any], directory) -> str:
  """One row per evaluated step plus the two named selections."""
  names = [name for name in results[0] if name.startswith("mIoU")]
  lines = ["# Evaluation summary", "", f"Checkpoints: `{directory}`", "",
           "| step | " + " | ".join(f"{n} (%)" for n in names) + " |",
           "|---:|" + "---:|" * len(names)]
  for result in results:
    lines.append(f"| {result['step']} | " +
                 " | ".join(_percent(result[n]) for n in names) + " |")
  lines += [""] + [f"- {line}" for line in _selection_lines(final, best)]
  lines += ["", "The best-on-val figure selects the step on the evaluation split itself (as "
            "ADVENT reports); the final-step figure involves no such selection."]
  return "\n".join(lines) + "\n"


def select_final_and_best(results: Sequence[dict[str, Any]]) -> tuple[dict, dict]:
  """Final = the highest step; best = the highest headline mIoU (ties: the earlier step)."""
  final = max(results, key=lambda r: r["step"])
  scored = [r for r in results if not math.isnan(r["miou"])]
  best = max(scored, key=lambda r: (r["miou"], -r["step"])) if scored else final
  return final, best


def evaluate_checkpoints(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """Eval mode: scores config.eval.step (or every step when -1) of the checkpoint directory.

  Only the model item is restored, so converted PyTorch weights (one step, 0) work the same.
  Writes per-step results and summary.md / summary.json under <workdir>/eval and TensorBoard
  scalars there. Returns {'results': [...], 'final': ..., 'best': ...}.
  """
  from clu import metric_writers  # imported here: it pulls in TensorFlow

  directory = checkpoint_dir(config, workdir)
  steps = steps_to_evaluate(directory, config.eval.step)
  space = label_space_for(config)
  model = models.build_segmenter(config.model)
  abstract = abstract_variables(model, config)
  predict = make_predict_fn(model, config.eval.source_stages)
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
                            writer=writer, total=total, predict_fn=predict))
  writer.flush()
  writer.close()

  final, best = select_final_and_best(results)
  for line in _selection_lines(final, best):
    print(line, flush=True)
  if is_writer_host:
    (out_dir / "summary.md").write_text(summary_markdown(results, final, best, directory))
    summary = {
        "checkpoints": str(directory), "label_space": space.name,
        "source_stages": list(config.eval.source_stages),
        "steps": {str(r["step"]): {n: r[n] for n in r if n.startswith("mIoU")} for r in results},
        "final": {"step": final["step"], final["headline"]: final["miou"]},
        "best_on_val": {"step": best["step"], best["headline"]: best["miou"]},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
  return {"results": results, "final": final, "best": best}
