"""PyTorch -> Flax weight import: logits must match an independent PyTorch model.

The reference is `tests/torch_reference.py` (written from the layer table, not from the Flax
model) with random weights AND random BN affines/running statistics, so a converter that drops,
swaps or mis-transposes any tensor changes the logits. Models are tiny except one full-depth
ResNet-101 check at a small input (marked `slow`, still in the default run).
"""

import functools
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

torch = pytest.importorskip("torch")

from seat_jax import checkpointing, config_defaults, convert, models  # noqa: E402
import torch_reference as tref  # noqa: E402

TINY_STAGES = (1, 1, 2, 1)
TINY_WIDTH = 8
NUM_CLASSES = 5
IMAGE_HW = (41, 57)  # odd sizes exercise the ceil-mode max-pool
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(stage_sizes=TINY_STAGES, base_width=TINY_WIDTH, num_classes=NUM_CLASSES,
                 aspp_branches=4, norm_mode="seat"):
  cfg = config_defaults.get_model_config()
  cfg.stage_sizes, cfg.base_width, cfg.num_classes = tuple(stage_sizes), base_width, num_classes
  cfg.aspp_branches, cfg.norm_mode = aspp_branches, norm_mode
  return cfg


def make_images(hw=IMAGE_HW, seed=0):
  return np.random.default_rng(seed).normal(0.0, 30.0, (1, *hw, 3)).astype(np.float32)


def torch_model(cfg, images, seed=0):
  """A reference model with every tensor random (BN stats included), in eval mode."""
  torch.manual_seed(seed)
  model = tref.DeepLabMultiTorch(cfg.num_classes, cfg.stage_sizes, cfg.base_width,
                                 cfg.aspp_branches, cfg.aspp_dilations)
  tref.randomize_(model, to_torch(images), seed=seed)
  return model.eval()


def to_torch(images_nhwc):
  return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def torch_logits(model, images):
  with torch.no_grad():
    return tuple(t.numpy().transpose(0, 2, 3, 1) for t in model(to_torch(images)))


def flax_logits(cfg, variables, images, domain="target"):
  module = models.build_segmenter(cfg)
  apply = jax.jit(functools.partial(module.apply, domain=domain, train=False))
  return tuple(np.asarray(x) for x in apply(variables, jnp.asarray(images)))


def assert_logits_close(flax_out, torch_out):
  for name, got, want in zip(("aux", "main"), flax_out, torch_out):
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = np.abs(want).max()
    assert scale > 1e-3, f"{name} logits are ~0; the check would be vacuous"
    err = np.abs(got - want).max()
    assert err <= 1e-4 * scale, f"{name}: max abs diff {err} vs max |logit| {scale}"


def save_pth(path, state):
  torch.save(state, str(path))
  return str(path)


