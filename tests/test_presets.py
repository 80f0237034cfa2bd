"""Every preset loads and validates, follows the paper's recipe, and its layer switch is used.

The expected values are written here from the paper's text (sections 4.1, 4.3, 5.2, Tables 4-6)
and AdaptSegNet's/ADVENT's published recipes (REFERENCE 3.1), not read from the presets.
"""

import pathlib

import pytest
from flax import traverse_util

from seat_jax import cli
from seat_jax import config_validation
from seat_jax import errors
from seat_jax import labels
from seat_jax import models

REPO = pathlib.Path(__file__).resolve().parents[1]
FDA = ("fda_b001", "fda_b005", "fda_b009", "fda_b001_seat", "fda_b005_seat", "fda_b009_seat")
FDA16 = tuple(f"{row}_out16" for row in FDA)  # SYNTHIA: FDA with 16 outputs
INTRADA = ("intrada", "intrada_seat")
DIFFERENTIAL = ("differential", "differential_seat")
CLUSTERING = ("clustering_source", "clustering", "clustering_seat_source", "clustering_seat")
MIXING = ("dacs", "dacs_seat", "daformer_dlv2", "daformer_dlv2_seat", "mic_dlv2",
          "mic_dlv2_seat")
SEGFORMER = ("daformer", "daformer_seat", "mic", "mic_seat")
ROWS = {
    "gta.py": ("", "aa", "it", "sat", "seat", "mul", "adaptsegnet", "adaptsegnet_seat",
               "advent", "advent_seat", "source_only", "cycada", *INTRADA, *FDA, *DIFFERENTIAL,
               *CLUSTERING, *MIXING, *SEGFORMER),
    "gta_stage2.py": ("", "mul", *INTRADA, *FDA),
    "synthia.py": ("", "aa", "it", "sat", "seat", "mul", *FDA, *FDA16, *DIFFERENTIAL,
                   *CLUSTERING, *MIXING, *SEGFORMER),
    "synthia_stage2.py": ("", "mul", *FDA, *FDA16),
    "demo.py": ("", "shared", "sat", "seat", *INTRADA, "intrada_stage2", "intrada_seat_stage2",
                *FDA, *DIFFERENTIAL, *CLUSTERING, "dacs", "dacs_seat", "daformer",
                "daformer_seat", "mic", "mic_seat"),
}


def load(name: str, row: str = ""):
  return cli.load_config_file(str(REPO / "configs" / name) + (f":{row}" if row else ""))


def test_every_preset_file_is_covered():
  assert sorted(p.name for p in (REPO / "configs").glob("*.py")) == sorted(ROWS)


def _fill_placeholders(config, prefix=""):
  """Sets every REQUIRED placeholder to a made-up path; returns the keys it set."""
  filled = []
  for key, value in config.items():
    if hasattr(value, "items"):
      filled += _fill_placeholders(value, f"{prefix}{key}.")
    elif isinstance(value, str) and value.startswith(config_validation.PLACEHOLDER):
      config[key] = f"/made/up/{key}"
      filled.append(prefix + key)
  return filled


@pytest.mark.parametrize("name,row", [(n, r) for n, rows in ROWS.items() for r in rows])
def test_every_preset_and_row_loads_and_validates(name, row):
  config = load(name, row)
  if "stage2" in name + row:
    # Stage 2 cannot run without the pseudo-labels (and IntraDA's lists): the preset says so.
    with pytest.raises(errors.UsageError, match="pseudo_label_dir must be set"):
      config_validation.validate(config)
    assert "data.target.pseudo_label_dir" in _fill_placeholders(config) or row.startswith(
        "intrada")
  if str(config.init_from).startswith(config_validation.PLACEHOLDER):
    # Toldo et al.'s adaptation stage starts from its source-only stage: the preset says so.
    with pytest.raises(errors.UsageError, match=r"init_from must be set.*_source run"):
      config_validation.validate(config)
    config.init_from = ""
    if name == "demo.py":
      config.init_from = "/made/up/source_only"
  if name != "demo.py":
    # Real data: a silent random start is refused with the conversion command...
    with pytest.raises(errors.UsageError, match=r"(?s)init_from is empty.*seat_jax.convert"):
      config_validation.validate(config)
    config.init_from = "/ckpt/init_coco"
  config_validation.validate(config, num_devices=1)
  # ... unless scratch is asked for on purpose.
  config.init_from = config_validation.SCRATCH
  config_validation.validate(config, num_devices=1)


