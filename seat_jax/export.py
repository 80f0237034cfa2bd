"""Command: export a trained model to run without this package.

  python -m seat_jax.export --config=configs/gta.py --checkpoint=runs/gta_seat --out=exported \
      [--domain=target] [--formats=jax,saved_model] [--platforms=cpu,cuda]

Writes into --out:
  model.jax        the inference function as a `jax.export` artifact (serialized StableHLO with
                   the weights inside); needs only jax to run, no seat_jax:
                     exported = jax.export.deserialize(open("model.jax", "rb").read())
                     outputs = exported.call(images)  # {"labels": ..., "logits": ...}
  saved_model/     the same function as a TensorFlow SavedModel (jax2tf), signature
                   `serving_default(images) -> {labels, logits}`, weights as TF variables:
                     outputs = tf.saved_model.load("saved_model").signatures["serving_default"](
                         images=tf.constant(images))
  model_card.json  what the function expects and returns: the preset, classes and palette, the
                   input scale and normalisation, the norms' domain and layer switch, the
                   checkpoint step, and the run's mIoU when it was evaluated.

The function: `images` uint8 RGB [N, H, W, 3] -> `labels` uint8 [N, H, W] (class ids) and
`logits` float32 [N, H, W, C] (the main head's, upsampled bilinearly to the input's size as the
model's reference does: `models.upsample_logits`). It normalises the images itself (RGB -> BGR
minus the Caffe mean; the network maps that on to what its weights expect) and uses the
preset's norms and layer switch baked in, exactly as `predict` does in evaluation and
`seat_jax.segment`. Batch, height and width are all symbolic: one artifact takes any batch and
any size of at least 16 pixels a side (the network's shape arithmetic, the ceil-mode pooling
included, lowers on symbols, and `models.resize_bilinear` computes its weights on the device for
them). Feed images at the scale the model was trained at (model_card.json `input.scale`); the
labels come back at the size fed, to be resized to the original frame by the caller (nearest).

`--platforms` lowers for several backends at once (default cpu and cuda: the same file runs on
either); both formats carry the same StableHLO.

ONNX is not written: tf2onnx 1.17 installs beside the pinned stack but cannot convert the
SavedModel, because jax2tf (JAX 0.10) writes only native serialization, one `XlaCallModule` op
holding StableHLO, for which tf2onnx has no conversion; `jax2onnx` 0.17 needs
orbax-checkpoint<0.11.37 and does not install beside the pinned 0.12.8.

Flags are defined when the module runs as a command, as in `seat_jax.segment` (its docstring
says why).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from seat_jax import cli
from seat_jax import errors
from seat_jax import segment

FORMATS = ("jax", "saved_model")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
JAX_FILE = "model.jax"
SAVED_MODEL_DIR = "saved_model"
CARD_FILE = "model_card.json"
CARD_VERSION = 1


def inference_fn(model: Any, domain: str = "target", source_stages: Sequence[int] = ()):
  """fn(variables, images uint8 RGB [N, H, W, 3]) -> {'labels', 'logits'} at [N, H, W] (module
  doc); `predict.main_logits` on `device_preprocessing.to_model_input` of the images."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seat_jax import device_preprocessing  # pylint: disable=g-import-not-at-top
  from seat_jax import models  # pylint: disable=g-import-not-at-top
  from seat_jax import predict  # pylint: disable=g-import-not-at-top
  source_stages = tuple(int(s) for s in source_stages)

  def fn(variables, images):
    logits = predict.main_logits(model, variables, device_preprocessing.to_model_input(images),
                                 domain=domain, source_stages=source_stages)
    logits = models.upsample_logits(model, logits, images.shape[1:3])
    return {"labels": jnp.argmax(logits, axis=-1).astype(jnp.uint8), "logits": logits}

  return fn


def _symbolic_images():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seat_jax import predict  # pylint: disable=g-import-not-at-top
  side = predict.MIN_INPUT_SIDE
  batch, height, width = jax.export.symbolic_shape(
      "b, h, w", constraints=(f"h >= {side}", f"w >= {side}"))
  return jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)


