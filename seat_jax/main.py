"""Command: `python -m seat_jax.main --config=configs/gta.py --workdir=DIR [--config.k=v]`.

Kept short on purpose: it parses flags, starts `jax.distributed` on multi-process launches
(SLURM, Open MPI, or by hand with --coordinator_address, --num_processes and --process_id) and
hands the config to the part or recipe that `--config.mode` names (`seat_jax.recipes`).
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from seat_jax import cli
from seat_jax import cpu_malloc
from seat_jax import errors

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and outputs go.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' does so when a multi-process launch is detected "
    "(--coordinator_address, JAX_COORDINATOR_ADDRESS, SLURM or Open MPI with more than one "
    "task).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0, the same on every process (default: JAX_COORDINATOR_ADDRESS, or "
    "what SLURM / Open MPI provide).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (hand-launched runs; SLURM / Open MPI set it).",
    lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes); 0 hosts the coordinator.",
    lower_bound=0)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A preset from configs/, e.g. configs/gta.py or configs/gta.py:seat.",
    lock_config=True)

_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _multi_process_launch() -> bool:
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    return True
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return any(int(os.environ.get(k, "1") or 1) > 1 for k in _MULTI_PROCESS_ENV[1:])


def _start_distributed(jax) -> None:
  """jax.distributed.initialize() from the flags; what is not given, JAX detects (SLURM, MPI).

  On CPU the processes exchange gradients and batch-norm statistics through gloo, JAX's default
  `jax_cpu_collectives_implementation` (env JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi to change it).
  """
  try:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  except ValueError as e:  # JAX names the missing piece; say which flags provide it
    raise errors.UsageError(
        f"cannot start the multi-process run: {e}\nOutside SLURM / Open MPI, give every process "
        "--coordinator_address=HOST:PORT (process 0's machine), --num_processes=N and its own "
        "--process_id=0..N-1 (docs/multi-host.md).") from None


def run(argv: list[str]) -> int:
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; flags are --config, --workdir, "
                            "--config.<key>=<value>.")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise errors.UsageError("--config and --workdir are required, e.g. "
                            "--config=configs/gta.py --workdir=runs/gta_seat.")
  from seat_jax import config_validation  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  config_validation.clear_training_placeholders(config)  # stage-2 presets in eval mode
  config_validation.validate(config)  # before anything slow: a typo fails in seconds
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and _multi_process_launch()):
    _start_distributed(jax)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (clu's writers import it)
  tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take GPU memory from JAX.

  from seat_jax import recipes  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  recipes.run(config, _WORKDIR.value)
  return 0


def main(argv: list[str] | None = None) -> int:
  """The command; `argv` without the program name (default sys.argv[1:]). Returns the exit code."""
  argv = sys.argv[1:] if argv is None else argv
  return cli.run(run, ["main", *argv], configs=[_CONFIG])


if __name__ == "__main__":
  cpu_malloc.restart_with_tuned_malloc()
  sys.exit(main())
