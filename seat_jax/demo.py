"""`make demo`: SEAT adapting a tiny segmenter to the built-in synthetic domain shift.

As the paper's models start from DeepLab weights pretrained elsewhere, the demo first trains its
tiny DeepLabV2 once on a third rendering of the scenes (`pretrain`, neither source nor target;
cached in --workdir and reused), and every run below starts from that init. It then trains the
model three ways with the same budget on `synthetic_streets` (source: flat game-like renderings;
target: another palette, lighting, noise and blur):
  source only  plain (shared) BN, no adversary, target never seen;
  SAT          per-domain BN statistics, shared affine, multi-level adversarial training;
  SEAT         per-domain statistics and affine, multi-level adversarial training;
evaluates SEAT also with the paper's layer switch (stages 3-4 use the source norms, as the GTA5
preset), then stage 2 (self-training, re-initialised to the pretrained init, on pseudo-labels
from SEAT with the layer switch, evaluated with it too, as in the paper's pipeline), then DACS
with SEAT norms (mixing-based self-training with an EMA teacher, the best mixing variant on this
shift; benchmarks/RESULTS.md), and prints one table of target validation IoU, the pretrained
init's own score first. Everything lands in --workdir; a rerun keeps every finished part
(`seat_jax.recipes.parts`) and resumes a training that stopped half-way. Last, it copies a few
target validation images to <workdir>/target_images (and, with PyAV installed, a short clip of
them to <workdir>/target_clip.mp4) and prints the `python -m seat_jax.segment` command that
segments them with the SEAT model (docs: "Use a trained model").
"""

import os
import shlex
import sys

from absl import flags
from etils import epath

from seat_jax import cli
from seat_jax import cpu_malloc

_WORKDIR = flags.DEFINE_string("workdir", "demo_workdir", "Where all runs and the table go.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the demo preset).")
_SIZE = flags.DEFINE_string("size", "",
                            "Override resize as HxW for a quicker smoke run, e.g. 32x64.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of every run (default: the presets' 1234); the "
                             "spread across seeds is in the docs' demo table.")

RUNS = (("source only", "source_only", "shared"), ("SAT", "sat", "sat"),
        ("SEAT", "seat", "seat"))
# The init every run starts from: (title, run name, configs/demo.py row).
PRETRAIN_RUN = ("pretrained init", "pretrain", "pretrain")
# After the paper's pipeline: (title, run name, configs/demo.py row).
MIXING_RUN = ("DACS + SEAT", "dacs_seat", "dacs_seat")


def run_config(row: str, data_dir: str, steps: int | None, size: str,
               batch_size: int | None = None, init_from: str = "", seed: int | None = None):
  """A configs/demo.py row (a norm mode or a method's row) with the demo's overrides, starting
  from `init_from` (the pretrained init's workdir)."""
  from seat_jax import presets  # pylint: disable=g-import-not-at-top
  config = presets.demo_row(row)
  config.data.data_dir = data_dir
  config.init_from = init_from
  if seed is not None:
    config.seed = seed
  if batch_size:
    config.train.batch_size = batch_size
  if steps:
    config.train.num_steps = steps
    config.train.lr_horizon_steps = steps
    config.train.checkpoint_every = steps
    config.train.eval_every = 0
  if size:
    hw = tuple(int(v) for v in size.lower().split("x"))
    for split in (config.data.source, config.data.target, config.data.val):
      split.resize_hw = hw
    config.data.source.crop_hw = hw
  return config


# What the demo's last step hands to `python -m seat_jax.segment`.
SAMPLE_IMAGES_DIR = "target_images"
SAMPLE_CLIP = "target_clip.mp4"
NUM_SAMPLE_IMAGES = 4
CLIP_FRAMES = 8


