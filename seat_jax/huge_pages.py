"""Start seat_jax's commands with glibc's huge-page tunable, so XLA:CPU's buffers fault less.

Why: XLA:CPU allocates one block for all of a run's temporaries (1.4 GB for the ResNet-101
iteration at 128x256, 5 GB at 256x512) with posix_memalign from a thread's arena, which glibc
serves with a fresh mmap and releases at the end of the run. The kernel then faults in and
zeroes every 4 KiB page again on every iteration: 1.25 million faults and 3 s of system time
per 256x512 iteration on 2 cores, 7.0 s in all. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
glibc asks for transparent huge pages on such mappings (2 MiB pages, about 500x fewer faults)
and the iteration takes 5.5-5.7 s (benchmarks/RESULTS.md, 2026-12-04). Tunables are read when
a process starts, so a command re-executes itself once with the tunable added. It changes
nothing where there is no glibc >= 2.35 or where transparent huge pages are off ("never"),
and `SEAT_JAX_HUGE_PAGES=0` leaves the process as started.
"""

import os
import platform
import sys

TUNABLES = "GLIBC_TUNABLES"
HUGE_PAGES = "glibc.malloc.hugetlb=1"
OPT_OUT = "SEAT_JAX_HUGE_PAGES"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_has_the_tunable() -> bool:
  name, version = platform.libc_ver()
  try:
    return name == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (2, 35)
  except ValueError:
    return False


def _transparent_huge_pages_allowed() -> bool:
  try:
    with open(_THP_SETTING) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def environment(env: dict[str, str] | None = None) -> dict[str, str]:
  """`env` (default os.environ) with the tunable added to GLIBC_TUNABLES where it helps."""
  env = dict(os.environ if env is None else env)
  if (env.get(OPT_OUT) == "0" or HUGE_PAGES in env.get(TUNABLES, "")
      or not sys.platform.startswith("linux") or not _glibc_has_the_tunable()
      or not _transparent_huge_pages_allowed()):
    return env
  env[TUNABLES] = ":".join(filter(None, [env.get(TUNABLES), HUGE_PAGES]))
  return env


def restart_with_huge_pages() -> None:
  """Re-executes this process's command line with the tunable, once; returns if not needed.

  Call it first thing in a command's `__main__` block, before JAX starts any thread.
  """
  env = environment()
  if env.get(TUNABLES) == os.environ.get(TUNABLES):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
