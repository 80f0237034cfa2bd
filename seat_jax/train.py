"""SEAT training: the train state, the jitted adversarial step, and the loop around it.

One call of the step does a whole iteration of AdaptSegNet-style training (REFERENCE 3.2):
  1. source forward with the source norms, CE on main + aux_weight * aux (logits upsampled to the
     input size with the align_corners resize);
  2. target forward with the target norms, adversarial BCE through the discriminator(s) held
     constant, pushing target maps toward the source label (plus optional MinEnt, and CE on
     pseudo-labels in stage 2);
  3. discriminator update on `stop_gradient` maps, source label 0 and target label 1, each half
     weighted; segmenter and discriminator updates are applied together.
"""

import dataclasses
import functools
import json
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers
from clu import parameter_overview
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seat_jax import checkpointing
from seat_jax import config_validation
from seat_jax import input_pipeline
from seat_jax import losses
from seat_jax import models
from seat_jax import optim

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree  # segmenter params (every domain's affine lives here)
  batch_stats: PyTree  # segmenter running statistics, per domain
  opt_state: optax.OptState
  disc_params: dict[str, PyTree]  # one entry per discriminator: {} | {main} | {main, aux}
  disc_opt_state: optax.OptState

  def model_variables(self) -> dict[str, PyTree]:
    return {"params": self.params, "batch_stats": self.batch_stats}


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf; the last finite checkpoint is left as it was."""


def discriminator_names(adv_mode: str) -> tuple[str, ...]:
  return {"none": (), "single": ("main",), "multi_level_sum": ("main",),
          "two_discriminators": ("main", "aux")}[adv_mode]


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The static part of the config that shapes the step's graph."""
  adv_mode: str
  adv_input: str
  # False for a source-only run (no adversary, MinEnt or pseudo-labels): the target images are
  # then never seen, as in the references' source-only baselines (no mixing into shared BN).
  target_pass: bool = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "StepOptions":
    target_pass = bool(config.adv.mode != "none" or config.loss.entropy_weight
                       or config.data.target.pseudo_label_dir)
    return cls(adv_mode=config.adv.mode, adv_input=config.adv.input, target_pass=target_pass)


