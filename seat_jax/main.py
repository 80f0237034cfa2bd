"""Command: `python -m seat_jax.main --config=configs/gta.py --workdir=DIR [--config.k=v]`.

Kept short on purpose: it parses flags, starts `jax.distributed` on multi-host launches and
hands the config to training, evaluation or pseudo-labelling (`--config.mode`).
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from seat_jax import cli
from seat_jax import errors

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and outputs go.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' does so when a multi-process launch is detected "
    "(JAX_COORDINATOR_ADDRESS, SLURM or Open MPI with more than one task).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A preset from configs/, e.g. configs/gta.py or configs/gta.py:seat.",
    lock_config=True)

_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _multi_process_launch() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return any(int(os.environ.get(k, "1") or 1) > 1 for k in _MULTI_PROCESS_ENV[1:])


def run(argv: list[str]) -> int:
  if len(argv) > 1:
    raise errors.UsageError(f"unexpected arguments {argv[1:]}; flags are --config, --workdir, "
                            "--config.<key>=<value>.")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise errors.UsageError("--config and --workdir are required, e.g. "
                            "--config=configs/gta.py --workdir=runs/gta_seat.")
  from seat_jax import config_validation  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  config_validation.validate(config)  # before anything slow: a typo fails in seconds
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and _multi_process_launch()):
    jax.distributed.initialize()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (clu's writers import it)
  tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take GPU memory from JAX.

  if config.mode == "train":
    from seat_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, _WORKDIR.value)
  elif config.mode == "eval":
    from seat_jax import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.evaluate_checkpoints(config, _WORKDIR.value)
  else:
    from seat_jax import pseudo_labels  # pylint: disable=g-import-not-at-top
    pseudo_labels.generate(config, _WORKDIR.value)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(run, configs=[_CONFIG]))
