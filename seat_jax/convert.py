"""Imports PyTorch DeepLab-V2 / torchvision ResNet, mmseg ResNetV1c and MiT (SegFormer) weights
into seat_jax Flax variables.

    python -m seat_jax.convert --torch=FILE.pth --out=DIR
        [--format=auto|deeplab|torchvision|resnet_v1c|mit|segformer_hf] [--overwrite]

ResNetV1c files: mmseg's `open-mmlab://resnet101_v1c` (resnet101_v1c-e67eebb6.pth, DAFormer's
and MIC's DeepLabV2 init) or any mmseg segmentor with that backbone: keys stem.{0,1,3,4,6,7}.*
(the deep stem's convs and BatchNorms) and torchvision-style layerN.i.{conv,bn}{1,2,3}.* /
.downsample.{0,1}.*, with or without `backbone.`. They convert to `model.resnet_variant=v1c`,
`model.input_normalisation=imagenet` variables, backbone only: an ImageNet classifier `fc.*` and
mmseg heads (`decode_head.*`, `auxiliary_head.*`) are skipped.

MiT files: mmsegmentation's `mit_b*.pth` (DAFormer's and MIC's init) or a Hugging Face
`nvidia/mit-b*` download (its directory, model.safetensors or pytorch_model.bin); see
`convert_mit` for the layouts. They convert to `model.name=segformer` variables the same way:
the file's own encoder with plain norms (and its decoder when it has one), and every SegFormer
preset starts from it in any norm mode.

reads the architecture from the file (blocks per stage, width, heads) and writes it once, as the
file holds it, with plain BatchNorms, as an orbax checkpoint (items `model` and `meta`, see
`checkpointing.save_variables`). Any preset then starts from it with `--config.init_from=DIR`:
`warm_start` copies every BatchNorm into each domain slot of the preset's norms and initialises
the heads the file does not provide for that preset (torchvision files, the DeepLab COCO/ImageNet
init whose `layer5` is a classifier on layer4, another class count) freshly, as the
AdaptSegNet/ADVENT loaders skip them. Heads the file has for its own layer3/layer4 (a released
trained model) are kept, so such a model can be evaluated directly.

PyTorch is needed only here (`pip install -e '.[torch]'`); files are read with
`torch.load(weights_only=True)`, so a checkpoint cannot run code.
"""

import dataclasses
import os
import re
import shutil
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import traverse_util

from seat_jax import cli
from seat_jax import convert_mit
from seat_jax import errors

FORMATS = ("auto", "deeplab", "torchvision", "resnet_v1c") + convert_mit.FORMATS
UNDERSTOOD_FORMATS = (
    "a file written by torch.save holding a state_dict (bare, or wrapped as {'state_dict': ...} "
    "or {'model': ...}) of either (a) a DeepLab-V2 ResNet-101 in the AdaptSegNet/ADVENT layout "
    "(conv1.weight, bn1.*, layer1-4.*, optional heads layer5/layer6.conv2d_list.*, keys with or "
    "without a 'Scale.' prefix), or (b) a torchvision ResNet-101 (the same backbone keys plus "
    "fc.*), or (c) an mmseg ResNetV1c such as resnet101_v1c-e67eebb6.pth (stem.0.weight, "
    "stem.1.*, ..., layer1-4.*, with or without 'backbone.'), or (d) an mmseg MiT mit_b*.pth "
    "(patch_embed1.proj.weight, block1.0.*, norm1.*), or (e) a Hugging Face SegFormer "
    "(segformer.encoder.*; its directory, model.safetensors or pytorch_model.bin)")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Prefixes that wrappers add in front of every key: the Caffe-converted DeepLab init uses
# `Scale.`, nn.DataParallel uses `module.`.
KEY_PREFIXES = ("module.", "Scale.")
IGNORED_SUFFIXES = (".num_batches_tracked",)
HEAD_MODULES = {"aux_head": "layer5", "main_head": "layer6"}
# A ResNetV1c file's tensors that the backbone-only conversion leaves out: ImageNet's classifier
# and an mmseg segmentor's heads.
V1C_SKIPPED_PREFIXES = ("fc.", "decode_head.", "auxiliary_head.")
V1C_PREFIX = "backbone."  # an mmseg segmentor's backbone keys
BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_MAX_LISTED = 25


class CheckpointError(errors.InvalidInputError):
  """A PyTorch file that cannot be converted for this model config."""


