"""IntraDA: the ranking score and split against independent references, stage 2's input
streams (id lists, source pseudo-labels; host and device paths), the entropy_rank mode end to
end on a tiny checkpoint, and the presets against the published recipe.

The references below are written here from feipanir/IntraDA `entropyrk/entropy.py` (ADVENT's
`prob_2_entropy`, `find_rare_class`, `cluster_subdomain`) and `intrada/intrada.yml`, in numpy
and PyTorch; they share no code with seat_jax.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import helpers
from seat_jax import checkpointing
from seat_jax import cli
from seat_jax import config_defaults
from seat_jax import config_validation
from seat_jax import datasets
from seat_jax import device_preprocessing as dp
from seat_jax import entropy_rank
from seat_jax import errors
from seat_jax import input_pipeline as ip
from seat_jax import labels
from seat_jax import models
from seat_jax.methods import intrada

# entropy.py: "wall, fence, pole, traffic light, traffic sign, terrain, rider, truck, bus, train,
# motor" as Cityscapes train ids.
REFERENCE_RARE_IDS = [3, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17]


# ------------------------------------------------------------------------------------------
# Independent references.


def reference_score(probs: np.ndarray, normalize: bool) -> float:
  """entropy.py on a probability map [C, H, W] (float64): mean of -p log2(p + 1e-30) / log2(C)
  over C*H*W, times (11 - #rare ids in argmax) / 11 + 0.5 with the normaliser."""
  num_classes = probs.shape[0]
  info = -probs * np.log2(probs + 1e-30) / np.log2(num_classes)
  factor = 1.0
  if normalize:
    present = set(np.unique(np.argmax(probs, axis=0)).tolist()) & set(REFERENCE_RARE_IDS)
    factor = (11 - len(present)) / 11.0 + 0.5
  return float(info.mean()) * factor


def reference_split(names, scores, lambda1):
  """cluster_subdomain: Python's stable sort on the score, easy = the first int(N * lambda1)."""
  ranked = [name for name, _ in sorted(zip(names, scores), key=lambda item: item[1])]
  cut = int(len(ranked) * lambda1)
  return ranked[:cut], ranked[cut:]


def torch_reference(low_res_logits: np.ndarray, out_hw, normalize: bool):
  """entropy.py's loop body on NHWC logits: upsample (align_corners) -> softmax over classes ->
  prob_2_entropy -> mean, argmax of the upsampled logits as the label (colorize_save)."""
  logits = torch.from_numpy(np.array(low_res_logits, np.float32)).permute(0, 3, 1, 2)
  up = torch.nn.functional.interpolate(logits, size=tuple(out_hw), mode="bilinear",
                                       align_corners=True)
  prob = torch.softmax(up, dim=1)
  info = -torch.mul(prob, torch.log2(prob + 1e-30)) / np.log2(prob.shape[1])
  label = up[0].numpy().transpose(1, 2, 0).argmax(axis=2).astype(np.uint8)
  factor = 1.0
  if normalize:
    factor = (11 - len(set(np.unique(label).tolist()) & set(REFERENCE_RARE_IDS))) / 11.0 + 0.5
  return info.mean().item() * factor, label


def hand_made_probs(num_classes, hw, dominant, seed):
  """A probability map [C, H, W] whose argmax is `dominant` (one class id per pixel row band)."""
  rng = np.random.default_rng(seed)
  probs = rng.uniform(0.0, 1.0, (num_classes, *hw))
  for row, class_id in enumerate(dominant):
    probs[class_id, row] += rng.uniform(2.0, 20.0)
  probs /= probs.sum(axis=0, keepdims=True)
  return probs


class LogitsModel:
  """A stand-in segmenter: main logits are variables['logits'] (images ignored but shaped)."""

  def apply(self, variables, images, domain="target", train=False, source_stages=()):
    del domain, train, source_stages
    logits = variables["logits"] + 0.0 * images.mean()
    return logits, logits


# ------------------------------------------------------------------------------------------
# The score and the split.


def test_rare_classes_are_intradas_train_ids_and_refused_for_synthia16():
  assert list(intrada.rare_class_ids(labels.get_label_space("cityscapes19"))) == \
      REFERENCE_RARE_IDS
  with pytest.raises(errors.UsageError, match=r"normalize=False"):
    intrada.rare_class_ids(labels.get_label_space("synthia16"))
  assert intrada.normaliser(0) == 1.5 and intrada.normaliser(11) == 0.5
  assert intrada.normaliser(3) == pytest.approx(8 / 11 + 0.5)


@pytest.mark.parametrize("normalize", [False, True])
def test_score_on_hand_made_probability_maps_matches_the_reference(normalize):
  hw = (6, 10)
  # Rare classes present per map: none; {3, 9}; {3, 4, 5, 6, 7, 9, 12}; and a 0.5-certain map.
  dominants = [[0, 1, 2, 8, 10, 13], [3, 9, 0, 0, 1, 3], [3, 4, 5, 6, 7, 9], [12, 0, 0, 0, 0, 0]]
  maps = [hand_made_probs(19, hw, d, seed) for seed, d in enumerate(dominants)]
  rare = intrada.rare_class_ids(labels.get_label_space("cityscapes19")) if normalize else None
  fn = intrada.make_rank_fn(LogitsModel())
  for probs in maps:
    # log p as logits: the softmax gives p back; same size, so the upsampling is the identity.
    variables = {"logits": jnp.asarray(np.log(probs).transpose(1, 2, 0)[None], jnp.float32)}
    prediction, information, entropy = (np.asarray(x)[0] for x in fn(
        variables, jnp.zeros((1, *hw, 3)), out_hw=hw))
    score, present, _ = intrada.ranking_score(information, prediction, rare)
    assert score == pytest.approx(reference_score(probs, normalize), rel=2e-6)
    np.testing.assert_array_equal(prediction, probs.argmax(axis=0))
    expected_entropy = (-probs * np.log2(probs) / np.log2(19)).sum(axis=0)
    assert np.abs(entropy / 255.0 - expected_entropy).max() <= 0.5 / 255 + 1e-5
    if normalize:
      assert present == len(set(probs.argmax(axis=0).ravel().tolist()) & set(REFERENCE_RARE_IDS))


@pytest.mark.parametrize("normalize", [False, True])
def test_score_upsamples_logits_before_the_softmax_as_the_reference(normalize):
  rng = np.random.default_rng(3)
  low = rng.normal(0.0, 2.0, (1, 4, 8, 19)).astype(np.float32)
  low[..., 5] += 3.0 * (rng.uniform(size=(1, 4, 8)) > 0.6)  # some pole pixels (rare id 5)
  out_hw = (32, 64)
  fn = intrada.make_rank_fn(LogitsModel())
  prediction, information, _ = (np.asarray(x)[0] for x in fn(
      {"logits": jnp.asarray(low)}, jnp.zeros((1, *out_hw, 3)), out_hw=out_hw))
  rare = REFERENCE_RARE_IDS if normalize else None
  score, _, _ = intrada.ranking_score(information, prediction, rare)
  expected, label = torch_reference(low, out_hw, normalize)
  assert score == pytest.approx(expected, rel=1e-5)
  np.testing.assert_array_equal(prediction, label)


def test_split_matches_cluster_subdomain_and_breaks_ties_by_id():
  rng = np.random.default_rng(0)
  names = [f"img_{k:03d}" for k in rng.permutation(200)]
  scores = rng.uniform(0.0, 0.05, 200).tolist()
  easy, hard = intrada.split_easy_hard(names, scores, 0.67)
  assert (easy, hard) == reference_split(names, scores, 0.67)
  assert (len(easy), len(hard)) == (134, 66)
  # IntraDA's numbers: 2,975 Cityscapes train images -> 1,993 easy and 982 hard.
  assert intrada.split_sizes(2975, 0.67) == (1993, 982)
  # Equal scores: IntraDA keeps its (shuffled) loader order; here the ids decide.
  easy, hard = intrada.split_easy_hard(["c", "a", "d", "b"], [0.2, 0.1, 0.1, 0.1], 0.5)
  assert (easy, hard) == (["a", "b"], ["d", "c"])
  with pytest.raises(errors.UsageError, match=r"lambda_easy=0.1 puts 0 of 4"):
    intrada.split_sizes(4, 0.1)


# ------------------------------------------------------------------------------------------
# Stage 2's streams: a split restricted to an id list, source labels from a folder.


def _constant_examples(n, hw=(20, 40)):
  """Example i: constant colour (10 + i, ...), stored label 200 (never a pseudo-label value)."""
  examples = []
  for i in range(n):
    image = np.empty(hw + (3,), np.uint8)
    image[...] = (10 + i, 10 + 2 * i, 10 + 3 * i)
    examples.append({"image": image, "label": np.full(hw + (1,), 200, np.uint8),
                     "id": f"ex_{i:03d}".encode()})
  return helpers.ListSource(examples)


def _example_index(model_input):
  rgb = np.asarray(model_input)[..., ::-1] + ip.CAFFE_MEAN_BGR[::-1]
  return int(round(float(rgb[..., 0].mean()))) - 10


def _stage2_config(tmp_path, easy, hard, preprocess_on):
  config = config_defaults.get_config()
  config.train.batch_size = 1
  for split in (config.data.source, config.data.target):
    split.update(name="synthetic_streets", builder_config="target", resize_hw=(16, 32),
                 crop_hw=())
  config.data.prefetch_buffer_size = 1
  config.data.preprocess_on = preprocess_on
  (tmp_path / "easy.txt").write_text("".join(f"ex_{i:03d}\n" for i in easy))
  (tmp_path / "hard.txt").write_text("".join(f"ex_{i:03d}\n" for i in hard) + "\n")
  pseudo = tmp_path / "pseudo"
  pseudo.mkdir(exist_ok=True)
  for i in easy:
    label = np.full((16, 32), 255, np.uint8)
    label[:, :4 + i] = i % 19  # a distinct pattern per id, written at resize_hw
    Image.fromarray(label).save(pseudo / f"ex_{i:03d}.png")
  config.data.source.update(ids_file=str(tmp_path / "easy.txt"), pseudo_label_dir=str(pseudo))
  config.data.target.ids_file = str(tmp_path / "hard.txt")
  return config


@pytest.mark.parametrize("preprocess_on", ["host", "device"])
def test_id_lists_restrict_the_streams_and_the_source_reads_pseudo_labels(tmp_path,
                                                                         preprocess_on):
  easy, hard = [7, 1, 4, 2], [0, 3, 5, 6]  # in rank order, not split order
  config = _stage2_config(tmp_path, easy, hard, preprocess_on)
  data = _constant_examples(8)
  streams = {}
  for domain in ("source", "target"):
    iterator = ip.create_train_iterator(config, domain, seed=0, data_source=data)
    batches = [next(iterator) for _ in range(8)]  # two epochs of the subset
    if preprocess_on == "device":
      spec = ip.device_spec(config, domain)
      if domain == "source":
        assert spec.label_lut is None  # pseudo-labels are in the model's label space already
      preprocess = jax.jit(lambda batch, spec=spec: dp.preprocess(batch, spec))
      batches = [jax.device_get(preprocess(batch)) for batch in batches]
    streams[domain] = batches
  seen = {d: [_example_index(b["image"][0]) for b in streams[d]] for d in streams}
  for domain, ids in (("source", easy), ("target", hard)):
    assert sorted(seen[domain][:4]) == sorted(ids) and sorted(seen[domain][4:]) == sorted(ids)
  for batch, i in zip(streams["source"], seen["source"]):
    expected = np.full((16, 32), 255, np.int32)
    expected[:, :4 + i] = i % 19
    np.testing.assert_array_equal(batch["label"][0], expected)  # not the stored 200s
  assert all(set(b) == {"image"} for b in streams["target"])


def test_training_batches_of_stage_2_resume_exactly_on_both_paths(tmp_path, monkeypatch):
  easy, hard = [5, 0, 2], [1, 3, 4]
  config = _stage2_config(tmp_path, easy, hard, "device")
  data = _constant_examples(6, hw=(16, 32))
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: data)
  sharding = helpers.data_sharding()
  # _split_example_ids re-opens a prepared split without decoding; here the injected one.
  monkeypatch.setattr(ip, "_split_example_ids", lambda split, d, source, opened: [
      ip._as_str(source[i]["id"]) for i in range(len(source))])  # pylint: disable=protected-access
  state, expected = helpers.batches_after_checkpoint(config, sharding, skip=2, take=4)
  assert set(expected[0]) == {ip.SOURCE_IMAGE, ip.SOURCE_LABEL, ip.TARGET_IMAGE}
  for preprocess_on in ("device", "host"):
    config.data.preprocess_on = preprocess_on
    resumed = ip.TrainingBatches(config, sharding)
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(4)]):
      np.testing.assert_allclose(np.asarray(a[ip.SOURCE_IMAGE]), np.asarray(b[ip.SOURCE_IMAGE]),
                                 atol=1.0 + 1e-3)  # PIL vs device: one level at most
      np.testing.assert_array_equal(np.asarray(a[ip.SOURCE_LABEL]), np.asarray(b[ip.SOURCE_LABEL]))
      assert _example_index(a[ip.TARGET_IMAGE][0]) == _example_index(b[ip.TARGET_IMAGE][0])
  assert {_example_index(b[ip.SOURCE_IMAGE][0]) for b in expected} <= set(easy)
  assert {_example_index(b[ip.TARGET_IMAGE][0]) for b in expected} <= set(hard)


