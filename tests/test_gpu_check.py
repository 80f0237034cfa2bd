"""benchmarks/gpu_check.py in its CPU smoke mode, so the GPU check is ready when a GPU is lent."""

import json

import helpers


def test_gpu_check_smoke_measures_every_part_and_prints_the_table(tmp_path, capsys):
  gpu_check = helpers.load_script("benchmarks/gpu_check.py")
  assert gpu_check.main(["--smoke", f"--json={tmp_path / 'check.json'}"]) == 0
  rows = json.loads((tmp_path / "check.json").read_text())["rows"]
  assert [r["part"] for r in rows] == ["iteration", "torch", "pipeline", "eval"]
  assert not [r for r in rows if "failed" in r or "skipped" in r], rows
  iteration, torch_row, pipeline, evaluation = rows
  assert iteration["finite"] and iteration["tflop"] > 0 and iteration["xla_peak_gib"] > 0
  assert torch_row["it_per_s"] > 0 and evaluation["images_per_s"] > 0
  assert pipeline["pairs_per_s"] > 0 and pipeline["max_diff_vs_host"] <= 1.001
  out = capsys.readouterr().out
  assert "| JAX iteration, float32, remat blocks |" in out
  assert "JAX / PyTorch speed" in out and "| input pipeline," in out
