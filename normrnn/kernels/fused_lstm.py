"""`fused`: the normalized LSTM's whole recurrence as one `jax.custom_vjp` with a hand-written
backward pass (model.kernel='fused').

Same cell, same values as the scan of `normrnn.recurrent` with `normrnn.cells.NormLSTMCell`
(Cooijmans et al. 2016, eqs. 6-8; tested equal: outputs, final carry, moments and the gradients
of every parameter and of the inputs, tests/test_fused.py):

  (g, f, i, o) = N_h(W_h h_{t-1}) + N_x(W_x x_t) + b
  c_t = sigma(f) c_{t-1} + sigma(i) tanh(g),     h_t = sigma(o) tanh(N_c(c_t))

What differs is how the gradient is computed. Autodiff of the scan differentiates every small op
of every step and accumulates the weight gradient as one small outer product per step inside the
reverse loop. Here (measured at the sMNIST and PTB shapes, docs/benchmarks.md):

* both loops run over chunks of `chunk_size` steps (16 at the sMNIST shape, 2 at PTB's): what
  does not depend on h is computed for a chunk at once on cache-sized [chunk, B, 4H] blocks, the
  input term N_x(W_x x_t) and its BN statistics in the forward, its backward in the backward;
  only the recurrence runs step by step;
* the forward saves only what the backward needs: h_{t-1} and c_{t-1} as they enter each step,
  this batch's per-step moments (the backward normalizes with them: no batch reduction is
  recomputed), and with `remat=False` also W_h h_{t-1} (with `remat=True` the backward
  recomputes it: one matmul per step more, 4H fewer floats per row to write and re-read; the
  C++ loops of kernel 'cpu' then recompute the moments too, and they are not kept);
* the backward is one reverse loop with the cell's gradient written out: the LSTM gates, the BN
  backward of the recurrent and cell sites per step (the classic formula of
  `normrnn.norms.base.masked_standardize`, masked) or the LN backward, the held carry of padded
  steps. What does not feed the recurrence is computed after each chunk for all its steps at
  once: dW_h = [h_{t-1}]^T [dL/d(W_h h_{t-1})] as one [H, chunk*B] x [chunk*B, 4H] matmul (one
  matmul over all T*B rows after the loop was slower: it writes and re-reads [T, B, 4H] stacks
  from memory), dW_x, dL/dx, the input site's backward, the bias, gain and shift sums;
* zero cotangents are known at trace time (`symbolic_zeros`): the sMNIST loss reads only the last
  h, so no per-step output cotangent is ever added; the cotangents of the returned moments (zero
  in a train step: they only update the population tables) add their terms only when nonzero;
  dL/dx is computed only if the inputs are differentiated.

Supported (`supports`): the LSTM cell; at the sites computed inside the loop the modules
`none.Identity`, `batch.BatchStep` (batch statistics in training, per-step population tables in
evaluation) and `layer.LayerNorm`; a hoisted input term (`hoist_input=True`, or sequence-wise BN,
which is always hoisted) may be any scheme's; any kernel transform (weight norm: it is applied
once before the loop). So: none, batch, batch_input, layer, weight, sequence and per-site
composites of these. Not: cosine (its recurrent site divides by |h_{t-1}|), streaming (per-sequence
state carried through the loop: the C++ loops of kernel 'cpu' run it, `native=True`), the GRU and
the tanh RNN. With `native=True` (kernel 'cpu', normrnn/kernels/cpu_lstm.py) the two loops of
this custom_vjp run in C++; everything else here is shared. The scan stays the reference and the
fallback; masking, reverse (valid-prefix) direction, h_0 noise, chunked evaluation and the
last-step rule of the statistics tables are all done by `Recurrent` around either loop.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from normrnn import cells
from normrnn.kernels import cpu_lstm
from normrnn.norms import batch, layer, none, streaming

# The in-loop site modules this kernel has written out, by exact class (a subclass may change the
# maths).
SITE_KINDS = {none.Identity: 'identity', batch.BatchStep: 'batch', layer.LayerNorm: 'layer'}
# The C++ loops (kernel 'cpu') also carry streaming normalization's per-sequence running sums.
NATIVE_SITE_KINDS = {**SITE_KINDS, streaming.Streaming: 'streaming'}
LOOP_SITES = ('input', 'recurrent', 'cell')


def supports(cell: str, scheme, *, hoist_input: bool, remat: bool, unroll: int, hidden: int,
             train: bool = True, native: bool = False) -> str | None:
  """None if this kernel runs `cell` with `scheme`, else the reason it does not (`native`: the
  C++ loops, which also run streaming sites). Any `hidden` size (taken for the interface of
  `normrnn.kernels`, unused)."""
  del remat, unroll, hidden, train  # all settings and sizes supported
  kinds = NATIVE_SITE_KINDS if native else SITE_KINDS
  if cell != 'lstm':
    return f'the fused kernel implements the LSTM cell only, not {cell!r}'
  hoisted = hoist_input or scheme.input.needs_whole_sequence
  for site in LOOP_SITES:
    if site == 'input' and hoisted:
      continue  # computed before the loop by the cell (autodiff there)
    cls = getattr(scheme, site)
    if cls not in kinds:
      return (f'the fused kernel has no written-out backward for {cls.__name__} at the {site} '
              f'site (scheme {scheme.name!r})')
  return None


# The loops' per-chunk blocks ([chunk, B, 4H] each) are kept near this size so that they stay in
# cache: 16 steps at the sMNIST shape (B=64, H=100), 2 at PTB's (H=1000). Measured
# (docs/benchmarks.md): larger chunks were slower at both shapes, one [T, B, 4H] block slowest.
CHUNK_BYTES = 2 ** 21
MAX_CHUNK = 16


def chunk_size(length: int, batch: int, features: int, itemsize: int = 4) -> int:
  """Steps per chunk: near CHUNK_BYTES per block, and a divisor of `length` if one is within a
  factor 2 (else the last chunk is padded, which copies the inputs once)."""
  size = max(1, min(MAX_CHUNK, CHUNK_BYTES // (batch * features * itemsize)))
  return next((k for k in range(size, max(1, size // 2 - 1), -1) if length % k == 0), size)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The static part of one call: site kinds (input None = hoisted), mode and settings."""
  input: str | None
  recurrent: str
  cell: str
  train: bool
  eps: float
  remat: bool
  unroll: int
  chunk: int
  native: bool = False  # the loops in C++ (kernel 'cpu', normrnn/kernels/cpu_lstm.py)
  lam: float = 0.0      # streaming_mix of streaming sites (C++ only)

  def kind(self, site: str) -> str | None:
    return dict(input=self.input, recurrent=self.recurrent, cell=self.cell)[site]


