"""The paper's pipeline (`--config.mode=pipeline`): stage 1, its pseudo-labels, stage 2.

  stage 1   adversarial training of the preset from `init_from`        <workdir>/stage1
            its final step evaluated (with the preset's layer switch)
            pseudo-labels on the target train split                     <workdir>/stage1/pseudo_labels
  stage 2   the segmenter re-initialised to `init_from`, trained on the
            source labels and the target pseudo-labels, evaluated       <workdir>/stage2
"""

import ml_collections
from etils import epath

from seat_jax import presets
from seat_jax import pseudo_labels
from seat_jax.recipes import parts


def run(config: ml_collections.ConfigDict, workdir) -> dict[str, dict]:
  workdir = epath.Path(workdir)
  stage1_dir, stage2_dir = workdir / "stage1", workdir / "stage2"
  results = {}
  parts.train_part("Stage 1: adversarial training", config, stage1_dir)
  results["stage 1"] = parts.eval_part("Stage 1: evaluation", config, stage1_dir)
  parts.run_part("pseudo_labels", "Stage 1: pseudo-labels on the target train split",
                 stage1_dir, lambda d: pseudo_labels.generate(config, str(d)))

  stage2 = presets.stage2(parts.copy(config))
  stage2.mode = "train"
  stage2.data.target.pseudo_label_dir = str(pseudo_labels.output_dir(config, stage1_dir))
  parts.train_part("Stage 2: self-training, re-initialised to init_from", stage2, stage2_dir)
  results["stage 2"] = parts.eval_part("Stage 2: evaluation", stage2, stage2_dir)
  parts.write_summary(workdir, "Paper pipeline", results)
  return results
