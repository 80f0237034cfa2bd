"""The one GPU check: the figures benchmarks/RESULTS.md asks for, in one command and one table.

    python benchmarks/gpu_check.py                   # on a GPU: the paper's sizes, ~10 minutes
    python benchmarks/gpu_check.py --json=$OUT/gpu_check.json --budget=480
    python benchmarks/gpu_check.py --smoke           # CPU, tiny model and sizes (in the tests)
    python benchmarks/gpu_check.py --parts=iteration,torch --hw=128,256 --dtypes=float32 \
        --remats=none --timeout=900                  # the CPU comparison of benchmarks/RESULTS.md

Measures, on the first device JAX sees, the most wanted first (--budget drops the last):
  iteration  the full SEAT iteration (segmenter + discriminator and both optimisers, one jitted
             step; 1024x512 source crop + 1024x512 target, batch 1 + 1) in float32 and bfloat16
             (`--remats=none,blocks` adds rematerialisation, ~90 s of compile each on an H200):
             iterations/s, XLA's FLOP count of the unoptimised module, MFU against the card's
             dense peak (TF32 for float32, as XLA:GPU computes it), peak memory (XLA's buffer
             assignment and the allocator's peak), and the device kernels of 3 traced steps
             (convolution / other matrix / the rest, and the top kernels);
             Then the iteration again with each `--compare` config override (default
             train.joint_pass=True, source and target in one segmenter pass), in bfloat16 when
             measured, and its speed against the default's;
  torch      the PyTorch reference iteration (tests/torch_iteration.py: AdaptSegNet's loop with
             SEAT norms, the same sizes, cudnn.benchmark on) in float32 and bf16 autocast, and
             the JAX/PyTorch ratio; its peak is taken after the warm-up steps;
  pipeline   the input pipeline on full-size fake PNGs with the default (automatic) worker count:
             pairs/s (it must exceed the iteration rate) and host CPU ms per pair;
  eval       evaluation throughput: 1024x512 images, logits upsampled to 2048x1024, images/s.
Each measurement runs in a fresh process, so the device's peak-memory counter is its own, and the
parent never starts JAX (on a GPU it would take the memory); the smoke mode runs them in this
process. A part that cannot run here (no PyTorch with a GPU, say) prints why and the rest goes
on; with --json the results are written after every part, so a stopped check keeps them.
"""

import argparse
import collections
import gzip
import importlib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from seat_jax import cpu_malloc  # no JAX import: the parent stays light

REPO = pathlib.Path(__file__).resolve().parents[1]


def _benchmark(name: str):
  """Another script of benchmarks/ as a module (put on sys.path once; imported lazily, so the
  parent process never loads JAX)."""
  folder = str(REPO / "benchmarks")
  if folder not in sys.path:
    sys.path.insert(0, folder)
  return importlib.import_module(name)
GIB = 1024 ** 3
# Dense peaks in FLOP/s from the vendors' data sheets (SXM parts). float32 is the TF32 tensor-core
# rate, as in benchmarks/gpu_compile.py: JAX's default precision lets XLA:GPU (and cuDNN under
# PyTorch's default allow_tf32 for convolutions) compute float32 convolutions and dots in TF32.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "H100": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}
PAPER = {"source_hw": (512, 1024), "target_hw": (512, 1024), "eval_hw": (512, 1024),
         "label_hw": (1024, 2048), "steps": 10, "warmup": 2, "depth": "resnet101",
         "profile_steps": 3}
SMOKE = {"source_hw": (64, 128), "target_hw": (64, 128), "eval_hw": (64, 128),
         "label_hw": (128, 256), "steps": 2, "warmup": 1, "depth": "tiny", "profile_steps": 1}
PARTS = ("iteration", "torch", "pipeline", "eval")


def _config(dtype: str, remat: str, sizes: dict):
  from seat_jax import presets  # pylint: disable=g-import-not-at-top
  gpu_compile = _benchmark("gpu_compile")
  config = presets.gta("mul")
  config.model.dtype, config.model.remat = dtype, remat
  if sizes["depth"] == "tiny":
    config.model.stage_sizes, config.model.base_width = (1, 1, 1, 1), 8
  config.update_from_flattened_dict(dict(map(gpu_compile.parse_override, sizes.get("set", ()))))
  return config


