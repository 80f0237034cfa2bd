"""IntraDA's entropy ranking: the score, the easy/hard split and the `intrada.*` entries.

IntraDA (Pan et al., CVPR 2020; feipanir/IntraDA) is three runs, two of them ordinary training:
  1. ADVENT's adversarial model from GTA5 to Cityscapes (`configs/gta.py:intrada`), every
     checkpoint scored on val by eval mode;
  2. `--config.mode=entropy_rank` (`seat_jax.entropy_rank`, with the score and split defined
     here): the best-on-val stage-1 model scores every target
     train image; the lowest int(N * lambda) scores (lambda 0.67) form the easy split, the rest
     the hard split, and the easy images get pseudo-labels (the plain argmax, no threshold);
  3. ADVENT's adversarial model again, re-initialised, with the easy images and their
     pseudo-labels as its "source" and the hard images as its "target"
     (`configs/gta_stage2.py:intrada`: `data.<domain>.ids_file`, `data.source.pseudo_label_dir`).

The score of an image (IntraDA `entropyrk/entropy.py`): the main head's logits upsampled
(align_corners) to the model input size, their softmax p, ADVENT's self-information map
I = -p log2(p + 1e-30) / log2(C), averaged over pixels AND classes (the mean normalised entropy
divided by C). With the normaliser (`intrada.normalize`) it is multiplied by (11 - r) / 11 + 0.5,
r = how many of IntraDA's 11 rare Cityscapes classes the argmax map contains, so an image with
rare classes looks easier and joins the labelled easy split. Ties are broken by example id here
(IntraDA's stable sort keeps its shuffled loader's order, which is not reproducible).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from seat_jax import errors
from seat_jax import labels
from seat_jax import losses
from seat_jax import models
from seat_jax.methods import base

# IntraDA's rare Cityscapes train ids 3, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17, by name.
RARE_CLASSES = ("wall", "fence", "pole", "traffic light", "traffic sign", "terrain", "rider",
                "truck", "bus", "train", "motorcycle")
EASY_LIST, HARD_LIST = "easy_split.txt", "hard_split.txt"
PSEUDO_LABELS = "pseudo_labels"  # <output_dir>/pseudo_labels/<id>.png: the easy split's labels


# --------------------------------------------------------------------------------------------
# The score and the split, on numpy arrays.


def rare_class_ids(space: labels.LabelSpace) -> tuple[int, ...]:
  """IntraDA's rare classes as ids of `space`; only the 19-class space holds all 11.

  SYNTHIA's 16 classes lack terrain, truck and train, and IntraDA publishes no SYNTHIA code, so
  a normaliser there would be a new method, not IntraDA's: it is refused.
  """
  missing = [name for name in RARE_CLASSES if name not in space.classes]
  if missing:
    raise errors.UsageError(
        f"config.intrada.normalize=True needs IntraDA's 11 rare Cityscapes classes, but label "
        f"space {space.name!r} has no {missing}; IntraDA defines the normaliser for the 19 "
        "classes only (it publishes no SYNTHIA code). Rank without it: "
        "--config.intrada.normalize=False.")
  return tuple(space.classes.index(name) for name in RARE_CLASSES)


def normaliser(num_rare_present: int) -> float:
  """(11 - r) / 11 + 0.5: 1.5 with no rare class in the prediction, 0.5 with all 11."""
  return (len(RARE_CLASSES) - num_rare_present) / len(RARE_CLASSES) + 0.5


def rare_classes_present(prediction: np.ndarray, rare_ids: Sequence[int]) -> int:
  """How many distinct rare ids the argmax map contains."""
  return len(set(np.unique(prediction).tolist()) & set(int(i) for i in rare_ids))


def ranking_score(mean_self_information: float, prediction: np.ndarray,
                  rare_ids: Sequence[int] | None) -> tuple[float, int | None, float]:
  """(score, rare classes present, factor) of one image; rare_ids None = no normaliser."""
  if rare_ids is None:
    return float(mean_self_information), None, 1.0
  present = rare_classes_present(prediction, rare_ids)
  factor = normaliser(present)
  return float(mean_self_information) * factor, present, factor


def split_sizes(num_images: int, lambda_easy: float) -> tuple[int, int]:
  """(easy, hard) counts: int(N * lambda) easy, as IntraDA's cluster_subdomain; both >= 1."""
  num_easy = int(num_images * lambda_easy)
  if not 0 < num_easy < num_images:
    raise errors.UsageError(
        f"config.intrada.lambda_easy={lambda_easy} puts {num_easy} of {num_images} images in "
        "the easy split; both splits need at least one image (IntraDA: 0.67).")
  return num_easy, num_images - num_easy


