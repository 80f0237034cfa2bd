"""DeepLabV2 with mmseg's ResNetV1c backbone (`model.resnet_variant=v1c`) against PyTorch.

The reference is a PyTorch ResNetV1c transcribed below from mmseg's definition as DAFormer
vendors it (lhoyer/DAFormer mmseg/models/backbones/resnet.py `ResNet._make_stem_layer`,
`Bottleneck` with style='pytorch', mmseg/models/utils/res_layer.py `ResLayer` with
contract_dilation=True; configs/_base_/models/deeplabv2_r50-d8.py: strides (1, 2, 1, 1),
dilations (1, 1, 2, 4)), tiny (one block per stage, width 16), every tensor random. It is saved
as an mmseg segmentor checkpoint ({'state_dict': backbone.* + decode_head.*}) and converted by
the CLI; the converted backbone's layer4 features (what DAFormer's feature distance compares)
must match PyTorch's on the same images, which PyTorch gets ImageNet-normalised as mmseg does.

Tolerance: with errors normalised by the largest float64 feature,
err(jax, torch64) <= RATIO * err(torch32, torch64) + FLOOR, and max|jax - torch32| <= 1e-4 of
the feature scale (as tests/test_segformer.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from seat_jax import checkpointing  # noqa: E402
from seat_jax import config_defaults  # noqa: E402
from seat_jax import convert  # noqa: E402
from seat_jax import models  # noqa: E402
from seat_jax import warm_start  # noqa: E402
import torch_reference as tref  # noqa: E402

STAGES = (1, 1, 1, 1)
WIDTH = 16  # stem 8, 8, 16; layer planes 16, 32, 64, 128 (layer4 out 512)
# Even height: the stem's 32 rows pool to 16 in floor mode, 17 in Caffe's ceil mode; odd width.
IMAGE_HW = (64, 75)
RATIO = 16.0
FLOOR = 16 * 2.0**-24


# ---------------------------------------------------------------------------------------------
# mmseg's ResNetV1c, transcribed.


class Bottleneck(nn.Module):
  """mmseg Bottleneck, style='pytorch': the stride on conv2 (3x3), padding = dilation."""
  expansion = 4

  def __init__(self, inplanes, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                           dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    return self.relu(out + identity)


class ResNetV1c(nn.Module):
  """mmseg ResNetV1c (deep_stem=True, avg_down=False) with DeepLabV2's strides and dilations."""

  def __init__(self, stage_blocks=STAGES, stem_channels=WIDTH, base_channels=WIDTH,
               strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)):
    super().__init__()
    half = stem_channels // 2
    self.stem = nn.Sequential(
        nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        nn.Conv2d(half, half, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(half),
        nn.ReLU(),
        nn.Conv2d(half, stem_channels, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(stem_channels), nn.ReLU())
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = stem_channels
    for i, num_blocks in enumerate(stage_blocks):
      planes, stride, dilation = base_channels * 2**i, strides[i], dilations[i]
      downsample = None
      if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion))
      first_dilation = dilation // 2 if dilation > 1 else dilation  # contract_dilation=True
      blocks = [Bottleneck(inplanes, planes, stride, first_dilation, downsample)]
      inplanes = planes * Bottleneck.expansion
      blocks += [Bottleneck(inplanes, planes, 1, dilation, None) for _ in range(1, num_blocks)]
      self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

  def forward(self, x):
    x = self.maxpool(self.stem(x))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def model_inputs(seed=0):
  return tref.imagenet_model_inputs(IMAGE_HW, seed)


def v1c_config(norm_mode="seat", variant="v1c"):
  cfg = config_defaults.get_model_config()
  cfg.update(stage_sizes=STAGES, base_width=WIDTH, num_classes=5, norm_mode=norm_mode,
             resnet_variant=variant, input_normalisation="imagenet")
  return cfg


@pytest.fixture(scope="module")
def torch_models():
  """(float32, float64) copies of one random ResNetV1c in eval mode."""
  torch.manual_seed(0)
  model = tref.randomize_(ResNetV1c(), model_inputs(1)[1].float()).eval()
  model64 = ResNetV1c().double()
  model64.load_state_dict(model.state_dict())
  return model, model64.eval()


def segmentor_state(model):
  """An mmseg segmentor checkpoint's tensors: backbone.* plus a DLV2Head's decode_head.*."""
  state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
  for j in range(2):
    state[f"decode_head.aspp_modules.{j}.conv.weight"] = torch.zeros(5, 8 * WIDTH * 4, 3, 3)
    state[f"decode_head.aspp_modules.{j}.conv.bias"] = torch.zeros(5)
  return state


@pytest.fixture(scope="module")
def converted(torch_models, tmp_path_factory):
  """The segmentor checkpoint converted by the CLI: (stored variables, the CLI's stdout)."""
  root = tmp_path_factory.mktemp("v1c")
  torch.save({"state_dict": segmentor_state(torch_models[0]), "meta": {}}, root / "seg.pth")
  return root


