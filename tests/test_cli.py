"""How commands end: a user's mistake as one `error:` block and an exit code, a bug with its
traceback."""

import pathlib
import sys

import pytest
from absl import flags
from ml_collections import config_flags

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


_CONFIG = config_flags.DEFINE_config_file("cli_test_config", None, "A config file for these tests.")


def test_config_overrides_apply_again_on_every_in_process_run():
  """Each run defines its `--<config>.<key>` flags from its own argv (not sys.argv) and removes
  them after, so a second run in the same process takes its own overrides."""
  config_file = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")
  seen = []
  for seed in (3, 4):
    argv = ["prog", f"--cli_test_config={config_file}", f"--cli_test_config.seed={seed}"]
    assert cli.run(lambda _: seen.append(_CONFIG.value.seed), argv, configs=[_CONFIG]) == 0
  assert seen == [3, 4]
  assert not [name for name in flags.FLAGS if name.startswith("cli_test_config.")]


class _RaisesWhenCollected:

  def __init__(self, message):
    self.message = message

  def __del__(self):
    raise RuntimeError(self.message)


def test_only_closed_event_loop_noise_is_dropped(monkeypatch):
  """orbax's late callbacks on a closed event loop (e.g. after a damaged checkpoint stopped a
  restore) print nothing under the error block; any other unraisable error still reaches the
  hook that prints it."""
  printed = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(str(u.exc_value)))

  def main(argv):
    _RaisesWhenCollected("Event loop is closed")  # collected at once: an unraisable error
    _RaisesWhenCollected("another problem")
    return 0

  assert cli.run(main, ["prog"]) == 0
  assert printed == ["another problem"]
