"""Know the GPU run before it starts: XLA:GPU compile, peak memory and FLOPs, on a CPU-only machine.

    pip install -e '.[gpu-compile]'           # jax-cuda12-plugin, -pjrt, nvcc (ptxas); no GPU
    JAX_PLATFORMS=cpu python benchmarks/gpu_compile.py                      # default presets
    JAX_PLATFORMS=cpu python benchmarks/gpu_compile.py --presets=all --cards=h100_sxm
    JAX_PLATFORMS=cpu python benchmarks/gpu_compile.py --presets=configs/gta.py:mul \\
        --set=data.source.resize_hw=720,1280 --set=data.source.crop_hw= \\
        --set=data.target.resize_hw=1024,2048        # full resolution (benchmarks/RESULTS.md)

For each preset (`configs/<file>.py:<row>`) and each card whose XLA target description ships in
benchmarks/gpu_specs/ (copied from openxla/xla), the full training iteration
(`train_step.jit_train_step`: segmenter, discriminators, optimisers, the method's teacher/mixing)
and the evaluation forward (`predict.make_predict_fn`, one image at data.val.resize_hw, logits
upsampled to the label size) are lowered and compiled by XLA:GPU for that card
(`jax.experimental.topologies.get_topology_desc`), at the preset's sizes and batch, for every
dtype x remat asked. Nothing runs; no GPU or CUDA driver is needed.

Reported per row: whether it compiles (or the error); XLA:GPU's peak (arguments + outputs +
temporaries - donated, from `compiled.memory_analysis()`; cuDNN's autotuning workspace is not in
it: a deviceless compile does not autotune); the largest batch that fits each memory budget
(--budgets, GB = 1e9 bytes as vendors count; the batch is doubled and compiled until the peak
exceeds the largest budget or --max_batch; budgets beyond the last compiled batch are
extrapolated linearly from the last two compiles and marked `~`); the kernels one iteration
launches (`kernel_launches`; at batch 1 a GPU iteration is thousands of small ones, RESULTS.md);
the FLOPs of one iteration (XLA's cost analysis of the lowered module: the compiled GPU
executable has none, and cuDNN convolutions are opaque there); and the iteration and whole-run
(config.train.num_steps) time the card's published dense peak implies at --mfu (40% by
default). That MFU is an assumption: `benchmarks/gpu_check.py` measures the real one on a GPU.
"""

import argparse
import dataclasses
import functools
import importlib.util
import json
import math
import os
import pathlib
import re
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
SPECS = pathlib.Path(__file__).resolve().parent / "gpu_specs"
sys.path.insert(0, str(REPO))  # this checkout's seat_jax, matching the configs read from REPO
GIB = 1024 ** 3

# Published dense peaks, FLOP/s (no sparsity). float32 uses the TF32 tensor-core rate where the
# card has one: JAX's default matmul/convolution precision lets XLA:GPU use TF32 on Ampere and
# later. V100 has no bfloat16 units: XLA computes bfloat16 there at the float32 rate.
#   H100 SXM: NVIDIA H100 Tensor Core GPU datasheet (FP32 67, TF32 494.7, BF16 989.4 TFLOPS);
#   H200 SXM: NVIDIA H200 datasheet (the H100's rates: TF32 494.7, BF16 989.4 dense; 141 GB);
#   A100 SXM: NVIDIA A100 datasheet (FP32 19.5, TF32 156, BF16 312 TFLOPS);
#   V100 SXM2: NVIDIA Tesla V100 datasheet (FP32 15.7 TFLOPS; FP16 tensor 125, no BF16).
CARDS = {
    "h100_sxm": {"name": "H100 SXM 80GB", "float32": 494.7e12, "bfloat16": 989.4e12},
    "h200": {"name": "H200 SXM 141GB", "float32": 494.7e12, "bfloat16": 989.4e12},
    "a100_sxm_40": {"name": "A100 SXM 40GB", "float32": 156e12, "bfloat16": 312e12},
    "v100": {"name": "V100 SXM2 16GB", "float32": 15.7e12, "bfloat16": 15.7e12},
}
# The representative subset (--presets=default); --presets=all takes every row of every file.
DEFAULT_PRESETS = ("configs/gta.py:seat", "configs/gta.py:mul", "configs/gta.py:sat",
                   "configs/gta.py:source_only", "configs/gta.py:dacs", "configs/demo.py:seat")