def run(cell, carry0, xs, consts, *, unroll: int, remat: bool, native: bool = False):
  """The fused loop with the scan's interface (`normrnn.recurrent.Recurrent`): `cell` is the
  bound NormLSTMCell, `carry0` its initial carry, `xs` the time-major scanned inputs (inputs,
  mask, per-step stats, optional probe), `consts` the hoisted constants; `native`: run the two
  loops in C++ (kernel 'cpu'). Returns (carry, (ys [T, B, H], moments {site: {'mean', 'var',
  'count'}} of the in-loop sites))."""
  scheme = cell.scheme
  in_loop = cells.input_in_loop(cell)
  kinds = NATIVE_SITE_KINDS if native else SITE_KINDS
  plan = Plan(input=kinds[scheme.input] if in_loop else None,
              recurrent=kinds[scheme.recurrent], cell=kinds[scheme.cell],
              train=cell.train, eps=cell.options.eps, remat=remat, unroll=unroll,
              chunk=chunk_size(*xs['mask'].shape, 4 * cell.hidden), native=native,
              lam=float(getattr(cell.options, 'streaming_mix', 0.0)))
  params = cell.variables['params']
  sites = ('input',) * in_loop + ('recurrent', 'cell')  # the hoisted input site's parameters
  p = dict(kernel_h=consts['cell']['kernel_h'], bias=params['bias'],  # get autodiff there
           sites={site: dict(params.get(f'{site}_norm', {})) for site in sites})
  if in_loop:
    p['kernel_x'] = consts['cell']['kernel_x']
  # Population statistics (evaluation) as (mean, 1 / sqrt(var + eps)) for all steps at once.
  stats = {} if plan.train else {s: dict(mean=v['mean'], r=lax.rsqrt(v['var'] + plan.eps))
                                 for s, v in xs['stats'].items() if s in sites}
  # Streaming sites (C++ only): the long-term table (both modes) and the running sums, carried.
  streaming = [s for s in sites if plan.kind(s) == 'streaming']
  stats.update({s: dict(consts['shared_stats'][s]) for s in streaming})
  norm0 = {s: carry0['norm'][s] for s in streaming}
  (h, c, norm), ys, moments = _fused(plan, p, (carry0['h'], carry0['c'], norm0), xs['inputs'],
                                     xs['mask'], stats, xs.get('probe'))
  return dict(carry0, h=h, c=c, norm={**carry0['norm'], **norm}), (ys, moments)


