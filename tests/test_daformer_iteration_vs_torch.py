"""Two DAFormer iterations of the JAX step against an independent PyTorch iteration.

The PyTorch side is written here from lhoyer/DAFormer's mmseg/models/uda/dacs.py
(`forward_train`, `_update_ema`, `calc_feat_dist`, `masked_feat_dist`), mmseg/utils/utils.py
(`downscale_label_ratio`), mmseg 0.16's cross-entropy reduction and mmcv's AdamW parameter
groups and poly-with-warmup schedule, driving the Hugging Face MiT encoder with the DAFormer
decoder transcribed in test_segformer.py; the JAX side is the real step of `gta.py:daformer`
(tiny widths, 64x64 crops, a short schedule). Random parts cannot share a generator, so they
are off (stochastic depth, decoder dropout, the colour augmentation: tested elsewhere) or
handed over: the ClassMix masks are the step's own draws (`dacs.class_mix_masks` with the
step's key), given to PyTorch, which mixes with them as DAFormer's `one_mix` does.

Compared after two iterations, each against float64 PyTorch with the bound of
test_iteration_vs_torch.py (RATIO x float32 PyTorch's own error + FLOOR, per tensor, Adam's
elementwise noise allowed): every student parameter and its displacement, the EMA teacher, the
decoder's running statistics, and each logged loss of both iterations. A PyTorch run without
one of the recipe's parts misses the JAX run by far more than the bound.
"""

import copy
import functools
import itertools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.nn import functional as F  # noqa: E402

from seat_jax import checkpointing  # noqa: E402
from seat_jax import convert_mit  # noqa: E402
from seat_jax import optim  # noqa: E402
from seat_jax import presets  # noqa: E402
from seat_jax import train_step  # noqa: E402
from seat_jax.methods import dacs  # noqa: E402
from flax import traverse_util  # noqa: E402
import test_segformer as ts  # noqa: E402
import torch_reference as tref  # noqa: E402

# One worker runs the module (`make test` distributes by group): the step compiles once there
# instead of once in each worker.
pytestmark = pytest.mark.xdist_group("daformer_iteration")

RATIO = 16.0
FLOOR = 16 * 2.0**-24
HIDDEN, HEADS, DEPTHS = (8, 16, 16, 16), (1, 2, 2, 4), (1, 1, 1, 1)
WIDTH = 16
DILATIONS = (1, 6)  # a 1x1 and a separable branch of DAFormer's (1, 6, 12, 18): a shorter compile
NUM_CLASSES = 19
HW = 64  # 2 x 2 cells at the last stage: the feature distance's grid
THING = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
# Three: the feature distance is 0 at iteration 0 (the student is the reference) and acts
# from iteration 1; the third shows its effect in the losses, not only through Adam's steps.
ITERATIONS = 3
# Larger than DAFormer's lr 6e-5, FD 0.005 and decay 0.01, so that the updates move far above
# float rounding and leaving out a part (PERTURBATIONS) shows.
LR = 1e-3
FD_WEIGHT = 0.5
WEIGHT_DECAY = 0.5
# Every teacher pixel confident: a pixel near the threshold could flip between float32 and
# float64; the threshold itself is checked against DACS in test_mixing.py.
CONFIDENCE = 0.0
# No warmup: its first step (1e-6 of the lr) would leave the student within float rounding of
# the feature-distance reference, whose distance's direction (what the L2 norm's gradient is)
# is then float noise, in float64 as in float32. The warmup is checked in test_optim.py.
WARMUP, HORIZON = 0, 10
IGNORE_ROWS = (2, 6)  # the pseudo-label crop, scaled to 64-row crops
# Adam's eps, larger than the default 1e-8 on both sides: Adam divides each gradient element by
# its own size plus eps, so with 1e-8 an element whose gradient is float noise (the attention's
# key bias: its true gradient is 0, softmax ignoring a shift shared by all keys) takes a full
# +-lr step in a random direction in every run; carried into the next iterations, that leaves
# the running statistics at 0.9 of their bound (1e-4: 0.1). The update rule is the same.
ADAM_EPS = 1e-4