# Stored label size of each validation set: evaluation upsamples the logits to it.
LABEL_HW = {"cityscapes": (1024, 2048)}


@dataclasses.dataclass
class Row:
  preset: str
  card: str
  part: str  # train | eval
  dtype: str
  remat: str
  batch: int = 0
  peak_gib: float | None = None
  tflop: float | None = None  # per iteration (train) or per image (eval)
  kernels: int | None = None  # work the compiled iteration launches (`kernel_launches`)
  compile_s: float = 0.0
  error: str = ""
  fits: dict = dataclasses.field(default_factory=dict)  # budget GB -> largest batch ("~n": est.)
  points: dict = dataclasses.field(default_factory=dict)  # compiled batch -> peak GiB
  ms_at_mfu: float | None = None
  run_hours_at_mfu: float | None = None
  num_steps: int = 0
  sizes: str = ""
  note: str = ""  # how it compiled, when not with XLA's defaults


def target_config(card: str) -> str:
  """The GpuTargetConfigProto text of benchmarks/gpu_specs/<card>.txtpb."""
  path = SPECS / f"{card}.txtpb"
  if not path.exists():
    known = sorted(p.stem for p in SPECS.glob("*.txtpb"))
    raise SystemExit(f"No description for card {card!r} in {SPECS}; shipped: {known}.")
  return path.read_text()


@functools.lru_cache(maxsize=None)
def gpu_devices(card: str):
  """The (abstract) devices of one `card`, for compiling with no GPU present."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                      target_config=target_config(card))
  return tuple(topo.devices)


def cuda_plugin_installed() -> bool:
  try:
    return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))
  except ImportError:  # no jax_plugins package at all
    return False


def preset_rows(spec: str) -> list[str]:
  """`--presets` entries -> ['configs/gta.py:mul', ...]; 'all' = every row of every file."""
  from seat_jax import presets  # pylint: disable=g-import-not-at-top
  rows_of = {"configs/gta.py": presets.GTA_ROWS, "configs/synthia.py": presets.SYNTHIA_ROWS,
             "configs/gta_stage2.py": presets.GTA_STAGE2_ROWS,
             "configs/synthia_stage2.py": presets.SYNTHIA_STAGE2_ROWS,
             "configs/demo.py": presets.DEMO_ROWS}
  out = []
  for item in spec.split(","):
    item = item.strip()
    if item == "default":
      out.extend(DEFAULT_PRESETS)
    elif item == "all":
      out.extend(f"{f}:{r}" for f, rows in rows_of.items() for r in rows)
    elif item in rows_of:  # a whole file
      out.extend(f"{item}:{r}" for r in rows_of[item])
    elif item:
      out.append(item)
  return list(dict.fromkeys(out))


def parse_override(text: str) -> tuple[str, object]:
  """'data.source.crop_hw=512,1024' -> (key, (512, 1024)); '=' alone -> () ; else int/float/str."""
  key, _, value = text.partition("=")
  if value == "" or "," in value:
    return key, tuple(int(v) for v in value.split(",") if v)
  for kind in (int, float):
    try:
      return key, kind(value)
    except ValueError:
      pass
  return key, {"true": True, "false": False}.get(value.lower(), value)


def load_config(preset: str, overrides=()):
  """The config of `configs/<file>.py:<row>`, with `--set` overrides applied."""
  path, _, row = preset.partition(":")
  file = REPO / path
  spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(row) if row else module.get_config()
  # Stage 2 trains on target pseudo-labels; only their presence changes the step.
  if "stage2" in file.stem and not config.data.target.get("pseudo_label_dir"):
    config.data.target.pseudo_label_dir = "/pseudo_labels"
  if overrides:
    config.update_from_flattened_dict(dict(overrides))
  return config


def input_hw(split_config) -> tuple[int, int]:
  """What the model sees of a training domain: its crop, or the resized image when uncropped."""
  hw = tuple(split_config.get("crop_hw") or split_config.resize_hw)
  resize = tuple(split_config.resize_hw)
  if hw[0] > resize[0] or hw[1] > resize[1]:
    raise ValueError(f"crop_hw {hw} must fit inside resize_hw {resize}.")
  return hw


def abstract_batch(config, trainer, batch: int) -> dict:
  """The step's batch as ShapeDtypeStructs, with the keys the input pipeline would deliver."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seat_jax import batch as batch_keys  # pylint: disable=g-import-not-at-top
  from seat_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  shape = lambda s, dt: jax.ShapeDtypeStruct(s, dt, sharding=trainer.data_sharding)  # noqa: E731
  source_hw = input_hw(config.data.source)
  out = {ip.SOURCE_IMAGE: shape((batch, *source_hw, 3), jnp.float32),
         ip.SOURCE_LABEL: shape((batch, *source_hw), jnp.int32)}
  if trainer.opts.uses_target_images:
    target_hw = input_hw(config.data.target)
    out[ip.TARGET_IMAGE] = shape((batch, *target_hw, 3), jnp.float32)
    if batch_keys.target_has_labels(config):
      out[ip.TARGET_LABEL] = shape((batch, *target_hw), jnp.int32)
  return out


