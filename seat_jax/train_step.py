"""One training iteration: its state, the pure step (segmenter, discriminator, methods), jitted.

One call of the step does a whole iteration of AdaptSegNet-style training:
  1. source forward with the source norms, CE on main + aux_weight * aux (logits upsampled to the
     input size with the align_corners resize); the enabled methods' source terms;
  2. target forward with the target norms (when the adversary or a method needs it), adversarial
     BCE through the discriminator(s) held constant, pushing target maps toward the source
     label; the enabled methods' target terms (`seat_jax.methods`: MinEnt, robust entropy,
     pseudo-label CE, feature losses, in registry order);
  3. segmenter update; discriminator update on `stop_gradient` maps, source label 0 and target
     label 1, each half weighted; the methods' post-update state (a mean teacher).
With `train.joint_pass` (DeepLabV2, both domains at one size) passes 1 and 2 are one pass over
the interleaved images, each normalised with its own domain's norms (`seat_norm.JOINT`).
The adversary (`seat_jax.adversary`) is the core, not a plug-in: it is the paper's method, and
its discriminators and their optimiser are state fields (and checkpoint items) of their own. The
stage-2 pseudo-label CE is a plug-in (`methods.self_training`): it is off in stage 1, and FDA's
rounds and IntraDA's second stage switch it on like any method. The step is pure;
`jit_train_step` jits it with the mesh's shardings (`Trainer` holds the modules, optimisers and
mesh that follow from the config); `train.py` runs the loop around it. This module imports
neither TensorFlow nor clu, so benchmarks run it on bare accelerator hosts.
"""

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seat_jax import adversary
from seat_jax import batch as batch_keys
from seat_jax import input_pipeline as ip
from seat_jax import losses
from seat_jax import methods
from seat_jax import models
from seat_jax import optim
from seat_jax.methods import base

PyTree = Any

@flax.struct.dataclass
class TrainState:
  """Everything one step reads and writes, as arrays (so it jits, shards and checkpoints whole).

  Not flax's `train_state.TrainState`: that one holds one model's params, its `apply_fn` and its
  `tx`. This state has two models that step together (the segmenter with per-domain
  `batch_stats`, and zero to two discriminators) under one step counter; the optimisers are
  closures of the config built next to the step, so the state itself is plain arrays and every
  part of it can be checkpointed as its own orbax item.
  """
  step: jax.Array
  params: PyTree  # segmenter params (every domain's affine lives here)
  batch_stats: PyTree  # segmenter running statistics, per domain
  opt_state: optax.OptState
  disc_params: dict[str, PyTree]  # one entry per discriminator: {} | {main} | {main, aux}
  disc_opt_state: optax.OptState
  # What the enabled methods carry between steps besides the models (`init_method_state`): a
  # mean teacher, a frozen reference model, memory banks. {} for the paper's runs.
  method_state: dict[str, PyTree] = flax.struct.field(default_factory=dict)

  def model_variables(self) -> dict[str, PyTree]:
    return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The static part of the config that shapes the step's graph."""
  adv_mode: str
  adv_input: str
  # The enabled methods with their static options (`methods.enabled`), in registry order.
  methods: tuple[base.Method, ...] = ()
  seed: int = 0  # the step's random draws: fold_in(key(seed), step)
  ce_over_all_pixels: bool = False  # config loss.ce_normalise == "all" (mmseg's source CE)
  # Source and target through the segmenter as one batch (seat_norm.JOINT) when their images
  # have one shape; `from_config` allows it only where it gives the two passes' numbers.
  joint_pass: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "StepOptions":
    enabled = methods.enabled(config)
    return cls(adv_mode=config.adv.mode, adv_input=config.adv.input,
               methods=enabled, seed=int(config.seed),
               ce_over_all_pixels=config.loss.get("ce_normalise", "valid") == "all",
               joint_pass=bool(config.train.get("joint_pass", False)) and joint_pass_exact(
                   config.model.name, enabled))

  @property
  def target_pass(self) -> bool:
    """A target forward pass with gradient: for the adversary or a method. Without one (source
    only) the target images are never seen, as in the references' source-only baselines."""
    return self.adv_mode != "none" or any(m.needs_target_pass for m in self.methods)

  @property
  def uses_target_images(self) -> bool:
    return self.target_pass or any(m.needs_target_images for m in self.methods)

  @property
  def needs_source_features(self) -> bool:
    return any(m.needs_source_features for m in self.methods)

  @property
  def needs_target_features(self) -> bool:
    return any(m.needs_target_features for m in self.methods)


def joint_pass_exact(model_name: str, enabled: tuple[base.Method, ...]) -> bool:
  """Whether one joint pass gives the numbers of a source pass then a target pass: the model
  draws no dropout (DeepLabV2; SegFormer draws per pass) and no method runs passes of its own
  between the two (a `source_terms`: DACS's mixed and masked passes move the statistics)."""
  return model_name == "deeplabv2" and all(
      type(m).source_terms is base.Method.source_terms for m in enabled)