@dataclasses.dataclass
class Conversion:
  """Converted variables plus what happened to every tensor of the file."""
  variables: dict
  format: str
  converted_keys: list[str]
  skipped_keys: list[str]  # present in the file, deliberately not used (fc.*, foreign heads)
  ignored_keys: list[str]  # bookkeeping tensors (num_batches_tracked)
  heads_from_checkpoint: bool
  heads_note: str
  num_params: int
  model_config: Any = None  # the model the variables are for

  def metadata(self, source: str, model_config: Any, seed: int) -> dict:
    return dict(
        source=os.path.abspath(source), format=self.format, seed=seed,
        heads_from_checkpoint=self.heads_from_checkpoint, heads_note=self.heads_note,
        num_converted_tensors=len(self.converted_keys),
        num_skipped_tensors=len(self.skipped_keys), skipped_keys=self.skipped_keys,
        num_params=self.num_params, model_config=_config_dict(model_config))


# ----------------------------------------------------------------------------- reading the file


def weights_file(path: str) -> str:
  """The file holding the weights: `path` itself, or a Hugging Face directory's weights."""
  if os.path.isdir(path):
    for name in HF_WEIGHT_FILES:
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    raise errors.MissingInputError(
        f"{path!r} is a directory without {' or '.join(HF_WEIGHT_FILES)}; give the .pth file or "
        "a Hugging Face model directory.")
  return path


def read_hf_config(path: str) -> dict | None:
  """The config.json beside Hugging Face weights (its head counts), or None."""
  import json  # pylint: disable=g-import-not-at-top
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(folder, "config.json")
  if not os.path.isfile(config_path):
    return None
  with open(config_path) as f:
    return json.load(f)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a .pth/.bin/.safetensors file (or a Hugging Face directory) safely and returns its
  tensors as float arrays, keys without prefixes."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  except ImportError as e:
    raise errors.MissingInputError(
        "Reading PyTorch checkpoints needs PyTorch: pip install -e '.[torch]' (the CPU wheel "
        "torch==2.13.0 is enough).") from e
  if not os.path.exists(path):
    raise errors.MissingInputError(f"PyTorch checkpoint {path!r} does not exist.")
  path = weights_file(path)
  try:
    if path.endswith(".safetensors"):
      from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
      obj = load_file(path, device="cpu")
    else:
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError)
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint that can be read safely "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
        f"Understood: {UNDERSTOOD_FORMATS}.") from e
  state = _unwrap(obj)
  tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if state else {}
  if not tensors:
    raise CheckpointError(
        f"{path} holds a {type(obj).__name__} without tensors, not a state_dict. "
        f"Understood: {UNDERSTOOD_FORMATS}.")
  out = {}
  for key, value in tensors.items():
    key = _strip_prefixes(key)
    if key in out:
      raise CheckpointError(f"{path}: key {key!r} appears twice once prefixes are stripped.")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
      value = value.float()  # numpy has no bfloat16; half precision files load as float32
    out[key] = value.numpy()
  return out


def _unwrap(obj: Any) -> Mapping[str, Any] | None:
  if isinstance(obj, Mapping):
    for wrapper in ("state_dict", "model"):
      if isinstance(obj.get(wrapper), Mapping):
        return obj[wrapper]
    return obj
  return None


def _strip_prefixes(key: str) -> str:
  stripped = True
  while stripped:
    stripped = False
    for prefix in KEY_PREFIXES:
      if key.startswith(prefix):
        key, stripped = key[len(prefix):], True
  return key


def detect_format(keys: Sequence[str], source: str = "checkpoint") -> str:
  """'mit' or 'segformer_hf' for MiT files (`convert_mit.detect`); 'resnet_v1c' for a deep stem
  (stem.0.weight); 'torchvision' if the file has the ImageNet classifier fc.*, 'deeplab' for a
  ResNet without it."""
  keys = set(keys)
  mit = convert_mit.detect(keys)
  if mit:
    return mit
  if {"stem.0.weight", V1C_PREFIX + "stem.0.weight"} & keys:
    return "resnet_v1c"
  if "conv1.weight" not in keys or not any(k.startswith("layer1.") for k in keys):
    sample = sorted(keys)[:5]
    raise CheckpointError(
        f"{source} has no ResNet keys (conv1.weight, layer1.*); its first keys are {sample}. "
        f"Understood: {UNDERSTOOD_FORMATS}.")
  return "torchvision" if any(k.startswith("fc.") for k in keys) else "deeplab"


