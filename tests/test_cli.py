"""How commands end: a user's mistake as one `error:` block and an exit code, a bug with its
traceback."""

import pytest

from seat_jax import cli
from seat_jax import errors


def test_user_error_is_printed_as_one_error_block_with_its_exit_code(capsys):
  def main(argv):
    raise errors.MissingInputError("No checkpoint in /runs/x.\nTrain first.")

  assert cli.run(main, ["prog"]) == 1
  err = capsys.readouterr().err
  assert err == "error: No checkpoint in /runs/x.\n  Train first.\n"

  def usage(argv):
    raise errors.UsageError("bad flag")

  assert cli.run(usage, ["prog"]) == 2


def test_a_bug_keeps_its_traceback():
  def main(argv):
    raise KeyError("a bug in the program")

  with pytest.raises(KeyError, match="a bug in the program"):
    cli.run(main, ["prog"])


def test_unknown_flag_is_a_usage_error(capsys):
  assert cli.run(lambda argv: 0, ["prog", "--no_such_flag=1"]) == 2
  assert capsys.readouterr().err.startswith("error: Unknown command line flag 'no_such_flag'")


def test_positional_arguments_reach_main():
  seen = []
  assert cli.run(lambda argv: seen.append(argv) or 3, ["prog", "gta5"]) == 3
  assert seen == [["prog", "gta5"]]
