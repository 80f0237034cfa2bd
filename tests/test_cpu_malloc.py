"""CPU commands restart once with glibc malloc settings, keeping the user's own tunables."""

import os
import subprocess
import sys

import pytest

from seat_jax import cpu_malloc

ONE_ARENA = ":".join(cpu_malloc.ONE_ARENA)
HUGE = "glibc.malloc.hugetlb=1"


@pytest.fixture
def supported(monkeypatch):
  monkeypatch.setattr(cpu_malloc, "_glibc_version", lambda: (2, 36))
  monkeypatch.setattr(cpu_malloc, "_transparent_huge_pages_allowed", lambda: True)
  monkeypatch.setattr(cpu_malloc.sys, "platform", "linux")
  monkeypatch.setattr(cpu_malloc.glob, "glob", lambda pattern: [])  # no GPU device node


def test_modes(supported):
  assert cpu_malloc.environment({})["GLIBC_TUNABLES"] == HUGE
  env = cpu_malloc.environment({"SEAT_JAX_MALLOC": "one_arena"})
  assert env["GLIBC_TUNABLES"] == ONE_ARENA
  assert "GLIBC_TUNABLES" not in cpu_malloc.environment({"SEAT_JAX_MALLOC": "0"})
  with pytest.raises(ValueError, match="SEAT_JAX_MALLOC='huge'.*one_arena"):
    cpu_malloc.environment({"SEAT_JAX_MALLOC": "huge"})


def test_settings_are_added_after_the_users_own_and_only_once(supported):
  env = cpu_malloc.environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "A": "b",
                                "SEAT_JAX_MALLOC": "one_arena"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:" + ONE_ARENA
  assert env["A"] == "b"
  assert cpu_malloc.environment(env) == env


def test_a_tunable_the_user_set_keeps_its_value(supported):
  env = cpu_malloc.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4",
                                "SEAT_JAX_MALLOC": "one_arena"})
  tunables = env["GLIBC_TUNABLES"].split(":")
  assert tunables[0] == "glibc.malloc.arena_max=4"
  assert [t for t in tunables if t.startswith("glibc.malloc.arena_max")] == tunables[:1]
  assert tunables[1:] == list(cpu_malloc.ONE_ARENA[1:])


def test_only_cpu_runs_are_changed(supported, monkeypatch):
  assert "GLIBC_TUNABLES" in cpu_malloc.environment({"JAX_PLATFORMS": "cpu"})
  assert "GLIBC_TUNABLES" not in cpu_malloc.environment({"JAX_PLATFORMS": "cuda,cpu"})
  monkeypatch.setattr(cpu_malloc.glob, "glob",
                      lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
  assert "GLIBC_TUNABLES" not in cpu_malloc.environment({})
  assert "GLIBC_TUNABLES" in cpu_malloc.environment({"JAX_PLATFORMS": "cpu"})


def test_unsupported_systems_keep_the_environment(supported, monkeypatch):
  monkeypatch.setattr(cpu_malloc, "_glibc_version", lambda: (2, 34))  # tunables, no hugetlb
  assert "GLIBC_TUNABLES" not in cpu_malloc.environment({})
  assert "GLIBC_TUNABLES" in cpu_malloc.environment({"SEAT_JAX_MALLOC": "one_arena"})
  monkeypatch.setattr(cpu_malloc, "_glibc_version", lambda: (2, 36))
  monkeypatch.setattr(cpu_malloc, "_transparent_huge_pages_allowed", lambda: False)
  assert "GLIBC_TUNABLES" not in cpu_malloc.environment({})
  monkeypatch.setattr(cpu_malloc.sys, "platform", "darwin")
  assert "GLIBC_TUNABLES" not in cpu_malloc.environment({"SEAT_JAX_MALLOC": "one_arena"})


def test_glibc_version(monkeypatch):
  monkeypatch.setattr(cpu_malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
  assert cpu_malloc._glibc_version() == (2, 36)
  monkeypatch.setattr(cpu_malloc.platform, "libc_ver", lambda: ("", ""))
  assert cpu_malloc._glibc_version() == (0, 0)


@pytest.mark.parametrize("mode", ["", "one_arena"])
def test_a_command_restarts_itself_with_the_settings_and_its_arguments(mode):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.update(JAX_PLATFORMS="cpu", SEAT_JAX_MALLOC=mode)
  script = ("import os, sys; from seat_jax import cpu_malloc; "
            "print('start', flush=True); cpu_malloc.restart_with_tuned_malloc(); "
            "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
  out = subprocess.run([sys.executable, "-W", "ignore", "-c", script, "x", "--y=1"], env=env,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  expected = cpu_malloc.environment(env).get("GLIBC_TUNABLES")  # None where unsupported
  assert out[-1] == f"{expected} ['x', '--y=1']"
  assert out.count("start") == (2 if expected else 1)  # one restart, not a loop


def test_a_wrong_mode_ends_with_its_message():
  env = dict(os.environ, SEAT_JAX_MALLOC="yes")
  run = subprocess.run([sys.executable, "-c", "from seat_jax import cpu_malloc; "
                        "cpu_malloc.restart_with_tuned_malloc()"], env=env,
                       capture_output=True, text=True)
  assert run.returncode == 1
  assert run.stderr.strip().startswith("error: SEAT_JAX_MALLOC='yes'")
  assert "Traceback" not in run.stderr


def test_one_arena_keeps_a_large_block_mapped_across_frees():
  """The mechanism: a freed 256 MB block taken by a worker thread is reused without faults."""
  script = """
import ctypes, resource, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
def touch_once():
  p = libc.malloc(1 << 28)
  ctypes.memset(p, 1, 1 << 28)
  libc.free(ctypes.c_void_p(p))
def in_a_thread():
  t = threading.Thread(target=touch_once); t.start(); t.join()
in_a_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
in_a_thread()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.update(JAX_PLATFORMS="cpu", SEAT_JAX_MALLOC="one_arena")
  tuned = cpu_malloc.environment(env)
  if "GLIBC_TUNABLES" not in tuned:
    pytest.skip("glibc tunables not supported here")
  del env["SEAT_JAX_MALLOC"]
  faults = {name: int(subprocess.run([sys.executable, "-c", script], env=e, capture_output=True,
                                     text=True, check=True).stdout)
            for name, e in (("default", env), ("one_arena", tuned))}
  pages = (1 << 28) // 4096
  assert faults["default"] > pages // 2  # glibc mmaps and unmaps the block: faults again
  assert faults["one_arena"] < pages // 50  # reused from the heap
