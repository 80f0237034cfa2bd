"""The one GPU check: the figures benchmarks/RESULTS.md asks for, in one command and one table.

    python benchmarks/gpu_check.py                   # on a GPU: the paper's sizes, ~5-7 minutes
    python benchmarks/gpu_check.py --json=$OUT/gpu_check.json
    python benchmarks/gpu_check.py --smoke           # CPU, tiny model and sizes (in the tests)
    python benchmarks/gpu_check.py --parts=iteration,torch --hw=128,256 --dtypes=float32 \
        --remats=none --timeout=900                  # the CPU comparison of benchmarks/RESULTS.md

Measures, on the first device JAX sees:
  iteration  the full SEAT iteration (segmenter + discriminator and both optimisers, one jitted
             step; 1024x512 source crop + 1024x512 target, batch 1 + 1) in float32 and bfloat16,
             without and with rematerialisation (`model.remat=blocks`): iterations/s, XLA's FLOP
             count, MFU against the device's peak, peak memory (XLA's buffer assignment, and the
             allocator's own peak where the device reports one);
  torch      the PyTorch reference iteration (tests/torch_iteration.py: AdaptSegNet's loop with
             SEAT norms, the same sizes) in float32 and bf16 autocast, and the JAX/PyTorch ratio;
  pipeline   the input pipeline on full-size fake PNGs with the default (automatic) worker count:
             pairs/s (it must exceed the iteration rate) and host CPU ms per pair;
  eval       evaluation throughput: 1024x512 images, logits upsampled to 2048x1024, images/s.
Each measurement runs in a fresh process, so the device's peak-memory counter is its own (the
smoke mode runs them in this process). A part that cannot run here (no PyTorch with a GPU, say)
prints why and the rest goes on.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from seat_jax import cpu_malloc  # no JAX import: the parent stays light

REPO = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
# Dense peaks in FLOP/s from the vendors' data sheets (SXM parts); float32 is the non-tensor-core
# rate (XLA may use TF32 tensor cores for float32 matmuls, so float32 MFU can exceed 100%).
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
}
PAPER = {"source_hw": (512, 1024), "target_hw": (512, 1024), "eval_hw": (512, 1024),
         "label_hw": (1024, 2048), "steps": 10, "warmup": 2, "depth": "resnet101"}
SMOKE = {"source_hw": (64, 128), "target_hw": (64, 128), "eval_hw": (64, 128),
         "label_hw": (128, 256), "steps": 2, "warmup": 1, "depth": "tiny"}
PARTS = ("iteration", "torch", "pipeline", "eval")


def _config(dtype: str, remat: str, sizes: dict):
  from seat_jax import presets  # pylint: disable=g-import-not-at-top
  config = presets.gta("mul")
  config.model.dtype, config.model.remat = dtype, remat
  if sizes["depth"] == "tiny":
    config.model.stage_sizes, config.model.base_width = (1, 1, 1, 1), 8
  return config


def _peak_flops(dtype: str):
  import jax  # pylint: disable=g-import-not-at-top
  kind = getattr(jax.devices()[0], "device_kind", "")
  return next((peaks[dtype] for name, peaks in PEAK_FLOPS.items() if name in kind), None)


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
  sys.path.insert(0, str(REPO / "benchmarks"))
  import memory  # pylint: disable=g-import-not-at-top  (benchmarks/memory.py)

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
  compiled = train_step.jit_train_step(trainer).lower(state, batch, weights).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], batch, weights)
    jax.block_until_ready(metrics)

  seconds = _timed(step, sizes["steps"], sizes["warmup"])
  peak = _peak_flops(dtype)
  return {"part": "iteration", "dtype": dtype, "remat": remat, "compile_s": round(compile_s, 1),
          "ms": round(seconds * 1e3, 2), "it_per_s": round(1 / seconds, 2),
          "tflop": round(flops / 1e12, 3),
          "mfu": round(flops / seconds / peak, 3) if peak and flops else None,
          "xla_peak_gib": memory.memory_of(compiled)["peak_gib"],
          "device_peak_gib": _device_peak_gib(), "finite": bool(jnp.isfinite(
              jax.tree.leaves(holder["state"].params)[0]).all())}


def measure_torch(dtype: str, sizes: dict) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {"part": "torch", "dtype": dtype, "skipped": "PyTorch is not installed"}
  sys.path.insert(0, str(REPO / "tests"))
  import torch_iteration as ti  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
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

  seconds = _timed(step, sizes["steps"], sizes["warmup"])
  peak = round(torch.cuda.max_memory_allocated() / GIB, 2) if device == "cuda" else "n/a"
  return {"part": "torch", "dtype": dtype, "device": device, "ms": round(seconds * 1e3, 2),
          "it_per_s": round(1 / seconds, 2), "device_peak_gib": peak}


def measure_pipeline(sizes: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from seat_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / "benchmarks"))
  import input_pipeline as bench  # pylint: disable=g-import-not-at-top  (benchmarks/...)

  sources = bench.make_sources(num_images=2 if sizes["depth"] == "tiny" else 8)
  workers = ip.worker_count(bench.paper_config(-1, 0.0, "device"))
  pairs_per_s, host_ms = bench.time_pairs(*sources["full"], workers, sizes["steps"] * 3, 0.0,
                                          "device")
  device_ms, agreement = bench.device_part(sources, 0.0, steps=sizes["steps"])
  return {"part": "pipeline", "workers": workers, "cores": len(os.sched_getaffinity(0)),
          "pairs_per_s": round(pairs_per_s, 1), "host_cpu_ms": round(host_ms, 1),
          "device_ms": round(device_ms, 2), "max_diff_vs_host": agreement["max"],
          "backend": jax.default_backend()}


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
          "input_hw": list(sizes["eval_hw"]), "output_hw": list(label_hw)}


def jobs(parts, dtypes, remats) -> list[tuple[str, ...]]:
  out = []
  if "iteration" in parts:
    out += [("iteration", d, r) for d in dtypes for r in remats]
  if "torch" in parts:
    out += [("torch", d) for d in dtypes]
  out += [(p,) for p in ("pipeline", "eval") if p in parts]
  return out


def run_job(job: tuple[str, ...], sizes: dict) -> dict:
  part, *args = job
  fn = {"iteration": measure_iteration, "torch": measure_torch, "pipeline": measure_pipeline,
        "eval": measure_eval}[part]
  try:
    return fn(*args, sizes)
  except Exception as e:  # pylint: disable=broad-except  (report and go on to the next part)
    return {"part": part, "args": args, "failed": f"{type(e).__name__}: {e}"[:500]}


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
    return {"part": job[0], "args": job[1:], "failed": result.stderr[-500:]}
  return json.loads(lines[-1])


def table(rows: list[dict], device: str, sizes: dict) -> str:
  """The results as markdown rows in benchmarks/RESULTS.md's format."""
  lines = [f"Device: {device}, {sizes['depth']}. Iteration: source {sizes['source_hw'][0]}x{sizes['source_hw'][1]}"
           f" + target {sizes['target_hw'][0]}x{sizes['target_hw'][1]} (H x W), batch 1 + 1.", "",
           "| measurement | result | details |", "|---|---|---|"]
  jax_it = {}
  for r in rows:
    if "failed" in r or "skipped" in r:
      lines.append(f"| {r['part']} {' '.join(r.get('args', []) or [r.get('dtype', '')])} | "
                   f"not measured | {r.get('failed') or r.get('skipped')} |")
    elif r["part"] == "iteration":
      jax_it[(r["dtype"], r["remat"])] = r["it_per_s"]
      mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a (unknown peak)"
      lines.append(f"| JAX iteration, {r['dtype']}, remat {r['remat']} | {r['it_per_s']} it/s "
                   f"({r['ms']} ms) | {r['tflop']} TFLOP/it (XLA), MFU {mfu}, peak "
                   f"{r['xla_peak_gib']} GiB (XLA) / {r['device_peak_gib']} GiB (device), "
                   f"compile {r['compile_s']} s |")
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
  parser.add_argument("--remats", default="", help="default none,blocks (smoke: blocks)")
  parser.add_argument("--json", default="", help="also write every result to this file")
  parser.add_argument("--timeout", type=float, default=240.0, help="seconds per measurement")
  parser.add_argument("--job", default="", help=argparse.SUPPRESS)  # one measurement, as JSON
  parser.add_argument("--sizes", default="", help=argparse.SUPPRESS)  # the parent's sizes
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  sizes = dict(SMOKE if args.smoke else PAPER)
  if args.sizes:
    sizes = json.loads(args.sizes)
  if args.hw:
    hw = tuple(int(v) for v in args.hw.split(","))
    sizes.update(source_hw=hw, target_hw=hw)
  sizes.update({k: v for k, v in (("depth", args.depth), ("steps", args.steps)) if v})
  if args.job:
    print(json.dumps(run_job(tuple(args.job.split(":")), sizes)), flush=True)
    return 0
  dtypes = (args.dtypes or ("float32" if args.smoke else "float32,bfloat16")).split(",")
  remats = (args.remats or ("blocks" if args.smoke else "none,blocks")).split(",")
  import jax  # pylint: disable=g-import-not-at-top
  device = f"{jax.devices()[0].platform}:{getattr(jax.devices()[0], 'device_kind', '')}"
  rows = []
  for job in jobs(args.parts.split(","), dtypes, remats):
    start = time.perf_counter()
    row = run_job(job, sizes) if args.smoke else _in_subprocess(job, sizes, args.timeout)
    rows.append(row)
    print(f"{':'.join(job)}: {time.perf_counter() - start:.0f} s {json.dumps(row)}", flush=True)
  print(table(rows, device, sizes))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
