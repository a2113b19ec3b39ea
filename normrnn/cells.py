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


def _hold(keep, new, old):
  """Keeps the old state where the step is padding (keep is [batch, 1])."""
  return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


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

  def _input_in_loop(self):
    return not (self.hoist_input or self.scheme.input.needs_whole_sequence)

  def hoist(self, x, mask, stats, carry):
    kernel_x = self.kernel_x_norm(self.kernel_x)
    consts = dict(kernel_h=self.kernel_h_norm(self.kernel_h))
    if self._input_in_loop():  # the step projects and normalizes x_t itself
      return x, dict(consts, kernel_x=kernel_x), {}, carry
    a = jnp.einsum('tbd,dk->tbk', x, kernel_x)
    a, moments, state = self.input_norm(a, x=x, mask=mask, stats=stats.get('input'),
                                        state=carry['norm']['input'])
    carry = dict(carry, norm=dict(carry['norm'], input=state))
    return a, consts, dict(input=moments), carry

  def initialize_carry(self, batch_size: int):
    h0 = jnp.broadcast_to(self.h0, (batch_size, self.hidden))
    if self.h0_noise > 0:
      h0 = h0 + inits.noise(self.make_rng('noise'), h0.shape, self.h0_noise)
    return dict(h=h0, c=jnp.broadcast_to(self.c0, (batch_size, self.hidden)),
                norm=dict(input=self.input_norm.initial_state(batch_size, h0.dtype),
                          recurrent=self.recurrent_norm.initial_state(batch_size, h0.dtype),
                          cell=self.cell_norm.initial_state(batch_size, h0.dtype)))

  def step(self, carry, inputs_t, mask_t, stats_t, consts, probe_t=None):
    h_prev, c_prev = carry['h'], carry['c']
    moments, norm_state = {}, dict(carry['norm'])
    if self._input_in_loop():  # inputs_t is x_t
      inputs_t, moments['input'], norm_state['input'] = self.input_norm(
          inputs_t @ consts['kernel_x'], x=inputs_t, mask=mask_t, stats=stats_t.get('input'),
          state=carry['norm']['input'])
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
    h0 = jnp.broadcast_to(self.h0, (batch_size, self.hidden))
    if self.h0_noise > 0:
      h0 = h0 + inits.noise(self.make_rng('noise'), h0.shape, self.h0_noise)
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


CELLS = {'lstm': NormLSTMCell, 'tanh_rnn': TanhRNNCell}


def get_cell(name: str):
  try:
    return CELLS[name]
  except KeyError:
    raise ValueError(f'unknown cell {name!r}; valid: {", ".join(CELLS)}') from None

