"""Start seat_jax's CPU runs with glibc malloc settings that make XLA:CPU's temporaries cheap.

Why: XLA:CPU takes all of a run's temporaries in one block (1.4 GB for the ResNet-101
iteration at 128x256, 5 GB at 256x512) from a worker thread. glibc serves a block that large
with a fresh mmap and unmaps it when the run ends, so the kernel faults in and zeroes every page
again on every iteration: 1.25 million faults and 3 s of system time per 256x512 iteration on
2 cores. Two remedies, measured in benchmarks/RESULTS.md (2026-12-04):

- default: `glibc.malloc.hugetlb=1`, transparent huge pages for such blocks, about 100x fewer
  faults. How much it saves depends on how fragmented the machine's memory is (THP may compact
  memory on a fault): 256x512 5.7 s on a fresh machine, 6.9-7.6 s hours later.
- `SEAT_JAX_MALLOC=one_arena`: one arena, no mmap for large blocks, no trimming. The block comes
  from the heap and is reused by the next run: no faults after the first iteration, 6.0-6.6 s
  on that later machine, 0.93-0.99x PyTorch's iteration. It is not the default because one arena
  serialises every thread's small allocations: the demo's tiny model steps 20 % slower. The
  process also keeps its peak memory mapped until it exits. For full-size models on a CPU.

Tunables are read when a process starts, so a command re-executes itself once with them added to
the user's own (a tunable the user set keeps the user's value). Only CPU runs are changed (a GPU
run's temporaries live on the device): JAX_PLATFORMS=cpu, or no GPU device node when
JAX_PLATFORMS is unset. `SEAT_JAX_MALLOC=0` leaves the process as started.
"""

import glob
import os
import platform
import sys

TUNABLES = "GLIBC_TUNABLES"
MODE = "SEAT_JAX_MALLOC"  # unset: huge pages; "one_arena"; "0": nothing
HUGE_PAGES = ("glibc.malloc.hugetlb=1",)
ONE_ARENA = ("glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0",
             "glibc.malloc.trim_threshold=1000000000000", "glibc.malloc.top_pad=0")
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*")


def _glibc_version() -> tuple[int, int]:
  name, version = platform.libc_ver()
  try:
    return tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else (0, 0)
  except ValueError:
    return (0, 0)


def _transparent_huge_pages_allowed() -> bool:
  try:
    with open(_THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def _runs_on_cpu(env: dict[str, str]) -> bool:
  """JAX will pick the CPU: asked for by JAX_PLATFORMS, or no GPU/TPU device node to find."""
  platforms = env.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def settings(env: dict[str, str]) -> tuple[str, ...]:
  """The tunables SEAT_JAX_MALLOC asks for, where this system supports them."""
  mode = env.get(MODE, "")
  if mode not in ("", "one_arena", "0"):
    raise ValueError(f"{MODE}={mode!r}: use one_arena, 0 (leave malloc as it is) or leave it "
                     "unset (huge pages).")
  if mode == "0" or not sys.platform.startswith("linux") or not _runs_on_cpu(env):
    return ()
  if mode == "one_arena":
    return ONE_ARENA if _glibc_version() >= (2, 26) else ()
  huge_pages_work = _glibc_version() >= (2, 35) and _transparent_huge_pages_allowed()
  return HUGE_PAGES if huge_pages_work else ()


def environment(env: dict[str, str] | None = None) -> dict[str, str]:
  """`env` (default os.environ) with the settings the user has not set in GLIBC_TUNABLES."""
  env = dict(os.environ if env is None else env)
  own = env.get(TUNABLES, "")
  users_names = {item.partition("=")[0] for item in own.split(":")}
  missing = [s for s in settings(env) if s.partition("=")[0] not in users_names]
  if missing:
    env[TUNABLES] = ":".join(filter(None, [own, *missing]))
  return env


def restart_with_tuned_malloc() -> None:
  """Re-executes this process's command line with the settings, once; returns if not needed.

  Call it first thing in a command's `__main__` block, before JAX starts any thread.
  """
  try:
    env = environment()
  except ValueError as e:
    sys.exit(f"error: {e}")
  if env.get(TUNABLES) == os.environ.get(TUNABLES):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
