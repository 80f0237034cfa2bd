"""Evaluation: metrics against loop references, the upsampling protocol of predict, the layer
switch, the written reports, cityscapesscripts' own evaluator and eval mode over checkpoints."""

import copy
import csv
import json

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import helpers
from seat_jax import checkpointing
from seat_jax import config_defaults
from seat_jax import datasets
from seat_jax import errors
from seat_jax import evaluate
from seat_jax import labels
from seat_jax import metrics
from seat_jax import models
from seat_jax import predict
from seat_jax import reports

# Cityscapes labelIds of the 19 train ids and of the 16 SYNTHIA classes (REFERENCE 4.1), written
# out here so the mapping is checked against the table, not against itself.
CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
SYNTHIA16_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33]
MODEL_HW = (32, 64)  # model input (height, width)
LABEL_HW = (40, 72)  # full-resolution labels: deliberately not a multiple of the input


# ------------------------------------------------------------------------------------------
# Helpers.


def tiny_config(**eval_overrides):
  config = config_defaults.get_config()
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_width = 8
  config.data.val.resize_hw = MODEL_HW
  config.eval.num_panels = 1
  for key, value in eval_overrides.items():
    config.eval[key] = value
  return config



class ProjectionModel:
  """A stand-in segmenter: logits = 8x8 average pool of the image times a matrix (stride 8).

  It records the keyword arguments of `apply`, so tests can see what reaches the model.
  """

  def __init__(self):
    self.calls = []

  def apply(self, variables, images, domain="target", train=False, source_stages=()):
    self.calls.append({"domain": domain, "train": train, "source_stages": source_stages})
    n, h, w, c = images.shape
    pooled = images.reshape(n, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))
    main = pooled @ variables["w"] + variables["b"]
    return 0.5 * main, main


def projection_variables(seed: int, num_classes: int = 19):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(3, num_classes)).astype(np.float32),
          "b": rng.normal(size=(num_classes,)).astype(np.float32)}


def random_image(rng, hw=MODEL_HW):
  return (rng.normal(size=(1, *hw, 3)) * 50).astype(np.float32)


def loop_iou(gt, pred, num_classes):
  """Independent IoU: per class masks over the valid pixels; NaN when TP + FP + FN is 0."""
  valid = (gt >= 0) & (gt < num_classes)
  ious = []
  for c in range(num_classes):
    tp = np.sum(valid & (gt == c) & (pred == c))
    fp = np.sum(valid & (gt != c) & (pred == c))
    fn = np.sum(valid & (gt == c) & (pred != c))
    ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
  return np.array(ious)


class RecordingWriter:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))


@pytest.fixture(scope="module")
def tiny_model():
  return models.build_segmenter(tiny_config().model)


@pytest.fixture(scope="module")
def tiny_variables(tiny_model):
  return helpers.random_variables(tiny_model, seed=0)


# ------------------------------------------------------------------------------------------
# Metrics.


def test_confusion_and_iou_match_a_loop_reference_with_ignore_and_an_absent_class():
  rng = np.random.default_rng(0)
  num_classes = 6
  gt = rng.choice([0, 1, 2, 3, 5, 255], size=(2, 30, 40))  # class 4 never in the ground truth
  pred = rng.choice([0, 1, 2, 3, 5], size=(2, 30, 40))  # ... nor predicted
  conf = metrics.confusion_matrix(gt, pred, num_classes)
  valid = gt != 255
  for i in range(num_classes):
    for j in range(num_classes):
      assert conf[i, j] == np.sum(valid & (gt == i) & (pred == j))
  ious = metrics.iou_per_class(conf)
  expected = loop_iou(gt, pred, num_classes)
  np.testing.assert_allclose(ious, expected, rtol=1e-12)
  assert np.isnan(ious[4]) and np.isfinite(ious[[0, 1, 2, 3, 5]]).all()
  assert metrics.mean_iou(ious) == pytest.approx(np.mean(expected[[0, 1, 2, 3, 5]]), rel=1e-12)

  # Summed over images (one matrix per split), not averaged per image.
  accumulator = metrics.ConfusionAccumulator(num_classes)
  accumulator.update(gt[0], pred[0])
  accumulator.update(gt[1], pred[1])
  np.testing.assert_array_equal(accumulator.matrix, conf)
  per_image = [loop_iou(gt[k], pred[k], num_classes)[[0, 1, 2, 3, 5]] for k in range(2)]
  per_image_mean = np.mean(per_image, axis=0)
  assert not np.allclose(per_image_mean, ious[[0, 1, 2, 3, 5]])


