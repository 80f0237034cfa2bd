"""One converted init starts every preset; stored norms and heads are fitted as the paper does.

The init is a tiny copy of the DeepLab COCO init's layout (`Scale.` prefix, a 21-class `layer5`
on layer4, no `layer6`), converted once without a config, as the docs show.
"""

import functools
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seat_jax import checkpointing  # noqa: E402
from seat_jax import cli  # noqa: E402
from seat_jax import convert  # noqa: E402
from seat_jax import models  # noqa: E402
from seat_jax import presets  # noqa: E402
from seat_jax import warm_start  # noqa: E402
import torch_reference as tref  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(stage_sizes=(1, 1, 1, 1), base_width=8)
NUM_NORMS = 17  # stem bn1 + 4 blocks x (bn1-3) + 4 downsample_bn
# DeepLabV2's presets; SegFormer's start from a converted MiT (tests/test_segformer_presets.py),
# the demo's MiT rows from its `mit_pretrain` run.
ROWS = {"gta.py": tuple(r for r in presets.GTA_ROWS if r not in presets.SEGFORMER_ROWS),
        "synthia.py": tuple(r for r in presets.SYNTHIA_ROWS if r not in presets.SEGFORMER_ROWS),
        "gta_stage2.py": presets.GTA_STAGE2_ROWS,
        "synthia_stage2.py": presets.SYNTHIA_STAGE2_ROWS,
        "demo.py": tuple(r for r in presets.DEMO_ROWS if r not in presets.MIT_DEMO_ROWS)}


@pytest.fixture(scope="module")
def converted_init(tmp_path_factory):
  """(directory, torch state, stored variables) of the tiny COCO-layout init, converted with
  the CLI."""
  torch.manual_seed(0)
  model = tref.DeepLabMultiTorch(19, TINY["stage_sizes"], TINY["base_width"])
  tref.randomize_(model, torch.randn(2, 3, 33, 33), seed=3)
  state = tref.deeplab_init_state_dict(model)
  root = tmp_path_factory.mktemp("init")
  torch.save(state, root / "DeepLab_resnet_pretrained_init-f81d91e8.pth")
  out = root / "deeplab_init"
  assert convert.main([f"--torch={root / 'DeepLab_resnet_pretrained_init-f81d91e8.pth'}",
                       f"--out={out}"]) == 0
  return (out, {k.removeprefix("Scale."): v.numpy() for k, v in state.items()},
          checkpointing.restore_stored_model(out, 0))


@functools.lru_cache(maxsize=None)
def _model_and_fresh(num_classes, aspp_branches, norm_mode):
  cfg = cli.load_config_file(str(REPO / "configs" / "demo.py")).model
  cfg.update(TINY, num_classes=num_classes, aspp_branches=aspp_branches, norm_mode=norm_mode)
  model = models.build_segmenter(cfg)
  fresh = jax.device_get(jax.jit(models.init_variables, static_argnums=0)(
      model, jax.random.key(0)))
  return model, fresh


def test_the_file_is_converted_once_as_it_is(converted_init):
  _, state, stored = converted_init
  assert set(stored["params"]) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
  # plain BatchNorms, transposed convs: one BN and one conv compared with the file
  np.testing.assert_array_equal(stored["params"]["layer2"]["block0"]["bn3"]["scale"],
                                state["layer2.0.bn3.weight"])
  np.testing.assert_array_equal(stored["batch_stats"]["layer4"]["block0"]["bn1"]["var"],
                                state["layer4.0.bn1.running_var"])
  np.testing.assert_array_equal(stored["params"]["conv1"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))


@pytest.mark.parametrize("name,row", [(n, r) for n, rows in ROWS.items() for r in rows])
def test_every_preset_starts_from_the_one_converted_init(converted_init, name, row):
  """Through the function training uses (`checkpointing.restore_fitted` = restore + this)."""
  _, state, stored = converted_init
  config = cli.load_config_file(f"{REPO / 'configs' / name}:{row}")
  cfg = config.model
  model, fresh = _model_and_fresh(cfg.num_classes, cfg.aspp_branches, cfg.norm_mode)
  variables, report = warm_start.fit_variables(
      stored, checkpointing.abstract_variables(model), fresh=fresh,
      init_domain=config.init_domain)
  # The COCO classifier sits on layer4 with 21 classes: both heads start fresh, as the
  # references skip `layer5`; every BatchNorm fills every domain slot of the preset's norms.
  assert set(report.fresh_heads) == {"aux_head", "main_head"}
  assert len(report.norms_copied) == (0 if cfg.norm_mode == "shared" else NUM_NORMS)
  main = variables["params"]["main_head"]["branch0"]["kernel"]
  np.testing.assert_array_equal(main, fresh["params"]["main_head"]["branch0"]["kernel"])
  assert main.shape[-1] == cfg.num_classes
  bn = state["layer3.0.bn2.running_mean"]
  stats = variables["batch_stats"]["layer3"]["block0"]["bn2"]
  for slot in (("mean",) if cfg.norm_mode == "shared" else ("source_mean", "target_mean")):
    np.testing.assert_array_equal(stats[slot], bn)
  affine = variables["params"]["layer1"]["block0"]["bn1"]
  for slot in (("source_scale", "target_scale") if cfg.norm_mode == "seat" else ("scale",)):
    np.testing.assert_array_equal(affine[slot], state["layer1.0.bn1.weight"])
  assert f"{len(report.norms_copied) or ''}" in report.summary()


