"""Orbax checkpoints: the on-disk layout, the item names, finding steps and restoring them.

Every checkpoint directory is an orbax `CheckpointManager` directory whose steps hold separate
items, so evaluation can restore the `model` item alone. Converted PyTorch weights are written
the same way (one step, items `model` and `meta`), so `config.init_from` and evaluation read
converted weights and training checkpoints through the same code. Wherever the user names a
checkpoint, a run's workdir, its `checkpoints/` folder or one step folder in it are all accepted.
"""

import contextlib
import functools
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from seat_jax import errors
from seat_jax import models
from seat_jax import warm_start

# Item names, written once. `model` = {params, batch_stats} of the segmenter: the only item
# evaluation, pseudo-labels and `init_from` read. The training state adds its own array items.
MODEL = "model"
DATA_ITER = "data_iter"  # the input iterators' positions (JSON)
META = "meta"  # step, elapsed time, the resolved config (JSON)


class CheckpointNotFoundError(errors.MissingInputError):
  """No checkpoint (or not the asked step) where the user pointed."""


class IncompatibleCheckpointError(errors.InvalidInputError):
  """The checkpoint holds another model's variables than the config describes."""


class DamagedCheckpointError(errors.InvalidInputError):
  """A step's files exist but cannot be read."""


def resolve(path) -> tuple[epath.Path, int | None]:
  """(checkpoint directory, step or None) for a workdir, its checkpoints/ or a step folder."""
  path = epath.Path(path)
  if (path / "checkpoints").is_dir():
    return path / "checkpoints", None
  if path.name.isdigit() and int(path.name) in list_steps(path.parent):
    return path.parent, int(path.name)
  return path, None


def list_steps(directory) -> list[int]:
  """The steps saved in a checkpoint directory, ascending; [] if there is none."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  with ocp.CheckpointManager(directory.absolute()) as mngr:
    return sorted(mngr.all_steps())


def find_steps(path, step: int | None = None) -> tuple[epath.Path, list[int]]:
  """The checkpoint directory at `path` and its steps to use, ascending.

  A step folder gives its own step; otherwise `step` if >= 0 (it must exist), else every step.
  """
  directory, folder_step = resolve(path)
  if folder_step is None:
    return directory, steps_to_evaluate(directory, step)
  if step is not None and step >= 0 and step != folder_step:
    raise errors.UsageError(
        f"{path} is the folder of step {folder_step} but config.eval.step={step}; point at the "
        "checkpoints/ folder to choose another step, or leave config.eval.step at -1.")
  return directory, [folder_step]


def steps_to_evaluate(directory, step: int | None) -> list[int]:
  """[step] if step >= 0 (it must exist), else every saved step, ascending."""
  steps = list_steps(directory)
  if not steps:
    raise CheckpointNotFoundError(
        f"No checkpoint in {directory}. Train first (checkpoints go to <workdir>/checkpoints), or "
        "point --config.eval.checkpoint at a run's workdir, its checkpoints/ folder, one step "
        "folder or a directory written by `python -m seat_jax.convert`.")
  if step is not None and step >= 0:
    if step not in steps:
      raise CheckpointNotFoundError(
          f"config.eval.step={step} is not saved in {directory}; saved steps: {steps}. Use one "
          "of them, or -1 for all.")
    return [step]
  return steps


def abstract_variables(model: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """Shapes and dtypes of the model's variables (no compute), placed on `sharding`.

  The default sharding is the first local device, where single-host evaluation runs.
  """
  shapes = jax.eval_shape(functools.partial(models.init_variables, model), jax.random.key(0))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def save_variables(directory, variables: Any, metadata: dict, step: int = 0) -> None:
  """Writes `variables` as the `model` item (and `metadata` as `meta`) of a one-step checkpoint."""
  directory = epath.Path(directory).absolute()
  with ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=True)) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.StandardSave(variables), META: ocp.args.JsonSave(metadata)}), force=True)
    mngr.wait_until_finished()


def restore_model(directory, target: Any, step: int | None = None, *, fresh: Any = None,
                  init_domain: str = "") -> Any:
  """The `model` item of `step` (default: the latest) fitted into the tree of `target`.

  `target` is a tree of `jax.ShapeDtypeStruct` (see `abstract_variables`); the stored model may
  have plain or per-domain norms and heads for another class count (`warm_start.fit_variables`
  says how they are fitted; `fresh` and `init_domain` are passed to it). A checkpoint of
  another model fails with the names of the mismatching entries.
  """
  return restore_fitted(directory, target, step, fresh=fresh, init_domain=init_domain)[0]


def restore_fitted(directory, target: Any, step: int | None = None, *, fresh: Any = None,
                   init_domain: str = "") -> tuple[Any, warm_start.FitReport]:
  """`restore_model` and the report of what was loaded, copied or freshly initialised."""
  directory = epath.Path(directory).absolute()
  step = _existing_step(directory, step)
  stored = restore_stored_model(directory, step)
  variables, report = warm_start.fit_variables(
      stored, target, fresh=fresh, init_domain=init_domain, source=f"{directory} (step {step})")
  placed = jax.tree.map(lambda v, t: jax.device_put(v.astype(t.dtype), t.sharding), variables,
                        target)
  return placed, report


def restore_stored_model(directory, step: int) -> Any:
  """The `model` item of `step` exactly as stored (host arrays), whatever model wrote it."""
  with _reading(directory, step), _manager_for_reading(directory, step) as mngr:
    meta = mngr.item_metadata(step)[MODEL]
    tree = meta.tree if hasattr(meta, "tree") else meta
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
    restored = mngr.restore(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.StandardRestore(abstract)}))
  return jax.tree.map(np.asarray, restored[MODEL])


# What tensorstore / orbax say when a step's files are truncated, missing or corrupt. Orbax
# wraps them in a bare Exception, so they are told from bugs by their text.
_DAMAGE_SIGNS = ("Error reading", "OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "No such file",
                 "checksum", "Unexpected end", "corrupt", "Failed to decode", "Error opening")


@contextlib.contextmanager
def _reading(directory, step: int):
  """Turns tensorstore's errors on damaged files of `step` into DamagedCheckpointError."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (orbax raises bare Exceptions)
    chain, cause = [], e
    while cause is not None:
      chain.append(f"{type(cause).__name__}: {cause}")
      cause = cause.__cause__ or cause.__context__
    detail = next((c for c in chain if any(sign in c for sign in _DAMAGE_SIGNS)), None)
    if detail is None:
      raise
    steps = [s for s in list_steps(directory) if s != step]
    other = (f" Other saved steps: {steps}; --config.eval.step=<step> evaluates one, and "
             "training resumes from the newest readable one once this folder is removed."
             if steps else "")
    raise DamagedCheckpointError(
        f"Step {step} of {directory} cannot be read: its files are damaged or incomplete (a copy "
        f"that stopped early, a full disk).\n{detail.splitlines()[0][:400]}\nCopy "
        f"{epath.Path(directory) / str(step)} again, or use another step.{other}") from None


