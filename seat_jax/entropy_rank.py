"""The entropy_rank pass: IntraDA's ranking of the target train split by a stage-1 model.

Scores every target train image (`methods.intrada.make_rank_fn`, `ranking_score`), splits the
split easy/hard by `intrada.lambda_easy`, writes the two id lists, the easy images' pseudo-labels
(the plain argmax) and previews; `seat_jax.recipes.intrada` chains it between IntraDA's two
trainings. A rerun with the same settings finds the finished summary and stops.
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
from seat_jax import pseudo_labels
from seat_jax import reports
from seat_jax.methods.intrada import (EASY_LIST, HARD_LIST, PSEUDO_LABELS, config_problems,
                                      make_rank_fn, output_dir, rank_order, ranking_score,
                                      rare_class_ids, split_sizes)


class _Extremes:
  """The k easiest and k hardest images seen so far, with what their preview panels need."""

  def __init__(self, k: int):
    self.k = k
    self.easiest: list[tuple[tuple[float, str], Any]] = []
    self.hardest: list[tuple[tuple[float, str], Any]] = []

  def offer(self, key: tuple[float, str], item: Any) -> None:
    if self.k <= 0:
      return
    self.easiest = sorted(self.easiest + [(key, item)], key=lambda e: e[0])[:self.k]
    self.hardest = sorted(self.hardest + [(key, item)], key=lambda e: e[0])[-self.k:]


def _preview(item: dict[str, Any], space: labels.LabelSpace) -> np.ndarray:
  """input | pseudo-label | normalised entropy (white = 1) side by side."""
  tiles = [(item["raw_image"], False), (labels.colorize(item["prediction"], space.palette), True),
           (np.repeat(item["entropy"][..., None], 3, axis=-1), False)]
  return reports.make_panel(tiles)


def _summary_markdown(summary: dict[str, Any], shown: int = 10) -> str:
  images = summary["images"]
  lines = [
      "# IntraDA entropy ranking", "",
      f"- checkpoint: `{summary['checkpoint']}` step {summary['step']} "
      f"({summary['checkpoint_selection'].replace('_', ' ')})",
      f"- split: {summary['split']} ({summary['num_images']} images at "
      f"{tuple(summary['size_hw'])} H x W), source_stages {tuple(summary['source_stages'])}",
      "- score: mean self-information over pixels and classes"
      + (", times (11 - rare classes present) / 11 + 0.5" if summary["normalize"] else ""),
      f"- lambda {summary['lambda_easy']}: easy {summary['num_easy']} "
      f"({EASY_LIST}, pseudo-labels in {PSEUDO_LABELS}/), hard {summary['num_hard']} "
      f"({HARD_LIST})",
      f"- easy scores {summary['easy_score_range'][0]:.6f} .. "
      f"{summary['easy_score_range'][1]:.6f}, hard {summary['hard_score_range'][0]:.6f} .. "
      f"{summary['hard_score_range'][1]:.6f}", "",
      "| rank | id | split | score | mean self-information | rare classes |",
      "|---:|---|---|---:|---:|---:|"]
  picked = images if len(images) <= 2 * shown else images[:shown] + images[-shown:]
  for row in picked:
    rare = "" if row["rare_classes_present"] is None else row["rare_classes_present"]
    lines.append(f"| {row['rank']} | {row['id']} | {row['split']} | {row['score']:.6f} | "
                 f"{row['mean_self_information']:.6f} | {rare} |")
  if len(picked) < len(images):
    lines.append(f"\n(the {shown} easiest and {shown} hardest; all in summary.json)")
  return "\n".join(lines) + "\n"


def _finished(out: epath.Path, settings: dict[str, Any]) -> dict[str, Any] | None:
  """The summary of a complete earlier run with the same settings (written last), if any."""
  path = out / "summary.json"
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  if any(summary.get(key) != value for key, value in settings.items()):
    return None
  if not all((out / name).exists() for name in (EASY_LIST, HARD_LIST)):
    return None
  return summary


def rank_target_split(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
  """The entropy_rank mode: writes <output_dir>/{easy,hard}_split.txt, pseudo_labels/<id>.png.

  Also previews/{easiest,hardest}_<rank>_<id>.png (input | pseudo-label | entropy) for
  config.eval.num_panels images at each end, and summary.json (every image's score and rank)
  and summary.md. A rerun with the same settings finds the finished summary and stops; any
  other rerun recomputes everything. Returns the summary.
  """
  problems = config_problems(config)
  if problems:
    raise errors.UsageError("Invalid config:\n  - " + "\n  - ".join(problems))
  space = labels.label_space_for(config)
  rare_ids = rare_class_ids(space) if config.intrada.normalize else None
  directory, steps = checkpointing.find_steps(config.eval.checkpoint or workdir, config.eval.step)
  # pylint: disable-next=protected-access  (the same checkpoint choice as the pseudo_labels mode)
  step = pseudo_labels.chosen_step(config.pseudo.checkpoint, directory, steps, workdir)
  split_config = config.data.target
  total = input_pipeline.num_eval_examples(config, split_config)
  split_sizes(total, config.intrada.lambda_easy)  # a bad lambda fails before any prediction
  split_name = f"{split_config.name}/{split_config.split}"
  out = output_dir(config, workdir)
  settings = {
      "checkpoint": str(directory), "step": step,
      "checkpoint_selection": config.pseudo.checkpoint, "split": split_name,
      "num_images": total, "source_stages": [int(s) for s in config.eval.source_stages],
      "label_space": space.name, "lambda_easy": float(config.intrada.lambda_easy),
      "normalize": bool(config.intrada.normalize)}
  finished = _finished(out, settings)
  if finished is not None:
    print(f"Entropy ranking already done with these settings: {out / 'summary.md'}", flush=True)
    return finished

  is_writer_host = jax.process_index() == 0
  if is_writer_host:  # an interrupted recomputation must not look finished
    out.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.md", EASY_LIST, HARD_LIST):
      (out / name).unlink(missing_ok=True)
  model = models.build_segmenter(config.model)
  variables = checkpointing.restore_model(
      directory, checkpointing.abstract_variables(model), step)
  rank_fn = make_rank_fn(model, config.eval.source_stages)
  print(f"Entropy ranking of {split_name} from {directory} step {step} "
        f"({config.pseudo.checkpoint.replace('_', ' ')}; normaliser "
        f"{'on' if rare_ids is not None else 'off'}) -> {out}", flush=True)

  meter = progress.Progress("entropy ranking", total, unit="images", every_secs=5.0,
                            enabled=is_writer_host)
  meter(0)
  rows, extremes = [], _Extremes(int(config.eval.num_panels))
  size_hw = None
  examples = input_pipeline.create_eval_iterator(config, split_config)
  input_hw = lambda example: np.shape(example["image"])[1:3]
  for index, example, (prediction, information, entropy) in predict.predict_split(
      rank_fn, variables, examples, input_hw):
    example_id = predict.example_id(example, index)
    score, present, factor = ranking_score(information, prediction, rare_ids)
    rows.append({"id": example_id, "score": score, "mean_self_information": float(information),
                 "rare_classes_present": present, "normaliser": factor})
    size_hw = prediction.shape
    if is_writer_host:
      # Every image is labelled now (its split is known only at the end); hard ones go below.
      reports.write_png(out / PSEUDO_LABELS / f"{example_id}.png", prediction)
      extremes.offer((score, example_id), {
          "raw_image": np.asarray(example["raw_image"])[0], "prediction": prediction,
          "entropy": entropy})
    meter(index + 1)
  if not rows:
    raise errors.InvalidInputError(f"No examples in {split_name}; check config.data.target.")

  ids = [row["id"] for row in rows]
  order = rank_order(ids, [row["score"] for row in rows])
  num_easy, num_hard = split_sizes(len(rows), config.intrada.lambda_easy)
  ranked = []
  for rank, k in enumerate(order):
    ranked.append(dict(rows[k], rank=rank, split="easy" if rank < num_easy else "hard"))
  easy = [row["id"] for row in ranked[:num_easy]]
  hard = [row["id"] for row in ranked[num_easy:]]
  summary = dict(
      settings, size_hw=list(size_hw), num_easy=num_easy, num_hard=num_hard,
      rare_classes=(None if rare_ids is None
                    else [{"id": i, "class": space.classes[i]} for i in rare_ids]),
      easy_score_range=[ranked[0]["score"], ranked[num_easy - 1]["score"]],
      hard_score_range=[ranked[num_easy]["score"], ranked[-1]["score"]], images=ranked)
  if is_writer_host:
    for example_id in hard:  # the pseudo-label folder holds exactly the easy split
      (out / PSEUDO_LABELS / f"{example_id}.png").unlink(missing_ok=True)
    rank_of = {row["id"]: row["rank"] for row in ranked}
    for which, entries in (("easiest", extremes.easiest), ("hardest", extremes.hardest)):
      for (_, example_id), item in entries:
        name = f"{which}_{rank_of[example_id]:05d}_{reports.safe_file_stem(example_id)}.png"
        reports.write_png(out / "previews" / name, _preview(item, space))
    (out / EASY_LIST).write_text("".join(f"{i}\n" for i in easy))
    (out / HARD_LIST).write_text("".join(f"{i}\n" for i in hard))
    markdown = _summary_markdown(summary)
    (out / "summary.md").write_text(markdown)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")  # last: complete
    print(markdown, flush=True)
  return summary
