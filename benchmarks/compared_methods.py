"""The compared methods end to end on synthetic_streets: the tables of benchmarks/RESULTS.md.

Every run is a `configs/demo.py` row (the demo's tiny model, 64x128 images, batch 4, 300 steps),
run through the same `--config.mode` as a user would (a training run, or a recipe: AdaBN,
IntraDA's two stages, FDA's rounds) and scored on the target validation split at its final step,
so the methods compare at equal training steps. Every run starts from the demo's pretrained init
(`pretrain`, trained first: the stand-in for the DeepLab weights of the paper), except the runs
that start from another run (Toldo et al.'s adaptation stage from its source-only stage) and
the tiny-MiT rows, which start from `mit_pretrain` (the stand-in for the ImageNet MiT).

  python benchmarks/compared_methods.py --workdir=runs/methods [--runs=dacs,dacs_seat] [--seed=2]

Prints a markdown table (run, norms, mIoU, wall time) and writes it to <workdir>/results.md.
A finished run is kept (delete its folder to start over); an interrupted one resumes.
"""

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's seat_jax, not an installed one

# A run: (configs/demo.py row, config overrides, the run whose final checkpoint it starts from;
# None: the pretrained init).
RUNS = {
    # Source only with shared BN / SEAT norms (the target slots never see a target image), and
    # AdaBN on each (their statistics re-estimated on the target train split).
    "source_only": ("shared", {"adv.mode": "none"}, None),
    "source_only_seat": ("seat", {"adv.mode": "none"}, None),
    "adabn": ("shared", {"adv.mode": "none", "mode": "adabn"}, None),
    "adabn_seat": ("seat", {"adv.mode": "none", "mode": "adabn"}, None),
    # AdaptSegNet's single-level adversary without / with SEAT norms (what Differential
    # treatment adds its losses to), and the multi-level SEAT of the demo.
    "adaptsegnet_single": ("shared", {"adv.mode": "single"}, None),
    "seat_single": ("seat", {"adv.mode": "single"}, None),
    "seat": ("seat", {}, None),
    # IntraDA (stage 1 = ADVENT's entropy adversary, stage 2 easy -> hard) and FDA's rounds
    # (three betas, their MBT, one self-training round).
    "intrada": ("intrada", {"mode": "intrada"}, None),
    "intrada_seat": ("intrada_seat", {"mode": "intrada"}, None),
    "fda": ("fda_b001", {"mode": "fda_rounds", "fda.rounds": 1}, None),
    "fda_seat": ("fda_b001_seat", {"mode": "fda_rounds", "fda.rounds": 1}, None),
    # Differential treatment and Toldo et al.
    "differential": ("differential", {}, None),
    "differential_seat": ("differential_seat", {}, None),
    "clustering_source": ("clustering_source", {}, None),
    "clustering": ("clustering", {}, "clustering_source"),
    "clustering_seat_source": ("clustering_seat_source", {}, None),
    "clustering_seat": ("clustering_seat", {}, "clustering_seat_source"),
    # Mixing-based self-training.
    "dacs": ("dacs", {}, None),
    "dacs_seat_norm_target": ("dacs_seat", {"mix.norm": "target"}, None),
    "dacs_seat_norm_source": ("dacs_seat", {"mix.norm": "source"}, None),
    "dacs_seat": ("dacs_seat", {}, None),  # mix.norm=batch, the default
    "dacs_seat_rcs": ("dacs_seat", {"data.source.rcs_temperature": 0.01,
                                    "data.source.rcs_min_pixels": 16}, None),
    "daformer_seat": ("daformer_seat", {}, None),
    "mic_seat": ("mic_seat", {}, None),
    "mic": ("mic", {}, None),
    # Whether MIC's masked pass moves the running target statistics (issue 22 item 5): the
    # shared-BN row follows MIC's code (on), the SEAT row keeps them to clean images (off).
    "mic_masked_stats_off": ("mic", {"mix.mic_update_stats": False}, None),
    "mic_seat_masked_stats_on": ("mic_seat", {"mix.mic_update_stats": True}, None),
    # DAFormer and MIC on a tiny MiT (SegFormer) from its own pretrained init: shared norms (the
    # reference), SAT and SEAT norms.
    "mit_source_only": ("mit_source_only", {}, "mit_pretrain"),
    "daformer_mit": ("daformer_mit", {}, "mit_pretrain"),
    "daformer_mit_sat": ("daformer_mit_sat", {}, "mit_pretrain"),
    "daformer_mit_seat": ("daformer_mit_seat", {}, "mit_pretrain"),
    "mic_mit": ("mic_mit", {}, "mit_pretrain"),
    "mic_mit_seat": ("mic_mit_seat", {}, "mit_pretrain"),
}
PRETRAIN = "pretrain"
# The pretrained inits (configs/demo.py rows trained with labels on the `pretrain` style): the
# DeepLab rows' and the MiT rows'.
PRETRAINS = (PRETRAIN, "mit_pretrain")