@functools.lru_cache(maxsize=None)
def _features_fn(norm_mode):
  model = models.build_segmenter(v1c_config(norm_mode))

  def features(variables, images, domain):
    _, state = model.apply(variables, images, domain=domain, mutable=["intermediates"])
    return state["intermediates"]["layer4_output"][0]
  return model, jax.jit(features, static_argnums=(2,))


def test_converted_v1c_backbone_equals_mmseg_resnet(torch_models, converted, capsys):
  """SEAT norms, both domains: the file's one set of BatchNorms fills every slot of each."""
  assert convert.main([f"--torch={converted / 'seg.pth'}", f"--out={converted / 'init'}"]) == 0
  out = capsys.readouterr().out
  assert "format resnet_v1c" in out and "ResNetV1c (ImageNet input normalisation)" in out
  assert "decode_head.*" in out and "resnet_variant=v1c" in out
  stored = checkpointing.restore_stored_model(converted / "init", 0)
  assert set(stored["params"]) == {"stem", "layer1", "layer2", "layer3", "layer4"}

  images, pixels = model_inputs()
  with torch.no_grad():
    t32 = torch_models[0](pixels.float()).numpy().transpose(0, 2, 3, 1)
    t64 = torch_models[1](pixels).numpy().transpose(0, 2, 3, 1)
  model, features = _features_fn("seat")
  assert model.align_corners is False  # mmseg's resize of the logits
  abstract = checkpointing.abstract_variables(model)
  fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)  # the heads: unused here
  variables, report = warm_start.fit_variables(stored, abstract, fresh=fresh)
  assert set(report.fresh_heads) == {"aux_head", "main_head"}
  for domain in models.DOMAINS:
    got = np.asarray(features(variables, jnp.asarray(images), domain), np.float64)
    assert got.shape == t64.shape == (2, 8, 10, 8 * WIDTH * 4)
    scale = np.max(np.abs(t64))
    err_jax = np.max(np.abs(got - t64)) / scale
    err_torch = np.max(np.abs(t32 - t64)) / scale
    err_32 = np.max(np.abs(got - t32)) / np.max(np.abs(t32))
    print(f"{domain}: err(jax)={err_jax:.3g} err(torch32)={err_torch:.3g} "
          f"bound={RATIO * err_torch + FLOOR:.3g}; |jax - torch32| {err_32:.3g} of 1e-4")
    assert err_jax <= RATIO * err_torch + FLOOR, (domain, err_jax, err_torch)
    assert err_32 <= 1e-4, domain


def test_v1c_file_layouts_and_what_the_conversion_reads(torch_models):
  """A bare ImageNet file (no prefix, an fc classifier) converts to the same variables as the
  segmentor file; the architecture and the normalisation come from the file."""
  state = {k: v.numpy() for k, v in torch_models[0].state_dict().items()}
  bare = dict(state, **{"fc.weight": np.zeros((10, 512), np.float32),
                        "fc.bias": np.zeros(10, np.float32)})
  segmentor = {k: v.numpy() for k, v in segmentor_state(torch_models[0]).items()}
  a = convert.convert_state_dict(bare)
  b = convert.convert_state_dict(segmentor)
  assert a.format == b.format == "resnet_v1c" and not a.heads_from_checkpoint
  cfg = a.model_config
  assert (tuple(cfg.stage_sizes), cfg.base_width, cfg.resnet_variant,
          cfg.input_normalisation) == (STAGES, WIDTH, "v1c", "imagenet")
  assert a.skipped_keys == ["fc.bias", "fc.weight"]
  assert all(k.startswith("decode_head.") for k in b.skipped_keys) and len(b.skipped_keys) == 4
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
  assert convert.torch_key(("stem", "bn2", "target_var")) == "stem.4.running_var"
  assert convert.torch_key(("stem", "conv3", "kernel")) == "stem.6.weight"


def test_caffe_model_refuses_a_v1c_init_naming_the_variant(torch_models):
  """A V1c conversion into a Caffe-stem preset (or the reverse) is another model."""
  stored = convert.convert_state_dict(
      {k: v.numpy() for k, v in torch_models[0].state_dict().items()}).variables
  caffe = models.build_segmenter(v1c_config("shared", variant="caffe"))
  with pytest.raises(warm_start.IncompatibleModelError, match="resnet_variant"):
    warm_start.fit_variables(stored, checkpointing.abstract_variables(caffe))


def test_v1c_model_exports_with_symbolic_sizes():
  """The exported inference function (any batch and size) gives the jitted model's logits; the
  strided 3x3 and downsample branches of layer2 must agree on their size symbolically."""
  import helpers  # pylint: disable=g-import-not-at-top
  from seat_jax import export  # pylint: disable=g-import-not-at-top
  model = models.build_segmenter(v1c_config())
  fn = functools.partial(export.inference_fn(model), helpers.random_variables(model, 0))
  exported = jax.export.export(jax.jit(fn), platforms=("cpu",))(export._symbolic_images())
  for hw in ((16, 16), (37, 50)):
    images = np.random.default_rng(0).integers(0, 256, (2, *hw, 3)).astype(np.uint8)
    got, want = exported.call(images)["logits"], jax.jit(fn)(images)["logits"]
    assert got.shape == (2, *hw, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
