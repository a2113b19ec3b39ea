"""`NormRNN`: a normalized LSTM (or tanh RNN) with the call conventions of flax's `nn.RNN`.

A drop-in for researchers' own Flax models: replacing

    y = nn.RNN(nn.OptimizedLSTMCell(128))(x, seq_lengths=lengths)

by

    y = NormRNN(128, norm='batch', use_running_average=not train)(x, seq_lengths=lengths)

is a one-line change. Any scheme of `normrnn.norms.NORMS` can be named (including ones added with
`normrnn.norms.register`); the time loop is `normrnn.recurrent.Recurrent`, the same scan the
paper's models use.

Call: `NormRNN(...)(inputs, *, initial_carry=None, init_key=None, seq_lengths=None,
return_carry=None, time_major=None, reverse=None, keep_order=None, use_running_average=None,
position_offset=0)` with inputs [batch, time, features]; returns outputs [batch, time, features]
or (carry, outputs) like `nn.RNN`. The arguments that `nn.RNN` also has mean the same thing:

  seq_lengths   [batch] int; steps t >= seq_lengths[b] are padding: they never enter a statistic,
                the carry is held across them and their outputs are ZERO (`nn.RNN` leaves
                whatever the cell computed there).
  reverse       process each sequence's valid prefix back to front (padding stays at the end).
  keep_order    with reverse: True returns the outputs in input order, False (the default) in
                processing order (output t = after reading the last t + 1 valid inputs), as
                `nn.RNN`.
  return_carry  also return the final carry: the state after each sequence's last valid step.
  init_key      accepted for compatibility and ignored: the initial state is the learned h_0
                (and c_0), plus Gaussian noise of std `h0_noise` drawn from the rng 'noise'.
  time_major    only False is supported (inputs are [batch, time, features]).

Differences from `nn.RNN`:
  * the carry is a dict {'h': [batch, F], 'c': [batch, F] (LSTM only), 'norm': per-scheme state
    (empty except for streaming norm)}, not flax's (c, h) tuple; pass a previous call's carry as
    `initial_carry` to continue a sequence. `position_offset` (a normrnn extension) = the number
    of steps already read, so a forward layer in evaluation indexes its per-step statistics by
    the true position;
  * exactly one batch axis;
  * schemes with population statistics (batch, batch_input, sequence, streaming) need the mode,
    as `nn.BatchNorm`: `use_running_average` as attribute or call argument (False in training:
    batch statistics, running averages updated; True in evaluation: population statistics). The
    other schemes compute the same in both modes and do not need it.

Variables (under the module's `rnn` child):
  params       rnn/cell/{kernel_x, kernel_h, bias, h0, c0, <site>_norm/...} (LSTM gate order
               [g, f, i, o]);
  batch_stats  rnn/{site}_mean, rnn/{site}_var for site in input, recurrent, cell (LSTM) or sum
               (tanh RNN): [max_time_steps, F] tables for per-step schemes (batch, batch_input),
               shared [F] tables for sequence and streaming norm, none for the others. Train with
               `mutable=['batch_stats']` exactly as with `nn.BatchNorm`; each training call
               moves them by pop <- (1 - stats_rate) * pop + stats_rate * batch. Evaluation at
               positions >= max_time_steps uses the last step's statistics;
  moments      written in training mode when mutable: the raw per-batch moments that
               `normrnn.popstats.reestimate` averages into fresh population statistics:

    moments_fn = jax.jit(lambda v, b: model.apply(v, b, use_running_average=False,
                                                  mutable=['moments'])[1]['moments'])
    batch_stats = normrnn.popstats.reestimate(moments_fn, variables, train_batches)

`max_time_steps` (length of the per-step tables) defaults to the length of the sequence given to
`init`; later calls read it back from the stored tables. Training on longer sequences is refused
(the statistics of the extra steps would have no slot), so initialize with a training-length
input or set it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from normrnn import cells
from normrnn.norms import NormOptions, compose, site_pairs
from normrnn.norms.scheme import CELL_SITES
from normrnn.recurrent import Recurrent, reverse_valid



def _stats_kinds(scheme, cell: str) -> dict[str, str]:
  """{site: 'per_step' | 'shared'} for the sites of `cell` that keep population statistics."""
  kinds = {site: getattr(scheme.site(site), 'stats_kind', None) for site in CELL_SITES[cell]}
  return {site: kind for site, kind in kinds.items() if kind is not None}


class NormRNN(nn.Module):
  """A normalized recurrent layer with `nn.RNN`'s call conventions (see the module docstring).

  Attributes:
    features: hidden units (the output size).
    norm: scheme name in `normrnn.norms.NORMS` ('batch', 'layer', 'none', ...).
    cell: 'lstm', 'gru' or 'tanh_rnn' (`normrnn.cells.CELLS`).
    options: the scheme's `NormOptions`; None = its declared defaults (`make_options()`: gain
      0.1 for the BN-type schemes, 1.0 for the others, eps 1e-5).
    max_time_steps: length of the per-step statistic tables; None = the length of the `init`
      call's sequence (see the module docstring). Unused by schemes without per-step statistics.
    stats_rate: rate of the running averages of the population statistics (0.01: the paper's
      MNIST value; 0.05 for its language models).
    recurrent_init: 'orthogonal', 'identity_orthogonal' (identity on the candidate block) or
      'identity' (tanh RNN only).
    forget_bias: initial forget-gate bias (LSTM).
    h0_noise: std of the Gaussian noise added to h_0 on every call (0 = none; needs rng 'noise').
    unroll, remat: as in `normrnn.recurrent.Recurrent`.
    hoist_input: compute the input projection for all steps before the loop (same values; see
      `normrnn.cells.NormLSTMCell`).
    return_carry, reverse, keep_order: defaults of the call arguments, as in `nn.RNN`.
    time_major: must be False (kept so that `nn.RNN`'s keyword is accepted).
    use_running_average: mode for schemes with population statistics, merged with the call
      argument as in `nn.BatchNorm` (exactly one of the two must be set for those schemes).
    sites: per-site schemes, (site, scheme name) pairs or a mapping, e.g.
      `NormRNN(128, norm='batch', sites=(('input', 'sequence'),))` is BN-e* (sequence-wise
      statistics for the input term, per-step for the rest; `normrnn.norms.compose`).
  """
  features: int
  norm: str = 'batch'
  cell: str = 'lstm'
  options: NormOptions | None = None
  max_time_steps: int | None = None
  stats_rate: float = 0.01
  recurrent_init: str = 'orthogonal'
  forget_bias: float = 1.0
  h0_noise: float = 0.0
  unroll: int = 1
  remat: bool = False
  hoist_input: bool = False
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  time_major: bool = False
  use_running_average: bool | None = None
  sites: Any = ()

  def _scheme(self):
    return compose(self.norm, **dict(site_pairs(self.sites)))

  def __post_init__(self):
    # Checked at construction so that a wrong name fails on the line that wrote it.
    scheme = self._scheme()
    cells.get_cell(self.cell)
    if self.cell not in scheme.cells:
      raise ValueError(f'scheme {scheme.name!r} has no {self.cell} form; its cells: '
                       f'{", ".join(scheme.cells)}')
    if self.features < 1:
      raise ValueError(f'NormRNN features must be >= 1, got {self.features}')
    if self.max_time_steps is not None and self.max_time_steps < 1:
      raise ValueError(f'NormRNN max_time_steps must be >= 1, got {self.max_time_steps}')
    if self.time_major:
      raise ValueError('NormRNN supports only time_major=False: pass inputs as '
                       '[batch, time, features]')
    super().__post_init__()

  def _table_length(self, kinds: dict[str, str], length: int) -> int:
    """max_time_steps: the attribute, else the stored per-step tables' length, else `length`."""
    stored = None
    if kinds and not self.is_initializing() and self.has_variable('batch_stats', 'rnn'):
      tables = self.variables['batch_stats']['rnn']
      for site, kind in kinds.items():
        if kind == 'per_step' and f'{site}_mean' in tables:
          stored = tables[f'{site}_mean'].shape[0]
          break
    if self.max_time_steps is not None:
      if stored is not None and stored != self.max_time_steps:
        raise ValueError(f'NormRNN max_time_steps={self.max_time_steps} but the per-step '
                         f'statistics in batch_stats have {stored} steps')
      return self.max_time_steps
    return length if stored is None else stored

  @nn.compact
  def __call__(self, inputs: jax.Array, *, initial_carry: Any = None, init_key: Any = None,
               seq_lengths: jax.Array | None = None, return_carry: bool | None = None,
               time_major: bool | None = None, reverse: bool | None = None,
               keep_order: bool | None = None, use_running_average: bool | None = None,
               position_offset: int = 0):
    """Runs the layer over `inputs` [batch, time, features] (see the module docstring).

    Returns:
      outputs [batch, time, features] (zero at padded steps), or (carry, outputs) if
      return_carry.
    """
    del init_key  # the initial state is learned (h0, c0), its noise comes from rng 'noise'
    return_carry = self.return_carry if return_carry is None else return_carry
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    if time_major:
      raise ValueError('NormRNN supports only time_major=False: pass inputs as '
                       '[batch, time, features]')
    if inputs.ndim != 3:
      raise ValueError(f'NormRNN expects inputs of shape [batch, time, features] (one batch '
                       f'axis), got {inputs.shape}')
    batch, length, in_features = inputs.shape
    scheme = self._scheme()
    kinds = _stats_kinds(scheme, self.cell)
    if kinds and self.use_running_average is None and use_running_average is None:
      raise ValueError(
          f'NormRNN(norm={self.norm!r}) keeps population statistics: pass use_running_average '
          '(False in training, True in evaluation) to the constructor or the call, as with '
          'nn.BatchNorm')
    if kinds:
      use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                           use_running_average)
    elif self.use_running_average is not None and use_running_average is not None:
      nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    train = not use_running_average  # None (no statistics) computes the same either way
    table_length = self._table_length(kinds, length)
    if train and 'per_step' in kinds.values() and length > table_length:
      raise ValueError(
          f'NormRNN(norm={self.norm!r}) training on sequences of {length} steps, longer than its '
          f'per-step statistic tables ({table_length} steps): pass max_time_steps= (default: the '
          'length of the sequence given to init)')

    if seq_lengths is None:
      mask, lengths = None, jnp.full((batch,), length, jnp.int32)
    else:
      lengths = jnp.asarray(seq_lengths).astype(jnp.int32)
      if lengths.shape != (batch,):
        raise ValueError(f'seq_lengths must have shape [batch] = ({batch},), got {lengths.shape}')
      mask = (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.float32)

    options = scheme.make_options() if self.options is None else self.options
    # Unbound (parent=None), so that the cell becomes the child of the scan ('rnn/cell').
    layer_cell = cells.get_cell(self.cell)(
        self.features, in_features, scheme, options, self.recurrent_init, self.forget_bias,
        self.h0_noise, train, self.hoist_input, parent=None)
    scan = Recurrent(layer_cell, table_length, self.stats_rate, reverse, self.unroll, self.remat,
                     name='rnn')
    outputs, carry = scan(inputs, mask, initial_carry=initial_carry,
                          position_offset=position_offset)
    if reverse and not keep_order:
      # The scan returns input order; `nn.RNN` without keep_order returns processing order.
      outputs = reverse_valid(outputs, lengths)
    return (carry, outputs) if return_carry else outputs
