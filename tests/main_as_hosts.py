"""`python -m seat_jax.main FLAGS` in one process that reads the training data as N hosts would.

Usage: python tests/main_as_hosts.py N [seat_jax.main flags]

The reference of tests/test_multiprocess.py. In a run of N processes, process h reads its own
slice of every dataset (`data_source[h::N]`, shuffled and augmented alone) and its local batch
becomes the h-th block of rows of the global batch (`jax.make_array_from_process_local_data`;
process h owns the h-th block of devices of the mesh). A plain one-process run reads the whole
dataset, so it sees other images. Here each training stream is the N hosts' streams built side
by side and concatenated in host order, and the one process's local batch is the N-process global
batch. Everything after the streams is the unchanged `seat_jax.main`: flags, config, on-device
preprocessing, state, jitted step, checkpoints.
"""

import runpy
import sys
from unittest import mock

import jax
import numpy as np

from seat_jax import input_pipeline

_PER_PROCESS = input_pipeline.create_train_iterator


class HostsSideBySide:
  """The iterators of N hosts' streams as one: their batches concatenated along the batch axis."""

  def __init__(self, iterators):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self):
    batches = [next(it) for it in self.iterators]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *batches)

  def get_state(self):
    # An N-process checkpoint keeps process 0's positions (orbax writes JSON items on the primary
    # host only) and every process restores them: right only while they are all equal.
    states = [it.get_state() for it in self.iterators]
    assert all(state == states[0] for state in states), states
    return states[0]

  def set_state(self, state):
    for it in self.iterators:
      it.set_state(state)


def hosts_side_by_side(hosts: int):
  """A stand-in for create_train_iterator that builds the streams of `hosts` processes."""

  def create(*args, **kwargs):
    iterators = []
    for host in range(hosts):
      # The pipeline asks jax for its slice (and local batch size) only while it builds.
      with mock.patch.object(jax, "process_index", return_value=host), \
          mock.patch.object(jax, "process_count", return_value=hosts):
        iterators.append(_PER_PROCESS(*args, **kwargs))
    return HostsSideBySide(iterators)

  return create


def main() -> None:
  input_pipeline.create_train_iterator = hosts_side_by_side(int(sys.argv[1]))
  sys.argv = ["seat_jax.main", *sys.argv[2:]]
  runpy.run_module("seat_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