@pytest.mark.parametrize("name,rows", [(n, r) for n, r in ROWS.items() if n != "demo.py"])
def test_every_preset_reads_builder_configs_that_exist(name, rows):
  """A preset that names a builder config the dataset lacks fails only once its data is opened
  (synthia.py:differential asked for synthia/translated before that config existed)."""
  from seat_jax import datasets  # pylint: disable=g-import-not-at-top  (imports TFDS)
  for row in rows:
    config = load(name, row)
    for split in ("source", "target", "val"):
      entry = config.data[split]
      names = [c.name for c in datasets.builder_class(entry.name).BUILDER_CONFIGS]
      assert entry.builder_config in ("", *names), (name, row, split)  # "": the default


def test_sim_trains_on_translated_synthia():
  for row in DIFFERENTIAL:
    assert load("synthia.py", row).data.source.builder_config == "translated"


@pytest.mark.parametrize("name,row", [(n, r) for n in ("gta_stage2.py", "synthia_stage2.py")
                                      for r in ROWS[n]] + [("gta.py", "clustering")])
@pytest.mark.parametrize("mode", ["eval", "pseudo_labels"])
def test_presets_with_training_inputs_evaluate_and_label_without_them(name, row, mode):
  """Stage 2's pseudo-labels, IntraDA's lists and clustering's init are training inputs: the same
  preset evaluates and pseudo-labels with them left unset."""
  config = load(name, row)
  config.mode = mode
  config_validation.clear_training_placeholders(config)
  config_validation.validate(config, num_devices=1)
  assert not str(config.data.target.pseudo_label_dir).startswith("REQUIRED")
  config.mode = "train"  # training still asks for them
  for key in ("init_from", "data.target.pseudo_label_dir"):
    parent, _, leaf = key.rpartition(".")
    (config[parent] if parent else config)[leaf] = "REQUIRED: set me"
  with pytest.raises(errors.UsageError, match="must be set: REQUIRED: set me"):
    config_validation.validate(config)


def _recipe(config):
  return dict(norm=config.model.norm_mode, affine=config.model.bn_affine_trainable,
              adv=config.adv.mode, aux_ce=config.loss.aux_weight,
              source=config.data.source.builder_config, ls=tuple(config.eval.source_stages))


# Table 5: AA (AdaptSegNet single level: one D, no aux CE, shared frozen BN), + IT (translated
# images), + SEAT with LS 3-4, + multi-level (lambda 0.05, aux CE 0.1 as AdaptSegNet's
# multi-level recipe).
GTA_ROWS = {
    "aa": dict(norm="shared", affine=False, adv="single", aux_ce=0.0, source="original", ls=()),
    "it": dict(norm="shared", affine=False, adv="single", aux_ce=0.0, source="translated", ls=()),
    "seat": dict(norm="seat", affine=True, adv="single", aux_ce=0.0, source="translated",
                 ls=(3, 4)),
    "mul": dict(norm="seat", affine=True, adv="multi_level_sum", aux_ce=0.1,
                source="translated", ls=(3, 4)),
    # Table 4, on the original images.
    "adaptsegnet": dict(norm="shared", affine=False, adv="single", aux_ce=0.0, source="original",
                        ls=()),
    "adaptsegnet_seat": dict(norm="seat", affine=True, adv="single", aux_ce=0.0,
                             source="original", ls=(3, 4)),
    "advent": dict(norm="shared", affine=False, adv="two_discriminators", aux_ce=0.1,
                   source="original", ls=()),
    "advent_seat": dict(norm="seat", affine=True, adv="two_discriminators", aux_ce=0.1,
                        source="original", ls=(3, 4)),
    # Baselines: source only (AdaBN adapts it afterwards), CyCADA's translated images alone.
    "source_only": dict(norm="shared", affine=False, adv="none", aux_ce=0.0, source="original",
                        ls=()),
    "cycada": dict(norm="shared", affine=False, adv="none", aux_ce=0.0, source="translated",
                   ls=()),
}


