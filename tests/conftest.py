"""Test-wide settings: small CPU compiles, PyTorch on one thread and quiet TensorFlow.

`jax_disable_most_optimizations` makes XLA compile the tiny test models in a fraction of the
time; the numbers stay the same up to float rounding.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite's numbers are CPU numbers. This also lets the CUDA plugin, when installed for
# benchmarks/gpu_compile.py, describe a GPU without trying to open one.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# PyTorch (the references) on one thread. `make test` runs two workers on two cores, so the
# other worker's XLA threads hold the second core, and PyTorch's OpenMP threads then wait on
# each other at every operator: the DAFormer reference iteration took 26-82 s per PyTorch run
# in the suite against 0.3 s alone or on one thread beside the same load. Read by OpenMP when
# torch is first imported, which no test module does before this file runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

# Identical programs compiled by several tests (every training run of the same tiny config
# compiles the same step) are compiled once and read back from this on-disk cache afterwards.
# One cache per XLA_FLAGS setting, so a run for another processor (--xla_cpu_max_isa) never
# reads code compiled for this one.
import hashlib  # noqa: E402
import tempfile  # noqa: E402

_FLAGS_TAG = hashlib.sha256(os.environ.get("XLA_FLAGS", "").encode()).hexdigest()[:8]
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), f"seat_jax_test_xla_cache_{_FLAGS_TAG}"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """A TFDS data_dir holding both `synthetic_streets` domains, built once per test worker."""
  from seat_jax import datasets  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds")
  for domain in ("source", "target"):
    datasets.prepare("synthetic_streets", str(data_dir), builder_config=domain)
  return str(data_dir)



_LOST_GROUP = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
  """Fails the grouped tests of a `--dist loadgroup` worker whose xdist_group marks were lost.

  pytest-xdist groups a module by appending "@group" to its tests' ids; with pytest 9.2 that
  no longer takes (pytest-xdist issue 1386), and a module's compile-once fixture then runs on
  every worker instead of one, silently (`make test`: 15.5 instead of 13 minutes). Runs after
  xdist's hook. (Raising here would end the worker with xdist's internal error, not this text.)
  """
  if not getattr(config.option, "loadgroup", False):
    return
  for item in items:
    mark = item.get_closest_marker("xdist_group")
    if mark and not item.nodeid.endswith("@" + mark.args[0]):
      item.stash[_LOST_GROUP] = (
          f"pytest-xdist did not group this test (xdist_group {mark.args[0]!r}) under --dist "
          f"loadgroup, so its module's programs compile on every worker: pytest "
          f"{pytest.__version__} with this pytest-xdist loses the groups (pytest-xdist issue "
          "1386). Install the test extra's versions: pip install -e '.[test]'.")


def pytest_runtest_setup(item):
  if _LOST_GROUP in item.stash:
    pytest.fail(item.stash[_LOST_GROUP], pytrace=False)
