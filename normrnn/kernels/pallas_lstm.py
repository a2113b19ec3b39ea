"""The whole recurrence of the normalized LSTM as one Pallas kernel, with a hand-written backward.

Computes, for every step t of a [time, batch] sequence (Cooijmans et al. 2016, eqs. 6-8; gate
order (g, f, i, o) as `normrnn.cells.NormLSTMCell`):

    (g, f, i, o) = N_h(W_h h_{t-1}) + a_x[t] + b        a_x: the normalized input term, hoisted
    c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
    h_t = sigma(o) * tanh(N_c(c_t))
    padded steps (mask 0) hold (h, c); their statistics weight is 0

with N_h, N_c each one of
    'none'   identity (the cell site adds its learned beta_c: h = sigma(o) tanh(c + beta_c))
    'batch'  per-time-step batch normalization (Cooijmans et al. 2016 eqs. 6-8): in training the
             masked mean / biased variance over the batch at this step, returned as per-step
             moments for the population tables; in evaluation the population statistics of
             this position (the [time, F] rows the scan would index)
    'layer'  layer normalization over the site's features (Ba et al. 2016, supp. eqs. 20-22:
             all 4H gate units jointly at the recurrent site, the H units at the cell site).
The input term a_x = N_x(W_x x_t) of every step is computed before the kernel by the cell's own
`hoist` (any input-site scheme, as the scan does), so the kernel never sees W_x.

Kernel design (`lstm_recurrence`):
  * One `pallas_call` runs all T steps: the time loop is a `lax.fori_loop` inside the kernel, the
    state (h, c) stays in registers across steps, and each step writes its h_t and c_t (and, for
    batch-normalized sites in training, that step's mean and variance) to the outputs.
  * Layout: gate-major and padded to powers of two, as Triton requires of every tensor (and >= 16
    for its dot): W_h [4, Hp, Hp], a_x [T, 4, Bp, Hp], Hp = max(16, 2^ceil(log2 H)), Bp likewise
    for the batch. Padded units have zero weights, gains and shifts, so they stay exactly 0;
    padded batch rows have mask 0, so they never enter a statistic. Every gate is its own
    [Bp, Hp] matmul (no slicing of a [Bp, 4Hp] tensor: Triton cannot slice registers).
  * Recurrent weights: with `weights='resident'` W_h is loaded once, before the time loop, as a
    loop-invariant value (the compiler keeps it in registers / shared memory); with 'streamed'
    each step re-reads it from global memory, where after the first step it sits in L2 (60 MB on
    an H200) and each gate's [Hp, Hp] tile is staged through shared memory for its matmul.
    'auto' (the default) loads it once when the padded W_h is at most RESIDENT_BYTES (Hp <= 64:
    64 KiB in float32) and streams it otherwise. sMNIST's H = 100 (Hp = 128) gives 256 KiB, more
    than one SM's registers (256 KiB, shared with everything else) or shared memory (228 KiB), so
    in float32 it cannot stay on chip; streamed, it is 256 KiB of L2 reads per step (estimated
    at 1-2 us; scripts/gpu_check.py times both placements).
  * Too large for the kernel: a streamed gate tile (a matmul operand, which Triton stages through
    shared memory) is 64 KiB at Hp = 128 but 256 KiB, more than an SM has, at Hp = 256, so the
    kernel stops at MAX_HIDDEN = 128 and `supports` refuses more (so the config validation
    does, naming model.kernel=scan). At PTB's H = 1000 (4H x H float32 = 16 MB) one thread
    block would in any case stream megabytes per step, far slower than the scan's per-step
    matmul over all SMs. Splitting the 4H units over a grid of thread blocks would need a
    grid-wide barrier every step (a cooperative launch): Pallas exposes none, and interpret
    mode runs grid programs one after another, so such a kernel could not be verified without
    a GPU; not done.
  * Grid: sites with batch statistics in training need the whole batch in one program (grid of
    1); otherwise rows are independent and the batch is split into blocks of `batch_block` rows
    (default 16), one program each, so several SMs work at once.
  * Backward: a second kernel runs the reverse time loop. It recomputes each step's gates from
    the saved h_{t-1}, c_{t-1} (one extra small matmul per step instead of saving [T, B, 4H]
    activations; batch-normalized training steps reuse the saved per-step moments), back-
    propagates through the hold of padded steps, the gates and both normalizations (the masked BN
    gradient of `normrnn.norms.base.masked_standardize`, the LN gradient, the moments' own
    cotangents), accumulates the gain / shift gradients, and writes dL/d a_x[t] and dL/d(W_h
    h_{t-1})[t]. The weight gradient is then ONE matmul outside the kernel over all steps,
    dW_h = sum_t h_{t-1}^T dA_t, and the bias gradient a sum of dL/d a_x. `jax.custom_vjp` ties
    the two kernels together (Pallas kernels are not differentiated automatically).
  * Matmul precision: 'float32' (the default: IEEE float32, Triton's FMA path) or 'tf32' (tensor
    cores, inputs rounded to a 10-bit mantissa). The dtype is float32 on the GPU; interpret mode
    also runs float64 (the tests compare with the scan in float64).

Backend: the Pallas **Triton** backend (`jax.experimental.pallas.triton.CompilerParams`, passed
explicitly so that Pallas does not route the call to Mosaic GPU, its default GPU backend in jax
0.10). The kernel body is plain JAX on refs (loads/stores, matmuls, reductions over either axis,
elementwise math, `fori_loop`); the same body runs in Pallas interpret mode on CPU (chosen
automatically when JAX's default backend is the CPU) and lowers to Triton IR for an H200 (tested
on CPU: both kernels lower to verified Triton modules for platform 'cuda'). A Mosaic GPU kernel
would be written against warpgroup-level register layouts, swizzled shared-memory operands and
explicit barriers: its interpret mode is a separate simulator, and whether its layouts allow this
cell's reductions (over the batch rows for BN, over the feature columns for LN, of the same
matmul result) is only known once it compiles on a GPU, which this code could not be tested on.
The Pallas changelog of jax 0.11 deprecates the Triton backend (to be removed later); the GPU
machine's jax is 0.11.2, and scripts/gpu_check.py records an error there if it is gone. Moving
the kernel to Mosaic GPU is the follow-up once a GPU is at hand. docs/benchmarks.md ("GPU") has
the measurement plan.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from normrnn import cells
from normrnn.norms import batch, layer, none

SITE_KINDS = ('none', 'batch', 'layer')
MIN_TILE = 16  # Triton's dot needs every matmul dimension >= 16
MAX_HIDDEN = 128  # one gate's streamed W_h tile must fit shared memory (module docstring)
RESIDENT_BYTES = 64 * 1024  # padded float32 W_h up to this size is loaded once, before the loop
PRECISIONS = {'float32': jax.lax.Precision.HIGHEST, 'tf32': jax.lax.Precision.DEFAULT}


def _pow2(n: int) -> int:
  return max(MIN_TILE, 1 << max(0, n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Static description of one kernel instance (hashable: a `custom_vjp` nondiff argument).

  Attributes:
    hidden: H, the true number of units.
    recurrent, cell: the kind of normalization at the recurrent and cell sites (SITE_KINDS).
    train: batch statistics (True) or population statistics (False) at 'batch' sites.
    eps: the normalizations' epsilon.
    precision: 'float32' or 'tf32' (the in-kernel matmuls).
    weights: 'auto', 'resident' or 'streamed' (where W_h lives during the time loop).
    batch_block: rows per program where rows are independent (0 = 16).
    interpret: run in Pallas interpret mode; None = when JAX's default backend is the CPU.
    num_warps, num_stages: Triton compiler parameters (num_warps None = 8 for programs of 64
      or more rows, else 4; num_stages None = Pallas' default).
  """
  hidden: int
  recurrent: str = 'none'
  cell: str = 'none'
  train: bool = True
  eps: float = 1e-5
  precision: str = 'float32'
  weights: str = 'auto'
  batch_block: int = 0
  interpret: bool | None = None
  num_warps: int | None = None
  num_stages: int | None = None

  def __post_init__(self):
    for site in (self.recurrent, self.cell):
      if site not in SITE_KINDS:
        raise ValueError(f'unknown site kind {site!r}; valid: {", ".join(SITE_KINDS)}')
    if self.precision not in PRECISIONS:
      raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {self.precision!r}')
    if self.weights not in ('auto', 'resident', 'streamed'):
      raise ValueError(f"weights must be 'auto', 'resident' or 'streamed', got {self.weights!r}")

  @property
  def hp(self) -> int:
    return _pow2(self.hidden)

  def batch_stats(self, kind: str) -> bool:
    """True if a site of this kind normalizes with this batch's statistics."""
    return kind == 'batch' and self.train

  def pop_stats(self, kind: str) -> bool:
    return kind == 'batch' and not self.train

  @property
  def whole_batch(self) -> bool:
    return self.batch_stats(self.recurrent) or self.batch_stats(self.cell)

  @property
  def resident(self) -> bool:
    if self.weights == 'auto':
      return 4 * self.hp * self.hp * 4 <= RESIDENT_BYTES
    return self.weights == 'resident'

  def block_rows(self, bp: int) -> int:
    return bp if self.whole_batch else min(bp, _pow2(self.batch_block or MIN_TILE))

  def use_interpret(self) -> bool:
    return jax.default_backend() == 'cpu' if self.interpret is None else self.interpret


