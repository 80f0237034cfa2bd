"""`make demo`'s job end to end at a toy size: all four runs, the table and the panels."""

import math
import re

from seat_jax import demo


def test_demo_runs_end_to_end_and_writes_the_table_and_panels(tmp_path, capsys):
  # Batch 2 at 32x64: the same programs as tests/test_train.py, so compiles are shared.
  results = demo.run_demo(tmp_path, steps=2, size="32x64", batch_size=2)
  assert list(results) == ["source only", "SAT", "SEAT", "SEAT + self-training"]
  table = (tmp_path / "results.md").read_text()
  header = next(line for line in table.splitlines() if line.startswith("| class"))
  assert header.split("|")[2:6] == [" source only ", " SAT ", " SEAT ", " SEAT + self-training "]
  miou_row = next(line for line in table.splitlines() if "mIoU" in line)
  shown = [float(v) for v in re.findall(r"\d+\.\d", miou_row)]
  assert shown == [round(100 * results[run]["miou"], 1) for run in results]
  assert not any(math.isnan(v) for v in shown)
  out = capsys.readouterr().out
  assert "Target validation IoU" in out and "ETA" in out
  for run in ("source_only", "sat", "seat", "seat_stage2"):
    assert list((tmp_path / run / "eval").glob("eval_step_2/panels/*.png")), run
  assert list((tmp_path / "seat" / "pseudo_labels").glob("*.png"))