@pytest.mark.parametrize("row", sorted(GTA_ROWS))
def test_gta_rows_follow_the_paper(row):
  config = load("gta.py", row)
  assert _recipe(config) == GTA_ROWS[row]
  # Section 4.1/4.3: 1280x720 resized, 1024x512 crops, target 1024x512, batch 1, the optimisers.
  assert tuple(config.data.source.resize_hw) == (720, 1280)
  assert tuple(config.data.source.crop_hw) == (512, 1024)
  assert tuple(config.data.target.resize_hw) == (512, 1024)
  assert config.train.batch_size == 1 and config.adv.weight == 0.001
  assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (2.5e-4, 0.9, 5e-4)
  assert (config.optim.disc_lr, config.optim.disc_b1, config.optim.disc_b2) == (1e-4, 0.9, 0.99)
  assert config.optim.poly_power == 0.9 and config.optim.reference_duplicate_updates
  if config.adv.mode == "multi_level_sum":
    assert config.adv.multi_level_lambda == 0.05  # Table 3's best
  if row.startswith("advent"):  # ADVENT: D on entropy maps, 0.001 main / 0.0002 aux, 120k
    assert config.adv.input == "entropy"
    assert (config.adv.weight, config.adv.weight_aux) == (0.001, 0.0002)
    assert config.train.num_steps == 120_000
  else:
    assert config.adv.input == "softmax" and config.train.num_steps == 150_000


SYNTHIA_ROWS = {
    "aa": dict(norm="shared", affine=False, adv="single", aux_ce=0.0, source="original", ls=()),
    "it": dict(norm="shared", affine=False, adv="single", aux_ce=0.0, source="translated", ls=()),
    "seat": dict(norm="seat", affine=True, adv="single", aux_ce=0.0, source="translated", ls=()),
    "mul": dict(norm="seat", affine=True, adv="multi_level_sum", aux_ce=0.1, source="translated",
                ls=(4,)),
}


@pytest.mark.parametrize("row", sorted(SYNTHIA_ROWS))
def test_synthia_rows_follow_the_paper(row):
  config = load("synthia.py", row)
  assert _recipe(config) == SYNTHIA_ROWS[row]
  assert tuple(config.data.source.resize_hw) == (760, 1280)
  assert config.model.num_classes == 16
  # "16 common classes are used to train, while 13 ... on evaluation" (section 4.1).
  assert labels.get_label_space(config.data.label_space).headline == "mIoU13"


def test_stage2_presets_keep_the_stage1_row_and_add_the_target_ce():
  stage1, stage2 = load("gta.py"), load("gta_stage2.py")
  assert stage2.loss.target_ce_weight == 1.0
  assert _recipe(stage2) == _recipe(stage1)
  assert stage2.data.target.pseudo_label_dir.startswith("REQUIRED")


def test_the_presets_layer_switch_reaches_eval_pseudo_labels_and_periodic_eval(
    synthetic_data_dir, tmp_path, monkeypatch):
  # pylint: disable-next=g-import-not-at-top,multiple-imports
  from seat_jax import evaluate, predict, pseudo_labels, train
  config = load("gta.py")  # the paper's GTA5 preset: LS 3-4, nothing passed by hand below
  config.model.stage_sizes, config.model.base_width = (1, 1, 1, 1), 8
  for split, builder_config in ((config.data.source, "source"), (config.data.target, "target"),
                                (config.data.val, "target")):
    split.update(name="synthetic_streets", builder_config=builder_config, resize_hw=(32, 64))
  config.data.source.crop_hw = (32, 64)
  config.data.data_dir = synthetic_data_dir
  config.data.val.max_examples = 2
  config.init_from = config_validation.SCRATCH
  config.train.update(batch_size=2, num_steps=2, lr_horizon_steps=10, checkpoint_every=2,
                      eval_every=2, eval_max_examples=2)
  config.eval.update(num_panels=0, write_predictions=False)
  config.pseudo.output_dir = str(tmp_path / "pseudo")
  stages_used = []
  original = predict.make_predict_fn

  def recording(model, source_stages=(), output="labels"):
    stages_used.append((tuple(source_stages), output))
    return original(model, source_stages, output)

  monkeypatch.setattr(predict, "make_predict_fn", recording)
  train.train_and_evaluate(config, str(tmp_path))  # periodic evaluation at step 2
  evaluate.evaluate_checkpoints(config, str(tmp_path))  # eval mode
  monkeypatch.setattr(pseudo_labels.input_pipeline, "num_eval_examples", lambda *a, **k: 2)
  config.data.target.max_examples = 2
  pseudo_labels.generate(config, str(tmp_path))  # pseudo-labels
  assert stages_used == [((3, 4), "labels"), ((3, 4), "labels"), ((3, 4), "confidence")]


