"""Errors a user can fix: the message is the whole story, so commands print it without a traceback.

Every exception the program raises for a user's mistake (a config value, a missing or wrong file,
an unprepared dataset, a checkpoint of another model) derives from `UserError`; `seat_jax.cli`
prints it as one `error:` block and exits non-zero. Anything else is a bug and keeps its traceback.
The builtin base (FileNotFoundError, ValueError) stays in each class so callers that catch those
keep working.
"""


class UserError(Exception):
  """A mistake in what the user gave the program; the message says what to change."""

  # 2: the command line or config is wrong (as argparse's usage errors); 1: the run stopped on
  # its input or its own outcome (a corrupt file, a NaN loss).
  exit_code = 1


class UsageError(UserError, ValueError):
  """A flag, config key or config value that cannot be used as given."""
  exit_code = 2


class MissingInputError(UserError, FileNotFoundError):
  """A file, folder, checkpoint or prepared dataset that the run needs does not exist."""


class InvalidInputError(UserError, ValueError):
  """A file or checkpoint that exists but cannot be used (corrupt, another model, other sizes)."""
