"""Data parallelism: the batch sharded over a mesh of every device.

The train state is replicated and each batch is laid out along the mesh's
"data" axis with a sharding constraint inside the jitted step; XLA's SPMD
partitioner then computes each device's share of the forward and backward
pass and inserts the all-reduces itself. Means over the batch (the losses,
BatchNorm's batch statistics, OGM-GE's batch-sum scores) are therefore the
global ones, so a sharded step computes what the single-device step
computes, up to the order of float additions (tests/test_parallel.py).

`parallel.data_parallel="auto"` shards over every device when there is more
than one; "off" keeps one device. The batch size (and the eval batch size)
must divide by the device count. Several processes (`asgml_jax/distributed.py`,
`launch/local_cluster.py`) use the same mesh over every process's
`jax.devices()`, each process feeding its own slice of each batch
(tests/test_multiprocess.py).
A sweep with a vmapped seed axis instead spreads its seeds over the devices
(`seed_mesh`: S must divide by the device count), each device training whole
seeds with no communication; an unrolled sweep stays on one device.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from asgml_jax import distributed
from asgml_jax.config_checks import ConfigError

AXIS = "data"


@functools.cache
def all_devices_mesh() -> Mesh:
  """The 1-D mesh over every device of every process (made once)."""
  return Mesh(jax.devices(), (AXIS,))


def data_mesh(config) -> Mesh | None:
  """The 1-D mesh of all devices, or None for one device / data_parallel="off"."""
  if config.parallel.data_parallel == "off":
    if jax.process_count() > 1:
      raise ConfigError(f"config.parallel.data_parallel: off, but {jax.process_count()} "
                        "processes train this run together; they share its batch over "
                        "their devices, so use auto")
    return None
  devices = jax.devices()
  if len(devices) == 1:
    return None
  n = len(devices)
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % n:
      raise ConfigError(f"config.{key}: {config[key]} does not divide over the {n} devices of "
                        f"the data-parallel mesh (set parallel.data_parallel='off' or a multiple "
                        f"of {n})")
  return all_devices_mesh()


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree, mesh: Mesh | None):
  """Every leaf on every device of the mesh (identity without one). With
  several processes the mesh spans devices this process cannot address, so
  the leaves go through the host first (every process holds the same values:
  the state is a function of the seed)."""
  if mesh is None:
    return tree
  if jax.process_count() > 1:
    tree = distributed.to_host(tree)
  return jax.device_put(tree, replicated(mesh))


def constrain_batch(batch, mesh: Mesh | None):
  """Inside jit: lay the batch's leading axis out over the mesh."""
  if mesh is None:
    return batch
  return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))


def seed_mesh(config, num_seeds: int, mode: str) -> Mesh | None:
  """A sweep's mesh: its seeds spread over every device, for a vmapped seed
  axis whose size divides by the device count; None otherwise (one device)."""
  if config.parallel.data_parallel == "off" or mode != "vmap":
    return None
  devices = jax.devices()
  if len(devices) == 1 or num_seeds % len(devices):
    return None
  return all_devices_mesh()


def shard_seeds(tree, mesh: Mesh | None):
  """Leaves with a leading seed axis, laid out over the mesh (identity without one)."""
  return tree if mesh is None else jax.device_put(tree, batch_sharded(mesh))
