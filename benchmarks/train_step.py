"""Times one segmenter training step in JAX and in PyTorch on this machine.

    python benchmarks/train_step.py [--height=256 --width=512] [--steps=5 --warmup=1]
        [--depth=resnet101|tiny] [--dtype=float32|bfloat16] [--only=both|jax|torch]
        [--json=FILE]

The step is the source half of a training iteration: forward in train mode (BN on batch
statistics, running stats updated), both heads' logits upsampled to the input size with the
align_corners bilinear resize, CE(main) + 0.1 CE(aux) with ignore label 255, backward, and an
SGD update (momentum 0.9, coupled weight decay 5e-4). PyTorch runs the same architecture
(`tests/torch_reference.py`) with every core. Each framework runs in its own process (their
thread pools fight for the cores otherwise); JAX model variants alternate step by step within
the JAX process. Median step times are reported.
"""

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seat_jax import config_defaults, cpu_malloc, labels, models
from seat_jax.models import conv_kernel_grad

DEPTHS = {"resnet101": ((3, 4, 23, 3), 64), "tiny": ((1, 1, 1, 1), 8)}
IGNORE_LABEL = labels.IGNORE_ID
AUX_WEIGHT = 0.1
LR, MOMENTUM, WEIGHT_DECAY = 2.5e-4, 0.9, 5e-4


def model_config(depth: str, num_classes: int = 19, dtype: str = "float32"):
  cfg = config_defaults.get_model_config()
  cfg.stage_sizes, cfg.base_width = DEPTHS[depth]
  cfg.num_classes, cfg.dtype = num_classes, dtype
  return cfg


