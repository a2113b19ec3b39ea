"""THE recurrent scan: the only place in normrnn that loops over time.

`Recurrent` runs any cell of `normrnn.cells` over [batch, time, features] and owns:
  * the time loop (`flax.linen.scan`, parameters broadcast, `unroll` and `remat` as options);
  * the part of the cell that does not depend on h (input projection and input-term
    normalization) computed for all steps before the loop (`cell.hoist`);
  * masks for variable lengths: padded steps hold the carry, output zeros, and never enter a
    statistic;
  * the reverse direction, which reverses only the valid prefix of each sequence (Cooijmans et
    al. 2016 sec. 5.4, BN-e**), so padding stays at the end;
  * population statistics: the [max_time_steps, features] tables of per-step sites indexed by
    position min(t, max_time_steps - 1) (the last trained step's statistics beyond the training
    length; docs/method.md, "Population statistics") and [features] tables of shared sites. The
    tables live here, in the 'batch_stats' collection, not in the cell: inside the loop the
    per-step statistics travel as scanned inputs and this batch's moments come back as scanned
    outputs; the running-average update is applied once per training step after the loop
    (docs/method.md, pitfall P1).
  * the raw per-batch moments, written to the 'moments' collection when it is mutable, for
    `normrnn.popstats.reestimate`.

`RecurrentStack` stacks layers (each its own `Recurrent`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from normrnn import kernels
from normrnn.norms import base


def reverse_valid(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses the first lengths[b] steps of every sequence, leaving the padding in place.

  Args:
    x: [batch, time, ...].
    lengths: [batch] int.
  """
  t = jnp.arange(x.shape[1])[None, :]
  idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _scan_body(cell, carry, xs, consts):
  stats_t = {**consts['shared_stats'], **xs['stats']}
  carry, y, moments = cell.step(carry, xs['inputs'], xs['mask'], stats_t, consts['cell'],
                                xs.get('probe'))
  return carry, (y, moments)


def update_table(table, m, rate: float, *, per_step: bool) -> None:
  """pop <- (1 - rate) * pop + rate * batch, only where this batch had valid positions.

  `table` is the (mean, var) pair of flax variables of one site ([max_time_steps, F] per-step or
  [F] shared), `m` this batch's moments {'mean', 'var', 'count'} (`normrnn.reader` uses it too).
  """
  mean_v, var_v = table
  if per_step:
    n = m['mean'].shape[0]
    seen = (m['count'] > 0)[:, None]
    for v, new in ((mean_v, m['mean']), (var_v, m['var'])):
      old = v.value[:n]
      v.value = v.value.at[:n].set(jnp.where(seen, (1 - rate) * old + rate * new, old))
  else:
    seen = m['count'] > 0
    for v, new in ((mean_v, m['mean']), (var_v, m['var'])):
      v.value = jnp.where(seen, (1 - rate) * v.value + rate * new, v.value)


