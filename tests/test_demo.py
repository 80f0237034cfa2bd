"""`make demo`'s job end to end at a toy size: all four runs, the table and the panels."""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end_and_writes_the_table_and_panels(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "seat_jax.demo", f"--workdir={tmp_path}", "--steps=2",
       "--size=32x64"], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  table = (tmp_path / "results.md").read_text()
  header = next(line for line in table.splitlines() if line.startswith("| class"))
  assert header.split("|")[2:6] == [" source only ", " SAT ", " SEAT ", " SEAT + self-training "]
  miou_row = next(line for line in table.splitlines() if "mIoU" in line)
  assert len(re.findall(r"\d+\.\d", miou_row)) == 4
  assert "Target validation IoU" in result.stdout and "ETA" in result.stdout
  for run in ("source_only", "sat", "seat", "seat_stage2"):
    assert list((tmp_path / run / "eval").glob("eval_step_2/panels/*.png")), run
  assert list((tmp_path / "seat" / "pseudo_labels").glob("*.png"))