def flat(tree):
  return {"/".join(getattr(k, "key", str(k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def images():
  return make_images()


# ----------------------------------------------------------------------- logits equivalence


def test_cli_converts_deeplab_checkpoint_and_logits_match(tmp_path, images):
  """Converted once without a config (plain BNs, the file's architecture); a SEAT-norm model
  restores it with every BN in both domain slots and reproduces torch's logits in each."""
  cfg = model_config(aspp_branches=4, norm_mode="seat")
  model = torch_model(cfg, images)
  pth = save_pth(tmp_path / "trained.pth", tref.deeplab_state_dict(model))
  out_dir = tmp_path / "converted"
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [sys.executable, "-m", "seat_jax.convert", f"--torch={pth}", f"--out={out_dir}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr
  assert "format deeplab" in proc.stdout
  assert (f"model:             stage_sizes {TINY_STAGES}, base_width {TINY_WIDTH}, heads for "
          f"{NUM_CLASSES} classes") in proc.stdout
  num_tensors = sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))
  assert f"tensors converted: {num_tensors} " in proc.stdout
  assert f"--config.init_from={out_dir}" in proc.stdout

  module = models.build_segmenter(cfg)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.asarray(images))
  variables = checkpointing.restore_model(out_dir, abstract)
  for domain in ("source", "target"):
    assert_logits_close(flax_logits(cfg, variables, images, domain), torch_logits(model, images))

  with ocp.CheckpointManager(out_dir.absolute()) as mngr:
    meta = mngr.restore(0, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  assert meta["format"] == "deeplab" and meta["heads_from_checkpoint"]
  assert meta["source"] == os.path.abspath(pth) and meta["skipped_keys"] == []
  assert meta["model_config"]["stage_sizes"] == list(TINY_STAGES)
  assert meta["model_config"]["norm_mode"] == "shared"


@pytest.mark.parametrize("aspp_branches,norm_mode,prefix", [
    (2, "seat", "Scale."),
    (4, "sat", "Scale."),
    (2, "shared", ""),
])
def test_deeplab_checkpoint_logits_match(tmp_path, images, aspp_branches, norm_mode, prefix):
  cfg = model_config(aspp_branches=aspp_branches, norm_mode=norm_mode)
  model = torch_model(cfg, images, seed=aspp_branches)
  pth = save_pth(tmp_path / "m.pth", {"state_dict": tref.deeplab_state_dict(model, prefix)})
  variables = convert.load_torch_checkpoint(pth, cfg)

  module = models.build_segmenter(cfg)
  expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.asarray(images))
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(expected)
  for got, want in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(expected)):
    assert (got.shape, got.dtype) == (want.shape, want.dtype)

  target = flax_logits(cfg, variables, images, "target")
  assert_logits_close(target, torch_logits(model, images))
  source = flax_logits(cfg, variables, images, "source")
  for s, t in zip(source, target):  # every domain slot got the same BN
    np.testing.assert_array_equal(s, t)


def test_aspp_two_branch_mode_ignores_branches_2_and_3(tmp_path, images):
  """AdaptSegNet's 2-branch bug: changing branch 2/3 weights must not change the logits."""
  cfg = model_config(aspp_branches=2)
  model = torch_model(cfg, images, seed=3)
  state = tref.deeplab_state_dict(model)
  before = flax_logits(cfg, convert.convert_state_dict(
      {k: v.numpy() for k, v in state.items()}, cfg).variables, images)
  for key in ("layer5.conv2d_list.3.weight", "layer6.conv2d_list.2.bias"):
    state[key] = state[key] + 1.0
  after = flax_logits(cfg, convert.convert_state_dict(
      {k: v.numpy() for k, v in state.items()}, cfg).variables, images)
  for b, a in zip(before, after):
    np.testing.assert_array_equal(b, a)


def test_torchvision_backbone_logits_match_with_init_heads(tmp_path, images):
  cfg = model_config()
  model = torch_model(cfg, images, seed=5)
  pth = save_pth(tmp_path / "resnet.pth", tref.torchvision_state_dict(model))
  result = convert.convert_checkpoint(pth, cfg, seed=7)
  assert result.format == "torchvision" and not result.heads_from_checkpoint
  assert result.skipped_keys == ["fc.bias", "fc.weight"]

  got = flat(result.variables["params"])
  heads = [k for k in got if k.startswith(("aux_head/", "main_head/"))]
  assert len(heads) == 16  # 2 heads x 4 branches x (kernel, bias)
  for head, in_channels in (("aux_head", 16 * TINY_WIDTH), ("main_head", 32 * TINY_WIDTH)):
    kernels = np.stack([got[f"{head}/branch{j}/kernel"] for j in range(4)])
    biases = np.stack([got[f"{head}/branch{j}/bias"] for j in range(4)])
    assert abs(kernels.std() - 0.01) < 0.001  # REFERENCE 1.2: N(0, 0.01)
    bound = 1 / np.sqrt(9 * in_channels)
    assert np.abs(biases).max() <= bound and np.abs(biases).max() > bound / 2
  other_seed = convert.init_head_params(cfg, seed=8)["main_head"]["branch1"]["kernel"]
  assert not np.array_equal(other_seed, got["main_head/branch1/kernel"])

  # The torch model gets the Flax heads; then both models must agree everywhere.
  with torch.no_grad():
    for flax_head, torch_head in (("aux_head", model.layer5), ("main_head", model.layer6)):
      for j, conv in enumerate(torch_head.conv2d_list):
        conv.weight.copy_(torch.from_numpy(got[f"{flax_head}/branch{j}/kernel"].transpose(3, 2, 0, 1)))
        conv.bias.copy_(torch.from_numpy(got[f"{flax_head}/branch{j}/bias"]))
  assert_logits_close(flax_logits(cfg, result.variables, images), torch_logits(model, images))


def test_deeplab_init_checkpoint_skips_foreign_classifier(tmp_path, images):
  """The COCO/ImageNet DeepLab init: `Scale.` keys, layer5 = 21-class classifier on layer4."""
  cfg = model_config()
  model = torch_model(cfg, images, seed=9)
  pth = save_pth(tmp_path / "init.pth", tref.deeplab_init_state_dict(model, 21))
  result = convert.convert_checkpoint(pth, cfg, seed=0)
  assert result.format == "deeplab" and not result.heads_from_checkpoint
  assert "layer4" in result.heads_note
  assert result.skipped_keys == sorted(
      f"layer5.conv2d_list.{j}.{n}" for j in range(4) for n in ("weight", "bias"))
  got = flat(result.variables)
  torch_state = model.state_dict()
  np.testing.assert_array_equal(
      got["params/layer3/block1/conv2/kernel"],
      torch_state["layer3.1.conv2.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["batch_stats/layer4/block0/downsample_bn/source_var"],
                                torch_state["layer4.0.downsample.1.running_var"].numpy())
  # The heads are exactly the model's own init with the fixed seed.
  module = models.build_segmenter(cfg)
  init = flat(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(images)))
  for k in ("params/aux_head/branch0/kernel", "params/main_head/branch3/bias"):
    np.testing.assert_allclose(got[k], init[k], rtol=1e-6, atol=1e-9)


def test_trained_heads_with_other_class_count_are_skipped(images):
  cfg = model_config()
  model = torch_model(model_config(num_classes=NUM_CLASSES + 2), images, seed=2)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  result = convert.convert_state_dict(state, cfg)
  assert not result.heads_from_checkpoint
  assert f"predict {NUM_CLASSES + 2} classes" in result.heads_note
  assert len(result.skipped_keys) == 16


@pytest.mark.slow
def test_full_resnet101_logits_match(tmp_path):
  """Slow (~30 s): the real depth (3, 4, 23, 3) and width 64 at a small input."""
  cfg = model_config(stage_sizes=(3, 4, 23, 3), base_width=64, num_classes=19)
  images = make_images((33, 49), seed=1)
  model = torch_model(cfg, images, seed=11)
  pth = save_pth(tmp_path / "r101.pth", tref.deeplab_state_dict(model, "Scale."))
  result = convert.convert_checkpoint(pth, cfg)
  num_tensors = sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))
  assert num_tensors == 104 + 104 * 4 + 16  # convs, BNs x 4 tensors, 2 heads x 4 x (w, b)
  assert result.heads_from_checkpoint and len(result.converted_keys) == num_tensors
  assert_logits_close(flax_logits(cfg, result.variables, images), torch_logits(model, images))


