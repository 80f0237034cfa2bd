"""Test-wide settings: small CPU compiles and quiet TensorFlow.

`jax_disable_most_optimizations` makes XLA compile the tiny test models in a fraction of the
time; the numbers stay the same up to float rounding.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite's numbers are CPU numbers. This also lets the CUDA plugin, when installed for
# benchmarks/gpu_compile.py, describe a GPU without trying to open one.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