def _peak_flops(dtype: str):
  import jax  # pylint: disable=g-import-not-at-top
  kind = getattr(jax.devices()[0], "device_kind", "")
  return next((peaks[dtype] for name, peaks in PEAK_FLOPS.items() if name in kind), None)


def _profiled(step, steps: int) -> dict | None:
  """The device kernels of `steps` calls of step(), from a JAX profiler trace (None: steps 0)."""
  if not steps:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for _ in range(steps):
        step()
    path = next(pathlib.Path(log_dir).glob("plugins/profile/*/perfetto_trace.json.gz"))
    with gzip.open(path) as f:
      return kernel_summary(json.load(f), steps)


# Kernel-name fragments of cuDNN/cuBLAS/CUTLASS convolution and matrix kernels (nvidia names).
_CONV = re.compile(r"conv|fprop|dgrad|wgrad|cudnn|implicit_gemm", re.I)
_GEMM = re.compile(r"gemm|cublas|cutlass|xmma|wgmma|matmul", re.I)


def kernel_summary(trace: dict, steps: int, top: int = 20) -> dict:
  """Per step: time in device kernels (events on a '/device:' process's 'Stream' threads of a
  perfetto trace), split into convolution, other matrix kernels and the rest (XLA's fusions,
  copies, reductions), and the `top` kernels by time. The CPU's trace has no device streams."""
  events = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  time_us, count = collections.Counter(), collections.Counter()
  for e in events:
    if (e.get("ph") == "X" and processes.get(e.get("pid"), "").startswith("/device:")
        and threads.get((e.get("pid"), e.get("tid")), "").startswith("Stream")):
      time_us[e["name"]] += e.get("dur", 0)
      count[e["name"]] += 1
  if not time_us:
    device_threads = sorted({name for (pid, _), name in threads.items()
                             if processes.get(pid, "").startswith("/device:")})
    if device_threads:  # a device whose kernel lines are named otherwise: say what there was
      return {"note": "no 'Stream' thread on the device", "device_threads": device_threads[:20]}
    return {"note": "no device kernels in the trace (a CPU run)"}
  split = collections.Counter()
  for name, us in time_us.items():
    split["convolution" if _CONV.search(name) else "matrix" if _GEMM.search(name)
          else "other"] += us
  per_step = lambda us: round(us / 1e3 / steps, 3)
  return {"kernel_ms": per_step(sum(time_us.values())),
          "split_ms": {k: per_step(v) for k, v in sorted(split.items())},
          "top": [[name[:120], per_step(us), round(count[name] / steps, 1)]
                  for name, us in time_us.most_common(top)]}


def _device_name() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return f"{device.platform}:{getattr(device, 'device_kind', '')} (jax {jax.__version__})"


