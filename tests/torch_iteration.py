"""One adversarial training iteration in PyTorch, the reference the JAX step is checked against.

Written from REFERENCE 3.2 (AdaptSegNet's loop, with ADVENT's self-information input and MinEnt
from 2.2 / 7.2, SEAT's fused single discriminator from 3.4 and stage 2's pseudo-label CE), not
from the JAX code. It drives `torch_reference.DeepLabMultiTorch`:
  - `shared` norms: the model's own nn.BatchNorm2d, affine frozen as AdaptSegNet does;
  - `sat` / `seat` norms: every BatchNorm2d swapped for `DomainBatchNorm2d` (per-domain running
    statistics; one affine for sat, one per domain for seat), told the domain before each pass.
The optimiser groups come from the references' own walk over `modules()` / `parameters()`
(which lists a backbone tensor once per enclosing module) or from that walk de-duplicated.

Importing this module imports torch; seat_jax itself never imports it.
"""

import dataclasses
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DOMAINS = ("source", "target")
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0
IGNORE = 255
# Which discriminators each adversarial mode trains (as the JAX config names them).
DISCRIMINATORS = {"none": (), "single": ("main",), "multi_level_sum": ("main",),
                  "two_discriminators": ("main", "aux")}


class DomainBatchNorm2d(nn.Module):
  """BatchNorm with per-domain running statistics; affine shared (sat) or per domain (seat).

  Parameters live directly on this module (no child BNs), so the references' module walk
  counts them like a plain BN's weight/bias. Starts as copies of `bn` in every slot.
  """

  def __init__(self, bn: nn.BatchNorm2d, mode: str):
    super().__init__()
    if mode not in ("sat", "seat"):
      raise ValueError(f"DomainBatchNorm2d mode must be sat or seat, got {mode!r}.")
    self.mode, self.domain = mode, "source"
    self.eps, self.momentum = bn.eps, bn.momentum
    prefixes = ("",) if mode == "sat" else tuple(d + "_" for d in DOMAINS)
    for prefix in prefixes:
      setattr(self, prefix + "weight", nn.Parameter(bn.weight.detach().clone()))
      setattr(self, prefix + "bias", nn.Parameter(bn.bias.detach().clone()))
    for d in DOMAINS:
      self.register_buffer(f"{d}_running_mean", bn.running_mean.detach().clone())
      self.register_buffer(f"{d}_running_var", bn.running_var.detach().clone())

  def forward(self, x):
    prefix = "" if self.mode == "sat" else self.domain + "_"
    return F.batch_norm(
        x, getattr(self, f"{self.domain}_running_mean"),
        getattr(self, f"{self.domain}_running_var"), getattr(self, prefix + "weight"),
        getattr(self, prefix + "bias"), self.training, self.momentum, self.eps)


def use_domain_norms(model: nn.Module, mode: str) -> nn.Module:
  """Replaces every nn.BatchNorm2d of `model` by a DomainBatchNorm2d, in place (same names)."""
  for parent in list(model.modules()):
    for name, child in list(parent.named_children()):
      if isinstance(child, nn.BatchNorm2d):
        parent._modules[name] = DomainBatchNorm2d(child, mode)  # pylint: disable=protected-access
  return model


def set_domain(model: nn.Module, domain: str) -> None:
  for module in model.modules():
    if isinstance(module, DomainBatchNorm2d):
      module.domain = domain


def freeze_bn_affine(model: nn.Module) -> None:
  """AdaptSegNet: requires_grad False on every BatchNorm weight and bias."""
  for module in model.modules():
    if isinstance(module, nn.BatchNorm2d):
      module.weight.requires_grad_(False)
      module.bias.requires_grad_(False)


def backbone_listing(model: nn.Module) -> Iterator[nn.Parameter]:
  """The references' 1x-lr generator: every trainable tensor once per module that holds it."""
  for block in (model.conv1, model.bn1, model.layer1, model.layer2, model.layer3, model.layer4):
    for module in block.modules():
      for param in module.parameters():
        if param.requires_grad:
          yield param


def _unique(params) -> list[nn.Parameter]:
  seen, out = set(), []
  for p in params:
    if id(p) not in seen:
      seen.add(id(p))
      out.append(p)
  return out


