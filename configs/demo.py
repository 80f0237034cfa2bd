"""The CPU demo: a tiny segmenter on the built-in synthetic_streets domain shift.

`--config=configs/demo.py` trains SEAT (multi-level); `:shared` trains the source-only baseline
(plain BN, no adversary) and `:sat` the shared-affine variant. `make demo` runs all three.
"""

from seat_jax import presets


def get_config(norm_mode: str = "seat"):
  return presets.demo(norm_mode or "seat")
