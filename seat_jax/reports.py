"""What results look like on disk and on screen: IoU tables, panels, Cityscapes labelId PNGs.

Tables are markdown (for people), fixed-width text (stdout) and CSV (for scripts); panels put
input | ground truth | prediction side by side; prediction PNGs hold Cityscapes labelIds so the
official `cityscapesscripts` evaluator can score them.
"""

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from seat_jax import labels


def percent(value: float) -> str:
  """A fraction as a percentage with two decimals; 'n/a' for NaN."""
  return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def iou_table_markdown(ious: np.ndarray, metrics: dict[str, float], space: labels.LabelSpace,
                       title: str) -> str:
  """A markdown table of per-class IoU (%) followed by the reported means."""
  lines = [f"# {title}", "", "| id | class | IoU (%) |", "|---:|---|---:|"]
  for index, (name, iou) in enumerate(zip(space.classes, ious)):
    lines.append(f"| {index} | {name} | {percent(iou)} |")
  for name, value in metrics.items():
    lines.append(f"|  | **{name}** | **{percent(value)}** |")
  lines += ["", "n/a: the class is absent from both ground truth and prediction; it is left out "
            "of the means."]
  return "\n".join(lines) + "\n"


def iou_table_text(ious: np.ndarray, metrics: dict[str, float], space: labels.LabelSpace) -> str:
  """The same table in fixed-width text for stdout."""
  width = max(len(name) for name in list(space.classes) + list(metrics))
  lines = [f"{'id':>3}  {'class':<{width}}  IoU (%)"]
  for index, (name, iou) in enumerate(zip(space.classes, ious)):
    lines.append(f"{index:>3}  {name:<{width}}  {percent(iou):>7}")
  for name, value in metrics.items():
    lines.append(f"{'':>3}  {name:<{width}}  {percent(value):>7}")
  return "\n".join(lines)


def write_iou_csv(path: epath.Path, ious: np.ndarray, metrics: dict[str, float],
                  space: labels.LabelSpace) -> None:
  """IoU as fractions in [0, 1] (empty for n/a), one row per class then one per mean."""
  with path.open("w") as f:
    out = csv.writer(f)
    out.writerow(["id", "class", "iou"])
    for index, (name, iou) in enumerate(zip(space.classes, ious)):
      out.writerow([index, name, "" if math.isnan(iou) else f"{iou:.6f}"])
    for name, value in metrics.items():
      out.writerow(["", name, "" if math.isnan(value) else f"{value:.6f}"])


def iou_scalars(ious: np.ndarray, metrics: dict[str, float],
                space: labels.LabelSpace) -> dict[str, float]:
  """TensorBoard scalars: the means by name and iou/<NN>_<class> per class."""
  scalars = dict(metrics)
  for index, (name, iou) in enumerate(zip(space.classes, ious)):
    scalars[f"iou/{index:02d}_{name.replace(' ', '_')}"] = iou
  return scalars


def selection_lines(final: dict[str, Any], best: dict[str, Any]) -> list[str]:
  """The two named model selections of eval mode: final step and best on val."""
  name = final["headline"]
  return [
      f"final (step {final['step']}): {name} = {percent(final['miou'])}",
      f"best on val (step {best['step']}): {name} = {percent(best['miou'])}",
  ]


def eval_summary_markdown(results: Sequence[dict[str, Any]], final: dict[str, Any],
                          best: dict[str, Any], directory) -> str:
  """Eval mode's summary: one row per evaluated step plus the two named selections."""
  names = [name for name in results[0] if name.startswith("mIoU")]
  lines = ["# Evaluation summary", "", f"Checkpoints: `{directory}`", "",
           "| step | " + " | ".join(f"{n} (%)" for n in names) + " |",
           "|---:|" + "---:|" * len(names)]
  for result in results:
    lines.append(f"| {result['step']} | " +
                 " | ".join(percent(result[n]) for n in names) + " |")
  lines += [""] + [f"- {line}" for line in selection_lines(final, best)]
  lines += ["", "The best-on-val figure selects the step on the evaluation split itself (as "
            "ADVENT reports); the final-step figure involves no such selection."]
  return "\n".join(lines) + "\n"


def comparison_markdown(results: dict[str, dict[str, Any]], space: labels.LabelSpace) -> str:
  """Per-class IoU (%) of several runs side by side, mIoU last; classes absent from all skipped."""
  names = list(results)
  header = "| class | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
  rows = []
  for index, name in enumerate(space.classes):
    values = [results[run]["iou"][index] for run in names]
    if all(math.isnan(v) for v in values):
      continue
    rows.append(f"| {name} | " + " | ".join(
        "n/a" if math.isnan(v) else f"{100 * v:.1f}" for v in values) + " |")
  rows.append("| **mIoU** | " + " | ".join(
      f"**{100 * results[run]['miou']:.1f}**" for run in names) + " |")
  return "\n".join([header, *rows]) + "\n"


def pseudo_label_summary_markdown(summary: dict[str, Any]) -> str:
  """The pseudo-label run in one table: thresholds and kept pixels per class."""
  if summary["rule"] == "global":
    rule_text = f"global, threshold {summary['threshold']}"
  else:
    rule_text = f"class_quantile, quantile {summary['quantile']}, cap {summary['cap']}"
  lines = [
      "# Pseudo-labels", "",
      f"- checkpoint: `{summary['checkpoint']}` step {summary['step']} "
      f"({summary['checkpoint_selection'].replace('_', ' ')})",
      f"- split: {summary['split']} ({summary['num_images']} images at "
      f"{tuple(summary['size_hw'])} H x W), source_stages {tuple(summary['source_stages'])}",
      f"- rule: {rule_text}",
      f"- kept: {summary['kept_pixels']} of {summary['total_pixels']} pixels "
      f"({_fraction(summary['kept_fraction'])})", "",
      "| id | class | threshold | predicted px | kept px | kept / predicted |",
      "|---:|---|---:|---:|---:|---:|"]
  for row in summary["classes"]:
    lines.append(f"| {row['id']} | {row['class']} | {row['threshold']:.4f} | "
                 f"{row['predicted_pixels']} | {row['kept_pixels']} | "
                 f"{_fraction(row['kept_fraction_of_predicted'])} |")
  return "\n".join(lines) + "\n"


def _fraction(value: float | None) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}%"


def to_label_id_image(train_ids: np.ndarray, space: labels.LabelSpace) -> np.ndarray:
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


def labelled_panel(example: dict[str, Any], label_maps: Sequence[np.ndarray],
                   space: labels.LabelSpace) -> np.ndarray:
  """The example's raw image (when it has one) followed by each label map in colour."""
  tiles = []
  if "raw_image" in example:
    tiles.append((np.asarray(example["raw_image"])[0].astype(np.uint8), False))
  tiles += [(labels.colorize(label_map, space.palette), True) for label_map in label_maps]
  return make_panel(tiles)


def write_png(path: epath.Path, array: np.ndarray) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    Image.fromarray(array).save(f, format="PNG")