LOSS_WEIGHT_KEYS = ("multi_level_lambda", "adv_weight", "adv_weight_aux", "aux_weight",
                    "entropy_weight", "target_ce_weight")


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The loss weights, passed to the step as values so changing one does not recompile."""
  values = {"multi_level_lambda": config.adv.multi_level_lambda, "adv_weight": config.adv.weight,
            "adv_weight_aux": config.adv.weight_aux, "aux_weight": config.loss.aux_weight,
            "entropy_weight": config.loss.entropy_weight,
            "target_ce_weight": config.loss.target_ce_weight}
  return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def _output_map(logits: jax.Array, adv_input: str) -> jax.Array:
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return losses.self_information(probs) if adv_input == "entropy" else probs


def discriminator_input(name: str, main: jax.Array, aux: jax.Array, opts: StepOptions,
                        multi_level_lambda: jax.Array | float = 0.0) -> jax.Array:
  """What discriminator `name` sees for upsampled logits (main, aux).

  multi_level_sum (the paper): one D on map(main) + lambda * map(aux); single: map(main);
  two_discriminators (AdaptSegNet): D `main` on map(main) and D `aux` on map(aux).
  """
  if name == "aux":
    return _output_map(aux, opts.adv_input)
  fused = _output_map(main, opts.adv_input)
  if opts.adv_mode == "multi_level_sum":
    fused = fused + multi_level_lambda * _output_map(aux, opts.adv_input)
  return fused


def _upsample(logits: jax.Array, like: jax.Array) -> jax.Array:
  return models.resize_bilinear(logits.astype(jnp.float32), like.shape[1:3])


def make_train_step(model, disc, tx, disc_tx, opts: StepOptions, lr_schedules):
  """Returns step(state, batch, weights) -> (state, metrics); pure, to be jitted by the caller.

  `weights` is `loss_weights(config)`.
  """
  disc_names = discriminator_names(opts.adv_mode)

  def apply_disc(disc_params, name, maps):
    return disc.apply({"params": disc_params[name]}, maps)

  def segmenter_loss(params, state: TrainState, batch, w):
    src_img = batch["source_image"]
    (aux_s, main_s), updated = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, src_img,
        domain="source", train=True, mutable=["batch_stats"])
    aux_s, main_s = _upsample(aux_s, src_img), _upsample(main_s, src_img)
    seg_main = losses.cross_entropy(main_s, batch["source_label"])
    seg_aux = losses.cross_entropy(aux_s, batch["source_label"])
    total = seg_main + w["aux_weight"] * seg_aux
    metrics = {"seg_main": seg_main, "seg_aux": seg_aux}
    if not opts.target_pass:
      return total, (updated["batch_stats"], {"source": (main_s, aux_s)}, metrics)

    tgt_img = batch["target_image"]
    # The target pass starts from the statistics the source pass left: in `shared` mode they
    # are one set (AdaptSegNet's mixing); in `sat`/`seat` the source pass never touched them.
    (aux_t, main_t), updated = model.apply(
        {"params": params, "batch_stats": updated["batch_stats"]}, tgt_img,
        domain="target", train=True, mutable=["batch_stats"])
    aux_t, main_t = _upsample(aux_t, tgt_img), _upsample(main_t, tgt_img)
    for name in disc_names:
      maps = discriminator_input(name, main_t, aux_t, opts, w["multi_level_lambda"])
      adv = losses.bce_with_logits(apply_disc(state.disc_params, name, maps),
                                   losses.SOURCE_DOMAIN_LABEL)
      total += w["adv_weight_aux" if name == "aux" else "adv_weight"] * adv
      metrics[f"adv_{name}"] = adv
    ent = losses.entropy_loss(jax.nn.softmax(main_t, axis=-1))
    total += w["entropy_weight"] * ent
    metrics["entropy"] = ent
    if "target_label" in batch:
      tgt_main = losses.cross_entropy(main_t, batch["target_label"])
      tgt_aux = losses.cross_entropy(aux_t, batch["target_label"])
      total += w["target_ce_weight"] * (tgt_main + w["aux_weight"] * tgt_aux)
      metrics["target_seg_main"] = tgt_main
    outputs = {"source": (main_s, aux_s), "target": (main_t, aux_t)}
    return total, (updated["batch_stats"], outputs, metrics)

  def discriminator_loss(disc_params, outputs, w):
    total, metrics = 0.0, {}
    for name in disc_names:
      per_domain = {}
      for domain, label in (("source", losses.SOURCE_DOMAIN_LABEL),
                            ("target", losses.TARGET_DOMAIN_LABEL)):
        main, aux = outputs[domain]
        maps = jax.lax.stop_gradient(
            discriminator_input(name, main, aux, opts, w["multi_level_lambda"]))
        per_domain[domain] = losses.bce_with_logits(apply_disc(disc_params, name, maps), label)
      total += 0.5 * per_domain["source"] + 0.5 * per_domain["target"]
      metrics[f"d_{name}_source"] = per_domain["source"]
      metrics[f"d_{name}_target"] = per_domain["target"]
    return total, metrics

  def step(state: TrainState, batch, weights) -> tuple[TrainState, dict[str, jax.Array]]:
    (loss, (batch_stats, outputs, metrics)), grads = jax.value_and_grad(
        segmenter_loss, has_aux=True)(state.params, state, batch, weights)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=lr_schedules["backbone"](state.step), lr_head=lr_schedules["head"](state.step))

    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if disc_names:
      (_, d_metrics), d_grads = jax.value_and_grad(discriminator_loss, has_aux=True)(
          state.disc_params, outputs, weights)
      d_updates, disc_opt_state = disc_tx.update(d_grads, state.disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, d_updates)
      metrics.update(d_metrics, disc_grad_norm=optax.tree.norm(d_grads),
                     disc_lr=lr_schedules["disc"](state.step))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, disc_params=disc_params,
                              disc_opt_state=disc_opt_state)
    return new_state, metrics

  return step


# ---------------------------------------------------------------------------------------------
# Building the state.


@dataclasses.dataclass
class Trainer:
  """Everything the loop needs that follows from the config: modules, optimisers, shardings."""
  config: ml_collections.ConfigDict
  model: Any
  disc: Any
  tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  opts: StepOptions

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def data_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """One `data` axis over `devices` (default: every device of every host)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def build_trainer(config: ml_collections.ConfigDict, devices=None) -> Trainer:
  model = models.build_segmenter(config.model)
  disc = models.FCDiscriminator(width=config.adv.disc_width)
  abstract_params = jax.eval_shape(lambda: init_model_variables(model, config, jax.random.key(0)))
  tx = optim.make_segmenter_tx(config, abstract_params["params"])
  return Trainer(config=config, model=model, disc=disc, tx=tx, disc_tx=optim.make_disc_tx(config),
                 mesh=make_mesh(devices), opts=StepOptions.from_config(config))


