"""Train mode: build the state, jit the step over the device mesh, run the loop and checkpoint.

The step itself (what one iteration computes) is `train_step.py`. Here: the modules and
optimisers from the config, the state created or restored (workdir checkpoint -> config.resume
-> config.init_from -> scratch), the loop with progress, periodic checkpoints and evaluation, and
a clean stop on a non-finite loss or Ctrl-C that keeps every good checkpoint.
"""

import functools
import json
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
from clu import metric_writers
from clu import parameter_overview
from etils import epath

from seat_jax import checkpointing
from seat_jax import config_validation
from seat_jax import errors
from seat_jax import evaluate
from seat_jax import input_pipeline
from seat_jax import progress
from seat_jax import train_step
from seat_jax.train_step import TrainState

PyTree = Any


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training produced a NaN/Inf; the last finite checkpoint is left as it was."""


# ---------------------------------------------------------------------------------------------
# Checkpoints: the segmenter as `model` (checkpointing.MODEL) and one item per other state field.

_ITEM_OF_FIELD = {"disc_params": "disc", "opt_state": "opt_state",
                  "disc_opt_state": "disc_opt_state", "method_state": "method_state"}


def checkpoint_items(state: TrainState) -> dict[str, PyTree]:
  items = {checkpointing.MODEL: state.model_variables()}
  items.update({item: getattr(state, field) for field, item in _ITEM_OF_FIELD.items()})
  return items


def save_checkpoint(manager, state: TrainState, data: input_pipeline.TrainingBatches, config,
                    elapsed: float) -> None:
  step = int(jax.device_get(state.step))
  meta = {"step": step, "elapsed_seconds": elapsed,
          "config": json.loads(config.to_json_best_effort())}
  checkpointing.save_train(manager, step, checkpoint_items(state), data.get_state(), meta)


def restore_full(path, trainer: train_step.Trainer, data) -> tuple[TrainState, float]:
  """Restores state and data position from `path` (a workdir, checkpoints/ or a step folder)."""
  directory, step = checkpointing.resolve(path)
  target = train_step.abstract_state(trainer)
  items, data_iter, meta = checkpointing.restore_train(directory, checkpoint_items(target), step)
  data.set_state(data_iter)
  variables = items[checkpointing.MODEL]
  state = target.replace(
      step=jax.device_put(jnp.asarray(meta["step"], jnp.int32), trainer.replicated),
      params=variables["params"], batch_stats=variables["batch_stats"],
      **{field: items[item] for field, item in _ITEM_OF_FIELD.items()})
  return state, float(meta.get("elapsed_seconds", 0.0))


def initialise(trainer: train_step.Trainer, workdir: epath.Path,
               data) -> tuple[TrainState, float, str]:
  """Resume precedence: workdir checkpoint -> config.resume -> config.init_from -> scratch."""
  config = trainer.config
  own = workdir / "checkpoints"
  if checkpointing.list_steps(own):
    state, elapsed = restore_full(own, trainer, data)
    return state, elapsed, f"resumed from {own} at step {int(state.step)}"
  if config.resume:
    state, elapsed = restore_full(config.resume, trainer, data)
    return state, elapsed, f"resumed from config.resume={config.resume} at step {int(state.step)}"
  state = train_step.create_state(trainer, config.seed)
  if config.init_from == config_validation.SCRATCH:
    return load_method_files(trainer, state), 0.0, (
        "initialised from scratch (random weights, as asked by "
        f"config.init_from={config_validation.SCRATCH!r})")
  if config.init_from:
    variables, report = load_init(trainer, state)
    # Optimiser and discriminator states stay fresh: a warm start, not a resume. The teacher
    # (and DAFormer's reference model) start from the loaded weights.
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                          method_state=jax.jit(
                              functools.partial(train_step.init_method_state, trainer),
                              out_shardings=trainer.replicated)(variables))
    return load_method_files(trainer, state), 0.0, (
        f"initialised the segmenter from config.init_from={config.init_from}: "
        f"{report.summary()}")
  return load_method_files(trainer, state), 0.0, "initialised from scratch (random weights)"


def load_method_files(trainer: train_step.Trainer, state: TrainState) -> TrainState:
  """`state` with the method state the config reads from files (`Method.load_state`: DAFormer's
  feature-distance reference, config.mix.fd_reference), fitted into this segmenter as
  `init_from` is; heads such a file lacks are taken from `state`'s."""
  def restore(path: str, config_key: str):
    try:
      directory, step = checkpointing.resolve(path)
      variables, report = checkpointing.restore_fitted(
          directory, train_step.abstract_state(trainer).model_variables(), step,
          fresh=jax.device_get(state.model_variables()),
          init_domain=trainer.config.get("init_domain", ""))
    except errors.UserError as e:
      raise type(e)(f"{config_key}={path}: {e}") from None
    if jax.process_index() == 0:
      print(f"seat_jax: {config_key}: read {path}: {report.summary()}", flush=True)
    return variables

  method_state = dict(state.method_state)
  for method in trainer.opts.methods:
    method_state = method.load_state(method_state, restore)
  return state.replace(method_state=method_state)


def load_init(trainer: train_step.Trainer, state: TrainState):
  """config.init_from fitted into this preset's model (`warm_start`); heads it cannot give come
  from `state`'s fresh initialisation. Returns (variables, report)."""
  config = trainer.config
  directory, step = checkpointing.resolve(config.init_from)
  abstract = train_step.abstract_state(trainer).model_variables()
  return checkpointing.restore_fitted(directory, abstract, step,
                                      fresh=jax.device_get(state.model_variables()),
                                      init_domain=config.get("init_domain", ""))