# ----------------------------------------------------------------------------------------------
# One site: forward and backward. `a` is [..., B, F] (one step, or a chunk of steps for the input
# site); `mask` is a's shape without F. Reductions of BN run over the batch axis -2, of LN over
# the feature axis -1.


def _site_forward(kind, a, mask, n, p, stats, *, train, eps):
  """-> (output, (y, r) or None, moments or None). BN normalizes with `stats` = {'mean', 'r'}
  (r = 1 / sqrt(var + eps)): the population statistics (evaluation) or this batch's moments
  saved by the forward (recomputation in the backward); with None it computes them, over the
  rows where `mask` is 1, whose number (at least 1) is `n` [..., 1, 1]."""
  if kind == 'identity':
    return (a + p['beta'] if 'beta' in p else a), None, None
  moments = None
  if kind == 'batch':
    if train and stats is None:
      # The masked moments of norms/base.py (masked_moments) over the batch axis, the masked
      # sums as [1, B] x [B, F] products: no [B, F] broadcast of the mask per step.
      m = jnp.expand_dims(mask.astype(a.dtype), -2)
      mean = (m @ a) / n
      var = (m @ jnp.square(a - mean)) / n
      moments = dict(mean=mean[..., 0, :], var=var[..., 0, :])
      r = lax.rsqrt(var + eps)
    else:
      mean, r = jnp.expand_dims(stats['mean'], -2), jnp.expand_dims(stats['r'], -2)
  else:  # layer
    mean = jnp.mean(a, axis=-1, keepdims=True)
    r = lax.rsqrt(jnp.mean(jnp.square(a - mean), axis=-1, keepdims=True) + eps)
  y = (a - mean) * r
  out = p['gamma'] * y
  if 'beta' in p:
    out = out + p['beta']
  return out, (y, r), moments


def _site_backward(kind, dout, res, m, n, p, dmoments, *, train):
  """Cotangent of a site's input from that of its output.

  Args: res = (y, r) of the forward; m = the mask [..., B, 1]; n = max(count, 1) [..., 1, 1]
  (BN in training); dmoments = {'mean', 'var'} cotangents of the returned moments or None.
  Returns (da, parameter cotangents reduced over the batch axis [..., F], statistics cotangents
  {'mean', 'r'} [..., F] (BN in evaluation) or None).
  """
  grads = {}
  if 'beta' in p:
    grads['beta'] = jnp.sum(dout, axis=-2)
  if kind == 'identity':
    return dout, grads, None
  y, r = res
  s2 = jnp.sum(dout * y, axis=-2, keepdims=True)
  grads['gamma'] = s2[..., 0, :]
  gamma = p['gamma']
  dy = dout * gamma
  if kind == 'layer':
    da = r * (dy - jnp.mean(dy, axis=-1, keepdims=True)
              - y * jnp.mean(dy * y, axis=-1, keepdims=True))
    return da, grads, None
  s1 = grads['beta'][..., None, :] if 'beta' in p else jnp.sum(dout, axis=-2, keepdims=True)
  if not train:  # population statistics: an affine map per step
    dstats = dict(mean=-(gamma * r * s1)[..., 0, :], r=(gamma * s2 / r)[..., 0, :])
    return dy * r, grads, dstats
  # The classic BN gradient, masked (norms/base.py, masked_standardize): every position's y
  # depends on the valid positions' mean and r.
  da = r * (dy - m * (gamma * s1 + y * (gamma * s2)) / n)
  if dmoments is not None:
    da = da + m * (jnp.expand_dims(dmoments['mean'], -2)
                   + 2.0 * y * jnp.expand_dims(dmoments['var'], -2) / r) / n
  return da, grads, None


# ----------------------------------------------------------------------------------------------
# The forward pieces, shared by the forward loop and the recomputation in the backward.


def _input_term(plan, p, inputs, mask, n, stats):
  """The normalized input term of a chunk of steps [K, B, 4H] (it does not depend on h, so it is
  computed for the chunk at once): (xn, (y, r) or None, moments or None)."""
  if plan.input is None:  # hoisted by the cell: `inputs` is the normalized term already
    return inputs, None, None
  return _site_forward(plan.input, inputs @ p['kernel_x'], mask, n[:, None, None],
                       p['sites']['input'],
                       None if stats is None else stats.get('input'), train=plan.train,
                       eps=plan.eps)


