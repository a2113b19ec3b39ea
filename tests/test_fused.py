"""The fused kernels against the scan: 'fused' (normrnn/kernels/fused_lstm.py) and 'cpu', the
same custom_vjp with its two loops in C++ (normrnn/kernels/cpu_lstm.py, cpu_lstm.cc).

Every comparison runs the same `Recurrent` layer with kernel='scan' (the reference) and the
kernel under test and compares the outputs, the final carry, the moments returned for the population
tables, the updated tables and the gradients of one loss w.r.t. every parameter, the inputs, the
probe and (in evaluation) the population tables, in float64 (tight tolerance), for a masked batch
(padding of different lengths, garbage in the padding) and a full one. Then: finite differences,
sequences longer than the tables, chunked evaluation, the registry's refusals and the config
field, and a float32 smoke training run whose losses match the scan's. The C++ kernel also runs
with its batch split over several threads (uneven blocks of rows), and if its extension was not
built its tests are skipped, except under CI (CI=true), where that is an error.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normrnn import bench, experiment, kernels, models
from normrnn.config import schema
from normrnn.kernels import cpu_lstm, fused_lstm
from normrnn.norms import NORMS, compose
from tests import helpers

LENGTHS = [5, 2, 4, 3]  # B = 4, T = 5


def _kernel(name):
  """A pytest param for each kernel; 'cpu' is skipped where its C++ extension is unavailable
  (never under CI: the install there must build it)."""
  why = cpu_lstm.unavailable() if name == 'cpu' else None
  marks = [pytest.mark.skip(reason=why)] if why and os.environ.get('CI') != 'true' else []
  return pytest.param(name, marks=marks)


KERNELS = [_kernel('fused'), _kernel('cpu')]


def _layer(scheme, kernel, **kw):
  layer = helpers.make_layer('none', kernel=kernel, **kw)
  if isinstance(scheme, str):
    scheme = NORMS[scheme]
  cell = layer.cell.clone(scheme=scheme, options=scheme.make_options(eps=helpers.EPS))
  return layer.clone(cell=cell)


def _run(scheme, kernel, *, train, length=5, use_moments=False, probe=False, **kw):
  """{'scan': [...], 'kernel': [...]}: results of the full batch and of the masked batch; each
  holds the outputs, final carry, updated collections and the gradients of one loss."""
  layers = {'scan': _layer(scheme, 'scan', train=train, **kw),
            'kernel': _layer(scheme, kernel, train=train, **kw)}
  x, _ = helpers.data(length=length)
  rngs = {'noise': jax.random.PRNGKey(3)}
  variables = layers['scan'].init({'params': jax.random.PRNGKey(0), **rngs}, x)
  cast = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), t)
  params = cast(helpers.perturb_params(variables['params'], jax.random.PRNGKey(1)))
  stats = cast(helpers.random_tables(variables.get('batch_stats', {}), jax.random.PRNGKey(2)))

  def make(layer):
    def loss(p, inputs, st, probe_in, mask):
      (y, carry), upd = layer.apply({'params': p, 'batch_stats': st}, inputs, mask,
                                    probe=probe_in, mutable=['batch_stats', 'moments'], rngs=rngs)
      value = jnp.sum(jnp.sin(3.0 * y)) + jnp.sum(jnp.cos(carry['h'])) + jnp.sum(carry['c'] ** 2)
      if use_moments:  # the cotangents of the returned moments reach the kernel too
        value += sum(jnp.sum(jnp.sin(v)) for v in jax.tree.leaves(upd['moments']))
      return value, (y, carry, upd)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))

  out = {}
  for kernel, layer in layers.items():
    run, out[kernel] = make(layer), []
    for lengths in (None, LENGTHS):
      xm, mask = helpers.data(length=length, lengths=lengths)
      xm, mask = cast(xm), jnp.asarray(mask, jnp.float64)
      probe_in = 0.1 * jnp.ones(xm.shape[:2] + (3,), jnp.float64) if probe else None
      out[kernel].append(run(params, xm, stats, probe_in, mask))
  return out


def _assert_equal(out, rtol=1e-9, atol=1e-10):  # float64
  for scan, fused in zip(out['scan'], out['kernel']):
    assert jax.tree.structure(scan) == jax.tree.structure(fused)
    for a, b in zip(jax.tree.leaves(scan), jax.tree.leaves(fused)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=atol)


@pytest.mark.parametrize('scheme, train, settings', [
    # The task configs' settings: the input term in the step, remat (the recomputing backward).
    ('none', True, dict(hoist_input=False, remat=True)),
    # + the valid-prefix reverse direction, the gradient probe, h_0 noise, a loss that reads the
    # returned moments (their cotangents go through the kernel's backward), and chunks of 2
    # steps over 7 (the last one padded): the backward's per-chunk matmuls and sums add up.
    ('batch', True, dict(hoist_input=False, remat=True, reverse=True, probe=True, h0_noise=0.5,
                         use_moments=True, length=7, t_max=7, max_chunk=2)),
    # remat=False: the backward starts from the W_h h_{t-1} the forward saved. Evaluation:
    # population statistics (their gradients too).
    ('batch', False, dict(hoist_input=False, remat=False, probe=True)),
    ('layer', True, dict(hoist_input=False, remat=False)),
    # A hoisted input term (sequence-wise BN always is) in a per-site composite (BN-e*). (The
    # other supported schemes combine the same site modules; weight norm's kernel transform is
    # applied before the loop, by autodiff.)
    (compose('batch', input='sequence'), True, dict(hoist_input=True, remat=True)),
])
@pytest.mark.parametrize('kernel', KERNELS)
def test_equals_scan(kernel, scheme, train, settings, monkeypatch):
  settings = dict(settings)
  monkeypatch.setattr(fused_lstm, 'MAX_CHUNK', settings.pop('max_chunk', fused_lstm.MAX_CHUNK))
  monkeypatch.setattr(cpu_lstm, 'MIN_GRAD_ROWS', 1)  # the C++ backward's chunks = the plan's
  with jax.enable_x64(True):
    _assert_equal(_run(scheme, kernel, train=train, **settings))


@pytest.mark.parametrize('scheme, train, remat', [
    ('batch', True, True), ('batch', False, True), ('layer', True, True), ('none', True, False)])
@pytest.mark.parametrize('split', ['rows', 'columns'])
def test_cpu_kernel_threads(split, scheme, train, remat, monkeypatch):
  """The C++ kernel with the batch of 4 split over 3 threads (rows 1 / 1 / 2): BN's batch sums
  meet across threads, each thread keeps its own parameter cotangents. Split by columns, the
  recurrent matmuls (forward, dL/dh, dW_h; W_h h_{t-1} recomputed or saved) are too: 4 / 4 / 4
  of W_h's 12 columns, 1 / 1 / 1 of its 3 rows."""
  _needs_cpu_kernel()
  monkeypatch.setenv('NORMRNN_CPU_THREADS', '3')
  monkeypatch.setenv('NORMRNN_CPU_SPLIT', split)
  assert cpu_lstm.threads(4) == 3 and cpu_lstm.columns(4, 3) == (split == 'columns')
  monkeypatch.setattr(fused_lstm, 'MAX_CHUNK', 2)
  monkeypatch.setattr(cpu_lstm, 'MIN_GRAD_ROWS', 1)  # the C++ backward's chunks = the plan's
  with jax.enable_x64(True):
    _assert_equal(_run(scheme, 'cpu', train=train, hoist_input=False, remat=remat, probe=True,
                       use_moments=train and scheme == 'batch', length=7, t_max=7))