# The compared methods' recipes, written from the reference repositories
# (docs/compared-methods-research.md sections 3-4, docs/mixing-methods-research.md).
@pytest.mark.parametrize("name", ["gta.py", "synthia.py"])
def test_differential_treatment_follows_train_sim(name):
  for row in DIFFERENTIAL:
    config = load(name, row)
    assert (config.differential.stuff_weight, config.differential.thing_weight) == (0.01, 0.01)
    assert (config.differential.stuff_bank, config.differential.thing_bank) == (50, 500)
    assert config.adv.mode == "single" and config.adv.weight == 0.001
    assert config.loss.aux_weight == 0.0 and config.model.aspp_branches == 2
    assert config.data.source.crop_hw == ()
    assert (config.train.num_steps, config.train.lr_horizon_steps) == (200_000, 250_000)
    seat = row.endswith("_seat")
    assert (config.model.norm_mode, config.model.bn_affine_trainable) == (
        ("seat", True) if seat else ("shared", False))


@pytest.mark.parametrize("name,weights", [
    ("gta.py", dict(cluster=2e-2, ortho=2.0, sparse=0.5, entropy=0.1, iw_ratio=0.2)),
    ("synthia.py", dict(cluster=2e-2, ortho=0.1, sparse=1.0, entropy=5e-2, iw_ratio=0.0)),
])
def test_clustering_follows_udaclustering(name, weights):
  source, adapt = load(name, "clustering_source"), load(name, "clustering")
  assert source.adv.mode == adapt.adv.mode == "none"
  assert all(source.clustering[k] == 0 for k in ("cluster", "ortho", "sparse", "entropy"))
  assert (source.train.num_steps, source.train.lr_horizon_steps) == (80_000, 200_000)
  assert {k: adapt.clustering[k] for k in weights} == weights
  assert adapt.train.num_steps == adapt.train.lr_horizon_steps == 24_750
  assert adapt.data.flip and adapt.model.bn_affine_trainable and adapt.model.aspp_branches == 2
  assert source.loss.aux_weight == adapt.loss.aux_weight == 0.0  # one head on layer4
  assert load(name, "clustering_seat").model.norm_mode == "seat"
  for row in CLUSTERING:
    config = load(name, row)
    # Its README trains on the original GTA5 images; its dataset classes blur source and target
    # images with p 0.5 (gaussian_blur defaults to True in train_source.py / train_UDA.py).
    assert config.data.source.builder_config == "original"
    assert config.data.blur_probability == 0.5
    assert tuple(config.eval.label_hw) == (512, 1024)  # _val_sync_transform: labels 1024x512
  # Its own Cityscapes split: datasets/Cityscapes/train.txt, 2,475 of the 2,975 train images.
  ids = pathlib.Path(adapt.data.target.ids_file).read_text().split()
  assert len(ids) == len(set(ids)) == 2475
  assert ids[0] == "aachen_000000_000019" and "dusseldorf_000010_000019" not in ids  # val.txt


@pytest.mark.parametrize("name", ["gta.py", "synthia.py"])
def test_daformer_and_mic_deeplabv2_rows_are_mmseg_deeplabv2(name):
  """DAFormer's and MIC's DeepLabV2 (lhoyer/DAFormer experiments.py: dlv2red with r101v1c,
  init open-mmlab://resnet101_v1c; the dataset configs: ImageNet mean/std RGB, source
  RandomCrop cat_max_ratio=0.75, GTA Resize (1280, 720) keeping GTA5's 1914x1052 ratio; the
  feature distance against that ImageNet init in eval mode). DACS and the others keep
  AdaptSegNet's Caffe DeepLab."""
  for row in ("daformer_dlv2", "daformer_dlv2_seat", "mic_dlv2", "mic_dlv2_seat"):
    config = load(name, row)
    assert (config.model.resnet_variant, config.model.input_normalisation) == ("v1c", "imagenet")
    assert config.data.source.cat_max_ratio == 0.75
    assert tuple(config.data.source.resize_hw) == (
        (704, 1280) if name == "gta.py" else (760, 1280))
    assert config.mix.fd_reference == "init" and config.mix.fd_weight == 0.005
    # The same dacs.py and mmseg CE as DAFormer's SegFormer rows: its EMA timing, every pixel.
    assert (config.mix.teacher_schedule, config.loss.ce_normalise) == ("daformer", "all")
    assert models.build_segmenter(config.model).align_corners is False  # mmseg's resize
    with pytest.raises(errors.UsageError, match=r"(?s)init_from is empty.*resnet101_v1c"):
      config_validation.validate(config)
  for row in ("dacs", "dacs_seat", "mul"):
    config = load(name, row)
    assert (config.model.resnet_variant, config.model.input_normalisation) == ("caffe", "caffe")
    assert config.data.source.cat_max_ratio == 1.0
  assert tuple(load(name, "dacs").data.source.resize_hw) == (
      (720, 1280) if name == "gta.py" else (760, 1280))