def pretrain(workdir: pathlib.Path, data_dir: str, row: str = PRETRAIN,
             seed: int | None = None) -> str:
  """A pretrained init (kept when already trained); returns its folder."""
  from seat_jax import presets  # pylint: disable=g-import-not-at-top
  from seat_jax.recipes import parts  # pylint: disable=g-import-not-at-top
  config = presets.demo_row(row)
  config.data.data_dir = data_dir
  config.train.eval_every = 0
  if seed is not None:
    config.seed = seed
  parts.train_part(f"Pretraining the init its runs start from ({row})", config, workdir / row)
  return str(workdir / row)


def run(name: str, workdir: pathlib.Path, data_dir: str, seed: int | None = None) -> list[dict]:
  """One entry of RUNS: a result row per score (a recipe scores several models)."""
  from seat_jax import presets, recipes  # pylint: disable=g-import-not-at-top,multiple-imports
  from seat_jax.recipes import parts  # pylint: disable=g-import-not-at-top
  row, overrides, start_from = RUNS[name]
  config = presets.demo_row(row)
  config.data.data_dir = data_dir
  config.train.eval_every = 0
  config.update_from_flattened_dict(overrides)
  if seed is not None:
    config.seed = seed
  config.init_from = str(workdir / (start_from or PRETRAIN))
  begin = time.time()
  result = recipes.run(config, str(workdir / name))
  seconds = time.time() - begin
  if config.mode == "train":
    result = {"": parts.final_scores(config, workdir / name, source_stages=())}
  return [{"run": f"{name} {sub}".strip(), "norm_mode": config.model.norm_mode,
           "miou": 100 * scores["miou"], "seconds": seconds}
          for sub, scores in result.items()]


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated names of RUNS")
  parser.add_argument("--seed", type=int, default=None,
                      help="config.seed of every run and pretrained init (default: the presets')")
  args = parser.parse_args(argv)
  names = [n for n in args.runs.split(",") if n]
  unknown = sorted(set(names) - set(RUNS))
  if unknown:
    parser.error(f"unknown runs {unknown}; choose from {sorted(RUNS)}")
  workdir = pathlib.Path(args.workdir).absolute()
  data_dir = str(workdir / "tfds")
  from seat_jax import datasets  # pylint: disable=g-import-not-at-top
  for domain in ("source", "target", PRETRAIN):
    datasets.prepare("synthetic_streets", data_dir, builder_config=domain)
  needed = {RUNS[n][2] if RUNS[n][2] in PRETRAINS else PRETRAIN for n in names}
  for row in PRETRAINS:
    if row in needed:
      pretrain(workdir, data_dir, row, args.seed)
  results_file = workdir / "results.json"
  results = json.loads(results_file.read_text()) if results_file.exists() else {}
  for name in names:
    results[name] = run(name, workdir, data_dir, args.seed)
    results_file.write_text(json.dumps(results, indent=2))
  lines = ["| run | norms | mIoU (%) | wall (s) |", "|---|---|---:|---:|"]
  lines += [f"| {r['run']} | {r['norm_mode']} | {r['miou']:.1f} | {r['seconds']:.0f} |"
            for rows in results.values() for r in rows]
  table = "\n".join(lines)
  (workdir / "results.md").write_text(table + "\n")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