def _needs_cpu_kernel():
  if (why := cpu_lstm.unavailable()) and os.environ.get('CI') != 'true':
    pytest.skip(why)


@pytest.mark.parametrize('train, settings', [
    # In the step, remat; then reverse, probe, moment cotangents, 2-step chunks, unsaved W_h h.
    (True, dict(hoist_input=False, remat=True)),
    (True, dict(hoist_input=False, remat=False, reverse=True, probe=True, use_moments=True,
                length=7, t_max=7, max_chunk=2)),
    (False, dict(hoist_input=False, remat=True, probe=True)),
    # The input site hoisted (cumulative sums before the loop, autodiff there).
    (True, dict(hoist_input=True, remat=True, use_moments=True)),
])
def test_cpu_kernel_streaming(train, settings, monkeypatch):
  """Streaming normalization (only the C++ loops run it): the per-sequence running sums carried
  through the loop and their gradients back through time, the long-term table's gradient (the
  loss is differentiated w.r.t. the tables too), the final sums in the carry."""
  _needs_cpu_kernel()
  settings = dict(settings)
  monkeypatch.setattr(fused_lstm, 'MAX_CHUNK', settings.pop('max_chunk', fused_lstm.MAX_CHUNK))
  monkeypatch.setattr(cpu_lstm, 'MIN_GRAD_ROWS', 1)  # the C++ backward's chunks = the plan's
  monkeypatch.setenv('NORMRNN_CPU_THREADS', '3')
  with jax.enable_x64(True):
    _assert_equal(_run('streaming', 'cpu', train=train, **settings))


