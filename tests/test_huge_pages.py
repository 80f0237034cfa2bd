"""Commands restart once with glibc's huge-page tunable, keeping the user's own tunables."""

import os
import subprocess
import sys

import pytest

from seat_jax import huge_pages


@pytest.fixture
def supported(monkeypatch):
  monkeypatch.setattr(huge_pages, "_glibc_has_the_tunable", lambda: True)
  monkeypatch.setattr(huge_pages, "_transparent_huge_pages_allowed", lambda: True)
  monkeypatch.setattr(huge_pages.sys, "platform", "linux")


def test_the_tunable_is_added_after_the_users_own(supported):
  assert huge_pages.environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  env = huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "b"}
  assert huge_pages.environment(env) == env  # once only


def test_opt_out_and_unsupported_systems_keep_the_environment(supported, monkeypatch):
  assert "GLIBC_TUNABLES" not in huge_pages.environment({"SEAT_JAX_HUGE_PAGES": "0"})
  monkeypatch.setattr(huge_pages, "_transparent_huge_pages_allowed", lambda: False)
  assert "GLIBC_TUNABLES" not in huge_pages.environment({})
  monkeypatch.setattr(huge_pages, "_transparent_huge_pages_allowed", lambda: True)
  monkeypatch.setattr(huge_pages.sys, "platform", "darwin")
  assert "GLIBC_TUNABLES" not in huge_pages.environment({})


def test_glibc_version_decides(monkeypatch):
  monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.34"))
  assert not huge_pages._glibc_has_the_tunable()
  monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.36"))
  assert huge_pages._glibc_has_the_tunable()
  monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("", ""))
  assert not huge_pages._glibc_has_the_tunable()


def test_a_command_restarts_itself_with_the_tunable_and_its_arguments():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SEAT_JAX_HUGE_PAGES")}
  script = ("import os, sys; from seat_jax import huge_pages; "
            "print('start', flush=True); huge_pages.restart_with_huge_pages(); "
            "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
  out = subprocess.run([sys.executable, "-W", "ignore", "-c", script, "x", "--y=1"], env=env,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  expected = huge_pages.environment(env).get("GLIBC_TUNABLES")  # None where unsupported
  assert out[-1] == f"{expected} ['x', '--y=1']"
  assert out.count("start") == (2 if expected else 1)  # one restart, not a loop