# ------------------------------------------------------------------ Flax name -> PyTorch name

# The V1c deep stem's modules at their index in mmseg's nn.Sequential (ReLUs at 2, 5, 8).
_V1C_STEM_INDEX = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}
_BACKBONE_PATTERNS = (
    (re.compile(r"^(conv1|bn1)$"), r"\1"),
    (re.compile(r"^stem/((?:conv|bn)[123])$"), lambda m: f"stem.{_V1C_STEM_INDEX[m[1]]}"),
    (re.compile(r"^layer(\d)/block0/downsample_conv$"), r"layer\1.0.downsample.0"),
    (re.compile(r"^layer(\d)/block0/downsample_bn$"), r"layer\1.0.downsample.1"),
    (re.compile(r"^layer(\d)/block(\d+)/((?:conv|bn)\d)$"), r"layer\1.\2.\3"),
)
_HEAD_PATTERN = re.compile(r"^(aux_head|main_head)/branch(\d+)$")


def torch_key(flax_path: Sequence[str]) -> str:
  """The PyTorch key holding the value of one Flax variable (model contract key mapping).

  E.g. ('layer3', 'block0', 'downsample_bn', 'target_var') -> 'layer3.0.downsample.1.running_var';
  ('stem', 'bn2', 'scale') -> 'stem.4.weight' (ResNetV1c).
  """
  *module_path, leaf = flax_path
  module = "/".join(module_path)
  head = _HEAD_PATTERN.match(module)
  if head:
    if leaf not in ("kernel", "bias"):
      raise KeyError(f"Unknown head variable {'/'.join(flax_path)}.")
    name = {"kernel": "weight", "bias": "bias"}[leaf]
    return f"{HEAD_MODULES[head.group(1)]}.conv2d_list.{head.group(2)}.{name}"
  for pattern, replacement in _BACKBONE_PATTERNS:
    if pattern.match(module):
      prefix = pattern.sub(replacement, module)
      break
  else:
    raise KeyError(f"The converter does not know the Flax variable {'/'.join(flax_path)}.")
  if leaf == "kernel":
    return prefix + ".weight"
  # SEAT norm leaves: scale | bias | mean | var, optionally prefixed by the domain.
  kind = leaf.rsplit("_", 1)[-1]
  if kind not in BN_LEAVES:
    raise KeyError(f"The converter does not know the norm variable {'/'.join(flax_path)}.")
  return f"{prefix}.{BN_LEAVES[kind]}"


def _is_head(torch_name: str) -> bool:
  return torch_name.startswith(("layer5.", "layer6."))


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  """OIHW conv weights -> HWIO; vectors unchanged."""
  return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def _torch_shape(flax_shape: Sequence[int]) -> tuple[int, ...]:
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(flax_shape)


# ------------------------------------------------------------------------------- conversion


# XLA's full optimisation of `init` takes minutes for ResNet-101 on CPU and buys nothing for a
# program that runs once; these are the options `jax_disable_most_optimizations` sets.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
def _segmenter(model_config: Any):
  from seat_jax import models  # pylint: disable=g-import-not-at-top  (keeps --help fast)

  return models.build_segmenter(model_config)


def abstract_variables(model_config: Any) -> dict:
  """Shapes and dtypes of the model's variables (no computation)."""
  from seat_jax import models  # pylint: disable=g-import-not-at-top  (keeps --help fast)

  return jax.eval_shape(lambda rng: models.init_variables(_segmenter(model_config), rng),
                        jax.random.PRNGKey(0))


def init_head_params(model_config: Any, seed: int = 0) -> dict:
  """`init(PRNGKey(seed))['params']` restricted to the heads, without computing the rest.

  Only the heads are returned, so jit prunes the backbone's initialisers and forward pass.
  """
  from seat_jax import models  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  module = _segmenter(model_config)

  def heads(rng):
    params = models.init_variables(module, rng)["params"]
    return {name: params[name] for name in (*HEAD_MODULES, "decode_head") if name in params}

  rng = jax.random.PRNGKey(seed)
  return jax.jit(heads).lower(rng).compile(compiler_options=_FAST_COMPILE)(rng)