def test_id_list_mistakes_name_the_key_and_the_fix(tmp_path):
  config = _stage2_config(tmp_path, [1, 2], [0, 3], "host")
  data = _constant_examples(4)
  (tmp_path / "hard.txt").write_text("ex_000\nex_009\n")
  with pytest.raises(FileNotFoundError, match=r"config.data.target.ids_file=.*'ex_009'"):
    ip.create_train_iterator(config, "target", seed=0, data_source=data)
  (tmp_path / "hard.txt").write_text("ex_000\nex_000\n")
  with pytest.raises(ValueError, match=r"more than once"):
    ip.create_train_iterator(config, "target", seed=0, data_source=data)
  config.data.target.ids_file = str(tmp_path / "nope.txt")
  with pytest.raises(FileNotFoundError, match=r"ids_file=.*nope.txt.*is not a file"):
    ip.create_train_iterator(config, "target", seed=0, data_source=data)
  (tmp_path / "easy.txt").write_text("ex_001\nex_003\n")  # ex_003 has no pseudo-label
  iterator = ip.create_train_iterator(config, "source", seed=0, data_source=data)
  with pytest.raises(FileNotFoundError, match=r"config.data.source.pseudo_label_dir"):
    for _ in range(2):
      next(iterator)


# ------------------------------------------------------------------------------------------
# The entropy_rank mode end to end.