CORE_WEIGHT_KEYS = ("multi_level_lambda", "adv_weight", "adv_weight_aux", "aux_weight")


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The loss weights, passed to the step as values so changing one does not recompile."""
  values = {"multi_level_lambda": config.adv.multi_level_lambda, "adv_weight": config.adv.weight,
            "adv_weight_aux": config.adv.weight_aux, "aux_weight": config.loss.aux_weight,
            **methods.weights(config)}
  return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def make_train_step(model, disc, tx, disc_tx, opts: StepOptions, lr_schedules):
  """Returns step(state, batch, weights) -> (state, metrics); pure, to be jitted by the caller.

  `batch` has the keys of `seat_jax.batch`; `weights` is `loss_weights(config)`. A segmenter
  without an aux head (SegFormer) returns None for it: its aux terms are 0 and not logged.
  """
  disc_names = adversary.discriminator_names(opts.adv_mode)

  def apply_disc(disc_params, name, maps):
    return disc.apply({"params": disc_params[name]}, maps)

  def upsample(logits, like):
    """Logits resized to the images as the model's reference does (None stays None)."""
    if logits is None:
      return None
    return models.upsample_logits(model, logits.astype(jnp.float32), like.shape[1:3])

  def forward(params, batch_stats, images, domain, *, features=False, keep_stats=True,
              rng=None):
    """(aux, main) logits at the model's stride, the new batch_stats and the layer4 features
    (or None); with `rng`, the model's dropout and stochastic depth act (a student pass)."""
    mutable = ["batch_stats", "intermediates"] if features else ["batch_stats"]
    rngs = {"dropout": rng} if rng is not None else None
    (aux, main), updated = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                       domain=domain, train=True, mutable=mutable, rngs=rngs)
    feats = updated["intermediates"]["layer4_output"][0] if features else None
    return aux, main, (updated["batch_stats"] if keep_stats else batch_stats), feats

  def joint_forward(params, batch_stats, source_images, target_images):
    """Both domains' passes as one (seat_norm.JOINT): the images interleaved pairwise, so a
    batch sharded over devices keeps its pairs local. Returns ((aux, main, features) of the
    source, the same of the target, the batch_stats both passes leave); features None unless
    a method asked for that domain's."""
    images = jnp.stack([source_images, target_images], axis=1)
    aux, main, batch_stats, feats = forward(
        params, batch_stats, images.reshape(-1, *images.shape[2:]), models.JOINT,
        features=opts.needs_source_features or opts.needs_target_features)

    def halves(x):
      if x is None:
        return None, None
      pairs = x.reshape(-1, 2, *x.shape[1:])
      return pairs[:, 0], pairs[:, 1]

    (aux_s, aux_t), (main_s, main_t), (feats_s, feats_t) = map(halves, (aux, main, feats))
    return ((aux_s, main_s, feats_s if opts.needs_source_features else None),
            (aux_t, main_t, feats_t if opts.needs_target_features else None), batch_stats)

  def add(total, metrics, terms):
    loss, new_metrics = terms
    metrics.update(new_metrics)
    return total + loss

  def segmenter_loss(params, state: TrainState, batch, w, key):
    src_img = batch[batch_keys.SOURCE_IMAGE]
    joint = (opts.joint_pass and opts.target_pass
             and src_img.shape == batch[batch_keys.TARGET_IMAGE].shape)
    if joint:
      (aux_s8, main_s8, feats_s), joint_target, batch_stats = joint_forward(
          params, state.batch_stats, src_img, batch[batch_keys.TARGET_IMAGE])
    else:
      aux_s8, main_s8, batch_stats, feats_s = forward(
          params, state.batch_stats, src_img, "source", features=opts.needs_source_features,
          rng=base.dropout_key(key, "source"))
    aux_s, main_s = upsample(aux_s8, src_img), upsample(main_s8, src_img)
    seg_main = losses.cross_entropy(main_s, batch[batch_keys.SOURCE_LABEL],
                                    opts.ce_over_all_pixels)
    metrics = {"seg_main": seg_main}
    total = seg_main
    if aux_s is not None:
      metrics["seg_aux"] = losses.cross_entropy(aux_s, batch[batch_keys.SOURCE_LABEL],
                                                opts.ce_over_all_pixels)
      total = total + w["aux_weight"] * metrics["seg_aux"]
    ctx = base.StepContext(
        model=model, forward=forward, upsample=upsample, params=params, batch=batch, weights=w,
        key=key, step=state.step, batch_stats=batch_stats, method_state=dict(state.method_state),
        has_target_pass=opts.target_pass,
        source=base.Outputs(aux_s8, main_s8, aux_s, main_s, feats_s))
    for method in opts.methods:
      total = add(total, metrics, method.source_terms(ctx))
    outputs = {"source": (main_s, aux_s)}
    if not opts.target_pass:
      return total, (ctx.batch_stats, ctx.method_state, outputs, metrics)

    tgt_img = batch[batch_keys.TARGET_IMAGE]
    if joint:  # (no method ran passes between: joint_pass_exact)
      aux_t8, main_t8, feats_t = joint_target
    else:
      # The target pass starts from the statistics the source pass left: in `shared` mode they
      # are one set (AdaptSegNet's mixing); in `sat`/`seat` the source pass never touched them.
      aux_t8, main_t8, ctx.batch_stats, feats_t = forward(
          params, ctx.batch_stats, tgt_img, "target", features=opts.needs_target_features,
          rng=base.dropout_key(key, "target"))
    aux_t, main_t = upsample(aux_t8, tgt_img), upsample(main_t8, tgt_img)
    total = add(total, metrics,
                adversary.fooling_terms(apply_disc, state.disc_params, main_t, aux_t, opts, w))
    # The target maps' entropy (ADVENT's diagnostic of adaptation; MinEnt minimises it).
    ent = losses.entropy_loss(jax.nn.softmax(main_t, axis=-1))
    metrics["entropy"] = ent
    ent_aux = base.on_aux(lambda a: losses.entropy_loss(jax.nn.softmax(a, axis=-1)), aux_t)
    if aux_t is not None:
      metrics["entropy_aux"] = ent_aux
    ctx.target = base.Outputs(aux_t8, main_t8, aux_t, main_t, feats_t, ent, ent_aux)
    for method in opts.methods:
      total = add(total, metrics, method.target_terms(ctx))
    outputs["target"] = (main_t, aux_t)
    return total, (ctx.batch_stats, ctx.method_state, outputs, metrics)

  def step(state: TrainState, batch, weights) -> tuple[TrainState, dict[str, jax.Array]]:
    key = jax.random.fold_in(jax.random.key(opts.seed), state.step)
    (loss, (batch_stats, method_state, outputs, metrics)), grads = jax.value_and_grad(
        segmenter_loss, has_aux=True)(state.params, state, batch, weights, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=lr_schedules["backbone"](state.step),
                   lr_head=lr_schedules["head"](state.step))
    after = base.StepContext(
        model=model, forward=forward, upsample=upsample, params=params, batch=batch,
        weights=weights, key=key, step=state.step, batch_stats=batch_stats,
        method_state=method_state, has_target_pass=opts.target_pass)
    for method in opts.methods:
      method.after_update(after)

    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if disc_names:
      (_, d_metrics), d_grads = jax.value_and_grad(
          adversary.discriminator_loss, argnums=1, has_aux=True)(
              apply_disc, state.disc_params, outputs, opts, weights)
      d_updates, disc_opt_state = disc_tx.update(d_grads, state.disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, d_updates)
      metrics.update(d_metrics, disc_grad_norm=optax.tree.norm(d_grads),
                     disc_lr=lr_schedules["disc"](state.step))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, disc_params=disc_params,
                              disc_opt_state=disc_opt_state, method_state=after.method_state)
    return new_state, metrics

  return step