# ----------------------------------------------------------------------------------------------
# Normalization inside the kernels. A site's features are a list of [rows, Hp] blocks (the four
# gates at the recurrent site, one block at the cell site); `fmask` [1, Hp] marks real units.


def _norm_fwd(kind, cfg, blocks, m, stats, fmask, nfeat):
  """-> (z, saved, moments): the standardized blocks; what the backward needs (('batch', list of
  r [1, Hp]), ('layer', r [rows, 1]) or None); this batch's (means, variances) when computed
  here. `stats` are per-step (means, variances) lists for 'batch' (population statistics in
  evaluation, the saved batch moments in the backward's recompute), or None (training forward:
  computed here, masked)."""
  eps = cfg.eps
  if kind == 'none':
    return blocks, None, None
  if kind == 'layer':
    total = sum(jnp.sum(a, axis=1, keepdims=True) for a in blocks)  # padded units are 0
    mean = total / nfeat
    var = sum(jnp.sum(jnp.square(a - mean) * fmask, axis=1, keepdims=True) for a in blocks) / nfeat
    r = jax.lax.rsqrt(var + eps)
    return [(a - mean) * r for a in blocks], ('layer', r), None
  # 'batch': per-feature statistics over the batch rows
  if stats is not None:
    means, variances = stats
    rs = [jax.lax.rsqrt(v[None, :] + eps) for v in variances]
    return [(a - mu[None, :]) * r for a, mu, r in zip(blocks, means, rs)], ('batch', rs), None
  n = jnp.maximum(jnp.sum(m), 1.0)
  means = [jnp.sum(a * m, axis=0) / n for a in blocks]
  variances = [jnp.sum(jnp.square(a - mu[None, :]) * m, axis=0) / n
               for a, mu in zip(blocks, means)]
  rs = [jax.lax.rsqrt(v[None, :] + eps) for v in variances]
  z = [(a - mu[None, :]) * r for a, mu, r in zip(blocks, means, rs)]
  return z, ('batch', rs), (means, variances)