def init_model_variables(model, config, rng) -> dict[str, PyTree]:
  # Parameter shapes do not depend on the spatial size: a small dummy keeps init cheap.
  dummy = jnp.zeros((1, 33, 33, 3), jnp.float32)
  return dict(model.init(rng, dummy, domain="source", train=False))


def init_state(trainer: Trainer, rng: jax.Array) -> TrainState:
  config = trainer.config
  model_rng, disc_rng = jax.random.split(rng)
  variables = init_model_variables(trainer.model, config, model_rng)
  dummy_map = jnp.zeros((1, 32, 32, config.model.num_classes), jnp.float32)
  disc_params = {
      name: trainer.disc.init(key, dummy_map)["params"]
      for name, key in zip(discriminator_names(config.adv.mode),
                           jax.random.split(disc_rng, 2))}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=trainer.tx.init(variables["params"]),
      disc_params=disc_params, disc_opt_state=trainer.disc_tx.init(disc_params))


def create_state(trainer: Trainer, seed: int) -> TrainState:
  """The initial state, created directly with replicated sharding."""
  init = jax.jit(functools.partial(init_state, trainer), out_shardings=trainer.replicated)
  return init(jax.random.key(seed))


def abstract_state(trainer: Trainer) -> TrainState:
  shapes = jax.eval_shape(functools.partial(init_state, trainer), jax.random.key(0))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=trainer.replicated), shapes)


def jit_train_step(trainer: Trainer):
  step = make_train_step(trainer.model, trainer.disc, trainer.tx, trainer.disc_tx, trainer.opts,
                         optim.lr_schedules(trainer.config))
  return jax.jit(step, in_shardings=(trainer.replicated, trainer.data_sharding, trainer.replicated),
                 out_shardings=(trainer.replicated, trainer.replicated), donate_argnums=(0,))


# ---------------------------------------------------------------------------------------------
# Checkpoints: items `model`, `disc`, `opt_state`, `disc_opt_state`, `data_iter`, `meta`.


def _state_items(state: TrainState) -> dict[str, PyTree]:
  return {"model": state.model_variables(), "disc": state.disc_params,
          "opt_state": state.opt_state, "disc_opt_state": state.disc_opt_state}


def save_checkpoint(manager, state: TrainState, iterators, config, elapsed: float) -> None:
  step = int(jax.device_get(state.step))
  meta = {"step": step, "elapsed_seconds": elapsed, "config": json.loads(config.to_json_best_effort())}
  manager.save(step, args=checkpointing.train_save_args(
      _state_items(state), data_iter={k: it.get_state() for k, it in iterators.items()},
      meta=meta), force=True)


