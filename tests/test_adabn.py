"""AdaBN: exact pooled moments, the stem norm against an independent PyTorch convolution, the mode.

The independent reference follows the AdaBN paper (Algorithm 1): per channel, the mean and the
variance of the layer's responses over all spatial positions of all target images.
"""

import json

import jax
import numpy as np
import pytest
import torch

import helpers
from seat_jax import checkpointing
from seat_jax import datasets
from seat_jax import evaluate
from seat_jax import models
from seat_jax import adabn_statistics
from seat_jax.methods import adabn

MODEL_HW = (32, 48)


def test_pooled_moments_equal_the_moments_of_everything_concatenated():
  rng = np.random.default_rng(0)
  chunks = [rng.normal(loc, 2.0, size=(n, 5)) for loc, n in ((0.0, 7), (3.0, 40), (-1.0, 13))]
  pooled = adabn.PooledMoments()
  for chunk in chunks:
    pooled.add(len(chunk), chunk.mean(axis=0), chunk.var(axis=0))
  everything = np.concatenate(chunks)
  mean, var = pooled.result()
  np.testing.assert_allclose(mean, everything.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(var, everything.var(axis=0), rtol=1e-12)


def tiny_config(norm_mode):
  config = helpers.tiny_model_config(MODEL_HW)
  config.model.norm_mode = norm_mode
  config.eval.num_panels = 0
  config.eval.write_predictions = False
  return config



def target_split(count=3, seed=1):
  rng = np.random.default_rng(seed)
  return helpers.ListSource([
      {"image": rng.integers(0, 256, (*MODEL_HW, 3), dtype=np.uint8),
       "label": np.zeros((*MODEL_HW, 1), np.uint8), "id": f"t{k}"} for k in range(count)])


def test_stem_statistics_equal_the_population_moments_of_the_conv_responses():
  config = tiny_config("seat")
  model = models.build_segmenter(config.model)
  variables = helpers.random_variables(model, seed=0)
  from seat_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  examples = list(input_pipeline.create_eval_iterator(config, config.data.target,
                                                      data_source=target_split()))
  stats = adabn_statistics.target_statistics(model, variables, examples, enabled=False)

  # Independent: the stem conv in PyTorch on the same inputs, moments over all pixels of all images.
  kernel = np.asarray(variables["params"]["conv1"]["kernel"]).transpose(3, 2, 0, 1)
  kernel = torch.from_numpy(kernel)
  images = torch.from_numpy(np.concatenate([e["image"] for e in examples]).transpose(0, 3, 1, 2))
  responses = torch.nn.functional.conv2d(images, kernel, stride=2, padding=3).double()
  mean, var = stats[("bn1",)]
  np.testing.assert_allclose(mean, responses.mean(dim=(0, 2, 3)).numpy(), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(var, responses.var(dim=(0, 2, 3), unbiased=False).numpy(),
                             rtol=1e-4)
  # One entry per norm of the model: stem, 3 per bottleneck, one per downsample.
  assert len(stats) == 1 + 4 * 3 + 4


@pytest.mark.parametrize("norm_mode", ["seat", "shared"])
def test_adabn_mode_replaces_only_the_target_statistics_and_evaluates(norm_mode, tmp_path,
                                                                      monkeypatch):
  config = tiny_config(norm_mode)
  model = models.build_segmenter(config.model)
  variables = helpers.random_variables(model, seed=2)
  checkpointing.save_variables(tmp_path / "run" / "checkpoints", variables, {}, step=5)
  split = target_split()
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: split)

  summary = adabn_statistics.adapt(config, tmp_path / "run")
  assert summary["step"] == 5 and summary["num_images"] == 3
  assert json.loads((tmp_path / "run" / "adabn" / "summary.json").read_text()) == summary
  adapted = checkpointing.restore_model(tmp_path / "run" / "adabn" / "checkpoints",
                                        checkpointing.abstract_variables(model))
  jax.tree.map(np.testing.assert_array_equal, adapted["params"], variables["params"])
  before, after = variables["batch_stats"]["layer2"]["block0"]["bn2"], (
      adapted["batch_stats"]["layer2"]["block0"]["bn2"])
  target = "target_" if norm_mode == "seat" else ""
  assert not np.allclose(after[target + "mean"], before[target + "mean"])
  if norm_mode == "seat":  # the source statistics are the model's own
    np.testing.assert_array_equal(after["source_mean"], before["source_mean"])
    np.testing.assert_array_equal(after["source_var"], before["source_var"])

  config.eval.checkpoint = str(tmp_path / "run" / "adabn")  # eval mode reads it like any other
  result = evaluate.evaluate_checkpoints(config, tmp_path / "eval")
  assert result["final"]["step"] == 5 and np.isfinite(result["final"]["miou"])


def test_adabn_on_an_empty_split_is_a_clear_error():
  config = tiny_config("seat")
  model = models.build_segmenter(config.model)
  with pytest.raises(ValueError, match="no images"):
    adabn_statistics.target_statistics(model, helpers.random_variables(model, 0), [], enabled=False)