# ---------------------------------------------------------------------------------------------
# The loop.


def _all_finite(metrics: dict[str, float]) -> bool:
  return all(math.isfinite(v) for v in metrics.values())


def write_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def log_parameter_overview(state: TrainState, workdir: epath.Path) -> None:
  text = parameter_overview.get_parameter_overview(jax.device_get(state.params),
                                                   include_stats=False)
  (workdir / "parameter_overview.txt").write_text(text)
  count = parameter_overview.count_parameters(state.params)
  disc_count = parameter_overview.count_parameters(state.disc_params) if state.disc_params else 0
  print(f"Segmenter: {count:,} parameters (table in {workdir / 'parameter_overview.txt'}); "
        f"discriminator(s): {disc_count:,}.", flush=True)


_SHOWN_METRICS = ("loss", "seg_main", "adv_main", "d_main_source", "d_main_target", "mix_main",
                   "pseudo_weight", "mic_main", "stuff_loss", "thing_loss", "cluster")


def _metrics_text(metrics: dict[str, float]) -> str:
  shown = " ".join(f"{k}={metrics[k]:.4f}" for k in _SHOWN_METRICS if k in metrics)
  return f"{shown} lr={metrics.get('lr', 0):.2e}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) in `workdir` until `config.train.num_steps`; returns the last metrics."""
  config_validation.validate(config, jax.device_count())
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    write_config(config, workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)

  trainer = train_step.build_trainer(config)
  data = input_pipeline.TrainingBatches(config, trainer.data_sharding,
                                        with_target=trainer.opts.uses_target_images)
  state, elapsed, how = initialise(trainer, workdir, data)
  print(f"seat_jax: {how}; {jax.device_count()} device(s) ({jax.devices()[0].platform}), "
        f"{jax.process_count()} process(es).", flush=True)
  if is_chief:
    log_parameter_overview(state, workdir)
    writer.write_hparams(_flat_hparams(config))
  step_fn = train_step.jit_train_step(trainer)
  weights = jax.device_put(train_step.loss_weights(config), trainer.replicated)
  manager = checkpointing.train_manager(workdir / "checkpoints", config.train.keep_checkpoints)

  num_steps = config.train.num_steps
  start_step = int(jax.device_get(state.step))
  every = config.train.checkpoint_every
  last_metrics: dict[str, float] = {}
  # Progress (steps/s to the writer, a printed line with the losses and ETA) on the same steps
  # whose metrics are fetched: every log_every steps, the first step and every checkpoint step.
  report = progress.Progress(
      "step", num_steps, writer=writer if is_chief else None, every_steps=config.train.log_every,
      on_steps={start_step + 1, *range(every, num_steps + 1, every)},
      details=lambda _: _metrics_text(last_metrics), enabled=is_chief)
  report(start_step)
  last_good_step = start_step
  run_start = time.perf_counter() - elapsed
  step = start_step
  try:
    with metric_writers.ensure_flushes(writer):
      for step in range(start_step + 1, num_steps + 1):
        state, metrics = step_fn(state, next(data), weights)
        is_last = step == num_steps
        save_now = is_last or step % every == 0
        if step % config.train.log_every == 0 or save_now or step == start_step + 1:
          last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if not _all_finite(last_metrics):
            raise NonFiniteLossError(_nan_message(step, last_metrics, last_good_step, workdir))
          writer.write_scalars(step, last_metrics)
        report(step)
        if save_now:
          save_checkpoint(manager, state, data, config, time.perf_counter() - run_start)
          last_good_step = step
        if config.train.eval_every and (step % config.train.eval_every == 0 or is_last):
          _periodic_eval(trainer, state, config, workdir, step, writer)
  except KeyboardInterrupt:
    # Keep the work done so far: save the current step (if it is finite) before leaving.
    if step != last_good_step and _state_is_finite(state):
      save_checkpoint(manager, state, data, config, time.perf_counter() - run_start)
      print(f"Interrupted: saved step {int(state.step)} in {workdir / 'checkpoints'}.", flush=True)
    raise
  finally:
    manager.wait_until_finished()
    manager.close()
  return last_metrics


def _state_is_finite(state: TrainState) -> bool:
  leaves = jax.tree.leaves((state.params, state.batch_stats, state.disc_params))
  all_finite = jax.jit(lambda xs: jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in xs])))
  return bool(all_finite(leaves))


def _nan_message(step, metrics, last_good_step, workdir) -> str:
  bad = ", ".join(k for k, v in metrics.items() if not math.isfinite(v))
  return (f"Non-finite values ({bad}) at step {step}; training stopped. The last good checkpoint "
          f"(step {last_good_step}) in {workdir / 'checkpoints'} was left intact; rerunning the "
          "same command resumes from it. Usual causes: a learning rate too high for this batch "
          "size (--config.optim.lr), or bfloat16 overflow (--config.model.dtype=float32).")


def _flat_hparams(config) -> dict[str, Any]:
  flat = flax.traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
  return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


def _periodic_eval(trainer, state, config, workdir, step, writer) -> None:
  examples = input_pipeline.create_eval_iterator(
      config, max_examples=config.train.eval_max_examples)
  results = evaluate.evaluate(trainer.model, jax.device_get(state.model_variables()), examples,
                              config, workdir / "eval", step=step, writer=writer, progress=False)
  writer.write_scalars(step, {f"val/{results['headline']}": 100 * results["miou"]})
  print(f"step {step}: target validation {results['headline']} = {100 * results['miou']:.2f}",
        flush=True)
