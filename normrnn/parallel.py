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

Several processes (one per host, or several on one machine): every process runs the same
command; `initialize_distributed` (`jax.distributed.initialize`) runs first, before anything
else touches jax, and `jax.devices()` then lists the devices of all processes. The mesh must then
span every device (`train.num_devices` -1). Each process builds only its own share of every
batch (`normrnn.data.Task.set_share` with `process_share(mesh)`: process i of n gets the
contiguous rows [i*B/n, (i+1)*B/n) of the global batch, which stays a function of seed and step)
and `shard_batch` assembles the global array from the shares
(`jax.make_array_from_process_local_data`); the jitted step then runs over the whole mesh, so the
BN moments, the loss and the gradients are again those of the global batch, all-reduced across
processes (on CPU through gloo). Everything a step returns is replicated, so every process holds
the same parameters and metrics (`to_host` fetches them). Callers `settle` the outputs of every
collective step before dispatching more (a CPU deadlock otherwise; docs/method.md, "Several
processes"). Proven on one machine with two processes of two CPU devices each
(tests/test_multiprocess.py); not on a real multi-node network.

Selected from the config: `train.num_devices` (1, N or -1 = all) and `train.distributed`
(normrnn/trainer.py, normrnn/train.py).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           heartbeat_timeout_s: int = 60,
                           init_timeout_s: int = 300) -> None:
  """Joins this process to a multi-process job: `jax.distributed.initialize`.

  Call once per process, before anything else touches jax. Arguments left None come from the
  environment: JAX_COORDINATOR_ADDRESS (host:port of process 0), or a cluster jax detects
  (SLURM: SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; also
  Open MPI, Kubernetes, Cloud TPU). On CPU the cross-process collectives are gloo's (jax's
  default, `jax_cpu_collectives_implementation`); the CPU devices per process come from
  JAX_NUM_CPU_DEVICES (or XLA_FLAGS=--xla_force_host_platform_device_count=N).

  Args:
    coordinator_address: 'host:port' of process 0 (it starts the coordination service there).
    num_processes: processes in the job.
    process_id: this process's index in [0, num_processes).
    heartbeat_timeout_s: a process that sends no heartbeat for this long is declared dead and
      every other process is terminated (SIGABRT, non-zero exit) instead of waiting forever in
      a collective; the death of process 0 (the coordinator) is seen at once.
    init_timeout_s: how long to wait for all processes to connect at the start, and for all of
      them to reach the shutdown barrier at the end.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=int(init_timeout_s),
                             heartbeat_timeout_seconds=int(heartbeat_timeout_s),
                             shutdown_timeout_seconds=int(init_timeout_s))
  _connect_collectives()


def _connect_collectives() -> None:
  """Runs each kind of collective the trainer uses once over all devices, now, while the
  processes are in step (`jax.distributed.initialize` and the backend's topology exchange just
  synchronized them). On CPU the first collective of each kind sets up gloo's connections, and
  that setup fails when the processes reach it more than 30 s apart (a fixed timeout, which
  --xla_cpu_collective_timeout_seconds does not raise), as different compile times of the first
  jitted step can make them on a loaded machine; later collectives wait for late processes.
  The train, evaluation and re-estimation steps use all-reduce; `to_host` and orbax's barriers
  all-gather."""
  mesh = make_mesh(None)
  ones = np.ones(len(jax.local_devices()), np.float32)
  total = jax.jit(jnp.sum, out_shardings=replicated(mesh))(
      jax.make_array_from_process_local_data(batch_sharding(mesh), ones))  # all-reduce
  multihost_utils.sync_global_devices('normrnn: connect collectives')  # all-gather
  if int(total) != len(jax.devices()):
    raise RuntimeError(f'all-reduce over the {len(jax.devices())} devices of the job gave '
                       f'{int(total)}')


def is_primary() -> bool:
  """True in the one process that writes metrics, results and console output (process 0)."""
  return jax.process_index() == 0


def process_share(mesh: Mesh) -> tuple[int, int]:
  """(index, count): this process's block of rows of every global batch, as the mesh lays the
  batch axis out: process i of the mesh's n processes holds rows [i*B/n, (i+1)*B/n).

  Raises:
    ValueError: the mesh does not use every device of the job, or a process's devices are not
      one contiguous run along the 'data' axis (then its rows would not be one block).
  """
  devices = list(mesh.devices.flat)
  if len(devices) != len(jax.devices()):
    raise ValueError(f'a mesh over {len(devices)} of the {len(jax.devices())} devices of a '
                     f'{jax.process_count()}-process job; every process must own part of it '
                     '(train.num_devices=-1)')
  owners = [d.process_index for d in devices]
  order = list(dict.fromkeys(owners))  # processes in mesh order
  per = len(devices) // len(order)
  if owners != [p for p in order for _ in range(per)]:
    raise ValueError(f'the mesh devices of each process must be contiguous and equally many; '
                     f'got processes {owners} along the data axis')
  return order.index(jax.process_index()), len(order)


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
    batch: dict of numpy (or jax) arrays with a common leading batch axis. In one process, the
      whole (global) batch. With several processes, this process's share of it (its rows, see
      `process_share`); the global batch has `count` times as many rows.
    mesh: from `make_mesh`.

  Raises:
    ValueError: if an array is a scalar or its batch size is not divisible by the number of
      devices on the 'data' axis (each device must get the same number of examples).
  """
  n = mesh.shape[DATA_AXIS]
  shares = process_share(mesh)[1] if jax.process_count() > 1 else 1
  sharding = batch_sharding(mesh)
  out = {}
  for name, value in batch.items():
    shape = np.shape(value)
    if not shape:
      raise ValueError(f'shard_batch: {name!r} is a scalar; every batch entry needs a leading '
                       'batch axis')
    rows = shape[0] * shares
    if rows % n:
      raise ValueError(
          f'shard_batch: batch size {rows} of {name!r} is not divisible by the {n} '
          f'devices of the data axis; use a batch size that is a multiple of {n} (or '
          'pad the batch with zero-weight rows).')
    if shares > 1:
      out[name] = jax.make_array_from_process_local_data(sharding, np.asarray(value),
                                                         (rows,) + shape[1:])
    else:
      out[name] = jax.device_put(value, sharding)
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A full copy of every leaf of `tree` (e.g. the TrainState) on every device of the mesh.

  With several processes every process passes the same values (as the trainer's state, built
  from the same seed, is) and each fills its own devices from its local copy: no collective,
  unlike `jax.device_put`, which first checks across processes that the values agree."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def leaf(x):
    local = np.asarray(x)
    return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])
  return jax.tree.map(leaf, tree)


