"""The SegFormer side of `seat_jax.convert`: MiT checkpoints in their two published layouts.

  mit           mmsegmentation / NVlabs `mit_b*.pth` (what DAFormer and MIC load): keys
                patch_embed{i}.proj, block{i}.{j}.attn.{q,kv,sr,norm,proj}, .mlp.{fc1,
                dwconv.dwconv,fc2}, norm{i}; the ImageNet classifier `head.*` is skipped. Keys
                may carry `backbone.` (an mmseg segmentor); a DAFormer decoder in mmseg's layout
                (`decode_head.embed_layers.*`, `.fuse_layer.*`, `.conv_seg.*`) is read too.
  segformer_hf  Hugging Face (`nvidia/mit-b*`, SegformerForSemanticSegmentation /
                ImageClassification): keys segformer.encoder.{patch_embeddings,block,layer_norm}
                with separate query/key/value, or transformers 5's in-memory names
                (segformer.stages.*); `classifier.*` (ImageNet) is skipped, the all-MLP
                `decode_head.*` read.

Both are first rewritten into one reference layout (mmseg's names; Hugging Face's key and value
concatenated into mmseg's `kv`), which `torch_key` maps to Flax paths. The architecture is read
from the tensors (widths, blocks, reduction ratios, MLP ratio, decoder, classes); only the head
counts are not in them: from a Hugging Face `config.json` when one lies beside the weights,
otherwise mmseg's rule (stage width / stage-1 width: heads 1, 2, 5, 8 for every mit_b*).
"""

import re
from typing import Any, Mapping

import numpy as np

FORMATS = ("mit", "segformer_hf")
LN_EPS = {"mit": 1e-6, "segformer_hf": 1e-5}  # block/stage LayerNorms of each implementation