MODEL_HW = (32, 64)
STORED_HW = (40, 72)


def _tiny_config(tmp_path):
  config = helpers.tiny_model_config(MODEL_HW)
  config.mode = "entropy_rank"
  config.eval.num_panels = 2
  config.eval.source_stages = (4,)
  config.intrada.output_dir = str(tmp_path / "rank")
  return config



def _soft_variables(model, seed):
  """Soft predictions (mean normalised entropy ~0.5, as a half-trained model's), so the scores
  differ well above float32 rounding."""
  variables = helpers.random_variables(model, seed, other_std=0.3)
  variables["params"]["main_head"] = jax.tree.map(lambda x: 0.03 * x,
                                                  variables["params"]["main_head"])
  return variables


def _stored_split(n=9):
  rng = np.random.default_rng(2)
  return [{"image": rng.integers(0, 256, (*STORED_HW, 3), dtype=np.uint8),
           "label": np.zeros((*STORED_HW, 1), np.uint8), "id": f"cs_{k:02d}"} for k in range(n)]


@pytest.mark.parametrize("normalize", [True, False])
def test_entropy_rank_mode_writes_the_split_and_the_easy_pseudo_labels(tmp_path, monkeypatch,
                                                                        normalize):
  config = _tiny_config(tmp_path)
  config.intrada.normalize = normalize
  model = models.build_segmenter(config.model)
  variables = _soft_variables(model, 0)
  checkpointing.save_variables(tmp_path / "checkpoints", variables, {}, step=5)
  stored = _stored_split()
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: stored)
  summary = entropy_rank.rank_target_split(config, tmp_path)

  # Independent: the model's own logits through the PyTorch reference, one image at a time.
  names, scores, label_of = [], [], {}
  for example in stored:
    image = ip.preprocess_image(example["image"], MODEL_HW)[None]
    _, low = model.apply(variables, jnp.asarray(image), domain="target", train=False,
                         source_stages=(4,))
    score, label = torch_reference(np.asarray(low), MODEL_HW, normalize)
    names.append(example["id"])
    scores.append(score)
    label_of[example["id"]] = label
  easy, hard = reference_split(names, scores, 0.67)
  assert len(easy) == 6 and len(hard) == 3  # int(9 * 0.67) = 6
  out = tmp_path / "rank"
  assert (out / "easy_split.txt").read_text().split() == easy
  assert (out / "hard_split.txt").read_text().split() == hard
  by_id = {row["id"]: row for row in summary["images"]}
  for name, score in zip(names, scores):
    assert by_id[name]["score"] == pytest.approx(score, rel=1e-5)
  for name in easy:  # the easy split's labels, read back as stage 2's source stream reads them
    np.testing.assert_array_equal(ip.read_pseudo_label(str(out / "pseudo_labels"), name,
                                                       "source"), label_of[name])
  assert sorted(p.stem for p in (out / "pseudo_labels").glob("*.png")) == sorted(easy)
  assert len(set(np.concatenate([label_of[n].ravel() for n in names]))) > 1
  previews = sorted(p.name for p in (out / "previews").iterdir())
  assert [p.split("_")[0] for p in previews] == ["easiest"] * 2 + ["hardest"] * 2
  assert f"easiest_00000_{easy[0]}.png" in previews and f"hardest_00008_{hard[-1]}.png" in previews
  assert summary["num_easy"] == 6 and summary["step"] == 5 and summary["normalize"] == normalize
  assert json.loads((out / "summary.json").read_text()) == summary
  assert "IntraDA entropy ranking" in (out / "summary.md").read_text()

  # A rerun with the same settings finds the finished ranking and predicts nothing.
  monkeypatch.setattr(intrada, "make_rank_fn", None)
  assert entropy_rank.rank_target_split(config, tmp_path) == summary