def v1c_layout(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """(a ResNetV1c file's backbone tensors without `backbone.`, the keys it skips)."""
  out, skipped = {}, []
  for key, value in state.items():
    if key.startswith(V1C_SKIPPED_PREFIXES):
      skipped.append(key)
      continue
    name = key.removeprefix(V1C_PREFIX)
    if name in out:
      raise CheckpointError(f"key {name!r} appears with and without {V1C_PREFIX!r}.")
    out[name] = value
  return out, sorted(skipped)


def infer_model_config(state: Mapping[str, np.ndarray], fmt: str) -> ml_collections.ConfigDict:
  """The model config of the file's own architecture, with plain BatchNorms.

  Blocks per stage from the `layerN.i.*` keys, the width from the stem conv, the class count
  from the heads (19 when the file has none it can use). ResNetV1c: the V1c variant with the
  ImageNet normalisation its weights expect.
  """
  from seat_jax import config_defaults  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  cfg = config_defaults.get_model_config()
  stages = []
  for layer in range(1, 5):
    blocks = {int(k.split(".")[1]) for k in state
              if k.startswith(f"layer{layer}.") and k.split(".")[1].isdigit()}
    if not blocks:
      raise CheckpointError(f"The file has no layer{layer}.* keys. Understood: "
                            f"{UNDERSTOOD_FORMATS}.")
    stages.append(max(blocks) + 1)
  cfg.stage_sizes = tuple(stages)
  cfg.norm_mode = "shared"
  if fmt == "resnet_v1c":
    cfg.resnet_variant, cfg.input_normalisation = "v1c", "imagenet"
    stem, planes = state.get("stem.6.weight"), state.get("layer1.0.conv1.weight")
    if stem is None or planes is None or stem.shape[0] != planes.shape[0]:
      raise CheckpointError(
          "The ResNetV1c file's stem width (stem.6.weight) must equal layer1's planes "
          "(layer1.0.conv1.weight), as in mmseg's ResNets (stem_channels = base_channels = 64); "
          f"found {None if stem is None else stem.shape} and "
          f"{None if planes is None else planes.shape}.")
    cfg.base_width = int(planes.shape[0])
    return cfg
  cfg.base_width = int(state["conv1.weight"].shape[0])
  head = state.get("layer6.conv2d_list.0.weight", state.get("layer5.conv2d_list.0.weight"))
  if fmt == "deeplab" and head is not None and head.ndim == 4:
    cfg.num_classes = int(head.shape[0])
  return cfg


def convert_state_dict(state: Mapping[str, np.ndarray], model_config: Any = None,
                       fmt: str = "auto", seed: int = 0, source: str = "checkpoint",
                       hf_config: Mapping[str, Any] | None = None) -> Conversion:
  """The variables of a (prefix-stripped) state_dict.

  Without `model_config`: the file's own architecture (`infer_model_config`), heads only where
  the file has them for that model. With one: exactly `build_segmenter(model_config).init`'s
  tree, heads the file cannot give taken from `init` with `seed`. `hf_config`: a Hugging Face
  config.json's content (MiT head counts).
  """
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}.")
  if fmt == "auto":
    fmt = detect_format(state.keys(), source)
  if fmt in convert_mit.FORMATS:
    return _convert_mit(state, model_config, fmt, seed, source, hf_config)
  v1c_skipped = []
  if fmt == "resnet_v1c":
    state, v1c_skipped = v1c_layout(state)
  keep_random_heads = model_config is not None
  if model_config is None:
    model_config = infer_model_config(state, fmt)
  load_heads, heads_note = _head_decision(state, model_config, fmt)
  abstract = abstract_variables(model_config)
  random_heads = traverse_util.flatten_dict(
      {"params": init_head_params(model_config, seed)}) if keep_random_heads and not load_heads \
      else {}

  ignored = sorted(k for k in state if k.endswith(IGNORED_SUFFIXES))
  skipped = v1c_skipped + sorted(k for k in state if (fmt == "torchvision" and k.startswith("fc."))
                                 or (not load_heads and _is_head(k)))
  used, missing, bad_shapes = set(), [], []
  out = {}
  for collection, tree in abstract.items():
    flat = traverse_util.flatten_dict(tree)
    new_flat = {}
    for path, expected in flat.items():
      name = torch_key(path)
      if _is_head(name) and not load_heads:
        if keep_random_heads:
          new_flat[path] = random_heads[(collection, *path)]
        continue
      if name not in state:
        missing.append(name)
        continue
      found = np.asarray(state[name])
      if found.shape != _torch_shape(expected.shape):
        bad_shapes.append(f"{name}: expected shape {_torch_shape(expected.shape)} "
                          f"(Flax {collection}/{'/'.join(path)} {tuple(expected.shape)}), "
                          f"found {found.shape}")
        continue
      used.add(name)
      new_flat[path] = jnp.asarray(_to_flax_layout(found), dtype=expected.dtype)
    out[collection] = traverse_util.unflatten_dict(new_flat)
  unexpected = sorted(set(state) - used - set(skipped) - set(ignored))
  _raise_on_mismatch(source, fmt, sorted(set(missing)), unexpected, bad_shapes)

  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(out.get("params")))
  return Conversion(
      variables=out, format=fmt, converted_keys=sorted(used), skipped_keys=skipped,
      ignored_keys=ignored, heads_from_checkpoint=load_heads, heads_note=heads_note,
      num_params=num_params, model_config=model_config)


