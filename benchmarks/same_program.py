"""Do two presets train with the same program? Then one XLA:GPU compile measures both.

    JAX_PLATFORMS=cpu python benchmarks/same_program.py configs/gta.py:mic configs/synthia.py:mic

A MiT-B5 compile for a GPU takes about 20 minutes on two cores; lowering takes one. Each preset's
training iteration is lowered (at its own batch, for this host's devices, as
`gpu_compile.py` lowers it) and its StableHLO text, without source locations, is hashed: equal
hashes mean XLA receives the identical program, so its compiled peak and FLOPs are the same.
Exit status 0 when every preset lowers to the first one's program, 1 otherwise.
"""

import argparse
import hashlib
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gpu_compile  # noqa: E402  pylint: disable=g-import-not-at-top


def program_digest(preset: str, overrides=()) -> str:
  """SHA-256 of the preset's lowered training iteration, source locations left out."""
  config = gpu_compile.load_config(preset, overrides)
  lowered = gpu_compile.lower_train(config, None, int(config.train.batch_size))
  return hashlib.sha256(lowered.as_text(debug_info=False).encode()).hexdigest()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("presets", nargs="+", help="configs/<file>.py[:row] entries (two or more)")
  args = parser.parse_args(argv)
  if len(args.presets) < 2:
    parser.error("name at least two presets to compare")
  digests = {}
  for preset in args.presets:
    start = time.perf_counter()
    digests[preset] = program_digest(preset)
    print(f"{preset}: {digests[preset][:16]} ({time.perf_counter() - start:.0f} s to lower)",
          flush=True)
  same = len(set(digests.values())) == 1
  print("the same program" if same else "different programs")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