def jax_config():
  config = presets.gta("daformer")
  config.model.mit.update(embed_dims=HIDDEN, num_heads=HEADS, depths=DEPTHS,
                          drop_path_rate=0.0, layer_norm_eps=1e-5)
  config.model.decoder.update(channels=WIDTH, embed_dims=WIDTH, dropout=0.0, dilations=DILATIONS)
  config.mix.augment = False
  config.mix.pseudo_ignore_top, config.mix.pseudo_ignore_bottom = IGNORE_ROWS
  config.optim.lr = LR
  config.optim.weight_decay = WEIGHT_DECAY
  config.optim.adam_eps = ADAM_EPS
  config.mix.fd_weight = FD_WEIGHT
  config.mix.confidence = CONFIDENCE
  config.optim.warmup_steps = WARMUP
  config.train.num_steps = config.train.lr_horizon_steps = HORIZON
  return config


@functools.lru_cache(maxsize=None)
def batches():
  """Two fixed batches: labels of 32 x 32 blocks (one a thing class), a few ignored rows."""
  rng = np.random.default_rng(0)
  out = []
  for _ in range(ITERATIONS):
    cells = rng.integers(0, NUM_CLASSES, size=(2, 2, 2))
    cells[:, 0, 0] = rng.choice(THING, size=2)
    labels = np.kron(cells, np.ones((32, 32), np.int64)).astype(np.int32)
    labels[:, 40:43] = 255
    src, tgt = (
        (rng.uniform(0, 255, (2, HW, HW, 3)) - tref.CAFFE_MEAN_BGR).astype(np.float32)
        for _ in range(2))
    out.append({"source_image": src, "source_label": labels, "target_image": tgt})
  return out


def mix_masks(config):
  """The step's ClassMix draws: key fold_in(key(seed), t), split in three, the first."""
  masks = []
  for t, batch in enumerate(batches()):
    key = jax.random.split(jax.random.fold_in(jax.random.key(int(config.seed)), t), 3)[0]
    masks.append(np.asarray(dacs.class_mix_masks(key, batch["source_label"], NUM_CLASSES,
                                                 classes_from=config.mix.classmix_classes)))
  return masks


def to_torch_pixels(inputs, dtype):
  """Model inputs (BGR minus the Caffe mean) -> mmseg's normalised RGB, NCHW."""
  return tref.imagenet_pixels(inputs).to(dtype)


# ---------------------------------------------------------------------------------------------
# PyTorch: DAFormer's iteration.


class Segmentor(torch.nn.Module):
  """mmseg's EncoderDecoder: the MiT's four stages into the decoder; also the last stage."""

  def __init__(self, encoder, head):
    super().__init__()
    self.segformer, self.head = encoder, head

  def forward(self, x):
    feats = self.segformer(x, output_hidden_states=True).hidden_states
    return self.head(feats), feats[-1]


@functools.lru_cache(maxsize=None)
def initial_model():
  config = transformers.SegformerConfig(
      depths=list(DEPTHS), hidden_sizes=list(HIDDEN), num_attention_heads=list(HEADS),
      drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      attn_implementation="eager")
  torch.manual_seed(0)
  encoder = transformers.SegformerModel(config)
  head = ts.DAFormerHead(HIDDEN, WIDTH, WIDTH, NUM_CLASSES, DILATIONS)
  head.dropout = torch.nn.Identity()
  model = Segmentor(encoder, head)
  ts.randomize_(model, to_torch_pixels(batches()[0]["source_image"], torch.float32))
  return model


def downscale_label_ratio(gt, scale, min_ratio, n_classes, ignore=255):
  out = gt.clone()
  out[out == ignore] = n_classes
  out = F.one_hot(out, n_classes + 1).permute(0, 3, 1, 2).to(torch.float64)
  ratio, out = torch.max(F.avg_pool2d(out, scale), dim=1)
  out[out == n_classes] = ignore
  out[ratio < min_ratio] = ignore
  return out


def _up(logits, like):
  return F.interpolate(logits, size=like.shape[2:], mode="bilinear", align_corners=False)


def _ce(logits, labels, weight=None):
  """mmseg 0.16: per-pixel CE (ignore gives 0), times the weight, mean over every pixel."""
  loss = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
  return (loss if weight is None else loss * weight).mean()


