"""Data parallelism with `jax.sharding`: the batch split over devices, the parameters replicated.

    mesh = rtjax.data_mesh()                              # all local devices on one "data" axis
    state = rtjax.replicate(state, mesh)
    step = jax.jit(make_train_step(loss_fn, optimizer))
    state, metrics = step(state, rtjax.shard_batch(batch, mesh))

Nothing else changes: `jit` compiles the step for the *global* batch and XLA inserts the collectives. A
loss that couples the examples of a batch (ROT-Reg's n x n transport plans, RankSim's rankings, BatchNorm's
statistics) is therefore computed over the global batch, which is what the paper's single-GPU batch
computes, and the same code runs unchanged on one device (a mesh of one). Single host: for several
processes, build the global arrays with `jax.make_array_from_process_local_data` instead of `shard_batch`.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "data_mesh", "replicate", "shard_batch"]

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh ("data") over `devices` (default: all local devices)."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("`devices` is empty: a mesh needs at least one device.")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
  """Places every array of `tree` on all devices of `mesh` (parameters, optimizer state, keys)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch, mesh: Mesh):
  """Splits every array of `batch` along its first (batch) axis over the mesh's devices.

  Args:
    batch: a pytree of arrays [b, ...] with the same b, divisible by the number of devices.
  """
  size = mesh.devices.size
  leaves = jax.tree.leaves(batch)
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if len(sizes) > 1 or None in sizes:
    raise ValueError(f"`batch` leaves must share a leading batch axis, got shapes {[np.shape(x) for x in leaves]}.")
  if sizes and next(iter(sizes)) % size:
    raise ValueError(f"the batch size {next(iter(sizes))} must be divisible by the number of devices ({size}); "
                     "choose a batch size that is a multiple of it.")
  return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))
