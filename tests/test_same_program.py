"""benchmarks/same_program.py: two presets train with the same program exactly when their
iterations differ in nothing XLA sees."""

import helpers


def _same_program():
  return helpers.load_script("benchmarks/same_program.py")


def test_a_seed_is_not_in_the_program_but_a_norm_mode_is(capsys):
  same_program = _same_program()
  seat = same_program.program_digest("configs/demo.py:seat")
  # The seed is data (the state's key), not the program.
  assert same_program.program_digest("configs/demo.py:seat", [("seed", 7)]) == seat
  # Shared BN has one set of statistics and affine where SEAT has two: another program.
  assert same_program.main(["configs/demo.py:seat", "configs/demo.py:shared"]) == 1
  assert "different programs" in capsys.readouterr().out
