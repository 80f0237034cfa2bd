"""Pseudo-labels: the rules on hand-made maps, the streaming histogram, the confidence side of
predict (softmax upsampled to the input size, layer switch) and generate() end to end."""

import json

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import helpers
from seat_jax import checkpointing
from seat_jax import datasets
from seat_jax import input_pipeline
from seat_jax import models
from seat_jax import predict
from seat_jax import pseudo_label_rules
from seat_jax import pseudo_labels

# Its module fixture trains once: one worker runs the module (`make test`: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_pseudo_labels")

IGNORE = 255
MODEL_HW = (32, 64)
STORED_HW = (40, 72)  # target images as stored; pseudo-labels are at MODEL_HW


# ------------------------------------------------------------------------------------------
# The rules.


def test_global_threshold_keeps_confident_argmax_only():
  probs = np.array([
      [[0.90, 0.05, 0.05], [0.10, 0.89, 0.01], [0.30, 0.30, 0.40]],
      [[0.00, 0.00, 1.00], [0.05, 0.95, 0.00], [0.50, 0.45, 0.05]],
  ])
  expected = np.array([[0, IGNORE, IGNORE], [2, 1, IGNORE]])  # 0.90 >= 0.9 is kept
  labels = pseudo_label_rules.global_threshold_labels(probs, 0.9)
  np.testing.assert_array_equal(labels, expected)
  assert labels.dtype == np.uint8
  np.testing.assert_array_equal(pseudo_label_rules.global_threshold_labels(probs, 0.5),
                                [[0, 1, IGNORE], [2, 1, 0]])


# Class 0: 4 pixels, class 1: 3 pixels (all above the cap), class 2: 1 pixel, class 3: never.
CONFIDENCE = np.array([[0.8, 0.5, 0.97, 0.7], [0.95, 0.6, 0.99, 0.3]])
PREDICTION = np.array([[0, 0, 1, 0], [1, 0, 1, 2]])


@pytest.mark.parametrize("quantile, class0, class2", [
    (0.5, 0.7, 0.3),  # sorted class 0: [.5 .6 .7 .8], index round(2) = 2; class 2 index 0
    (0.66, 0.8, 0.3),  # index round(2.64) = 3; class 2: round(0.66) = 1 is clamped to 0
])
def test_class_quantile_thresholds_by_hand(quantile, class0, class2):
  thresholds = pseudo_label_rules.class_quantile_thresholds(CONFIDENCE, PREDICTION, 4, quantile, 0.9)
  # Class 1: sorted [.95 .97 .99], index round(1.5) = 2 or round(1.98) = 2 -> .99, capped at 0.9;
  # class 3 is never predicted -> 0.
  np.testing.assert_allclose(thresholds, [class0, 0.9, class2, 0.0])
  labels = pseudo_label_rules.apply_class_thresholds(CONFIDENCE, PREDICTION, thresholds)
  if quantile == 0.5:
    expected = [[0, IGNORE, 1, 0], [1, IGNORE, 1, 2]]
  else:
    expected = [[0, IGNORE, 1, IGNORE], [1, IGNORE, 1, 2]]
  np.testing.assert_array_equal(labels, expected)


def test_class_quantile_cap_and_rounding_follow_bdl():
  # 5 pixels of class 0: round(0.5 * 5) = round(2.5) = 2 (numpy rounds half to even).
  confidence = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
  thresholds = pseudo_label_rules.class_quantile_thresholds(confidence, np.zeros(5, int), 1, 0.5, 0.9)
  assert thresholds[0] == pytest.approx(0.3)
  # The cap binds only when the quantile is above it.
  thresholds = pseudo_label_rules.class_quantile_thresholds(confidence, np.zeros(5, int), 1, 0.5, 0.25)
  assert thresholds[0] == pytest.approx(0.25)
  with pytest.raises(ValueError, match="quantile must lie in"):
    pseudo_label_rules.class_quantile_thresholds(confidence, np.zeros(5, int), 1, 1.5, 0.9)
  with pytest.raises(ValueError, match=r"predictions must lie in \[0, 1\)"):
    pseudo_label_rules.apply_class_thresholds(confidence, np.ones(5, int), [0.5])


