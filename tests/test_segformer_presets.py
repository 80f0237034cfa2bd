"""DAFormer and MIC on SegFormer: the presets carry the references' numbers and every one starts
from one converted MiT init in its norm mode (the step itself: test_daformer_iteration_vs_torch).

The expected values are written here from lhoyer/DAFormer (configs/daformer/
gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py and its _base_ files) and
lhoyer/MIC (seg/experiments.py id 81, daformer_sepaspp / mitb5 at 512x512), not read from the
presets. The init is a tiny MiT in mmseg's layout (Hugging Face's tensors renamed, as
test_segformer.py does it) with the ImageNet classifier `head.*` that mit_b*.pth holds.
"""

import functools
import pathlib

import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import helpers  # noqa: E402
from safetensors import torch as safetensors_torch  # noqa: E402
from seat_jax import checkpointing  # noqa: E402
from seat_jax import cli  # noqa: E402
from seat_jax import config_validation  # noqa: E402
from seat_jax import convert  # noqa: E402
from seat_jax import losses  # noqa: E402
from seat_jax import models  # noqa: E402
from seat_jax import optim  # noqa: E402
from seat_jax import presets  # noqa: E402
from seat_jax import warm_start  # noqa: E402
from seat_jax.presets import transformer_recipes  # noqa: E402
import test_segformer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESETS = [(name, row) for name in ("gta.py", "synthia.py") for row in presets.SEGFORMER_ROWS]
TINY_MIT = dict(embed_dims=(8, 16, 16, 16), num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 1))
NUM_LAYER_NORMS = 4 * 3 + 3 + 4  # per stage: patch-embed, block norm1/norm2, stage; 3 reductions


def load(name, row):
  return cli.load_config_file(f"{REPO / 'configs' / name}:{row}")


def tiny(config):
  """The preset with a tiny MiT and decoder (every other value as the preset has it)."""
  config.model.mit.update(TINY_MIT)
  config.model.decoder.update(channels=16, embed_dims=16)
  return config


@pytest.mark.parametrize("name,row", PRESETS)
def test_presets_follow_daformer_and_mic(name, row):
  config = load(name, row)
  config.init_from = "/made/up/mit_b5"
  config_validation.validate(config, num_devices=1)
  m = config.model
  # mix_transformer.py mit_b5; daformer_sepaspp_mitb5.py (DAFormerHead, channels 256, embed 256,
  # dilations (1, 6, 12, 18), BN, dropout 0.1); MixVisionTransformer drop_path_rate 0.1.
  assert (m.name, tuple(m.mit.embed_dims), tuple(m.mit.depths), tuple(m.mit.num_heads),
          tuple(m.mit.sr_ratios), m.mit.mlp_ratio) == (
              "segformer", (64, 128, 320, 512), (3, 6, 40, 3), (1, 2, 5, 8), (8, 4, 2, 1), 4)
  assert (m.mit.drop_path_rate, m.mit.layer_norm_eps) == (0.1, 1e-6)
  assert (m.decoder.name, m.decoder.channels, m.decoder.embed_dims, tuple(m.decoder.dilations),
          m.decoder.dropout) == ("daformer", 256, 256, (1, 6, 12, 18), 0.1)
  assert m.norm_mode == ("seat" if row.endswith("_seat") else "shared")
  assert m.bn_affine_trainable and m.bn_train_stats and config.loss.aux_weight == 0
  # adamw.py, poly10warm.py and the final config's optimizer: AdamW 6e-5 (0.9, 0.999), decay
  # 0.01, head lr x10, norm decay 0; warmup 1500 linear from 1e-6; poly 1.0 to 0; 40k its.
  o = config.optim
  assert (o.name, o.lr, o.adam_b1, o.adam_b2, o.weight_decay, o.head_lr_mult) == (
      "adamw", 6e-5, 0.9, 0.999, 0.01, 10.0)
  assert (o.warmup_steps, o.poly_power, config.train.num_steps,
          config.train.lr_horizon_steps) == (1500, 1.0, 40_000, 40_000)
  assert not o.reference_duplicate_updates and o.frozen_patterns == ()
  # uda_*_to_cityscapes_512x512.py: crops 512x512, flips, samples_per_gpu 2; GTA Resize
  # (1280, 720) keeping GTA5's 1914x1052 ratio = 1280x704, SYNTHIA (1280, 760), Cityscapes
  # (1024, 512); source RandomCrop cat_max_ratio=0.75.
  d = config.data
  assert tuple(d.source.crop_hw) == tuple(d.target.crop_hw) == (512, 512) and d.flip
  assert config.train.batch_size == 2
  assert tuple(d.source.resize_hw) == ((704, 1280) if name == "gta.py" else (760, 1280))
  assert d.source.cat_max_ratio == 0.75
  assert tuple(d.target.resize_hw) == tuple(d.val.resize_hw) == (512, 1024)
  assert d.source.builder_config == "original" and tuple(config.eval.label_hw) == ()
  # dacs.py + dacs_a999_fdthings.py + the final config: alpha 0.999, threshold 0.968, jitter
  # 0.2 (p 0.8), blur, pseudo-label crop 15 / 120, FD 0.005 on thing classes; RCS 0.01, 3000 px,
  # crop ratio 0.5. SYNTHIA: DAFormer's 19 outputs, scored mIoU16.
  x = config.mix
  assert x.enabled and (x.teacher_alpha, x.confidence, x.jitter_strength, x.augment) == (
      0.999, 0.968, 0.2, True)
  # dacs.py forward_train: the EMA at the start of iteration t >= 1 with alpha_t; mmseg 0.16's
  # cross_entropy averages over every pixel (weight_reduce_loss, ignored pixels add 0).
  assert (x.teacher_schedule, config.loss.ce_normalise) == ("daformer", "all")
  # dacs_transforms.py get_class_masks: torch.unique over the whole batch of labels.
  assert x.classmix_classes == "batch"
  assert (x.pseudo_ignore_top, x.pseudo_ignore_bottom, x.fd_weight) == (15, 120, 0.005)
  assert (d.source.rcs_temperature, d.source.rcs_min_pixels, d.source.rcs_min_crop_ratio) == (
      0.01, 3000, 0.5)
  assert (m.num_classes, d.label_space) == (
      (19, "cityscapes19") if name == "gta.py" else (19, "synthia19"))
  assert config.adv.mode == "none"
  # MIC experiments.py id 81 at 512x512: separatetrgaug, block 32, ratio 0.7, lambda 1; the
  # shared-BN rows let the masked pass move the running statistics as MIC's train-mode pass.
  mic = row.startswith("mic")
  assert (x.mic_weight, x.mic_block, x.mic_ratio) == ((1.0, 32, 0.7) if mic else (0.0, 64, 0.7))
  assert x.mic_update_stats == (mic and m.norm_mode == "shared")
  assert x.norm == ("target" if m.norm_mode == "shared" else "batch")