def _norm_bwd(kind, cfg, dz, z, saved, m, fmask, nfeat, dmoments):
  """d a from d z (z = standardized a), for the forms of `_norm_fwd`. With batch statistics,
  every row's z depends on the valid rows' moments; `dmoments` are the cotangents of the
  returned per-step (mean, var) (zero unless a loss uses the moments)."""
  if kind == 'none':
    return dz
  if kind == 'layer':
    _, r = saved
    s1 = sum(jnp.sum(d * fmask, axis=1, keepdims=True) for d in dz) / nfeat
    s2 = sum(jnp.sum(d * zz * fmask, axis=1, keepdims=True) for d, zz in zip(dz, z)) / nfeat
    return [r * (d - (s1 + zz * s2)) * fmask for d, zz in zip(dz, z)]
  _, rs = saved
  if not cfg.train:  # population statistics: a constant affine map
    return [d * r for d, r in zip(dz, rs)]
  n = jnp.maximum(jnp.sum(m), 1.0)
  out = []
  for k, (d, zz, r) in enumerate(zip(dz, z, rs)):
    s1 = jnp.sum(d, axis=0, keepdims=True) / n
    s2 = jnp.sum(d * zz, axis=0, keepdims=True) / n
    da = r * (d - m * (s1 + zz * s2))
    dmean, dvar = dmoments[0][k], dmoments[1][k]
    out.append(da + m * (dmean[None, :] + 2.0 * zz * dvar[None, :] / r) / n)
  return out


def _scale(kind, z, gain, shift):
  """gamma * z (+ beta) at normalized sites; identity (+ beta) for 'none'."""
  if kind != 'none':
    z = [g[None, :] * zz for zz, g in zip(z, gain)]
  if shift is not None:
    z = [zz + shift[None, :] for zz in z]
  return z


# ----------------------------------------------------------------------------------------------
# The kernels. `names` lists the refs in order: the inputs, then the outputs (see `_call`).


def _load_stats(refs, prefix, t, nblocks):
  """Per-step (mean list, var list) rows from [T, 4, Hp] or [T, Hp] refs."""
  mean, var = refs[prefix + '_mean'], refs[prefix + '_var']
  if nblocks == 1:
    return [mean[t]], [var[t]]
  return [mean[t, k] for k in range(4)], [var[t, k] for k in range(4)]