def test_confusion_matrix_rejects_mismatched_shapes_and_out_of_range_predictions():
  with pytest.raises(ValueError, match="upsampled to the label's resolution"):
    metrics.confusion_matrix(np.zeros((4, 4)), np.zeros((2, 2)), 3)
  with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\)"):
    metrics.confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 3), 3)
  # An out-of-range prediction on an ignored pixel is harmless.
  conf = metrics.confusion_matrix(np.array([255, 1]), np.array([7, 1]), 3)
  assert conf.sum() == 1 and conf[1, 1] == 1


def test_mean_iou_subsets_for_synthia16_and_cityscapes19():
  ious = np.linspace(0.1, 0.85, 16)
  ious[7] = np.nan  # a 13-class member absent from the split
  space16 = labels.get_label_space("synthia16")
  means = metrics.summary_metrics(ious, space16)
  thirteen = [0, 1, 2, 6, 8, 9, 10, 11, 12, 13, 14, 15]  # the 13 classes minus the absent 7
  assert list(means) == ["mIoU13", "mIoU16"]  # the headline (best-on-val selects on it) first
  assert means["mIoU13"] == pytest.approx(sum(ious[thirteen]) / 12)
  assert means["mIoU16"] == pytest.approx(sum(ious[[i for i in range(16) if i != 7]]) / 15)
  assert metrics.mean_iou(np.full(3, np.nan)) != metrics.mean_iou(np.full(3, np.nan))  # NaN

  space19 = labels.get_label_space("cityscapes19")
  assert list(metrics.summary_metrics(np.ones(19), space19)) == ["mIoU19"]
  config = tiny_config()
  config.data.label_space = "synthia16"
  with pytest.raises(ValueError, match="num_classes is 19 but .*'synthia16' has 16"):
    labels.label_space_for(config)
  with pytest.raises(ValueError, match="label_space must be one of"):
    labels.get_label_space("gta19")


def test_synthia19_scores_fda_subsets_of_the_19_class_iou():
  """FDA's SYNTHIA model has 19 outputs; evaluation_multi.py prints mIoU16 and mIoU13 as means
  of its 19-class IoU over these hand-copied index lists."""
  fda16 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
  fda13 = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
  space = labels.get_label_space("synthia19")
  assert space.classes == labels.CITYSCAPES_CLASSES
  ious = np.linspace(0.05, 0.95, 19)
  means = metrics.summary_metrics(ious, space)
  assert list(means) == ["mIoU13", "mIoU16", "mIoU19"]
  assert means["mIoU13"] == pytest.approx(ious[fda13].mean())
  assert means["mIoU16"] == pytest.approx(ious[fda16].mean())
  assert means["mIoU19"] == pytest.approx(ious.mean())
  # Cityscapes terrain pixels stay in the confusion matrix (synthia16 ignores them): a terrain
  # pixel predicted as vegetation is a false positive of vegetation.
  gt, pred = np.array([8, 9]), np.array([8, 8])
  iou19 = metrics.iou_per_class(metrics.confusion_matrix(gt, pred, 19))
  assert iou19[8] == 0.5
  config = tiny_config()
  config.data.label_space = "synthia19"
  assert labels.label_space_for(config).num_classes == 19


def test_predictions_are_written_as_cityscapes_label_ids():
  space19 = labels.get_label_space("cityscapes19")
  np.testing.assert_array_equal(
      reports.to_label_id_image(np.arange(19, dtype=np.uint8), space19), CITYSCAPES_LABEL_IDS)
  space16 = labels.get_label_space("synthia16")
  np.testing.assert_array_equal(
      reports.to_label_id_image(np.arange(16, dtype=np.uint8), space16), SYNTHIA16_LABEL_IDS)
  assert len(space16.classes) == 16 and "terrain" not in space16.classes


