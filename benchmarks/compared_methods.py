"""The compared methods end to end on synthetic_streets: the tables of benchmarks/RESULTS.md.

Every run is a `configs/demo.py` row (the demo's tiny model, 64x128 images, batch 4, 300 steps)
trained and then scored on the target validation split at its final step, so the methods compare
at equal training steps. Runs that start from another run (Toldo et al.'s adaptation stage from
its source-only stage) name it; they are trained in order.

  python benchmarks/compared_methods.py --workdir=runs/methods [--runs=dacs,dacs_seat]

Prints a markdown table (run, norms, mIoU, wall time) and writes it to <workdir>/results.md.
A run whose folder already exists resumes (and so is not retrained): delete it to start over.
"""

import argparse
import json
import pathlib
import sys
import time

# A run: (configs/demo.py row, config overrides, the run whose final checkpoint it starts from).
RUNS = {
    # Baselines at the same budget: AdaptSegNet's single-level adversary without / with SEAT
    # norms (what Differential treatment adds its losses to).
    "adaptsegnet_single": ("shared", {"adv.mode": "single"}, None),
    "seat_single": ("seat", {"adv.mode": "single"}, None),
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
}


def run(name: str, workdir: pathlib.Path, data_dir: str) -> dict:
  from seat_jax import presets, train  # pylint: disable=g-import-not-at-top,multiple-imports
  from seat_jax.recipes import parts  # pylint: disable=g-import-not-at-top
  row, overrides, start_from = RUNS[name]
  config = presets.demo_row(row)
  config.data.data_dir = data_dir
  config.train.eval_every = 0
  config.update_from_flattened_dict(overrides)
  if start_from:
    config.init_from = str(workdir / start_from)
  begin = time.time()
  train.train_and_evaluate(config, str(workdir / name))
  seconds = time.time() - begin
  final = parts.final_scores(config, workdir / name, source_stages=())
  return {"run": name, "norm_mode": config.model.norm_mode, "miou": 100 * final["miou"],
          "train_seconds": seconds}


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated names of RUNS")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir).absolute()
  data_dir = str(workdir / "tfds")
  from seat_jax import datasets  # pylint: disable=g-import-not-at-top
  for domain in ("source", "target"):
    datasets.prepare("synthetic_streets", data_dir, builder_config=domain)
  names = [n for n in args.runs.split(",") if n]
  unknown = sorted(set(names) - set(RUNS))
  if unknown:
    parser.error(f"unknown runs {unknown}; choose from {sorted(RUNS)}")
  results_file = workdir / "results.json"
  results = json.loads(results_file.read_text()) if results_file.exists() else {}
  for name in names:
    results[name] = run(name, workdir, data_dir)
    results_file.write_text(json.dumps(results, indent=2))
  lines = ["| run | norms | mIoU (%) | training (s) |", "|---|---|---:|---:|"]
  lines += [f"| {r['run']} | {r['norm_mode']} | {r['miou']:.1f} | {r['train_seconds']:.0f} |"
            for r in results.values()]
  table = "\n".join(lines)
  (workdir / "results.md").write_text(table + "\n")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