def segmenter_param_groups(model: nn.Module, lr: float, head_mult: float,
                           duplicate: bool) -> list[dict]:
  """The 1x backbone group (as listed by the references, or de-duplicated) and the 10x heads."""
  backbone = list(backbone_listing(model))
  if not duplicate:
    backbone = _unique(backbone)
  heads = list(model.layer5.parameters()) + list(model.layer6.parameters())
  return [{"params": backbone, "lr": lr}, {"params": heads, "lr": lr * head_mult}]


class FCDiscriminatorTorch(nn.Module):
  """Five 4x4 stride-2 convs (w, 2w, 4w, 8w, 1) with LeakyReLU(0.2) between; raw logits."""

  def __init__(self, num_classes: int, width: int = 64):
    super().__init__()
    widths = (num_classes, width, 2 * width, 4 * width, 8 * width)
    for i in range(4):
      setattr(self, f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1))
    self.classifier = nn.Conv2d(8 * width, 1, 4, stride=2, padding=1)

  def forward(self, x):
    for i in range(4):
      x = F.leaky_relu(getattr(self, f"conv{i + 1}")(x), 0.2)
    return self.classifier(x)


def disc_to_flax(disc: FCDiscriminatorTorch) -> dict:
  """The discriminator's weights as Flax params (OIHW -> HWIO)."""
  out = {}
  for name, conv in disc.named_children():
    out[name] = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
                 "bias": conv.bias.detach().numpy().copy()}
  return out


@dataclasses.dataclass
class Settings:
  """The loss weights and optimiser settings of one run (names as in the JAX config)."""
  adv_mode: str = "two_discriminators"
  adv_input: str = "softmax"  # softmax | entropy (ADVENT's self-information map)
  adv_weight: float = 0.001
  adv_weight_aux: float = 0.0002
  multi_level_lambda: float = 0.05
  aux_weight: float = 0.1
  entropy_weight: float = 0.0
  entropy_weight_aux: float = 0.0
  target_ce_weight: float = 1.0
  target_labels: bool = False
  lr: float = 2.5e-4
  head_lr_mult: float = 10.0
  momentum: float = 0.9
  weight_decay: float = 5e-4
  poly_power: float = 0.9
  horizon: int = 250_000
  disc_lr: float = 1e-4
  disc_betas: tuple = (0.9, 0.99)
  duplicate_listing: bool = False
  autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: segmenter forward in autocast


def lr_poly(base: float, i: int, horizon: int, power: float) -> float:
  return base * (1 - i / horizon) ** power


def self_information(probs: torch.Tensor) -> torch.Tensor:
  """ADVENT's -p log2(p + 1e-30) / log2(C), per channel (NCHW)."""
  return -probs * torch.log2(probs + 1e-30) / np.log2(probs.shape[1])


def entropy_loss(probs: torch.Tensor) -> torch.Tensor:
  """ADVENT MinEnt: the self-information summed over everything / (N H W)."""
  n, _, h, w = probs.shape
  return self_information(probs).sum() / (n * h * w)


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
  return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def _up(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
  return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=True)


