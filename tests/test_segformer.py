"""SegFormer (MiT + DAFormer / all-MLP decoder) against PyTorch, its SEAT norms and its init.

References: `transformers`' SegformerForSemanticSegmentation (an implementation independent of
this one) built from a tiny SegformerConfig with every tensor random, saved as Hugging Face
saves it; and, for mmseg's layout and DAFormer's decoder, the same encoder's tensors renamed to
mmseg's MiT names plus a PyTorch DAFormer decoder transcribed below from DAFormer's
daformer_head.py (mmcv's ConvModule / DepthwiseSeparableConvModule as that file uses them).

Tolerance: the references run in float32 and float64; with errors normalised by the largest
float64 logit, err(jax, torch64) <= RATIO * err(torch32, torch64) + FLOOR (as
test_iteration_vs_torch.py), and the issue's criterion max|jax - torch32| <= 1e-4 * max|torch32|.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import torch as safetensors_torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from seat_jax import checkpointing  # noqa: E402
from seat_jax import config_defaults  # noqa: E402
from seat_jax import convert  # noqa: E402
from seat_jax import models  # noqa: E402
from seat_jax import warm_start  # noqa: E402
import torch_reference as tref  # noqa: E402

HIDDEN = (8, 16, 16, 24)
HEADS = (1, 2, 2, 4)
DEPTHS = (1, 2, 1, 1)
SR_RATIOS = (8, 4, 2, 1)
DECODER_WIDTH = 16
NUM_CLASSES = 5
IMAGE_HW = (61, 75)  # odd: floors in the strided convs, uneven resizes in the decoder
RATIO = 16.0
FLOOR = 16 * 2.0**-24


def jax_model_config(decoder, norm_mode="shared", eps=1e-5):
  """The tiny SegFormer; eps 1e-5 is Hugging Face's LayerNorm (mmseg's mit_b*: 1e-6)."""
  cfg = config_defaults.get_model_config()
  cfg.name, cfg.num_classes, cfg.norm_mode = "segformer", NUM_CLASSES, norm_mode
  cfg.mit.update(embed_dims=HIDDEN, num_heads=HEADS, depths=DEPTHS, sr_ratios=SR_RATIOS,
                 layer_norm_eps=eps)
  cfg.decoder.update(name=decoder, channels=DECODER_WIDTH, embed_dims=DECODER_WIDTH)
  return cfg


def model_inputs(seed=0):
  return tref.imagenet_model_inputs(IMAGE_HW, seed)


def randomize_(model, images, seed=0):
  """Every weight random and well scaled, every norm affine and BN statistic random, so a
  converter that drops, swaps or mis-transposes any tensor changes the logits."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Linear, nn.Conv2d)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
        if module.bias is not None:
          module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
      elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        if isinstance(module, nn.BatchNorm2d):
          module.momentum = 1.0  # the next train-mode pass stores the batch statistics
    model.train()
    model(images)
    model.eval()
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.momentum = 0.1  # PyTorch's default again, as mmcv's BN and SeatNorm use
        module.running_mean.add_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
        module.running_var.mul_(0.5 + torch.rand(module.running_var.shape, generator=gen))
  return model


def check_close(name, got, t32, t64):
  """The module doc's two bounds; returns the worst ratio for the record."""
  got, t32, t64 = (np.asarray(a, np.float64) for a in (got, t32, t64))
  scale = np.max(np.abs(t64))
  err_jax = np.max(np.abs(got - t64)) / scale
  err_torch = np.max(np.abs(t32 - t64)) / scale
  assert err_jax <= RATIO * err_torch + FLOOR, (name, err_jax, err_torch)
  assert np.max(np.abs(got - t32)) <= 1e-4 * np.max(np.abs(t32)), name
  return err_jax / max(err_torch, 1e-30)


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------
# Hugging Face's SegFormer, converted from its saved directory.


