"""Two processes, one run: the docs' launch commands on loopback, checked against one process.

The two `python -m seat_jax.main` processes (one CPU device each, jax.distributed with gloo)
train, checkpoint, and are launched again to resume. Each process reads its own slice of the
data, so a plain one-process run (the whole dataset) sees other images and is no reference;
the reference is one process with two devices that reads the two slices into the rows the two
processes own (tests/main_as_hosts.py). Both then run the same partitioned program on the same
global batches, and a two-way all-reduce (a + b) is exact whatever the transport, so every array
of both checkpoints must agree bit for bit. Measured: a process reading another's slice, or the
plain run, changes them; which process's rows come first does not (2-way sums commute).
~2 minutes on 2 busy CPU cores (three launches of the tiny demo model, two of them in parallel).
"""

import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from seat_jax import checkpointing
from seat_jax import presets
from seat_jax import train
from seat_jax import train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 900


def _tiny(data_dir, num_steps, **extra):
  """Overrides that shrink the demo preset to seconds per step (the flags a user would type)."""
  flags = {"data.data_dir": data_dir, "data.source.resize_hw": "(32,64)",
           "data.source.crop_hw": "(32,64)", "data.target.resize_hw": "(32,64)",
           "data.val.resize_hw": "(32,64)", "train.batch_size": 2, "train.num_steps": num_steps,
           "train.checkpoint_every": 2, "train.log_every": 1, "train.eval_every": 0, **extra}
  return [f"--config.{key}={value}" for key, value in flags.items()]