def _step(cfg, refs, t, h, c, w):
  """One forward step from (h, c) = (h_{t-1}, c_{t-1}); returns everything the forward and the
  backward kernels need."""
  prec = PRECISIONS[cfg.precision]
  nh = float(4 * cfg.hidden)
  m = refs['mask'][t][:, None]
  fmask = refs['fmask'][...][None, :]
  weights = w if w is not None else [refs['w'][k] for k in range(4)]
  a = [jnp.dot(h, wk, precision=prec) for wk in weights]
  rec_stats = None
  if cfg.pop_stats(cfg.recurrent) or (cfg.batch_stats(cfg.recurrent) and 'rec_mean' in refs):
    rec_stats = _load_stats(refs, 'rec', t, 4)
  zr, saved_r, mom_r = _norm_fwd(cfg.recurrent, cfg, a, m, rec_stats, fmask, nh)
  gains_h = [refs['gain_h'][k] for k in range(4)]
  yr = _scale(cfg.recurrent, zr, gains_h, None)
  bias = [refs['bias'][k] for k in range(4)]
  pre = [refs['x'][t, k] + yr[k] + bias[k][None, :] for k in range(4)]
  g = jnp.tanh(pre[0])
  f, i, o = (jax.nn.sigmoid(p) for p in pre[1:])
  c_new = f * c + i * g
  cell_stats = None
  if cfg.pop_stats(cfg.cell) or (cfg.batch_stats(cfg.cell) and 'cell_mean' in refs):
    cell_stats = _load_stats(refs, 'cell', t, 1)
  zc, saved_c, mom_c = _norm_fwd(cfg.cell, cfg, [c_new], m, cell_stats, fmask, float(cfg.hidden))
  c_hat = _scale(cfg.cell, zc, [refs['gain_c'][...]], refs['shift_c'][...])[0]
  th = jnp.tanh(c_hat)
  h_new = o * th
  if 'probe' in refs:
    h_new = h_new + refs['probe'][t]
  return dict(m=m, fmask=fmask, weights=weights, zr=zr, saved_r=saved_r, mom_r=mom_r,
              gains_h=gains_h, g=g, f=f, i=i, o=o, c_new=c_new, zc=zc, saved_c=saved_c,
              mom_c=mom_c, th=th, h_new=h_new)


def _forward_kernel(cfg, names, *refs):
  refs = dict(zip(names, refs))
  w = [refs['w'][k] for k in range(4)] if cfg.resident else None
  length = refs['x'].shape[0]

  def body(t, carry):
    h, c = carry
    s = _step(cfg, refs, t, h, c, w)
    keep = s['m'] > 0
    h = jnp.where(keep, s['h_new'], h)
    c = jnp.where(keep, s['c_new'], c)
    refs['hs'][t] = h
    refs['cs'][t] = c
    for prefix, mom, nblocks in (('out_rec', s['mom_r'], 4), ('out_cell', s['mom_c'], 1)):
      if mom is None:
        continue
      for k in range(nblocks):
        index = (t, k) if nblocks == 4 else t
        refs[prefix + '_mean'][index] = mom[0][k]
        refs[prefix + '_var'][index] = mom[1][k]
    return h, c

  jax.lax.fori_loop(0, length, body, (refs['h0'][...], refs['c0'][...]))


