"""Fits stored segmenter variables into the variable tree of any preset's model.

One converted init (the DeepLab COCO init, an ImageNet ResNet, a released AdaptSegNet model) or
another run's checkpoint must start every preset, whatever its norm mode, class count or head
branches. Stored and wanted trees may differ in three ways, each handled as the paper and the
reference code do:
  - norms: a plain BatchNorm or LayerNorm (`scale`, `mean`, ...) fills every domain slot of a
    SAT/SEAT norm (`source_scale`, `target_mean`, ...), which is how the paper starts SEAT;
    per-domain norms into one plain norm need a choice of domain (`init_domain`) unless both
    slots hold the same values, and so do per-domain affines into SAT's shared affine;
  - heads (DeepLabV2's aux_head and main_head, SegFormer's decode_head): a head the stored tree
    lacks, or whose shape differs (another class count, the COCO init's classifier on layer4),
    is taken from the model's fresh initialisation, as AdaptSegNet and ADVENT skip the COCO
    `layer5` and DAFormer starts its decoder on the ImageNet MiT; a stored head's norms are
    fitted like the backbone's;
  - anything else that differs (depth, width) is another model: refused with the entries named.
Pure tree logic on host arrays; no I/O, no JAX compile.
"""

import dataclasses
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from seat_jax import errors

HEADS = ("aux_head", "main_head", "decode_head")  # DeepLabV2's two, SegFormer's one
DOMAINS = ("source", "target")
# DeepLabV2's BatchNorms (bn1-3, V1c stem/bn1-3, downsample_bn), SegFormer's LayerNorms (norm,
# norm1-4) and its decoder's BatchNorms (bn).
_NORM_MODULE = re.compile(r"^(bn\d*|downsample_bn|norm\d*)$")
_NORM_KINDS = ("scale", "bias", "mean", "var")


class IncompatibleModelError(errors.InvalidInputError):
  """The stored variables belong to another model, or need a choice the user has to make."""


@dataclasses.dataclass
class FitReport:
  """What happened to every wanted tensor."""
  loaded: int = 0  # taken as stored
  copied: int = 0  # a plain BatchNorm tensor copied into a domain slot
  norms_copied: set = dataclasses.field(default_factory=set)  # modules whose slots were filled
  domain_chosen: int = 0  # taken from one domain of per-domain norms (init_domain)
  fresh_heads: dict = dataclasses.field(default_factory=dict)  # head -> why it is fresh

  def summary(self) -> str:
    parts = [f"{self.loaded} tensors loaded"]
    if self.norms_copied:
      parts.append(f"{len(self.norms_copied)} BatchNorms copied into every domain slot")
    if self.domain_chosen:
      parts.append(f"{self.domain_chosen} norm tensors taken from one domain (init_domain)")
    by_reason: dict[str, list[str]] = {}
    for head, why in self.fresh_heads.items():
      by_reason.setdefault(why, []).append(head)
    for why, heads in by_reason.items():
      parts.append(f"{' and '.join(heads)} freshly initialised ({why})")
    return "; ".join(parts)


def _split_norm_leaf(leaf: str) -> tuple[str | None, str]:
  """'target_mean' -> ('target', 'mean'); 'scale' -> (None, 'scale')."""
  domain, _, kind = leaf.rpartition("_")
  return (domain or None), kind


def _is_norm(module: tuple[str, ...], leaf: str) -> bool:
  return bool(module) and bool(_NORM_MODULE.match(module[-1])) and (
      _split_norm_leaf(leaf)[1] in _NORM_KINDS)


def _group(flat: Mapping[tuple, Any]) -> dict[tuple, dict[str, Any]]:
  """{(collection, *module): {leaf: value}}."""
  groups: dict[tuple, dict[str, Any]] = {}
  for path, value in flat.items():
    groups.setdefault(path[:-1], {})[path[-1]] = value
  return groups


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def fit_variables(stored: Mapping[str, Any], wanted: Mapping[str, Any], *,
                  fresh: Mapping[str, Any] | None = None, init_domain: str = "",
                  source: str = "the stored model") -> tuple[dict, FitReport]:
  """Stored variables in the tree of `wanted` ({params, batch_stats}); and what was done.

  `wanted` gives the tree and shapes (arrays or ShapeDtypeStructs). `fresh` (same tree, arrays)
  supplies heads the stored tree cannot: without it (evaluation) such heads are an error.
  `init_domain` ('source' | 'target' | '') picks the domain of per-domain stored norms where the
  wanted norm has one slot. `source` names the checkpoint in messages.
  """
  if init_domain not in ("",) + DOMAINS:
    raise ValueError(f"init_domain must be '', 'source' or 'target'; got {init_domain!r}.")
  stored_flat = traverse_util.flatten_dict(dict(stored))
  wanted_flat = traverse_util.flatten_dict(dict(wanted))
  fresh_flat = traverse_util.flatten_dict(dict(fresh)) if fresh is not None else {}
  stored_groups = _group(stored_flat)
  report = FitReport()
  out, used = {}, set()
  missing, shapes, ambiguous, head_problems = set(), [], [], {}

  def record(path, value, how, consumed):
    group = path[:-1]
    out[path] = np.asarray(value)
    used.update(group + (c,) for c in consumed)
    if how == "loaded":
      report.loaded += 1
    elif how == "copied":
      report.copied += 1
      report.norms_copied.add(group[1:])
    else:
      report.domain_chosen += 1

  for path, want in wanted_flat.items():
    if path[1] in HEADS:
      continue  # heads are fitted whole below
    value, how, consumed = _fit_leaf(path, want, stored_groups, init_domain)
    if how == "ambiguous":
      ambiguous.append("/".join(path[:-1]))
    elif how == "missing":
      missing.add("/".join(path[1:-1]))
    elif how == "shape":
      shapes.append(f"{'/'.join(path)}: stored {_shape(value)}, model {_shape(want)}")
    else:
      record(path, value, how, consumed)

  for head in HEADS:
    wanted_head = {p: v for p, v in wanted_flat.items() if p[1] == head}
    if not wanted_head:
      continue  # another segmenter's head
    fitted = {p: _fit_leaf(p, w, stored_groups, init_domain) for p, w in wanted_head.items()}
    if any(how == "ambiguous" for _, how, _ in fitted.values()):
      ambiguous.append(head)
      continue
    if all(how not in ("missing", "shape") for _, how, _ in fitted.values()):
      for path, (value, how, consumed) in fitted.items():
        record(path, value, how, consumed)
      continue
    why = _head_mismatch(wanted_head, stored_flat)
    if fresh is not None:
      for path in wanted_head:
        out[path] = np.asarray(fresh_flat[path])
      report.fresh_heads[head] = why
    else:
      head_problems[head] = why

  unused_backbone = sorted("/".join(p) for p in stored_flat if p[1] not in HEADS and p not in used)
  _raise_problems(source, sorted(missing), shapes, unused_backbone, ambiguous, head_problems)
  return traverse_util.unflatten_dict(out), report