def test_streaming_histogram_equals_the_whole_split_rule_on_quantised_confidences():
  rng = np.random.default_rng(0)
  num_classes = 5
  confidence = rng.uniform(0.2, 1.0, size=(3, 20, 30)).astype(np.float32)
  prediction = rng.choice([0, 1, 2, 4], size=(3, 20, 30))  # class 3 never predicted
  histogram = pseudo_labels.ConfidenceHistogram(num_classes)
  for image in range(3):  # one image at a time, as generate() streams them
    histogram.update(confidence[image], prediction[image])
  for quantile in (0.5, 0.66):
    streamed = histogram.thresholds(quantile, 0.9)
    whole = pseudo_label_rules.class_quantile_thresholds(
        pseudo_label_rules.quantize_confidence(confidence), prediction, num_classes, quantile, 0.9)
    np.testing.assert_array_equal(streamed, whole)
    exact = pseudo_label_rules.class_quantile_thresholds(
        confidence, prediction, num_classes, quantile, 0.9)
    np.testing.assert_allclose(streamed, exact, atol=0.5 / 65535 + 1e-7)
    assert streamed[3] == 0.0 and streamed.max() <= 0.9
  # Thresholds come from the whole split: one image alone gives other values.
  first = pseudo_label_rules.class_quantile_thresholds(
      pseudo_label_rules.quantize_confidence(confidence[0]), prediction[0], num_classes, 0.5, 0.9)
  assert not np.array_equal(first, histogram.thresholds(0.5, 0.9))


# ------------------------------------------------------------------------------------------
# The model side.


class ProjectionModel:
  """A stand-in segmenter (stride-8 average pool times a matrix) that records its arguments."""

  def __init__(self):
    self.calls = []

  def apply(self, variables, images, domain="target", train=False, source_stages=()):
    self.calls.append({"domain": domain, "train": train, "source_stages": source_stages})
    n, h, w, c = images.shape
    pooled = images.reshape(n, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))
    main = pooled @ variables["w"]
    return main, main


def test_confidence_fn_upsamples_the_softmax_to_the_input_size():
  rng = np.random.default_rng(1)
  model = ProjectionModel()
  variables = {"w": rng.normal(size=(3, 19)).astype(np.float32) * 0.3}
  image = (rng.normal(size=(1, *MODEL_HW, 3)) * 50).astype(np.float32)
  fn = predict.make_predict_fn(model, source_stages=(4,), output="confidence")
  prediction, confidence = (np.asarray(x) for x in fn(variables, image, out_hw=MODEL_HW))
  assert prediction.shape == confidence.shape == (1, *MODEL_HW)
  assert model.calls[0] == {"domain": "target", "train": False, "source_stages": (4,)}

  _, logits = model.apply(variables, image)
  probs = torch.softmax(torch.from_numpy(np.asarray(logits)).permute(0, 3, 1, 2), dim=1)
  probs = torch.nn.functional.interpolate(probs, size=MODEL_HW, mode="bilinear",
                                          align_corners=True)
  np.testing.assert_allclose(confidence, probs.max(dim=1).values.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(prediction, probs.argmax(dim=1).numpy())
  # The order matters: softmax of upsampled logits would give other confidences.
  logits_first = torch.softmax(torch.nn.functional.interpolate(
      torch.from_numpy(np.asarray(logits)).permute(0, 3, 1, 2), size=MODEL_HW, mode="bilinear",
      align_corners=True), dim=1).max(dim=1).values.numpy()
  assert np.abs(confidence - logits_first).max() > 0.1


# ------------------------------------------------------------------------------------------
# generate(): checkpoint -> target train split -> PNGs readable by the input pipeline.


def tiny_config(tmp_path, rule):
  config = helpers.tiny_model_config(MODEL_HW)
  config.eval.num_panels = 1
  config.eval.source_stages = (4,)
  config.pseudo.rule = rule
  config.pseudo.threshold = 0.75
  config.pseudo.quantile = 0.5
  config.pseudo.cap = 0.9
  config.pseudo.output_dir = str(tmp_path / f"pseudo_{rule}")
  return config



@pytest.fixture(scope="module")
def workdir_with_checkpoint(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("work")
  model = models.build_segmenter(tiny_config(workdir, "global").model)
  variables = helpers.random_variables(model, seed=0)
  # Layer4's source statistics differ, so the layer switch changes the labels.
  variables["batch_stats"]["layer4"] = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 1.0 if path[-1].key == "source_mean" else x,
      variables["batch_stats"]["layer4"])
  checkpointing.save_variables(workdir / "checkpoints", variables, {}, step=3)
  return workdir, model, variables


def stored_target_split():
  rng = np.random.default_rng(2)
  return [{"image": rng.integers(0, 256, (*STORED_HW, 3), dtype=np.uint8),
           "label": np.zeros((*STORED_HW, 1), np.uint8), "id": f"target_{k:02d}"}
          for k in range(3)]


@pytest.mark.parametrize("rule", ["class_quantile", "global"])
def test_generate_writes_pseudo_labels_the_pipeline_reads(workdir_with_checkpoint, tmp_path,
                                                          monkeypatch, rule):
  workdir, model, variables = workdir_with_checkpoint
  stored = stored_target_split()
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)
  config = tiny_config(tmp_path, rule)
  summary = pseudo_labels.generate(config, workdir)

  # An independent run of the same model over the same stream, the rule applied by hand.
  fn = predict.make_predict_fn(model, (4,), output="confidence")
  outputs = [[np.asarray(x)[0] for x in fn(variables, e["image"], out_hw=MODEL_HW)]
             for e in input_pipeline.create_eval_iterator(config, config.data.target)]
  prediction = np.stack([p for p, _ in outputs])
  confidence = np.stack([c for _, c in outputs])
  if rule == "class_quantile":
    quantised = pseudo_label_rules.quantize_confidence(confidence)
    thresholds = pseudo_label_rules.class_quantile_thresholds(quantised, prediction, 19, 0.5, 0.9)
    expected = np.where(quantised >= thresholds[prediction], prediction, IGNORE)
  else:
    thresholds = np.full(19, 0.75)
    expected = np.where(confidence >= 0.75, prediction, IGNORE)
  assert 0 < (expected == IGNORE).mean() < 1

  out = tmp_path / f"pseudo_{rule}"
  for k, example in enumerate(stored):
    png = Image.open(out / f"{example['id']}.png")
    assert png.mode == "L" and png.size == (MODEL_HW[1], MODEL_HW[0])
    np.testing.assert_array_equal(np.asarray(png), expected[k])
    # Stage 2 reads them back by example id.
    np.testing.assert_array_equal(
        input_pipeline.read_pseudo_label(str(out), example["id"]), expected[k])
  assert [p.name for p in (out / "previews").iterdir()] == ["target_00.png"]

  written = json.loads((out / "summary.json").read_text())
  assert written == summary and summary["step"] == 3 and summary["num_images"] == 3
  np.testing.assert_allclose([c["threshold"] for c in summary["classes"]], thresholds)
  kept = np.bincount(expected[expected != IGNORE], minlength=19)
  assert [c["kept_pixels"] for c in summary["classes"]] == kept.tolist()
  assert summary["kept_pixels"] == kept.sum() and summary["total_pixels"] == prediction.size
  assert "kept / predicted" in (out / "summary.md").read_text()


