"""FDA (seat_jax/methods/fda.py and the machinery it uses) against FDA's own definitions.

The expected values come from independent implementations written here from YanchaoYang/FDA:
the robust entropy from `model/deeplab.py` (PyTorch, NCHW), the MBT averaging from
`getSudoLabel_multi.py` / `evaluation_multi.py` (PyTorch interpolate + softmax) and its
class-wise thresholds (numpy, pooled over images, index round(0.66 N), cap 0.9). The preset
recipe is written by hand from FDA's README and `options/train_options.py`.
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import helpers
from seat_jax import checkpointing
from seat_jax import cli
from seat_jax import config_validation
from seat_jax import datasets
from seat_jax import errors
from seat_jax import evaluate
from seat_jax import input_pipeline
from seat_jax import models
from seat_jax import optim
from seat_jax import predict
from seat_jax import presets
from seat_jax import pseudo_label_rules
from seat_jax import pseudo_labels
from seat_jax import train
from seat_jax import train_step
from seat_jax.methods import fda
from seat_jax.recipes import fda_rounds
from seat_jax.recipes import parts

# Its module fixture trains once: one worker runs the module (`make test`: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_fda_method")

REPO = pathlib.Path(__file__).resolve().parents[1]
IGNORE = 255
MODEL_HW = (32, 64)
STORED_HW = (40, 72)
FDA_WEIGHTS = (0.3333, 0.3333, 0.3334)  # a, b, 1 - a - b in FDA's scripts


# ------------------------------------------------------------------------------------------
# The robust entropy.


def fda_robust_entropy(logits_nhwc: np.ndarray, eta: float, normaliser: float) -> torch.Tensor:
  """FDA model/deeplab.py, phase 'train': on NCHW logits, natural log, / normaliser, mean."""
  x = torch.from_numpy(np.asarray(logits_nhwc, np.float64)).permute(0, 3, 1, 2)
  p = torch.softmax(x, dim=1)
  log_p = torch.log_softmax(x, dim=1)
  ent = -1.0 * (p * log_p).sum(dim=1)
  ent = ent / normaliser
  ent = ent ** 2.0 + 1e-8
  ent = ent ** eta
  return ent.mean()


def test_robust_entropy_matches_fda_code():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 9, 13, 19)) * 3
  logits[0, :2] *= 20  # confident pixels: entropy near 0, where the 1e-8 matters
  got = float(fda.robust_entropy(jnp.asarray(logits, jnp.float32), 2.0))
  # FDA hard-codes 2.9444 for 19 classes; ln 19 = 2.94444, so the two agree to ~5e-5.
  np.testing.assert_allclose(got, float(fda_robust_entropy(logits, 2.0, 2.9444)), rtol=1e-4)
  np.testing.assert_allclose(got, float(fda_robust_entropy(logits, 2.0, math.log(19))),
                             rtol=1e-5)
  # Other class counts divide by their own ln C (FDA's comment: change it when C != 19); eta.
  few = rng.normal(size=(1, 5, 7, 5))
  np.testing.assert_allclose(float(fda.robust_entropy(jnp.asarray(few, jnp.float32), 1.5)),
                             float(fda_robust_entropy(few, 1.5, math.log(5))), rtol=1e-5)


def test_robust_entropy_gradient_matches_fda_code():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 6, 8, 19)) * 2
  ours = np.asarray(jax.grad(lambda x: fda.robust_entropy(x, 2.0))(jnp.asarray(logits,
                                                                               jnp.float32)))
  x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
  p = torch.softmax(x.permute(0, 3, 1, 2), dim=1)
  ent = -(p * torch.log_softmax(x.permute(0, 3, 1, 2), dim=1)).sum(dim=1) / math.log(19)
  ((ent ** 2.0 + 1e-8) ** 2.0).mean().backward()
  np.testing.assert_allclose(ours, x.grad.numpy(), rtol=1e-4, atol=1e-9)


def _step_config():
  config = presets.demo_row("fda_b001")
  config.model.num_classes = 5
  config.optim.weight_decay = 0.0
  config.train.batch_size = 2
  return config


def _batch(h=32, w=48):
  rng = np.random.default_rng(0)
  source_labels = rng.integers(0, 5, size=(2, h, w)).astype(np.int32)
  return {"source_image": jnp.asarray(rng.normal(size=(2, h, w, 3)) * 50, jnp.float32),
          "source_label": jnp.asarray(source_labels),
          "target_image": jnp.asarray(rng.normal(size=(2, h, w, 3)) * 30 + 20, jnp.float32)}


def test_step_adds_the_robust_entropy_of_the_stride8_target_logits():
  config = _step_config()
  trainer = train_step.build_trainer(config)
  assert trainer.opts.adv_mode == "none" and trainer.opts.target_pass  # entropy needs target
  assert any(isinstance(m, fda.RobustEntropy) for m in trainer.opts.methods)
  step = jax.jit(train_step.make_train_step(trainer.model, trainer.disc, trainer.tx,
                                            trainer.disc_tx, trainer.opts,
                                            optim.lr_schedules(config)))
  state = train_step.create_state(trainer, 0)
  weights = train_step.loss_weights(config)
  assert float(weights["robust_entropy_weight"]) == pytest.approx(0.005)
  batch = _batch()

  # The target logits at the head's own stride 8 (batch statistics: train mode).
  (_, main), _ = trainer.model.apply(state.model_variables(), batch["target_image"],
                                     domain="target", train=True, mutable=["batch_stats"])
  assert main.shape == (2, 5, 7, 5)  # 32x48 at stride 8 with the ceil-mode pool (REFERENCE 1.4)
  runs = {}
  for weight, eta in ((0.0, 2.0), (0.5, 2.0), (0.5, 1.0)):
    w = {**weights, "robust_entropy_weight": jnp.float32(weight),
         "robust_entropy_eta": jnp.float32(eta)}
    runs[weight, eta] = step(state, batch, w)
    expected = float(fda_robust_entropy(np.asarray(main), eta, math.log(5)))
    np.testing.assert_allclose(float(runs[weight, eta][1]["robust_entropy"]), expected,
                               rtol=1e-5)
  off, on = runs[0.0, 2.0][0], runs[0.5, 2.0][0]
  np.testing.assert_allclose(float(runs[0.5, 2.0][1]["loss"]),
                             float(runs[0.0, 2.0][1]["loss"]) +
                             0.5 * float(runs[0.5, 2.0][1]["robust_entropy"]), rtol=1e-6)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), off.params, on.params)
  assert any(jax.tree.leaves(moved["main_head"]))
  # FDA's model has one head: the aux head never moves.
  jax.tree.map(np.testing.assert_array_equal, state.params["aux_head"], on.params["aux_head"])


# ------------------------------------------------------------------------------------------
# MBT: averaging (predict) and class-wise thresholds (pseudo_labels).


class ProjectionModel:
  """A stand-in segmenter: stride-8 average pool times a per-model matrix."""

  def apply(self, variables, images, domain="target", train=False, source_stages=()):
    n, h, w, c = images.shape
    pooled = images.reshape(n, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))
    main = pooled @ variables["w"]
    return main, main


def _projection_members(seed=3, num_classes=6):
  rng = np.random.default_rng(seed)
  variables = tuple({"w": (rng.normal(size=(3, num_classes)) * 0.05).astype(np.float32)}
                    for _ in range(3))
  images = (rng.normal(size=(1, *MODEL_HW, 3)) * 40).astype(np.float32)
  logits = [torch.from_numpy(np.asarray(ProjectionModel().apply(v, images)[0]))
            .permute(0, 3, 1, 2) for v in variables]
  return variables, images, logits


def _fda_average(tensors):
  a, b = FDA_WEIGHTS[:2]
  return a * tensors[0] + b * tensors[1] + (1.0 - a - b) * tensors[2]


def test_mbt_confidence_follows_getsudolabel_multi():
  variables, images, logits = _projection_members()
  fn = predict.make_predict_fn(ProjectionModel(), (), "confidence", ensemble_weights=FDA_WEIGHTS)
  label, prob = (np.asarray(x)[0] for x in fn(variables, images, out_hw=MODEL_HW))
  # getSudoLabel_multi: each model upsamples its logits to 512x1024 (phase 'train'), softmax,
  # weighted mean; label = argmax, prob = max.
  mean = _fda_average([torch.softmax(torch.nn.functional.interpolate(
      x, size=MODEL_HW, mode="bilinear", align_corners=True), dim=1) for x in logits])[0]
  np.testing.assert_allclose(prob, mean.max(dim=0).values.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(label, mean.argmax(dim=0).numpy())
  # The average is not any one model's answer.
  for member in variables:
    single = predict.make_predict_fn(ProjectionModel(), (), "confidence", (1.0,))
    alone = np.asarray(single((member,), images, out_hw=MODEL_HW)[1])[0]
    assert np.abs(alone - prob).max() > 1e-3


def test_mbt_evaluation_follows_evaluation_multi():
  variables, images, logits = _projection_members(seed=4)
  label_hw = (64, 128)
  fn = predict.make_predict_fn(ProjectionModel(), (), "labels", ensemble_weights=FDA_WEIGHTS)
  got = np.asarray(fn(variables, images, out_hw=label_hw))[0]
  # evaluation_multi: softmax of the stride-8 logits (phase 'test'), weighted mean, then
  # bilinear (align_corners) to the label size, argmax.
  mean = _fda_average([torch.softmax(x, dim=1) for x in logits])
  up = torch.nn.functional.interpolate(mean, size=label_hw, mode="bilinear", align_corners=True)
  np.testing.assert_array_equal(got, up[0].argmax(dim=0).numpy())


def fda_thresholds(prob: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
  """getSudoLabel_multi.py: per class over ALL images, sorted[round(N * 0.66)], 0 if none, cap."""
  thres = []
  for i in range(num_classes):
    x = prob[label == i]
    if len(x) == 0:
      thres.append(0)
      continue
    x = np.sort(x)
    # FDA indexes past the end (IndexError) for a class predicted on one pixel only; the port
    # takes that pixel's value, the only reading that does not crash.
    thres.append(x[min(int(np.round(len(x) * 0.66)), len(x) - 1)])
  thres = np.array(thres, np.float64)
  thres[thres > 0.9] = 0.9
  return thres


def fda_labels(prob: np.ndarray, label: np.ndarray, thres: np.ndarray) -> np.ndarray:
  """getSudoLabel_multi.py: pixels of class i with prob < thres[i] become 255."""
  label = label.copy()
  for i in range(len(thres)):
    label[(prob < thres[i]) * (label == i)] = 255
  return label.astype(np.uint8)


def _mbt_split(rng):
  """Two images: class 0 with 25 pixels (round(16.5) = 16, half to even), class 1 all above the
  cap, class 2 with repeated values at its threshold, class 3 never predicted, class 4 rest."""
  label = np.full((2, 10, 12), 4)
  prob = rng.uniform(0.3, 1.0, size=label.shape)
  flat_label, flat_prob = label.reshape(-1), prob.reshape(-1)
  cells = rng.permutation(label.size)
  flat_label[cells[:25]] = 0
  flat_label[cells[25:60]] = 1
  flat_prob[cells[25:60]] = rng.uniform(0.95, 1.0, size=35)
  flat_label[cells[60:90]] = 2
  flat_prob[cells[60:90]] = np.repeat([0.5, 0.6, 0.7], 10)  # index round(19.8) = 20 -> 0.7
  return prob, label


def test_mbt_thresholds_follow_getsudolabel_multi():
  prob, label = _mbt_split(np.random.default_rng(5))
  expected_thr = fda_thresholds(prob, label, 5)
  thresholds = pseudo_label_rules.class_quantile_thresholds(prob, label, 5, fda.MBT_QUANTILE,
                                                       fda.MBT_CAP)
  np.testing.assert_array_equal(thresholds, expected_thr)
  assert thresholds[0] == np.sort(prob[label == 0])[16]  # not [17]: numpy rounds 16.5 to 16
  assert thresholds[1] == 0.9 and thresholds[2] == 0.7 and thresholds[3] == 0.0
  ours = pseudo_label_rules.apply_class_thresholds(prob, label, thresholds)
  np.testing.assert_array_equal(ours, fda_labels(prob, label, expected_thr))
  assert (ours[label == 2] == 2).sum() == 10  # equal to the threshold is kept
  # Pooled over the split: thresholds from one image alone differ.
  assert not np.array_equal(fda_thresholds(prob[:1], label[:1], 5), expected_thr)
  # The streaming histogram (what generate uses) on quantised confidences: the same rule.
  quantised = np.round(prob * 65535) / 65535
  histogram = pseudo_labels.ConfidenceHistogram(5)
  for k in range(2):
    histogram.update(prob[k], label[k])
  np.testing.assert_allclose(histogram.thresholds(0.66, 0.9),
                             fda_thresholds(quantised, label, 5), atol=1e-12)


# ------------------------------------------------------------------------------------------
# The ensemble modes end to end on tiny checkpoints.


def _tiny_config(tmp_path):
  config = helpers.tiny_model_config(MODEL_HW)
  config.eval.num_panels = 1
  config.eval.write_predictions = False
  config.pseudo.rule = "class_quantile"
  config.pseudo.quantile, config.pseudo.cap = fda.MBT_QUANTILE, fda.MBT_CAP
  config.pseudo.output_dir = str(tmp_path / "mbt_labels")
  return config



def _stored_split(num=3):
  rng = np.random.default_rng(2)
  return [{"image": rng.integers(0, 256, (*STORED_HW, 3), dtype=np.uint8),
           "label": rng.integers(0, 19, (*STORED_HW, 1)).astype(np.uint8),
           "id": f"target_{k:02d}"} for k in range(num)]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
  """Three run workdirs, each with one checkpoint (step 2) of differently random weights."""
  root = tmp_path_factory.mktemp("runs")
  model = models.build_segmenter(_tiny_config(root).model)
  runs, variables = [], []
  for k in range(3):
    variables.append(helpers.random_variables(model, 10 + k, head_kernel_scale=0.03))
    checkpointing.save_variables(root / f"t0_b{k}" / "checkpoints", variables[-1], {}, step=2)
    runs.append(str(root / f"t0_b{k}"))
  return runs, model, tuple(variables)


def test_ensemble_pseudo_labels_end_to_end(three_runs, tmp_path, monkeypatch):
  runs, model, variables = three_runs
  stored = _stored_split()
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)
  config = _tiny_config(tmp_path)
  config.eval.ensemble = ",".join(runs)  # as `--config.eval.ensemble=a,b,c` gives it
  summary = pseudo_labels.generate(config, tmp_path / "t0_mbt")
  assert [m["checkpoint"] for m in summary["ensemble"]] == [f"{r}/checkpoints" for r in runs]
  assert [m["step"] for m in summary["ensemble"]] == [2, 2, 2]
  np.testing.assert_allclose([m["weight"] for m in summary["ensemble"]], [1 / 3] * 3)

  # The same stream through the ensemble's confidence fn, then FDA's rule by hand on the
  # quantised confidences the streaming histogram stores.
  fn = predict.make_predict_fn(model, (), "confidence", ensemble_weights=(1 / 3,) * 3)
  outputs = [[np.asarray(x)[0] for x in fn(variables, e["image"], out_hw=MODEL_HW)]
             for e in input_pipeline.create_eval_iterator(config, config.data.target)]
  label = np.stack([p for p, _ in outputs])
  prob = np.round(np.stack([c for _, c in outputs]).astype(np.float64) * 65535) / 65535
  thres = fda_thresholds(prob, label, 19)
  expected = fda_labels(prob, label, thres)
  assert 0.3 < (expected == IGNORE).mean() < 0.9
  for k, example in enumerate(stored):
    written = np.asarray(Image.open(tmp_path / "mbt_labels" / f"{example['id']}.png"))
    np.testing.assert_array_equal(written, expected[k])
  np.testing.assert_allclose([c["threshold"] for c in summary["classes"]], thres, atol=1e-12)
  # One member alone labels differently: the average is used.
  alone = predict.make_predict_fn(model, (), "confidence")(
      variables[0], next(iter(input_pipeline.create_eval_iterator(config, config.data.target)))[
          "image"], out_hw=MODEL_HW)[0]
  assert (np.asarray(alone)[0] != label[0]).mean() > 0.01


def test_ensemble_evaluation_scores_the_mean_softmax(three_runs, tmp_path, monkeypatch):
  runs, model, variables = three_runs
  stored = _stored_split(2)
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)
  config = _tiny_config(tmp_path)
  config.eval.ensemble = ",".join(runs)
  config.eval.ensemble_weights = FDA_WEIGHTS
  result = evaluate.evaluate_checkpoints(config, tmp_path)["final"]

  # evaluation_multi, independently: stride-8 softmax, weighted mean, upsampled to the label.
  confusion = np.zeros((19, 19), np.int64)
  for example in input_pipeline.create_eval_iterator(config):
    probs = [torch.softmax(torch.from_numpy(np.array(model.apply(
        v, example["image"], domain="target", train=False)[1])).permute(0, 3, 1, 2), dim=1)
             for v in variables]
    up = torch.nn.functional.interpolate(_fda_average(probs), size=STORED_HW, mode="bilinear",
                                         align_corners=True)
    pred = up[0].argmax(dim=0).numpy()
    gt = np.asarray(example["label"])[0].reshape(STORED_HW).astype(np.int64)
    confusion += np.bincount(gt.reshape(-1) * 19 + pred.reshape(-1),
                             minlength=361).reshape(19, 19)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  expected = np.nanmean(np.where(union > 0, tp / np.maximum(union, 1), np.nan))
  assert result["miou"] == pytest.approx(expected, abs=1e-12)
  written = json.loads((tmp_path / evaluate.ENSEMBLE_DIR / "summary.json").read_text())
  assert written["means"]["mIoU19"] == pytest.approx(expected, abs=1e-12)
  assert [m["weight"] for m in written["members"]] == list(FDA_WEIGHTS)


def test_ensemble_mistakes_name_the_key(tmp_path):
  config = _tiny_config(tmp_path)
  config.init_from = "scratch"
  config.eval.ensemble = "a,b,c"
  config.eval.ensemble_weights = (0.5, 0.5)
  with pytest.raises(errors.UsageError, match="ensemble_weights has 2 values for the 3 models"):
    config_validation.validate(config)
  config.eval.ensemble_weights = ()
  config.eval.checkpoint = "runs/x"
  with pytest.raises(errors.UsageError, match="eval.checkpoint and config.eval.ensemble"):
    config_validation.validate(config)
  assert predict.ensemble_paths(" runs/a, /abs/b,") == ("runs/a", "/abs/b")
  assert predict.ensemble_paths(("runs/a", "runs/b")) == ("runs/a", "runs/b")


# ------------------------------------------------------------------------------------------
# The rounds driver (training replaced by saved checkpoints; the rest is real).


def test_rounds_are_named_chained_and_resumable(tmp_path, monkeypatch):
  stored = _stored_split(2)
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)
  config = presets.fda(_tiny_config(tmp_path), "fda_b005", (), schedule=False)
  config.pseudo.output_dir = ""
  config.train.num_steps = 2
  config.init_from = "/ckpt/init"
  model = models.build_segmenter(config.model)
  trained = []

  def fake_train(run_config, workdir):
    trained.append((workdir, run_config.data.fda_beta, run_config.data.target.pseudo_label_dir,
                    run_config.loss.target_ce_weight, run_config.init_from))
    if not checkpointing.list_steps(f"{workdir}/checkpoints"):
      checkpointing.save_variables(f"{workdir}/checkpoints",
                                   helpers.random_variables(model, len(trained), head_kernel_scale=0.03), {}, step=2)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  config.fda.rounds, config.fda.betas = 1, (0.01, 0.09)
  results = fda_rounds.run(config, tmp_path / "fda")
  base = tmp_path / "fda"
  t0_labels = str(base / "t0_mbt" / "pseudo_labels")
  assert trained == [(str(base / "t0_b001"), 0.01, "", 1.0, "/ckpt/init"),
                     (str(base / "t0_b009"), 0.09, "", 1.0, "/ckpt/init"),
                     (str(base / "t1_b001"), 0.01, t0_labels, 1.0, "/ckpt/init"),
                     (str(base / "t1_b009"), 0.09, t0_labels, 1.0, "/ckpt/init")]
  assert list(results) == ["T=0 b001", "T=0 b009", "T=0 MBT", "T=1 b001", "T=1 b009", "T=1 MBT"]
  summary = json.loads((base / "t0_mbt" / "pseudo_labels" / "summary.json").read_text())
  assert [m["checkpoint"] for m in summary["ensemble"]] == [
      str(base / "t0_b001" / "checkpoints"), str(base / "t0_b009" / "checkpoints")]
  assert summary["quantile"] == 0.66 and summary["cap"] == 0.9
  assert not (base / "t1_mbt" / "pseudo_labels").exists()  # the last round labels nothing
  # Rerun: every finished part (training, labels, scores) is kept.
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("training redone"))
  monkeypatch.setattr(pseudo_labels, "generate", lambda *a: pytest.fail("labels redone"))
  monkeypatch.setattr(evaluate, "evaluate_checkpoints", lambda *a: pytest.fail("eval redone"))
  monkeypatch.setattr(evaluate, "evaluate_ensemble", lambda *a: pytest.fail("eval redone"))
  again = fda_rounds.run(config, tmp_path / "fda")
  assert ({k: parts.mean_scores(v) for k, v in again.items()}
          == {k: parts.mean_scores(v) for k, v in results.items()})


# ------------------------------------------------------------------------------------------
# The presets against FDA's published recipe (README, options/train_options.py, train.py).


def _load(spec):
  return cli.load_config_file(f"configs/{spec}")


@pytest.mark.parametrize("spec, beta, seat, layer_switch", [
    ("gta.py:fda_b001", 0.01, False, ()), ("gta.py:fda_b005", 0.05, False, ()),
    ("gta.py:fda_b009", 0.09, False, ()), ("gta.py:fda_b001_seat", 0.01, True, (3, 4)),
    ("synthia.py:fda_b005", 0.05, False, ()), ("synthia.py:fda_b009_seat", 0.09, True, (4,)),
    ("synthia.py:fda_b001_out16", 0.01, False, ()),
    ("synthia.py:fda_b005_seat_out16", 0.05, True, (4,)),
])
def test_presets_follow_fda_recipe(spec, beta, seat, layer_switch, monkeypatch):
  monkeypatch.chdir(REPO)
  config = _load(spec)
  # train.py: --LB beta, --entW 0.005, --ita 2.0, --switch2entropy 0 (README), no discriminator.
  assert config.data.fda_beta == beta
  assert (config.loss.robust_entropy_weight, config.loss.robust_entropy_eta) == (0.005, 2.0)
  assert config.adv.mode == "none"
  # model/deeplab.py: one classifier (layer5 on layer4), BN affine frozen, train-mode BN.
  assert config.loss.aux_weight == 0.0 and r"^aux_head/" in config.optim.frozen_patterns
  assert config.model.norm_mode == ("seat" if seat else "shared")
  assert config.model.bn_affine_trainable == seat and config.model.bn_train_stats
  assert tuple(config.eval.source_stages) == layer_switch
  # options/train_options.py: SGD 2.5e-4 (heads 10x), momentum 0.9, wd 5e-4, poly 0.9 over
  # 150k, stop at 100k, snapshot every 2500, batch 1; its optimiser walks modules() as
  # AdaptSegNet's does, hence the duplicate updates.
  assert (config.optim.lr, config.optim.head_lr_mult, config.optim.momentum) == (2.5e-4, 10, 0.9)
  assert (config.optim.weight_decay, config.optim.poly_power) == (5e-4, 0.9)
  assert config.optim.reference_duplicate_updates
  assert (config.train.lr_horizon_steps, config.train.num_steps) == (150_000, 100_000)
  assert config.train.checkpoint_every == 2500 and config.train.batch_size == 1
  # data/__init__.py: source resized to 1280x720 (SYNTHIA 1280x760), cropped to 1024x512;
  # target 1024x512; GTA5's original images.
  gta = spec.startswith("gta")
  assert tuple(config.data.source.resize_hw) == ((720, 1280) if gta else (760, 1280))
  assert tuple(config.data.source.crop_hw) == (512, 1024)
  assert tuple(config.data.target.resize_hw) == (512, 1024)
  assert config.data.source.builder_config == "original"
  # data/synthia_dataset.py maps SYNTHIA to the 19 train ids, model/deeplab.py has 19 outputs
  # and the robust entropy divides by 2.9444 = ln 19; evaluation_multi.py prints mIoU16 and
  # mIoU13 of the 19-class IoU. `_out16`: the 16-class model instead.
  out16 = spec.endswith("_out16")
  assert config.model.num_classes == (16 if out16 else 19)
  assert config.data.label_space == (
      "cityscapes19" if gta else "synthia16" if out16 else "synthia19")
  # data/__init__.py cs_size_test: evaluation_multi.py feeds 1344x576 validation images.
  assert tuple(config.data.val.resize_hw) == (576, 1344)
  # getSudoLabel_multi.py: class-wise, sorted[round(0.66 N)], cap 0.9.
  assert (config.pseudo.rule, config.pseudo.quantile, config.pseudo.cap) == (
      "class_quantile", 0.66, 0.9)
  config.init_from = "/ckpt/init"
  config_validation.validate(config, num_devices=1)


def test_stage2_presets_are_fda_ssl_rounds(monkeypatch):
  monkeypatch.chdir(REPO)
  stage1, stage2 = _load("gta.py:fda_b009"), _load("gta_stage2.py:fda_b009")
  # SStrain.py: CE(FDA source) + CE(pseudo) + entW * robust entropy, same beta and schedule.
  assert stage2.loss.target_ce_weight == 1.0
  assert stage2.data.target.pseudo_label_dir.startswith("REQUIRED")
  stage2.data.target.pseudo_label_dir = stage1.data.target.pseudo_label_dir = ""
  assert stage2.to_dict() == stage1.to_dict()
  assert _load("synthia_stage2.py:fda_b001_seat").data.target.pseudo_label_dir.startswith(
      "REQUIRED")
  demo = _load("demo.py:fda_b001_seat")
  assert demo.data.fda_beta == 0.01 and demo.train.num_steps == presets.demo().train.num_steps
  assert tuple(demo.data.val.resize_hw) == tuple(presets.demo().data.val.resize_hw)
