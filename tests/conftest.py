"""Test-wide settings: small CPU compiles and quiet TensorFlow.

`jax_disable_most_optimizations` makes XLA compile the tiny test models in a fraction of the
time; the numbers stay the same up to float rounding.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

# Identical programs compiled by several tests (every training run of the same tiny config
# compiles the same step) are compiled once and read back from this on-disk cache afterwards.
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "seat_jax_test_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