class TorchIteration:
  """Segmenter + discriminators + optimisers; `step(i, batch)` runs iteration i.

  batch: {source_image, source_label, target_image[, target_label]} as NCHW / NHW tensors.
  """

  def __init__(self, model: nn.Module, discs: dict[str, nn.Module], settings: Settings):
    self.model, self.discs, self.s = model, discs, settings
    if sorted(discs) != sorted(DISCRIMINATORS[settings.adv_mode]):
      raise ValueError(f"adv_mode {settings.adv_mode} needs discriminators "
                       f"{DISCRIMINATORS[settings.adv_mode]}, got {sorted(discs)}.")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # torch warns about duplicate parameters, as it did there
      self.opt = torch.optim.SGD(
          segmenter_param_groups(model, settings.lr, settings.head_lr_mult,
                                 settings.duplicate_listing),
          lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    self.disc_opts = {name: torch.optim.Adam(d.parameters(), lr=settings.disc_lr,
                                             betas=settings.disc_betas)
                      for name, d in discs.items()}
    model.train()
    for d in discs.values():
      d.train()

  def _segment(self, images: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(aux, main) logits of `domain`'s norms, upsampled to the images, in their dtype."""
    set_domain(self.model, domain)
    dtype = self.s.autocast_dtype
    with torch.autocast(images.device.type, dtype=dtype or torch.bfloat16,
                        enabled=dtype is not None):
      outputs = self.model(images)
    return tuple(_up(x.to(images.dtype), images) for x in outputs)

  def _map(self, logits: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(logits, dim=1)
    return self_information(probs) if self.s.adv_input == "entropy" else probs

  def _disc_input(self, name: str, main: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
    if name == "aux":
      return self._map(aux)
    fused = self._map(main)
    if self.s.adv_mode == "multi_level_sum":
      fused = fused + self.s.multi_level_lambda * self._map(aux)
    return fused

  def _set_lrs(self, i: int) -> dict[str, float]:
    s = self.s
    lr = lr_poly(s.lr, i, s.horizon, s.poly_power)
    self.opt.param_groups[0]["lr"] = lr
    self.opt.param_groups[1]["lr"] = lr * s.head_lr_mult
    disc_lr = lr_poly(s.disc_lr, i, s.horizon, s.poly_power)
    for opt in self.disc_opts.values():
      opt.param_groups[0]["lr"] = disc_lr
    lrs = {"lr": lr, "lr_head": lr * s.head_lr_mult}
    return {**lrs, "disc_lr": disc_lr} if self.discs else lrs

  def step(self, i: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    s = self.s
    metrics = self._set_lrs(i)
    self.opt.zero_grad(set_to_none=True)
    for opt in self.disc_opts.values():
      opt.zero_grad(set_to_none=True)

    # Segmenter: D held constant.
    for d in self.discs.values():
      d.requires_grad_(False)
    src, labels = batch["source_image"], batch["source_label"]
    aux_s, main_s = self._segment(src, "source")
    seg_main = F.cross_entropy(main_s, labels, ignore_index=IGNORE)
    seg_aux = F.cross_entropy(aux_s, labels, ignore_index=IGNORE)
    loss_src = seg_main + s.aux_weight * seg_aux
    loss_src.backward()
    metrics.update(seg_main=seg_main.item(), seg_aux=seg_aux.item())

    aux_t, main_t = self._segment(batch["target_image"], "target")
    loss_tgt = 0.0
    for name in self.discs:
      adv = _bce(self.discs[name](self._disc_input(name, main_t, aux_t)), SOURCE_LABEL)
      loss_tgt = loss_tgt + (s.adv_weight_aux if name == "aux" else s.adv_weight) * adv
      metrics[f"adv_{name}"] = adv.item()
    ent = entropy_loss(F.softmax(main_t, dim=1))
    ent_aux = entropy_loss(F.softmax(aux_t, dim=1))
    loss_tgt = loss_tgt + s.entropy_weight * ent + s.entropy_weight_aux * ent_aux
    metrics.update(entropy=ent.item(), entropy_aux=ent_aux.item())
    if s.target_labels:
      tgt_labels = batch["target_label"]
      tgt_main = F.cross_entropy(main_t, tgt_labels, ignore_index=IGNORE)
      tgt_aux = F.cross_entropy(aux_t, tgt_labels, ignore_index=IGNORE)
      loss_tgt = loss_tgt + s.target_ce_weight * (tgt_main + s.aux_weight * tgt_aux)
      metrics["target_seg_main"] = tgt_main.item()
    loss_tgt.backward()
    metrics["loss"] = (loss_src + loss_tgt).item()
    metrics["grad_norm"] = _grad_norm(self.model.parameters())

    # Discriminators on detached maps: source label 0, target label 1, each loss halved.
    for d in self.discs.values():
      d.requires_grad_(True)
    outputs = {"source": (main_s.detach(), aux_s.detach()),
               "target": (main_t.detach(), aux_t.detach())}
    for name, disc in self.discs.items():
      for domain, label in (("source", SOURCE_LABEL), ("target", TARGET_LABEL)):
        loss_d = _bce(disc(self._disc_input(name, *outputs[domain])), label)
        (loss_d / 2).backward()
        metrics[f"d_{name}_{domain}"] = loss_d.item()
    if self.discs:
      metrics["disc_grad_norm"] = _grad_norm(
          p for d in self.discs.values() for p in d.parameters())

    # All updates together at the end, as AdaptSegNet does.
    self.opt.step()
    for opt in self.disc_opts.values():
      opt.step()
    return metrics


def _grad_norm(params) -> float:
  """The global gradient norm, summed in the gradients' own dtype (float32 runs accumulate in
  float32, as the JAX step's `optax.tree.norm` does)."""
  grads = [p.grad.detach() for p in _unique(params) if p.grad is not None]
  return float(torch.sqrt(sum((g * g).sum() for g in grads)))