def _backward_kernel(cfg, names, *refs):
  refs = dict(zip(names, refs))
  prec = PRECISIONS[cfg.precision]
  w = [refs['w'][k] for k in range(4)] if cfg.resident else None
  length = refs['x'].shape[0]
  nh, nc = float(4 * cfg.hidden), float(cfg.hidden)
  hp, dtype = refs['h0'].shape[-1], refs['h0'].dtype
  zeros_row = jnp.zeros((hp,), dtype)

  def body(s_idx, carry):
    dh, dc, acc_gh, acc_gc, acc_bc = carry
    t = length - 1 - s_idx
    h_prev, c_prev = refs['h_prev'][t], refs['c_prev'][t]
    s = _step(cfg, refs, t, h_prev, c_prev, w)
    m, fmask = s['m'], s['fmask']
    keep = m > 0
    dh_t = dh + refs['d_hs'][t]
    dc_t = dc + refs['d_cs'][t]
    dh_new = jnp.where(keep, dh_t, 0.0)
    dc_held = jnp.where(keep, dc_t, 0.0)
    if 'dprobe' in refs:
      refs['dprobe'][t] = dh_new
    d_o = dh_new * s['th']
    dc_hat = dh_new * s['o'] * (1.0 - jnp.square(s['th']))
    acc_bc = acc_bc + jnp.sum(dc_hat, axis=0)
    if cfg.cell != 'none':
      acc_gc = acc_gc + jnp.sum(dc_hat * s['zc'][0], axis=0)
      dzc = [refs['gain_c'][...][None, :] * dc_hat]
    else:
      dzc = [dc_hat]
    dmom_c = None
    if cfg.batch_stats(cfg.cell):
      dmom_c = ([refs['d_cell_mean'][t]], [refs['d_cell_var'][t]])
    dc_new = _norm_bwd(cfg.cell, cfg, dzc, s['zc'], s['saved_c'], m, fmask, nc, dmom_c)[0]
    dc_new = dc_new + dc_held
    f, i, g, o = s['f'], s['i'], s['g'], s['o']
    dpre = [dc_new * i * (1.0 - jnp.square(g)),
            dc_new * c_prev * f * (1.0 - f),
            dc_new * g * i * (1.0 - i),
            d_o * o * (1.0 - o)]
    for k in range(4):
      refs['dx'][t, k] = dpre[k]
    if cfg.recurrent != 'none':
      acc_gh = [acc + jnp.sum(d * z, axis=0) for acc, d, z in zip(acc_gh, dpre, s['zr'])]
      dzr = [gk[None, :] * d for gk, d in zip(s['gains_h'], dpre)]
    else:
      dzr = dpre
    dmom_r = None
    if cfg.batch_stats(cfg.recurrent):
      dmom_r = ([refs['d_rec_mean'][t, k] for k in range(4)],
                [refs['d_rec_var'][t, k] for k in range(4)])
    da = _norm_bwd(cfg.recurrent, cfg, dzr, s['zr'], s['saved_r'], m, fmask, nh, dmom_r)
    if cfg.recurrent != 'none':  # else da == dx: the caller uses dx
      for k in range(4):
        refs['da'][t, k] = da[k]
    dh_prev = jnp.where(keep, 0.0, dh_t)
    for k in range(4):  # da_k @ W_k^T
      dh_prev = dh_prev + jax.lax.dot_general(da[k], s['weights'][k], (((1,), (1,)), ((), ())),
                                              precision=prec)
    dc_prev = dc_new * f + jnp.where(keep, 0.0, dc_t)
    return dh_prev, dc_prev, acc_gh, acc_gc, acc_bc

  zeros = jnp.zeros(refs['h0'].shape, dtype)
  init = (zeros, zeros, [zeros_row] * 4, zeros_row, zeros_row)
  dh, dc, acc_gh, acc_gc, acc_bc = jax.lax.fori_loop(0, length, body, init)
  refs['dh0'][...] = dh
  refs['dc0'][...] = dc
  for k in range(4):
    refs['acc_gain_h'][k] = acc_gh[k]
  refs['acc_gain_c'][...] = acc_gc
  refs['acc_shift_c'][...] = acc_bc


# ----------------------------------------------------------------------------------------------
# pallas_call plumbing: which arrays go in, how they are blocked over the batch grid.

# Batch axis of every array the kernels take or give (None: not split over the batch grid).
_BATCH_AXIS = dict(x=2, mask=1, h0=0, c0=0, probe=1, h_prev=1, c_prev=1, hs=1, cs=1, d_hs=1,
                   d_cs=1, dx=2, da=2, dh0=0, dc0=0, dprobe=1)
# Per-program accumulators: [programs, ...], one block each.
_PER_PROGRAM = ('acc_gain_h', 'acc_gain_c', 'acc_shift_c')


def _spec(name, shape, rows):
  axis = _BATCH_AXIS.get(name)
  ndim = len(shape)
  if name in _PER_PROGRAM:
    return pl.BlockSpec((pl.squeezed,) + tuple(shape[1:]),
                        lambda i, n=ndim: (i,) + (0,) * (n - 1))
  if axis is None:
    return pl.BlockSpec(tuple(shape), lambda i, n=ndim: (0,) * n)
  block = tuple(rows if d == axis else s for d, s in enumerate(shape))
  return pl.BlockSpec(block, lambda i, n=ndim, a=axis: tuple(i if d == a else 0 for d in range(n)))


