"""`make demo`'s job end to end at a toy size: every run, the table and the panels."""

import json
import math
import re

from seat_jax import demo


def test_demo_runs_end_to_end_and_writes_the_table_and_panels(tmp_path, capsys):
  # Batch 2 at 32x64: the same programs as tests/test_train.py, so compiles are shared.
  results = demo.run_demo(tmp_path, steps=2, size="32x64", batch_size=2)
  runs = ["source only", "SAT", "SEAT", "SEAT + LS 3-4", "SEAT + LS 3-4 + self-training",
          "DACS + SEAT"]
  assert list(results) == runs
  table = (tmp_path / "results.md").read_text()
  header = next(line for line in table.splitlines() if line.startswith("| class"))
  assert header.split("|")[2:8] == [f" {run} " for run in runs]
  miou_row = next(line for line in table.splitlines() if "mIoU" in line)
  shown = [float(v) for v in re.findall(r"\d+\.\d", miou_row)]
  assert shown == [round(100 * results[run]["miou"], 1) for run in results]
  assert not any(math.isnan(v) for v in shown)
  out = capsys.readouterr().out
  assert "Target validation IoU" in out and "ETA" in out
  for run in ("source_only", "sat", "seat", "seat_layer_switch", "seat_stage2", "dacs_seat"):
    assert list((tmp_path / run / "eval").glob("eval_step_2/panels/*.png")), run
  assert list((tmp_path / "seat" / "pseudo_labels").glob("*.png"))
  # The paper's pipeline: pseudo-labels from SEAT with the layer switch.
  summary = json.loads((tmp_path / "seat" / "pseudo_labels" / "summary.json").read_text())
  assert summary["source_stages"] == [3, 4]
  switched = json.loads((tmp_path / "seat_layer_switch" / "eval" / "summary.json").read_text())
  assert switched["source_stages"] == [3, 4] and switched["checkpoints"].endswith("seat/checkpoints")