def test_the_optimiser_groups_follow_mmseg_paramwise_cfg():
  """head: decode_head.* x10 (decay kept); norm: every MiT LayerNorm without decay."""
  config = tiny(load("gta.py", "daformer_seat"))
  model = models.build_segmenter(config.model)
  params = checkpointing.abstract_variables(model)["params"]
  groups = traverse_util.flatten_dict(optim.param_groups(
      params, config.optim.head_patterns, optim.frozen_patterns(config)))
  assert {g for p, g in groups.items() if p[0] == "decode_head"} == {"head"}
  assert {g for p, g in groups.items() if p[0] == "backbone"} == {"backbone"}
  decays = traverse_util.flatten_dict(optim.decay_mask(config.optim.no_decay_patterns)(params))
  no_decay = {"/".join(p[:-1]) for p, d in decays.items() if not d}
  assert len(no_decay) == NUM_LAYER_NORMS
  assert all(p.rsplit("/", 1)[-1].startswith("norm") for p in no_decay)
  assert decays[("decode_head", "bottleneck", "bn", "source_scale")]  # `bn`: decayed in mmseg


@pytest.fixture(scope="module")
def converted_mit_init(tmp_path_factory):
  """(stored variables, the file's tensors) of a tiny mit_b*.pth-layout file, CLI-converted."""
  config = transformers.SegformerConfig(
      depths=list(TINY_MIT["depths"]), hidden_sizes=list(TINY_MIT["embed_dims"]),
      num_attention_heads=list(TINY_MIT["num_heads"]), num_labels=3)
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp("mit")
  transformers.SegformerForImageClassification(config).save_pretrained(root / "hf")
  hf = safetensors_torch.load_file(root / "hf" / "model.safetensors")
  state = {k.removeprefix("backbone."): v for k, v in test_segformer.mmseg_mit_names(hf).items()}
  with torch.no_grad():
    for v in state.values():
      v.copy_(torch.randn(v.shape))  # distinct values everywhere, LayerNorms included
  state["head.weight"], state["head.bias"] = torch.randn(1000, 16), torch.randn(1000)
  torch.save(state, root / "mit_tiny.pth")
  assert convert.main([f"--torch={root / 'mit_tiny.pth'}", f"--out={root / 'init'}"]) == 0
  return checkpointing.restore_stored_model(root / "init", 0), {
      k: v.numpy() for k, v in state.items()}