def _lr_factor(it):
  """mmcv's poly (power 1, min 0) with linear warmup from ratio 1e-6."""
  regular = (1 - it / HORIZON) ** 1.0
  if it < WARMUP:
    return regular * (1 - (1 - it / WARMUP) * (1 - 1e-6))
  return regular


def _ema(teacher, student, it, alpha=0.999):
  a = min(1 - 1 / (it + 1), alpha)
  with torch.no_grad():
    for t, s in zip(teacher.parameters(), student.parameters()):
      t.mul_(a).add_(s, alpha=1 - a)


def torch_run(dtype, fd_weight=FD_WEIGHT, ema_at_start=True, ce_over_all=True, norm_decay=0.0,
              head_mult=10.0, ignore_rows=IGNORE_ROWS):
  """DAFormer's forward_train twice; returns (state_dicts, teacher state, grads, metrics)."""
  model = copy.deepcopy(initial_model()).to(dtype)
  imnet = copy.deepcopy(model).eval()
  teacher = copy.deepcopy(model)
  groups = {"backbone": [], "norm": [], "head": []}
  for name, p in model.named_parameters():  # mmcv: sorted custom keys, first match wins
    groups["head" if "head" in name else "norm" if "norm" in name else "backbone"].append(p)
  base = {"backbone": LR, "norm": LR, "head": LR * head_mult}
  decay = {"backbone": WEIGHT_DECAY, "norm": WEIGHT_DECAY * norm_decay, "head": WEIGHT_DECAY}
  opt = torch.optim.AdamW([dict(params=groups[k], lr=base[k], weight_decay=decay[k])
                           for k in groups], betas=(0.9, 0.999), eps=ADAM_EPS)
  names = [k for k in groups]
  grads, metrics = [], []
  model.train()
  teacher.train()
  for it, (batch, mask) in enumerate(zip(batches(), mix_masks(jax_config()))):
    if it > 0 and ema_at_start:
      _ema(teacher, model, it)
    for g, k in zip(opt.param_groups, names):
      g["lr"] = base[k] * _lr_factor(it)
    src, tgt = (to_torch_pixels(batch[k], dtype) for k in ("source_image", "target_image"))
    labels = torch.from_numpy(batch["source_label"].astype(np.int64))
    opt.zero_grad()
    logits, feat = model(src)
    seg = _ce(_up(logits, src), labels) if ce_over_all else F.cross_entropy(
        _up(logits, src), labels, ignore_index=255)
    with torch.no_grad():
      _, feat_imnet = imnet(src)
      gt = downscale_label_ratio(labels, HW // feat.shape[-1], 0.75, NUM_CLASSES)
      fd_mask = torch.any(gt[..., None] == torch.tensor(THING), -1)
    fd = torch.norm(feat - feat_imnet, dim=1, p=2)[fd_mask].mean()
    with torch.no_grad():
      probs = torch.softmax(_up(teacher(tgt)[0], tgt), dim=1)
      pmax, pseudo = torch.max(probs, dim=1)
      weight = torch.full(pmax.shape, (pmax >= CONFIDENCE).sum().item() / pmax.numel(),
                          dtype=dtype)
      if ignore_rows[0]:
        weight[:, :ignore_rows[0]] = 0
      if ignore_rows[1]:
        weight[:, -ignore_rows[1]:] = 0
    m = torch.from_numpy(mask.copy())
    mixed = torch.where(m[:, None], src, tgt)
    mixed_labels = torch.where(m, labels, pseudo)
    mixed_weight = torch.where(m, torch.ones_like(weight), weight)
    mix = _ce(_up(model(mixed)[0], mixed), mixed_labels, mixed_weight)
    (seg + fd_weight * fd + mix).backward()
    grads.append({n: p.grad.detach().double().numpy().copy()
                  for n, p in model.named_parameters()})
    opt.step()
    if not ema_at_start:
      _ema(teacher, model, it)
    metrics.append({"seg_main": seg.item(), "feature_distance": fd.item(),
                    "mix_main": mix.item(), "pseudo_weight": float(weight.mean())})
  if ema_at_start:  # DAFormer's update at the start of the next iteration
    _ema(teacher, model, ITERATIONS)
  return model.state_dict(), teacher.state_dict(), grads, metrics


def flax_tree(tensors, collections=("params", "batch_stats"), dtype=np.float64):
  """PyTorch tensors named as `Segmentor`'s state_dict, in the Flax variable tree (through the
  converter's reference layout, which test_segformer.py checks against transformers)."""
  hf = {k.replace("head.", "decode_head.", 1) if k.startswith("head.") else k:
        np.asarray(v.detach().numpy() if torch.is_tensor(v) else v, dtype)
        for k, v in tensors.items()}
  ref, _ = convert_mit.to_reference_layout(hf, "segformer_hf")
  paths = [p for p in traverse_util.flatten_dict(jax_variables()[0]) if p[0] in collections]
  return traverse_util.unflatten_dict(
      {p: convert_mit.to_flax_layout(ref[convert_mit.torch_key(p[1:])]) for p in paths})


# ---------------------------------------------------------------------------------------------
# JAX: the real step.


@functools.lru_cache(maxsize=None)
def jax_variables():
  """(variables, trainer) of the initial model converted into the step's tree."""
  config = jax_config()
  trainer = train_step.build_trainer(config)
  state = initial_model().state_dict()
  hf = {k.replace("head.", "decode_head.", 1) if k.startswith("head.") else k: v.numpy()
        for k, v in state.items()}
  ref, _ = convert_mit.to_reference_layout(hf, "segformer_hf")
  shapes = traverse_util.flatten_dict(checkpointing.abstract_variables(trainer.model))
  variables = traverse_util.unflatten_dict({
      path: convert_mit.to_flax_layout(ref[convert_mit.torch_key(path[1:])]).astype(np.float32)
      for path in shapes})
  return variables, trainer


@functools.lru_cache(maxsize=None)
def jax_run():
  variables, trainer = jax_variables()
  config = trainer.config
  params, batch_stats = variables["params"], variables["batch_stats"]
  state = train_step.TrainState(
      step=np.zeros((), np.int32), params=params, batch_stats=batch_stats,
      opt_state=trainer.tx.init(params), disc_params={}, disc_opt_state=trainer.disc_tx.init({}),
      method_state=train_step.init_method_state(trainer, variables))
  step = jax.jit(train_step.make_train_step(trainer.model, trainer.disc, trainer.tx,
                                            trainer.disc_tx, trainer.opts,
                                            optim.lr_schedules(config)))
  metrics = []
  for batch in batches():
    state, m = step(state, batch, train_step.loss_weights(config))
    metrics.append({k: float(v) for k, v in m.items()})
  return jax.device_get(state), metrics


# ---------------------------------------------------------------------------------------------
# The comparison.


def _adam_displacement(grads, lrs, b1=0.9, b2=0.999):
  m = v = delta = 0.0
  for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    delta = delta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + ADAM_EPS)
  return delta