def test_entropy_rank_best_on_val_needs_eval_mode_first(tmp_path, monkeypatch):
  config = _tiny_config(tmp_path)
  config.pseudo.checkpoint = "best_on_val"
  model = models.build_segmenter(config.model)
  checkpointing.save_variables(tmp_path / "checkpoints", _soft_variables(model, 1), {}, step=2)
  monkeypatch.setattr(datasets, "open_data_source", lambda *args, **kwargs: _stored_split(3))
  with pytest.raises(FileNotFoundError, match=r"eval/summary.json: run eval mode first"):
    entropy_rank.rank_target_split(config, tmp_path)
  config.data.label_space, config.model.num_classes = "synthia16", 16
  with pytest.raises(errors.UsageError, match=r"normalize=True is defined for cityscapes19"):
    entropy_rank.rank_target_split(config, tmp_path)


# ------------------------------------------------------------------------------------------
# Presets: the published recipe, written out by hand.


def _load(name):
  return cli.load_config_file(f"configs/{name}")


@pytest.mark.parametrize("row", ["intrada", "intrada_seat"])
def test_gta_presets_follow_intradas_recipe(row):
  stage1 = _load(f"gta.py:{row}")
  # Step 1: ADVENT's AdvEnt as ADVENT runs it (REFERENCE 3.1): whole 1280x720 GTA5 images,
  # 1024x512 Cityscapes, 2 Ds on entropy maps 1e-3 / 2e-4, aux CE 0.1, 120k of 250k, every 2k.
  assert (stage1.data.source.name, stage1.data.source.builder_config) == ("gta5", "original")
  assert tuple(stage1.data.source.resize_hw) == (720, 1280) and not stage1.data.source.crop_hw
  assert tuple(stage1.data.target.resize_hw) == (512, 1024)
  assert (stage1.adv.mode, stage1.adv.input) == ("two_discriminators", "entropy")
  assert (stage1.adv.weight, stage1.adv.weight_aux, stage1.loss.aux_weight) == (1e-3, 2e-4, 0.1)
  assert (stage1.train.num_steps, stage1.train.lr_horizon_steps) == (120_000, 250_000)
  assert stage1.train.checkpoint_every == 2000 and stage1.train.batch_size == 1
  assert (stage1.optim.lr, stage1.optim.disc_lr) == (2.5e-4, 1e-4)
  # Step 2: best-on-val model, lambda 0.67, with the normaliser (the published 46.3).
  assert stage1.pseudo.checkpoint == "best_on_val"
  assert (stage1.intrada.lambda_easy, stage1.intrada.normalize) == (0.67, True)
  seat = row == "intrada_seat"
  assert stage1.model.norm_mode == ("seat" if seat else "shared")
  assert tuple(stage1.eval.source_stages) == ((3, 4) if seat else ())

  # Step 3 (intrada.yml): easy (1024x512, pseudo-labels) -> hard (1024x512), AdvEnt again.
  stage2 = _load(f"gta_stage2.py:{row}")
  source = stage2.data.source
  assert (source.name, source.split, tuple(source.resize_hw)) == ("cityscapes", "train",
                                                                  (512, 1024))
  assert not source.crop_hw and stage2.data.target.split == "train"
  for key in ("source.ids_file", "source.pseudo_label_dir", "target.ids_file"):
    domain, field = key.split(".")
    assert stage2.data[domain][field].startswith("REQUIRED")
  assert not stage2.data.target.pseudo_label_dir  # the hard split stays unlabelled
  for field in ("adv", "loss", "optim", "train", "model"):
    assert stage2[field].to_dict() == stage1[field].to_dict()
  with pytest.raises(errors.UsageError, match=r"(?s)source.ids_file must be set.*"
                     r"source.pseudo_label_dir must be set.*target.ids_file must be set"):
    config_validation.validate(stage2)
  stage2.data.source.update(ids_file="/r/easy_split.txt", pseudo_label_dir="/r/pseudo_labels")
  stage2.data.target.ids_file = "/r/hard_split.txt"
  stage2.init_from = "/ckpt/init_imagenet"
  config_validation.validate(stage2, num_devices=1)


