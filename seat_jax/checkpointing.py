"""Orbax checkpoints: one place that knows the on-disk layout.

Every checkpoint directory is an orbax `CheckpointManager` directory whose steps hold separate
items, so evaluation can restore the `model` item alone. Converted PyTorch weights are written
the same way (one step, items `model` and `meta`), so `config.init_from` and evaluation read
converted weights and training checkpoints through the same code.
"""

from typing import Any

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
  with ocp.CheckpointManager(directory) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(abstract_variables)))
  return restored["model"]