def test_generate_rejects_an_unknown_rule(tmp_path):
  config = tiny_config(tmp_path, "median")
  with pytest.raises(ValueError, match="pseudo.rule must be one of"):
    pseudo_labels.generate(config, tmp_path)


def _forced_class(variables, train_id):
  """Variables whose main head predicts `train_id` everywhere (a huge bias)."""
  params = jax.tree.map(np.array, variables["params"])
  params["main_head"]["branch0"]["bias"][train_id] += 1e4
  return {"params": params, "batch_stats": variables["batch_stats"]}


def test_pseudo_labels_come_from_the_final_or_the_best_on_val_checkpoint(
    workdir_with_checkpoint, tmp_path, monkeypatch):
  from seat_jax import evaluate  # pylint: disable=g-import-not-at-top
  _, _, variables = workdir_with_checkpoint
  workdir = tmp_path / "run"
  # Step 3 predicts road everywhere, which is the ground truth (all zeros); step 7 sidewalk.
  checkpointing.save_variables(workdir / "checkpoints", _forced_class(variables, 0), {}, step=3)
  checkpointing.save_variables(workdir / "checkpoints", _forced_class(variables, 1), {}, step=7)
  stored = stored_target_split()
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)
  config = tiny_config(tmp_path, "global")
  config.data.val.resize_hw = MODEL_HW
  config.eval.num_panels = 0
  config.eval.write_predictions = False

  config.pseudo.checkpoint = "best_on_val"
  with pytest.raises(FileNotFoundError, match=r"needs .*eval/summary.json: run eval mode first"):
    pseudo_labels.generate(config, workdir)
  evaluated = evaluate.evaluate_checkpoints(config, workdir)  # eval mode writes the summary
  assert evaluated["best"]["step"] == 3 and evaluated["final"]["step"] == 7

  summary = pseudo_labels.generate(config, workdir)
  assert summary["step"] == 3 and summary["checkpoint_selection"] == "best_on_val"
  assert "step 3 (best on val)" in (tmp_path / "pseudo_global" / "summary.md").read_text()
  label = np.asarray(Image.open(tmp_path / "pseudo_global" / "target_00.png"))
  assert set(np.unique(label)) == {0}  # road everywhere, confidently

  config.pseudo.checkpoint = "final"
  summary = pseudo_labels.generate(config, workdir)
  assert summary["step"] == 7 and summary["checkpoint_selection"] == "final"