def sizes_text(config, trainer) -> str:
  text = "x".join(map(str, input_hw(config.data.source)))
  if trainer.opts.uses_target_images:
    text += " + " + "x".join(map(str, input_hw(config.data.target)))
  return text


def memory_peak_gib(compiled) -> float:
  sys.path.insert(0, str(REPO / "benchmarks"))
  import memory  # pylint: disable=g-import-not-at-top  (benchmarks/memory.py)
  return memory.memory_of(compiled)["peak_gib"]


def lowered_flops(lowered) -> float | None:
  """XLA's FLOP count of a lowered (unoptimised) module. Lower for the host CPU: a module lowered
  for an abstract GPU has no cost analysis, and the unoptimised HLO is the same on both. (A
  compiled executable works too; it counts the optimised module.)"""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get("flops")
  return float(flops) if flops else None


# XLA:GPU's Triton GEMM emitter rejects some float32 HIGHEST-precision dots (the bilinear resize's
# interpolation matrices: "Couldn't find output tile sizes that satisfy hlo") when it compiles
# without autotuning, as a deviceless compile does. Such a module is compiled again with Triton
# GEMMs off (cuBLAS for those dots) and the row says so.
TRITON_GEMM_OFF = {"xla_gpu_enable_triton_gemm": False}


# Set by --triton_gemm=off: compile with TRITON_GEMM_OFF from the start. The isolating parent
# reruns a job so when XLA:GPU aborted the process inside its Triton GEMM fusion (a CHECK failure,
# which no `except` can catch).
TRITON_GEMM_FORCED_OFF = False


# Top-level instructions of the optimised module that launch no work of their own.
_NO_LAUNCH = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}


def kernel_launches(hlo_text: str) -> int:
  """Instructions of the optimised module's entry computation that launch work on the device:
  fusions (XLA's kernels), cuDNN/cuBLAS custom calls, copies, loops (a loop's body counts once).
  The H200 run's iteration was thousands of small kernels; a compile can count them."""
  entry = hlo_text[hlo_text.index("\nENTRY "):]
  entry = entry[:entry.index("\n}")]
  ops = re.findall(r"^\s*(?:ROOT )?%?\S+ = [^=]*? ([a-z][\w\-]*)\(", entry, re.M)
  return sum(op not in _NO_LAUNCH for op in ops)


def compile_lowered(lowered):
  """(compiled, note): compiled with XLA's defaults, else once more with TRITON_GEMM_OFF."""
  if TRITON_GEMM_FORCED_OFF:
    return lowered.compile(compiler_options=TRITON_GEMM_OFF), "triton_gemm off (XLA aborted)"
  try:
    return lowered.compile(), ""
  except Exception as e:  # pylint: disable=broad-except
    if "Couldn't find output tile sizes" not in str(e):
      raise
  return lowered.compile(compiler_options=TRITON_GEMM_OFF), "triton_gemm off"