def _convert_mit(state: Mapping[str, np.ndarray], model_config: Any, fmt: str, seed: int,
                 source: str, hf_config: Mapping[str, Any] | None) -> Conversion:
  """`convert_state_dict` for the MiT layouts (`convert_mit`), with the same bookkeeping."""
  ref, skipped = convert_mit.to_reference_layout(state, fmt)
  ignored = sorted(k for k in state if k.endswith(IGNORED_SUFFIXES))
  keep_random_heads = model_config is not None
  try:
    inferred = convert_mit.infer_model_config(ref, fmt, hf_config)
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{source} (format {fmt!r}) is not a MiT the converter can read: "
                          f"{e}. Understood: {UNDERSTOOD_FORMATS}.") from e
  if model_config is None:
    model_config = inferred
  decoder = str(model_config.decoder.name)
  load_heads = convert_mit.has_decoder(ref, decoder) and (
      int(inferred.num_classes) == int(model_config.num_classes))
  if load_heads:
    heads_note = f"the {decoder} decoder from the file"
  elif any(convert_mit.is_head(k) for k in ref):
    heads_note = (f"the file's decoder ({inferred.decoder.name}, {inferred.num_classes} classes) "
                  f"is not this model's ({decoder}, {model_config.num_classes}): skipped")
    skipped += sorted(k for k in ref if convert_mit.is_head(k))
  else:
    heads_note = "an encoder without a decoder (ImageNet weights): no decoder"
  abstract = abstract_variables(model_config)
  random_heads = (traverse_util.flatten_dict({"params": init_head_params(model_config, seed)})
                  if keep_random_heads and not load_heads else {})
  used, missing, bad_shapes, out = set(), [], [], {}
  for collection, tree in abstract.items():
    new_flat = {}
    for path, expected in traverse_util.flatten_dict(tree).items():
      name = convert_mit.torch_key(path)
      if convert_mit.is_head(name) and not load_heads:
        if keep_random_heads:
          new_flat[path] = random_heads[(collection, *path)]
        continue
      if name not in ref:
        missing.append(name)
        continue
      found = np.asarray(ref[name])
      if found.shape != convert_mit.torch_shape(expected.shape):
        bad_shapes.append(f"{name}: expected shape {convert_mit.torch_shape(expected.shape)} "
                          f"(Flax {collection}/{'/'.join(path)} {tuple(expected.shape)}), "
                          f"found {found.shape}")
        continue
      used.add(name)
      new_flat[path] = jnp.asarray(convert_mit.to_flax_layout(found), dtype=expected.dtype)
    out[collection] = traverse_util.unflatten_dict(new_flat)
  unexpected = sorted(set(ref) - used - set(skipped))
  _raise_on_mismatch(source, fmt, sorted(set(missing)), unexpected, bad_shapes)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(out.get("params")))
  return Conversion(
      variables=out, format=fmt, converted_keys=sorted(used), skipped_keys=sorted(skipped),
      ignored_keys=ignored, heads_from_checkpoint=load_heads, heads_note=heads_note,
      num_params=num_params, model_config=model_config)