# ------------------------------------------------------------------------------------------
# Prediction: upsampling to the label and the layer switch.


def test_prediction_is_upsampled_logits_argmax_at_the_label_resolution():
  model = ProjectionModel()
  variables = projection_variables(seed=1)
  image = random_image(np.random.default_rng(2))
  predict_fn = predict.make_predict_fn(model, source_stages=(3, 4))
  prediction = np.asarray(predict_fn(variables, image, out_hw=LABEL_HW))
  assert prediction.shape == (1, *LABEL_HW) and prediction.dtype == np.uint8

  _, logits = model.apply(variables, image)
  reference = torch.nn.functional.interpolate(
      torch.from_numpy(np.asarray(logits)).permute(0, 3, 1, 2), size=LABEL_HW, mode="bilinear",
      align_corners=True).argmax(dim=1).numpy()
  np.testing.assert_array_equal(prediction, reference)
  assert model.calls[0] == {"domain": "target", "train": False, "source_stages": (3, 4)}


def with_source_norm_copied_into_target(variables, stage_name):
  """A hand-built copy whose target slots of `stage_name` hold the source values."""

  def copy_tree(tree):
    if not isinstance(tree, dict):
      return tree
    out = {key: copy_tree(value) for key, value in tree.items()}
    for key in tree:
      if key.startswith("source_"):
        out["target_" + key.removeprefix("source_")] = tree[key]
    return out

  result = {}
  for collection, tree in variables.items():
    result[collection] = dict(tree)
    result[collection][stage_name] = copy_tree(tree[stage_name])
  return result


def test_layer_switch_reaches_the_model(tiny_model, tiny_variables):
  image = random_image(np.random.default_rng(3))
  # Make the source statistics of layer4 clearly different from the target ones.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: (x + 1.0 if "layer4" in jax.tree_util.keystr(path)
                       and path[-1].key == "source_mean" else x), tiny_variables)
  target_only = np.asarray(predict.make_predict_fn(tiny_model, ())(
      variables, image, out_hw=LABEL_HW))
  switched = np.asarray(predict.make_predict_fn(tiny_model, (4,))(
      variables, image, out_hw=LABEL_HW))
  hand_built = np.asarray(predict.make_predict_fn(tiny_model, ())(
      with_source_norm_copied_into_target(variables, "layer4"), image, out_hw=LABEL_HW))
  assert (target_only != switched).mean() > 0.05
  np.testing.assert_array_equal(switched, hand_built)


# ------------------------------------------------------------------------------------------
# evaluate(): files, scalars and agreement with cityscapesscripts.


def fake_examples(rng, count, *, ids=None, label_values=None):
  """Examples as create_eval_iterator yields them (batch axis 1)."""
  examples = []
  for k in range(count):
    values = label_values if label_values is not None else list(range(19)) + [255]
    examples.append({
        "image": random_image(rng),
        "label": rng.choice(values, size=(1, *LABEL_HW)).astype(np.uint8),
        "raw_image": rng.integers(0, 256, size=(1, *LABEL_HW, 3), dtype=np.uint8),
        "id": ids[k] if ids else f"city_{k:06d}_000019",
    })
  return examples