def lower_train(config, devices, batch: int):
  """The training iteration at `batch` per domain, lowered for `devices` (None: the host's)."""
  import jax  # pylint: disable=g-import-not-at-top
  from seat_jax import train_step  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.train.batch_size = batch
  trainer = train_step.build_trainer(config, devices=devices)
  state = train_step.abstract_state(trainer)
  weights = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=trainer.replicated),
      train_step.loss_weights(config))
  return train_step.jit_train_step(trainer).lower(
      state, abstract_batch(config, trainer, batch), weights)


def compile_train(config, card: str, batch: int, flops: bool = False, row: Row | None = None):
  """(peak GiB, FLOPs or None, seconds, note) of the training iteration at `batch`, for `card`;
  its kernel launches into `row`."""
  start = time.perf_counter()
  compiled, note = compile_lowered(lower_train(config, gpu_devices(card), batch))
  seconds = time.perf_counter() - start
  if row is not None:
    row.kernels = kernel_launches(compiled.as_text())
  count = lowered_flops(lower_train(config, None, batch)) if flops else None
  return memory_peak_gib(compiled), count, seconds, note


def lower_eval(config, devices):
  """Evaluating one validation image, lowered for `devices` (None: the host's)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seat_jax import models, predict  # pylint: disable=g-import-not-at-top,multiple-imports
  from seat_jax import train_step  # pylint: disable=g-import-not-at-top
  mesh = train_step.make_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  model = models.build_segmenter(config.model)
  variables = jax.eval_shape(functools.partial(models.init_variables, model), jax.random.key(0))
  variables = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                           variables)
  val_hw = tuple(config.data.val.resize_hw)
  label_hw = LABEL_HW.get(config.data.val.name, val_hw)
  images = jax.ShapeDtypeStruct((1, *val_hw, 3), jnp.float32, sharding=replicated)
  fn = predict.make_predict_fn(model, config.eval.source_stages)
  return fn.lower(variables, images, out_hw=label_hw)


def compile_eval(config, card: str):
  """(peak GiB, FLOPs, seconds, note) of evaluating one validation image, for `card`."""
  start = time.perf_counter()
  compiled, note = compile_lowered(lower_eval(config, gpu_devices(card)))
  seconds = time.perf_counter() - start
  return memory_peak_gib(compiled), lowered_flops(lower_eval(config, None)), seconds, note


def largest_batches(points: dict[int, float], budgets_gb, complete: bool) -> dict:
  """Budget GB -> the largest compiled batch whose peak fits; past the last compile (when the
  search stopped at --max_batch, `complete` False) a linear estimate from the last two, '~n'
  (or '>n' past four times the last compiled batch)."""
  out = {}
  batches = sorted(points)
  for budget in budgets_gb:
    limit = budget * 1e9 / GIB
    fitting = [b for b in batches if points[b] <= limit]
    best = max(fitting) if fitting else 0
    if not complete and best == batches[-1] and len(batches) >= 2:
      b0, b1 = batches[-2], batches[-1]
      slope = (points[b1] - points[b0]) / (b1 - b0)
      estimate = b1 + int(math.floor((limit - points[b1]) / slope)) if slope > 0 else math.inf
      if estimate > best:  # a linear estimate only up to 4x the last compile, else a bound
        out[budget] = f"~{estimate}" if estimate <= 4 * b1 else f">{4 * b1}"
        continue
    out[budget] = best
  return out


def measure_into(row: Row, measure, args) -> bool:
  """measure() -> (peak GiB, FLOPs, seconds, note) into `row`, with the time the card's peak
  implies at --mfu; False, with row.error set, when it raised."""
  try:
    peak, flops, seconds, row.note = measure()
  except Exception as e:  # pylint: disable=broad-except
    row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if args.verbose:
      traceback.print_exc()
    return False
  row.peak_gib, row.compile_s = peak, round(seconds, 1)
  if flops:
    row.tflop = round(flops / 1e12, 4)
    peak_flops = CARDS.get(row.card, {}).get(row.dtype)
    if peak_flops:
      seconds_per_it = flops / (peak_flops * args.mfu)
      row.ms_at_mfu = round(seconds_per_it * 1e3, 2)
      if row.part == "train":
        row.run_hours_at_mfu = round(seconds_per_it * row.num_steps / 3600, 2)
  return True


def run_train(preset, config, card, dtype, remat, args) -> Row:
  from seat_jax import train_step  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.model.dtype, config.model.remat = dtype, remat
  batch = int(config.train.batch_size)
  row = Row(preset, card, "train", dtype, remat, batch=batch,
            num_steps=int(config.train.num_steps))

  def measure():
    row.sizes = sizes_text(config, train_step.build_trainer(config, devices=gpu_devices(card)))
    return compile_train(config, card, batch, flops=True, row=row)

  if not measure_into(row, measure, args):
    return row
  points = {batch: row.peak_gib}
  if args.max_batch > batch:
    largest = max(args.budgets) * 1e9 / GIB
    b = batch
    while points[b] <= largest and b * 2 <= args.max_batch:
      b *= 2
      try:
        points[b] = compile_train(config, card, b)[0]
      except Exception:  # pylint: disable=broad-except  (too large to compile: stop growing)
        del points[b]
        break
  complete = max(points.values()) > max(args.budgets) * 1e9 / GIB
  row.fits = largest_batches(points, args.budgets, complete or args.max_batch <= batch)
  row.points = points
  if args.verbose:
    print(f"  batch -> peak GiB {points}", file=sys.stderr, flush=True)
  return row


def run_eval(preset, config, card, dtype, args) -> Row:
  config = config.copy_and_resolve_references()
  config.model.dtype, config.model.remat = dtype, "none"
  row = Row(preset, card, "eval", dtype, "none", batch=1,
            sizes="x".join(map(str, config.data.val.resize_hw)))
  measure_into(row, lambda: compile_eval(config, card), args)
  return row


def child_argv(job, args) -> list[str]:
  """The command line that runs only `job` (a partial of run_train/run_eval) in a child."""
  preset, _, card, dtype = job.args[:4]
  remat = job.args[4] if job.func is run_train else "none"
  part = "train" if job.func is run_train else "eval"
  return [sys.executable, str(pathlib.Path(__file__).resolve()), f"--presets={preset}",
          f"--cards={card}", f"--dtypes={dtype}", f"--remats={remat}", f"--parts={part}",
          f"--budgets={','.join(map(str, args.budgets))}", f"--max_batch={args.max_batch}",
          f"--mfu={args.mfu}", *(f"--set={s}" for s in args.set), "--no-isolate",
          *(["--verbose"] if args.verbose else [])]


def run_isolated(job, args) -> Row:
  """`job` in a child process, so an XLA abort costs one row, not the sweep; after an abort the
  child is rerun once with Triton GEMMs off."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  preset, _, card, dtype = job.args[:4]
  remat = job.args[4] if job.func is run_train else "none"
  part = "train" if job.func is run_train else "eval"
  failure = ""
  for extra in ([], ["--triton_gemm=off"]):
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "row.json"
      proc = subprocess.run(child_argv(job, args) + extra + [f"--json={out}"],
                            capture_output=True, text=True, check=False)
      if out.exists():
        rows = json.loads(out.read_text())
        if rows:
          return Row(**{**rows[0], "fits": {int(k): v for k, v in rows[0]["fits"].items()},
                        "points": {int(k): v for k, v in rows[0]["points"].items()}})
    lines = [l for l in proc.stderr.splitlines() if "Check failed" in l or "rror" in l]
    failure = (lines[-1] if lines else f"exit {proc.returncode}")[:200]
  return Row(preset, card, part, dtype, remat, error=f"XLA aborted: {failure}")


