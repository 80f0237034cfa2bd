"""DeepLabV2 segmenter: structure against PyTorch, layer switch, shapes and sizes of ResNet-101."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from seat_jax.config_defaults import get_model_config
from seat_jax.models import build_segmenter, count_conv_params, max_pool_3x3_s2_ceil
from seat_jax.models.deeplabv2 import Conv2D, DilatedSumHead

TINY_STAGES = (1, 1, 1, 1)
TINY_WIDTH = 8
TINY_CLASSES = 5
TINY_INPUT = (2, 32, 40, 3)
TINY_OUT_HW = (5, 6)  # H 32 -> 16 (conv1) -> 9 (ceil pool) -> 5 (layer2); W 40 -> 20 -> 11 -> 6


def _tiny_config(**overrides):
  config = get_model_config()
  config.stage_sizes = TINY_STAGES
  config.base_width = TINY_WIDTH
  config.num_classes = TINY_CLASSES
  config.update(overrides)
  return config


def _randomised(variables, seed=0):
  """He-scaled kernels and distinct random norms per slot, so domains give different outputs."""
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(leaf.shape[:3])
      values = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
    elif name.endswith("var"):
      values = rng.uniform(0.5, 2.0, leaf.shape)
    elif name.endswith("scale"):
      values = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # means and biases
      values = rng.normal(0.0, 0.2, leaf.shape)
    return jnp.asarray(values, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, variables)


def _random_variables(model, images, seed=0):
  """Variables of `model` filled by `_randomised`; skips `init` (jax.random compiles slowly)."""
  return _randomised(jax.eval_shape(model.init, jax.random.key(0), images), seed)


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=("domain", "train", "source_stages", "mutable"))


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(np.random.default_rng(1).normal(0, 50, TINY_INPUT), jnp.float32)


@pytest.fixture(scope="module")
def tiny(images):
  model = build_segmenter(_tiny_config())
  return model, _random_variables(model, images), _jit_apply(model)


def _norm_slots(tree):
  """{path: dict of a SeatNorm's stats} for every norm in a batch_stats tree."""
  found = {}
  def walk(node, path):
    if "target_mean" in node or "mean" in node:
      found[path] = node
      return
    for key, child in node.items():
      walk(child, path + (key,))
  walk(tree, ())
  return found


# ---------------------------------------------------------------- structure vs PyTorch

class _TorchBottleneck(torch.nn.Module):
  """AdaptSegNet's Bottleneck (stride on the first 1x1), written here as an independent check."""

  def __init__(self, cin, planes, stride, dilation):
    super().__init__()
    nn = torch.nn
    self.conv1 = nn.Conv2d(cin, planes, 1, stride, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = nn.Sequential(
        nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    return torch.relu(self.bn3(self.conv3(y)) + self.downsample(x))


class _TorchDeepLab(torch.nn.Module):
  def __init__(self, width, classes, dilations=(6, 12, 18, 24)):
    super().__init__()
    nn = torch.nn
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    cin = width
    for k, (stride, dilation) in enumerate([(1, 1), (2, 1), (1, 2), (1, 4)]):
      planes = width * 2**k
      setattr(self, f"layer{k + 1}", nn.Sequential(_TorchBottleneck(cin, planes, stride, dilation)))
      cin = planes * 4
    self.layer5 = nn.ModuleList(
        [nn.Conv2d(cin // 2, classes, 3, padding=d, dilation=d) for d in dilations])
    self.layer6 = nn.ModuleList(
        [nn.Conv2d(cin, classes, 3, padding=d, dilation=d) for d in dilations])

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    x = self.layer2(self.layer1(x))
    x3 = self.layer3(x)
    x4 = self.layer4(x3)
    return sum(c(x3) for c in self.layer5), sum(c(x4) for c in self.layer6)


def _torch_state_from_flax(params, stats):
  """Flax (shared mode) -> PyTorch DeepLab keys, following the contract's key mapping."""
  state = {}
  def norm(prefix, p, s):
    state.update({f"{prefix}.weight": p["scale"], f"{prefix}.bias": p["bias"],
                  f"{prefix}.running_mean": s["mean"], f"{prefix}.running_var": s["var"]})
  def conv(prefix, p):
    state[f"{prefix}.weight"] = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
  conv("conv1", params["conv1"])
  norm("bn1", params["bn1"], stats["bn1"])
  for k in range(1, 5):
    block_p, block_s = params[f"layer{k}"]["block0"], stats[f"layer{k}"]["block0"]
    for j in (1, 2, 3):
      conv(f"layer{k}.0.conv{j}", block_p[f"conv{j}"])
      norm(f"layer{k}.0.bn{j}", block_p[f"bn{j}"], block_s[f"bn{j}"])
    conv(f"layer{k}.0.downsample.0", block_p["downsample_conv"])
    norm(f"layer{k}.0.downsample.1", block_p["downsample_bn"], block_s["downsample_bn"])
  for head, torch_name in (("aux_head", "layer5"), ("main_head", "layer6")):
    for j in range(4):
      conv(f"{torch_name}.{j}", params[head][f"branch{j}"])
      state[f"{torch_name}.{j}.bias"] = params[head][f"branch{j}"]["bias"]
  return {k: torch.tensor(np.asarray(v)) for k, v in state.items()}


def test_eval_forward_matches_an_independent_pytorch_deeplab(images):
  model = build_segmenter(_tiny_config(norm_mode="shared"))
  variables = _random_variables(model, images, seed=3)
  aux, main = jax.jit(model.apply)(variables, images)
  torch_model = _TorchDeepLab(TINY_WIDTH, TINY_CLASSES).eval()
  missing, unexpected = torch_model.load_state_dict(
      _torch_state_from_flax(variables["params"], variables["batch_stats"]), strict=False)
  assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
  with torch.no_grad():
    aux_t, main_t = torch_model(torch.tensor(np.asarray(images).transpose(0, 3, 1, 2)))
  for ours, theirs in ((aux, aux_t), (main, main_t)):
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (TINY_INPUT[0], *TINY_OUT_HW, TINY_CLASSES)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.parametrize("size", [16, 17, 33, 256, 257])
def test_max_pool_matches_torch_ceil_mode(size):
  x = np.random.default_rng(size).normal(size=(1, size, size + 3, 2)).astype(np.float32)
  expected = torch.nn.functional.max_pool2d(
      torch.tensor(x.transpose(0, 3, 1, 2)), 3, 2, 1, ceil_mode=True).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(max_pool_3x3_s2_ceil(jnp.asarray(x)), expected)


@pytest.mark.parametrize("kernel_size, stride, dilation", [(1, 2, 1), (1, 1, 1), (3, 1, 2)])
def test_conv_matches_torch(kernel_size, stride, dilation):
  """The 1x1-as-dot path (strided input) and the dilated 3x3 path against torch's conv2d."""
  x = np.random.default_rng(0).normal(size=(2, 9, 11, 4)).astype(np.float32)
  conv = Conv2D(6, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
                dilation=dilation)
  variables = conv.init(jax.random.key(0), jnp.asarray(x))
  kernel = np.asarray(variables["params"]["kernel"])
  expected = torch.nn.functional.conv2d(
      torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(kernel.transpose(3, 2, 0, 1)),
      stride=stride, padding=dilation * (kernel_size // 2), dilation=dilation)
  np.testing.assert_allclose(conv.apply(variables, jnp.asarray(x)),
                             expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- domains and the layer switch

def test_init_creates_both_domains_slots(tiny):
  _, variables, _ = tiny
  norms = _norm_slots(variables["batch_stats"])
  assert len(norms) == 1 + 4 * 4  # stem + (3 bns + downsample) per tiny stage
  for stats in norms.values():
    assert set(stats) == {"source_mean", "source_var", "target_mean", "target_var"}


def _copy_source_into_target(tree, top_level_key):
  """A copy of `tree` where, under `top_level_key`, every target_* leaf takes source_*'s value."""
  def copy(node):
    if not isinstance(node, dict):
      return node
    node = {k: copy(v) for k, v in node.items()}
    for key in list(node):
      if key.startswith("target_"):
        node[key] = node["source_" + key.removeprefix("target_")]
    return node
  return {k: copy(v) if k == top_level_key else v for k, v in tree.items()}


@pytest.mark.parametrize("stage, module_name", [(4, "layer4"), (0, "bn1")])
def test_layer_switch_uses_source_norm_only_in_that_stage(tiny, images, stage, module_name):
  _, variables, apply = tiny
  switched = apply(variables, images, domain="target", source_stages=(stage,))
  by_hand = {col: _copy_source_into_target(tree, module_name) for col, tree in variables.items()}
  expected = apply(by_hand, images, domain="target")
  plain_target = apply(variables, images, domain="target")
  for ours, ref in zip(switched, expected):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  # The switch matters: main logits change; aux logits (layer3 head) change only if the
  # switched stage lies below layer3.
  for ours, plain, should_change in zip(switched, plain_target, (stage < 4, True)):
    difference = np.abs(np.asarray(ours - plain)).max()
    if should_change:
      assert difference > 1e-3 * np.abs(plain).max()
    else:
      assert difference == 0.0


def test_all_stages_switched_equals_source_domain(tiny, images):
  _, variables, apply = tiny
  switched = apply(variables, images, domain="target", source_stages=(0, 1, 2, 3, 4))
  source = apply(variables, images, domain="source")
  for ours, ref in zip(switched, source):
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_source_training_pass_updates_only_source_stats(tiny, images):
  _, variables, apply = tiny
  _, updates = apply(variables, images, domain="source", train=True, mutable=("batch_stats",))
  old = _norm_slots(variables["batch_stats"])
  new = _norm_slots(updates["batch_stats"])
  assert new.keys() == old.keys()
  for path in old:
    for key in ("target_mean", "target_var"):
      assert np.array_equal(np.asarray(new[path][key]), np.asarray(old[path][key])), path
    for key in ("source_mean", "source_var"):
      assert not np.allclose(new[path][key], old[path][key]), path


def test_bad_source_stages_are_named(tiny, images):
  model, variables, _ = tiny
  with pytest.raises(ValueError, match=r"eval.source_stages.*invalid: \[5\]"):
    model.apply(variables, images, source_stages=(3, 5))


def test_the_layer_switch_refuses_a_joint_batch(tiny, images):
  model, variables, _ = tiny
  with pytest.raises(ValueError, match="source_stages .* needs one domain; got domain "
                                       "'source\\+target'"):
    model.apply(variables, images, domain="source+target", train=True, source_stages=(3,),
                mutable=["batch_stats"])


# ---------------------------------------------------------------- heads

def test_two_branch_heads_ignore_branches_2_and_3(images):
  outputs = {}
  for branches in (2, 4):
    model = build_segmenter(_tiny_config(aspp_branches=branches))
    variables = _random_variables(model, images)
    assert set(variables["params"]["main_head"]) == {"branch0", "branch1", "branch2", "branch3"}
    changed = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 3.0 if any(getattr(k, "key", "") in ("branch2", "branch3") for k in p)
        else v, variables)
    apply = jax.jit(model.apply)
    outputs[branches] = [apply(v, images) for v in (variables, changed)]
  for before, after in zip(*outputs[2]):
    np.testing.assert_array_equal(before, after)
  for before, after in zip(*outputs[4]):
    assert np.abs(np.asarray(before - after)).max() > 1e-3


def test_init_follows_reference():
  """Kernels N(0, 0.01); head biases U(+-1/sqrt(9 Cin)), PyTorch's default (REFERENCE 1.2)."""
  cin = 64
  head = DilatedSumHead(num_classes=TINY_CLASSES, dilations=(6, 12, 18, 24), num_used=2)
  params = head.init(jax.random.key(0), jnp.zeros((1, 8, 8, cin)))["params"]
  assert set(params) == {"branch0", "branch1", "branch2", "branch3"}  # unused ones exist too
  kernel = np.concatenate([np.ravel(b["kernel"]) for b in params.values()])
  assert kernel.size == 4 * 9 * cin * TINY_CLASSES
  assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
  bias = np.concatenate([np.asarray(b["bias"]) for b in params.values()])
  bound = 1 / np.sqrt(9 * cin)
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.5 * bound


# ---------------------------------------------------------------- precision

def test_bfloat16_compute_keeps_float32_params_stats_and_logits(tiny, images):
  _, variables, apply32 = tiny
  model16 = build_segmenter(_tiny_config(dtype="bfloat16"))
  apply16 = _jit_apply(model16)
  for out16, out32 in zip(apply16(variables, images), apply32(variables, images)):
    assert out16.dtype == jnp.float32
    scale = np.abs(np.asarray(out32)).max()
    assert np.abs(np.asarray(out16 - out32)).max() < 0.1 * scale  # bf16 rounding, not garbage
  # Training dtypes by abstract evaluation (bf16 compiles slowly on XLA:CPU).
  (aux, _), updates = jax.eval_shape(
      lambda v, x: model16.apply(v, x, "target", True, mutable=["batch_stats"]), variables, images)
  assert aux.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(updates))
  init16 = jax.eval_shape(model16.init, jax.random.key(0), images)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(init16))


def test_remat_blocks_keeps_variables_values_and_gradients(tiny, images):
  model, variables, _ = tiny
  remat = build_segmenter(_tiny_config(remat="blocks"))
  shapes = lambda m: jax.tree.map(lambda x: x.shape, jax.eval_shape(m.init, jax.random.key(0),
                                                                    images))
  assert shapes(remat) == shapes(model)  # same tree: checkpoints do not depend on it

  def loss(m, params):
    (aux, main), updates = m.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                   images, domain="source", train=True, mutable=["batch_stats"])
    return jnp.sum(main ** 2) + 0.1 * jnp.sum(aux ** 2), updates

  grad = lambda m: jax.jit(jax.grad(lambda p: loss(m, p), has_aux=True))(variables["params"])
  (g_plain, u_plain), (g_remat, u_remat) = grad(model), grad(remat)
  # Recomputation changes float rounding only: 1e-5 of each tensor's largest value.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
  jax.tree.map(close, g_remat, g_plain)
  jax.tree.map(close, u_remat, u_plain)


# ---------------------------------------------------------------- config

def test_build_accepts_any_object_with_the_fields():
  fields = dict(get_model_config())
  model = build_segmenter(types.SimpleNamespace(**fields))
  assert model.stage_sizes == (3, 4, 23, 3) and model.norm_mode == "seat"


@pytest.mark.parametrize("overrides, message", [
    (dict(norm_mode="dsbn"), "model.norm_mode"),
    (dict(dtype="float16"), "model.dtype"),
    (dict(stage_sizes=(3, 4, 23)), "model.stage_sizes"),
    (dict(aspp_branches=5), "model.aspp_branches"),
    (dict(remat="stages"), "model.remat"),
])
def test_bad_config_is_named(overrides, message):
  with pytest.raises(ValueError, match=message):
    build_segmenter(_tiny_config(**overrides))


def test_missing_config_field_is_named():
  config = ml_collections.ConfigDict(dict(get_model_config()))
  del config["norm_mode"]
  with pytest.raises(ValueError, match=r"lacks \['norm_mode'\]"):
    build_segmenter(config)


# ---------------------------------------------------------------- full ResNet-101 (abstract)

@pytest.fixture(scope="module")
def resnet101():
  model = build_segmenter(get_model_config())
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  return model, abstract


@pytest.mark.parametrize("width, height, out_hw", [
    (1024, 512, (65, 129)), (1280, 720, (91, 161)), (1280, 760, (96, 161)),
    (2048, 1024, (129, 257))])
def test_resnet101_output_sizes(resnet101, width, height, out_hw):
  model, abstract = resnet101
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  for logits in jax.eval_shape(model.apply, abstract, images):
    assert logits.shape == (1, *out_hw, 19) and logits.dtype == jnp.float32


def _conv_params_by_hand(heads_branches, classes=19):
  """ResNet-101 conv kernels + dilated-sum heads, counted from REFERENCE 1.1's table."""
  total = 7 * 7 * 3 * 64
  cin = 64
  for blocks, planes in zip((3, 4, 23, 3), (64, 128, 256, 512)):
    for i in range(blocks):
      total += cin * planes + 9 * planes * planes + planes * 4 * planes
      if i == 0:
        total += cin * planes * 4  # downsample
      cin = planes * 4
  for head_cin in (1024, 2048):
    total += heads_branches * (9 * head_cin * classes + classes)
  return total


def test_resnet101_parameter_counts(resnet101):
  _, abstract = resnet101
  params = abstract["params"]
  assert count_conv_params(params) == _conv_params_by_hand(4) == 44_496_216  # 44.50 M
  assert count_conv_params(params, aspp_branches=2) == _conv_params_by_hand(2) == 43_445_516
  norms = _norm_slots(abstract["batch_stats"])
  channels = sum(stats["target_mean"].shape[0] for stats in norms.values())
  assert (len(norms), channels) == (104, 52_672)
  # seat mode: conv params + two affines (scale, bias) per domain per channel.
  all_params = sum(leaf.size for leaf in jax.tree.leaves(params))
  assert all_params == 44_496_216 + 4 * 52_672


def test_resnet101_eval_forward_is_finite(resnet101):
  """One real full-depth pass at a tiny input (33x65 -> 5x9): every layer runs."""
  model, abstract = resnet101
  rng = np.random.default_rng(0)
  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(leaf.shape[:3])
      return rng.standard_normal(leaf.shape, np.float32) * np.float32(np.sqrt(1.0 / fan_in))
    return jnp.ones(leaf.shape) if name.endswith(("var", "scale")) else jnp.zeros(leaf.shape)
  variables = jax.tree_util.tree_map_with_path(fill, abstract)
  images = jnp.asarray(rng.normal(0, 50, (1, 33, 65, 3)), jnp.float32)
  aux, main = jax.jit(model.apply)(variables, images)
  for logits in (aux, main):
    assert logits.shape == (1, 5, 9, 19) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits)) and np.asarray(logits).std() > 0