def test_evaluate_writes_tables_panels_label_id_pngs_and_scalars(tiny_model, tiny_variables,
                                                                 tmp_path, capsys):
  config = tiny_config(num_panels=1)
  examples = fake_examples(np.random.default_rng(4), 2)
  writer = RecordingWriter()
  result = evaluate.evaluate(tiny_model, tiny_variables, examples, config, tmp_path, step=7,
                             writer=writer, progress=True)
  run_dir = tmp_path / "eval_step_7"
  assert result["dir"] == str(run_dir) and result["num_images"] == 2

  # The figures equal an independent computation on the same predictions.
  predict_fn = predict.make_predict_fn(tiny_model, ())
  predictions = [np.asarray(predict_fn(tiny_variables, e["image"], out_hw=LABEL_HW))[0]
                 for e in examples]
  gts = np.stack([e["label"][0] for e in examples])
  expected = loop_iou(gts, np.stack(predictions), 19)
  np.testing.assert_allclose(result["iou"], expected, rtol=1e-12)
  assert result["mIoU19"] == result["miou"] == pytest.approx(np.nanmean(expected))

  markdown = (run_dir / "iou.md").read_text()
  assert "| 0 | road |" in markdown and f"**{100 * result['miou']:.2f}**" in markdown
  rows = list(csv.reader((run_dir / "iou.csv").open()))
  assert rows[0] == ["id", "class", "iou"] and len(rows) == 1 + 19 + 1
  assert rows[-1][1] == "mIoU19" and float(rows[-1][2]) == pytest.approx(result["miou"], abs=1e-6)
  stdout = capsys.readouterr().out
  assert "mIoU19" in stdout and "images/s" in stdout

  panels = sorted((run_dir / "panels").iterdir())
  assert [p.name for p in panels] == ["city_000000_000019.png"]  # num_panels = 1
  panel = np.asarray(Image.open(panels[0]))
  assert panel.shape == (LABEL_HW[0], 3 * LABEL_HW[1], 3)  # input | ground truth | prediction
  np.testing.assert_array_equal(panel[:, :LABEL_HW[1]], examples[0]["raw_image"][0])
  for k, prediction in enumerate(predictions):
    png = np.asarray(Image.open(run_dir / "predictions" / f"city_{k:06d}_000019_pred_labelIds.png"))
    np.testing.assert_array_equal(png, np.asarray(CITYSCAPES_LABEL_IDS)[prediction])

  (step, scalars), = writer.scalars
  assert step == 7 and scalars["mIoU19"] == result["miou"]
  assert scalars["iou/06_traffic_light"] == pytest.approx(expected[6], nan_ok=True)
  assert len([k for k in scalars if k.startswith("iou/")]) == 19


def test_label_id_pngs_score_the_same_with_cityscapesscripts(tmp_path, monkeypatch):
  """A fake Cityscapes val split with real labelId ground truth (void ids included)."""
  monkeypatch.delenv("CITYSCAPES_RESULTS", raising=False)
  monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
  # Imported here: the module reads CITYSCAPES_DATASET when it is first imported.
  from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval  # pylint: disable=g-import-not-at-top,line-too-long
  from cityscapesscripts.helpers import labels as cs_labels  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(5)
  # Void/ignored ids 0, 1, 4, 5, 9 (parking), 30 (trailer) and eleven evaluated classes.
  label_ids = np.array([0, 1, 4, 5, 9, 30, 7, 8, 11, 17, 20, 21, 23, 24, 26, 28, 33])
  to_train = np.full(256, 255, np.uint8)
  for label in cs_labels.labels:
    if 0 <= label.id and 0 <= label.trainId < 19:
      to_train[label.id] = label.trainId
  ids = ["frankfurt_000000_000294", "frankfurt_000001_011835", "lindau_000002_000019"]
  gt_files, examples = [], []
  for example_id in ids:
    gt_ids = rng.choice(label_ids, size=LABEL_HW).astype(np.uint8)
    city = example_id.split("_")[0]
    path = tmp_path / "gtFine" / "val" / city / f"{example_id}_gtFine_labelIds.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gt_ids).save(path)
    gt_files.append(str(path))
    examples.append({"image": random_image(rng), "label": to_train[gt_ids][None], "id": example_id})

  config = tiny_config(num_panels=0, write_predictions=True)
  model = ProjectionModel()
  result = evaluate.evaluate(model, projection_variables(seed=6), examples, config,
                             tmp_path / "out", progress=False)

  args = copy.copy(cs_eval.args)
  args.evalInstLevelScore = False  # no instanceIds files here
  args.evalPixelAccuracy = False
  args.JSONOutput = False
  args.quiet = True
  args.colorized = False
  args.bold = args.nocol = ""
  args.predictionPath = str(tmp_path / "out" / "eval" / "predictions")
  args.predictionWalk = None
  # cityscapesscripts finds each prediction by the <city>_<seq>_<frame> prefix, as on the server.
  prediction_files = [cs_eval.getPrediction(args, gt) for gt in gt_files]
  scores = cs_eval.evaluateImgLists(prediction_files, gt_files, args)

  assert scores["averageScoreClasses"] == pytest.approx(result["miou"], rel=1e-9)
  space = labels.get_label_space("cityscapes19")
  for train_id, label_id in enumerate(space.cityscapes_label_ids):
    theirs = scores["classScores"][cs_labels.id2label[int(label_id)].name]
    assert theirs == pytest.approx(result["iou"][train_id], rel=1e-9, nan_ok=True)
  assert 0 < np.isnan(result["iou"]).sum() < 19  # some classes absent, some not


