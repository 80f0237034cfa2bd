"""FDA (Yang and Soatto, CVPR 2020): its robust entropy, its recipe and its self-training rounds.

What FDA brings beyond the shared machinery, and where each part runs:
  * the source image takes a target image's low-frequency amplitude (`seat_jax.fda`, applied by
    the input pipeline with `data.fda_beta`);
  * a Charbonnier-penalised entropy of the target's stride-8 main logits (`robust_entropy`,
    added by the train step with `loss.robust_entropy_weight` and `loss.robust_entropy_eta`);
  * multi-band transfer (MBT): one model per beta (0.01, 0.05, 0.09), their softmax averaged
    (`eval.ensemble`, in `predict`, `evaluate` and `pseudo_labels`), class-wise pseudo-labels from
    the average (`pseudo.rule=class_quantile`, quantile 0.66, cap 0.9), then self-training
    rounds that train the three models again from the init on those labels (`run_rounds`, this
    module's command).
Facts are from YanchaoYang/FDA (docs/compared-methods-research.md section 2).

  python -m seat_jax.methods.fda --config=configs/gta.py:fda_b001 --workdir=runs/fda \
      --config.data.data_dir=/data/tfds --config.init_from=/ckpt/init_coco [--rounds=2]

runs round T = 0, 1, ... into <workdir>/t<T>_b001 (one per beta) and <workdir>/t<T>_mbt (the
MBT evaluation and, before the next round, its pseudo-labels). Each part is skipped or resumed
when found done, so rerunning the command continues where it stopped.
"""

import json
import math
import sys

import jax
import jax.numpy as jnp

# FDA's README recipe (train.py / SStrain.py flags): --LB, --entW, --ita, with switch2entropy 0.
BETAS = (0.01, 0.05, 0.09)
ROBUST_ENTROPY_WEIGHT = 0.005
ROBUST_ENTROPY_ETA = 2.0
# Added to the squared normalised entropy before the power (model/deeplab.py; the paper's
# equation writes 0.001^2 on the raw entropy instead).
ROBUST_ENTROPY_EPSILON = 1e-8
# getSudoLabel_multi.py: per class, the confidence at index round(0.66 N) of the ascending
# confidences, capped at 0.9 (so about the top third of each class is kept).
MBT_QUANTILE = 0.66
MBT_CAP = 0.9
# FDA's schedule (options/train_options.py): poly over 150k steps, stopped at 100k, a
# snapshot every 2,500.
LR_HORIZON_STEPS = 150_000
NUM_STEPS = 100_000
CHECKPOINT_EVERY = 2_500


def robust_entropy(logits: jax.Array, eta: jax.Array | float = ROBUST_ENTROPY_ETA) -> jax.Array:
  """FDA's robust entropy: mean over pixels of ((H / ln C)^2 + 1e-8)^eta, a float32 scalar.

  logits: [N, h, w, C] at the head's own resolution (FDA: stride 8, before any upsampling).
  H is the natural-log entropy of softmax(logits); dividing by ln C puts it in [0, 1] (FDA
  hard-codes 2.9444, ln 19 to 4 decimals). With eta = 2 the penalty is ~e^4: uncertain pixels
  carry the gradient and nearly certain ones get almost none.
  """
  logits = logits.astype(jnp.float32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1) / math.log(logits.shape[-1])
  return jnp.mean((jnp.square(entropy) + ROBUST_ENTROPY_EPSILON) ** eta)


# ---------------------------------------------------------------------------------------------
# The rounds: T = 0 (FDA alone), then self-training on the previous round's MBT pseudo-labels.


def beta_tag(beta: float) -> str:
  """0.01 -> 'b001': the suffix of the presets and of the per-beta workdirs."""
  return f"b{round(beta * 100):03d}"


def member_workdir(workdir, round_index: int, beta: float):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(workdir) / f"t{round_index}_{beta_tag(beta)}"


def mbt_workdir(workdir, round_index: int):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(workdir) / f"t{round_index}_mbt"


def round_config(config, workdir, round_index: int, beta: float):
  """The config of one model of round T: the stage-1 preset at `beta`, plus stage 2 from T = 1.

  Every round starts again from `config.init_from` (FDA's README trains each SST model from
  DeepLab_init.pth); only the pseudo-labels change, those of the previous round's MBT.
  """
  from seat_jax import presets  # pylint: disable=g-import-not-at-top
  config = _copy(config)
  config.data.fda_beta = float(beta)
  config.eval.ensemble = ""  # each model trains and is scored alone
  config.eval.checkpoint = ""
  config.pseudo.output_dir = ""  # each round's labels stay in its own MBT folder
  if round_index > 0:
    presets.stage2(config)
    config.data.target.pseudo_label_dir = str(
        mbt_workdir(workdir, round_index - 1) / "pseudo_labels")
  return config


def _copy(config):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(config.to_dict())


def _read_json(path):
  return json.loads(path.read_text()) if path.exists() else None


def _member_result(config, directory) -> dict:
  """The final step's evaluation of one model (read back when eval mode already scored it)."""
  from seat_jax import evaluate  # pylint: disable=g-import-not-at-top
  step = config.train.num_steps
  summary = _read_json(directory / "eval" / "summary.json")
  if summary and str(step) in summary["steps"]:
    return {"step": step, **summary["steps"][str(step)]}
  config = _copy(config)
  config.eval.step = step
  config.eval.checkpoint = ""
  final = evaluate.evaluate_checkpoints(config, directory)["final"]
  return {"step": step, **{k: v for k, v in final.items() if k.startswith("mIoU")}}