@pytest.mark.parametrize("name", ["gta.py", "synthia.py"])
def test_daformer_strategy_is_one_for_deeplabv2_and_segformer(name):
  """DAFormer's training strategy does not depend on its network: every optimiser, data and
  self-training key of `:daformer_dlv2` / `:mic_dlv2` equals `:daformer` / `:mic`'s, except the
  network, its parameter groups and SYNTHIA's label space (DAFormer trains SYNTHIA with 19
  outputs; its DeepLabV2 has no SYNTHIA run, so that row keeps the paper's 16 classes)."""
  network_keys = {"model", "optim.head_patterns", "optim.no_decay_patterns",
                  "optim.frozen_patterns", "data.label_space"}

  def flat(config):
    return traverse_util.flatten_dict(config.to_dict(), sep=".")

  for dlv2, mit in (("daformer_dlv2", "daformer"), ("mic_dlv2", "mic")):
    a, b = flat(load(name, dlv2)), flat(load(name, mit))
    differ = {k for k in a.keys() | b.keys()
              if a.get(k) != b.get(k) and not any(k == n or k.startswith(n + ".")
                                                   for n in network_keys)}
    assert differ == set(), {k: (a.get(k), b.get(k)) for k in sorted(differ)}


@pytest.mark.parametrize("name", ["gta.py", "synthia.py"])
def test_mixing_presets_follow_dacs_daformer_and_mic(name):
  dacs = load(name, "dacs")
  assert dacs.mix.enabled and dacs.adv.mode == "none"
  assert (dacs.mix.teacher_alpha, dacs.mix.confidence, dacs.mix.jitter_strength) == (
      0.99, 0.968, 0.25)
  assert (dacs.optim.name, dacs.optim.lr, dacs.optim.poly_power) == ("sgd", 2.5e-4, 0.9)
  assert dacs.train.num_steps == 250_000 and dacs.train.batch_size == 2
  assert tuple(dacs.data.source.crop_hw) == tuple(dacs.data.target.crop_hw) == (512, 512)
  assert (dacs.model.norm_mode, dacs.model.bn_affine_trainable) == ("shared", False)
  assert dacs.mix.fd_weight == 0 and dacs.data.source.rcs_temperature == 0
  # DACS scores labels nearest-resized to 512x1024; DAFormer and MIC full-size labels.
  assert tuple(dacs.eval.label_hw) == tuple(load(name, "dacs_seat").eval.label_hw) == (512, 1024)
  daformer = load(name, "daformer_dlv2")
  assert (daformer.optim.name, daformer.optim.lr, daformer.optim.weight_decay) == (
      "adamw", 6e-5, 0.01)
  assert (daformer.optim.warmup_steps, daformer.optim.poly_power) == (1500, 1.0)
  assert daformer.train.num_steps == 40_000 and daformer.mix.teacher_alpha == 0.999
  assert (daformer.data.source.rcs_temperature, daformer.mix.fd_weight) == (0.01, 0.005)
  assert daformer.model.bn_affine_trainable and daformer.mix.mic_weight == 0
  assert tuple(daformer.eval.label_hw) == ()
  mic = load(name, "mic_dlv2")
  assert (mic.mix.mic_weight, mic.mix.mic_block, mic.mix.mic_ratio) == (1.0, 32, 0.7)
  # MIC's student runs the masked image in train mode (its dacs.py calls forward_train), so
  # one shared BN's running statistics absorb it; SEAT norms keep them to unmasked images.
  assert mic.mix.mic_update_stats and not load(name, "mic_dlv2_seat").mix.mic_update_stats
  assert load("demo.py", "mic").mix.mic_update_stats
  assert not load("demo.py", "mic_seat").mix.mic_update_stats
  for row in MIXING:
    config = load(name, row)
    seat = row.endswith("_seat")
    assert (config.model.norm_mode == "seat") == seat
    # One shared BN takes the mixed images as the references' does; SEAT norms use the
    # mixed batch's own statistics (the best choice on the synthetic shift).
    assert config.mix.norm == ("batch" if seat else "target")