@pytest.fixture(scope="module")
def hf_model():
  """(float32 model, float64 copy) of a tiny random SegformerForSemanticSegmentation."""
  config = transformers.SegformerConfig(
      num_channels=3, num_encoder_blocks=4, depths=list(DEPTHS), sr_ratios=list(SR_RATIOS),
      hidden_sizes=list(HIDDEN), num_attention_heads=list(HEADS),
      decoder_hidden_size=DECODER_WIDTH, num_labels=NUM_CLASSES, drop_path_rate=0.1,
      attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.SegformerForSemanticSegmentation(config)
  randomize_(model, model_inputs(1)[1].float())
  model64 = transformers.SegformerForSemanticSegmentation(config).double()
  model64.load_state_dict(model.state_dict())
  return model.eval(), model64.eval()


@pytest.fixture(scope="module")
def hf_converted(hf_model, tmp_path_factory):
  """The model saved by save_pretrained and converted by the CLI, stored as converted."""
  root = tmp_path_factory.mktemp("hf")
  hf_model[0].save_pretrained(root / "segformer")
  assert convert.main([f"--torch={root / 'segformer'}", f"--out={root / 'init'}"]) == 0
  return checkpointing.restore_stored_model(root / "init", 0)


@functools.lru_cache(maxsize=None)
def _apply_fn(decoder, norm_mode, eps):
  model = models.build_segmenter(jax_model_config(decoder, norm_mode, eps))
  def logits(variables, images, domain, source_stages):
    return model.apply(variables, images, domain=domain, source_stages=source_stages)[1]
  return model, jax.jit(logits, static_argnums=(2, 3))


def fitted(stored, decoder, norm_mode, eps=1e-5):
  """The stored variables fitted into the model of `norm_mode` (the one-init rule)."""
  model, _ = _apply_fn(decoder, norm_mode, eps)
  variables, report = warm_start.fit_variables(stored, checkpointing.abstract_variables(model))
  assert not report.fresh_heads
  return variables


def test_converted_hf_segformer_equals_transformers(hf_model, hf_converted):
  """SEAT norms, both domains: the file's one set of norms fills every slot of each."""
  images, pixels = model_inputs()
  with torch.no_grad():
    t32 = nhwc(hf_model[0](pixels.float()).logits)
    t64 = nhwc(hf_model[1](pixels).logits)
  stored = hf_converted
  assert set(stored["params"]) == {"backbone", "decode_head"}
  for norm_mode in ("seat",):  # every slot filled from the file's one set of norms
    _, logits = _apply_fn("segformer", norm_mode, 1e-5)
    variables = fitted(stored, "segformer", norm_mode)
    for domain in models.DOMAINS:
      got = logits(variables, jnp.asarray(images), domain, ())
      assert got.shape == t32.shape == (2, 16, 19, NUM_CLASSES)
      check_close(f"{norm_mode}/{domain}", got, t32, t64)


def test_hf_conversion_reads_the_architecture_from_the_files(hf_model, tmp_path):
  """Widths, depths, reduction ratios and the decoder from the tensors; heads from config.json."""
  hf_model[0].save_pretrained(tmp_path / "m")
  result = convert.convert_checkpoint(str(tmp_path / "m"), None)
  cfg = result.model_config
  assert result.format == "segformer_hf" and result.heads_from_checkpoint
  assert (tuple(cfg.mit.embed_dims), tuple(cfg.mit.depths), tuple(cfg.mit.sr_ratios),
          tuple(cfg.mit.num_heads)) == (HIDDEN, DEPTHS, SR_RATIOS, HEADS)
  assert (cfg.decoder.name, cfg.decoder.channels, cfg.num_classes) == (
      "segformer", DECODER_WIDTH, NUM_CLASSES)
  assert cfg.mit.layer_norm_eps == 1e-5 and cfg.norm_mode == "shared"


# ---------------------------------------------------------------------------------------------
# mmseg's layout and DAFormer's decoder, transcribed from daformer_head.py.


class ConvModule(nn.Module):
  """mmcv ConvModule(norm_cfg=BN, act_cfg=ReLU): conv without bias, `bn`, ReLU."""

  def __init__(self, cin, cout, kernel, padding=0, dilation=1, groups=1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, groups=groups,
                          bias=False)
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
  def __init__(self, cin, cout, dilation):
    super().__init__()
    self.depthwise_conv = ConvModule(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin)
    self.pointwise_conv = ConvModule(cin, cout, 1)

  def forward(self, x):
    return self.pointwise_conv(self.depthwise_conv(x))


class MLP(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.proj = nn.Linear(cin, cout)

  def forward(self, x):  # NCHW -> tokens -> Linear, as segformer_head.MLP
    return self.proj(x.flatten(2).transpose(1, 2))


class ASPPWrapper(nn.Module):
  """sep=True, pool=False, no context layer: daformer_sepaspp_mitb5.py's fusion."""

  def __init__(self, cin, channels, dilations):
    super().__init__()
    self.aspp_modules = nn.ModuleList(
        ConvModule(cin, channels, 1) if d == 1 else DepthwiseSeparableConvModule(cin, channels, d)
        for d in dilations)
    self.bottleneck = ConvModule(len(dilations) * channels, channels, 3, padding=1)

  def forward(self, x):
    return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
  def __init__(self, in_channels, embed_dim, channels, num_classes, dilations=(1, 6, 12, 18)):
    super().__init__()
    self.embed_layers = nn.ModuleDict(
        {str(i): MLP(c, embed_dim) for i, c in enumerate(in_channels)})
    self.fuse_layer = ASPPWrapper(len(in_channels) * embed_dim, channels, dilations)
    self.dropout = nn.Dropout2d(0.1)
    self.conv_seg = nn.Conv2d(channels, num_classes, 1)

  def forward(self, inputs):
    n = inputs[-1].shape[0]
    size = inputs[0].shape[2:]
    embedded = []
    for i, x in enumerate(inputs):
      e = self.embed_layers[str(i)](x).permute(0, 2, 1).reshape(n, -1, *x.shape[2:])
      if e.shape[2:] != size:
        e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
      embedded.append(e)
    return self.conv_seg(self.dropout(self.fuse_layer(torch.cat(embedded, dim=1))))


def mmseg_mit_names(hf_state):
  """Hugging Face's encoder tensors under mmseg's mix_transformer.py names (key and value rows
  stacked into `kv`), prefixed `backbone.` as an mmseg segmentor's state_dict."""
  renames = ((r"^encoder\.patch_embeddings\.(\d)\.layer_norm", "patch_embed{s}.norm"),
             (r"^encoder\.patch_embeddings\.(\d)\.proj", "patch_embed{s}.proj"),
             (r"^encoder\.layer_norm\.(\d)", "norm{s}"),
             (r"^encoder\.block\.(\d)\.", "block{s}."))
  parts = ((".layer_norm_1.", ".norm1."), (".layer_norm_2.", ".norm2."),
           (".attention.self.query.", ".attn.q."), (".attention.self.sr.", ".attn.sr."),
           (".attention.self.layer_norm.", ".attn.norm."),
           (".attention.output.dense.", ".attn.proj."), (".mlp.dense1.", ".mlp.fc1."),
           (".mlp.dense2.", ".mlp.fc2."))
  out = {}
  for key, value in hf_state.items():
    if not key.startswith("segformer."):
      continue
    key = key.removeprefix("segformer.")
    for pattern, name in renames:
      key = re.sub(pattern, lambda m, name=name: name.format(s=int(m[1]) + 1), key)
    for old, new in parts:
      key = key.replace(old, new)
    out["backbone." + key] = value
  for key in [k for k in out if ".attention.self.key." in k]:
    value_key = key.replace(".key.", ".value.")
    out[key.replace(".attention.self.key.", ".attn.kv.")] = torch.cat(
        [out.pop(key), out.pop(value_key)], dim=0)
  return out


@pytest.fixture(scope="module")
def daformer_reference(hf_model, tmp_path_factory):
  """(logits float32, logits float64, stored variables, the .pth) of the Hugging Face encoder
  with the transcribed DAFormer decoder, saved in mmseg's layout and converted by the CLI."""
  torch.manual_seed(1)
  head = DAFormerHead(HIDDEN, DECODER_WIDTH, DECODER_WIDTH, NUM_CLASSES)
  _, pixels = model_inputs()
  encoder32, encoder64 = (m.segformer for m in hf_model)
  with torch.no_grad():
    feats = encoder32(pixels.float(), output_hidden_states=True).hidden_states
  randomize_(head, [f.detach() for f in feats], seed=2)
  head64 = DAFormerHead(HIDDEN, DECODER_WIDTH, DECODER_WIDTH, NUM_CLASSES).double()
  head64.load_state_dict(head.state_dict())
  head64.eval()
  with torch.no_grad():
    t32 = nhwc(head(encoder32(pixels.float(), output_hidden_states=True).hidden_states))
    t64 = nhwc(head64(encoder64(pixels, output_hidden_states=True).hidden_states))
  root = tmp_path_factory.mktemp("mmseg")
  hf_model[0].save_pretrained(root / "hf")  # the Hub's key names, whatever transformers' own
  state = mmseg_mit_names(safetensors_torch.load_file(root / "hf" / "model.safetensors"))
  state.update({"decode_head." + k: v for k, v in head.state_dict().items()})
  state["backbone.head.weight"] = torch.zeros(3, HIDDEN[-1])  # mit_b*.pth's ImageNet classifier
  torch.save({"state_dict": state}, root / "daformer.pth")
  assert convert.main([f"--torch={root / 'daformer.pth'}", f"--out={root / 'init'}"]) == 0
  return t32, t64, checkpointing.restore_stored_model(root / "init", 0), root / "daformer.pth"


def test_daformer_decoder_equals_its_transcription(daformer_reference):
  """mmseg's MiT names and DAFormer's decoder, converted; SEAT norms, both domains."""
  t32, t64, stored, _ = daformer_reference
  images, _ = model_inputs()
  for norm_mode in ("seat",):
    _, logits = _apply_fn("daformer", norm_mode, 1e-5)
    variables = fitted(stored, "daformer", norm_mode)
    for domain in models.DOMAINS:
      check_close(f"{norm_mode}/{domain}", logits(variables, jnp.asarray(images), domain, ()),
                  t32, t64)


def test_mmseg_file_converts_with_its_own_architecture(daformer_reference):
  """The mmseg layout gives mit_b*'s eps 1e-6 and mmseg's head rule (width / stage-1 width)."""
  _, _, stored, path = daformer_reference
  flat = traverse_util.flatten_dict(stored)
  assert ("params", "backbone", "block2_1", "attn", "kv", "kernel") in flat
  assert ("batch_stats", "decode_head", "aspp3", "depthwise", "bn", "var") in flat
  assert not any("head" == p[1] for p in flat)  # the ImageNet classifier is skipped
  result = convert.convert_checkpoint(str(path), None)
  assert result.format == "mit" and result.model_config.mit.layer_norm_eps == 1e-6
  assert tuple(result.model_config.mit.num_heads) == (1, 2, 2, 3)  # 8, 16, 16, 24 over 8
  assert result.model_config.decoder.name == "daformer"
  assert "backbone.head.weight" in result.skipped_keys


# ---------------------------------------------------------------------------------------------
# What each norm mode separates.


def random_variables(model, seed=3):
  """Random values in `model`'s variable tree (no init compile): norms near 1 or 0 + noise."""
  rng = np.random.default_rng(seed)
  shapes = checkpointing.abstract_variables(model)

  def value(path, leaf):
    base = 1.0 if path[-1].key.endswith(("scale", "var")) else 0.0
    std = 0.3 if leaf.ndim == 1 else 1.0 / math.sqrt(np.prod(leaf.shape[:-1]))
    value = base + rng.normal(0, std, leaf.shape)
    return (np.abs(value) if path[-1].key.endswith("var") else value).astype(np.float32)
  return jax.tree_util.tree_map_with_path(value, shapes)


def test_norm_modes_separate_what_they_promise():
  """seat: LayerNorm and BatchNorm affines per domain, BN statistics per domain; sat: shared
  affines, BN statistics per domain; shared: one of each. A train pass updates only its own
  domain's statistics; 'mixed' uses the mean affine and updates none."""
  images = jnp.asarray(model_inputs()[0])
  for norm_mode in models.NORM_MODES:
    model, _ = _apply_fn("segformer", norm_mode, 1e-6)
    variables = random_variables(model)
    leaves = {"/".join(p[-2:]) for p in traverse_util.flatten_dict(variables)}
    assert ("norm1/source_scale" in leaves) == (norm_mode == "seat")
    assert ("bn/target_mean" in leaves) == (norm_mode != "shared")
    assert ("bn/source_scale" in leaves) == (norm_mode == "seat")

    @jax.jit
    def passes(variables):
      def run(domain, **kw):
        return model.apply(variables, images, domain=domain, **kw)[1]
      train = functools.partial(model.apply, variables, images, train=True,
                                mutable=["batch_stats"])
      return (run("source"), run("target"), run("target", source_stages=(1, 2, 3, 4, 5)),
              train(domain="source")[1]["batch_stats"], train(domain="mixed")[1]["batch_stats"])

    src, tgt, switched, after_source, after_mixed = passes(variables)
    assert (np.max(np.abs(src - tgt)) > 1e-3) == (norm_mode != "shared")
    # The layer switch: every stage and the decoder from the source = the source pass.
    np.testing.assert_allclose(switched, src, rtol=0, atol=1e-6)
    before = traverse_util.flatten_dict(variables["batch_stats"])
    after = traverse_util.flatten_dict(after_source)
    changed = {p[-1] for p in before if not np.array_equal(before[p], after[p])}
    assert changed == ({"mean", "var"} if norm_mode == "shared" else
                       {"source_mean", "source_var"})
    jax.tree.map(np.testing.assert_array_equal, after_mixed, variables["batch_stats"])


def test_seat_layer_norm_mixed_is_the_mean_affine():
  norm = models.SeatLayerNorm(mode="seat", epsilon=1e-6)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
  params = {"params": {"source_scale": jnp.full(5, 2.0), "source_bias": jnp.zeros(5),
                       "target_scale": jnp.zeros(5), "target_bias": jnp.full(5, 4.0)}}
  z = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(norm.apply(params, x, "mixed"), z + 2.0, atol=1e-5)
  np.testing.assert_allclose(norm.apply(params, x, "source"), 2 * z, atol=1e-5)


def test_dropout_and_stochastic_depth_act_only_with_a_dropout_rng():
  """A training pass without an rng is deterministic (DAFormer's teacher); with one, channel
  dropout and DropPath change the logits; evaluation never draws."""
  cfg = jax_model_config("segformer", "seat", 1e-6)  # the decoders share the dropout code
  cfg.mit.drop_path_rate = 0.5
  model = models.build_segmenter(cfg)
  variables = random_variables(model)
  images = jnp.asarray(model_inputs()[0])

  @functools.partial(jax.jit, static_argnums=1)
  def apply(rngs, train):
    out, _ = model.apply(variables, images, train=train, mutable=["batch_stats"], rngs=rngs)
    return out[1]

  def run(rng=None, train=True):
    return np.asarray(apply({"dropout": rng} if rng is not None else None, train))

  plain = run()
  np.testing.assert_array_equal(run(), plain)
  assert np.max(np.abs(run(jax.random.key(1)) - plain)) > 1e-3
  assert not np.array_equal(run(jax.random.key(1)), run(jax.random.key(2)))
  np.testing.assert_array_equal(run(jax.random.key(1), train=False), run(train=False))
