"""Target-domain predictions: the one prediction function and the prefetching loop over a split.

Evaluation, pseudo-labels and the periodic evaluation in training all predict the same way: the
segmenter in eval mode with the TARGET norms, except the stages of the layer switch
(`config.eval.source_stages`, paper section 5.2) which use the source norms; the main head only;
bilinear upsampling as the model's reference does it (align_corners=True for the Caffe
DeepLabV2, half-pixel centres for mmseg's V1c DeepLabV2 and SegFormer: `models.upsample_logits`).
They differ only in what they keep:

  labels:     argmax of the main logits upsampled to `out_hw` (evaluation: the label's full
              resolution, as the references evaluate);
  confidence: (argmax, max probability) of the main SOFTMAX upsampled to `out_hw` (pseudo-labels
              at the model input size; BDL upsamples the probabilities, not the logits).

An ensemble (`eval.ensemble`, FDA's multi-band transfer) runs the same function over several
checkpoints of one model and averages their softmax with fixed weights, in the orders of FDA's
scripts: labels from the mean at the output stride, upsampled (`evaluation_multi.py`);
confidence from each model's logits upsampled first, then softmaxed (`getSudoLabel_multi.py`).

Your own images (`seat_jax.segment`) and the exported model (`seat_jax.export`) predict through
the same pieces: `main_logits` (with `--domain`'s norms, the target's by default) and
`upsampled_labels`. `make_image_predict_fn` compiles them as two programs, so images of many sizes
that come to one model input size share the network's compile; `model_input_hw` is the scale
rule that picks that size (the scale the model was trained at, aspect ratio kept).
"""

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import checkpointing
from seat_jax import errors
from seat_jax import models

OUTPUTS = ("labels", "confidence")


def main_logits(model: Any, variables: Any, images: jax.Array, *, domain: str = "target",
                source_stages: Sequence[int] = ()) -> jax.Array:
  """float32 main-head logits [N, h/8, w/8, C] of model-input `images` (BGR minus the mean).

  The segmenter in eval mode with `domain`'s norms, except the stages of the layer switch
  (`source_stages`), which use the source norms.
  """
  _, logits = model.apply(variables, images, domain=domain, train=False,
                          source_stages=tuple(source_stages))
  return logits.astype(jnp.float32)


def upsampled_labels(model: Any, logits: jax.Array, out_hw: Sequence[Any]) -> jax.Array:
  """uint8 argmax [N, *out_hw] of `logits` upsampled bilinearly as `model`'s reference does
  (`models.upsample_logits`)."""
  return jnp.argmax(models.upsample_logits(model, logits, tuple(out_hw)),
                    axis=-1).astype(jnp.uint8)


def make_predict_fn(model: Any, source_stages: Sequence[int] = (), output: str = "labels",
                    ensemble_weights: Sequence[float] | None = None,
                    domain: str = "target") -> Callable[..., Any]:
  """Jitted fn(variables, images [N, h, w, 3], out_hw) -> outputs at `out_hw` (static).

  `output='labels'`: uint8 train ids [N, *out_hw]; `output='confidence'`: (uint8 argmax,
  float32 max probability), each [N, *out_hw]. With `ensemble_weights` (one per model),
  `variables` is a tuple of variable sets of `model` whose softmax is averaged (module doc).
  `domain`: whose norms predict ('target'; 'source' to see the model as on its source).
  Cached per (model, source_stages, output, weights, domain), so the periodic evaluation and
  every checkpoint of eval mode reuse one compiled function.
  """
  if output not in OUTPUTS:
    raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}.")
  source_stages = tuple(int(s) for s in source_stages)
  if ensemble_weights is not None:
    ensemble_weights = tuple(float(w) for w in ensemble_weights)
  try:
    return _cached_predict_fn(model, source_stages, output, ensemble_weights, domain)
  except TypeError:  # an unhashable stand-in model: no caching
    return _build_predict_fn(model, source_stages, output, ensemble_weights, domain)


@functools.lru_cache(maxsize=8)
def _cached_predict_fn(model, source_stages: tuple[int, ...], output: str,
                       ensemble_weights: tuple[float, ...] | None = None,
                       domain: str = "target"):
  return _build_predict_fn(model, source_stages, output, ensemble_weights, domain)