def _step_forward(plan, p, h_prev, c_prev, xn_t, mask_t, n_t, stats_t, probe_t, a_h=None):
  """One LSTM step -> ((h, c) before holding padded steps, residuals for the backward,
  moments). `a_h` = W_h h_{t-1} if the forward saved it (else it is computed from h_prev)."""
  site = functools.partial(_site_forward, train=plan.train, eps=plan.eps)
  moments = {}
  if a_h is None:
    a_h = h_prev @ p['kernel_h']
  hn, res_h, moments['recurrent'] = site(plan.recurrent, a_h, mask_t, n_t,
                                         p['sites']['recurrent'], stats_t.get('recurrent'))
  pre = xn_t + hn + p['bias']
  hidden = c_prev.shape[-1]
  acts = jnp.concatenate([jnp.tanh(pre[..., :hidden]), jax.nn.sigmoid(pre[..., hidden:])], -1)
  g, f, i, o = jnp.split(acts, 4, axis=-1)
  c = f * c_prev + i * g
  ch, res_c, moments['cell'] = site(plan.cell, c, mask_t, n_t, p['sites']['cell'],
                                    stats_t.get('cell'))
  tau = jnp.tanh(ch)
  h = o * tau
  if probe_t is not None:
    h = h + probe_t
  res = dict(acts=acts, tau=tau, recurrent=res_h, cell=res_c, a_h=a_h)
  return (h, c), res, {k: v for k, v in moments.items() if v is not None}


def _chunks(tree, chunk):
  """[T, ...] leaves -> [T' / chunk, chunk, ...], padded at the end to T' with copies of the last
  step, except the mask: 0 there. So padded steps are harmless (finite statistics, nothing to
  divide by zero): the forward holds the carry through them, the backward passes its cotangent
  through, and their outputs are cut off again (`_unchunk`)."""
  def split(path, a):
    pad = -a.shape[0] % chunk
    if pad:
      fill = (jnp.zeros_like(a[-1:]) if jax.tree_util.keystr(path) == "['mask']" else a[-1:])
      a = jnp.concatenate([a] + [fill] * pad)
    return a.reshape((a.shape[0] // chunk, chunk) + a.shape[1:])
  return jax.tree_util.tree_map_with_path(split, tree)


def _unchunk(tree, length):
  return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:length], tree)


def _rows(a):
  return a.reshape(-1, a.shape[-1])


# ----------------------------------------------------------------------------------------------
# The recurrence as one custom_vjp. Both loops run over chunks of `plan.chunk` steps: what does
# not depend on h is computed for a chunk at once (cache-sized [chunk, B, 4H] blocks), only the
# recurrence runs step by step.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(plan, p, carry0, inputs, mask, stats, probe):
  return _forward(plan, p, carry0, inputs, mask, stats, probe, save=False, residuals=False)[0]


def _forward(plan, p, carry0, inputs, mask, stats, probe, *, save, residuals=True):
  """-> ((final (h, c, norm), ys, moments), (h_{t-1}, c_{t-1} for every step, W_h h_{t-1} or
  None, the C++ loop's further residuals or None)). The carries are saved as they enter each
  step: the backward reads them there. `carry0` = (h_0, c_0, the streaming sites' sums: {} here).
  `save`: save W_h h_{t-1} too; `residuals=False` (the primal call): nothing is saved (unused
  outputs of the XLA loop are dropped by the compiler; the C++ loop is told)."""
  if plan.native:
    return cpu_lstm.forward(plan, p, carry0, inputs, mask, stats, probe, save=save,
                            residuals=residuals)

  def step(carry, x):
    h_prev, c_prev = carry
    (h, c), res, moments = _step_forward(plan, p, h_prev, c_prev, x['xn'], x['mask'], x['n'],
                                         x['stats'], x['probe'])
    keep = x['mask'][:, None] > 0  # padded steps hold the carry
    h, c = jnp.where(keep, h, h_prev), jnp.where(keep, c, c_prev)
    # Every site's count is the number of valid rows: stored once, below.
    moments = {k: dict(mean=m['mean'], var=m['var']) for k, m in moments.items()}
    return (h, c), dict(h_prev=h_prev, c_prev=c_prev, moments=moments,
                        a_h=res['a_h'] if save else None)

  def chunk(carry, xc):
    xn, _, moments_in = _input_term(plan, p, xc['inputs'], xc['mask'], xc['n'], xc['stats'])
    carry, seq = lax.scan(step, carry, dict(xc, xn=xn), unroll=plan.unroll)
    if moments_in is not None:
      seq['moments']['input'] = dict(mean=moments_in['mean'], var=moments_in['var'])
    return carry, seq

  count = jnp.sum(mask.astype(carry0[0].dtype), axis=1)  # valid rows per step
  xs = dict(inputs=inputs, mask=mask, n=jnp.maximum(count, 1.0), stats=stats, probe=probe)
  carry, seq = lax.scan(chunk, carry0[:2], _chunks(xs, plan.chunk))
  seq = _unchunk(seq, mask.shape[0])
  hs = jnp.concatenate([seq['h_prev'][1:], carry[0][None]])  # h_t
  ys = hs * mask[..., None].astype(hs.dtype)
  moments = {k: dict(m, count=count) for k, m in seq['moments'].items()}
  return (carry + ({},), ys, moments), (seq['h_prev'], seq['c_prev'], seq['a_h'], None)


