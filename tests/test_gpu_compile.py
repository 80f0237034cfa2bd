"""benchmarks/gpu_compile.py on the tiny demo: an XLA:GPU compile with no GPU, so the script cannot rot.

Needs the CUDA plugin (`pip install -e '.[gpu-compile]'`: jax-cuda12-plugin, jax-cuda12-pjrt and
nvidia-cuda-nvcc-cu12 for ptxas); skipped without it. No GPU or CUDA driver is used.
"""

import importlib.util
import json

import pytest

import helpers

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax_plugins") is None
    or importlib.util.find_spec("jax_plugins.xla_cuda12") is None,
    reason="the CUDA plugin (jax-cuda12-plugin) is not installed: pip install -e '.[gpu-compile]' "
           "to compile for a GPU without one")


def _gpu_compile():
  return helpers.load_script("benchmarks/gpu_compile.py")


def test_demo_iteration_and_evaluation_compile_for_an_h100_and_report_memory(tmp_path, capsys):
  gpu_compile = _gpu_compile()
  out = tmp_path / "rows.json"
  assert gpu_compile.main(["--presets=configs/demo.py:seat", "--cards=h100_sxm",
                           "--dtypes=float32", "--remats=none", "--max_batch=1", "--no-isolate",
                           f"--json={out}"]) == 0
  rows = {r["part"]: r for r in json.loads(out.read_text())}
  assert set(rows) == {"train", "eval"}
  train, evaluation = rows["train"], rows["eval"]
  assert not train["error"] and not evaluation["error"], (train, evaluation)
  # The demo segmenter (about 0.1 M parameters, batch 4 + 4 at 64x128): tens of MiB, not GiB.
  assert 0.005 < train["peak_gib"] < 1.0, train
  assert 0 < evaluation["peak_gib"] < train["peak_gib"], evaluation
  assert train["tflop"] > 0 and train["ms_at_mfu"] > 0 and train["kernels"] > 10
  assert train["fits"]["80"] == 4  # the preset's batch fits; --max_batch=1: no search
  table = capsys.readouterr().out
  assert "| demo.py:seat | H100 SXM 80GB | train | float32 | none | 64x128 + 64x128 | 4 |" in table


def test_every_shipped_card_description_parses_as_a_gpu_topology():
  gpu_compile = _gpu_compile()
  for card in gpu_compile.CARDS:
    devices = gpu_compile.gpu_devices(card)
    assert len(devices) == 1 and devices[0].platform in ("cuda", "gpu"), (card, devices)