def test_cpu_kernel_streaming_chunked_evaluation():
  """A long sequence evaluated in chunks continues the running sums from the carry."""
  _needs_cpu_kernel()
  x, mask = helpers.data(length=9, lengths=[9, 4, 7, 9])
  layer = _layer('streaming', 'cpu', train=False, t_max=4, hoist_input=False)
  variables = layer.init(jax.random.PRNGKey(0), x, mask)
  whole = _layer('streaming', 'scan', train=False, t_max=4, hoist_input=False).apply(
      variables, x, mask)
  first, carry = layer.apply(variables, x[:, :5], mask[:, :5])
  second, carry = layer.apply(variables, x[:, 5:], mask[:, 5:], initial_carry=carry,
                              position_offset=5)
  np.testing.assert_allclose(np.concatenate([first, second], 1), whole[0], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(whole[1]), jax.tree.leaves(carry)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_cpu_kernel_streaming_float32_long_sequence():
  """The C++ backward walks streaming's running sums back from the final ones (s_{t-1} = s_t -
  a_t m_t) instead of saving them per step: in float32 over 300 steps its gradients still agree
  with the scan's (autodiff through saved sums) to float32 summation noise."""
  _needs_cpu_kernel()
  x, mask = helpers.data(batch=8, length=300, features=1, lengths=[300, 120, 300, 299, 7, 300,
                                                                   250, 300])
  layers = {k: _layer('streaming', k, train=True, hidden=8, features=1, t_max=300,
                      hoist_input=False, remat=True) for k in ('scan', 'cpu')}
  variables = layers['scan'].init(jax.random.PRNGKey(0), x, mask)
  grads = {}
  for k, layer in layers.items():
    def loss(p, layer=layer):
      (y, _), _ = layer.apply(dict(variables, params=p), x, mask, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(3.0 * y))
    grads[k] = jax.jit(jax.grad(loss))(variables['params'])
  for a, b in zip(jax.tree.leaves(grads['scan']), jax.tree.leaves(grads['cpu'])):
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-4 * float(np.abs(a).max()))


def _value_and_grads(layer, variables, mask):
  """jit(value_and_grad) of a loss of every output and the final c, w.r.t. (params, inputs),
  with the outputs as aux: called as f(params, inputs)."""
  def loss(p, x):
    (y, carry), _ = layer.apply(dict(variables, params=p), x, mask, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(3.0 * y)) + jnp.sum(carry['c'] ** 2), y
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize('split, scheme, remat', [
    ('rows', 'none', True), ('columns', 'none', False), ('columns', 'layer', True)])
