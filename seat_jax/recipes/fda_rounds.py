"""FDA's multi-band transfer and self-training rounds (`--config.mode=fda_rounds`).

Round T = 0 trains one model per beta of `fda.betas` from `init_from` (<workdir>/t0_b001, ...),
scores each (`fda.evaluate_members`) and their MBT, the mean of their softmax
(<workdir>/t0_mbt). Before round T + 1 the MBT writes class-wise pseudo-labels
(<workdir>/tT_mbt/pseudo_labels); round T + 1 trains every model again from `init_from` with
them (FDA's README trains each self-training model from the DeepLab init). `fda.rounds` rounds
follow T = 0 (FDA: 2). Facts: YanchaoYang/FDA (docs, 'Compared methods').
"""

import ml_collections
from etils import epath

from seat_jax import errors
from seat_jax import evaluate
from seat_jax import presets
from seat_jax import pseudo_labels
from seat_jax.methods import fda
from seat_jax.recipes import parts


def member_dir(workdir, round_index: int, beta: float) -> epath.Path:
  return epath.Path(workdir) / f"t{round_index}_{fda.beta_tag(beta)}"


def mbt_dir(workdir, round_index: int) -> epath.Path:
  return epath.Path(workdir) / f"t{round_index}_mbt"


def round_config(config: ml_collections.ConfigDict, workdir, round_index: int,
                 beta: float) -> ml_collections.ConfigDict:
  """One model of round T: the preset at `beta`, plus stage 2 on round T-1's MBT labels."""
  config = parts.copy(config)
  config.mode = "train"
  config.data.fda_beta = float(beta)
  config.eval.ensemble = ""  # each model trains and is scored alone
  config.eval.checkpoint = ""
  config.pseudo.output_dir = ""  # each round's labels stay in its own MBT folder
  if round_index > 0:
    presets.stage2(config)
    config.data.target.pseudo_label_dir = str(mbt_dir(workdir, round_index - 1) /
                                              "pseudo_labels")
  return config


def run(config: ml_collections.ConfigDict, workdir) -> dict[str, dict]:
  if not config.loss.get("robust_entropy_weight") and not config.data.fda_beta:
    raise errors.UsageError(
        "--config.mode=fda_rounds needs an FDA preset (data.fda_beta and "
        "loss.robust_entropy_weight are 0 here); use e.g. --config=configs/gta.py:fda_b001.")
  betas = tuple(float(b) for b in config.fda.betas)
  results = {}
  for t in range(int(config.fda.rounds) + 1):
    members = []
    for beta in betas:
      member = round_config(config, workdir, t, beta)
      directory = member_dir(workdir, t, beta)
      parts.train_part(f"FDA round T={t}, beta={beta}: training", member, directory)
      members.append(str(directory))
      if config.fda.evaluate_members:
        results[f"T={t} {fda.beta_tag(beta)}"] = parts.eval_part(
            f"FDA round T={t}, beta={beta}: evaluation", member, directory)
    mbt = round_config(config, workdir, t, betas[0])
    mbt.eval.ensemble = ",".join(members)
    results[f"T={t} MBT"] = parts.run_part(
        "eval", f"FDA round T={t}: MBT of {len(members)} models", mbt_dir(workdir, t),
        lambda d, c=mbt: evaluate.evaluate_ensemble(c, d))
    if t < config.fda.rounds:
      parts.run_part("pseudo_labels", f"FDA round T={t}: MBT pseudo-labels",
                     mbt_dir(workdir, t), lambda d, c=mbt: pseudo_labels.generate(c, str(d)))
  parts.write_summary(workdir, "FDA rounds", results)
  return results
