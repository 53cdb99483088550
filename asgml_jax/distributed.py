"""Several processes training one run: `jax.distributed` set up from the environment.

`launch/local_cluster.py` starts N processes of `launch.train` on one
machine (the same command works across machines with the variables below
set by a scheduler). Each process calls `initialize_from_env()` before
anything else touches JAX:

    ASGML_COORDINATOR=host:port   the coordinator (process 0 serves it)
    ASGML_NUM_PROCESSES=N
    ASGML_PROCESS_ID=i            0..N-1

On the CPU the processes' collectives go through gloo (JAX's CPU
implementation). The data-parallel mesh then spans every process's devices
(`jax.devices()`), the train state is replicated on all of them, and each
process puts only its own slice of each batch on its devices
(`process_batch`): rows [i·B/N, (i+1)·B/N) of the global batch, which the
jitted step sees as one global (B, ...) array. So the run computes what one
process with all the devices computes (tests/test_multiprocess.py).

What is written, and by whom: the orbax checkpoint is written cooperatively
(all processes call save; orbax's primary process writes the replicated
arrays and the metadata); the checkpoint's integrity record, config.json,
summary.json, the workdir lock and the TensorBoard events are process 0's
alone; the other processes log to their own stderr.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV_COORDINATOR = "ASGML_COORDINATOR"
ENV_NUM_PROCESSES = "ASGML_NUM_PROCESSES"
ENV_PROCESS_ID = "ASGML_PROCESS_ID"

_initialized = False


def initialize_from_env() -> bool:
  """Joins the cluster the environment describes (no-op without it); True if joined."""
  global _initialized
  coordinator = os.environ.get(ENV_COORDINATOR)
  if not coordinator or _initialized:
    return _initialized
  try:
    num, pid = int(os.environ[ENV_NUM_PROCESSES]), int(os.environ[ENV_PROCESS_ID])
  except (KeyError, ValueError):
    raise SystemExit(f"error: {ENV_COORDINATOR} is set, so {ENV_NUM_PROCESSES} and "
                     f"{ENV_PROCESS_ID} must be integers too") from None
  # CPU devices' collectives across processes (affects the CPU backend only;
  # asking which backend is in use here would start it too early).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
  _initialized = True
  return True


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """Process 0: the one that writes the run's files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (no-op for one process)."""
  if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)


def to_host(tree):
  """A pytree as NumPy arrays, so it can be laid out on a mesh that spans
  other processes' devices (a single-device jax.Array cannot)."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def process_rows(batch_size: int) -> slice:
  """This process's rows of a global batch of `batch_size`."""
  n, i = jax.process_count(), jax.process_index()
  if batch_size % n:
    raise ValueError(f"a batch of {batch_size} does not split over {n} processes")
  per = batch_size // n
  return slice(i * per, (i + 1) * per)


def process_batch(arrays: dict, rows: np.ndarray, sharding) -> dict:
  """The global batch whose rows are `rows` (indices into `arrays`), built from
  this process's slice alone: only its own rows are read and transferred."""
  mine = rows[process_rows(len(rows))]
  return {k: jax.make_array_from_process_local_data(sharding, v[mine],
                                                    (len(rows),) + v.shape[1:])
          for k, v in arrays.items()}