def test_cpu_kernel_float32_matmuls(split, scheme, remat, monkeypatch):
  """Float32 (where the C++ kernel multiplies by W_h and W_x with its own packed AVX-512
  microkernel instead of BLAS; float64, in every other test, calls BLAS) against the scan in
  float64: H=300, so the packed panels of 32 columns end in partial ones (1200 = 37.5 x 32 and
  the threads' blocks), the transposed W_h^T has k = 1200 > one block of 1024, and 2 threads of
  10 rows make blocks of 8 rows end in partial ones; W_h h_{t-1} recomputed (remat) or saved."""
  _needs_cpu_kernel()
  monkeypatch.setenv('NORMRNN_CPU_THREADS', '2')
  monkeypatch.setenv('NORMRNN_CPU_SPLIT', split)
  x, mask = helpers.data(batch=20, length=6, features=3,
                         lengths=[6, 3, 5, 6, 1, 6, 4, 6, 6, 2] * 2)
  kw = dict(train=True, hidden=300, features=3, t_max=6, hoist_input=False, remat=remat)
  layers = {k: _layer(scheme, k, **kw) for k in ('scan', 'cpu')}
  variables = layers['scan'].init(jax.random.PRNGKey(0), x, mask)
  params = helpers.perturb_params(variables['params'], jax.random.PRNGKey(1))
  out = {}
  for k, layer in [('scan64', layers['scan'])] + list(layers.items()):
    run = _value_and_grads(layer, variables, mask)
    if k == 'scan64':
      with jax.enable_x64(True):
        out[k] = run(*jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), (params, x)))
    else:
      out[k] = run(params, x)
  # Float32 error of the kernel (against the float64 scan) within a few times the float32
  # scan's own. (Not BN here: at step 0 every row has the same h_0, so the recurrent site
  # normalizes rounding noise over a variance of ~0, amplified by 1 / sqrt(eps) in both.)
  for ref, scan, cpu in zip(*(jax.tree.leaves(out[k]) for k in ('scan64', 'scan', 'cpu'))):
    assert cpu.dtype == jnp.float32
    ref = np.asarray(ref)
    err = lambda v: float(np.abs(np.asarray(v, np.float64) - ref).max())
    assert err(cpu) <= 4 * err(scan) + 1e-6 * float(np.abs(ref).max()), (err(cpu), err(scan))


@pytest.mark.parametrize('kernel', KERNELS)
def test_float32_saturated_gates(kernel):
  """Inputs of 1e4 saturate the gates in float32: the kernels' outputs and gradients stay finite
  and those of the scan (the C++ kernel is compiled with -ffast-math, which assumes no inf: its
  exp and tanh are clamped; before, exp overflowed and every gradient was NaN). The outputs
  agree to float32 precision; the gradients only to 1% of their largest entry: a float32
  pre-activation of ~1e4 is rounded to ~1e-3, and the weight gradients multiply by the inputs
  again."""
  x, mask = helpers.data(batch=4, length=5, features=2, lengths=LENGTHS)
  x = x * 1e4
  layers = {k: _layer('none', k, train=True, hidden=8, hoist_input=False, remat=True)
            for k in ('scan', kernel)}
  variables = layers['scan'].init(jax.random.PRNGKey(0), x, mask)
  out = {k: _value_and_grads(layer, variables, mask)(variables['params'], x)
         for k, layer in layers.items()}
  (value, y), grads = out[kernel]
  np.testing.assert_allclose(value, out['scan'][0][0], rtol=1e-5)
  np.testing.assert_allclose(y, out['scan'][0][1], rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(out['scan'][1]), jax.tree.leaves(grads)):
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2 * max(1.0, float(np.abs(a).max())))


@pytest.mark.parametrize('scheme', ['none', 'batch', 'batch_input'])
def test_cpu_kernel_memory_not_above_the_scan(scheme):
  """XLA's memory estimate of a whole train step (arguments, outputs, temporaries:
  bench.memory_mb) with the C++ kernel is at most the scan's, at a small sMNIST-like shape with
  the task's remat: the kernel keeps h_{t-1} and c_{t-1} per step and recomputes the rest in its
  backward, BN's per-step moments included (kept, they made `batch` 10% larger than the scan)."""
  _needs_cpu_kernel()
  s = dict(bench.SHAPES['smnist'], batch=16, length=50, hidden=32)
  batch = bench.make_batch(s, s['length'])
  memory = {k: bench.JaxBench(k, bench.build_model(scheme, s, kernel=k), batch,
                              optax.sgd(0.1)).memory_mb for k in ('scan', 'cpu')}
  assert memory['cpu'] <= memory['scan'], memory


@pytest.mark.parametrize('kernel', KERNELS)
def test_finite_differences(kernel):
  helpers.check_gradients('batch', kernel=kernel, hoist_input=False, remat=True)