# transformers 5 renamed the modules in memory (its conversion_mapping.py); files keep the old
# names, but a state_dict taken from a live model has the new ones. New -> old, in order.
_HF5_TO_HF4 = (
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj\.", "attention.self.query."),
    (r"attention\.k_proj\.", "attention.self.key."),
    (r"attention\.v_proj\.", "attention.self.value."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"attention\.sequence_reduction\.sequence_reduction\.", "attention.self.sr."),
    (r"attention\.sequence_reduction\.layer_norm\.", "attention.self.layer_norm."),
    (r"mlp\.fc1\.", "mlp.dense1."),
    (r"mlp\.fc2\.", "mlp.dense2."),
    (r"layernorm_before\.", "layer_norm_1."),
    (r"layernorm_after\.", "layer_norm_2."),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
)
# Hugging Face (files' names) -> the reference layout.
_HF_TO_REF = (
    (r"^encoder\.patch_embeddings\.(\d+)\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
    (r"^encoder\.patch_embeddings\.(\d+)\.layer_norm\.",
     lambda m: f"patch_embed{int(m[1]) + 1}.norm."),
    (r"^encoder\.layer_norm\.(\d+)\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"^decode_head\.linear_c\.(\d+)\.proj\.", r"decode_head.linear_c.\1.proj."),
    (r"^decode_head\.linear_fuse\.weight$", "decode_head.linear_fuse.conv.weight"),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
)
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def detect(keys) -> str | None:
  """'mit', 'segformer_hf', or None for a file of neither layout."""
  keys = {_strip(k) for k in keys}
  if "patch_embed1.proj.weight" in keys:
    return "mit"
  if {"encoder.patch_embeddings.0.proj.weight", "stages.0.patch_embeddings.proj.weight"} & keys:
    return "segformer_hf"
  return None


def _strip(key: str) -> str:
  for prefix in ("segformer.", "backbone."):
    key = key.removeprefix(prefix)
  return key


def to_reference_layout(state: Mapping[str, np.ndarray], fmt: str
                        ) -> tuple[dict[str, np.ndarray], list[str]]:
  """(the tensors under the reference layout's names, the keys deliberately skipped)."""
  out, skipped = {}, []
  for key, value in state.items():
    if key.endswith(".num_batches_tracked"):
      continue
    if key.startswith("decode_head."):
      name = key
    else:
      name = _strip(key)
    if fmt == "mit":
      if name.startswith("head.") or (name.startswith("decode_head.") and not
                                      name.startswith(("decode_head.embed_layers.",
                                                       "decode_head.fuse_layer.",
                                                       "decode_head.conv_seg."))):
        skipped.append(key)  # the ImageNet classifier; a decoder other than DAFormer's
        continue
      out[name] = value
      continue
    if name.startswith("classifier."):
      skipped.append(key)  # SegformerForImageClassification's ImageNet classifier
      continue
    for new, old in _HF5_TO_HF4:
      name = re.sub(new, old, name)
    for pattern, replacement in _HF_TO_REF:
      name = re.sub(pattern, replacement, name)
    out[name] = value
  if fmt == "segformer_hf":  # Hugging Face's key and value -> mmseg's kv (key rows first)
    for name in [n for n in out if ".attention.self.key." in n]:
      kv = name.replace(".attention.self.key.", ".attn.kv.")
      value_name = name.replace(".attention.self.key.", ".attention.self.value.")
      out[kv] = np.concatenate([out.pop(name), out.pop(value_name)], axis=0)
  return out, skipped


def infer_model_config(state: Mapping[str, np.ndarray], fmt: str,
                       hf_config: Mapping[str, Any] | None = None):
  """The SegFormer model config of the reference-layout `state`'s own architecture (plain
  norms): widths, blocks and reduction ratios from the tensors, heads as the module doc says,
  the decoder (and classes) from its tensors, the default decoder when the file has none."""
  from seat_jax import config_defaults  # pylint: disable=g-import-not-at-top  (keeps --help fast)
  cfg = config_defaults.get_model_config()
  cfg.name = "segformer"
  cfg.norm_mode = "shared"
  dims, depths, srs = [], [], []
  for i in range(1, 5):
    weight = state.get(f"patch_embed{i}.proj.weight")
    if weight is None:
      raise KeyError(f"patch_embed{i}.proj.weight")
    dims.append(int(weight.shape[0]))
    blocks = {int(k.split(".")[1]) for k in state if k.startswith(f"block{i}.")}
    depths.append(max(blocks) + 1 if blocks else 0)
    sr = state.get(f"block{i}.0.attn.sr.weight")
    srs.append(int(sr.shape[-1]) if sr is not None else 1)
  fc1 = state.get("block1.0.mlp.fc1.weight")
  heads = (hf_config or {}).get("num_attention_heads") or [d // dims[0] for d in dims]
  cfg.mit.update(embed_dims=tuple(dims), depths=tuple(depths), sr_ratios=tuple(srs),
                 num_heads=tuple(int(h) for h in heads), layer_norm_eps=LN_EPS[fmt],
                 mlp_ratio=int(fc1.shape[0]) // dims[0] if fc1 is not None else 4)
  if "decode_head.conv_seg.weight" in state:
    embed = state["decode_head.embed_layers.0.proj.weight"]
    branches = {int(k.split(".")[3]) for k in state
                if k.startswith("decode_head.fuse_layer.aspp_modules.")}
    if len(branches) != len(cfg.decoder.dilations):
      raise ValueError(f"the DAFormer decoder has {len(branches)} ASPP branches; this converter "
                       f"knows daformer_sepaspp's {len(cfg.decoder.dilations)} (dilations "
                       f"{tuple(cfg.decoder.dilations)}).")
    cfg.decoder.update(name="daformer", embed_dims=int(embed.shape[0]),
                       channels=int(state["decode_head.conv_seg.weight"].shape[1]))
    cfg.num_classes = int(state["decode_head.conv_seg.weight"].shape[0])
  elif "decode_head.linear_pred.weight" in state:
    pred = state["decode_head.linear_pred.weight"]
    cfg.decoder.update(name="segformer", channels=int(pred.shape[1]),
                       embed_dims=int(pred.shape[1]))
    cfg.num_classes = int(pred.shape[0])
  return cfg


def has_decoder(state: Mapping[str, np.ndarray], decoder: str) -> bool:
  """Whether the reference-layout `state` holds a decoder of this kind."""
  key = {"daformer": "decode_head.conv_seg.weight",
         "segformer": "decode_head.linear_pred.weight"}[decoder]
  return key in state


_PATTERNS = (
    (re.compile(r"^backbone/block(\d+)_(\d+)/mlp/dwconv$"), r"block\1.\2.mlp.dwconv.dwconv"),
    (re.compile(r"^backbone/block(\d+)_(\d+)/(.+)$"), r"block\1.\2.\3"),
    (re.compile(r"^backbone/(patch_embed\d|norm\d)(/.*)?$"), r"\1\2"),
    (re.compile(r"^decode_head/embed(\d+)$"), r"decode_head.embed_layers.\1.proj"),
    (re.compile(r"^decode_head/aspp(\d+)/(depthwise|pointwise)/(conv|bn)$"),
     r"decode_head.fuse_layer.aspp_modules.\1.\2_conv.\3"),
    (re.compile(r"^decode_head/aspp(\d+)/(conv|bn)$"),
     r"decode_head.fuse_layer.aspp_modules.\1.\2"),
    (re.compile(r"^decode_head/bottleneck/(conv|bn)$"), r"decode_head.fuse_layer.bottleneck.\1"),
    (re.compile(r"^decode_head/linear_c(\d+)$"), r"decode_head.linear_c.\1.proj"),
    (re.compile(r"^decode_head/(conv_seg|linear_pred|linear_fuse/conv|linear_fuse/bn)$"),
     r"decode_head.\1"),
)


def torch_key(flax_path) -> str:
  """The reference-layout key of one Flax variable of `models.SegFormer`.

  E.g. ('backbone', 'block3_1', 'attn', 'kv', 'kernel') -> 'block3.1.attn.kv.weight';
  ('decode_head', 'aspp2', 'depthwise', 'bn', 'target_var') ->
  'decode_head.fuse_layer.aspp_modules.2.depthwise_conv.bn.running_var'.
  """
  *module_path, leaf = flax_path
  module = "/".join(module_path)
  for pattern, replacement in _PATTERNS:
    if pattern.match(module):
      prefix = pattern.sub(replacement, module).replace("/", ".")
      break
  else:
    raise KeyError(f"The converter does not know the Flax variable {'/'.join(flax_path)}.")
  if leaf == "kernel":
    return prefix + ".weight"
  kind = leaf.rsplit("_", 1)[-1]  # norms: scale | bias | mean | var, maybe domain-prefixed
  is_norm = module_path[-1] in ("bn", "norm") or re.fullmatch(r"norm\d", module_path[-1])
  if is_norm:
    return f"{prefix}.{_BN_LEAVES[kind]}"
  if leaf == "bias":
    return prefix + ".bias"
  raise KeyError(f"The converter does not know the variable {'/'.join(flax_path)}.")


def is_head(torch_name: str) -> bool:
  return torch_name.startswith("decode_head.")


def to_flax_layout(value: np.ndarray) -> np.ndarray:
  """OIHW conv weights -> HWIO; Linear (out, in) -> (in, out); vectors unchanged."""
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


def torch_shape(flax_shape) -> tuple[int, ...]:
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:
    return tuple(flax_shape[::-1])
  return tuple(flax_shape)
