"""The datasets registry: each dataset's TFDS builder, stored label space and how to prepare it.

Every other module asks this one: the input pipeline opens prepared splits here, the
`prepare_data` command builds them here, config validation takes the dataset names from here.
Builders are TFDS `GeneratorBasedBuilder`s in `data_builders/<name>/`; they are built into
`array_record` files with neither TensorFlow nor apache-beam, by
instantiating the builder and calling `download_and_prepare`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from seat_jax import errors


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What the program knows about one dataset."""
  name: str
  builder_module: str  # the module whose class `Builder` is the TFDS builder
  stored_label_space: str  # the label space the builder stores (seat_jax.labels.LABEL_SPACES)
  generated: bool  # built from code on first use; no download
  manual_dir_hint: str  # what --manual_dir must point at ('' for generated datasets)


REGISTRY = {
    d.name: d for d in (
        Dataset("gta5", "data_builders.gta5.gta5_dataset_builder", "cityscapes19", False,
                "the folder with GTA5's images/ and labels/"),
        Dataset("synthia", "data_builders.synthia.synthia_dataset_builder", "synthia16", False,
                "the extracted RAND_CITYSCAPES/ folder (RGB/, GT/LABELS/)"),
        Dataset("cityscapes", "data_builders.cityscapes.cityscapes_dataset_builder",
                "cityscapes19", False, "the folder with Cityscapes' leftImg8bit/ and gtFine/"),
        Dataset("synthetic_streets",
                "data_builders.synthetic_streets.synthetic_streets_dataset_builder",
                "cityscapes19", True, ""),
    )
}
NAMES = tuple(REGISTRY)


class DatasetNotPreparedError(errors.MissingInputError):
  """A dataset the config names has not been built into the data_dir."""


def get(name: str) -> Dataset:
  """The registry entry of `name`; an unknown name is a usage error listing the known ones."""
  if name not in REGISTRY:
    raise errors.UsageError(f"Unknown dataset {name!r}; expected one of {sorted(REGISTRY)}.")
  return REGISTRY[name]


def builder_class(name: str):
  """Imports (and so registers with TFDS) the builder module of a dataset; returns its class."""
  return importlib.import_module(get(name).builder_module).Builder


def resolved_data_dir(data_dir: str | None) -> str:
  """`data_dir`, or TFDS's default (~/tensorflow_datasets) when it is empty."""
  if data_dir:
    return str(data_dir)
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  return os.path.expanduser(constants.DATA_DIR)


def make_builder(name: str, data_dir: str | None, builder_config: str | Any | None = None):
  """The builder object of `name` in `data_dir`, with its builder config checked by name."""
  cls = builder_class(name)
  if builder_config in ("", None):
    builder_config = None
  elif isinstance(builder_config, str):
    configs = [c.name for c in cls.BUILDER_CONFIGS]
    if not configs:
      raise errors.UsageError(f"Dataset {name!r} has no builder configs; got builder_config="
                              f"{builder_config!r}. Leave it empty.")
    if builder_config not in configs:
      raise errors.UsageError(f"Dataset {name!r} has no builder config {builder_config!r}; "
                              f"expected one of {configs}.")
  return cls(data_dir=resolved_data_dir(data_dir), config=builder_config,
             file_format="array_record")


