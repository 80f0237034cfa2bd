"""Nothing is lost: SIGKILL at any moment, config.resume and config.init_from.

A real training process is killed with a real SIGKILL, once between checkpoints and once while
orbax is writing a checkpoint; rerunning the same command must resume from the last complete
checkpoint and end bit-identical to a run that was never interrupted.
"""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import helpers
from seat_jax import checkpointing
from seat_jax import train
from seat_jax import train_step

# Its module fixture trains once: one worker runs the module (`make test`: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_resume")

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 6

# The training command the killed processes run: the same config as `_config` below.
_SCRIPT = r"""
import sys
import jax
jax.config.update("jax_disable_most_optimizations", True)  # as tests/conftest.py
sys.path.insert(0, sys.argv[3])
import helpers
from seat_jax import train
config = helpers.tiny_train_config(sys.argv[1], int(sys.argv[4]))
train.train_and_evaluate(config, sys.argv[2])
"""


def config(data_dir, num_steps=NUM_STEPS):
  return helpers.tiny_train_config(data_dir, num_steps)


def _model_variables(workdir, step=None):
  abstract = train_step.abstract_state(train_step.build_trainer(config(""))).model_variables()
  return checkpointing.restore_model(pathlib.Path(workdir) / "checkpoints", abstract, step)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  metrics = train.train_and_evaluate(config(synthetic_data_dir), str(workdir))
  return workdir, metrics


def _start(data_dir, workdir):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  process = subprocess.Popen(
      [sys.executable, "-c", _SCRIPT, data_dir, str(workdir), str(REPO / "tests"), str(NUM_STEPS)],
      cwd=REPO,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
  return process, lines


def _kill_when(process, lines, ready, what: str, timeout: float = 400.0):
  """SIGKILLs `process` as soon as ready() holds (polled every 0.5 ms); returns what it saw."""
  deadline = time.monotonic() + timeout
  while process.poll() is None and time.monotonic() < deadline:
    seen = ready()
    if seen:
      os.kill(process.pid, signal.SIGKILL)
      process.wait()
      return seen
    time.sleep(0.0005)
  process.kill()
  pytest.fail(f"the training process ended before {what}:\n" + "".join(lines[-30:]))


def _tmp_checkpoints(directory: pathlib.Path):
  """Steps >= 4 that orbax is writing right now (its temporary folders)."""
  names = os.listdir(directory) if directory.is_dir() else []
  return [n for n in names if "tmp" in n and int(n.split(".")[0]) >= 4]


def test_sigkill_between_and_during_checkpoints_then_rerun_matches(uninterrupted,
                                                                   synthetic_data_dir, tmp_path):
  reference_dir, reference_metrics = uninterrupted
  checkpoints = tmp_path / "checkpoints"

  # 1. Killed between checkpoints: while step 3 is being computed (step 2 saved).
  process, lines = _start(synthetic_data_dir, tmp_path)
  _kill_when(process, lines, lambda: any(l.startswith("step 3/") for l in lines), "step 3")
  assert process.returncode == -signal.SIGKILL
  assert checkpointing.list_steps(checkpoints) == [2]

  # 2. Rerun, killed while orbax writes a checkpoint (its temporary folder exists).
  process, lines = _start(synthetic_data_dir, tmp_path)
  in_flight = _kill_when(process, lines, lambda: _tmp_checkpoints(checkpoints),
                         "a checkpoint write")
  assert any("resumed from" in line and "at step 2" in line for line in lines)
  complete = checkpointing.list_steps(checkpoints)
  assert complete and max(complete) < int(in_flight[0].split(".")[0])  # the torn one is not listed

  # 3. Rerun to the end: it resumes from the last complete checkpoint and matches exactly.
  metrics = train.train_and_evaluate(config(synthetic_data_dir), str(tmp_path))
  assert metrics == reference_metrics
  assert checkpointing.list_steps(checkpoints) == [2, 4, 6]
  _assert_same(_model_variables(tmp_path), _model_variables(reference_dir))


def test_config_resume_from_a_step_folder_of_another_workdir(uninterrupted, synthetic_data_dir,
                                                             tmp_path):
  reference_dir, reference_metrics = uninterrupted
  config_b = config(synthetic_data_dir)
  config_b.resume = str(reference_dir / "checkpoints" / "2")  # continue the other run at step 2
  metrics = train.train_and_evaluate(config_b, str(tmp_path))
  assert metrics == reference_metrics
  assert checkpointing.list_steps(tmp_path / "checkpoints") == [4, 6]
  _assert_same(_model_variables(tmp_path), _model_variables(reference_dir))


def test_init_from_loads_the_segmenter_and_starts_fresh(uninterrupted, synthetic_data_dir,
                                                       tmp_path, capsys):
  reference_dir, _ = uninterrupted
  warm = config(synthetic_data_dir, num_steps=2)
  warm.init_from = str(reference_dir)  # a workdir: its newest step (6)
  trainer = train_step.build_trainer(warm)
  state, elapsed, how = train.initialise(trainer, tmp_path, data=None)
  assert how.startswith("initialised the segmenter from config.init_from=")
  assert int(state.step) == 0 and elapsed == 0.0
  _assert_same(state.model_variables(), _model_variables(reference_dir, 6))
  fresh = train_step.create_state(trainer, warm.seed)
  _assert_same(state.disc_params, fresh.disc_params)  # a warm start, not a resume
  _assert_same(state.opt_state, fresh.opt_state)