def write_target_samples(workdir, data_dir: str, count: int = NUM_SAMPLE_IMAGES) -> list[str]:
  """Copies the first `count` target validation images to <workdir>/target_images/<id>.png and,
  when PyAV is installed, the first CLIP_FRAMES of them as a 4 frames/s H.264 clip to
  <workdir>/target_clip.mp4 (the documentation's video example). Returns the files written."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from seat_jax import datasets, presets, predict  # pylint: disable=g-import-not-at-top,multiple-imports
  from seat_jax import errors, segment  # pylint: disable=g-import-not-at-top,multiple-imports
  val = presets.demo_row("seat").data.val
  source = datasets.open_data_source(val, data_dir)
  folder = os.path.join(os.fspath(workdir), SAMPLE_IMAGES_DIR)
  os.makedirs(folder, exist_ok=True)
  images, written = [], []
  for index in range(min(max(count, CLIP_FRAMES), len(source))):
    example = source[index]
    images.append(np.asarray(example["image"], np.uint8))
    if index < count:
      path = os.path.join(folder, f"{predict.example_id(example, index)}.png")
      Image.fromarray(images[-1]).save(path)
      written.append(path)
  try:
    segment.import_av()
  except errors.UsageError:
    return written  # no PyAV: images only
  clip = segment.VideoWriter(os.path.join(os.fspath(workdir), SAMPLE_CLIP), 4, images[0].shape[:2])
  for image in images[:CLIP_FRAMES]:
    clip.write(image)
  clip.close()
  return written + [os.path.join(os.fspath(workdir), SAMPLE_CLIP)]


def segment_command(workdir, size: str = "") -> str:
  """The command that segments the demo's target images with its SEAT model.

  configs/demo.py by its path relative to the working directory when the demo runs from the
  repository (as `make demo` does), else by its absolute path next to the package.
  """
  config = os.path.join("configs", "demo.py")
  if not os.path.isfile(config):
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), config)
  workdir = os.fspath(workdir)
  parts = ["python", "-m", "seat_jax.segment", f"--config={config}",
           f"--checkpoint={os.path.join(workdir, 'seat')}"]
  if size:  # the model was trained at this size instead of the preset's
    parts.append(f"--scale={size.lower().split('x')[1]}")
  parts += [f"--out={os.path.join(workdir, 'segmented')}",
            os.path.join(workdir, SAMPLE_IMAGES_DIR)]
  return " ".join(shlex.quote(p) for p in parts)


def results_table(results: dict[str, dict]) -> str:
  """Markdown: per-class IoU (%) of every run side by side, mIoU last."""
  from seat_jax import labels, reports  # pylint: disable=g-import-not-at-top,multiple-imports
  return reports.comparison_markdown(results, labels.get_label_space("cityscapes19"))


def run_demo(workdir, steps: int | None = None, size: str = "",
             batch_size: int | None = None, seed: int | None = None) -> dict[str, dict]:
  """Runs the whole demo in `workdir`; returns the final evaluation of every run by title."""
  # pylint: disable-next=g-import-not-at-top,multiple-imports
  from seat_jax import datasets, progress, pseudo_labels, presets
  from seat_jax.recipes import parts

  workdir = epath.Path(workdir).absolute()
  data_dir = str(workdir / "tfds")
  init = str(workdir / PRETRAIN_RUN[1])
  make_config = lambda row: run_config(  # noqa: E731
      row, data_dir, steps, size, batch_size, init, seed)
  switch = presets.GTA_LAYER_SWITCH
  ls_name = f"LS {switch[0]}-{switch[-1]}"
  # The stages and their rough shares of the demo's time, for the demo-wide ETA.
  weights = [2, 9, 10, 10, 10, 1, 3, 10, 1, 14]
  stages = iter(range(len(weights)))
  clock = progress.Progress("demo", sum(weights), unit="work units", every_secs=0.0)
  clock(0)

  def begin(title: str) -> None:
    stage = next(stages)
    clock(sum(weights[:stage]))
    print(f"\n=== [{stage + 1}/{len(weights)}] {title} ===", flush=True)

  begin("Generating synthetic_streets (source, target and pretrain renderings)")
  for domain in ("source", "target", "pretrain"):
    datasets.prepare("synthetic_streets", data_dir, builder_config=domain)

  title, name, row = PRETRAIN_RUN
  begin(f"Pretraining the init every run starts from ({workdir / name}; reused when present)")
  pretrain = run_config(row, data_dir, steps, size, batch_size, seed=seed)
  parts.train_part("Pretraining", pretrain, init)
  results, configs = {}, {}
  results[title] = parts.eval_part("The init on the target", make_config("shared"), init,
                                   source_stages=())

  for title, name, norm_mode in RUNS:
    begin(f"Training {title} ({norm_mode} norm)")
    configs[name] = make_config(norm_mode)
    parts.train_part(title, configs[name], workdir / name)
    results[title] = parts.eval_part(title, configs[name], workdir / name, source_stages=())

  begin(f"Evaluating SEAT with the layer switch ({ls_name}: source norms in those stages)")
  results[f"SEAT + {ls_name}"] = parts.eval_part(
      f"SEAT + {ls_name}", configs["seat"], workdir / "seat",
      out_dir=workdir / "seat_layer_switch", source_stages=switch)

  begin(f"Pseudo-labels from the SEAT model with {ls_name} on the target train split")
  # BDL's per-class median (capped at 0.9) rather than the paper's global 0.9: a 300-step tiny
  # model is rarely 90% sure of small classes, and the global rule drops them (person: 23.5 IoU
  # in stage 1 -> 0.0 after stage 2 when measured with the global rule).
  configs["seat"].pseudo.rule = "class_quantile"
  configs["seat"].eval.source_stages = switch
  parts.run_part("pseudo_labels", "Pseudo-labels", workdir / "seat",
                 lambda d: pseudo_labels.generate(configs["seat"], str(d)))

  begin("Stage 2: SEAT re-initialised to the init, trained on source labels + target "
        "pseudo-labels")
  stage2 = presets.stage2(make_config("seat"))  # init_from: the pretrained init
  stage2.eval.source_stages = switch  # its periodic evaluation, like the final one
  stage2.data.target.pseudo_label_dir = str(workdir / "seat" / "pseudo_labels")
  parts.train_part("Stage 2", stage2, workdir / "seat_stage2")
  begin(f"Evaluating stage 2 with {ls_name}")
  results[f"SEAT + {ls_name} + self-training"] = parts.eval_part(
      "Stage 2", stage2, workdir / "seat_stage2", source_stages=switch)

  title, name, row = MIXING_RUN
  begin(f"Training {title} (ClassMix with an EMA teacher, mixed images in their own batch norm)")
  configs[name] = make_config(row)
  parts.train_part(title, configs[name], workdir / name)
  results[title] = parts.eval_part(title, configs[name], workdir / name, source_stages=())

  table = results_table(results)
  (workdir / "results.md").write_text(
      "Target (synthetic_streets/target validation) IoU %, same training budget per run.\n\n"
      + table)
  print("\nTarget validation IoU (%) — synthetic_streets source -> target\n")
  print(table)
  print(f"Table: {workdir / 'results.md'}; panels (input | ground truth | prediction): "
        f"{workdir}/<run>/eval/eval_step_*/panels/")
  write_target_samples(workdir, data_dir)
  print(f"\nSegment your own images or videos with a trained model (docs/use-a-model.md); the "
        f"SEAT model on {NUM_SAMPLE_IMAGES} of the target images in "
        f"{workdir / SAMPLE_IMAGES_DIR}:\n  {segment_command(workdir, size)}")
  return results


def run(argv: list[str]) -> int:
  del argv
  run_demo(_WORKDIR.value, _STEPS.value, _SIZE.value, seed=_SEED.value)
  return 0


if __name__ == "__main__":
  cpu_malloc.restart_with_tuned_malloc()
  sys.exit(cli.run(run))