def _head_decision(state: Mapping[str, np.ndarray], model_config: Any, fmt: str) -> tuple[bool, str]:
  """Whether the file's layer5/layer6 are this model's aux/main heads (else they stay random)."""
  if fmt == "torchvision":
    return False, "torchvision ImageNet backbone: fc.* skipped, no heads"
  if fmt == "resnet_v1c":
    return False, ("mmseg ResNetV1c backbone: no heads (fc.*, decode_head.*, auxiliary_head.* "
                   "skipped)")
  if not any(_is_head(k) for k in state):
    return False, "the file has no layer5/layer6: no heads"
  aux_in = model_config.base_width * 16
  weight = state.get("layer5.conv2d_list.0.weight")
  if weight is not None and weight.ndim == 4:
    classes, in_channels = weight.shape[:2]
    if in_channels != aux_in:
      return False, (f"layer5 classifies {in_channels}-channel features (the DeepLab "
                     f"COCO/ImageNet init's classifier on layer4), not the {aux_in}-channel "
                     "layer3 output: layer5/layer6 skipped, no heads")
    if classes != model_config.num_classes:
      return False, (f"the file's heads predict {classes} classes, the model "
                     f"{model_config.num_classes}: layer5/layer6 skipped, no heads")
  return True, "both heads (layer5 -> aux_head, layer6 -> main_head) from the file"


def _raise_on_mismatch(source: str, fmt: str, missing: list[str], unexpected: list[str],
                       bad_shapes: list[str]) -> None:
  if not (missing or unexpected or bad_shapes):
    return
  parts = [f"{source} (format {fmt!r}) does not match the model config:"]
  if bad_shapes:
    parts.append(f"{len(bad_shapes)} shape mismatch(es):\n  " + _listing(bad_shapes))
  if missing:
    parts.append(f"{len(missing)} missing key(s) the model needs:\n  " + _listing(missing))
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected key(s) the model has no place for:\n  " +
                 _listing(unexpected))
  if fmt in convert_mit.FORMATS:
    parts.append("Check model.mit.* / model.decoder.* / num_classes against the file (MiT-B5: "
                 f"{dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3))}) and --format.")
  else:
    parts.append("Check model.stage_sizes / base_width / num_classes against the file "
                 "(ResNet-101 is stage_sizes=(3, 4, 23, 3), base_width=64), "
                 "model.resnet_variant (v1c for a stem.* file, caffe for conv1.*) and --format.")
  raise CheckpointError("\n".join(parts))


def _listing(items: list[str]) -> str:
  shown = items[:_MAX_LISTED]
  more = f"\n  ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
  return "\n  ".join(shown) + more


def convert_checkpoint(path: str, model_config: Any, fmt: str = "auto",
                       seed: int = 0) -> Conversion:
  """Reads `path` and converts it; see `Conversion` for the bookkeeping."""
  return convert_state_dict(read_state_dict(path), model_config, fmt, seed, source=path,
                            hf_config=read_hf_config(path))


def load_torch_checkpoint(path: str, model_config: Any, fmt: str = "auto",
                          seed: int = 0) -> dict:
  """Flax variables {params, batch_stats} for `build_segmenter(model_config)` from a .pth file."""
  return convert_checkpoint(path, model_config, fmt, seed).variables


def _config_dict(model_config: Any) -> dict:
  if isinstance(model_config, ml_collections.ConfigDict):
    model_config = model_config.to_dict()
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(model_config).items()}


# -------------------------------------------------------------------------------------- CLI


_TORCH = flags.DEFINE_string("torch", None, "The PyTorch .pth file.")
_OUT = flags.DEFINE_string("out", None, "The orbax checkpoint directory to write.")
_FORMAT = flags.DEFINE_enum("format", "auto", FORMATS, "The file's layout.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the converted checkpoint that --out already holds.")


def check_output_dir(out: str, overwrite: bool) -> bool:
  """Whether `out` holds an earlier conversion to replace (only with `overwrite`).

  A new or empty folder is fine. A folder holding one converted checkpoint (step 0 only) is
  refused unless `overwrite`; any other non-empty folder (a training run, other files) is always
  refused, so --overwrite can never delete a run.
  """
  from seat_jax import checkpointing  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  path = os.path.abspath(out)
  if not os.path.exists(path):
    return False
  if not os.path.isdir(path):
    raise errors.UsageError(f"--out={out} is a file, not a folder; choose a new folder.")
  entries = sorted(os.listdir(path))
  if not entries:
    return False
  step0 = os.path.join(path, "0")
  items = {e for e in os.listdir(step0) if not e.startswith("_")} if entries == ["0"] and \
      os.path.isdir(step0) else set()
  # A conversion is one step of two items; a training run's steps hold more (opt_state, ...).
  if {checkpointing.MODEL, checkpointing.META} <= items <= {
      checkpointing.MODEL, checkpointing.META, "commit_success.txt"}:
    if overwrite:
      return True
    raise errors.UsageError(
        f"--out={out} already holds a converted checkpoint ({os.path.join(path, '0')}).\n"
        "Add --overwrite to replace it, or choose another --out.")
  shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
  raise errors.UsageError(
      f"--out={out} is not empty ({shown}) and is not a converted checkpoint; convert writes a "
      "new folder. Choose a new or empty --out.")


