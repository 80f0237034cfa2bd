"""How every seat_jax command parses its absl flags and ends on a user's mistake.

Each command (`main`, `convert`, `prepare_data`, `demo`) defines absl flags and hands its main
function to `run`. A user's mistake ends the command with one `error:` block on stderr and a
non-zero exit code, never with a traceback: an unknown flag or config key, an invalid choice
(exit code 2), a missing or unusable file, dataset or checkpoint (exit code 1; see
`seat_jax.errors`). Any other exception is a bug and keeps its traceback.
"""

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence

import ml_collections
from absl import app
from absl import flags
from absl import logging

from seat_jax import errors


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *,
        configs: Sequence[flags.FlagHolder] = ()) -> int:
  """Parses `argv` (default sys.argv) into absl's FLAGS, runs `main(positional)`; the exit code.

  `configs` are the command's ml_collections config-file flags. Callable in-process (tests):
  FLAGS are reset to their defaults afterwards.
  """
  argv = list(sys.argv if argv is None else argv)
  app.define_help_flags()  # --help, --helpfull (they print usage and exit themselves)
  _quiet_closed_event_loop_callbacks()
  saved_argv, sys.argv = sys.argv, argv  # config flags read their overrides from sys.argv
  try:
    try:
      positional = _parse(argv, configs)
    except errors.UserError as e:
      report(e)
      return e.exit_code
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if flags.FLAGS["verbosity"].using_default_value:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    try:
      return int(main(positional) or 0)
    except errors.UserError as e:
      report(e)
      return e.exit_code
  finally:
    sys.argv = saved_argv
    flags.FLAGS.unparse_flags()
    _forget_overrides(configs)


def _forget_overrides(configs: Sequence[flags.FlagHolder]) -> None:
  """Removes the `--<config>.<key>` flags a parse defined, so the next in-process run may
  define them again."""
  for holder in configs:
    for name in [n for n in flags.FLAGS if n.startswith(holder.name + ".")]:
      delattr(flags.FLAGS, name)


def _quiet_closed_event_loop_callbacks() -> None:
  """Drops one known piece of noise: orbax's tensorstore callbacks that arrive after the event
  loop of their restore or save closed (a restore stopped by a damaged checkpoint, or threads
  finishing at exit) raise RuntimeError('Event loop is closed') in a thread, which Python prints
  as an "Exception ignored" traceback under the command's own `error:` block. Any other
  unraisable exception is printed as before."""
  if getattr(sys.unraisablehook, "seat_jax_quiet", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if (isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"):
      return
    previous(unraisable)

  hook.seat_jax_quiet = True
  sys.unraisablehook = hook


def report(error: BaseException) -> None:
  """Prints the error's message as one block: `error: <first line>` and the rest indented."""
  lines = str(error).strip().splitlines() or [type(error).__name__]
  print("error: " + "\n  ".join(line.rstrip() for line in lines), file=sys.stderr, flush=True)


def _parse(argv: list[str], configs: Sequence[flags.FlagHolder]) -> list[str]:
  try:
    positional = flags.FLAGS(argv)
  except flags.Error as e:  # unknown flag, missing required flag, unparsable value
    # A config file that raises while loading (an unknown preset row) surfaces here wrapped
    # with its traceback: show the file's own message instead.
    for holder in configs:
      spec = _flag_value(argv, holder.name)
      if spec is not None and "Error whilst parsing config file" in str(e):
        raise errors.UsageError(_explain_config_file_error(argv, holder.name)) from None
    raise errors.UsageError(f"{e}\nSee: {os.path.basename(argv[0])} --help") from None
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # ml_collections raises these while applying `--config.<key>=<value>` overrides.
    raise errors.UsageError(_explain_config_flag_error(argv, e)) from None
  for holder in configs:
    # ml_collections defers a config file's load error until the config is first read.
    if holder.value is not None and not isinstance(holder.value, ml_collections.ConfigDict):
      raise errors.UsageError(_explain_config_file_error(argv, holder.name))
  return positional


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  return next((a.split("=", 1)[1] for a in argv if re.match(rf"^--?{name}=", a)), None)


def _explain_config_file_error(argv: Sequence[str], name: str) -> str:
  spec = _flag_value(argv, name)
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    presets = sorted(p for p in os.listdir("configs") if p.endswith(".py")) if os.path.isdir(
        "configs") else []
    return (f"--{name}={spec}: no such file (working directory {os.getcwd()})."
            + (f"\nPresets in configs/: {', '.join(presets)}" if presets else ""))
  try:
    load_config_file(spec)
  except errors.UserError as e:  # e.g. an unknown preset row: its message is the whole story
    return str(e)
  except Exception as e:  # pylint: disable=broad-except  (the user's config file)
    return f"--{name}={spec} cannot be loaded: {type(e).__name__}: {e}"
  return f"--{name}={spec} cannot be loaded."


def _explain_config_flag_error(argv: Sequence[str], error: Exception) -> str:
  """A message that names the bad override and lists the keys that exist there."""
  config_arg = next((a for a in argv if re.match(r"^--?config=", a)), None)
  overrides = [a for a in argv if re.match(r"^--?(no)?config\.", a)]
  if config_arg is None:
    return f"cannot parse the config flags: {error}"
  spec = config_arg.split("=", 1)[1]
  try:
    config = load_config_file(spec)
  except Exception as load_error:  # pylint: disable=broad-except  (shown to the user)
    return f"cannot load --config={spec}: {load_error}"
  for override in overrides:
    path = override.split("=", 1)[0].split(".", 1)[1]
    missing = _first_missing_key(config, path.split("."))
    if missing is not None:
      parent, name, keys = missing
      where = f"config.{parent}" if parent else "the config"
      return (f"{override}: {where} has no key {name!r}.\n"
              f"Keys of {where}: {', '.join(sorted(keys))}")
  return f"cannot apply {overrides} to --config={spec}: {type(error).__name__}: {error}"


def _first_missing_key(config, parts: list[str]):
  """(parent path, missing name, keys of the parent) for the first key of `parts` not there."""
  node, walked = config, []
  for part in parts:
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      return ".".join(walked), part, keys
    node = node[part]
    walked.append(part)
  return None


def load_config_file(spec: str):
  """The ConfigDict of `path[:variant]` (a configs/*.py file), as --config would load it."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise errors.MissingInputError(f"config file {path} does not exist (cwd {os.getcwd()}).")
  module_spec = importlib.util.spec_from_file_location("_seat_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()