def _device_peak_gib():
  """The allocator's peak on the device, or 'n/a' where the backend keeps none (the CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return round(peak / GIB, 2) if peak else "n/a"


def _timed(fn, steps: int, warmup: int) -> float:
  """Median seconds of fn() (which blocks until its result is ready) after the warm-up calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure_iteration(dtype: str, remat: str, sizes: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seat_jax import input_pipeline as ip, train_step  # pylint: disable=g-import-not-at-top,multiple-imports
  memory, gpu_compile = _benchmark("memory"), _benchmark("gpu_compile")

  config = _config(dtype, remat, sizes)
  trainer = train_step.build_trainer(config)
  state = train_step.create_state(trainer, 0)
  weights = jax.device_put(train_step.loss_weights(config), trainer.replicated)
  key = jax.random.key(0)
  batch = jax.device_put({
      ip.SOURCE_IMAGE: jax.random.normal(key, (1, *sizes["source_hw"], 3)) * 50,
      ip.SOURCE_LABEL: jax.random.randint(key, (1, *sizes["source_hw"]), 0, 19),
      ip.TARGET_IMAGE: jax.random.normal(key, (1, *sizes["target_hw"], 3)) * 50,
  }, trainer.data_sharding)
  start = time.perf_counter()
  lowered = train_step.jit_train_step(trainer).lower(state, batch, weights)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  # The unoptimised module's count: in the compiled GPU executable cuDNN's convolutions are
  # custom calls that XLA's cost analysis does not count (it gave 0.06 of 4.7 TFLOP on an H200).
  flops = gpu_compile.lowered_flops(lowered) or gpu_compile.lowered_flops(compiled) or 0.0
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], batch, weights)
    jax.block_until_ready(metrics)

  seconds = _timed(step, sizes["steps"], sizes["warmup"])
  try:  # the trace is extra: a profiler that cannot start on this machine loses no figure
    profile = _profiled(step, sizes.get("profile_steps", 0))
  except Exception as e:  # pylint: disable=broad-except
    profile = {"note": f"profiler failed: {type(e).__name__}: {e}"[:300]}
  peak = _peak_flops(dtype)
  return {"part": "iteration", "dtype": dtype, "remat": remat, "compile_s": round(compile_s, 1),
          "ms": round(seconds * 1e3, 2), "it_per_s": round(1 / seconds, 2),
          "tflop": round(flops / 1e12, 3),
          "mfu": round(flops / seconds / peak, 3) if peak and flops else None,
          "xla_peak_gib": memory.memory_of(compiled)["peak_gib"],
          "device_peak_gib": _device_peak_gib(), "finite": bool(jnp.isfinite(
              jax.tree.leaves(holder["state"].params)[0]).all()), "device": _device_name(),
          **({"profile": profile} if profile else {})}


def measure_torch(dtype: str, sizes: dict) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {"part": "torch", "dtype": dtype, "skipped": "PyTorch is not installed"}
  sys.path.insert(0, str(REPO / "tests"))
  import torch_iteration as ti  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest kernels, as ADVENT's train.py
  stages, width = ((1, 1, 1, 1), 8) if sizes["depth"] == "tiny" else ((3, 4, 23, 3), 64)
  model = ti.use_domain_norms(torch_reference.DeepLabMultiTorch(
      num_classes=19, stage_sizes=stages, base_width=width), "seat").to(device)
  discs = {"main": ti.FCDiscriminatorTorch(19).to(device)}
  settings = ti.Settings(adv_mode="multi_level_sum", duplicate_listing=True,
                         autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None)
  iteration = ti.TorchIteration(model, discs, settings)
  gen = torch.Generator().manual_seed(0)
  batch = {"source_image": torch.randn(1, 3, *sizes["source_hw"], generator=gen) * 50,
           "source_label": torch.randint(0, 19, (1, *sizes["source_hw"]), generator=gen),
           "target_image": torch.randn(1, 3, *sizes["target_hw"], generator=gen) * 50}
  batch = {k: v.to(device) for k, v in batch.items()}
  counter = iter(range(10 ** 6))

  def step():
    iteration.step(next(counter), batch)  # .item() on the losses synchronises
    if device == "cuda":
      torch.cuda.synchronize()

  for _ in range(sizes["warmup"]):
    step()
  if device == "cuda":  # cudnn.benchmark's trial workspaces (132 GiB on an H200) are not the run's
    torch.cuda.reset_peak_memory_stats()
  seconds = _timed(step, sizes["steps"], 0)
  peak = round(torch.cuda.max_memory_allocated() / GIB, 2) if device == "cuda" else "n/a"
  return {"part": "torch", "dtype": dtype, "device": device, "ms": round(seconds * 1e3, 2),
          "it_per_s": round(1 / seconds, 2), "device_peak_gib": peak,
          "torch": torch.__version__}