# ----------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def tiny_state(images):
  model = torch_model(model_config(), images, seed=4)
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_wrong_shape_names_key_and_both_shapes(tiny_state):
  state = dict(tiny_state)
  state["layer2.0.conv2.weight"] = np.zeros((16, 16, 5, 5), np.float32)
  with pytest.raises(convert.CheckpointError) as e:
    convert.convert_state_dict(state, model_config())
  msg = str(e.value)
  assert "layer2.0.conv2.weight: expected shape (16, 16, 3, 3)" in msg
  assert "found (16, 16, 5, 5)" in msg


def test_missing_keys_are_listed(tiny_state):
  state = dict(tiny_state)
  del state["layer1.0.conv1.weight"], state["layer3.1.bn2.running_var"]
  with pytest.raises(convert.CheckpointError, match="2 missing key") as e:
    convert.convert_state_dict(state, model_config())
  assert "layer1.0.conv1.weight" in str(e.value)
  assert "layer3.1.bn2.running_var" in str(e.value)


def test_unexpected_keys_are_listed(tiny_state):
  """A deeper checkpoint into a shallower model: the extra block's keys are unexpected."""
  with pytest.raises(convert.CheckpointError, match="unexpected key") as e:
    convert.convert_state_dict(tiny_state, model_config(stage_sizes=(1, 1, 1, 1)))
  msg = str(e.value)
  assert "layer3.1.conv2.weight" in msg and "layer3.1.bn3.running_mean" in msg
  assert "layer3.0.conv2.weight" not in msg.split("unexpected")[1]


