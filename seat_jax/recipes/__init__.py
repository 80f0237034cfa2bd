"""Everything `python -m seat_jax.main --config.mode=<mode>` runs: one part or a recipe of parts.

A single part (train, eval, pseudo_labels, entropy_rank) is one call below; a recipe (pipeline,
fda_rounds, intrada, adabn) is a short sequence of parts (`parts.run_part`), each skipped when
done and resumed when partial, so a recipe rerun with the same --workdir continues.
"""

from collections.abc import Callable
from typing import Any

import ml_collections

from seat_jax import entropy_rank
from seat_jax import evaluate
from seat_jax import pseudo_labels
from seat_jax import train
from seat_jax.recipes import adabn
from seat_jax.recipes import fda_rounds
from seat_jax.recipes import intrada
from seat_jax.recipes import paper

RUNNERS: dict[str, Callable[[ml_collections.ConfigDict, str], Any]] = {
    "train": train.train_and_evaluate,
    "eval": evaluate.evaluate_checkpoints,
    "pseudo_labels": pseudo_labels.generate,
    "entropy_rank": entropy_rank.rank_target_split,
    "adabn": adabn.run,
    "pipeline": paper.run,
    "fda_rounds": fda_rounds.run,
    "intrada": intrada.run,
}


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
  return RUNNERS[config.mode](config, workdir)
