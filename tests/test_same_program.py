"""benchmarks/same_program.py: two presets train with the same program exactly when their
iterations differ in nothing XLA sees."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _same_program():
  spec = importlib.util.spec_from_file_location("same_program",
                                                REPO / "benchmarks" / "same_program.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_seed_is_not_in_the_program_but_a_norm_mode_is(capsys):
  same_program = _same_program()
  seat = same_program.program_digest("configs/demo.py:seat")
  # The seed is data (the state's key), not the program.
  assert same_program.program_digest("configs/demo.py:seat", [("seed", 7)]) == seat
  # Shared BN has one set of statistics and affine where SEAT has two: another program.
  assert same_program.main(["configs/demo.py:seat", "configs/demo.py:shared"]) == 1
  assert "different programs" in capsys.readouterr().out
