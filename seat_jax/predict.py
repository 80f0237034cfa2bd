"""Target-domain predictions: the one prediction function and the prefetching loop over a split.

Evaluation, pseudo-labels and the periodic evaluation in training all predict the same way: the
segmenter in eval mode with the TARGET norms, except the stages of the layer switch
(`config.eval.source_stages`, paper section 5.2) which use the source norms; the main head only;
bilinear upsampling with align_corners=True. They differ only in what they keep:

  labels:     argmax of the main logits upsampled to `out_hw` (evaluation: the label's full
              resolution; REFERENCE 5);
  confidence: (argmax, max probability) of the main SOFTMAX upsampled to `out_hw` (pseudo-labels
              at the model input size; BDL upsamples the probabilities, not the logits).
"""

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seat_jax import models

OUTPUTS = ("labels", "confidence")


def make_predict_fn(model: Any, source_stages: Sequence[int] = (),
                    output: str = "labels") -> Callable[..., Any]:
  """Jitted fn(variables, images [N, h, w, 3], out_hw) -> outputs at `out_hw` (static).

  `output='labels'`: uint8 train ids [N, *out_hw]; `output='confidence'`: (uint8 argmax,
  float32 max probability), each [N, *out_hw]. Cached per (model, source_stages, output), so the
  periodic evaluation and every checkpoint of eval mode reuse one compiled function.
  """
  if output not in OUTPUTS:
    raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}.")
  source_stages = tuple(int(s) for s in source_stages)
  try:
    return _cached_predict_fn(model, source_stages, output)
  except TypeError:  # an unhashable stand-in model: no caching
    return _build_predict_fn(model, source_stages, output)


@functools.lru_cache(maxsize=8)
def _cached_predict_fn(model, source_stages: tuple[int, ...], output: str):
  return _build_predict_fn(model, source_stages, output)


def _build_predict_fn(model, source_stages: tuple[int, ...], output: str):

  @functools.partial(jax.jit, static_argnames=("out_hw",))
  def predict(variables, images, out_hw):
    _, main_logits = model.apply(
        variables, images, domain="target", train=False, source_stages=source_stages)
    main_logits = main_logits.astype(jnp.float32)
    if output == "labels":
      logits = models.resize_bilinear(main_logits, tuple(out_hw))
      return jnp.argmax(logits, axis=-1).astype(jnp.uint8)
    probs = models.resize_bilinear(jax.nn.softmax(main_logits, axis=-1), tuple(out_hw))
    return jnp.argmax(probs, axis=-1).astype(jnp.uint8), jnp.max(probs, axis=-1)

  return predict


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