def _ensemble_result(config, directory) -> dict:
  from seat_jax import evaluate  # pylint: disable=g-import-not-at-top
  summary = _read_json(directory / evaluate.ENSEMBLE_DIR / "summary.json")
  members = [m["checkpoint"] for m in summary["members"]] if summary else None
  if summary and members == _checkpoint_dirs(config):
    return summary["means"]
  result = evaluate.evaluate_ensemble(config, directory)
  return {k: v for k, v in result.items() if k.startswith("mIoU")}


def _checkpoint_dirs(config) -> list[str]:
  # pylint: disable-next=g-import-not-at-top,multiple-imports
  from seat_jax import checkpointing, predict
  return [str(checkpointing.resolve(p)[0]) for p in predict.ensemble_paths(config.eval.ensemble)]


def _pseudo_labels(config, directory) -> None:
  """MBT pseudo-labels into <directory>/pseudo_labels, unless a finished set of the same models
  is there (summary.json is written last)."""
  from seat_jax import pseudo_labels  # pylint: disable=g-import-not-at-top
  summary = _read_json(pseudo_labels.output_dir(config, directory) / "summary.json")
  if summary and [m["checkpoint"] for m in summary.get("ensemble", [])] == _checkpoint_dirs(
      config):
    print(f"Pseudo-labels in {directory} are done; kept.", flush=True)
    return
  pseudo_labels.generate(config, directory)


def run_rounds(config, workdir, rounds: int = 2, betas=BETAS,
               evaluate_members: bool = True) -> dict[str, dict]:
  """Trains rounds T = 0..`rounds` of FDA-MBT in `workdir`; returns {row name: means}.

  `config` is a stage-1 FDA preset (its own beta is replaced by each of `betas`). Row names:
  'T=0 b001' (one model, when `evaluate_members`) and 'T=0 MBT' (the ensemble), and so on.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  from seat_jax import train  # pylint: disable=g-import-not-at-top
  if rounds < 0 or not betas:
    raise ValueError(f"run_rounds needs rounds >= 0 and at least one beta; got {rounds}, {betas}.")
  workdir = epath.Path(workdir)
  results = {}
  for t in range(rounds + 1):
    members = []
    for beta in betas:
      member_config = round_config(config, workdir, t, beta)
      directory = member_workdir(workdir, t, beta)
      print(f"\n=== FDA round T={t}, beta={beta}: {directory} ===", flush=True)
      train.train_and_evaluate(member_config, str(directory))
      members.append(str(directory))
      if evaluate_members:
        results[f"T={t} {beta_tag(beta)}"] = _member_result(member_config, directory)
    mbt_config = round_config(config, workdir, t, betas[0])
    mbt_config.eval.ensemble = ",".join(members)
    mbt_config.eval.checkpoint = ""
    directory = mbt_workdir(workdir, t)
    print(f"\n=== FDA round T={t}: MBT of {len(members)} models -> {directory} ===", flush=True)
    results[f"T={t} MBT"] = _ensemble_result(mbt_config, directory)
    if t < rounds:
      _pseudo_labels(mbt_config, directory)
  lines = [f"{name}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in means.items()
                                   if k.startswith("mIoU")) for name, means in results.items()]
  text = "FDA rounds (target validation):\n  " + "\n  ".join(lines) + "\n"
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  print(text, flush=True)
  return results


def _main() -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from seat_jax import cli, errors  # pylint: disable=g-import-not-at-top,multiple-imports

  workdir = flags.DEFINE_string("workdir", None, "Base folder of every round's runs.")
  rounds = flags.DEFINE_integer("rounds", 2, "Self-training rounds after T=0 (FDA: 2).",
                                lower_bound=0)
  betas = flags.DEFINE_list("betas", [str(b) for b in BETAS], "One model per beta.")
  members = flags.DEFINE_boolean("evaluate_members", True,
                                 "Also score each model alone (FDA's per-beta rows).")
  config_flag = config_flags.DEFINE_config_file(
      "config", None, "A stage-1 FDA preset, e.g. configs/gta.py:fda_b001.", lock_config=True)

  def main(argv):
    if len(argv) > 1:
      raise errors.UsageError(f"unexpected arguments {argv[1:]}.")
    if config_flag.value is None or not workdir.value:
      raise errors.UsageError("--config and --workdir are required, e.g. "
                              "--config=configs/gta.py:fda_b001 --workdir=runs/fda.")
    config = config_flag.value
    if not config.loss.get("robust_entropy_weight") and not config.data.fda_beta:
      raise errors.UsageError(
          "--config is not an FDA preset (data.fda_beta and loss.robust_entropy_weight are 0); "
          "use e.g. --config=configs/gta.py:fda_b001.")
    from seat_jax import config_validation  # pylint: disable=g-import-not-at-top
    config_validation.validate(config)
    try:
      beta_values = tuple(float(b) for b in betas.value)
    except ValueError:
      raise errors.UsageError(f"--betas={','.join(betas.value)}: give numbers, e.g. "
                              "--betas=0.01,0.05,0.09.") from None
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (clu's writers import it)
    tf.config.set_visible_devices([], "GPU")
    run_rounds(config, workdir.value, rounds.value, beta_values, members.value)

  return cli.run(main, configs=[config_flag])


if __name__ == "__main__":
  sys.exit(_main())
