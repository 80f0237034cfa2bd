"""`make demo`'s job end to end at a toy size: every run, the table and the panels."""

import json
import math
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import helpers

from seat_jax import checkpointing
from seat_jax import demo
from seat_jax import evaluate
from seat_jax import presets
from seat_jax import pseudo_labels
from seat_jax import train
from seat_jax import train_step

# Its module fixture trains once: one worker runs the module (`make test`: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_demo")


@pytest.fixture(scope="module")
def toy_demo(tmp_path_factory):
  """The whole demo at a toy size, and what it printed."""
  workdir = tmp_path_factory.mktemp("demo")
  capture = pytest.MonkeyPatch()
  printed = []
  capture.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
  try:
    # Batch 2 at 32x64: the same programs as tests/test_train.py, so compiles are shared.
    results = demo.run_demo(workdir, steps=2, size="32x64", batch_size=2)
  finally:
    capture.undo()
  return workdir, results, "\n".join(printed)


def test_demo_runs_end_to_end_and_writes_the_table_and_panels(toy_demo):
  tmp_path, results, out = toy_demo
  runs = ["pretrained init", "source only", "SAT", "SEAT", "SEAT + LS 3-4",
          "SEAT + LS 3-4 + self-training", "DACS + SEAT"]
  assert list(results) == runs
  table = (tmp_path / "results.md").read_text()
  header = next(line for line in table.splitlines() if line.startswith("| class"))
  assert header.split("|")[2:9] == [f" {run} " for run in runs]
  miou_row = next(line for line in table.splitlines() if "mIoU" in line)
  shown = [float(v) for v in re.findall(r"\d+\.\d", miou_row)]
  assert shown == [round(100 * results[run]["miou"], 1) for run in results]
  assert not any(math.isnan(v) for v in shown)
  assert "Target validation IoU" in out and "ETA" in out
  for run in ("source_only", "sat", "seat", "seat_layer_switch", "seat_stage2", "dacs_seat"):
    assert list((tmp_path / run / "eval").glob("eval_step_2/panels/*.png")), run
  assert list((tmp_path / "seat" / "pseudo_labels").glob("*.png"))
  # The paper's pipeline: pseudo-labels from SEAT with the layer switch.
  summary = json.loads((tmp_path / "seat" / "pseudo_labels" / "summary.json").read_text())
  assert summary["source_stages"] == [3, 4]
  switched = json.loads((tmp_path / "seat_layer_switch" / "eval" / "summary.json").read_text())
  assert switched["source_stages"] == [3, 4] and switched["checkpoints"].endswith("seat/checkpoints")


def test_every_run_and_stage_2_start_from_the_pretrained_init(toy_demo):
  """As the paper: every model starts from the pretrained weights, and stage 2 re-initialises
  to them (not to a random draw, not to the stage-1 model)."""
  workdir, _, out = toy_demo
  init = workdir / "pretrain"
  started = re.findall(r"initialised the segmenter from config.init_from=(\S+):", out)
  assert started == [str(init)] * 5  # source only, SAT, SEAT, stage 2, DACS + SEAT
  stage2 = presets.stage2(demo.run_config("seat", str(workdir / "tfds"), 2, "32x64", 2, str(init)))
  stage2.data.target.pseudo_label_dir = str(workdir / "seat" / "pseudo_labels")
  trainer = train_step.build_trainer(stage2)
  state, _, _ = train.initialise(trainer, workdir / "stage2_start", data=None)
  pretrained = checkpointing.restore_stored_model(init / "checkpoints", 2)
  for domain in ("source", "target"):
    np.testing.assert_array_equal(state.params["layer2"]["block0"]["bn1"][f"{domain}_scale"],
                                  pretrained["params"]["layer2"]["block0"]["bn1"]["scale"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["main_head"]),
               pretrained["params"]["main_head"])
  stage1 = checkpointing.restore_stored_model(workdir / "seat" / "checkpoints", 2)
  assert not np.array_equal(state.params["conv1"]["kernel"], stage1["params"]["conv1"]["kernel"])


def test_a_rerun_keeps_every_finished_part(toy_demo, monkeypatch):
  workdir, results, _ = toy_demo

  def refuse(*args, **kwargs):
    raise AssertionError("a finished part ran again")

  monkeypatch.setattr(train, "train_and_evaluate", refuse)
  monkeypatch.setattr(pseudo_labels, "generate", refuse)
  monkeypatch.setattr(evaluate, "evaluate_checkpoints", refuse)
  again = demo.run_demo(workdir, steps=2, size="32x64", batch_size=2)
  assert {k: v["miou"] for k, v in again.items()} == {k: v["miou"] for k, v in results.items()}


def test_the_demo_ends_with_a_segment_command_that_works(toy_demo):
  """The printed command, run as printed: the SEAT model on the demo's own target images."""
  workdir, _, out = toy_demo
  lines = [line.strip() for line in out.splitlines()
           if line.strip().startswith("python -m seat_jax.segment")]
  assert len(lines) == 1 and out.rstrip().endswith(lines[0])
  args = shlex.split(lines[0])
  assert f"--checkpoint={workdir / 'seat'}" in args and "--scale=64" in args  # trained at 32x64
  result = subprocess.run([sys.executable, *args[1:]], env=helpers.suite_env(),
                          cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  images = sorted((workdir / demo.SAMPLE_IMAGES_DIR).glob("*.png"))
  assert len(images) == demo.NUM_SAMPLE_IMAGES and (workdir / demo.SAMPLE_CLIP).is_file()
  assert f"Segmented {len(images)} images" in result.stdout
  for image in images:
    overlay = Image.open(workdir / "segmented" / f"{image.stem}_overlay.png")
    assert overlay.size == Image.open(image).size