def restore_full(directory, trainer: Trainer, iterators) -> tuple[TrainState, float]:
  """Restores state and data position from the latest step of `directory`."""
  target = abstract_state(trainer)
  items, data_iter, meta = checkpointing.restore_train(directory, _state_items(target))
  for name, it in iterators.items():
    it.set_state(data_iter[name])
  state = target.replace(
      step=jax.device_put(jnp.asarray(meta["step"], jnp.int32), trainer.replicated),
      params=items["model"]["params"], batch_stats=items["model"]["batch_stats"],
      disc_params=items["disc"], opt_state=items["opt_state"],
      disc_opt_state=items["disc_opt_state"])
  return state, float(meta.get("elapsed_seconds", 0.0))


def initialise(trainer: Trainer, workdir: epath.Path, iterators) -> tuple[TrainState, float, str]:
  """Resume precedence: workdir checkpoint -> config.resume -> config.init_from -> scratch."""
  config = trainer.config
  own = workdir / "checkpoints"
  if checkpointing.list_steps(own):
    state, elapsed = restore_full(own, trainer, iterators)
    return state, elapsed, f"resumed from {own} at step {int(state.step)}"
  if config.resume:
    resume_dir = checkpointing.checkpoint_dir(config.resume)
    state, elapsed = restore_full(resume_dir, trainer, iterators)
    return state, elapsed, f"resumed from config.resume={resume_dir} at step {int(state.step)}"
  state = create_state(trainer, config.seed)
  if config.init_from:
    init_dir = checkpointing.checkpoint_dir(config.init_from)
    abstract = abstract_state(trainer).model_variables()
    variables = checkpointing.restore_model(init_dir, abstract)
    # Optimiser and discriminator states stay fresh: a warm start, not a resume.
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    return state, 0.0, f"initialised the segmenter from config.init_from={init_dir}"
  return state, 0.0, "initialised from scratch (random weights)"


# ---------------------------------------------------------------------------------------------
# The loop.


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _all_finite(metrics: dict[str, float]) -> bool:
  return all(math.isfinite(v) for v in metrics.values())


def write_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def log_parameter_overview(state: TrainState, workdir: epath.Path) -> None:
  text = parameter_overview.get_parameter_overview(jax.device_get(state.params), include_stats=False)
  (workdir / "parameter_overview.txt").write_text(text)
  count = parameter_overview.count_parameters(state.params)
  disc_count = parameter_overview.count_parameters(state.disc_params) if state.disc_params else 0
  print(f"Segmenter: {count:,} parameters (table in {workdir / 'parameter_overview.txt'}); "
        f"discriminator(s): {disc_count:,}.", flush=True)


