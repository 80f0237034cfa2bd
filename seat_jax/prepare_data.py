"""Builds the seat_jax datasets as array_record, with neither TensorFlow nor apache-beam.

The `tfds build` command needs apache-beam in tensorflow-datasets 4.9.10 (shared/DEPS.md
section 3), so this module is the documented way to prepare data:

  python -m seat_jax.prepare_data gta5 --manual_dir=/data/gta5 --data_dir=/data/tfds
  python -m seat_jax.prepare_data gta5 --builder_config=translated --manual_dir=... --data_dir=...
  python -m seat_jax.prepare_data synthia --manual_dir=/data/RAND_CITYSCAPES --data_dir=...
  python -m seat_jax.prepare_data cityscapes --manual_dir=/data/cityscapes --data_dir=...
  python -m seat_jax.prepare_data synthetic_streets --builder_config=source --data_dir=...

Python API: `prepare(...)` builds (or reuses) a dataset and returns its builder;
`get_builder(...)` returns the builder of a prepared dataset, for `builder.as_data_source(split)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

BUILDER_MODULES = {
    "gta5": "data_builders.gta5.gta5_dataset_builder",
    "synthia": "data_builders.synthia.synthia_dataset_builder",
    "cityscapes": "data_builders.cityscapes.cityscapes_dataset_builder",
    "synthetic_streets": "data_builders.synthetic_streets.synthetic_streets_dataset_builder",
}
# Datasets generated from code: get_builder prepares them on first use.
GENERATED = ("synthetic_streets",)


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  """Imports (and so registers with TFDS) the builder module of a dataset; returns its class."""
  if name not in BUILDER_MODULES:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(BUILDER_MODULES)}.")
  return importlib.import_module(BUILDER_MODULES[name]).Builder


def _make_builder(name: str, data_dir: str | None, builder_config: str | Any | None):
  cls = builder_class(name)
  if builder_config in ("", None):
    builder_config = None
  elif isinstance(builder_config, str):
    configs = [c.name for c in cls.BUILDER_CONFIGS]
    if not configs:
      raise ValueError(f"Dataset {name!r} has no builder configs; got builder_config="
                       f"{builder_config!r}. Leave it empty.")
    if builder_config not in configs:
      raise ValueError(f"Dataset {name!r} has no builder config {builder_config!r}; "
                       f"expected one of {configs}.")
  return cls(data_dir=data_dir or None, config=builder_config, file_format="array_record")


def _full_name(builder) -> str:
  config = builder.builder_config_name
  return f"{builder.name}/{config}" if config else builder.name


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None,
            builder_config: str | Any | None = None):
  """Builds a dataset into `data_dir` (TFDS default if empty) unless it is already there.

  Args:
    name: 'gta5', 'synthia', 'cityscapes' or 'synthetic_streets'.
    data_dir: the TFDS data dir; the dataset lands in <data_dir>/<name>/[<config>/]1.0.0/.
    manual_dir: the folder with the extracted downloads (see each builder's
      MANUAL_DOWNLOAD_INSTRUCTIONS); None means TFDS's <data_dir>/downloads/manual.
    builder_config: a config name ('original'/'translated' for gta5, 'source'/'target' for
      synthetic_streets), a BuilderConfig object, or None/'' for the default.

  Returns:
    The prepared builder. Raises data_builders.DataError for missing or bad input files.
  """
  builder = _make_builder(name, data_dir, builder_config)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  builder.download_and_prepare(download_config=download_config)
  return builder


def get_builder(name: str, data_dir: str | None = None, builder_config: str | Any | None = None):
  """The builder of a prepared dataset (call `.as_data_source(split)` on it).

  A generated dataset (synthetic_streets) is prepared on first use; a manually downloaded
  one that is not prepared raises FileNotFoundError with the command that builds it.
  """
  builder = _make_builder(name, data_dir, builder_config)
  if builder.is_prepared():
    return builder
  if name in GENERATED:
    return prepare(name, data_dir, builder_config=builder_config)
  config_flag = (f" --builder_config={builder.builder_config_name}"
                 if builder.builder_config_name else "")
  raise FileNotFoundError(
      f"Dataset {_full_name(builder)} is not prepared in {builder.data_dir}. Build it with:\n"
      f"  python -m seat_jax.prepare_data {name}{config_flag} --manual_dir=DIR "
      f"--data_dir={builder.data_dir_root}")


def summary(builder) -> str:
  """Example counts per split and the skipped-example report of a prepared builder."""
  lines = [f"Prepared {_full_name(builder)} in {builder.data_dir}"]
  for split, info in sorted(builder.info.splits.items()):
    lines.append(f"  {split}: {info.num_examples} examples")
  skipped = (builder.info.metadata or {}).get("skipped", {})
  for split, entries in sorted(skipped.items()):
    if not entries:
      continue
    lines.append(f"  {split}: skipped {len(entries)} pairs whose image and label sizes differ "
                 f"(listed in {builder.data_path / 'metadata.json'}):")
    for entry in entries:
      lines.append(f"    {entry['id']}: image {entry['image_size_wh']} (W, H) vs label "
                   f"{entry['label_size_wh']}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m seat_jax.prepare_data", description=__doc__.split("\n\n")[0])
  parser.add_argument("name", choices=sorted(BUILDER_MODULES))
  parser.add_argument("--manual_dir", default=None,
                      help="folder with the extracted download (not needed for synthetic_streets)")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default ~/tensorflow_datasets)")
  parser.add_argument("--builder_config", default=None,
                      help="gta5: original|translated; synthetic_streets: source|target")
  args = parser.parse_args(argv)

  import data_builders  # pylint: disable=g-import-not-at-top

  print(f"Preparing {args.name}"
        + (f"/{args.builder_config}" if args.builder_config else "")
        + (f" from {args.manual_dir}" if args.manual_dir else "")
        + f" into {args.data_dir or 'the TFDS default data dir'} ...", flush=True)
  try:
    builder = prepare(args.name, args.data_dir, args.manual_dir, args.builder_config)
  except (data_builders.DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary(builder), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