@pytest.mark.parametrize("row", ["intrada", "intrada_seat", "intrada_stage2",
                                 "intrada_seat_stage2"])
def test_demo_presets_are_intrada_on_the_demo_budget(row):
  config = _load(f"demo.py:{row}")
  assert config.model.norm_mode == ("seat" if "seat" in row else "shared")
  assert (config.adv.mode, config.adv.input) == ("two_discriminators", "entropy")
  assert config.train.num_steps == 300 and config.pseudo.checkpoint == "best_on_val"
  if row.endswith("_stage2"):
    assert config.data.source.builder_config == "target"
    config.data.source.update(ids_file="/e", pseudo_label_dir="/p")
    config.data.target.ids_file = "/h"
  config_validation.validate(config, num_devices=1)


def test_id_list_on_a_prepared_tfds_split(synthetic_data_dir, tmp_path):
  config = _stage2_config(tmp_path, [], [], "host")
  config.data.data_dir = synthetic_data_dir
  wanted = ["target_train_00007", "target_train_00002", "target_train_00150"]
  (tmp_path / "hard.txt").write_text("\n".join(wanted) + "\n")
  source = datasets.open_data_source(config.data.target, synthetic_data_dir)
  examples = (source[i] for i in range(len(source)))
  stored = {ip._as_str(e["id"]): e["image"] for e in examples}  # pylint: disable=protected-access
  stored = {k: stored[k] for k in wanted}
  iterator = ip.create_train_iterator(config, "target", seed=0)
  seen = []
  for _ in range(3):
    image = next(iterator)["image"][0]
    matches = [k for k, v in stored.items()
               if np.abs(ip.preprocess_image(v, (16, 32)) - image).max() == 0]
    seen += matches
  assert sorted(seen) == sorted(wanted)