@pytest.mark.parametrize('kernel', KERNELS)
def test_longer_than_the_tables_and_chunked_evaluation(kernel):
  """Evaluation beyond max_time_steps uses the last step's statistics (both kernels), and a long
  sequence evaluated in chunks (initial_carry, position_offset) equals it in one piece."""
  x, mask = helpers.data(length=9, lengths=[9, 4, 7, 9])
  layers = {k: _layer('batch', k, train=False, t_max=4, hoist_input=False) for k in
            ('scan', kernel)}
  variables = layers['scan'].init(jax.random.PRNGKey(0), x, mask)
  variables = dict(variables, batch_stats=helpers.random_tables(variables['batch_stats'],
                                                                jax.random.PRNGKey(2)))
  whole = {k: jax.jit(layer.apply)(variables, x, mask) for k, layer in layers.items()}
  for a, b in zip(jax.tree.leaves(whole['scan']), jax.tree.leaves(whole[kernel])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  first, carry = layers[kernel].apply(variables, x[:, :5], mask[:, :5])
  second, carry = layers[kernel].apply(variables, x[:, 5:], mask[:, 5:], initial_carry=carry,
                                       position_offset=5)
  np.testing.assert_allclose(np.concatenate([first, second], 1), whole[kernel][0], rtol=1e-5,
                             atol=1e-6)


def test_supports_and_refusals():
  settings = dict(hoist_input=False, remat=True, unroll=1, train=True)
  ok = ['none', 'batch', 'batch_input', 'sequence', 'layer', 'weight']
  assert [n for n, s in NORMS.items()
          if fused_lstm.supports('lstm', s, hidden=8, **settings) is None] == ok
  assert fused_lstm.supports('lstm', compose('batch', input='sequence'), hidden=8,
                             **settings) is None
  assert 'Streaming' in fused_lstm.supports('lstm', NORMS['streaming'], hidden=8, **settings)
  assert 'Cosine' in fused_lstm.supports('lstm', NORMS['cosine'], hidden=8, **settings)
  assert 'LSTM cell only' in fused_lstm.supports('gru', NORMS['none'], hidden=8, **settings)
  # A refusal names what the kernel supports.
  why = kernels.refusal('fused', 'lstm', NORMS['cosine'], hoist_input=False, remat=True, unroll=1,
                        hidden=8)
  assert 'supports the schemes none, batch, batch_input, sequence, layer, weight' in why
  assert kernels.refusal('scan', 'gru', NORMS['cosine'], hoist_input=False, remat=True,
                         unroll=1, hidden=8) is None
  assert kernels.KERNELS['fused'].run is fused_lstm.run
  assert set(kernels.names()) >= {'scan', 'fused'}
  with pytest.raises(ValueError, match="kernel='fused' is not valid.*Cosine"):
    models.RNNSpec(hidden=3, norm='cosine', max_time_steps=5, kernel='fused')
  with pytest.raises(ValueError, match='unknown kernel'):
    models.RNNSpec(hidden=3, norm='batch', max_time_steps=5, kernel='nope')
  assert models.RNNSpec(hidden=3, norm='batch', max_time_steps=5).kernel == 'scan'
  # A layer built by hand with an unsupported kernel fails when called, with the same line.
  x, mask = helpers.data()
  with pytest.raises(ValueError, match='Cosine'):
    _layer('cosine', 'fused', train=True).init(jax.random.PRNGKey(0), x, mask)


def test_cpu_kernel_refusals(monkeypatch):
  """The C++ kernel supports what the fused kernel supports, and says so in its own name; where
  its extension cannot run it refuses every scheme with the reason, and the config check names
  it."""
  settings = dict(hoist_input=False, remat=True, unroll=1, train=True)
  native = [n for n, s in NORMS.items()
            if fused_lstm.supports('lstm', s, native=True, hidden=8, **settings) is None]
  assert native == ['none', 'batch', 'batch_input', 'sequence', 'layer', 'weight', 'streaming']
  assert 'cpu kernel has no written-out backward for Cosine' in cpu_lstm.supports(
      'lstm', NORMS['cosine'], hidden=8, **settings)
  assert 'cpu kernel implements the LSTM cell only' in cpu_lstm.supports(
      'gru', NORMS['none'], hidden=8, **settings)
  monkeypatch.setattr(cpu_lstm, 'unavailable', lambda: 'the C++ extension was not built')
  assert cpu_lstm.supports('lstm', NORMS['batch'], hidden=8,
                           **settings) == 'the C++ extension was not built'
  why = kernels.refusal('cpu', 'lstm', NORMS['batch'], hoist_input=False, remat=True, unroll=1,
                        hidden=8)
  assert why.startswith('the C++ extension was not built; it supports no scheme')
  config = helpers.config_module('digits').get_config('norm=batch,size=smoke')
  config.model.kernel = 'cpu'
  with pytest.raises(schema.ConfigError, match="model.kernel='cpu' is not valid.*not built"):
    schema.validate(config)
  # The batch split: one thread per 16 rows at most, NORMRNN_CPU_THREADS overrides (per row).
  monkeypatch.delenv('NORMRNN_CPU_THREADS', raising=False)
  assert cpu_lstm.threads(8) == 1 and 1 <= cpu_lstm.threads(64) <= 4
  monkeypatch.setenv('NORMRNN_CPU_THREADS', '6')
  assert cpu_lstm.threads(4) == 4 and cpu_lstm.threads(64) == 6
  # The backward's dW_h matmuls cover at least MIN_GRAD_ROWS rows per thread: PTB's 2-step
  # chunks become 8 steps (2 threads x 32 rows), sMNIST's 16 stay.
  monkeypatch.setenv('NORMRNN_CPU_THREADS', '2')
  plan = fused_lstm.Plan(input=None, recurrent='batch', cell='batch', train=True, eps=1e-5,
                         remat=False, unroll=1, chunk=2)
  assert cpu_lstm._attrs(plan, 64, 100)['chunk'] == 8
  assert cpu_lstm._attrs(dataclasses.replace(plan, chunk=16), 64, 100)['chunk'] == 16
  # The recurrent matmuls split by columns from MIN_COLUMN_HIDDEN on (PTB, not sMNIST); their
  # dW_h matmuls then cover all 64 rows of a step: 4 steps make 256 rows.
  monkeypatch.delenv('NORMRNN_CPU_SPLIT', raising=False)
  assert cpu_lstm.columns(64, 1000) and not cpu_lstm.columns(64, 100)
  assert cpu_lstm._attrs(plan, 64, 1000)['chunk'] == 4
  monkeypatch.setenv('NORMRNN_CPU_THREADS', '1')
  assert not cpu_lstm.columns(64, 1000)  # one thread: nothing to split
  monkeypatch.setenv('NORMRNN_CPU_SPLIT', 'cols')
  with pytest.raises(ValueError, match="NORMRNN_CPU_SPLIT must be 'rows' or 'columns'"):
    cpu_lstm.columns(64, 1000)


def test_config_field():
  digits = helpers.config_module('digits')
  config = digits.get_config('norm=batch,size=smoke')
  assert config.model.kernel == 'scan'
  config.model.kernel = 'fused'
  schema.validate(config)  # supported
  config.model.kernel = 'nope'
  with pytest.raises(schema.ConfigError, match="model.kernel='nope'.*scan, fused"):
    schema.validate(config)
  config = digits.get_config('norm=cosine,size=smoke')
  config.model.kernel = 'fused'
  with pytest.raises(schema.ConfigError, match="model.kernel='fused' is not valid.*supports the "
                     'schemes none, batch'):
    schema.validate(config)
  # Runs saved before the field existed resume with the scan; the kernel may change on resume.
  assert schema.upgrade_saved_config({'model': {}})['model']['kernel'] == 'scan'
  assert 'model.kernel' in schema.RESUMABLE_CHANGES


@pytest.mark.parametrize('kernel', KERNELS)
def test_smoke_training_run_matches_the_scan(kernel):
  """A run's config with `--config.model.kernel=fused|cpu` (the digits BN-LSTM, smoke size, RMSProp)
  trains with the scan's losses and gradient norms, to float32 accuracy. (Not bitwise: the two
  sum the gradient terms in different orders. The parameters are not compared: h_0's gradient
  through the recurrent BN is zero up to rounding at t = 0 (all rows of W_h h_0 are equal), and
  RMSProp's g / sqrt(mean g^2) turns that rounding noise into full-size steps in both.)"""
  digits = helpers.config_module('digits')
  runs = {}
  for name in ('scan', kernel):
    config = digits.get_config('norm=batch,size=smoke')
    config.model.kernel = name
    exp = experiment.Experiment.from_config(config)
    state, step, metrics = exp.init_state(), jax.jit(exp.train_step()), []
    for i in range(6):
      state, m = step(state, exp.task.train_batch(i))
      metrics.append((m['loss'], m['grad_norm']))
    runs[name] = np.array(metrics)
  np.testing.assert_allclose(runs[kernel][:, 0], runs['scan'][:, 0], rtol=1e-5)  # losses
  np.testing.assert_allclose(runs[kernel][:, 1], runs['scan'][:, 1], rtol=1e-3)