class TrainingData:
  """The source and target streams, yielding global batches for the step."""

  def __init__(self, config, sharding, with_target: bool = True):
    domains = ("source", "target") if with_target else ("source",)
    self.iterators = {
        domain: input_pipeline.create_train_iterator(config, domain, seed=config.seed)
        for domain in domains}
    self.sharding = sharding

  def __next__(self) -> dict[str, jax.Array]:
    source = next(self.iterators["source"])
    batch = {"source_image": source["image"], "source_label": source["label"]}
    if "target" in self.iterators:
      target = next(self.iterators["target"])
      batch["target_image"] = target["image"]
      if "label" in target:
        batch["target_label"] = target["label"]
    return input_pipeline.to_global_batch(batch, self.sharding)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) in `workdir` until `config.train.num_steps`; returns the last metrics."""
  config_validation.validate(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    write_config(config, workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)

  trainer = build_trainer(config)
  data = TrainingData(config, trainer.data_sharding, with_target=trainer.opts.target_pass)
  state, elapsed, how = initialise(trainer, workdir, data.iterators)
  print(f"seat_jax: {how}; {jax.device_count()} device(s) ({jax.devices()[0].platform}), "
        f"{jax.process_count()} process(es).", flush=True)
  if is_chief:
    log_parameter_overview(state, workdir)
    writer.write_hparams(_flat_hparams(config))
  train_step = jit_train_step(trainer)
  weights = jax.device_put(loss_weights(config), trainer.replicated)
  manager = checkpointing.train_manager(workdir / "checkpoints", config.train.keep_checkpoints)

  num_steps = config.train.num_steps
  start_step = int(jax.device_get(state.step))
  last_metrics: dict[str, float] = {}
  last_good_step = start_step
  window_start, window_steps = time.perf_counter(), 0
  run_start = time.perf_counter() - elapsed
  step = start_step
  try:
    with metric_writers.ensure_flushes(writer):
      for step in range(start_step + 1, num_steps + 1):
        state, metrics = train_step(state, next(data), weights)
        window_steps += 1
        is_last = step == num_steps
        save_now = is_last or step % config.train.checkpoint_every == 0
        if step % config.train.log_every == 0 or save_now or step == start_step + 1:
          last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if not _all_finite(last_metrics):
            raise NonFiniteLossError(_nan_message(step, last_metrics, last_good_step, workdir))
          now = time.perf_counter()
          rate = window_steps / max(now - window_start, 1e-9)
          window_start, window_steps = now, 0
          writer.write_scalars(step, {**last_metrics, "steps_per_sec": rate})
          print(_progress_line(step, num_steps, last_metrics, rate), flush=True)
        if save_now:
          save_checkpoint(manager, state, data.iterators, config, time.perf_counter() - run_start)
          last_good_step = step
        if config.train.eval_every and (step % config.train.eval_every == 0 or is_last):
          _periodic_eval(trainer, state, config, workdir, step, writer)
  except KeyboardInterrupt:
    # Keep the work done so far: save the current step (if it is finite) before leaving.
    if step != last_good_step and _state_is_finite(state):
      save_checkpoint(manager, state, data.iterators, config, time.perf_counter() - run_start)
      print(f"Interrupted: saved step {int(state.step)} in {workdir / 'checkpoints'}.", flush=True)
    raise
  finally:
    manager.wait_until_finished()
    manager.close()
  return last_metrics


def _state_is_finite(state: TrainState) -> bool:
  leaves = jax.tree.leaves((state.params, state.batch_stats, state.disc_params))
  return bool(jax.jit(lambda xs: jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in xs])))(leaves))


def _nan_message(step, metrics, last_good_step, workdir) -> str:
  bad = ", ".join(k for k, v in metrics.items() if not math.isfinite(v))
  return (f"Non-finite values ({bad}) at step {step}; training stopped. The last good checkpoint "
          f"(step {last_good_step}) in {workdir / 'checkpoints'} was left intact; rerunning the "
          "same command resumes from it. Usual causes: a learning rate too high for this batch "
          "size (--config.optim.lr), or bfloat16 overflow (--config.model.dtype=float32).")


def _progress_line(step: int, num_steps: int, metrics: dict[str, float], rate: float) -> str:
  shown = " ".join(f"{k}={metrics[k]:.4f}" for k in
                   ("loss", "seg_main", "adv_main", "d_main_source", "d_main_target")
                   if k in metrics)
  eta = _format_duration((num_steps - step) / max(rate, 1e-9))
  return (f"step {step}/{num_steps} ({100 * step / num_steps:.0f}%) {shown} "
          f"lr={metrics.get('lr', 0):.2e} | {rate:.2f} steps/s | ETA {eta}")


def _flat_hparams(config) -> dict[str, Any]:
  flat = flax.traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
  return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


def _periodic_eval(trainer, state, config, workdir, step, writer) -> None:
  from seat_jax import evaluate  # pylint: disable=g-import-not-at-top  (heavy; only when used)
  examples = input_pipeline.create_eval_iterator(
      config, max_examples=config.train.eval_max_examples)
  results = evaluate.evaluate(trainer.model, jax.device_get(state.model_variables()), examples,
                              config, workdir / "eval", step=step, writer=writer, progress=False)
  writer.write_scalars(step, {f"val/{results['headline']}": 100 * results["miou"]})
  print(f"step {step}: target validation {results['headline']} = {100 * results['miou']:.2f}",
        flush=True)
