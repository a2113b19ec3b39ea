"""Recurrent cells with normalization sites. Cells never loop over time: `normrnn.recurrent`
owns the time loop and calls the methods below.

Cell protocol (used by `normrnn.recurrent.Recurrent`):
  stat_specs()                  {site: (features, stats_kind)} for sites with population tables
  hoist(x, mask, stats, carry)  the part computed for all steps before the loop, time-major:
                                  x [time, batch, in_features], mask [time, batch]
                                  -> (step_inputs [time, batch, ...], consts, moments, carry)
                                  (carry: with the input site's state advanced over the chunk)
  initialize_carry(batch_size)  the initial state
  step(carry, inputs_t, mask_t, stats_t, consts, probe_t)
                                one time step -> (carry, y_t [batch, hidden], moments_t)
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from normrnn import inits
from normrnn.norms import NORMS, NormOptions, Scheme


def _check_supported(scheme, cell: str) -> None:
  if cell not in scheme.cells:
    valid = [name for name, s in NORMS.items() if cell in s.cells]
    raise ValueError(f'the {cell} cell does not support scheme {scheme.name!r}; schemes with a '
                     f'{cell} form: {", ".join(valid)}')


def _initial_h(cell, batch_size: int):
  """The learned h_0 for every sequence, plus Gaussian noise of std `h0_noise` if it is > 0 (the
  paper's --noise, applied in training and evaluation; needs the 'noise' rng)."""
  h0 = jnp.broadcast_to(cell.h0, (batch_size, cell.hidden))
  if cell.h0_noise > 0:
    h0 = h0 + inits.noise(cell.make_rng('noise'), h0.shape, cell.h0_noise)
  return h0


def _hold(keep, new, old):
  """Keeps the old state where the step is padding (keep is [batch, 1])."""
  return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


# The input term of the gated cells (LSTM, GRU): their `kernel_x`, `kernel_x_norm`,
# `kernel_h_norm`, `input_norm` and `hoist_input` play the same roles in both.


def input_in_loop(cell) -> bool:
  """True if the step computes the input term from x_t itself (else `hoist` did, for all steps)."""
  return not (cell.hoist_input or cell.scheme.input.needs_whole_sequence)


def _hoist_input_term(cell, x, mask, stats, carry):
  """`hoist` of a gated cell: the kernel transforms (once per forward pass) and, unless the step
  computes it, the normalized input term N_x(W_x x_t) for all steps."""
  kernel_x = cell.kernel_x_norm(cell.kernel_x)
  consts = dict(kernel_h=cell.kernel_h_norm(cell.kernel_h))
  if input_in_loop(cell):  # the step projects and normalizes x_t itself
    return x, dict(consts, kernel_x=kernel_x), {}, carry
  a = jnp.einsum('tbd,dk->tbk', x, kernel_x)
  a, moments, state = cell.input_norm(a, x=x, mask=mask, stats=stats.get('input'),
                                      state=carry['norm']['input'])
  carry = dict(carry, norm=dict(carry['norm'], input=state))
  return a, consts, dict(input=moments), carry


def _input_term_step(cell, carry, inputs_t, mask_t, stats_t, consts):
  """The step's normalized input term, its moments and the norm state (input site updated when
  the step computes it; `inputs_t` is then x_t, else the hoisted term)."""
  moments, norm_state = {}, dict(carry['norm'])
  if input_in_loop(cell):
    inputs_t, moments['input'], norm_state['input'] = cell.input_norm(
        inputs_t @ consts['kernel_x'], x=inputs_t, mask=mask_t, stats=stats_t.get('input'),
        state=carry['norm']['input'])
  return inputs_t, moments, norm_state


class NormLSTMCell(nn.Module):
  """LSTM with three normalization sites (Cooijmans et al. 2016, eqs. 6-8; code gate order).

    (g, f, i, o) = N_h(W_h h_{t-1}) + N_x(W_x x_t) + b
    c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)        (the carried c_t is NOT normalized)
    h_t = sigma(o) * tanh(N_c(c_t))

  N_x, N_h, N_c and the kernel transform come from the scheme (`normrnn.norms.NORMS`).
  Init (docs/method.md, "Initialization"): W_x orthogonal, W_h orthogonal or [I, orthogonal]
  (identity on g), forget bias `forget_bias`, other biases 0, learned h_0 and c_0 (init 0);
  optional Gaussian noise of std `h0_noise` added to h_0 on every forward pass (train and eval,
  docs/method.md, "Initialization"; needs rng 'noise').

  Attributes:
    hidden: number of units.
    input_features: size of x_t.
    scheme: the normalization scheme.
    options: the scheme's options.
    recurrent_init: 'orthogonal' or 'identity_orthogonal'.
    forget_bias: initial forget-gate bias (1.0 in the paper).
    h0_noise: std of the noise added to h_0 (0 = none).
    train: batch statistics and statistic updates (True) or population statistics (False).
    hoist_input: compute the input projection W_x x_t and its normalization for all steps before
      the loop (True: one large matmul) or inside each step (False: the hoisted [time, batch, 4H]
      tensor and the batch reductions over it cost more memory traffic than they save; faster on
      CPU for both the MNIST and the PTB shape, docs/benchmarks.md). Same values either way
      (tested); schemes whose input statistics need the whole sequence (`sequence`) are always
      hoisted.
  """
  hidden: int
  input_features: int
  scheme: Scheme
  options: NormOptions
  recurrent_init: str
  forget_bias: float
  h0_noise: float
  train: bool
  hoist_input: bool = True

  def setup(self):
    h, d = self.hidden, self.input_features
    self.kernel_x = self.param('kernel_x', inits.orthogonal, (d, 4 * h))
    self.kernel_h = self.param('kernel_h', inits.recurrent_kernel(self.recurrent_init), (h, 4 * h))
    self.bias = self.param('bias', inits.lstm_bias(self.forget_bias), (4 * h,))
    self.h0 = self.param('h0', nn.initializers.zeros, (h,))
    self.c0 = self.param('c0', nn.initializers.zeros, (h,))
    s, o, t = self.scheme, self.options, self.train
    _check_supported(s, 'lstm')
    self.kernel_x_norm = s.kernel()
    self.kernel_h_norm = s.kernel()
    self.input_norm = s.input(4 * h, 'input', o, t)
    self.recurrent_norm = s.recurrent(4 * h, 'recurrent', o, t)
    self.cell_norm = s.cell(h, 'cell', o, t)

  def stat_specs(self):
    h, s = self.hidden, self.scheme
    specs = dict(input=(4 * h, s.input.stats_kind), recurrent=(4 * h, s.recurrent.stats_kind),
                 cell=(h, s.cell.stats_kind))
    return {k: v for k, v in specs.items() if v[1] is not None}

  def hoist(self, x, mask, stats, carry):
    return _hoist_input_term(self, x, mask, stats, carry)

  def initialize_carry(self, batch_size: int):
    h0 = _initial_h(self, batch_size)
    return dict(h=h0, c=jnp.broadcast_to(self.c0, (batch_size, self.hidden)),
                norm=dict(input=self.input_norm.initial_state(batch_size, h0.dtype),
                          recurrent=self.recurrent_norm.initial_state(batch_size, h0.dtype),
                          cell=self.cell_norm.initial_state(batch_size, h0.dtype)))

  def step(self, carry, inputs_t, mask_t, stats_t, consts, probe_t=None):
    h_prev, c_prev = carry['h'], carry['c']
    inputs_t, moments, norm_state = _input_term_step(self, carry, inputs_t, mask_t, stats_t,
                                                     consts)
    a_h = h_prev @ consts['kernel_h']
    a_h, mom_h, st_h = self.recurrent_norm(a_h, x=h_prev, mask=mask_t,
                                           stats=stats_t.get('recurrent'),
                                           state=carry['norm']['recurrent'])
    pre = inputs_t + a_h + self.bias
    g, f, i, o = jnp.split(pre, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
    c_hat, mom_c, st_c = self.cell_norm(c, x=c, mask=mask_t, stats=stats_t.get('cell'),
                                        state=carry['norm']['cell'])
    h = jax.nn.sigmoid(o) * jnp.tanh(c_hat)
    if probe_t is not None:
      h = h + probe_t
    keep = mask_t[:, None] > 0
    norm = dict(norm_state, recurrent=st_h, cell=st_c)
    new = _hold(keep, dict(h=h, c=c, norm=norm), carry)
    y = new['h'] * mask_t[:, None]
    return new, y, dict(moments, recurrent=mom_h, cell=mom_c)


class NormGRUCell(nn.Module):
  """GRU with two normalization sites, the input term and the recurrent term, each normalized over
  its 3H units jointly (as the LSTM's 4H) and the recurrent one BEFORE the reset gate multiplies
  its candidate block: the layer-normalized GRU (Ba et al. 2016, arXiv:1607.06450) with any
  scheme at the two sites (docs/method.md, "GRU"). Code gate order [n, r, z] (candidate first,
  as the LSTM's [g, f, i, o], so that `inits.recurrent_kernel` puts its identity on n):

    (x_n, x_r, x_z) = N_x(W_x x_t)                         (3H units)
    (h_n, h_r, h_z) = N_h(W_h h_{t-1})                     (3H units)
    r   = sigma(x_r + h_r + b_r)
    z   = sigma(x_z + h_z + b_z)
    n   = tanh(x_n + b_n + r * (h_n + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

  The reset gate acts on the recurrent term after the matmul (cuDNN's GRU, and the GRU of
  PyTorch and of flax's nn.GRUCell; Cho et al. 2014 apply r to h_{t-1} before it), so W_h h_{t-1}
  is one (H, 3H) matmul normalized once per step, as the LSTM's recurrent term.
  Biases: `bias` b = (b_n, b_r, b_z), one per unit where the two terms are summed: it absorbs the
  shift of both normalized terms there, as the LSTM bias does, so neither site has a beta. And
  `bias_hn` b_hn inside the reset product, the recurrent term's shift on the candidate block: b
  cannot absorb it, because r multiplies it (r * (h_n + b_hn) is not r * h_n + const). The same
  two biases as cuDNN / PyTorch / flax, so with scheme 'none' this cell IS flax's nn.GRUCell
  (tested).
  No cell site: h_t is both the output and the carried state (the LSTM normalizes a copy of c_t
  that only feeds the output tanh), so a scheme's `cell` module is not used.
  Init (docs/method.md, "GRU"): W_x orthogonal, W_h per `recurrent_init`
  ('orthogonal': one semi-orthogonal (H, 3H) matrix; 'identity_orthogonal': [I, orthogonal(H,
  2H)], identity on the candidate block n), b = b_hn = 0, gains from the scheme (0.1 for the BN
  family), learned h_0 (init 0), optional h_0 noise as in NormLSTMCell.

  Attributes: as NormLSTMCell (`forget_bias` is unused: a GRU has no forget gate; kept so that
  every cell takes the same config).
  """
  hidden: int
  input_features: int
  scheme: Scheme
  options: NormOptions
  recurrent_init: str
  forget_bias: float  # unused (see the docstring)
  h0_noise: float
  train: bool
  hoist_input: bool = True

  def setup(self):
    s, o, t = self.scheme, self.options, self.train
    _check_supported(s, 'gru')
    h, d = self.hidden, self.input_features
    self.kernel_x = self.param('kernel_x', inits.orthogonal, (d, 3 * h))
    self.kernel_h = self.param('kernel_h', inits.recurrent_kernel(self.recurrent_init), (h, 3 * h))
    self.bias = self.param('bias', nn.initializers.zeros, (3 * h,))
    self.bias_hn = self.param('bias_hn', nn.initializers.zeros, (h,))
    self.h0 = self.param('h0', nn.initializers.zeros, (h,))
    self.kernel_x_norm = s.kernel()
    self.kernel_h_norm = s.kernel()
    self.input_norm = s.input(3 * h, 'input', o, t)
    self.recurrent_norm = s.recurrent(3 * h, 'recurrent', o, t)

  def stat_specs(self):
    h, s = self.hidden, self.scheme
    specs = dict(input=(3 * h, s.input.stats_kind), recurrent=(3 * h, s.recurrent.stats_kind))
    return {k: v for k, v in specs.items() if v[1] is not None}

  def hoist(self, x, mask, stats, carry):
    return _hoist_input_term(self, x, mask, stats, carry)

  def initialize_carry(self, batch_size: int):
    h0 = _initial_h(self, batch_size)
    return dict(h=h0, norm=dict(input=self.input_norm.initial_state(batch_size, h0.dtype),
                                recurrent=self.recurrent_norm.initial_state(batch_size, h0.dtype)))

  def step(self, carry, inputs_t, mask_t, stats_t, consts, probe_t=None):
    h_prev = carry['h']
    a_x, moments, norm_state = _input_term_step(self, carry, inputs_t, mask_t, stats_t, consts)
    a_h, moments['recurrent'], norm_state['recurrent'] = self.recurrent_norm(
        h_prev @ consts['kernel_h'], x=h_prev, mask=mask_t, stats=stats_t.get('recurrent'),
        state=carry['norm']['recurrent'])
    x_n, x_r, x_z = jnp.split(a_x + self.bias, 3, axis=-1)
    h_n, h_r, h_z = jnp.split(a_h, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + self.bias_hn))
    h = (1.0 - z) * n + z * h_prev
    if probe_t is not None:
      h = h + probe_t
    keep = mask_t[:, None] > 0
    new = _hold(keep, dict(h=h, norm=norm_state), carry)
    return new, new['h'] * mask_t[:, None], moments


class TanhRNNCell(nn.Module):
  """tanh RNN with ONE normalization on the summed pre-activation (Cooijmans et al. 2016 sec. 4,
  the model of Fig. 4a):

    h_t = tanh(N(W_h h_{t-1} + W_x x_t + b))

  With scheme 'batch', N = BN(.; gamma, beta) with per-time-step statistics. The input
  projection is computed for all steps before the loop; the normalization cannot be (it acts on
  the sum). Init: W_x orthogonal (for one input: a unit-norm random row), W_h per
  `recurrent_init` ('identity' in Fig. 4a), b = 0, learned h_0 (init 0).
  """
  hidden: int
  input_features: int
  scheme: Scheme
  options: NormOptions
  recurrent_init: str
  forget_bias: float  # unused (no gates); kept so every cell takes the same config
  h0_noise: float
  train: bool
  hoist_input: bool = True  # as in NormLSTMCell (the projection only: the norm acts on the sum)

  def setup(self):
    _check_supported(self.scheme, 'tanh_rnn')
    h, d = self.hidden, self.input_features
    self.kernel_x = self.param('kernel_x', inits.orthogonal, (d, h))
    self.kernel_h = self.param('kernel_h', inits.recurrent_kernel(self.recurrent_init), (h, h))
    self.bias = self.param('bias', nn.initializers.zeros, (h,))
    self.h0 = self.param('h0', nn.initializers.zeros, (h,))
    self.sum_norm = self.scheme.sum(h, 'sum', self.options, self.train)

  def stat_specs(self):
    kind = self.scheme.sum.stats_kind
    return {} if kind is None else dict(sum=(self.hidden, kind))

  def hoist(self, x, mask, stats, carry):
    del mask, stats
    if not self.hoist_input:
      return x, dict(kernel_h=self.kernel_h, kernel_x=self.kernel_x), {}, carry
    return jnp.einsum('tbd,dk->tbk', x, self.kernel_x), dict(kernel_h=self.kernel_h), {}, carry

  def initialize_carry(self, batch_size: int):
    h0 = _initial_h(self, batch_size)
    return dict(h=h0, norm=self.sum_norm.initial_state(batch_size, h0.dtype))

  def step(self, carry, inputs_t, mask_t, stats_t, consts, probe_t=None):
    h_prev = carry['h']
    if not self.hoist_input:  # inputs_t is x_t
      inputs_t = inputs_t @ consts['kernel_x']
    pre = inputs_t + h_prev @ consts['kernel_h'] + self.bias
    pre, mom, st = self.sum_norm(pre, x=pre, mask=mask_t, stats=stats_t.get('sum'),
                                 state=carry['norm'])
    h = jnp.tanh(pre)
    if probe_t is not None:
      h = h + probe_t
    keep = mask_t[:, None] > 0
    new = _hold(keep, dict(h=h, norm=st), carry)
    return new, new['h'] * mask_t[:, None], dict(sum=mom)


CELLS = {'lstm': NormLSTMCell, 'tanh_rnn': TanhRNNCell, 'gru': NormGRUCell}


def get_cell(name: str):
  try:
    return CELLS[name]
  except KeyError:
    raise ValueError(f'unknown cell {name!r}; valid: {", ".join(CELLS)}') from None