def jit_data_parallel(train_step, mesh: Mesh, *, donate: bool = False):
  """jit of `train_step(state, batch) -> (state, metrics)` with the shardings pinned: state
  replicated in and out, batch split on 'data', metrics replicated."""
  rep = replicated(mesh)
  return jax.jit(train_step, in_shardings=(rep, batch_sharding(mesh)), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else ())


def to_host(tree: Any) -> Any:
  """numpy copies of the leaves of `tree` in every process: replicated (or single-process)
  arrays are read from a local copy; arrays sharded across processes are gathered first
  (`process_allgather`, a collective: every process must call it)."""
  def fetch(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


def settle(tree: Any) -> Any:
  """`tree` once every array in it is computed, in a multi-process job; `tree` at once in one
  process.

  Call it on the outputs of every jitted computation that has cross-process collectives, before
  dispatching anything that uses them. Why: the CPU client of jax 0.10 runs each local device's
  part of a program on a small thread pool (as many threads as cores); with asynchronous
  dispatch the host runs ahead and queues the next programs, whose launches occupy pool threads
  while they wait for their inputs, so a device whose part of a collective has not started
  yet can find no thread, and every process waits in the collective forever (seen here with 2
  cores: a jitted collective followed by `jnp.add` of its outputs hangs within a few
  iterations). Waiting for each collective program to finish keeps at most one in flight."""
  if jax.process_count() > 1:
    return jax.block_until_ready(tree)
  return tree


def preemption_point(step: int) -> bool:
  """True, in every process at the same `step`, once any process of a multi-process job got
  SIGTERM (the scheduler's preemption notice; jax's preemption sync manager agrees on the step).
  Call at every step. Always False in a single process (there the trainer handles SIGTERM)."""
  if jax.process_count() == 1:
    return False
  return multihost_utils.reached_preemption_sync_point(step)