class Recurrent(nn.Module):
  """Runs `cell` over a sequence.

  Attributes:
    cell: an unbound cell from `normrnn.cells` (its `train` attribute selects the mode).
    max_time_steps: T_max, length of the per-step statistic tables (the training length in
      prediction steps: 784 for MNIST, 99 for PTB, 179 for text8).
    stats_rate: rate of the running averages, pop <- (1 - rate) * pop + rate * batch
      (0.01 MNIST, 0.05 PTB/text8 in the paper's code).
    reverse: process each sequence's valid part back to front.
    unroll: steps per loop iteration (`lax.scan` unroll).
    remat: recompute each step's activations in the backward pass (memory for time).
    kernel: 'scan' (the reference: `nn.scan` over `cell.step`, autodiff) or a kernel of
      `normrnn.kernels.KERNELS` that runs the same loop with the same values (model.kernel);
      initialization always runs the scan (same parameters whichever kernel trains).
  """
  cell: nn.Module
  max_time_steps: int
  stats_rate: float
  reverse: bool = False
  unroll: int = 1
  remat: bool = False
  kernel: str = kernels.SCAN

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               probe: jax.Array | None = None, initial_carry: Any = None,
               position_offset: int = 0) -> tuple[jax.Array, Any]:
    """Args:
      x: [batch, time, features] float.
      mask: [batch, time], 1 for valid steps (a prefix of each row when reverse=True);
        None = all valid.
      probe: optional [batch, time, hidden] added to h_t (zeros in use; its gradient is dL/dh_t).
      initial_carry: continue from this carry (a previous call's final carry) instead of the
        learned initial state; with `position_offset` = the number of steps already processed,
        a long sequence can be evaluated in chunks (PTB's whole test set as one sequence).
      position_offset: position of x[:, 0] in the sequence, for indexing per-step statistics.

    Returns:
      outputs [batch, time, hidden] (zero at padded steps) and the final carry (for a forward
      layer, the state after each sequence's last valid step).
    """
    if x.ndim != 3:
      raise ValueError(f'Recurrent expects inputs of shape [batch, time, features], got {x.shape}')
    batch, length, _ = x.shape
    if mask is None:
      mask = jnp.ones((batch, length), jnp.float32)
    if mask.shape != (batch, length):
      raise ValueError(f'mask must have shape [batch, time] = {(batch, length)}, got {mask.shape}')
    if probe is not None and probe.shape[:2] != (batch, length):
      raise ValueError(f'probe must have shape [batch, time, hidden], got {probe.shape}')
    if self.max_time_steps < 1:
      raise ValueError(f'max_time_steps must be >= 1, got {self.max_time_steps}')
    if not 0.0 < self.stats_rate <= 1.0:
      raise ValueError(f'stats_rate must be in (0, 1], got {self.stats_rate}')
    mask = mask.astype(jnp.float32)
    cell = self.cell
    train = cell.train
    specs = cell.stat_specs()
    per_step = {k: f for k, (f, kind) in specs.items() if kind == 'per_step'}
    if train and per_step and length > self.max_time_steps:
      raise ValueError(
          f'training on sequences of {length} steps, longer than max_time_steps='
          f'{self.max_time_steps}: the per-step statistics would have no slot. Set '
          'model.norm.max_time_steps to the training length.')

    tables = {}
    for site, (features, kind) in specs.items():
      shape = (self.max_time_steps, features) if kind == 'per_step' else (features,)
      tables[site] = (self.variable('batch_stats', f'{site}_mean', jnp.zeros, shape, jnp.float32),
                      self.variable('batch_stats', f'{site}_var', jnp.ones, shape, jnp.float32))
    if position_offset and (train or self.reverse):
      raise ValueError('position_offset is for chunked evaluation of forward layers only')
    positions = jnp.minimum(jnp.arange(length) + position_offset, self.max_time_steps - 1)
    lookup = {}
    for site, (mean, var) in tables.items():
      if site in per_step:
        lookup[site] = dict(mean=jnp.take(mean.value, positions, axis=0),
                            var=jnp.take(var.value, positions, axis=0))
      else:
        lookup[site] = dict(mean=mean.value, var=var.value)

    if self.reverse:
      lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
      x = reverse_valid(x, lengths)
      probe = None if probe is None else reverse_valid(probe, lengths)

    carry0 = cell.initialize_carry(batch) if initial_carry is None else initial_carry
    # Everything from here on is time-major: the hoisted term is computed as [time, batch, F]
    # (no transposed copy of it; cheap batch-axis reductions on CPU, see norms/base.py).
    mask_tm = mask.T
    inputs, cell_consts, moments, carry0 = cell.hoist(jnp.swapaxes(x, 0, 1), mask_tm, lookup,
                                                      carry0)
    loop_sites = [s for s in specs if s not in moments]
    # Scanned inputs. Per-step statistics are already [time, features].
    xs = dict(inputs=inputs, mask=mask_tm,
              stats={s: lookup[s] for s in loop_sites if s in per_step})
    if probe is not None:
      xs['probe'] = jnp.swapaxes(probe, 0, 1)
    consts = dict(cell=cell_consts,
                  shared_stats={s: lookup[s] for s in loop_sites if s not in per_step})

    if self.kernel != kernels.SCAN:  # the one dispatch point (checked before init, too)
      kernel = kernels.for_layer(self.kernel, cell, remat=self.remat, unroll=self.unroll)
    if self.kernel != kernels.SCAN and not self.is_initializing():
      carry, (ys, loop_moments) = kernel.run(cell, carry0, xs, consts, unroll=self.unroll,
                                             remat=self.remat)
    else:
      body = nn.remat(_scan_body, prevent_cse=False) if self.remat else _scan_body
      scan = nn.scan(body, variable_broadcast='params', split_rngs={'params': False},
                     in_axes=(0, nn.broadcast), out_axes=0, unroll=self.unroll)
      carry, (ys, loop_moments) = scan(cell, carry0, xs, consts)
    outputs = jnp.swapaxes(ys, 0, 1)
    if self.reverse:
      outputs = reverse_valid(outputs, lengths)

    if train:
      moments = {k: v for k, v in moments.items() if v is not None}
      for site in loop_sites:
        m = loop_moments[site]  # per-step moments: mean/var [time, F], count [time]
        moments[site] = m if site in per_step else dict(
            zip(('mean', 'var', 'count'), base.combine_moments(m['mean'], m['var'], m['count'])))
      if self.is_mutable_collection('moments') and moments and not self.is_initializing():
        # One entry {site: {'mean', 'var', 'count'}}; the latest call overwrites it.
        self.sow('moments', 'sites', moments, init_fn=lambda: None, reduce_fn=lambda _, new: new)
      if self.is_mutable_collection('batch_stats') and not self.is_initializing():
        for site, m in moments.items():
          update_table(tables[site], m, self.stats_rate, per_step=site in per_step)
    return outputs, carry


class RecurrentStack(nn.Module):
  """Stacked `Recurrent` layers; layer l+1 reads layer l's outputs.

  Attributes:
    cells: one unbound cell per layer (input_features of layer l+1 = hidden of layer l).
    max_time_steps, stats_rate, unroll, remat, kernel: as in `Recurrent`, shared by all layers.
    reverse: per-layer direction flags (same length as cells).
  """
  cells: tuple
  max_time_steps: int
  stats_rate: float
  reverse: tuple
  unroll: int = 1
  remat: bool = False
  kernel: str = kernels.SCAN

  @nn.compact
  def __call__(self, x, mask=None, *, probe=None, initial_carries=None, position_offset=0):
    if len(self.reverse) != len(self.cells):
      raise ValueError('RecurrentStack needs one reverse flag per layer')
    carries = []
    for i, (cell, rev) in enumerate(zip(self.cells, self.reverse)):
      init = None if initial_carries is None else initial_carries[i]
      # A fresh copy, so that its parameters live under layer_i/cell next to layer_i's tables.
      layer = Recurrent(cell.clone(parent=None), self.max_time_steps, self.stats_rate, rev,
                        self.unroll, self.remat, self.kernel, name=f'layer_{i}')
      x, carry = layer(x, mask, probe=probe if i == len(self.cells) - 1 else None,
                       initial_carry=init, position_offset=position_offset)
      carries.append(carry)
    return x, carries
