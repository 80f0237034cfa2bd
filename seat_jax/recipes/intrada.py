"""IntraDA (`--config.mode=intrada`): inter-domain adaptation, entropy ranking, intra-domain.

  stage 1   the preset's adversarial training (ADVENT's), every checkpoint scored on val
            when the ranking picks the best-on-val model                   <workdir>/stage1
  ranking   the target train split scored and split easy / hard, the easy
            images pseudo-labelled (`seat_jax.entropy_rank`)               <workdir>/stage1/entropy_rank
  stage 2   the same training re-initialised to `init_from`, the easy images with their
            pseudo-labels as "source", the hard ones as "target"           <workdir>/stage2
"""

import ml_collections
from etils import epath

from seat_jax import entropy_rank
from seat_jax import evaluate
from seat_jax import presets
from seat_jax.methods import intrada
from seat_jax.recipes import parts


def _score_every_checkpoint(config: ml_collections.ConfigDict, run_dir: epath.Path):
  config = parts.copy(config)
  config.eval.step = -1
  config.eval.checkpoint = str(run_dir)
  return evaluate.evaluate_checkpoints(config, run_dir)["best"]


def run(config: ml_collections.ConfigDict, workdir) -> dict[str, dict]:
  workdir = epath.Path(workdir)
  stage1_dir, stage2_dir = workdir / "stage1", workdir / "stage2"
  results = {}
  parts.train_part("IntraDA stage 1: inter-domain adversarial training", config, stage1_dir)
  if config.pseudo.checkpoint == "best_on_val":
    results["stage 1 (best on val)"] = parts.run_part(
        "eval_all", "IntraDA stage 1: every checkpoint on val", stage1_dir,
        lambda d: _score_every_checkpoint(config, d))
  else:
    results["stage 1"] = parts.eval_part("IntraDA stage 1: evaluation", config, stage1_dir)
  parts.run_part("entropy_rank", "IntraDA: entropy ranking of the target train split",
                 stage1_dir, lambda d: entropy_rank.rank_target_split(config, str(d)))

  ranking = intrada.output_dir(config, stage1_dir)
  stage2 = presets.intrada_stage2(parts.copy(config))
  stage2.mode = "train"
  stage2.data.source.ids_file = str(ranking / intrada.EASY_LIST)
  stage2.data.source.pseudo_label_dir = str(ranking / intrada.PSEUDO_LABELS)
  stage2.data.target.ids_file = str(ranking / intrada.HARD_LIST)
  parts.train_part("IntraDA stage 2: easy -> hard adaptation, re-initialised", stage2,
                   stage2_dir)
  results["stage 2"] = parts.eval_part("IntraDA stage 2: evaluation", stage2, stage2_dir)
  parts.write_summary(workdir, "IntraDA", results)
  return results