def _call(kernel, cfg, inputs: dict, outputs: dict, name: str):
  """Runs `kernel` over the batch grid. inputs: name -> array; outputs: name -> ShapeDtypeStruct."""
  bp = inputs['h0'].shape[0]
  rows = cfg.block_rows(bp)
  in_names, out_names = list(inputs), list(outputs)
  warps = cfg.num_warps or (8 if rows >= 64 else 4)
  params = pltriton.CompilerParams(num_warps=warps, num_stages=cfg.num_stages)
  fn = pl.pallas_call(
      functools.partial(kernel, cfg, in_names + out_names),
      out_shape=[outputs[k] for k in out_names],
      grid=(bp // rows,),
      in_specs=[_spec(k, v.shape, rows) for k, v in inputs.items()],
      out_specs=[_spec(k, v.shape, rows) for k, v in outputs.items()],
      interpret=cfg.use_interpret(), compiler_params=params, name=name)
  return dict(zip(out_names, fn(*inputs.values())))


def _forward(cfg, p):
  """The forward kernel on padded arrays `p`; returns {'hs', 'cs'} (+ batch moments)."""
  t, bp, hp = p['x'].shape[0], p['h0'].shape[0], p['h0'].shape[1]
  inputs = {k: p[k] for k in ('x', 'mask', 'h0', 'c0', 'w', 'bias', 'gain_h', 'gain_c',
                                'shift_c', 'fmask', 'probe') if k in p}
  for site, prefix in ((cfg.recurrent, 'rec'), (cfg.cell, 'cell')):
    if cfg.pop_stats(site):
      inputs[prefix + '_mean'], inputs[prefix + '_var'] = p[prefix + '_mean'], p[prefix + '_var']
  f32 = p['h0'].dtype
  outputs = dict(hs=jax.ShapeDtypeStruct((t, bp, hp), f32),
                 cs=jax.ShapeDtypeStruct((t, bp, hp), f32))
  if cfg.batch_stats(cfg.recurrent):
    outputs['out_rec_mean'] = outputs['out_rec_var'] = jax.ShapeDtypeStruct((t, 4, hp), f32)
  if cfg.batch_stats(cfg.cell):
    outputs['out_cell_mean'] = outputs['out_cell_var'] = jax.ShapeDtypeStruct((t, hp), f32)
  out = _call(_forward_kernel, cfg, inputs, outputs, 'normrnn_lstm_forward')
  moments = {k[4:]: v for k, v in out.items() if k.startswith('out_')}
  return out['hs'], out['cs'], moments


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(cfg, p):
  """(hs, cs, moments) of the padded problem `p` (a dict of arrays, see `lstm_recurrence`)."""
  return _forward(cfg, p)


def _recurrence_fwd(cfg, p):
  hs, cs, moments = _forward(cfg, p)
  return (hs, cs, moments), (p, hs, cs, moments)


def _recurrence_bwd(cfg, res, cts):
  p, hs, cs, moments = res
  d_hs, d_cs, d_moments = cts
  t, bp, hp = hs.shape
  h_prev = jnp.concatenate([p['h0'][None], hs[:-1]], axis=0)
  c_prev = jnp.concatenate([p['c0'][None], cs[:-1]], axis=0)
  inputs = {k: p[k] for k in ('x', 'mask', 'h0', 'w', 'bias', 'gain_h', 'gain_c', 'shift_c',
                                'fmask', 'probe') if k in p}
  inputs.update(h_prev=h_prev, c_prev=c_prev, d_hs=d_hs, d_cs=d_cs)
  for site, prefix in ((cfg.recurrent, 'rec'), (cfg.cell, 'cell')):
    if cfg.pop_stats(site):
      inputs[prefix + '_mean'], inputs[prefix + '_var'] = p[prefix + '_mean'], p[prefix + '_var']
    elif cfg.batch_stats(site):  # the recompute normalizes with the saved batch moments
      inputs[prefix + '_mean'], inputs[prefix + '_var'] = moments[prefix + '_mean'], moments[
          prefix + '_var']
      inputs['d_' + prefix + '_mean'] = d_moments[prefix + '_mean']
      inputs['d_' + prefix + '_var'] = d_moments[prefix + '_var']
  f32 = hs.dtype
  programs = bp // cfg.block_rows(bp)
  outputs = dict(dx=jax.ShapeDtypeStruct((t, 4, bp, hp), f32),
                 dh0=jax.ShapeDtypeStruct((bp, hp), f32),
                 dc0=jax.ShapeDtypeStruct((bp, hp), f32),
                 acc_gain_h=jax.ShapeDtypeStruct((programs, 4, hp), f32),
                 acc_gain_c=jax.ShapeDtypeStruct((programs, hp), f32),
                 acc_shift_c=jax.ShapeDtypeStruct((programs, hp), f32))
  if cfg.recurrent != 'none':
    outputs['da'] = jax.ShapeDtypeStruct((t, 4, bp, hp), f32)
  if 'probe' in p:
    outputs['dprobe'] = jax.ShapeDtypeStruct((t, bp, hp), f32)
  out = _call(_backward_kernel, cfg, inputs, outputs, 'normrnn_lstm_backward')
  da = out.get('da', out['dx'])
  # The weight gradient as one matmul over all steps and rows: dW_k = sum_t h_{t-1}^T dA_{t,k}.
  d_w = jnp.einsum('tbh,tkbj->khj', h_prev, da, precision=jax.lax.Precision.HIGHEST)
  grads = jax.tree.map(jnp.zeros_like, p)
  grads.update(x=out['dx'], h0=out['dh0'], c0=out['dc0'], w=d_w,
               bias=jnp.sum(out['dx'], axis=(0, 2)),
               gain_h=jnp.sum(out['acc_gain_h'], axis=0),
               gain_c=jnp.sum(out['acc_gain_c'], axis=0),
               shift_c=jnp.sum(out['acc_shift_c'], axis=0))
  if 'probe' in p:
    grads['probe'] = out['dprobe']
  return (grads,)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# ----------------------------------------------------------------------------------------------
# The public entry point: unpadded arrays in the layout of `normrnn.cells.NormLSTMCell`.


def _gates(a, hp):
  """[..., 4H] (gate-major columns g, f, i, o) -> [..., 4, Hp] zero-padded."""
  h = a.shape[-1] // 4
  a = a.reshape(a.shape[:-1] + (4, h))
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, hp - h)])