@pytest.mark.parametrize("content", ["random_bytes", "pickled_list", "dict_of_strings",
                                     "foreign_state_dict"])
def test_not_a_checkpoint_says_what_is_understood(tmp_path, content):
  path = tmp_path / "bad.pth"
  if content == "random_bytes":
    path.write_bytes(np.random.default_rng(0).bytes(4096))
  elif content == "pickled_list":
    with open(path, "wb") as f:
      pickle.dump([1, 2, 3], f)
  elif content == "dict_of_strings":
    torch.save({"epoch": "3", "note": "no tensors"}, str(path))
  else:
    torch.save({"encoder.weight": torch.zeros(3, 3)}, str(path))
  with pytest.raises(convert.CheckpointError) as e:
    convert.load_torch_checkpoint(str(path), model_config())
  msg = str(e.value)
  assert str(path) in msg
  assert "DeepLab-V2" in msg and "torchvision" in msg and "'Scale.'" in msg


def test_cli_reports_error_without_traceback(tmp_path, capsys):
  path = tmp_path / "bad.pth"
  path.write_bytes(b"not a checkpoint")
  assert convert.main([f"--torch={path}", f"--out={tmp_path / 'out'}"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "Understood" in err
  assert not (tmp_path / "out").exists()


def test_cli_rerun_into_its_output_is_refused_unless_overwrite(tmp_path, tiny_state, capsys):
  """A second conversion into the same --out ends in an error block naming the folder and
  --overwrite (orbax would raise StepAlreadyExistsError); --overwrite replaces the conversion;
  a folder that is not a conversion is never replaced."""
  pth = save_pth(tmp_path / "init.pth", {k: torch.from_numpy(v) for k, v in tiny_state.items()})
  out = tmp_path / "init_coco"
  assert convert.main([f"--torch={pth}", f"--out={out}"]) == 0
  capsys.readouterr()
  assert convert.main([f"--torch={pth}", f"--out={out}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: --out={out} already holds a converted checkpoint ({out}/0).")
  assert "--overwrite" in err and "Traceback" not in err
  before = (out / "0" / "meta").stat().st_mtime_ns
  assert convert.main([f"--torch={pth}", f"--out={out}", "--overwrite"]) == 0
  assert (out / "0" / "meta").stat().st_mtime_ns != before
  assert checkpointing.list_steps(out) == [0]
  capsys.readouterr()
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  assert convert.main([f"--torch={pth}", f"--out={tmp_path / 'other'}", "--overwrite"]) == 2
  assert "is not empty (notes.txt) and is not a converted checkpoint" in capsys.readouterr().err
  assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_torch_key_mapping_follows_contract():
  cases = {
      ("conv1", "kernel"): "conv1.weight",
      ("bn1", "source_scale"): "bn1.weight",
      ("layer3", "block12", "bn2", "target_var"): "layer3.12.bn2.running_var",
      ("layer2", "block0", "downsample_conv", "kernel"): "layer2.0.downsample.0.weight",
      ("layer4", "block0", "downsample_bn", "mean"): "layer4.0.downsample.1.running_mean",
      ("layer1", "block0", "downsample_bn", "bias"): "layer1.0.downsample.1.bias",
      ("aux_head", "branch3", "bias"): "layer5.conv2d_list.3.bias",
      ("main_head", "branch0", "kernel"): "layer6.conv2d_list.0.weight",
  }
  for path, key in cases.items():
    assert convert.torch_key(path) == key
  with pytest.raises(KeyError, match="decoder/kernel"):
    convert.torch_key(("decoder", "kernel"))