def measure_pipeline(sizes: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from seat_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  bench = _benchmark("input_pipeline")

  sources = bench.make_sources(num_images=2 if sizes["depth"] == "tiny" else 8)
  workers = ip.worker_count(bench.paper_config(-1, 0.0, "device"))
  pairs_per_s, host_ms = bench.time_pairs(*sources["full"], workers, sizes["steps"] * 3, 0.0,
                                          "device")
  device_ms, agreement = bench.device_part(sources, 0.0, steps=sizes["steps"])
  return {"part": "pipeline", "workers": workers, "cores": len(os.sched_getaffinity(0)),
          "pairs_per_s": round(pairs_per_s, 1), "host_cpu_ms": round(host_ms, 1),
          "device_ms": round(device_ms, 2), "max_diff_vs_host": agreement["max"],
          "backend": jax.default_backend(), "device": _device_name()}


def measure_eval(sizes: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from seat_jax import models, predict  # pylint: disable=g-import-not-at-top,multiple-imports
  config = _config("float32", "none", sizes)
  model = models.build_segmenter(config.model)
  variables = models.init_variables(model, jax.random.key(0))
  fn = predict.make_predict_fn(model, config.eval.source_stages)
  images = jax.random.normal(jax.random.key(1), (1, *sizes["eval_hw"], 3)) * 50
  label_hw = tuple(sizes["label_hw"])
  seconds = _timed(lambda: jax.block_until_ready(fn(variables, images, out_hw=label_hw)),
                   sizes["steps"], sizes["warmup"])
  return {"part": "eval", "images_per_s": round(1 / seconds, 2), "ms": round(seconds * 1e3, 1),
          "input_hw": list(sizes["eval_hw"]), "output_hw": list(label_hw),
          "device": _device_name()}


def jobs(parts, dtypes, remats, compare=()) -> list[tuple[str, ...]]:
  """The measurements, the most wanted first (a --budget cut drops the last): the iteration as
  trained by default, PyTorch's for the ratio, the compared config variants (bfloat16 if
  measured), the input pipeline, remat's variants, evaluation."""
  iterations = [("iteration", d, r) for r in remats for d in dtypes] if "iteration" in parts else []
  out = [j for j in iterations if j[2] == "none"]
  out += [("torch", d) for d in dtypes] if "torch" in parts else []
  variant_dtype = "bfloat16" if "bfloat16" in dtypes else dtypes[0]
  out += [("iteration", variant_dtype, "none", c) for c in compare] if "iteration" in parts else []
  out += [("pipeline",)] if "pipeline" in parts else []
  out += [j for j in iterations if j[2] != "none"]
  return out + ([("eval",)] if "eval" in parts else [])


def run_job(job: tuple[str, ...], sizes: dict) -> dict:
  part, *args = job
  fn = {"iteration": measure_iteration, "torch": measure_torch, "pipeline": measure_pipeline,
        "eval": measure_eval}[part]
  variant = args[2:] if part == "iteration" else []  # a compared variant's config overrides
  if variant:
    args, sizes = args[:2], {**sizes, "set": [*sizes.get("set", ()), *variant]}
  try:
    row = fn(*args, sizes)
  except Exception as e:  # pylint: disable=broad-except  (report and go on to the next part)
    row = {"part": part, "args": [*args, *variant], "failed": f"{type(e).__name__}: {e}"[:500]}
  return {**row, "variant": variant} if variant else row


def _in_subprocess(job, sizes: dict, timeout: float) -> dict:
  cmd = [sys.executable, __file__, "--job=" + ":".join(job), "--sizes=" + json.dumps(sizes)]
  try:
    # each framework as its docs start it: seat_jax with its CPU malloc settings (cpu_malloc),
    # one arena for the full-size model, as docs/benchmarks.md advises for CPU runs of it
    env = None
    if job[0] != "torch":
      mode = "one_arena" if sizes["depth"] == "resnet101" else ""
      env = cpu_malloc.environment({cpu_malloc.MODE: mode, **os.environ})
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                            env=env)
  except subprocess.TimeoutExpired:
    return {"part": job[0], "args": job[1:], "failed": f"timed out after {timeout:.0f} s"}
  lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
  if result.returncode or not lines:
    return {"part": job[0], "args": job[1:],
            "failed": f"exit {result.returncode}: {error_of(result.stderr)}"}
  return json.loads(lines[-1])


def error_of(stderr: str) -> str:
  """The line that says why a process died: XLA's fatal log line ('F1204 ... Check failed: ...')
  where there is one (its stack trace follows it), else the last line (Python's exception)."""
  lines = [l.strip() for l in stderr.splitlines() if l.strip()]
  fatal = [l for l in lines if re.match(r"F\d{4} ", l)]
  reason = fatal[0] if fatal else lines[-1] if lines else "no output"
  return reason[:500]


def table(rows: list[dict], device: str, sizes: dict) -> str:
  """The results as markdown rows in benchmarks/RESULTS.md's format."""
  lines = [f"Device: {device}, {sizes['depth']}. Iteration: source {sizes['source_hw'][0]}x{sizes['source_hw'][1]}"
           f" + target {sizes['target_hw'][0]}x{sizes['target_hw'][1]} (H x W), batch 1 + 1"
           + "".join(f", {s}" for s in sizes.get("set", ())) + ".", "",
           "| measurement | result | details |", "|---|---|---|"]
  jax_it = {(r["dtype"], r["remat"]): r["it_per_s"] for r in rows
            if r["part"] == "iteration" and "it_per_s" in r and not r.get("variant")}
  for r in rows:
    if "failed" in r or "skipped" in r:
      name = " ".join([r["part"], *(r.get("args") or [r.get("dtype", "")])]).strip()
      lines.append(f"| {name} | not measured | {r.get('failed') or r.get('skipped')} |")
    elif r["part"] == "iteration":
      mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a (unknown peak)"
      variant = "".join(f", {v}" for v in r.get("variant", ()))
      default = jax_it.get((r["dtype"], r["remat"])) if variant else None
      versus = f"{r['it_per_s'] / default:.2f}x the default's speed, " if default else ""
      lines.append(f"| JAX iteration, {r['dtype']}, remat {r['remat']}{variant} | "
                   f"{r['it_per_s']} it/s ({r['ms']} ms) | {versus}"
                   f"{r['tflop']} TFLOP/it (XLA), MFU {mfu}, peak "
                   f"{r['xla_peak_gib']} GiB (XLA) / {r['device_peak_gib']} GiB (device), "
                   f"compile {r['compile_s']} s |")
      if "kernel_ms" in r.get("profile", {}):
        prof = r["profile"]
        split = ", ".join(f"{k} {v} ms" for k, v in prof["split_ms"].items())
        top = "; ".join(f"{name[:60]} {ms} ms x{n}" for name, ms, n in prof["top"][:3])
        lines.append(f"| kernels of that iteration | {prof['kernel_ms']} ms/step | {split}; "
                     f"top: {top} |")
    elif r["part"] == "torch":
      ratio = jax_it.get((r["dtype"], "none"), jax_it.get((r["dtype"], "blocks")))
      ratio_text = f", JAX / PyTorch speed {ratio / r['it_per_s']:.2f}x" if ratio else ""
      lines.append(f"| PyTorch iteration, {r['dtype']} ({r['device']}) | {r['it_per_s']} it/s "
                   f"({r['ms']} ms) | peak {r['device_peak_gib']} GiB{ratio_text} |")
    elif r["part"] == "pipeline":
      lines.append(f"| input pipeline, {r['workers']} workers/domain ({r['cores']} cores) | "
                   f"{r['pairs_per_s']} pairs/s | host {r['host_cpu_ms']} ms CPU/pair, device "
                   f"part {r['device_ms']} ms/pair ({r['backend']}), max |device - host| "
                   f"{r['max_diff_vs_host']:.3f} |")
    elif r["part"] == "eval":
      lines.append(f"| evaluation {r['input_hw'][1]}x{r['input_hw'][0]} -> "
                   f"{r['output_hw'][1]}x{r['output_hw'][0]} | {r['images_per_s']} images/s | "
                   f"{r['ms']} ms/image, float32 |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny model and sizes, one variant per part, in this process")
  parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {PARTS}")
  parser.add_argument("--hw", default="", help="source crop and target size H,W (paper: 512,1024)")
  parser.add_argument("--depth", choices=("resnet101", "tiny"), default="")
  parser.add_argument("--steps", type=int, default=0, help="timed steps per measurement")
  parser.add_argument("--dtypes", default="", help="default float32,bfloat16 (smoke: float32)")
  parser.add_argument("--remats", default="",
                      help="default none (smoke: blocks); none,blocks adds ~2.5 min on an H200")
  parser.add_argument("--profile_steps", type=int, default=-1,
                      help="iteration steps traced for the kernel split (paper 3, smoke 1; 0: off)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override of the JAX iteration, as gpu_compile.py's (e.g. "
                           "train.joint_pass=False: the references' two segmenter passes)")
  parser.add_argument("--compare", action="append", default=None, metavar="KEY=VALUE",
                      help="measure the iteration again with this config override (bfloat16); "
                           "default train.joint_pass=True (smoke: none); --compare= for none")
  parser.add_argument("--json", default="", help="also write every result to this file")
  parser.add_argument("--timeout", type=float, default=240.0, help="seconds per measurement")
  parser.add_argument("--budget", type=float, default=0.0,
                      help="seconds for the whole check (0: no limit): a measurement that would "
                           "start with less than --min_left seconds left is not started")
  parser.add_argument("--min_left", type=float, default=30.0, help=argparse.SUPPRESS)
  parser.add_argument("--job", default="", help=argparse.SUPPRESS)  # one measurement, as JSON
  parser.add_argument("--sizes", default="", help=argparse.SUPPRESS)  # the parent's sizes
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    cpu_malloc.settings(dict(os.environ))  # a mistyped SEAT_JAX_MALLOC, before any measurement
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  sizes = dict(SMOKE if args.smoke else PAPER)
  if args.sizes:
    sizes = json.loads(args.sizes)
  if args.hw:
    hw = tuple(int(v) for v in args.hw.split(","))
    sizes.update(source_hw=hw, target_hw=hw)
  sizes.update({k: v for k, v in (("depth", args.depth), ("steps", args.steps)) if v})
  if args.profile_steps >= 0:
    sizes["profile_steps"] = args.profile_steps
  if args.set:
    sizes["set"] = args.set
  if args.job:
    print(json.dumps(run_job(tuple(args.job.split(":")), sizes)), flush=True)
    return 0
  dtypes = (args.dtypes or ("float32" if args.smoke else "float32,bfloat16")).split(",")
  remats = (args.remats or ("blocks" if args.smoke else "none")).split(",")
  # The parent never starts JAX itself: on a GPU it would take most of the device's memory
  # before the measuring processes start. The children report the device.
  rows, start_all = [], time.perf_counter()
  compare = [c for c in (args.compare if args.compare is not None else
                         ([] if args.smoke else ["train.joint_pass=True"])) if c]
  for job in jobs(args.parts.split(","), dtypes, remats, compare):
    left = args.budget - (time.perf_counter() - start_all) if args.budget else args.timeout
    if left < args.min_left:
      rows.append({"part": job[0], "args": list(job[1:]),
                   "skipped": f"--budget={args.budget:.0f} s spent"})
    else:
      start = time.perf_counter()
      row = (run_job(job, sizes) if args.smoke
             else _in_subprocess(job, sizes, min(args.timeout, left)))
      rows.append(row)
      print(f"{':'.join(job)}: {time.perf_counter() - start:.0f} s {json.dumps(row)}", flush=True)
    if args.json:  # after every measurement: a check stopped half-way keeps what it measured
      _write_json(args.json, rows)
  print(table(rows, _device_of(rows) or "device unknown", sizes))
  if args.json:
    _write_json(args.json, rows)
  return 0


def _device_of(rows: list[dict]) -> str | None:
  """The JAX device a measuring process reported ("gpu:NVIDIA H200 (jax ...)"; torch's rows say
  only "cuda")."""
  return next((r["device"] for r in rows if ":" in str(r.get("device", ""))), None)


def _write_json(path: str, rows: list[dict]) -> None:
  pathlib.Path(path).write_text(json.dumps({"device": _device_of(rows), "rows": rows}, indent=2))


if __name__ == "__main__":
  sys.exit(main())