def _adam_noise(grads32, grads64):
  """Per element, how far Adam's displacement moves when each iteration's gradient moves by
  RATIO x float32 PyTorch's largest error on that tensor (test_iteration_vs_torch.py's rule):
  Adam divides each element by its own size, so a small one carries its absolute error."""
  heads = {n for n in grads64[0] if n.startswith("head.")}
  lrs = [_lr_factor(it) for it in range(ITERATIONS)]
  noise = {}
  for name in grads64[0]:
    g64 = [g[name] for g in grads64]
    deltas = [RATIO * float(np.max(np.abs(a[name] - b[name]))) for a, b in zip(grads32, grads64)]
    lr = [f * LR * (10.0 if name in heads else 1.0) for f in lrs]
    exact = _adam_displacement(g64, lr)
    noise[name] = functools.reduce(np.maximum, (
        np.abs(_adam_displacement([g + s * d for g, s, d in zip(g64, signs, deltas)], lr)
               - exact) for signs in itertools.product((-1.0, 1.0), repeat=ITERATIONS)))
  return flax_tree(noise, collections=("params",))["params"]


def _values(student, teacher_params, batch_stats, metrics, start):
  flat = {}
  for path, v in traverse_util.flatten_dict(student).items():
    flat["params/" + "/".join(path)] = np.asarray(v, np.float64)
    flat["delta/" + "/".join(path)] = np.asarray(v, np.float64) - start[path]
  for path, v in traverse_util.flatten_dict(teacher_params).items():
    flat["teacher/" + "/".join(path)] = np.asarray(v, np.float64)
  for path, v in traverse_util.flatten_dict(batch_stats).items():
    flat["stats/" + "/".join(path)] = np.asarray(v, np.float64)
  for it, m in enumerate(metrics):
    for k in ("seg_main", "feature_distance", "mix_main", "pseudo_weight"):
      flat[f"metric{it}/{k}"] = np.asarray(m[k], np.float64)
  return flat


