"""Data parallelism with `jax.jit` + `NamedSharding` (no pmap, no shard_map).

Recipe: build a 1-D mesh over a 'data' axis, replicate the train state, shard every batch array
on its leading (batch) axis, and call the ordinary jitted train step
(`normrnn.trainer.make_train_step`) on them:

    mesh = parallel.make_mesh(None)                     # all devices
    state = parallel.replicate(state, mesh)
    step = jax.jit(make_train_step(model, tx, kind))    # or parallel.jit_data_parallel(...)
    state, metrics = step(state, parallel.shard_batch(batch, mesh))

Design note: why batch normalization needs nothing special here. Under jit the program is written
for the GLOBAL batch; the shardings only tell XLA how the arrays are laid out. XLA's SPMD
partitioner (GSPMD) splits the computation and inserts the collectives a global reduction needs,
so the BN batch moments (the means over the batch axis in `normrnn.norms.base.masked_moments`)
are all-reduced across the 'data' axis and are the moments of the whole global batch, exactly as
in a single-device run; so are the loss mean and the gradients. Statistics, population tables
and parameters therefore equal the single-device results up to float summation order (tested
in tests/test_parallel.py). Under pmap, by contrast, each device sees only its shard and the
moments would be per-device unless the model called `lax.pmean` over a named axis.

Mesh axis type: jax 0.10 `jax.make_mesh` defaults to Explicit axes, under which sharding is
part of the array type and unannotated model code (reductions over a sharded axis, shard_map on
unsharded inputs) breaks (docs/method.md, pitfall P20). We ask for Auto axes: classic
GSPMD propagation.

Multi-host: call `initialize_distributed(...)` (a thin wrapper of `jax.distributed.initialize`)
in every process before anything else touches jax, then build the mesh as usual; `jax.devices()`
then lists the devices of all hosts. normrnn's batches are a function of (seed, step), so every
process builds the same GLOBAL batch and `shard_batch` contributes this process's contiguous
rows of it. This path is untested here (one host, CPU only).

Selected from the config: `train.num_devices` (1, N or -1 = all) and `train.distributed`
(normrnn/trainer.py, normrnn/train.py).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Multi-host setup: `jax.distributed.initialize` with the given (or auto-detected) values.

  Call once per process, before building the mesh. On managed clusters (SLURM, TPU pods) all
  three arguments may be None and are detected. Untested here (single host).
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (None = all), axis 'data', Auto axis type."""
  available = len(jax.devices())
  n = available if num_devices is None else int(num_devices)
  if not 1 <= n <= available:
    raise ValueError(f'num_devices must be in [1, {available}] (jax.devices() has {available}), '
                     f'got {num_devices}')
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Puts every array of `batch` on the mesh with its leading (batch) axis split over 'data'.

  Args:
    batch: dict of numpy (or jax) arrays with a common leading batch axis: the GLOBAL batch
      (on several hosts every process passes the same one and contributes its own rows).
    mesh: from `make_mesh`.

  Raises:
    ValueError: if an array is a scalar or its batch size is not divisible by the number of
      devices on the 'data' axis (each device must get the same number of examples).
  """
  n = mesh.shape[DATA_AXIS]
  processes, pid = jax.process_count(), jax.process_index()
  sharding = batch_sharding(mesh)
  out = {}
  for name, value in batch.items():
    shape = np.shape(value)
    if not shape:
      raise ValueError(f'shard_batch: {name!r} is a scalar; every batch entry needs a leading '
                       'batch axis')
    if shape[0] % n:
      raise ValueError(
          f'shard_batch: batch size {shape[0]} of {name!r} is not divisible by the {n} '
          f'devices of the data axis; use a batch size that is a multiple of {n} (or '
          'pad the batch with zero-weight rows).')
    if processes > 1:
      rows = shape[0] // processes
      local = np.asarray(value)[pid * rows:(pid + 1) * rows]
      out[name] = jax.make_array_from_process_local_data(sharding, local, shape)
    else:
      out[name] = jax.device_put(value, sharding)
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A full copy of every leaf of `tree` (e.g. the TrainState) on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def jit_data_parallel(train_step, mesh: Mesh, *, donate: bool = False):
  """jit of `train_step(state, batch) -> (state, metrics)` with the shardings pinned: state
  replicated in and out, batch split on 'data', metrics replicated."""
  rep = replicated(mesh)
  return jax.jit(train_step, in_shardings=(rep, batch_sharding(mesh)), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else ())