def _pad(a, shape):
  return jnp.pad(a, [(0, s - d) for d, s in zip(a.shape, shape)])


def lstm_recurrence(x_term, mask, h0, c0, kernel_h, bias, *, cfg: KernelConfig,
                    recurrent_gain=None, cell_gain=None, cell_shift=None,
                    recurrent_stats=None, cell_stats=None, probe=None):
  """Runs the normalized LSTM over all steps in one Pallas kernel (differentiable).

  Args:
    x_term: [time, batch, 4H] the normalized input term N_x(W_x x_t) of every step (no bias).
      Its dtype is the computation's (float32; float64 in interpret mode, for tests).
    mask: [time, batch], 1 for valid steps (padded steps hold the state; the value weights the
      batch statistics, as in `normrnn.norms.base.masked_moments`).
    h0, c0: [batch, H] the initial state.
    kernel_h: [H, 4H] W_h (after the scheme's kernel transform); bias: [4H].
    cfg: the static kernel configuration (`cfg.hidden` must be H).
    recurrent_gain: [4H] gamma_h ('batch'/'layer' recurrent site).
    cell_gain, cell_shift: [H] gamma_c ('batch'/'layer') and beta_c (every cell kind).
    recurrent_stats, cell_stats: {'mean', 'var'} per-step population statistics [time, F] for
      'batch' sites in evaluation (the rows of the tables at each step's position).
    probe: optional [time, batch, H] added to h_t before the hold (its gradient is dL/dh_t).

  Returns:
    hs, cs: [time, batch, H] the (held) state after every step; the outputs are hs * mask and
      the final carry is (hs[-1], cs[-1]).
    moments: {'recurrent'|'cell': {'mean', 'var' [time, F], 'count' [time]}} for the sites with
      batch statistics in training, as the scan returns them.
  """
  length, batch, four_h = x_term.shape
  h = cfg.hidden
  if four_h != 4 * h or kernel_h.shape != (h, 4 * h):
    raise ValueError(f'x_term [T, B, {4 * h}] and kernel_h [{h}, {4 * h}] expected for hidden={h}, '
                     f'got {x_term.shape} and {kernel_h.shape}')
  hp, bp = cfg.hp, _pow2(batch)
  dt = jnp.result_type(x_term)
  cast = lambda a: jnp.asarray(a).astype(dt)
  ones4, ones1 = jnp.ones((4 * h,), dt), jnp.ones((h,), dt)
  p = dict(
      x=_pad(jnp.swapaxes(_gates(cast(x_term), hp), 1, 2), (length, 4, bp, hp)),
      mask=_pad(cast(mask), (length, bp)),
      h0=_pad(cast(h0), (bp, hp)), c0=_pad(cast(c0), (bp, hp)),
      w=_pad(jnp.swapaxes(_gates(cast(kernel_h), hp), 0, 1), (4, hp, hp)),
      bias=_gates(cast(bias), hp),
      # Padded units have gain and shift 0, so they stay exactly 0.
      gain_h=_gates(ones4 if recurrent_gain is None else cast(recurrent_gain), hp),
      gain_c=_pad(ones1 if cell_gain is None else cast(cell_gain), (hp,)),
      shift_c=_pad(jnp.zeros((h,), dt) if cell_shift is None else cast(cell_shift), (hp,)),
      fmask=_pad(ones1, (hp,)))
  if probe is not None:
    p['probe'] = _pad(cast(probe), (length, bp, hp))
  for site, prefix, stats, gates in ((cfg.recurrent, 'rec', recurrent_stats, True),
                                     (cfg.cell, 'cell', cell_stats, False)):
    if cfg.pop_stats(site):
      if stats is None:
        raise ValueError(f'{prefix} site: population statistics needed in evaluation')
      pad = (lambda a: _gates(a, hp)) if gates else (lambda a: _pad(a, (length, hp)))
      p[prefix + '_mean'] = pad(cast(stats['mean']))
      p[prefix + '_var'] = pad(cast(stats['var']) - 1.0) + 1.0  # padded units: variance 1
  hs, cs, moments = _recurrence(cfg, p)
  hs, cs = hs[:, :batch, :h], cs[:, :batch, :h]
  count = jnp.sum(cast(mask), axis=1)
  out = {}
  if 'rec_mean' in moments:
    out['recurrent'] = dict(mean=moments['rec_mean'][:, :, :h].reshape(length, 4 * h),
                            var=moments['rec_var'][:, :, :h].reshape(length, 4 * h), count=count)
  if 'cell_mean' in moments:
    out['cell'] = dict(mean=moments['cell_mean'][:, :h], var=moments['cell_var'][:, :h],
                       count=count)
  return hs, cs, out