def rank_order(ids: Sequence[str], scores: Sequence[float]) -> list[int]:
  """Indices sorted by ascending score, ties by example id (deterministic)."""
  return sorted(range(len(ids)), key=lambda k: (float(scores[k]), str(ids[k])))


def split_easy_hard(ids: Sequence[str], scores: Sequence[float],
                    lambda_easy: float) -> tuple[list[str], list[str]]:
  """(easy ids, hard ids), each in rank order (easiest first)."""
  ranked = [ids[k] for k in rank_order(ids, scores)]
  num_easy, _ = split_sizes(len(ranked), lambda_easy)
  return ranked[:num_easy], ranked[num_easy:]


# --------------------------------------------------------------------------------------------
# The model side.


def make_rank_fn(model: Any, source_stages: Sequence[int] = ()):
  """Jitted fn(variables, images [N, h, w, 3], out_hw) -> per image, at `out_hw` (static):

  (argmax uint8 [N, *out_hw], mean self-information float32 [N], entropy uint8 [N, *out_hw]
  for the previews: the per-pixel normalised entropy times 255). The segmenter runs as
  `predict.make_predict_fn` runs it (target norms, `source_stages` from the source, main head),
  but the logits are upsampled BEFORE the softmax, as IntraDA's ranking does.
  """
  source_stages = tuple(int(s) for s in source_stages)

  def rank(variables, images, out_hw):
    _, main_logits = model.apply(
        variables, images, domain="target", train=False, source_stages=source_stages)
    logits = models.upsample_logits(model, main_logits.astype(jnp.float32), tuple(out_hw))
    information = losses.self_information(jax.nn.softmax(logits, axis=-1))
    entropy = jnp.clip(jnp.sum(information, axis=-1), 0.0, 1.0)
    return (jnp.argmax(logits, axis=-1).astype(jnp.uint8), jnp.mean(information, axis=(1, 2, 3)),
            jnp.round(255.0 * entropy).astype(jnp.uint8))

  return jax.jit(rank, static_argnames=("out_hw",))


# --------------------------------------------------------------------------------------------
# Where the entropy_rank pass writes, and what it refuses.


def output_dir(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  return epath.Path(config.intrada.output_dir or epath.Path(workdir) / "entropy_rank")


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """What config_validation (and the entropy_rank pass) reports about the intrada keys."""
  problems = []
  if not 0.0 < float(config.intrada.lambda_easy) < 1.0:
    problems.append(f"config.intrada.lambda_easy={config.intrada.lambda_easy} must lie in "
                    "(0, 1): the easy fraction of the target train split (IntraDA: 0.67)")
  space = config.data.label_space
  if (config.mode == "entropy_rank" and config.intrada.normalize
      and space in labels.LABEL_SPACES and space != "cityscapes19"):
    problems.append(f"config.intrada.normalize=True is defined for cityscapes19 only (IntraDA's "
                    f"11 rare classes; not all exist in {space!r}); use "
                    "--config.intrada.normalize=False")
  if config.mode == "entropy_rank" and config.eval.get("ensemble", ()):
    problems.append("config.eval.ensemble is set, but IntraDA ranks with one stage-1 model; "
                    "clear it and choose the checkpoint with pseudo.checkpoint / eval.checkpoint")
  return problems


@dataclasses.dataclass(frozen=True)
class IntraDA(base.Method):
  """No step terms: IntraDA's stages are ordinary training runs; its ranking is the
  entropy_rank pass (`seat_jax.entropy_rank`). Owns the `intrada.*` entries."""

  @staticmethod
  def add_config(config):
    # IntraDA (mode entropy_rank): rank the target train split by the stage-1 model's entropy
    # (checkpoint chosen by pseudo.checkpoint), split it easy/hard, pseudo-label the easy part.
    intrada = base.section(config, "intrada")
    intrada.lambda_easy = 0.67  # the easy split: the first int(N * lambda) images by score
    intrada.normalize = True  # IntraDA's rare-class normaliser (its published 46.3 uses it)
    intrada.output_dir = ""  # where entropy_rank writes; "" = <workdir>/entropy_rank

  problems = staticmethod(config_problems)
