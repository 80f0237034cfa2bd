"""The interface between the one training step and the methods it composes.

A method is a class in its own module under `seat_jax/methods/`. It owns its config entries
(`add_config`, `problems`), says when it is on (`enabled`) and which of its config values are
runtime loss weights (`weights`, so changing one does not recompile), holds its static options
(the instance, built by `from_config`), its state between steps (`init_state`: a teacher, a
memory bank, a frozen reference model; `load_state`: parts of it read from a file the config
names) and its loss terms:

  source_terms(ctx)  after the source pass (the source outputs and features are in `ctx`);
                     a method may run forward passes of its own (mixed or masked images),
                     threading `ctx.batch_stats` through them;
  target_terms(ctx)  after the target pass (`ctx.target`), when the step runs one;
  after_update(ctx)  after the segmenter update (a mean teacher follows the new weights).

Each returns a loss (added to the segmenter's total) and metrics, and writes its state into
`ctx.method_state`. The step calls every enabled method in registry order
(`seat_jax.methods.REGISTRY`) and names none of them. Methods without step terms (AdaBN,
IntraDA's ranking) still own their config here; their passes run from the recipes.
"""

import dataclasses
from typing import Any, Callable

import jax
import ml_collections

PyTree = Any
Terms = tuple[jax.Array | float, dict[str, jax.Array]]
NO_TERMS: Terms = (0.0, {})


# The student's passes that draw dropout and stochastic depth (SegFormer), each its own stream:
# fold_in(step key, tag), apart from the keys the methods split from the step key.
DROPOUT_PASSES = {"source": 1001, "target": 1002, "mixed": 1003, "masked": 1004}


def dropout_key(key: jax.Array, student_pass: str) -> jax.Array:
  """The `dropout` rng of one of the student's forward passes (`DROPOUT_PASSES`)."""
  return jax.random.fold_in(key, DROPOUT_PASSES[student_pass])


def on_aux(loss_fn: Callable[..., jax.Array], aux: jax.Array | None, *args) -> jax.Array | float:
  """loss_fn(aux, *args), or 0 for a segmenter without an aux head (SegFormer)."""
  return 0.0 if aux is None else loss_fn(aux, *args)


@dataclasses.dataclass(frozen=True)
class Outputs:
  """One domain's pass: logits at the model's stride and upsampled to the images (aux None for
  a one-head segmenter), layer4 features; for the target pass also the mean normalised entropy
  of each head's upsampled map (logged by the step as a diagnostic, minimised by MinEnt)."""
  aux8: jax.Array | None
  main8: jax.Array
  aux: jax.Array | None
  main: jax.Array
  features: jax.Array | None = None
  entropy: jax.Array | None = None
  entropy_aux: jax.Array | float | None = None


@dataclasses.dataclass
class StepContext:
  """What the step gives a method while it is traced (mutable: `batch_stats`, `method_state`).

  forward(params, batch_stats, images, domain, *, features=False, keep_stats=True, rng=None)
  returns the (aux, main) logits at the model's stride (aux None without an aux head), the new
  batch_stats and the layer4 features (or None); a student pass gives `rng`
  (`dropout_key(key, ...)`), a teacher pass none (no dropout). upsample(logits, images) resizes
  logits to the images (float32; align_corners as the model's reference; None stays None).
  """
  model: Any
  forward: Callable[..., tuple]
  upsample: Callable[[jax.Array, jax.Array], jax.Array]
  params: PyTree
  batch: dict[str, jax.Array]
  weights: dict[str, jax.Array]
  key: jax.Array  # the step's key: fold_in(key(seed), step)
  step: jax.Array
  batch_stats: PyTree
  method_state: dict[str, PyTree]
  has_target_pass: bool
  source: Outputs | None = None
  target: Outputs | None = None


@dataclasses.dataclass(frozen=True)
class Method:
  """A method that brings nothing; subclasses override what theirs brings."""
  # What the step must compute for it.
  needs_target_pass = False  # a target forward pass with gradient (its outputs in ctx.target)
  needs_target_images = False  # target images in the batch, even without a target pass
  needs_source_features = False
  needs_target_features = False

  @staticmethod
  def add_config(config: ml_collections.ConfigDict) -> None:
    """Adds this method's entries (with their defaults) to the base config, in place."""

  @staticmethod
  def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether the step computes this method's terms for `config`."""
    del config
    return False

  @staticmethod
  def problems(config: ml_collections.ConfigDict) -> list[str]:
    """A user's mistakes in this method's entries, one line each (config_validation)."""
    del config
    return []

  @staticmethod
  def weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The runtime values of the step (loss weights, thresholds), by unique name."""
    del config
    return {}

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Method":
    """The method with its static options (what shapes the step's graph)."""
    del config
    return cls()

  def init_state(self, variables: PyTree) -> dict[str, PyTree]:
    """State kept between steps for a segmenter starting from `variables` (copies only)."""
    del variables
    return {}

  def load_state(self, method_state: dict[str, PyTree],
                 restore: Callable[[str, str], PyTree]) -> dict[str, PyTree]:
    """`method_state` with what the config asks to read from files (a reference model), at a
    fresh start; a resumed run has it in its checkpoint. `restore(path, config_key)` gives that
    checkpoint's model variables fitted into this segmenter (errors name `config_key`)."""
    del restore
    return method_state

  def source_terms(self, ctx: StepContext) -> Terms:
    del ctx
    return NO_TERMS

  def target_terms(self, ctx: StepContext) -> Terms:
    del ctx
    return NO_TERMS

  def after_update(self, ctx: StepContext) -> None:
    """Updates `ctx.method_state` once `ctx.params` / `ctx.batch_stats` hold the new weights."""
    del ctx


def copy_tree(tree: PyTree) -> PyTree:
  """A copy of every array (the step donates its input state: no buffer may be shared)."""
  return jax.tree.map(lambda x: x.copy(), tree)


def section(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """config.<name>, created empty if no method or the base config made it yet."""
  if name not in config:
    config[name] = ml_collections.ConfigDict()
  return config[name]
