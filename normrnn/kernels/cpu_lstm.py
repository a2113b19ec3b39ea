"""`cpu`: the fused kernel's two loops in C++ (model.kernel='cpu').

The same `jax.custom_vjp` as `normrnn.kernels.fused_lstm` (same cell, same saved values, same
backward formulas, the same schemes plus streaming normalization: tests/test_fused.py checks
outputs, carries, moments and every gradient against the scan), but its forward loop and its
backward loop each run as ONE call into a C++ function (normrnn/kernels/cpu_lstm.cc) through
XLA's foreign-function interface (`jax.ffi`), instead of as an XLA while loop. A step is then one
matmul by W_h (in float32 on AVX-512 CPUs the kernel's own microkernel over W_h packed once per
call; otherwise OpenBLAS from the `scipy-openblas32` package) and a few vectorized loops over
cache-resident rows, with no per-op dispatch; the batch is split over threads (`threads`), or
from MIN_COLUMN_HIDDEN units on the recurrent matmuls by W_h's columns (`columns`); the weight
gradient dW_h is one BLAS matmul per chunk of steps. docs/benchmarks.md has the measurements.

Build: `pip install -e .` compiles cpu_lstm.cc into normrnn/kernels/_cpu_lstm*.so (setup.py;
the XLA FFI headers come from jaxlib, a C++17 compiler is needed). If the build fails the install
still succeeds and this kernel refuses with the reason (`unavailable`); the scan and the fused
kernel are unaffected. CPU backend only (on GPU the Pallas kernel is the counterpart), float32
and float64.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

KINDS = {'identity': 0, 'batch': 1, 'layer': 2, 'streaming': 3}  # cpu_lstm.cc's Kind
MIN_ROWS = 16  # rows of the batch per thread, at least (see `threads`)
SITES = ('input', 'recurrent', 'cell')
_FORWARD, _BACKWARD = 'normrnn_lstm_forward', 'normrnn_lstm_backward'


def library_path() -> Path | None:
  """The compiled extension next to this file, if the install built it."""
  here = Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = here / f'_cpu_lstm{suffix}'
    if path.exists():
      return path
  return None


@functools.cache
def _load() -> str | None:
  """Loads the library, hands it OpenBLAS's gemm and registers the two FFI targets once.
  None on success, else the reason it is unavailable."""
  path = library_path()
  if path is None:
    return ('the C++ extension normrnn/kernels/_cpu_lstm was not built (reinstall with '
            '`pip install -e .` and a C++17 compiler; the build log says why it failed)')
  try:
    blas = _openblas()
  except ImportError:
    return 'the package scipy-openblas32 (its BLAS) is not installed: pip install -r requirements.txt'
  try:
    lib = ctypes.CDLL(str(path))
  except OSError as e:
    return f'the C++ extension {path.name} does not load: {e}'
  address = lambda name: ctypes.cast(getattr(blas, name), ctypes.c_void_p).value
  lib.normrnn_set_blas.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
  lib.normrnn_set_blas(address('scipy_cblas_sgemm'), address('scipy_cblas_dgemm'))
  # The kernel's own threads split the batch and call BLAS concurrently, each single-threaded
  # (this OpenBLAS is scipy-openblas32's own copy, used by nothing else in the process).
  blas.scipy_openblas_set_num_threads(1)
  jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(lib.NormrnnLstmForward), platform='cpu')
  jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(lib.NormrnnLstmBackward),
                              platform='cpu')
  return None


# The x86 instruction sets OpenBLAS's SkylakeX kernels use (AVX-512 F, CD, BW, DQ, VL).
AVX512 = ('avx512f', 'avx512cd', 'avx512bw', 'avx512dq', 'avx512vl')


def _cpu_flags() -> set[str]:
  try:
    text = Path('/proc/cpuinfo').read_text()
  except OSError:
    return set()
  line = next((l for l in text.splitlines() if l.startswith('flags')), '')
  return set(line.split(':', 1)[-1].split())


def _openblas():
  """scipy-openblas32's library (ctypes), loaded with the kernel set this kernel's matmuls run
  best with. This copy of OpenBLAS is used by nothing but this kernel (numpy and scipy bring
  their own), so the kernel chooses for it: NORMRNN_BLAS_CORETYPE if set (an OpenBLAS core name
  such as 'Haswell'), else OpenBLAS's AVX-512 kernels ('SkylakeX') on a CPU with AVX-512, else
  OpenBLAS's own choice. Why: its own detection (or an OPENBLAS_CORETYPE meant for numpy's copy,
  as on this project's machines) can give AVX2 kernels on an AVX-512 CPU, which run the kernel's
  small matmuls at about half the speed (docs/benchmarks.md). The choice goes through
  OpenBLAS's documented OPENBLAS_CORETYPE, which it reads when the library loads: set only
  around that import, then restored."""
  import sys  # pylint: disable=g-import-not-at-top
  core = os.environ.get('NORMRNN_BLAS_CORETYPE', '').strip() or (
      'SkylakeX' if set(AVX512) <= _cpu_flags() else '')
  choose = bool(core) and 'scipy_openblas32' not in sys.modules
  previous = os.environ.get('OPENBLAS_CORETYPE')
  if choose:
    os.environ['OPENBLAS_CORETYPE'] = core
  try:
    import scipy_openblas32  # pylint: disable=g-import-not-at-top
  finally:
    if choose:
      if previous is None:
        del os.environ['OPENBLAS_CORETYPE']
      else:
        os.environ['OPENBLAS_CORETYPE'] = previous
  return scipy_openblas32.dll


def blas_core() -> str:
  """The kernel set OpenBLAS runs with (e.g. 'SkylakeX', 'Haswell'), for benchmark records."""
  get = _openblas().scipy_openblas_get_corename
  get.restype = ctypes.c_char_p
  return get().decode()


def unavailable() -> str | None:
  """None if this kernel can run here, else one line saying why not."""
  if jax.default_backend() != 'cpu':
    return (f'the cpu kernel runs on the CPU backend only (this is {jax.default_backend()}; '
            "model.kernel='pallas' is the GPU counterpart)")
  return _load()


def supports(cell: str, scheme, *, hoist_input: bool, remat: bool, unroll: int, hidden: int,
             train: bool = True) -> str | None:
  """The fused kernel's cells and schemes (the same maths) and streaming sites, where the
  extension is built; any `hidden` size (taken for the interface, unused)."""
  from normrnn.kernels import fused_lstm  # pylint: disable=g-import-not-at-top
  reason = fused_lstm.supports(cell, scheme, hoist_input=hoist_input, remat=remat,
                               unroll=unroll, hidden=hidden, train=train, native=True)
  if reason is not None:
    return reason.replace('the fused kernel', 'the cpu kernel')
  return unavailable()


def _none(dtype):
  return jnp.zeros((0,), dtype)


def _common_args(plan, p, carry0, inputs, mask, stats):
  """Arguments 0-18 of both C++ handlers (cpu_lstm.cc has the layout); absent = 0 elements.
  Statistics per site: BN's per-step (mean, r) [T, F]; streaming's long-term table (mean, var)
  [F] in the same two slots."""
  dtype = carry0[0].dtype
  sites = p['sites']
  site_p = lambda s, k: sites[s][k] if s in sites and k in sites[s] else _none(dtype)
  stat = lambda s, k: stats[s][k] if s in stats else _none(dtype)
  second = lambda s: stat(s, 'var' if plan.kind(s) == 'streaming' else 'r')
  return ([p['kernel_h'], p.get('kernel_x', _none(dtype)), p['bias']]
          + [site_p(s, 'gamma') for s in SITES] + [site_p(s, 'beta') for s in SITES]
          + [carry0[0], carry0[1], inputs, mask.astype(jnp.float32)]
          + [stat(s, 'mean') for s in SITES] + [second(s) for s in SITES])


def _present(plan, site):
  """Whether `site` is computed in the loop (the input site may be hoisted: plan.input None)."""
  return site != 'input' or plan.input is not None


def threads(batch: int) -> int:
  """Threads of one call: NORMRNN_CPU_THREADS if set (at most one per row), else the CPUs this
  process may run on, at most one per MIN_ROWS rows of the batch (smaller blocks make each
  thread's matmuls too small to pay for the per-step meetings of BN sites)."""
  env = os.environ.get('NORMRNN_CPU_THREADS', '')
  if env.strip():
    return max(1, min(int(env), batch))
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return max(1, min(cpus or 1, batch // MIN_ROWS))


# The recurrent matmuls are split over threads by columns of W_h (cpu_lstm.cc, "Threads") from
# this hidden size on, else by rows of the batch. Measured on 2 threads (docs/benchmarks.md): at
# H=1000 (PTB) columns are faster (each thread reads half of W_h, and its BLAS calls have all 64
# rows instead of 32); at H=100 (sMNIST) W_h stays in cache and the two extra meetings per step
# cost more than they gain.
MIN_COLUMN_HIDDEN = 256


def columns(batch: int, hidden: int) -> bool:
  """Whether one call splits its recurrent matmuls by columns: NORMRNN_CPU_SPLIT ('rows' or
  'columns') if set, else from MIN_COLUMN_HIDDEN on, with more than one thread."""
  env = os.environ.get('NORMRNN_CPU_SPLIT', '').strip()
  if env:
    if env not in ('rows', 'columns'):
      raise ValueError(f"NORMRNN_CPU_SPLIT must be 'rows' or 'columns', not {env!r}")
    return env == 'columns'
  return threads(batch) > 1 and hidden >= MIN_COLUMN_HIDDEN


# The backward accumulates dW_h once per chunk of steps as one matmul over the chunk's rows (of
# each thread, or of the whole batch when split by columns): at least this many rows, or the
# matmul is too thin to run near peak (PTB: 32 rows per thread, chunks of 2 -> 8 steps took
# `batch` from 1.14x to 1.05x flax's time).
MIN_GRAD_ROWS = 256


def _attrs(plan, batch, hidden):
  kinds = dict(input=plan.input or 'identity', recurrent=plan.recurrent, cell=plan.cell)
  n = threads(batch)
  split = columns(batch, hidden)
  rows = batch if split else -(-batch // n)
  return dict(kind_input=np.int64(KINDS[kinds['input']]),
              kind_recurrent=np.int64(KINDS[kinds['recurrent']]),
              kind_cell=np.int64(KINDS[kinds['cell']]), eps=np.float64(plan.eps),
              lam=np.float64(plan.lam), threads=np.int64(n),
              chunk=np.int64(max(plan.chunk, -(-MIN_GRAD_ROWS // rows))),
              columns=np.int64(split))


def _shape(shape, dtype, present=True):
  return jax.ShapeDtypeStruct(shape if present else (0,), dtype)


def forward(plan, p, carry0, inputs, mask, stats, probe, *, save, residuals):
  """fused_lstm._forward's contract, computed by the C++ forward loop: ((h_T, c_T, the streaming
  sites' final sums), ys, moments), residuals (h_{t-1}, c_{t-1}, W_h h_{t-1} or None, the
  streaming sites' final sums). Where every site is an identity the third holds the steps' gate
  activations instead of W_h h_{t-1} (same shape; the C++ backward needs nothing else)."""
  h0, norm0 = carry0[0], carry0[2]
  dtype, (length, batch), hidden = h0.dtype, mask.shape, h0.shape[-1]
  widths = dict(input=4 * hidden, recurrent=4 * hidden, cell=hidden)
  streaming = [s for s in SITES if s in norm0]
  computes = {s: plan.train and _present(plan, s) and plan.kind(s) in ('batch', 'streaming')
              for s in SITES}
  seq = (length, batch, hidden)
  # With residuals the outputs are derived from the saved h_{t-1} below, not written by the
  # loop: where the loss does not read them (sMNIST reads the last h only) XLA drops that
  # computation, and no third [T, B, H] buffer is allocated.
  outs = ([_shape((batch, hidden), dtype)] * 2 + [_shape(seq, dtype, not residuals)]
          + [_shape(seq, dtype, residuals)] * 2
          + [_shape((length, batch, 4 * hidden), dtype, residuals and save)]
          + [_shape((length, widths[s]), dtype, computes[s]) for s in SITES] * 2)
  args = _common_args(plan, p, carry0, inputs, mask, stats) + [
      _none(dtype) if probe is None else probe]
  for s in SITES:  # streaming sites: initial and final sums (n, s1, s2)
    on = s in streaming
    args += ([norm0[s]['n'][:, 0], norm0[s]['s1'], norm0[s]['s2']] if on
             else [_none(dtype)] * 3)
    outs += [_shape((batch,), dtype, on)] + [_shape((batch, widths[s]), dtype, on)] * 2
  out = jax.ffi.ffi_call(_FORWARD, outs)(*args, **_attrs(plan, batch, hidden))
  h, c, ys, h_prev, c_prev, a_h = out[:6]
  if residuals:  # y_t = h_t, the h_{t-1} saved for step t + 1 (h_T last), times the mask
    ys = jnp.concatenate([h_prev[1:], h[None]]) * mask[..., None].astype(dtype)
  count = jnp.sum(mask.astype(dtype), axis=1)
  moments = {s: dict(mean=out[6 + k], var=out[9 + k], count=count)
             for k, s in enumerate(SITES) if computes[s]}
  at = lambda s, q: out[12 + 3 * SITES.index(s) + q]
  norm = {s: dict(n=at(s, 0)[:, None], s1=at(s, 1), s2=at(s, 2)) for s in streaming}
  # The backward walks the final sums back step by step (cpu_lstm.cc): no per-step copies.
  saved = {s: (at(s, 0), at(s, 1), at(s, 2)) for s in streaming}
  return ((h, c, norm), ys, moments), (h_prev if residuals else None,
                                       c_prev if residuals else None,
                                       a_h if residuals and save else None,
                                       saved if residuals else None)


def backward(plan, p, carry0, inputs, mask, stats, given, has_probe, residuals, moments, dcarry,
             dys, dmom, want_inputs, want_stats):
  """fused_lstm._fused_bwd's result (dp, (dh0, dc0, dnorm0), dinputs, None, dstats, dprobe) from
  the C++ backward loop. `stats`: what each site normalized with (BN: {'mean', 'r'} per step;
  a BN site absent in training: the loop recomputes this batch's moments of each step, as the
  forward did; streaming: the long-term {'mean', 'var'}); `given`: the statistics argument of
  the forward (the structure of dstats); `dcarry`: cotangents of the final (h, c, streaming
  sums) and `dmom` the nonzero ones of the returned moments; None cotangents are zero."""
  h0, norm0 = carry0[0], carry0[2]
  h_prev, c_prev, a_h, saved = residuals
  dh_T, dc_T, dnorm_T = dcarry
  dtype, (length, batch), hidden = h0.dtype, mask.shape, h0.shape[-1]
  sites = p['sites']
  absent = _none(dtype)
  args = (_common_args(plan, p, carry0, inputs, mask, stats)
          + [h_prev, c_prev, absent if a_h is None else a_h]
          + [absent if v is None else v for v in (dh_T, dc_T, dys)]
          + [dmom[s]['mean'] if s in dmom else absent for s in SITES]
          + [dmom[s]['var'] if s in dmom else absent for s in SITES])
  for s in SITES:  # streaming: final sums, cotangents of the final sums (n has none)
    d = (dnorm_T or {}).get(s) or {}
    args += (list(saved[s]) if s in norm0 else [absent] * 3) + [
        absent if d.get(k) is None else d[k] for k in ('s1', 's2')]
  args += [moments[s]['mean'] if s in norm0 and s in dmom else absent for s in SITES]
  like = lambda a, present=True: _shape(a.shape, dtype, present)
  site_like = lambda s, k: like(sites[s][k]) if s in sites and k in sites[s] else _shape((0,), dtype)
  stat_like = lambda s, k: like(given[s][k]) if want_stats and s in given else _shape((0,), dtype)
  second = lambda s: 'var' if plan.kind(s) == 'streaming' else 'r'
  outs = ([like(p['kernel_h']), like(p['kernel_x']) if 'kernel_x' in p else _shape((0,), dtype),
           like(p['bias'])]
          + [site_like(s, 'gamma') for s in SITES] + [site_like(s, 'beta') for s in SITES]
          + [like(h0), like(h0), like(inputs, want_inputs),
             _shape((length, batch, hidden), dtype, has_probe)]
          + [stat_like(s, 'mean') for s in SITES] + [stat_like(s, second(s)) for s in SITES])
  for s in SITES:
    outs += [like(norm0[s]['s1'], s in norm0), like(norm0[s]['s2'], s in norm0)] if s in norm0 \
        else [_shape((0,), dtype)] * 2
  out = jax.ffi.ffi_call(_BACKWARD, outs)(*args, **_attrs(plan, batch, hidden),
                                          train=np.int64(plan.train))
  dp = dict(kernel_h=out[0], bias=out[2],
            sites={s: {k: out[(3 if k == 'gamma' else 6) + SITES.index(s)] for k in v}
                   for s, v in sites.items()})
  if 'kernel_x' in p:
    dp['kernel_x'] = out[1]
  dstats = ({s: {'mean': out[13 + SITES.index(s)], second(s): out[16 + SITES.index(s)]}
             for s in given} if want_stats else None)
  dnorm0 = {s: dict(n=jnp.zeros_like(norm0[s]['n']), s1=out[19 + 2 * SITES.index(s)],
                    s2=out[20 + 2 * SITES.index(s)]) for s in norm0}
  return (dp, (out[9], out[10], dnorm0), out[11] if want_inputs else None, None, dstats,
          out[12] if has_probe else None)