def run(argv: Sequence[str]) -> int:
  from seat_jax import checkpointing  # pylint: disable=g-import-not-at-top  (keeps --help fast)

  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {list(argv[1:])}; see --help.")
  for flag in (_TORCH, _OUT):
    if not flag.value:
      raise errors.UsageError(f"--{flag.name} is required.")
  replace = check_output_dir(_OUT.value, _OVERWRITE.value)  # before the slow part
  result = convert_checkpoint(_TORCH.value, None, _FORMAT.value)
  cfg = result.model_config
  if replace:
    shutil.rmtree(os.path.join(os.path.abspath(_OUT.value), "0"))
  checkpointing.save_variables(_OUT.value, result.variables,
                               result.metadata(_TORCH.value, cfg, 0))
  num_bn = sum(1 for k in result.converted_keys if k.endswith(".running_mean"))
  num_ln = (sum(1 for k in result.converted_keys if k.endswith(".weight") and
                re.search(r"(^|\.)norm\d?\.weight$", k)) if result.format in convert_mit.FORMATS
            else 0)
  print(f"Converted {_TORCH.value} (format {result.format}) -> {os.path.abspath(_OUT.value)}\n"
        f"  model:             {_model_line(cfg, result.heads_from_checkpoint)}\n"
        f"  tensors converted: {len(result.converted_keys)} ({num_bn} BatchNorms"
        f"{f', {num_ln} LayerNorms' if num_ln else ''})\n"
        f"  tensors skipped:   {len(result.skipped_keys)}"
        f"{' (' + _short(result.skipped_keys) + ')' if result.skipped_keys else ''}\n"
        f"  ignored:           {len(result.ignored_keys)} num_batches_tracked\n"
        f"  heads:             {result.heads_note}\n"
        f"  model parameters:  {result.num_params:,}\n"
        f"{_presets_of(result.format)} start from it: "
        f"--config.init_from={os.path.abspath(_OUT.value)} (its norms fill each domain "
        "slot; heads it lacks for the preset start fresh).")
  return 0


def _presets_of(fmt: str) -> str:
  """Which presets a conversion of format `fmt` starts."""
  if fmt in convert_mit.FORMATS:
    return "Every SegFormer preset (model.name=segformer)"
  if fmt == "resnet_v1c":
    return ("The DeepLabV2 presets with model.resnet_variant=v1c (configs/*.py:daformer_dlv2*, "
            ":mic_dlv2*)")
  return "Every DeepLabV2 preset with the Caffe ResNet (model.resnet_variant=caffe)"


def _model_line(cfg, with_heads: bool) -> str:
  heads = f"heads for {cfg.num_classes} classes" if with_heads else "backbone only"
  if cfg.get("name", "deeplabv2") == "segformer":
    return (f"SegFormer MiT embed_dims {tuple(cfg.mit.embed_dims)}, depths "
            f"{tuple(cfg.mit.depths)}, " + (f"{cfg.decoder.name} decoder for {cfg.num_classes} "
                                             "classes" if with_heads else "encoder only"))
  variant = "ResNetV1c (ImageNet input normalisation), " if cfg.get(
      "resnet_variant", "caffe") == "v1c" else ""
  return (f"{variant}stage_sizes {tuple(cfg.stage_sizes)}, base_width {cfg.base_width}, "
          + heads)


def main(argv: Sequence[str] | None = None) -> int:
  """The command; `argv` without the program name (default sys.argv[1:]). Returns the exit code."""
  argv = sys.argv[1:] if argv is None else argv
  return cli.run(run, ["convert", *argv])


def _short(keys: list[str]) -> str:
  roots = sorted({k.split(".conv2d_list")[0] if _is_head(k) else k.split(".")[0] for k in keys})
  return ", ".join(f"{r}.*" for r in roots)


if __name__ == "__main__":
  sys.exit(main())