def export_jax(restored: segment.Restored, path: str, platforms: Sequence[str] = ("cpu",)
               ) -> bytes:
  """Writes the jax.export artifact of the inference function to `path`; returns its bytes."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  fn = functools.partial(inference_fn(restored.model, restored.domain, restored.source_stages),
                         restored.variables)
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(_symbolic_images())
  data = exported.serialize()
  with open(path, "wb") as f:
    f.write(data)
  return data


def export_saved_model(restored: segment.Restored, path: str,
                       platforms: Sequence[str] = ("cpu",)) -> None:
  """Writes the inference function as a TensorFlow SavedModel (jax2tf) to the folder `path`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  from seat_jax import predict  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take GPU memory from JAX.
  side = predict.MIN_INPUT_SIDE
  converted = jax2tf.convert(
      inference_fn(restored.model, restored.domain, restored.source_stages),
      polymorphic_shapes=[None, "(b, h, w, 3)"],
      polymorphic_constraints=(f"h >= {side}", f"w >= {side}"),
      with_gradient=False, native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  # Weights as variables (not graph constants): the SavedModel stores them once, as checkpoints.
  module.weights = tf.nest.map_structure(
      lambda a: tf.Variable(np.asarray(a), trainable=False),
      jax.tree.map(np.asarray, jax.device_get(restored.variables)))

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
               autograph=False)
  def serve(images):
    return converted(module.weights, images)

  module.serve = serve
  tf.saved_model.save(module, path, signatures={"serving_default": serve})


def evaluation_of(directory, step: int) -> dict[str, Any] | None:
  """The run's eval-mode scores of `step` (<workdir>/eval/summary.json), if it was evaluated."""
  directory = os.fspath(directory)
  workdir = os.path.dirname(directory) if os.path.basename(directory) == "checkpoints" else None
  summary_path = os.path.join(workdir, "eval", "summary.json") if workdir else None
  if not summary_path or not os.path.isfile(summary_path):
    return None
  try:
    with open(summary_path) as f:
      summary = json.load(f)
    means = summary["steps"][str(step)]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return {"step": int(step), "means": means, "label_space": summary.get("label_space"),
          "source_stages": summary.get("source_stages"),
          "summary": os.path.abspath(summary_path)}