def docs_launch_commands() -> list[list[str]]:
  """The launch commands of docs/multi-host.md, process 0 first."""
  page = (REPO / "docs" / "multi-host.md").read_text()
  script = "\n".join(re.findall(r"```bash\n(.*?)```", page, flags=re.S)).replace("\\\n", " ")
  commands = [shlex.split(line.strip().rstrip("&")) for line in script.splitlines()
              if line.startswith("python -m seat_jax.main") and "--process_id=" in line]
  assert [c for c in commands if "--process_id=0" in c] == commands[:1] and len(commands) == 2, (
      f"docs/multi-host.md should give the two launch commands, got {commands}")
  return commands


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict[str, str]:
  """The suite's compile settings (tests/conftest.py), so subprocesses share its XLA cache."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)
  return env


def _start(args, log: pathlib.Path, env) -> subprocess.Popen:
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out,
                            stderr=subprocess.STDOUT, env=env)


def _wait_all(procs: dict[str, tuple[subprocess.Popen, pathlib.Path]]) -> dict[str, str]:
  """Waits for every process; on the first failure stops the rest (they would wait for it)."""
  deadline = time.monotonic() + TIMEOUT_S
  while any(p.poll() is None for p, _ in procs.values()):
    failed = [name for name, (p, _) in procs.items() if p.returncode not in (None, 0)]
    if failed or time.monotonic() > deadline:
      for p, _ in procs.values():
        if p.poll() is None:
          p.kill()
          p.wait()
      break
    time.sleep(0.5)
  logs = {name: log.read_text() for name, (_, log) in procs.items()}
  for name, (p, _) in procs.items():
    assert p.returncode == 0, f"{name} exited with {p.returncode}:\n" + "\n".join(
        f"--- {n} ---\n{text[-3000:]}" for n, text in logs.items())
  return logs


def _launch_two(workdir, overrides, tmp_path, tag):
  """The docs' two commands with this test's workdir, a free port and `overrides` appended."""
  port = _free_port()
  procs = {}
  for index, command in enumerate(docs_launch_commands()):
    args = [re.sub(r"^--workdir=.*", f"--workdir={workdir}", a) for a in command[1:]]
    args = [re.sub(r"^(--coordinator_address=.*):\d+$", rf"\g<1>:{port}", a) for a in args]
    log = tmp_path / f"{tag}_{index}.log"
    procs[f"{tag} process {index}"] = (_start(args + overrides, log, _env()), log)
  return procs


def _metric_lines(log: str) -> dict[int, str]:
  """Step -> the printed losses of that step (progress lines, without timings)."""
  return {int(m[1]): m[2] for m in re.finditer(r"^step (\d+)/\d+ \(\d+%\) (.*?) \|", log, re.M)}


def _checkpoint(workdir, step):
  trainer = train_step.build_trainer(presets.demo("seat"))
  target = train.checkpoint_items(train_step.abstract_state(trainer))
  arrays, data_iter, meta = checkpointing.restore_train(
      pathlib.Path(workdir) / "checkpoints", target, step)
  return jax.device_get(arrays), data_iter, meta["step"]


def _assert_same_checkpoint(workdir, reference, step):
  arrays, data_iter, saved_step = _checkpoint(workdir, step)
  ref_arrays, ref_data_iter, ref_step = _checkpoint(reference, step)
  assert saved_step == ref_step == step and data_iter == ref_data_iter
  assert jax.tree.structure(arrays) == jax.tree.structure(ref_arrays)
  leaves = jax.tree_util.tree_leaves_with_path(arrays)
  assert len(leaves) > 100  # params, batch stats, optimiser and discriminator states
  for (path, value), ref in zip(leaves, jax.tree.leaves(ref_arrays)):
    np.testing.assert_array_equal(value, ref, err_msg=f"step {step} {jax.tree_util.keystr(path)}")


def test_two_processes_train_checkpoint_and_resume_like_one_process(synthetic_data_dir,
                                                                      tmp_path):
  two, reference = tmp_path / "two_processes", tmp_path / "reference"
  command = docs_launch_commands()[0]
  main_flags = [a for a in command[3:] if a.startswith("--config=")]
  # The reference (4 steps at once) runs alongside the two processes' first launch (2 steps).
  ref_args = [str(REPO / "tests" / "main_as_hosts.py"), "2", *main_flags,
              f"--workdir={reference}", *_tiny(synthetic_data_dir, 4)]
  ref_env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = {"reference": (_start(ref_args, tmp_path / "reference.log", ref_env),
                         tmp_path / "reference.log")}
  procs.update(_launch_two(two, _tiny(synthetic_data_dir, 2), tmp_path, "first"))
  logs = _wait_all(procs)
  assert "2 device(s) (cpu), 1 process(es)" in logs["reference"]
  for index in (0, 1):
    assert "initialised from scratch" in logs[f"first process {index}"]
    assert "2 device(s) (cpu), 2 process(es)" in logs[f"first process {index}"]
  assert checkpointing.list_steps(two / "checkpoints") == [2]
  _assert_same_checkpoint(two, reference, 2)

  # Launched again with more steps: both processes continue from step 2, with a periodic
  # evaluation at step 4 on the way (every process evaluates, process 0 writes).
  resumed = _wait_all(_launch_two(
      two, _tiny(synthetic_data_dir, 4, **{"train.eval_every": 2, "train.eval_max_examples": 2}),
      tmp_path, "resumed"))
  for index in (0, 1):
    assert f"resumed from {two / 'checkpoints'} at step 2" in resumed[f"resumed process {index}"]
  assert checkpointing.list_steps(two / "checkpoints") == [2, 4]
  _assert_same_checkpoint(two, reference, 4)
  assert (two / "eval" / "eval_step_4" / "iou.md").exists()

  # What a user watches: process 0 prints the reference's losses at every step.
  printed = {**_metric_lines(logs["first process 0"]),
             **_metric_lines(resumed["resumed process 0"])}
  assert printed == _metric_lines(logs["reference"]) and sorted(printed) == [1, 2, 3, 4]
  assert not _metric_lines(logs["first process 1"])  # only process 0 reports


def test_a_coordinator_without_the_process_count_is_a_usage_error(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "seat_jax.main", "--config=configs/demo.py",
       f"--workdir={tmp_path}", f"--coordinator_address=127.0.0.1:{_free_port()}"],
      cwd=REPO, capture_output=True, text=True, env=_env(), timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "--num_processes=N and its own --process_id" in result.stderr