def _build_predict_fn(model, source_stages: tuple[int, ...], output: str,
                      ensemble_weights: tuple[float, ...] | None = None,
                      domain: str = "target"):

  def resize(x, out_hw):  # as the model's reference resizes logits (models.upsample_logits)
    return models.upsample_logits(model, x, out_hw)

  def logits_of(variables, images):
    return main_logits(model, variables, images, domain=domain, source_stages=source_stages)

  def mean_softmax(logits_per_model):
    return sum(w * jax.nn.softmax(logits, axis=-1)
               for w, logits in zip(ensemble_weights, logits_per_model))

  @functools.partial(jax.jit, static_argnames=("out_hw",))
  def predict(variables, images, out_hw):
    out_hw = tuple(out_hw)
    if ensemble_weights is None:
      logits = logits_of(variables, images)
      if output == "labels":
        return upsampled_labels(model, logits, out_hw)
      probs = resize(jax.nn.softmax(logits, axis=-1), out_hw)
    else:
      if len(variables) != len(ensemble_weights):
        raise ValueError(f"{len(ensemble_weights)} ensemble weights for {len(variables)} "
                         "variable sets; give one weight per model.")
      logits = [logits_of(v, images) for v in variables]
      if output == "labels":
        probs = resize(mean_softmax(logits), out_hw)
        return jnp.argmax(probs, axis=-1).astype(jnp.uint8)
      probs = mean_softmax([resize(x, out_hw) for x in logits])
    return jnp.argmax(probs, axis=-1).astype(jnp.uint8), jnp.max(probs, axis=-1)

  return predict


def make_image_predict_fn(model: Any, source_stages: Sequence[int] = (),
                          domain: str = "target") -> Callable[..., jax.Array]:
  """fn(variables, images [N, h, w, 3], out_hw) -> uint8 labels [N, *out_hw], as
  `make_predict_fn(output='labels')` computes them, compiled as two programs: the network once
  per input shape, the upsampling and argmax once per (input, output) size. A folder of photos
  or video frames of many sizes that come to one model input size compiles the network once.
  """
  source_stages = tuple(int(s) for s in source_stages)
  logits_fn = jax.jit(functools.partial(main_logits, model, domain=domain,
                                        source_stages=source_stages))
  labels_fn = jax.jit(functools.partial(upsampled_labels, model), static_argnames=("out_hw",))

  def predict(variables, images, out_hw):
    return labels_fn(logits_fn(variables, images), out_hw=tuple(int(v) for v in out_hw))

  return predict


# ---------------------------------------------------------------------------------------------
# The input scale for images of any size.

# Model input sizes are kept at least this large, so the stride-8 logits have a few pixels (the
# toy demo trains at 32x64).
MIN_INPUT_SIDE = 16


def parse_scale(scale: str) -> tuple[str, tuple[int, ...]]:
  """--scale as (kind, sizes): ('width', ()) for '' (the model's training width), ('width',
  (W,)) for 'W', ('size', (H, W)) for 'HxW', ('input', ()) for 'input'."""
  text = str(scale or "").strip().lower()
  if text in ("", "train", "preset"):
    return "width", ()
  if text in ("input", "native", "none"):
    return "input", ()
  if re.fullmatch(r"\d+", text):
    return "width", (int(text),)
  match = re.fullmatch(r"(\d+)x(\d+)", text)
  if match:
    return "size", (int(match.group(1)), int(match.group(2)))
  raise errors.UsageError(
      f"--scale={scale!r} is not a scale: give a width in pixels (e.g. 1024: every image "
      "resized to that width, aspect ratio kept), HxW (e.g. 512x1024: every image resized to "
      "exactly that, as evaluation does), 'input' (each image at its own size), or leave it "
      "empty for the width the model was trained at.")


def model_input_hw(image_hw: Sequence[int], scale: str, trained_hw: Sequence[int]
                   ) -> tuple[int, int]:
  """The (height, width) an image of `image_hw` is resized to before the network.

  The default is the width the model was trained at (`trained_hw`, the preset's
  data.val.resize_hw, e.g. 1024 for Cityscapes' 2048x1024 frames at 1024x512) with the image's
  own aspect ratio: objects then have about the pixel size they had in training, which is what a
  CNN's filters and the ASPP dilations are tuned to. Labels come back at `image_hw` anyway.
  """
  kind, sizes = parse_scale(scale)
  height, width = (int(v) for v in image_hw)
  if kind == "input":
    out = (height, width)
  elif kind == "size":
    out = sizes
  else:
    target_width = sizes[0] if sizes else int(trained_hw[1])
    out = (max(1, round(height * target_width / width)), target_width)
  if min(out) < MIN_INPUT_SIDE:  # that image is too small for this scale; others may be fine
    raise errors.InvalidInputError(
        f"--scale={scale!r} gives a {out[0]}x{out[1]} model input for a {height}x{width} image; "
        f"the network needs at least {MIN_INPUT_SIDE} pixels a side. Use a larger --scale.")
  return int(out[0]), int(out[1])


