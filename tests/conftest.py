"""Test-wide settings: small CPU compiles and quiet TensorFlow.

`jax_disable_most_optimizations` makes XLA compile the tiny test models in a fraction of the
time; the numbers stay the same up to float rounding.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
