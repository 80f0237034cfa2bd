"""One training iteration: its state, the pure segmenter + discriminator step, jitted on a mesh.

One call of the step does a whole iteration of AdaptSegNet-style training (REFERENCE 3.2):
  1. source forward with the source norms, CE on main + aux_weight * aux (logits upsampled to the
     input size with the align_corners resize);
  2. target forward with the target norms, adversarial BCE through the discriminator(s) held
     constant, pushing target maps toward the source label (plus optional MinEnt on the main
     and aux heads, as ADVENT's `train_minent`, FDA's robust entropy on the stride-8 main
     logits, `methods/fda.py`, and CE on pseudo-labels in stage 2);
  3. discriminator update on `stop_gradient` maps, source label 0 and target label 1, each half
     weighted; segmenter and discriminator updates are applied together.
The step is pure; `jit_train_step` jits it with the mesh's shardings (`Trainer` holds the
modules, optimisers and mesh that follow from the config). `train.py` runs the loop around it.
This module imports neither TensorFlow nor clu, so benchmarks run it on bare accelerator hosts.
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

from seat_jax import input_pipeline as ip
from seat_jax import losses
from seat_jax import models
from seat_jax import optim
from seat_jax.methods import clustering as clustering_method
from seat_jax.methods import dacs
from seat_jax.methods import daformer
from seat_jax.methods import differential as differential_method
from seat_jax.methods import fda as fda_method
from seat_jax.methods import mic as mic_method
from seat_jax.models import seat_norm

PyTree = Any

# Adversarial modes and the discriminators each one trains: none (source only or MinEnt),
# single (one D on the main head), multi_level_sum (the paper: one D on the fused map),
# two_discriminators (AdaptSegNet's multi-level: D `main` and D `aux`).
DISCRIMINATORS = {"none": (), "single": ("main",), "multi_level_sum": ("main",),
                  "two_discriminators": ("main", "aux")}
ADV_MODES = tuple(DISCRIMINATORS)
# What a discriminator sees: the softmax (AdaptSegNet) or ADVENT's self-information map.
ADV_INPUTS = ("softmax", "entropy")


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
  # What a method carries between steps besides the models (`init_method_state`): the mean
  # teacher (`teacher`), DAFormer's frozen initial model (`fd_reference`), the Differential
  # treatment memory banks (`banks`). {} for the paper's methods.
  method_state: dict[str, PyTree] = flax.struct.field(default_factory=dict)

  def model_variables(self) -> dict[str, PyTree]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def discriminator_names(adv_mode: str) -> tuple[str, ...]:
  return DISCRIMINATORS[adv_mode]


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The static part of the config that shapes the step's graph."""
  adv_mode: str
  adv_input: str
  # False for a source-only run (no adversary, MinEnt or pseudo-labels): the target images are
  # then never seen, as in the references' source-only baselines (no mixing into shared BN).
  target_pass: bool = True
  # Stage 2: the batch carries target pseudo-labels and the step adds their CE.
  target_labels: bool = False
  # FDA's robust entropy is in the graph (its weight and eta stay runtime values).
  robust_entropy: bool = False
  # Feature-space losses on the layer4 features: Differential treatment's stuff/thing memory
  # (methods/differential.py) and Toldo et al.'s clustering losses (methods/clustering.py).
  differential: bool = False
  clustering: bool = False
  # Mixing-based self-training (methods/dacs.py): ClassMix with an EMA teacher; the norm the
  # mixed images go through (MIX_NORMS); colour jitter + blur; MIC's masked target image;
  # DAFormer's thing-class feature distance to the initial model.
  mix: bool = False
  mix_norm: str = "target"
  mix_augment: bool = True
  jitter_strength: float = 0.2
  pseudo_ignore_rows: tuple[int, int] = (0, 0)  # DAFormer's pseudo-label crop (top, bottom)
  mic: bool = False
  mic_block: int = 64
  mic_ratio: float = 0.7
  feature_distance: bool = False
  num_classes: int = 19
  label_space: str = "cityscapes19"
  seed: int = 0  # the step's random draws (ClassMix, augmentation, MIC): fold_in(seed, step)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "StepOptions":
    target_labels = ip.target_has_labels(config)
    robust_entropy = bool(config.loss.get("robust_entropy_weight", 0.0))
    differential = bool(config.differential.stuff_weight or config.differential.thing_weight)
    clustering = any(bool(config.clustering[k]) for k in CLUSTERING_KEYS)
    target_pass = bool(config.adv.mode != "none" or config.loss.entropy_weight
                       or config.loss.entropy_weight_aux or robust_entropy or target_labels
                       or differential or clustering)
    return cls(adv_mode=config.adv.mode, adv_input=config.adv.input, target_pass=target_pass,
               target_labels=target_labels, robust_entropy=robust_entropy,
               differential=differential, clustering=clustering, mix=bool(config.mix.enabled),
               mix_norm=config.mix.norm, mix_augment=bool(config.mix.augment),
               jitter_strength=float(config.mix.jitter_strength),
               pseudo_ignore_rows=(int(config.mix.pseudo_ignore_top),
                                   int(config.mix.pseudo_ignore_bottom)),
               mic=bool(config.mix.enabled and config.mix.mic_weight),
               mic_block=int(config.mix.mic_block), mic_ratio=float(config.mix.mic_ratio),
               feature_distance=bool(config.mix.fd_weight),
               num_classes=config.model.num_classes, label_space=config.data.label_space,
               seed=int(config.seed))

  @property
  def uses_target_images(self) -> bool:
    return self.target_pass or self.mix

  @property
  def needs_source_features(self) -> bool:
    return self.differential or self.clustering or self.feature_distance