# ---------------------------------------------------------------------------------------------
# Ensembles: which checkpoints, with which weights.


def ensemble_paths(value: Any) -> tuple[str, ...]:
  """config.eval.ensemble ("dir1,dir2,dir3", or a sequence of dirs) as a tuple of paths."""
  items = value.split(",") if isinstance(value, str) else value
  return tuple(p.strip() for p in map(str, items) if p.strip())


def ensemble_weights(config: Any, num_models: int) -> tuple[float, ...]:
  """config.eval.ensemble_weights (one per model, scaled to sum to 1, so the mean stays a
  probability), or equal weights when it is empty."""
  weights = tuple(float(w) for w in config.eval.get("ensemble_weights", ()))
  if not weights:
    return (1.0 / num_models,) * num_models
  if len(weights) != num_models or min(weights) < 0 or sum(weights) <= 0:
    raise errors.UsageError(
        f"config.eval.ensemble_weights={weights} must hold {num_models} non-negative weights, "
        f"one per model of config.eval.ensemble, or be empty for equal weights.")
  return tuple(w / sum(weights) for w in weights)


def restore_ensemble(config: Any, model: Any, choose_step: Callable[..., int] | None = None):
  """Restores every model of config.eval.ensemble: (members, tuple of variable sets).

  Each entry is a run's workdir, its checkpoints/ folder or one step folder. Its step is
  config.eval.step when >= 0, else the last saved one, unless `choose_step(directory, steps,
  path)` picks another. `members` lists {'checkpoint', 'step', 'weight'} per model, in order.
  """
  paths = ensemble_paths(config.eval.ensemble)
  if config.eval.checkpoint:
    raise errors.UsageError(
        f"config.eval.checkpoint={config.eval.checkpoint!r} and config.eval.ensemble={paths} "
        "are both set; give the checkpoints to use in one of them (clear the other with ='').")
  weights = ensemble_weights(config, len(paths))
  abstract = checkpointing.abstract_variables(model)
  members, variables = [], []
  for path, weight in zip(paths, weights):
    try:
      directory, steps = checkpointing.find_steps(path, config.eval.step)
    except errors.MissingInputError as e:
      raise errors.MissingInputError(
          f"config.eval.ensemble names {path}, which has no usable checkpoint: {e}") from None
    step = choose_step(directory, steps, path) if choose_step else steps[-1]
    variables.append(checkpointing.restore_model(directory, abstract, step))
    members.append({"checkpoint": str(directory), "step": int(step), "weight": weight})
  return members, tuple(variables)


def predict_split(
    predict_fn: Callable[..., Any], variables: Any, examples: Iterable[dict[str, Any]],
    out_hw: Callable[[dict[str, Any]], Sequence[int]],
) -> Iterator[tuple[int, dict[str, Any], Any]]:
  """Yields (index, example, outputs of its first image as numpy) for every example in order.

  One example is in flight: the device predicts example i while the caller handles i - 1.
  `out_hw(example)` gives the output size of each example (e.g. its label's resolution).
  """
  pending = None
  for index, example in enumerate(examples):
    outputs = predict_fn(variables, jnp.asarray(example["image"], jnp.float32),
                         out_hw=tuple(int(v) for v in out_hw(example)))
    if pending is not None:
      yield _fetched(*pending)
    pending = (index, example, outputs)
  if pending is not None:
    yield _fetched(*pending)


def _fetched(index: int, example: dict[str, Any], outputs: Any):
  return index, example, jax.tree.map(lambda x: np.asarray(x)[0], outputs)


def example_id(example: dict[str, Any], index: int) -> str:
  """The example's id as a str (bytes, arrays and lists unwrapped); example_NNNNN if it has none."""
  value = example.get("id", f"example_{index:05d}")
  if isinstance(value, (np.ndarray, list, tuple)):
    value = np.asarray(value).reshape(-1)[0]
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  return str(value)