def train_manager(directory, keep: int = 0) -> ocp.CheckpointManager:
  """The training run's manager; keep=0 keeps every step (best-on-val needs them all)."""
  return ocp.CheckpointManager(
      epath.Path(directory).absolute(),
      options=ocp.CheckpointManagerOptions(create=True, max_to_keep=keep or None))


def save_train(manager: ocp.CheckpointManager, step: int, arrays: dict[str, Any],
               data_iter: dict, meta: dict) -> None:
  """Saves the array items (one of them `model`), the data position and the metadata.

  Empty items (no discriminator in a source-only run) are left out: orbax refuses them.
  """
  manager.save(step, args=ocp.args.Composite(
      **{name: ocp.args.StandardSave(tree) for name, tree in _non_empty(arrays).items()},
      **{DATA_ITER: ocp.args.JsonSave(data_iter), META: ocp.args.JsonSave(meta)}), force=True)


def restore_train(directory, abstract_arrays: dict[str, Any], step: int | None = None):
  """Restores the array items of `step` (default latest): (arrays, data_iter, meta)."""
  directory = epath.Path(directory).absolute()
  step = _existing_step(directory, step)
  stored = _non_empty(abstract_arrays)
  with _reading(directory, step), _manager_for_reading(directory, step) as mngr:
    _check_compatible(mngr, step, abstract_arrays[MODEL], directory)
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(tree) for name, tree in stored.items()},
        **{DATA_ITER: ocp.args.JsonRestore(), META: ocp.args.JsonRestore()}))
  arrays = {name: restored[name] if name in stored else tree
            for name, tree in abstract_arrays.items()}
  return arrays, restored[DATA_ITER], restored[META]


def _existing_step(directory: epath.Path, step: int | None) -> int:
  steps = list_steps(directory)
  if not steps:
    raise CheckpointNotFoundError(
        f"No checkpoint in {directory}. Expected an orbax checkpoint directory written by "
        "training or by `python -m seat_jax.convert` (a workdir, its checkpoints/ folder or a "
        "step folder).")
  step = steps[-1] if step is None or step < 0 else step
  if step not in steps:
    raise CheckpointNotFoundError(f"Step {step} is not in {directory}; saved steps: {steps}.")
  return step


def _non_empty(arrays: dict[str, Any]) -> dict[str, Any]:
  return {name: tree for name, tree in arrays.items() if jax.tree.leaves(tree)}


def _manager_for_reading(directory, step: int) -> ocp.CheckpointManager:
  """A manager that knows a handler for every item stored at `step` (orbax warns otherwise).

  Naming the handlers also lets orbax report the stored `model` tree before restoring it.
  """
  step_dir = epath.Path(directory) / str(step)
  names = [p.name for p in step_dir.iterdir() if p.is_dir()] if step_dir.is_dir() else [MODEL]
  handlers = {name: ocp.StandardCheckpointHandler() for name in names
              if name not in (DATA_ITER, META)}
  handlers.update({DATA_ITER: ocp.JsonCheckpointHandler(), META: ocp.JsonCheckpointHandler()})
  return ocp.CheckpointManager(directory, item_handlers=handlers)


def _shapes(tree) -> dict[str, tuple]:
  flat = flax.traverse_util.flatten_dict(tree, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _check_compatible(mngr, step: int, abstract_model: Any, directory) -> None:
  """Fails with the differing entries when the checkpoint holds another model's variables."""
  stored_meta = mngr.item_metadata(step)[MODEL]
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

  raise IncompatibleCheckpointError(
      f"The checkpoint in {directory} (step {step}) holds a different model than the config "
      "describes; check model.norm_mode, model.num_classes, model.stage_sizes, "
      "model.base_width against the config the checkpoint was written with (config.json next "
      "to it, or the `meta` item)."
      + listing("missing from the checkpoint", missing)
      + listing("not in this model", unexpected)
      + listing("shape differs", mismatched,
                lambda k: f"{k}: checkpoint {stored[k]}, model {expected[k]}"))