# ------------------------------------------------------------------------------------------
# Eval mode over checkpoints.


def forced_class_variables(variables, train_id):
  """Variables whose main head predicts `train_id` everywhere (a huge bias)."""
  params = jax.tree.map(np.array, variables["params"])
  params["main_head"]["branch0"]["bias"][train_id] += 1e4
  return {"params": params, "batch_stats": variables["batch_stats"]}


def test_evaluate_checkpoints_reports_final_and_best_on_val(tiny_model, tiny_variables, tmp_path,
                                                            monkeypatch):
  checkpoints = tmp_path / "work" / "checkpoints"
  # Step 10 predicts road everywhere (right), step 20 sidewalk everywhere (wrong).
  checkpointing.save_variables(checkpoints, forced_class_variables(tiny_variables, 0), {}, 10)
  checkpointing.save_variables(checkpoints, forced_class_variables(tiny_variables, 1), {}, 20)

  rng = np.random.default_rng(7)
  stored = []
  for k in range(2):
    label = np.zeros((*LABEL_HW, 1), np.uint8)
    label[:5] = 255
    stored.append({"image": rng.integers(0, 256, (*LABEL_HW, 3), dtype=np.uint8),
                   "label": label, "id": f"val_{k}"})
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)

  config = tiny_config(num_panels=0, write_predictions=False)
  result = evaluate.evaluate_checkpoints(config, tmp_path / "work")
  assert [r["step"] for r in result["results"]] == [10, 20]
  assert result["final"]["step"] == 20 and result["final"]["miou"] == 0.0
  assert result["best"]["step"] == 10 and result["best"]["miou"] == 1.0

  summary = (tmp_path / "work" / "eval" / "summary.md").read_text()
  assert "final (step 20): mIoU19 = 0.00" in summary
  assert "best on val (step 10): mIoU19 = 100.00" in summary
  data = json.loads((tmp_path / "work" / "eval" / "summary.json").read_text())
  assert data["best_on_val"] == {"step": 10, "mIoU19": 1.0}
  assert (tmp_path / "work" / "eval" / "eval_step_20" / "iou.md").exists()

  config.eval.step = 15
  with pytest.raises(FileNotFoundError, match=r"eval.step=15 is not saved .* \[10, 20\]"):
    evaluate.evaluate_checkpoints(config, tmp_path / "work")


def test_eval_checkpoint_may_name_a_workdir_a_checkpoints_folder_or_a_step_folder(
    tiny_model, tiny_variables, tmp_path, monkeypatch):
  checkpoints = tmp_path / "run" / "checkpoints"
  checkpointing.save_variables(checkpoints, forced_class_variables(tiny_variables, 0), {}, 10)
  checkpointing.save_variables(checkpoints, forced_class_variables(tiny_variables, 1), {}, 20)
  stored = [{"image": np.zeros((*LABEL_HW, 3), np.uint8), "id": "val_0",
             "label": np.zeros((*LABEL_HW, 1), np.uint8)}]
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)
  config = tiny_config(num_panels=0, write_predictions=False)
  for where, steps in ((tmp_path / "run", [10, 20]), (checkpoints, [10, 20]),
                       (checkpoints / "10", [10])):
    config.eval.checkpoint = str(where)
    result = evaluate.evaluate_checkpoints(config, tmp_path / f"eval_{len(steps)}")
    assert [r["step"] for r in result["results"]] == steps, where
  assert result["best"]["miou"] == 1.0  # step 10 predicts road, the ground truth

  config.eval.step = 20
  with pytest.raises(errors.UsageError, match="folder of step 10 but config.eval.step=20"):
    evaluate.evaluate_checkpoints(config, tmp_path / "eval")