def _tree(norm_mode, seed=0, classes=3):
  """Variables of a tiny model in `norm_mode` with random values (numpy)."""
  model, fresh = _model_and_fresh(classes, 4, norm_mode)
  del model
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), fresh)


def _abstract(norm_mode, classes=3):
  return jax.eval_shape(lambda: _model_and_fresh(classes, 4, norm_mode)[1])


def test_per_domain_norms_into_one_batchnorm_need_a_domain():
  seat = _tree("seat")
  with pytest.raises(warm_start.IncompatibleModelError,
                     match=r"(?s)per-domain norms.*--config.init_domain=source"):
    warm_start.fit_variables(seat, _abstract("shared"))
  for domain in ("source", "target"):
    fitted, report = warm_start.fit_variables(seat, _abstract("shared"), init_domain=domain)
    bn = fitted["params"]["layer2"]["block0"]["bn1"]
    np.testing.assert_array_equal(bn["scale"], seat["params"]["layer2"]["block0"]["bn1"][
        f"{domain}_scale"])
    stats = fitted["batch_stats"]["layer4"]["block0"]["downsample_bn"]
    np.testing.assert_array_equal(stats["var"], seat["batch_stats"]["layer4"]["block0"][
        "downsample_bn"][f"{domain}_var"])
    assert report.domain_chosen == 4 * NUM_NORMS


def test_equal_domain_slots_need_no_choice():
  """A SEAT-layout conversion (both slots copies of one BN) fits a plain-BN preset as it is."""
  plain = _tree("shared")
  as_seat, _ = warm_start.fit_variables(plain, _abstract("seat"))
  back, report = warm_start.fit_variables(as_seat, _abstract("shared"))
  jax.tree.map(np.testing.assert_array_equal, back, plain)
  assert report.domain_chosen == 0 and not report.norms_copied


def test_sat_into_seat_copies_the_shared_affine_and_keeps_each_domains_statistics():
  sat = _tree("sat")
  fitted, report = warm_start.fit_variables(sat, _abstract("seat"))
  bn_params = fitted["params"]["layer3"]["block0"]["bn3"]
  for domain in ("source", "target"):
    np.testing.assert_array_equal(bn_params[f"{domain}_bias"],
                                  sat["params"]["layer3"]["block0"]["bn3"]["bias"])
    np.testing.assert_array_equal(
        fitted["batch_stats"]["layer3"]["block0"]["bn3"][f"{domain}_mean"],
        sat["batch_stats"]["layer3"]["block0"]["bn3"][f"{domain}_mean"])
  assert len(report.norms_copied) == NUM_NORMS


def test_heads_of_another_class_count_start_fresh_or_are_refused():
  stored, fresh = _tree("seat", classes=3), _tree("seat", seed=1, classes=5)
  fitted, report = warm_start.fit_variables(stored, _abstract("seat", 5), fresh=fresh)
  # layer3 ends with 8 * 4 * 4 = 128 channels, layer4 with 256 (bottleneck expansion 4)
  assert report.fresh_heads == {
      "aux_head": "stored: 3 classes from 128 channels; this model: 5 classes from 128 channels",
      "main_head": "stored: 3 classes from 256 channels; this model: 5 classes from 256 channels"}
  jax.tree.map(np.testing.assert_array_equal, fitted["params"]["main_head"],
               fresh["params"]["main_head"])
  jax.tree.map(np.testing.assert_array_equal, fitted["params"]["layer4"],
               stored["params"]["layer4"])
  # Evaluation gives no fresh heads: a model without usable heads is refused.
  with pytest.raises(warm_start.IncompatibleModelError, match="no usable aux_head"):
    warm_start.fit_variables(stored, _abstract("seat", 5))


def test_another_architecture_is_refused_with_the_entries_named():
  stored = _tree("shared")
  cfg = cli.load_config_file(str(REPO / "configs" / "demo.py")).model
  cfg.update(TINY, num_classes=3, norm_mode="shared", stage_sizes=(1, 1, 2, 1))
  deeper = jax.eval_shape(lambda: models.init_variables(models.build_segmenter(cfg),
                                                       jax.random.key(0)))
  with pytest.raises(warm_start.IncompatibleModelError,
                     match=r"(?s)holds a different model.*6 modules of this model are not "
                           r"stored: layer3/block1/bn1, layer3/block1/bn2, layer3/block1/bn3, "
                           r"layer3/block1/conv1, layer3/block1/conv2, layer3/block1/conv3$"):
    warm_start.fit_variables(stored, deeper)
  with pytest.raises(warm_start.IncompatibleModelError, match="have no place in this model"):
    warm_start.fit_variables(jax.device_get(
        jax.tree.map(np.zeros_like, deeper)), _abstract("shared"))