def full_name(builder) -> str:
  """`name/config` (or `name`) of a builder, as TFDS spells it."""
  config = builder.builder_config_name
  return f"{builder.name}/{config}" if config else builder.name


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None,
            builder_config: str | Any | None = None):
  """Builds a dataset into `data_dir` (TFDS default if empty) unless it is already there.

  Args:
    name: a registry name ('gta5', 'synthia', 'cityscapes', 'synthetic_streets').
    data_dir: the TFDS data dir; the dataset lands in <data_dir>/<name>/[<config>/]<version>/.
    manual_dir: the folder with the extracted downloads (see each builder's
      MANUAL_DOWNLOAD_INSTRUCTIONS); None means TFDS's <data_dir>/downloads/manual.
    builder_config: a config name (gta5: 'original', 'translated', 'original_1280x720',
      'translated_1280x720'; synthia: 'original', 'translated'; cityscapes: 'full',
      'train_1024x512'; synthetic_streets: 'source', 'target'), a BuilderConfig object, or
      None/'' for the default.

  Returns:
    The prepared builder. Raises data_builders.common.DataError for missing or bad input files.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = make_builder(name, data_dir, builder_config)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  builder.download_and_prepare(download_config=download_config)
  return builder


def prepare_command(name: str, builder_config: str, data_dir: str) -> str:
  """The exact command that builds a dataset (named in 'not prepared' errors)."""
  parts = ["python -m seat_jax.prepare_data", name]
  if builder_config:
    parts.append(f"--builder_config={builder_config}")
  if not get(name).generated:
    parts.append(f"--manual_dir=<folder with the raw {name} files>")
  parts.append(f"--data_dir={data_dir}")
  return " ".join(parts)


def get_builder(name: str, data_dir: str | None = None, builder_config: str | Any | None = None):
  """The builder of a prepared dataset (call `.as_data_source(split)` on it).

  A generated dataset (synthetic_streets) is prepared on first use; a downloaded one that is not
  prepared raises DatasetNotPreparedError with the command that builds it.
  """
  builder = make_builder(name, data_dir, builder_config)
  if builder.is_prepared():
    return builder
  if get(name).generated:
    try:
      return prepare(name, data_dir, builder_config=builder_config)
    except FileExistsError:  # another process of the same run built it at the same moment
      builder = make_builder(name, data_dir, builder_config)
      if builder.is_prepared():
        return builder
      raise
  config_name = builder.builder_config_name or ""
  desc = f"dataset {name!r}" + (f" (builder_config {config_name!r})" if config_name else "")
  raise DatasetNotPreparedError(
      f"{desc} is not prepared in data_dir {builder.data_dir_root}. Build it with:\n"
      f"  {prepare_command(name, config_name, builder.data_dir_root)}\n"
      f"where --manual_dir is {get(name).manual_dir_hint} (docs/datasets.md)."
      + _older_layout_hint(builder, name, config_name))


def _older_layout_hint(builder, name: str, config_name: str) -> str:
  """Points at a build made before the dataset had builder configs (e.g. cityscapes 1.0.0)."""
  root = os.path.join(builder.data_dir_root, name)
  if not config_name or not os.path.isdir(root):
    return ""
  versions = sorted(d for d in os.listdir(root) if d[:1].isdigit())
  if not versions:
    return ""
  default = builder.BUILDER_CONFIGS[0].name
  return (f"\n{os.path.join(root, versions[-1])} holds a build from before {name!r} had builder "
          f"configs (the data of its default config {default!r}); it is not read any more, so "
          "build the config you need with the command above and delete that folder.")


def open_data_source(split_config, data_dir: str, *, split: str | None = None,
                     decode_label: bool = True):
  """The random-access data source of one split of a prepared dataset.

  Args:
    split_config: a config.data.{source,target,val} entry (name, builder_config, split).
    data_dir: config.data.data_dir ("" = the TFDS default).
    split: overrides split_config.split.
    decode_label: False leaves the label PNG undecoded (UDA target streams and FDA images
      never look at it; decoding a 2048x1024 label PNG costs ~5-10 ms of CPU).
  """
  name = split_config.name
  split = split or split_config.split
  builder = get_builder(name, data_dir, split_config.get("builder_config", "") or None)
  if split not in builder.info.splits:
    raise errors.UsageError(
        f"dataset {full_name(builder)!r} in {builder.data_dir_root} has no split {split!r}; it "
        f"has {sorted(builder.info.splits)}.")
  decoders = None
  if not decode_label:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    decoders = {"label": tfds.decode.SkipDecoding()}
  return builder.as_data_source(split, decoders=decoders)


def summary(builder) -> str:
  """Example counts per split and what the build skipped or found odd, for the prepare command."""
  lines = [f"Prepared {full_name(builder)} in {builder.data_dir}"]
  for split, info in sorted(builder.info.splits.items()):
    lines.append(f"  {split}: {info.num_examples} examples")
  metadata = builder.info.metadata or {}
  report_file = builder.data_path / "metadata.json"
  for split, entries in sorted(metadata.get("skipped", {}).items()):
    if not entries:
      continue
    lines.append(f"  {split}: skipped {len(entries)} pairs whose image and label sizes differ "
                 f"(listed in {report_file}):")
    for entry in entries:
      lines.append(f"    {entry['id']}: image {entry['image_size_wh']} (W, H) vs label "
                   f"{entry['label_size_wh']}")
  for split, files in sorted(metadata.get("unknown_label_ids", {}).items()):
    if not files:
      continue
    lines.append(f"  {split}: {len(files)} label files hold ids outside the dataset's table; "
                 f"those pixels were stored as 255 (ignored). Listed in {report_file}:")
    for entry in files[:20]:
      counts = ", ".join(f"id {i}: {n} px" for i, n in sorted(entry["pixels_by_id"].items(),
                                                             key=lambda kv: int(kv[0])))
      lines.append(f"    {entry['id']}: {counts}")
    if len(files) > 20:
      lines.append(f"    ... and {len(files) - 20} more")
  return "\n".join(lines)