def _fit_leaf(path: tuple, want: Any, stored_groups: Mapping[tuple, Mapping[str, Any]],
              init_domain: str):
  """(value, how, stored leaves consumed) for one wanted leaf; how is loaded | copied | chosen
  (`_norm_value`), or the problem: ambiguous | missing | shape (value: the stored one)."""
  group, leaf = path[:-1], path[-1]
  have = stored_groups.get(group, {})
  if _is_norm(group[1:], leaf):
    value, how, consumed = _norm_value(have, leaf, init_domain)
    if how == "ambiguous":
      return None, how, ()
  else:
    value, how, consumed = have.get(leaf), "loaded", (leaf,)
  if value is None:
    return None, "missing", ()
  if _shape(value) != _shape(want):
    return value, "shape", ()
  return value, how, consumed


def _norm_value(have: Mapping[str, Any], leaf: str, init_domain: str):
  """(value, how, stored leaves consumed) for a wanted norm leaf, from its module's stored ones.

  how: loaded (same leaf) | copied (plain into a domain slot) | chosen (one domain's slot of a
  per-domain stored norm where one slot is wanted: init_domain's, or either when both hold the
  same values) | ambiguous (the slots differ and no domain was chosen).
  """
  if leaf in have:
    return have[leaf], "loaded", (leaf,)
  domain, kind = _split_norm_leaf(leaf)
  if domain is not None:
    return have.get(kind), "copied", (kind,)
  names = tuple(f"{d}_{kind}" for d in DOMAINS)
  if any(n not in have for n in names):
    return None, "loaded", ()
  if init_domain:
    return have[f"{init_domain}_{kind}"], "chosen", names
  if np.array_equal(np.asarray(have[names[0]]), np.asarray(have[names[1]])):
    return have[names[0]], "loaded", names
  return None, "ambiguous", ()


def _head_mismatch(wanted_head: Mapping[tuple, Any], stored_flat: Mapping[tuple, Any]):
  """None when every tensor of the head is stored with its shape, else why not (short)."""
  missing = [p for p in wanted_head if p not in stored_flat]
  if len(missing) == len(wanted_head):
    return "the stored model has none"
  if missing:
    return f"{len(missing)} of its tensors are not stored"
  differing = [(p, _shape(stored_flat[p]), _shape(w)) for p, w in wanted_head.items()
               if _shape(stored_flat[p]) != _shape(w)]
  for path, got, want in differing:
    if path[-1] == "kernel" and len(got) == 4:  # HWIO: say it in classes and channels
      return (f"stored: {got[3]} classes from {got[2]} channels; this model: {want[3]} classes "
              f"from {want[2]} channels")
  for path, got, want in differing:
    return f"stored shape {got}, model {want} at {'/'.join(path[1:])}"
  return None


def _raise_problems(source, missing, shapes, unused, ambiguous, head_problems) -> None:
  if not (missing or shapes or unused or ambiguous or head_problems):
    return
  lines = []
  if missing or shapes or unused:
    lines.append(f"{source} holds a different model than the config describes (check "
                 "model.name, model.resnet_variant (caffe: conv1, v1c: stem/*), "
                 "model.stage_sizes and model.base_width, or model.mit.*, against the stored "
                 "model):")
    if missing:
      lines.append(f"  {len(missing)} modules of this model are not stored: "
                   f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    lines += [f"  shape differs: {e}" for e in shapes[:6]]
    if len(shapes) > 6:
      lines.append(f"  ... and {len(shapes) - 6} more shapes differ")
    if unused:
      lines.append(f"  {len(unused)} stored tensors have no place in this model, e.g. "
                   f"{', '.join(unused[:3])}")
  if ambiguous:
    lines.append(
        f"{source} has per-domain norms (a SAT or SEAT run) whose domains differ, and this "
        f"config's model shares them across domains in {len(ambiguous)} norm modules (e.g. "
        f"{ambiguous[0]}). Choose the domain to start from: --config.init_domain=source (the "
        "norms trained on labelled images) or --config.init_domain=target.")
  if head_problems:
    heads = " and ".join(f"{head} ({why})" for head, why in head_problems.items())
    lines.append(f"{source} has no usable {heads} for this model: it is an init rather than a "
                 "trained model (train from it with --config.init_from), or model.num_classes "
                 "differs from the model that was saved.")
  raise IncompatibleModelError("\n".join(lines))