def _torch_values(run):
  student, teacher, _, metrics = run
  tree, teacher_tree = flax_tree(student), flax_tree(teacher)
  start = traverse_util.flatten_dict(flax_tree(initial_model().state_dict())["params"])
  return _values(tree["params"], teacher_tree["params"], tree["batch_stats"], metrics, start)


@functools.lru_cache(maxsize=None)
def references():
  """(float64 values, float32 values, Adam's elementwise noise) of the unchanged recipe."""
  run32, run64 = torch_run(torch.float32), torch_run(torch.float64)
  return (_torch_values(run64), _torch_values(run32),
          traverse_util.flatten_dict(_adam_noise(run32[2], run64[2])))


def margins(values, reference=None):
  """err / (RATIO * err(torch32, torch64) + FLOOR) per compared quantity; <= 1 passes."""
  truth, own, noise = references()
  ref = truth if reference is None else reference
  out = {}
  for key, want in ref.items():
    kind, name = key.split("/", 1)
    if kind == "delta" and not np.any(want):
      continue
    scale = float(np.max(np.abs(truth[key]))) or 1.0
    allowance = (noise[tuple(name.split("/"))] if kind in ("params", "delta", "teacher")
                 else 0.0)
    err = float(np.max(np.maximum(np.abs(values[key] - want) - allowance, 0.0))) / scale
    own_err = float(np.max(np.abs(own[key] - truth[key]))) / scale
    floor = FLOOR * (64 if kind.startswith("metric") else 1)  # a loss is a sum of 16k terms
    out[key] = err / (RATIO * own_err + floor)
  return out


def _jax_values():
  state, metrics = jax_run()
  start = traverse_util.flatten_dict(jax_variables()[0]["params"])
  start = {k: np.asarray(v, np.float64) for k, v in start.items()}
  return _values(state.params, state.method_state["teacher"]["params"], state.batch_stats,
                 metrics, start)


def test_two_daformer_iterations_match_torch():
  got = margins(_jax_values())
  worst = {kind: max(v for k, v in got.items() if k.split("/")[0] == kind)
           for kind in {k.split("/")[0] for k in got}}
  print("worst margin (error / bound) per kind: " +
        ", ".join(f"{k} {v:.2f}" for k, v in sorted(worst.items())))
  assert {"params", "delta", "teacher", "stats", "metric0", "metric2"} <= set(worst)
  bad = {k: v for k, v in got.items() if not v <= 1.0}
  assert not bad, f"{len(bad)} over their bound: {sorted(bad.items())[:10]}"


# A PyTorch run without one of these parts of the recipe must miss the JAX run by far.
PERTURBATIONS = {
    "no feature distance": dict(fd_weight=0.0),
    "DACS's teacher timing": dict(ema_at_start=False),
    "CE over labelled pixels": dict(ce_over_all=False),
    "decay on the LayerNorms": dict(norm_decay=1.0),
    "decoder at 1x": dict(head_mult=1.0),
    "no pseudo-label crop": dict(ignore_rows=(0, 0)),
}


@pytest.mark.parametrize("change", list(PERTURBATIONS))
def test_comparison_detects_each_part(change):
  perturbed = _torch_values(torch_run(torch.float64, **PERTURBATIONS[change]))
  got = margins(_jax_values(), reference=perturbed)
  worst = max(got.values())
  print(f"{change}: worst margin {worst:.1f}")
  assert worst > 10