# How the mixed images of ClassMix are normalised (config mix.norm): as target images, as source
# images, or with their own batch statistics and the mean affine (seat_norm.MIXED).
MIX_NORMS = {"target": "target", "source": "source", "batch": seat_norm.MIXED}
CLUSTERING_KEYS = ("cluster", "ortho", "sparse", "entropy")

LOSS_WEIGHT_KEYS = ("multi_level_lambda", "adv_weight", "adv_weight_aux", "aux_weight",
                    "entropy_weight", "entropy_weight_aux", "target_ce_weight",
                    "robust_entropy_weight", "robust_entropy_eta", "mix_weight",
                    "mix_confidence", "teacher_alpha", "mic_weight", "fd_weight",
                    "stuff_weight", "thing_weight", "cluster", "ortho", "sparse", "entropy",
                    "iw_ratio")


def loss_weights(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The loss weights, passed to the step as values so changing one does not recompile."""
  values = {"multi_level_lambda": config.adv.multi_level_lambda, "adv_weight": config.adv.weight,
            "adv_weight_aux": config.adv.weight_aux, "aux_weight": config.loss.aux_weight,
            "entropy_weight": config.loss.entropy_weight,
            "entropy_weight_aux": config.loss.entropy_weight_aux,
            "target_ce_weight": config.loss.target_ce_weight,
            # FDA's robust entropy; configs written before these keys existed have them off.
            "robust_entropy_weight": config.loss.get("robust_entropy_weight", 0.0),
            "robust_entropy_eta": config.loss.get("robust_entropy_eta", 2.0),
            "mix_weight": config.mix.weight, "mix_confidence": config.mix.confidence,
            "teacher_alpha": config.mix.teacher_alpha, "mic_weight": config.mix.mic_weight,
            "fd_weight": config.mix.fd_weight,
            "stuff_weight": config.differential.stuff_weight,
            "thing_weight": config.differential.thing_weight,
            **{k: config.clustering[k] for k in CLUSTERING_KEYS},
            "iw_ratio": config.clustering.iw_ratio}
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


def _head_classifier(model, head_params):
  """The main head applied to pooled feature vectors [M, C] -> logits [M, K] (SIM's check).

  On a 1x1 input only the centre tap of each dilated branch and the biases contribute, as in
  the reference's `layer6(f.view(1, C, 1, 1))`.
  """
  head = models.head_factory(model)()

  def classify(vectors: jax.Array) -> jax.Array:
    logits = head.apply({"params": jax.lax.stop_gradient(head_params)}, vectors[:, None, None, :])
    return logits[:, 0, 0, :].astype(jnp.float32)
  return classify


def make_train_step(model, disc, tx, disc_tx, opts: StepOptions, lr_schedules):
  """Returns step(state, batch, weights) -> (state, metrics); pure, to be jitted by the caller.

  `batch` has the keys of `input_pipeline.TrainingBatches`; `weights` is `loss_weights(config)`.
  """
  disc_names = discriminator_names(opts.adv_mode)

  def apply_disc(disc_params, name, maps):
    return disc.apply({"params": disc_params[name]}, maps)

  def forward(params, batch_stats, images, domain, *, features=False, keep_stats=True):
    """(aux, main) stride-8 logits, the new batch_stats and the layer4 features (or None)."""
    mutable = ["batch_stats", "intermediates"] if features else ["batch_stats"]
    (aux, main), updated = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                       domain=domain, train=True, mutable=mutable)
    feats = updated["intermediates"]["layer4_output"][0] if features else None
    return aux, main, (updated["batch_stats"] if keep_stats else batch_stats), feats

  def mix_terms(params, batch_stats, method_state, batch, w, key):
    """DACS: ClassMix of source into target, labelled by the EMA teacher (+ MIC's masked image)."""
    src_img, tgt_img = batch[ip.SOURCE_IMAGE], batch[ip.TARGET_IMAGE]
    key_mix, key_aug, key_mic = jax.random.split(key, 3)
    teacher = jax.lax.stop_gradient(method_state["teacher"])
    # The teacher sees the clean target batch with the target norm's batch statistics (DACS's
    # teacher runs in train mode); its running statistics are an EMA of the student's.
    _, t_main, _, _ = forward(teacher["params"], teacher["batch_stats"], tgt_img, "target",
                              keep_stats=False)
    t_probs = jax.nn.softmax(_upsample(t_main, tgt_img), axis=-1)
    pseudo, weight = dacs.pseudo_labels_and_weight(t_probs, w["mix_confidence"],
                                                   *opts.pseudo_ignore_rows)
    mask = dacs.class_mix_masks(key_mix, batch[ip.SOURCE_LABEL], opts.num_classes)
    mixed_img = dacs.mix(mask, src_img, tgt_img)
    mixed_lbl = dacs.mix(mask, batch[ip.SOURCE_LABEL], pseudo)
    mixed_w = dacs.mix(mask, jnp.ones_like(weight), weight)
    if opts.mix_augment:
      mixed_img = dacs.strong_augment(key_aug, mixed_img, opts.jitter_strength)
    aux_m, main_m, batch_stats, _ = forward(params, batch_stats, mixed_img,
                                            MIX_NORMS[opts.mix_norm])
    mix_main = dacs.weighted_cross_entropy(_upsample(main_m, mixed_img), mixed_lbl, mixed_w)
    mix_aux = dacs.weighted_cross_entropy(_upsample(aux_m, mixed_img), mixed_lbl, mixed_w)
    total = w["mix_weight"] * (mix_main + w["aux_weight"] * mix_aux)
    metrics = {"mix_main": mix_main, "pseudo_weight": jnp.mean(weight)}
    if opts.mic:
      key_mic, key_mic_aug = jax.random.split(key_mic)
      masked = tgt_img
      if opts.mix_augment:  # MIC: the masked image gets the mixed image's augmentation
        masked = dacs.strong_augment(key_mic_aug, masked, opts.jitter_strength)
      masked, _ = mic_method.masking(key_mic, masked, opts.mic_block, opts.mic_ratio)
      # Normalised with its batch statistics as a target image; the masked batch's statistics
      # are not what evaluation meets, so they do not enter the running target statistics.
      aux_k, main_k, _, _ = forward(params, batch_stats, masked, "target", keep_stats=False)
      mic_main = dacs.weighted_cross_entropy(_upsample(main_k, masked), pseudo, weight)
      mic_aux = dacs.weighted_cross_entropy(_upsample(aux_k, masked), pseudo, weight)
      total += w["mic_weight"] * (mic_main + w["aux_weight"] * mic_aux)
      metrics["mic_main"] = mic_main
    if opts.mix_norm != "target" and not opts.target_pass:
      # Nothing else shows the student's target norm a target image: a forward pass without
      # gradient keeps its running target statistics current for evaluation.
      _, _, batch_stats, _ = forward(jax.lax.stop_gradient(params), batch_stats, tgt_img,
                                     "target")
    return total, batch_stats, metrics

  def segmenter_loss(params, state: TrainState, batch, w, key):
    src_img = batch[ip.SOURCE_IMAGE]
    aux_s8, main_s8, batch_stats, feats_s = forward(
        params, state.batch_stats, src_img, "source", features=opts.needs_source_features)
    aux_s, main_s = _upsample(aux_s8, src_img), _upsample(main_s8, src_img)
    seg_main = losses.cross_entropy(main_s, batch[ip.SOURCE_LABEL])
    seg_aux = losses.cross_entropy(aux_s, batch[ip.SOURCE_LABEL])
    total = seg_main + w["aux_weight"] * seg_aux
    metrics = {"seg_main": seg_main, "seg_aux": seg_aux}
    method_state = dict(state.method_state)
    if opts.feature_distance:  # DAFormer: thing-class features stay near the initial model's
      reference = method_state["fd_reference"]
      _, ref = model.apply(reference, src_img, domain="source", train=False,
                           mutable=["intermediates"])
      ref_feats = jax.lax.stop_gradient(ref["intermediates"]["layer4_output"][0])
      fd = daformer.feature_distance_loss(feats_s, ref_feats, batch[ip.SOURCE_LABEL],
                                          daformer.THING_CLASSES[opts.label_space])
      total += w["fd_weight"] * fd
      metrics["feature_distance"] = fd
    if opts.mix:
      mix_loss, batch_stats, mix_metrics = mix_terms(params, batch_stats, method_state, batch, w,
                                                     key)
      total += mix_loss
      metrics.update(mix_metrics)
    outputs = {"source": (main_s, aux_s)}
    if not opts.target_pass:
      return total, (batch_stats, method_state, outputs, metrics)

    tgt_img = batch[ip.TARGET_IMAGE]
    # The target pass starts from the statistics the source pass left: in `shared` mode they
    # are one set (AdaptSegNet's mixing); in `sat`/`seat` the source pass never touched them.
    aux_t8, main_t8, batch_stats, feats_t = forward(
        params, batch_stats, tgt_img, "target", features=opts.differential or opts.clustering)
    if opts.robust_entropy:  # FDA: on the head's stride-8 logits, before any upsampling
      robust_ent = fda_method.robust_entropy(main_t8, w["robust_entropy_eta"])
      total += w["robust_entropy_weight"] * robust_ent
      metrics["robust_entropy"] = robust_ent
    aux_t, main_t = _upsample(aux_t8, tgt_img), _upsample(main_t8, tgt_img)
    for name in disc_names:
      maps = discriminator_input(name, main_t, aux_t, opts, w["multi_level_lambda"])
      adv = losses.bce_with_logits(apply_disc(state.disc_params, name, maps),
                                   losses.SOURCE_DOMAIN_LABEL)
      total += w["adv_weight_aux" if name == "aux" else "adv_weight"] * adv
      metrics[f"adv_{name}"] = adv
    # ADVENT MinEnt: lambda_ent_main * H(main) + lambda_ent_aux * H(aux) on the upsampled maps.
    ent = losses.entropy_loss(jax.nn.softmax(main_t, axis=-1))
    ent_aux = losses.entropy_loss(jax.nn.softmax(aux_t, axis=-1))
    total += w["entropy_weight"] * ent + w["entropy_weight_aux"] * ent_aux
    metrics["entropy"] = ent
    metrics["entropy_aux"] = ent_aux
    if opts.target_labels:
      tgt_main = losses.cross_entropy(main_t, batch[ip.TARGET_LABEL])
      tgt_aux = losses.cross_entropy(aux_t, batch[ip.TARGET_LABEL])
      total += w["target_ce_weight"] * (tgt_main + w["aux_weight"] * tgt_aux)
      metrics["target_seg_main"] = tgt_main
    if opts.differential:  # SIM: source fills the memory, target features are pulled to it
      classify = _head_classifier(model, params["main_head"])
      banks = differential_method.update_banks(
          method_state["banks"], jax.lax.stop_gradient(feats_s), jax.lax.stop_gradient(main_s8),
          batch[ip.SOURCE_LABEL], classify)
      stuff, thing = differential_method.target_losses(banks, feats_t, main_t8, classify)
      total += w["stuff_weight"] * stuff + w["thing_weight"] * thing
      method_state["banks"] = banks
      metrics.update(stuff_loss=stuff, thing_loss=thing)
    if opts.clustering:  # Toldo et al.: clustering, orthogonality, sparsity, IW-MaxSquare
      cluster_total, cluster_metrics = clustering_method.clustering_losses(
          feats_s, feats_t, jax.nn.softmax(main_s, axis=-1), jax.nn.softmax(main_t, axis=-1),
          {k: w[k] for k in CLUSTERING_KEYS + ("iw_ratio",)})
      total += cluster_total
      metrics.update(cluster_metrics)
    outputs["target"] = (main_t, aux_t)
    return total, (batch_stats, method_state, outputs, metrics)

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
    key = jax.random.fold_in(jax.random.key(opts.seed), state.step)
    (loss, (batch_stats, method_state, outputs, metrics)), grads = jax.value_and_grad(
        segmenter_loss, has_aux=True)(state.params, state, batch, weights, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=lr_schedules["backbone"](state.step),
                   lr_head=lr_schedules["head"](state.step))
    if opts.mix:  # the teacher follows the updated student
      method_state["teacher"] = dacs.ema_update(
          method_state["teacher"], {"params": params, "batch_stats": batch_stats}, state.step,
          weights["teacher_alpha"])

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
                              disc_opt_state=disc_opt_state, method_state=method_state)
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
      for name, key in zip(discriminator_names(config.adv.mode),
                           jax.random.split(disc_rng, 2))}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=trainer.tx.init(variables["params"]),
      disc_params=disc_params, disc_opt_state=trainer.disc_tx.init(disc_params),
      method_state=init_method_state(trainer, variables))


def init_method_state(trainer: Trainer, variables: dict[str, PyTree]) -> dict[str, PyTree]:
  """A method's state for a segmenter that starts from `variables` (fresh or `init_from`).

  The teacher and DAFormer's reference model start as copies of the initial segmenter (copies:
  the step donates its input state, so no buffer may be shared with `params`).
  """
  opts, config = trainer.opts, trainer.config
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
  method_state = {}
  if opts.mix:
    method_state["teacher"] = copy(variables)
  if opts.feature_distance:
    method_state["fd_reference"] = copy(variables)
  if opts.differential:
    method_state["banks"] = differential_method.init_banks(
        config.model.num_classes, models.layer4_channels(config.model.base_width),
        config.data.label_space, stuff_size=config.differential.stuff_bank,
        thing_size=config.differential.thing_bank)
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