def model_card(restored: segment.Restored, config, preset: str, files: dict[str, str],
               platforms: Sequence[str]) -> dict[str, Any]:
  """model_card.json's content (module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  from seat_jax import device_preprocessing  # pylint: disable=g-import-not-at-top
  from seat_jax import predict  # pylint: disable=g-import-not-at-top
  from seat_jax import models  # pylint: disable=g-import-not-at-top
  space = restored.space
  height, width = restored.trained_hw
  segmenter = models.build_segmenter(config.model)
  resize = ("align_corners=True" if getattr(segmenter, "align_corners", True)
            else "half-pixel centres, align_corners=False")
  weights_input = str(getattr(segmenter, "input_normalisation", "caffe"))
  return {
      "card_version": CARD_VERSION,
      "preset": preset,
      "model": {
          "architecture": "DeepLabV2 (ResNet backbone, output stride 8), main head",
          "stage_sizes": list(config.model.stage_sizes),
          "base_width": int(config.model.base_width),
          "norm_mode": str(config.model.norm_mode),
          "num_classes": space.num_classes,
      },
      "norm_domain": restored.domain,
      "layer_switch_source_stages": list(restored.source_stages),
      "label_space": space.name,
      "classes": list(space.classes),
      "palette": [[int(c) for c in rgb] for rgb in space.palette],
      "cityscapes_label_ids": [int(i) for i in space.cityscapes_label_ids],
      "input": {
          "name": "images",
          "dtype": "uint8",
          "shape": ["batch", "height", "width", 3],
          "channels": "RGB, 0-255",
          "normalisation": "inside the function: RGB -> BGR, minus the Caffe ImageNet mean "
                           "(B, G, R) below, no division by a standard deviation" + (
                               "; the network then maps that to RGB with the ImageNet mean/std "
                               "its weights expect" if weights_input == "imagenet" else ""),
          "mean_bgr": [float(v) for v in device_preprocessing.CAFFE_MEAN_BGR],
          "min_side": predict.MIN_INPUT_SIDE,
          "scale": {
              "trained_at_hw": [height, width],
              "rule": f"resize each image (bicubic) to width {width}, keeping its aspect ratio "
                      f"(seat_jax.segment's default); a {2 * height}x{2 * width} frame then "
                      f"comes in at {height}x{width}, the size evaluation used",
          },
      },
      "outputs": {
          "labels": "uint8 [batch, height, width]: class ids (index into classes), at the "
                    "input's size",
          "logits": "float32 [batch, height, width, num_classes]: the main head's logits, "
                    f"upsampled bilinearly ({resize}) to the input's size",
      },
      "checkpoint": {"directory": os.path.abspath(os.fspath(restored.directory)),
                     "step": restored.step},
      "evaluation": evaluation_of(restored.directory, restored.step),
      "files": files,
      "platforms": list(platforms),
      "exported_with": {"jax": jax.__version__},
  }


def export(config, checkpoint: str, out_dir: str, *, preset: str = "", domain: str = "target",
           formats: Sequence[str] = FORMATS, platforms: Sequence[str] = ("cpu", "cuda"),
           log=print) -> dict[str, Any]:
  """Writes the chosen formats and model_card.json into `out_dir`; returns the card."""
  bad = [f for f in formats if f not in FORMATS] or not formats
  if bad:
    raise errors.UsageError(f"--formats={','.join(formats)}: choose one or more of {FORMATS}.")
  bad = [p for p in platforms if p not in PLATFORMS] or not platforms
  if bad:
    raise errors.UsageError(
        f"--platforms={','.join(platforms)}: choose one or more of {PLATFORMS}.")
  restored = segment.restore(config, checkpoint, domain)
  log(f"Exporting {restored.description()} for {', '.join(platforms)}")
  os.makedirs(out_dir, exist_ok=True)
  files = {}
  if "jax" in formats:
    path = os.path.join(out_dir, JAX_FILE)
    export_jax(restored, path, platforms)
    files["jax_export"] = JAX_FILE
    log(f"  {path} ({_size(path)})")
  if "saved_model" in formats:
    path = os.path.join(out_dir, SAVED_MODEL_DIR)
    export_saved_model(restored, path, platforms)
    files["saved_model"] = SAVED_MODEL_DIR
    log(f"  {path}/ ({_size(path)})")
  card = model_card(restored, config, preset, files, platforms)
  path = os.path.join(out_dir, CARD_FILE)
  with open(path, "w") as f:
    json.dump(card, f, indent=2)
    f.write("\n")
  log(f"  {path}")
  return card


def _size(path: str) -> str:
  total = os.path.getsize(path) if os.path.isfile(path) else sum(
      os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(path) for f in fs)
  return f"{total / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# The command.

_FLAGS: dict[str, Any] = {}


def define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _FLAGS.update(
      config=config_flags.DEFINE_config_file(
          "config", None, "The preset the model was trained with, e.g. configs/gta.py.",
          lock_config=True),
      checkpoint=flags.DEFINE_string(
          "checkpoint", None, "A run's workdir, its checkpoints/ folder or one step folder "
          "(default step: the last one)."),
      out=flags.DEFINE_string("out", None, "The folder to write model.jax, saved_model/ and "
                              "model_card.json into."),
      domain=flags.DEFINE_enum("domain", "target", list(segment.DOMAINS),
                               "Whose norms the exported function uses."),
      formats=flags.DEFINE_list("formats", list(FORMATS), f"Which of {list(FORMATS)} to write."),
      platforms=flags.DEFINE_list("platforms", ["cpu", "cuda"],
                                  f"Backends to lower for, from {list(PLATFORMS)}."),
  )


def run(argv: list[str]) -> int:
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; flags are --config, "
                            "--checkpoint, --out, --domain, --formats, --platforms.")
  if _FLAGS["config"].value is None or not _FLAGS["checkpoint"].value or not _FLAGS["out"].value:
    raise errors.UsageError("--config, --checkpoint and --out are required, e.g. "
                            "--config=configs/gta.py --checkpoint=runs/gta_seat --out=exported.")
  preset = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "")
  export(_FLAGS["config"].value, _FLAGS["checkpoint"].value, _FLAGS["out"].value,
         preset=preset, domain=_FLAGS["domain"].value, formats=_FLAGS["formats"].value,
         platforms=_FLAGS["platforms"].value)
  return 0


if __name__ == "__main__":
  define_flags()
  sys.exit(cli.run(run, configs=[_FLAGS["config"]]))
