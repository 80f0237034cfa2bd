"""Orbax checkpoints: one place that knows the on-disk layout.

Every checkpoint directory is an orbax `CheckpointManager` directory whose steps hold separate
items, so evaluation can restore the `model` item alone. Converted PyTorch weights are written
the same way (one step, items `model` and `meta`), so `config.init_from` and evaluation read
converted weights and training checkpoints through the same code.
"""

from typing import Any

import flax
import jax

import orbax.checkpoint as ocp
from etils import epath


def save_variables(directory, variables: Any, metadata: dict, step: int = 0) -> None:
  """Writes `variables` as the `model` item (and `metadata` as `meta`) of a one-step checkpoint."""
  directory = epath.Path(directory).absolute()
  with ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=True)) as mngr:
    mngr.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(metadata)), force=True)
    mngr.wait_until_finished()


def list_steps(directory) -> list[int]:
  """The steps saved in a checkpoint directory, ascending; [] if there is none."""
  directory = epath.Path(directory)
  if not directory.exists():
    return []
  with ocp.CheckpointManager(directory.absolute()) as mngr:
    return sorted(mngr.all_steps())


def restore_model(directory, abstract_variables: Any, step: int | None = None) -> Any:
  """Restores only the `model` item of `step` (default: the latest) into `abstract_variables`.

  `abstract_variables` is the tree of `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape` of the
  model's init); a checkpoint of another model fails with the names of the mismatching entries.
  """
  directory = epath.Path(directory).absolute()
  steps = list_steps(directory)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {directory}. Expected an orbax checkpoint directory written by training "
        "or by `python -m seat_jax.convert`.")
  step = steps[-1] if step is None or step < 0 else step
  if step not in steps:
    raise FileNotFoundError(f"Step {step} is not in {directory}; saved steps: {steps}.")
  with _manager_for_reading(directory) as mngr:
    _check_compatible(mngr, step, abstract_variables, directory)
    restored = mngr.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(abstract_variables)))
  return restored["model"]


def checkpoint_dir(path) -> epath.Path:
  """Accepts a workdir (with a `checkpoints/` folder) or a checkpoint directory itself."""
  path = epath.Path(path)
  return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def train_manager(directory, keep: int = 0) -> ocp.CheckpointManager:
  """The training run's manager; keep=0 keeps every step (best-on-val needs them all)."""
  return ocp.CheckpointManager(
      epath.Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(create=True, max_to_keep=keep or None))


TRAIN_ITEMS = ("model", "disc", "opt_state", "disc_opt_state")


def train_save_args(items: dict[str, Any], data_iter: dict, meta: dict) -> ocp.args.Composite:
  """Separate items, so that evaluation can restore `model` alone.

  Empty items (no discriminator in a source-only run) are left out: orbax refuses them.
  """
  return ocp.args.Composite(
      **{name: ocp.args.StandardSave(items[name]) for name in _non_empty(items)},
      data_iter=ocp.args.JsonSave(data_iter), meta=ocp.args.JsonSave(meta))


def _non_empty(items: dict[str, Any]) -> list[str]:
  return [name for name in TRAIN_ITEMS if jax.tree.leaves(items[name])]


def restore_train(directory, abstract_items: dict[str, Any], step: int | None = None):
  """Restores every training item of `step` (default latest): (items, data_iter, meta)."""
  directory = epath.Path(directory).absolute()
  steps = list_steps(directory)
  if not steps:
    raise FileNotFoundError(f"No checkpoint to resume from in {directory}.")
  step = steps[-1] if step is None else step
  with _manager_for_reading(directory) as mngr:
    _check_compatible(mngr, step, abstract_items["model"], directory)
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(abstract_items[name])
           for name in _non_empty(abstract_items)},
        data_iter=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
  items = {name: restored[name] if name in _non_empty(abstract_items) else abstract_items[name]
           for name in TRAIN_ITEMS}
  return items, restored["data_iter"], restored["meta"]


def _manager_for_reading(directory) -> ocp.CheckpointManager:
  # Naming the handlers lets orbax report the stored `model` tree before restoring it.
  handlers = {name: ocp.StandardCheckpointHandler() for name in TRAIN_ITEMS}
  handlers.update(data_iter=ocp.JsonCheckpointHandler(), meta=ocp.JsonCheckpointHandler())
  return ocp.CheckpointManager(directory, item_handlers=handlers)


def _shapes(tree) -> dict[str, tuple]:
  flat = flax.traverse_util.flatten_dict(tree, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _check_compatible(mngr, step: int, abstract_model: Any, directory) -> None:
  """Fails with the differing entries when the checkpoint holds another model's variables."""
  stored_meta = mngr.item_metadata(step)["model"]
  stored = _shapes(stored_meta.tree if hasattr(stored_meta, "tree") else stored_meta)
  expected = _shapes(abstract_model)
  missing = sorted(set(expected) - set(stored))
  unexpected = sorted(set(stored) - set(expected))
  mismatched = sorted(k for k in set(stored) & set(expected) if stored[k] != expected[k])
  if not (missing or unexpected or mismatched):
    return

  def listing(title, keys, describe=lambda k: k):
    if not keys:
      return ""
    shown = "\n    ".join(describe(k) for k in keys[:8])
    more = f"\n    ... and {len(keys) - 8} more" if len(keys) > 8 else ""
    return f"\n  {title} ({len(keys)}):\n    {shown}{more}"

  raise ValueError(
      f"The checkpoint in {directory} (step {step}) holds a different model than the config "
      "describes; check model.norm_mode, model.num_classes, model.stage_sizes, "
      "model.base_width against the config the checkpoint was written with (config.json next "
      "to it, or the `meta` item)."
      + listing("missing from the checkpoint", missing)
      + listing("not in this model", unexpected)
      + listing("shape differs", mismatched,
                lambda k: f"{k}: checkpoint {stored[k]}, model {expected[k]}"))
