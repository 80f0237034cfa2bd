"""Command: build a dataset into array_record files, with neither TensorFlow nor apache-beam.

  python -m seat_jax.prepare_data gta5 --manual_dir=/data/gta5 --data_dir=/data/tfds
  python -m seat_jax.prepare_data gta5 --builder_config=translated --manual_dir=... --data_dir=...
  python -m seat_jax.prepare_data synthia --manual_dir=/data/RAND_CITYSCAPES --data_dir=...
  python -m seat_jax.prepare_data cityscapes --manual_dir=/data/cityscapes --data_dir=...
  python -m seat_jax.prepare_data synthetic_streets --builder_config=source --data_dir=...

The work is `seat_jax.datasets.prepare`; this prints what was built, skipped and found odd.
"""

import sys

from absl import flags

from seat_jax import cli
from seat_jax import datasets
from seat_jax import errors

_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with the extracted download (not needed for synthetic_streets).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default ~/tensorflow_datasets).")
_BUILDER_CONFIG = flags.DEFINE_string(
    "builder_config", None,
    "gta5: original|translated|original_1280x720|translated_1280x720; synthia: "
    "original|translated; cityscapes: full|train_1024x512; synthetic_streets: source|target.")


def run(argv: list[str]) -> int:
  if len(argv) != 2:
    raise errors.UsageError(
        f"give exactly one dataset name, one of {list(datasets.NAMES)}; got {argv[1:]}.\n"
        "Example: python -m seat_jax.prepare_data gta5 --manual_dir=/data/gta5 "
        "--data_dir=/data/tfds")
  name = argv[1]
  datasets.get(name)  # an unknown name fails here, with the list
  print(f"Preparing {name}"
        + (f"/{_BUILDER_CONFIG.value}" if _BUILDER_CONFIG.value else "")
        + (f" from {_MANUAL_DIR.value}" if _MANUAL_DIR.value else "")
        + f" into {_DATA_DIR.value or 'the TFDS default data dir'} ...", flush=True)
  builder = datasets.prepare(name, _DATA_DIR.value, _MANUAL_DIR.value, _BUILDER_CONFIG.value)
  print(datasets.summary(builder), flush=True)
  return 0


def main(argv: list[str] | None = None) -> int:
  """The command; `argv` without the program name (default sys.argv[1:]). Returns the exit code."""
  argv = sys.argv[1:] if argv is None else argv
  return cli.run(run, ["prepare_data", *argv])


if __name__ == "__main__":
  sys.exit(main())