# ----------------------------------------------------------------------------------------------
# The registry entry (`normrnn.kernels.KERNELS['pallas']`): `Recurrent`'s interface.

# The site modules the kernels implement, by exact class (a subclass may change the maths).
SITE_CLASSES = {none.Identity: 'none', batch.BatchStep: 'batch', layer.LayerNorm: 'layer'}


def supports(cell: str, scheme, *, hoist_input: bool, remat: bool, unroll: int, hidden: int,
             train: bool = True) -> str | None:
  """None if the Pallas kernel runs `cell` with `scheme` and these settings, else why not.

  Runs: the LSTM cell with, at the recurrent and cell sites, none.Identity, batch.BatchStep
  (batch statistics in training, per-step population tables in evaluation) or layer.LayerNorm;
  an input term hoisted before the loop by any scheme (hoist_input=True, or sequence-wise BN),
  or, with hoist_input=False, one of those three modules (the kernel then computes the input
  term for all steps before the loop: same values); any kernel transform (weight norm); both
  modes; masks, the reverse direction (`Recurrent` reverses the valid prefix around any loop),
  h_0 noise, a probe, chunked evaluation. So: none, batch, batch_input, layer, weight, sequence
  and per-site composites of these. Not: cosine, streaming, the GRU, the tanh RNN; unroll > 1
  (the kernel's time loop is not unrolled); hidden > MAX_HIDDEN. remat either way: the backward
  kernel always recomputes each step from the saved h_{t-1}, c_{t-1}, which is what remat asks
  for.
  """
  del remat, train
  if cell != 'lstm':
    return f'the pallas kernel implements the LSTM cell only, not {cell!r}'
  if unroll != 1:
    return f'the pallas kernel runs its time loop inside one kernel, not unrolled (unroll={unroll})'
  if hidden > MAX_HIDDEN:
    return (f'the pallas kernel supports hidden <= {MAX_HIDDEN} (one gate\'s W_h tile must fit in '
            f'shared memory), got {hidden}')
  hoisted = hoist_input or scheme.input.needs_whole_sequence
  for site in ('input', 'recurrent', 'cell'):
    if site == 'input' and hoisted:
      continue
    cls = getattr(scheme, site)
    if cls not in SITE_CLASSES:
      return f'the pallas kernel does not implement {cls.__name__} at the {site} site'
  return None


def run(cell, carry0, xs, consts, *, unroll: int, remat: bool):
  """The kernel with the scan's interface (`normrnn.recurrent.Recurrent`): `cell` the bound
  NormLSTMCell, `carry0` its initial carry, `xs` the time-major scanned inputs {'inputs', 'mask',
  'stats', 'probe'?}, `consts` the hoisted constants. Returns (carry, (ys [T, B, H] zero at
  padded steps, moments {site: {'mean', 'var', 'count'}} of the sites computed here))."""
  del unroll, remat  # see `supports` (`Recurrent` checks it, hidden size included, first)
  scheme = cell.scheme
  params = cell.variables['params']
  inputs, mask, stats = xs['inputs'], xs['mask'], xs['stats']
  moments = {}
  carry = carry0
  if cells.input_in_loop(cell):
    # The step would normalize W_x x_t itself; computed here for all steps at once (the hoisted
    # path of `cells.NormLSTMCell.hoist`, equal values).
    a = jnp.einsum('tbd,dk->tbk', inputs, consts['cell']['kernel_x'])
    inputs, mom, state = cell.input_norm(a, x=inputs, mask=mask, stats=stats.get('input'),
                                         state=carry0['norm']['input'])
    carry = dict(carry0, norm=dict(carry0['norm'], input=state))
    if mom is not None:
      moments['input'] = mom
  site_params = lambda name: params.get(name, {})
  cfg = KernelConfig(hidden=cell.hidden, recurrent=SITE_CLASSES[scheme.recurrent],
                     cell=SITE_CLASSES[scheme.cell], train=cell.train, eps=cell.options.eps)
  hs, cs, loop_moments = lstm_recurrence(
      inputs, mask, carry['h'], carry['c'], consts['cell']['kernel_h'], params['bias'], cfg=cfg,
      recurrent_gain=site_params('recurrent_norm').get('gamma'),
      cell_gain=site_params('cell_norm').get('gamma'),
      cell_shift=site_params('cell_norm').get('beta'),
      recurrent_stats=stats.get('recurrent'), cell_stats=stats.get('cell'),
      probe=xs.get('probe'))
  moments.update(loop_moments)
  ys = hs * mask[..., None].astype(hs.dtype)
  return dict(carry, h=hs[-1], c=cs[-1]), (ys, moments)