@functools.lru_cache(maxsize=None)
def _model(norm_mode, num_classes):
  config = tiny(load("gta.py", "daformer"))
  config.model.norm_mode, config.model.num_classes = norm_mode, num_classes
  return models.build_segmenter(config.model)


@pytest.mark.parametrize("name,row", PRESETS)
def test_every_segformer_preset_starts_from_the_one_converted_init(converted_mit_init, name, row):
  stored, state = converted_mit_init
  assert set(stored["params"]) == {"backbone"}  # the ImageNet classifier is not kept
  config = tiny(load(name, row))
  model = models.build_segmenter(config.model)
  fresh = helpers.random_variables(model, seed=1)
  variables, report = warm_start.fit_variables(
      stored, checkpointing.abstract_variables(model), fresh=fresh,
      init_domain=config.init_domain)
  # DAFormer starts its decoder fresh on the ImageNet MiT; every LayerNorm fills both domain
  # slots of a SEAT model (one affine per domain, both starting as ImageNet's).
  assert set(report.fresh_heads) == {"decode_head"}
  seat = config.model.norm_mode == "seat"
  assert len(report.norms_copied) == (NUM_LAYER_NORMS if seat else 0)
  flat = traverse_util.flatten_dict(variables)
  np.testing.assert_array_equal(flat[("params", "backbone", "block3_0", "attn", "kv", "kernel")],
                                state["block3.0.attn.kv.weight"].T)
  for slot in (("source_scale", "target_scale") if seat else ("scale",)):
    np.testing.assert_array_equal(flat[("params", "backbone", "block2_0", "norm1", slot)],
                                  state["block2.0.norm1.weight"])
  head = flat[("params", "decode_head", "conv_seg", "kernel")]
  np.testing.assert_array_equal(head, traverse_util.flatten_dict(fresh)[
      ("params", "decode_head", "conv_seg", "kernel")])
  assert head.shape[-1] == config.model.num_classes


def test_mmseg_cross_entropy_averages_over_every_pixel():
  logits = np.log(np.array([[[[0.5, 0.5], [0.9, 0.1]]]], np.float32))  # [1, 1, 2, 2]
  labels = np.array([[[0, 255]]], np.int32)
  assert np.isclose(float(losses.cross_entropy(logits, labels)), np.log(2))
  assert np.isclose(float(losses.cross_entropy(logits, labels, over_all_pixels=True)),
                    np.log(2) / 2)


@pytest.mark.parametrize("row", [r for r in presets.MIT_DEMO_ROWS if r != "mit_pretrain"])
def test_the_demo_mit_rows_start_from_the_mit_pretrain_run(row):
  """configs/demo.py's tiny-MiT rows: the norm mode their name says, DAFormer's recipe parts,
  and the `mit_pretrain` run's variables (shared norms, its trained decoder) fit each of them:
  every norm copied into each domain slot, nothing of the decoder started fresh."""
  pretrain_config = presets.demo_row("mit_pretrain")
  pretrain_model = models.build_segmenter(pretrain_config.model)
  stored = helpers.random_variables(pretrain_model, seed=2)
  config = presets.demo_row(row)
  config.init_from = "/made/up/mit_pretrain"
  config_validation.validate(config, num_devices=1)
  want_mode = "seat" if row.endswith("_seat") else "sat" if row.endswith("_sat") else "shared"
  assert (config.model.name, config.model.norm_mode) == ("segformer", want_mode)
  assert config.model.mit.to_dict() == pretrain_config.model.mit.to_dict()
  assert config.optim.no_decay_patterns == (transformer_recipes.MIT_NORM_PATTERN,)
  assert config.mix.enabled == (row != "mit_source_only")
  assert (config.mix.mic_weight > 0) == row.startswith("mic")
  assert (config.mix.fd_weight > 0) == (row != "mit_source_only")
  model = models.build_segmenter(config.model)
  variables, report = warm_start.fit_variables(
      stored, checkpointing.abstract_variables(model),
      fresh=helpers.random_variables(model, seed=3), init_domain=config.init_domain)
  assert not report.fresh_heads
  flat, source = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(stored)
  kernel = ("params", "decode_head", "conv_seg", "kernel")
  np.testing.assert_array_equal(flat[kernel], source[kernel])
  slots = {"seat": ("source_scale", "target_scale")}.get(want_mode, ("scale",))
  for slot in slots:
    np.testing.assert_array_equal(flat[("params", "backbone", "block2_0", "norm1", slot)],
                                  source[("params", "backbone", "block2_0", "norm1", "scale")])
