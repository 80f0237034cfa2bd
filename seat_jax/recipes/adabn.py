"""AdaBN (`--config.mode=adabn`): a source-only model, its norms' statistics re-estimated on the
target train split, evaluated with them.

  training     the preset (source only), unless `eval.checkpoint` names a trained run  <workdir>
  statistics   `seat_jax.adabn_statistics`                                             <workdir>/adabn
  evaluation   of the adapted checkpoint                                               <workdir>/adabn/eval
"""

import ml_collections
from etils import epath

from seat_jax import adabn_statistics
from seat_jax import evaluate
from seat_jax.recipes import parts


def run(config: ml_collections.ConfigDict, workdir) -> dict[str, dict]:
  workdir = epath.Path(workdir)
  if not config.eval.checkpoint:
    parts.train_part("AdaBN: source-only training", config, workdir)
  out = adabn_statistics.output_dir(config, workdir)
  summary = parts.run_part("statistics", "AdaBN: target statistics", out,
                           lambda d: adabn_statistics.adapt(config, str(workdir)))

  def score(directory):
    adapted = parts.copy(config)
    adapted.eval.checkpoint = str(directory)
    adapted.eval.step = int(summary["step"])
    return evaluate.evaluate_checkpoints(adapted, directory)["final"]

  results = {"AdaBN": parts.run_part("eval", "AdaBN: evaluation", out, score)}
  parts.write_summary(workdir, "AdaBN", results)
  return results