def _value(v):
  return v.value if hasattr(v, 'perturbed') else v


def _fused_fwd(plan, p, carry0, inputs, mask, stats, probe):
  perturbed = dict(inputs=inputs.perturbed, stats=any(
      v.perturbed for v in jax.tree.leaves(stats, is_leaf=lambda v: hasattr(v, 'perturbed'))))
  p, carry0, inputs, mask, stats, probe = jax.tree.map(
      _value, (p, carry0, inputs, mask, stats, probe), is_leaf=lambda v: hasattr(v, 'perturbed'))
  out, residuals = _forward(plan, p, carry0, inputs, mask, stats, probe, save=not plan.remat)
  moments = out[2]
  if plan.native and plan.remat and plan.train:
    # remat trades time for memory: the C++ backward recomputes W_h h_{t-1} and W_x x_t, and
    # with them this batch's BN moments of each step (two more meetings of the threads per BN
    # site and step), so the [T, F] moments are not kept for it (sMNIST batch: 5.6 MB).
    moments = {s: m for s, m in moments.items() if plan.kind(s) != 'batch'}
  return out, (p, carry0, inputs, mask, stats, probe is not None, residuals, moments, perturbed)


def _zero(ct):
  return ct is None or isinstance(ct, SymbolicZero)


def _fused_bwd(plan, saved, cts):
  p, carry0, inputs, mask, stats, has_probe, residuals, moments, perturbed = saved
  h0, c0 = carry0[:2]
  h_prev, c_prev, a_h, extra = residuals
  (dh_T, dc_T, dnorm_T), dys, dmoments = cts
  dtype, length = h0.dtype, mask.shape[0]
  counts = jnp.sum(mask.astype(dtype), axis=1)
  dmom = {}
  for s, d in dmoments.items():  # symbolic zeros in a train step: skipped at trace time
    if not (_zero(d['mean']) and _zero(d['var'])):
      nonzero = d['var'] if _zero(d['mean']) else d['mean']
      dmom[s] = {k: (jnp.zeros_like(nonzero) if _zero(d[k]) else d[k]) for k in ('mean', 'var')}
  given = stats
  # The statistics the BN sites normalized with: population tables (evaluation) or this batch's
  # moments, with r = 1 / sqrt(var + eps) for all steps at once (absent where not kept: the C++
  # backward recomputes them).
  if plan.train:
    stats = {**stats, **{s: dict(mean=m['mean'], r=lax.rsqrt(m['var'] + plan.eps))
                         for s, m in moments.items() if plan.kind(s) == 'batch'}}
  if plan.native:
    zero_or = lambda ct: None if _zero(ct) else ct
    return cpu_lstm.backward(
        plan, p, carry0, inputs, mask, stats, given, has_probe, residuals, moments,
        (zero_or(dh_T), zero_or(dc_T), jax.tree.map(zero_or, dnorm_T,
                                                    is_leaf=lambda v: v is None or _zero(v))),
        zero_or(dys), dmom, want_inputs=plan.input is None or perturbed['inputs'],
        want_stats=perturbed['stats'])
  xs = dict(mask=mask, h_prev=h_prev, c_prev=c_prev, a_h=a_h, n=jnp.maximum(counts, 1.0),
            dy=None if _zero(dys) else dys, dmom=dmom, inputs=inputs, stats=stats)
  site_bwd = functools.partial(_site_backward, train=plan.train)
  p_in, p_rec, p_cell = (p['sites'].get('input'), p['sites']['recurrent'], p['sites']['cell'])

  def step(carry, x):
    """One step back through the cell: the recurrent part only."""
    dh, dc = carry
    # The step's activations again (elementwise, with the saved statistics), from the saved
    # W_h h_{t-1} or, with remat, from h_{t-1}.
    _, res_t, _ = _step_forward(plan, p, x['h_prev'], x['c_prev'], x['xn'], x['mask'], x['n'],
                                x['stats'], None, a_h=x['a_h'])
    m = x['mask'][:, None].astype(dtype)
    keep = m > 0
    if x['dy'] is not None:
      dh = dh + x['dy'] * m
    dh_new, dh_held = jnp.where(keep, dh, 0.0), jnp.where(keep, 0.0, dh)
    g, f, i, o = jnp.split(res_t['acts'], 4, axis=-1)
    tau = res_t['tau']
    dch = dh_new * o * (1.0 - tau * tau)
    dc_cell, g_cell, ds_cell = site_bwd(plan.cell, dch, res_t['cell'], m, x['n'], p_cell,
                                        x['dmom'].get('cell'))
    dct = jnp.where(keep, dc, 0.0) + dc_cell
    dc_prev = dct * f + jnp.where(keep, 0.0, dc)
    dpre = jnp.concatenate([dct * i * (1.0 - g * g), dct * x['c_prev'] * f * (1.0 - f),
                            dct * g * i * (1.0 - i), dh_new * tau * o * (1.0 - o)], -1)
    da_h, g_rec, ds_rec = site_bwd(plan.recurrent, dpre, res_t['recurrent'], m, x['n'], p_rec,
                                   x['dmom'].get('recurrent'))
    dh_prev = da_h @ p['kernel_h'].T + dh_held
    out = dict(dpre=dpre, da_h=None if plan.recurrent == 'identity' else da_h,
               grads=dict(recurrent=g_rec, cell=g_cell),
               dstats=dict(recurrent=ds_rec, cell=ds_cell),
               dprobe=dh_new if has_probe else None)
    return (dh_prev, dc_prev), out

  def chunk(carry, x):
    """`plan.chunk` steps back, then what does not feed the recurrence for all of them at once
    (dW_h, the bias, gain and shift sums, the input site; see the module docstring)."""
    (dh, dc), acc = carry
    xn, res_x, _ = _input_term(plan, p, x['inputs'], x['mask'], x['n'], x['stats'])
    (dh, dc), seq = lax.scan(step, (dh, dc), dict(x, xn=xn), reverse=True, unroll=plan.unroll)
    dpre = seq['dpre']
    da_h = dpre if seq['da_h'] is None else seq['da_h']
    acc = dict(acc, kernel_h=acc['kernel_h'] + _rows(x['h_prev']).T @ _rows(da_h),
               bias=acc['bias'] + jnp.sum(dpre, axis=(0, 1)))
    sites = dict(acc['sites'])
    for s in ('recurrent', 'cell'):
      sites[s] = {k: v + jnp.sum(seq['grads'][s][k], axis=0) for k, v in sites[s].items()}
    out = dict(dstats={s: v for s, v in seq['dstats'].items() if v is not None},
               dprobe=seq['dprobe'], dinputs=dpre)
    if plan.input is not None:
      m = x['mask'][..., None].astype(dtype)
      da_x, g_in, ds_in = site_bwd(plan.input, dpre, res_x, m, x['n'][:, None, None], p_in,
                                   x['dmom'].get('input'))
      sites['input'] = {k: v + jnp.sum(g_in[k], axis=0) for k, v in sites['input'].items()}
      if ds_in is not None:
        out['dstats']['input'] = ds_in
      acc['kernel_x'] = acc['kernel_x'] + _rows(x['inputs']).T @ _rows(da_x)
      out['dinputs'] = da_x @ p['kernel_x'].T if perturbed['inputs'] else None
    return ((dh, dc), dict(acc, sites=sites)), out

  acc = jax.tree.map(jnp.zeros_like, p)
  zeros = jnp.zeros_like(h0)
  carry = (zeros if _zero(dh_T) else dh_T, zeros if _zero(dc_T) else dc_T)
  ((dh0, dc0), dp), out = lax.scan(chunk, (carry, acc), _chunks(xs, plan.chunk), reverse=True)
  out = _unchunk(out, length)
  dstats = out['dstats'] if perturbed['stats'] else None
  return (dp, (dh0, dc0, {}), out['dinputs'], None, dstats, out['dprobe'])


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)