def header(budgets) -> str:
  fits = " | ".join(f"batch ≤{b} GB" for b in budgets)
  return (f"| preset | card | part | dtype | remat | input (h x w) | batch | XLA:GPU peak GiB | "
          f"{fits} | TFLOP/it | kernels/it | ms/it at MFU | run h at MFU | compile s | note |\n"
          "|" + "---|" * (14 + len(budgets)))


def format_row(row: Row, budgets) -> str:
  card = CARDS.get(row.card, {}).get("name", row.card)
  if row.error:
    cells = ["error: " + row.error.replace("|", "/")] + [""] * (len(budgets) + 6)
  else:
    cells = [f"{row.peak_gib:.2f}"]
    cells += [str(row.fits.get(b, "")) if row.part == "train" else "" for b in budgets]
    cells += [f"{row.tflop:.3g}" if row.tflop is not None else "",
              str(row.kernels) if row.kernels is not None else "",
              f"{row.ms_at_mfu:.3g}" if row.ms_at_mfu is not None else "",
              f"{row.run_hours_at_mfu:.3g}" if row.run_hours_at_mfu is not None else "",
              f"{row.compile_s:.0f}", row.note]
  return "| " + " | ".join([row.preset.replace("configs/", ""), card, row.part, row.dtype,
                            row.remat, row.sizes, str(row.batch), *cells]) + " |"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="default",
                      help="comma-separated configs/<file>.py[:row] entries, a whole file, "
                           "'default' (the subset in DEFAULT_PRESETS) or 'all'")
  parser.add_argument("--cards", default="h100_sxm,a100_sxm_40,v100",
                      help="names of benchmarks/gpu_specs/*.txtpb")
  parser.add_argument("--parts", default="train,eval")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--remats", default="none,blocks")
  parser.add_argument("--budgets", default="11,16,24,40,80",
                      type=lambda s: [int(v) for v in s.split(",")],
                      help="memory budgets (GB) to report the largest fitting batch for")
  parser.add_argument("--max_batch", type=int, default=8,
                      help="stop doubling the batch here (1 = compile the preset's batch only)")
  parser.add_argument("--mfu", type=float, default=0.4)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. data.source.crop_hw= (no crop); repeatable")
  parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                      help="compile each program in a child process (an XLA abort then costs "
                           "one row, and the child is retried with Triton GEMMs off)")
  parser.add_argument("--triton_gemm", choices=("auto", "off"), default="auto",
                      help="off: compile with xla_gpu_enable_triton_gemm=false from the start")
  parser.add_argument("--json", default="")
  parser.add_argument("--verbose", action="store_true")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # jax 0.10 ships the CUDA 12 plugin (the project's pin, the gpu-compile extra); jax >= 0.11
  # the CUDA 13 one (jax-cuda13-plugin, -pjrt, nvidia-cuda-nvcc and nvidia-nvvm 13.x).
  if not cuda_plugin_installed():
    print("gpu_compile.py needs the CUDA plugin (no GPU): pip install -e '.[gpu-compile]'",
          file=sys.stderr)
    return 2
  global TRITON_GEMM_FORCED_OFF
  TRITON_GEMM_FORCED_OFF = args.triton_gemm == "off"
  overrides = [parse_override(s) for s in args.set]
  parts = args.parts.split(",")
  print(f"MFU assumed: {args.mfu:.0%}; overrides: {dict(overrides) or 'none'}\n")
  print(header(args.budgets), flush=True)
  rows = []
  for preset in preset_rows(args.presets):
    try:
      config = load_config(preset, overrides)
    except Exception as e:  # pylint: disable=broad-except
      rows.append(Row(preset, "-", "config", "-", "-", error=f"{type(e).__name__}: {e}"))
      print(format_row(rows[-1], args.budgets), flush=True)
      continue
    for card in args.cards.split(","):
      for dtype in args.dtypes.split(","):
        todo = []
        if "train" in parts:
          todo += [functools.partial(run_train, preset, config, card, dtype, remat, args)
                   for remat in args.remats.split(",")]
        if "eval" in parts:
          todo.append(functools.partial(run_eval, preset, config, card, dtype, args))
        for job in todo:
          rows.append(run_isolated(job, args) if args.isolate else job())
          print(format_row(rows[-1], args.budgets), flush=True)
          if args.json:
            pathlib.Path(args.json).write_text(
                json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
  return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