def make_batch(height: int, width: int, num_classes: int, seed: int = 0):
  """Caffe-scale random images (NHWC) and labels with ~5% ignore pixels."""
  rng = np.random.default_rng(seed)
  images = rng.normal(0.0, 50.0, (1, height, width, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, (1, height, width)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.05] = IGNORE_LABEL
  return images, labels


# ------------------------------------------------------------------------------------- JAX


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Mean CE over pixels whose label is not IGNORE_LABEL (PyTorch's ignore_index)."""
  logits = logits.astype(jnp.float32)
  valid = labels != IGNORE_LABEL
  safe = jnp.where(valid, labels, 0)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, log_z - picked, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def make_jax_step(module, tx: optax.GradientTransformation) -> Callable:
  """(params, batch_stats, opt_state), images, labels -> new state, loss."""

  def loss_fn(params, batch_stats, images, labels):
    (aux, main), updates = module.apply(
        {"params": params, "batch_stats": batch_stats}, images, domain="source", train=True,
        mutable=["batch_stats"])
    size = images.shape[1:3]
    loss = (cross_entropy(models.resize_bilinear(main, size), labels) +
            AUX_WEIGHT * cross_entropy(models.resize_bilinear(aux, size), labels))
    return loss, updates["batch_stats"]

  def step(state, images, labels):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  return step


def setup_jax(cfg, images: np.ndarray, labels: np.ndarray, seed: int = 0,
              variant: str = "reference") -> dict:
  """Initialises, compiles (timed) and returns a `run()` that performs one step."""
  module = models.build_segmenter(cfg)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  t0 = time.perf_counter()
  # The init program is big and runs once: compile it without XLA's expensive passes.
  init = jax.jit(module.init).lower(jax.random.PRNGKey(seed), images[:, :33, :33]).compile(
      compiler_options={"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True})
  variables = init(jax.random.PRNGKey(seed), images[:, :33, :33])
  init_s = time.perf_counter() - t0
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  t0 = time.perf_counter()
  with model_variant(variant):
    lowered = jax.jit(make_jax_step(module, tx), donate_argnums=0).lower(state, images, labels)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def run() -> float:
    holder["state"], loss = compiled(holder["state"], images, labels)
    return float(loss)  # blocks until the step is done

  return dict(run=run, init_s=init_s, lower_s=lower_s, compile_s=compile_s, compiled=compiled)


# --------------------------------------------------------------------------------- PyTorch


def setup_torch(cfg, images: np.ndarray, labels: np.ndarray, threads: int = 0) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "tests"))
  import torch_reference  # pylint: disable=g-import-not-at-top  (a test helper, not installed)

  torch.set_num_threads(threads or os.cpu_count())
  torch.manual_seed(0)
  model = torch_reference.DeepLabMultiTorch(
      cfg.num_classes, cfg.stage_sizes, cfg.base_width, cfg.aspp_branches, cfg.aspp_dilations)
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                              weight_decay=WEIGHT_DECAY)
  step = torch_reference.train_step_fn(model, optimizer, AUX_WEIGHT)
  images_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  labels_t = torch.from_numpy(labels.astype(np.int64))

  def run() -> float:
    return float(step(images_t, labels_t))

  return dict(run=run, threads=torch.get_num_threads(), version=torch.__version__)


# ------------------------------------------------------------------- per-op profile (--profile_ops)
# Why JAX is slower or faster than PyTorch on CPU, op by op: each row times forward + backward
# (gradients for the input and the kernel) of one op at the shapes ResNet-101 uses, times how
# often the model has it. Rows marked `*` are prototype rewrites that compute the same numbers.


def _conv_ref(x, k, stride=1, dilation=1, padding=0):
  return jax.lax.conv_general_dilated(
      x, k, (stride, stride), ((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv3x3_im2col(x, k, dilation=1):
  """Dilated 3x3 stride-1 conv (padding = dilation) as one matmul over 9 shifted views."""
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (dilation, dilation), (dilation, dilation), (0, 0)))
  patches = jnp.concatenate(
      [xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
       for i in range(3) for j in range(3)], axis=-1)
  return jax.lax.dot_general(patches, k.reshape(9 * c, -1), (((3,), (0,)), ((), ())))


def conv3x3_taps(x, k, dilation=1):
  """The model's dilated 3x3 conv: XLA's forward and input gradient, the kernel gradient as one
  dot per tap on the CPU (`seat_jax.models.conv_kernel_grad`)."""
  return conv_kernel_grad.conv2d(x, k, 1, dilation, dilation)


def conv3x3_space_to_batch(x, k, dilation=1):
  """Dilated 3x3 conv (padding = dilation) as an undilated conv on the d*d phase grids."""
  d = dilation
  if d == 1:
    return _conv_ref(x, k, padding=1)
  n, h, w, c = x.shape
  hp, wp = -(-h // d) * d, -(-w // d) * d
  x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  x = x.reshape(n, hp // d, d, wp // d, d, c).transpose(2, 4, 0, 1, 3, 5)
  y = _conv_ref(x.reshape(d * d * n, hp // d, wp // d, c), k, padding=1)
  o = y.shape[-1]
  y = y.reshape(d, d, n, hp // d, wp // d, o).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(n, hp, wp, o)[:, :h, :w]


def maxpool_slices(x):
  """3x3/2 ceil-mode max-pool as the max of 9 strided slices (no reduce_window/select_and_scatter)."""
  pads, outs = [], []
  for n in x.shape[1:3]:
    out = -(-(n + 2 - 3) // 2) + 1
    if (out - 1) * 2 >= n + 1:
      out -= 1
    pads.append((1, (out - 1) * 2 + 3 - n - 1))
    outs.append(out)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  views = [xp[:, i:i + 2 * outs[0] - 1:2, j:j + 2 * outs[1] - 1:2] for i in range(3)
           for j in range(3)]
  return functools.reduce(jnp.maximum, views)


def _dot1x1(x, k):
  return jax.lax.dot_general(x, k[0, 0], (((3,), (0,)), ((), ())))


def _op_table(height: int, width: int) -> list[tuple]:
  """(name, count in ResNet-101, jax fn or None, torch module factory, input NHWC, kernel HWIO)."""
  h2, w2 = -(-height // 2), -(-width // 2)
  h4, w4 = -(-(h2 - 1) // 2) + 1, -(-(w2 - 1) // 2) + 1
  h8, w8 = -(-h4 // 2), -(-w4 // 2)
  rows = [("stem conv 7x7/2 3->64", 1, lambda x, k: _conv_ref(x, k, 2, 1, 3),
           dict(c=3, o=64, k=7, stride=2, padding=3), (height, width, 3))]
  rows.append(("maxpool 3x3/2 ceil (reduce_window)", 1, models.max_pool_3x3_s2_ceil,
               "maxpool", (h2, w2, 64)))
  rows.append(("* maxpool as 9 strided slices", 1, maxpool_slices, "maxpool", (h2, w2, 64)))
  for name, count, (h, w), c, d in (("layer1 3x3 d1 64", 3, (h4, w4), 64, 1),
                                    ("layer2 3x3 d1 128", 4, (h8, w8), 128, 1),
                                    ("layer3 3x3 d2 256", 23, (h8, w8), 256, 2),
                                    ("layer4 3x3 d4 512", 3, (h8, w8), 512, 4)):
    conv = dict(c=c, o=c, k=3, stride=1, padding=d, dilation=d)
    rows.append((name, count, functools.partial(_conv_ref, dilation=d, padding=d), conv,
                 (h, w, c)))
    rows.append(("* " + name + " im2col dot", count,
                 functools.partial(conv3x3_im2col, dilation=d), conv, (h, w, c)))
    rows.append(("* " + name + " tap dots dk", count,
                 functools.partial(conv3x3_taps, dilation=d), conv, (h, w, c)))
    if d > 1:
      rows.append(("* " + name + " space-to-batch", count,
                   functools.partial(conv3x3_space_to_batch, dilation=d), conv, (h, w, c)))
  for name, count, c, d in (("aux head 3x3 d12 1024->19", 4, 1024, 12),
                            ("main head 3x3 d12 2048->19", 4, 2048, 12)):
    conv = dict(c=c, o=19, k=3, stride=1, padding=d, dilation=d)
    rows.append((name, count, functools.partial(_conv_ref, dilation=d, padding=d), conv,
                 (h8, w8, c)))
    rows.append(("* " + name + " im2col dot", count,
                 functools.partial(conv3x3_im2col, dilation=d), conv, (h8, w8, c)))
    rows.append(("* " + name + " tap dots dk", count,
                 functools.partial(conv3x3_taps, dilation=d), conv, (h8, w8, c)))
  for name, count, (h, w), c, o in (("1x1 dot layer1 256->64", 5, (h4, w4), 256, 64),
                                    ("1x1 dot layer2 512->128", 7, (h8, w8), 512, 128),
                                    ("1x1 dot layer3 1024->256", 45, (h8, w8), 1024, 256),
                                    ("1x1 dot layer3 256->1024", 23, (h8, w8), 256, 1024),
                                    ("1x1 dot layer4 2048->512", 5, (h8, w8), 2048, 512),
                                    ("1x1 dot layer4 512->2048", 3, (h8, w8), 512, 2048)):
    rows.append((name, count, _dot1x1, dict(c=c, o=o, k=1, stride=1, padding=0), (h, w, c)))
  return rows


def _best_time(fn, repeats: int) -> float:
  """Best of `repeats` after one warm-up: the least disturbed by other load."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def profile_ops(height: int, width: int, repeats: int = 5, threads: int = 0) -> list[dict]:
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads or os.cpu_count())
  rng = np.random.default_rng(0)
  rows = []
  for name, count, fn, spec, shape in _op_table(height, width):
    x = rng.normal(size=(1, *shape)).astype(np.float32)
    if spec == "maxpool":
      k = np.zeros((1,), np.float32)
      jax_fn = lambda x, k, fn=fn: fn(x)
      t_mod = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    else:
      k = (rng.normal(size=(spec["k"], spec["k"], spec["c"], spec["o"])) * 0.01).astype(
          np.float32)
      jax_fn = fn
      t_mod = torch.nn.Conv2d(spec["c"], spec["o"], spec["k"], spec["stride"], spec["padding"],
                              spec.get("dilation", 1), bias=False)
      with torch.no_grad():
        t_mod.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1)))
    y_shape = jax.eval_shape(jax_fn, x, k).shape
    g = rng.normal(size=y_shape).astype(np.float32)

    def fwd_bwd(x, k, g, jax_fn=jax_fn):
      y, vjp = jax.vjp(jax_fn, x, k)
      return vjp(g)

    compiled = jax.jit(fwd_bwd)
    xj, kj, gj = jnp.asarray(x), jnp.asarray(k), jnp.asarray(g)
    jax_s = _best_time(lambda: jax.block_until_ready(compiled(xj, kj, gj)), repeats)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

    def torch_fwd_bwd():
      xt.grad = None
      t_mod.zero_grad(set_to_none=True)
      t_mod(xt).backward(gt)

    torch_s = _best_time(torch_fwd_bwd, repeats)
    rows.append(dict(op=name, count=count, jax_ms=1e3 * jax_s, torch_ms=1e3 * torch_s,
                     jax_total_ms=1e3 * jax_s * count, torch_total_ms=1e3 * torch_s * count))
    print(f"{name:42s} x{count:3d}  jax {1e3 * jax_s:8.1f} ms  torch {1e3 * torch_s:8.1f} ms  "
          f"ratio {jax_s / torch_s:5.2f}  total jax {1e3 * jax_s * count:8.0f} ms  "
          f"torch {1e3 * torch_s * count:8.0f} ms", flush=True)
  return rows


# -------------------------------------------------------------------- model variants (--variants)
# Each variant patches seat_jax.models while the step is traced (nothing changes outside this
# process): `xla_kernel_grad` gives every convolution XLA's own kernel gradient (the model before
# `conv_kernel_grad`); `slice_maxpool` makes the stem's max-pool 9 strided slices (no
# reduce_window / select_and_scatter). Numbers are identical up to float rounding.


@contextlib.contextmanager
def model_variant(name: str):
  """Patches the model modules for the duration of tracing; `reference` changes nothing."""
  from seat_jax.models import conv_kernel_grad, deeplabv2  # pylint: disable=g-import-not-at-top

  patches = {"reference": [], "xla_kernel_grad": [(conv_kernel_grad, "MIN_CHANNELS", 2**31)],
             "slice_maxpool": [(deeplabv2, "max_pool_3x3_s2_ceil", maxpool_slices)]}
  if name not in patches:
    raise ValueError(f"--variants takes {', '.join(patches)}; got {name!r}.")
  saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patches[name]]
  for module, attr, value in patches[name]:
    setattr(module, attr, value)
  try:
    yield
  finally:
    for module, attr, value in saved:
      setattr(module, attr, value)


# ------------------------------------------------------------------------------------ main


def time_alternating(runners: dict[str, Callable[[], float]], warmup: int,
                     steps: int) -> dict[str, list[float]]:
  """Alternates the runners step by step so machine load hits them alike."""
  times = {name: [] for name in runners}
  for i in range(warmup + steps):
    for name, run in runners.items():
      t0 = time.perf_counter()
      loss = run()
      elapsed = time.perf_counter() - t0
      if not np.isfinite(loss):
        raise FloatingPointError(f"{name} loss is {loss} at step {i}")
      if i == 0:
        print(f"{name:9s} first-step loss {loss:.6f}", flush=True)  # same init => ~same loss
      if i >= warmup:
        times[name].append(elapsed)
  return times


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--height", type=int, default=256)
  p.add_argument("--width", type=int, default=512)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--depth", default="resnet101", choices=sorted(DEPTHS))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="JAX compute dtype (PyTorch always runs float32)")
  p.add_argument("--num_classes", type=int, default=19)
  p.add_argument("--only", default="both", choices=("both", "jax", "torch"))
  p.add_argument("--variants", default="reference",
                 help="comma list of JAX model variants to time: reference (the model as is), "
                 "xla_kernel_grad (XLA's kernel gradient for every conv), slice_maxpool (the "
                 "stem's max-pool as 9 strided slices)")
  p.add_argument("--threads", type=int, default=0,
                 help="0: every core (the real comparison); k > 0: pin each framework's process "
                 "to k cores and k threads (less sensitive to other load on a shared machine)")
  p.add_argument("--json", default="", help="also write the results to this file")
  p.add_argument("--profile_ops", action="store_true",
                 help="instead of the step, time forward+backward of each op type vs PyTorch")
  return p.parse_args(argv)


def measure(args, cfg) -> dict:
  """Times the frameworks named by `args.only` (jax or torch) in this process."""
  images, labels = make_batch(args.height, args.width, args.num_classes)
  result: dict[str, Any] = {}
  runners = {}
  if args.only == "jax":
    for variant in args.variants.split(","):
      name = "jax" if variant == "reference" else f"jax_{variant}"
      jax_setup = setup_jax(cfg, images, labels, variant=variant)
      runners[name] = jax_setup["run"]
      result.update({f"{name}_init_s": jax_setup["init_s"],
                     f"{name}_lower_s": jax_setup["lower_s"],
                     f"{name}_compile_s": jax_setup["compile_s"]})
      print(f"{name}: init {jax_setup['init_s']:.1f} s, trace+lower {jax_setup['lower_s']:.1f} "
            f"s, compile {jax_setup['compile_s']:.1f} s", flush=True)
  else:
    torch_setup = setup_torch(cfg, images, labels, args.threads)
    runners["torch"] = torch_setup["run"]
    result.update(torch_version=torch_setup["version"], torch_threads=torch_setup["threads"])
  for name, values in time_alternating(runners, args.warmup, args.steps).items():
    result[f"{name}_step_s"] = values
    result[f"{name}_median_s"] = statistics.median(values)
    result[f"{name}_min_s"] = min(values)
    print(f"{name:9s} median step {statistics.median(values):.3f} s, best {min(values):.3f} s  "
          f"(all: {', '.join(f'{v:.3f}' for v in values)})", flush=True)
  return result


def measure_in_subprocess(argv: list[str], framework: str) -> dict:
  """Runs this script for one framework in a fresh process (see `main`)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    argv = [a for a in argv if not a.startswith(("--only", "--json"))]
    # each framework as its users start it: seat_jax with its default CPU malloc settings
    env = cpu_malloc.environment() if framework == "jax" else None
    subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--only={framework}",
                    f"--json={out}"], check=True, env=env)
    with open(out) as f:
      return json.load(f)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  cfg = model_config(args.depth, args.num_classes, args.dtype)
  if args.threads and (args.only != "both" or args.profile_ops):
    # Before JAX creates its CPU client, which sizes its thread pool from the affinity.
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
  if args.profile_ops:
    rows = profile_ops(args.height, args.width, threads=args.threads)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return {"ops": rows}
  result: dict[str, Any] = dict(
      height=args.height, width=args.width, depth=args.depth, dtype=args.dtype,
      steps=args.steps, warmup=args.warmup, cpu_count=os.cpu_count(), threads=args.threads,
      machine=platform.processor() or platform.machine(), jax_version=jax.__version__,
      load_average_before=os.getloadavg()[0])
  if args.only == "both":
    # One process per framework: XLA's and PyTorch's thread pools spin-wait after each op, and
    # sharing two cores between them made PyTorch steps up to 5x slower in one process.
    for framework in ("jax", "torch"):
      result.update(measure_in_subprocess(argv, framework))
  else:
    result.update(measure(args, cfg))
  for name in [k[:-len("_median_s")] for k in result if k.endswith("_median_s")]:
    if name.startswith("jax") and "torch_median_s" in result:
      ratio = result[f"{name}_median_s"] / result["torch_median_s"]
      result[f"ratio_{name}_over_torch"] = ratio
      print(f"ratio {name} / PyTorch = {ratio:.2f} at {args.height}x{args.width}, "
            f"{args.depth}, JAX {args.dtype}")
  result["load_average_after"] = os.getloadavg()[0]
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