# ---------------------------------------------------------------------------------------------
# The state, built and jitted over the device mesh.


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
    return ip.data_sharding(self.mesh)


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """One `data` axis over `devices` (default: every device of every host)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def build_trainer(config: ml_collections.ConfigDict, devices=None) -> Trainer:
  model = models.build_segmenter(config.model)
  disc = models.FCDiscriminator(width=config.adv.disc_width)
  abstract_params = jax.eval_shape(functools.partial(models.init_variables, model),
                                   jax.random.key(0))["params"]
  tx = optim.make_segmenter_tx(config, abstract_params)
  return Trainer(config=config, model=model, disc=disc, tx=tx, disc_tx=optim.make_disc_tx(config),
                 mesh=make_mesh(devices), opts=StepOptions.from_config(config))


def init_state(trainer: Trainer, rng: jax.Array) -> TrainState:
  config = trainer.config
  model_rng, disc_rng = jax.random.split(rng)
  variables = models.init_variables(trainer.model, model_rng)
  dummy_map = jnp.zeros((1, 32, 32, config.model.num_classes), jnp.float32)
  disc_params = {
      name: trainer.disc.init(key, dummy_map)["params"]
      for name, key in zip(adversary.discriminator_names(config.adv.mode),
                           jax.random.split(disc_rng, 2))}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=trainer.tx.init(variables["params"]),
      disc_params=disc_params, disc_opt_state=trainer.disc_tx.init(disc_params),
      method_state=init_method_state(trainer, variables))


def init_method_state(trainer: Trainer, variables: dict[str, PyTree]) -> dict[str, PyTree]:
  """The enabled methods' state for a segmenter that starts from `variables` (fresh or
  `init_from`): a teacher or reference model starts as a copy of it."""
  method_state = {}
  for method in trainer.opts.methods:
    method_state.update(method.init_state(variables))
  return method_state


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
