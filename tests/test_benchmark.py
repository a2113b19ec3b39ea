"""scripts/benchmark.py and its shared parts (normrnn.bench) on tiny shapes: its scheme list
follows the registry at run time, and every registered scheme builds and takes a train step (no
timing assertions)."""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import optax
import pytest

from normrnn import bench
from normrnn.kernels import cpu_lstm
from normrnn.norms import NORMS, register, unregister
from tests.helpers import load_script

benchmark = load_script('scripts/benchmark.py')  # the command line (a script, not a module)

TINY = {  # the two SHAPES kinds (one label per sequence / a loss at every step), tiny
    'smnist': dict(batch=3, length=6, features=1, hidden=4, classes=3, per_step=False,
                   stats_rate=0.01, hoist_input=False, remat=True),
    'ptb': dict(batch=3, length=5, features=7, hidden=4, classes=7, per_step=True,
                stats_rate=0.05, hoist_input=False, remat=False),
}


@pytest.fixture
def throwaway():
  """A scheme registered at run time (the baseline's modules under another name)."""
  scheme = register(dataclasses.replace(NORMS['none'], name='throwaway_bench',
                                        label='throwaway LSTM', gamma_init=0.7))
  yield scheme
  unregister(scheme.name)


def test_scheme_list_reads_the_registry_at_run_time(throwaway):
  assert bench.default_schemes() == list(NORMS)
  assert throwaway.name in bench.default_schemes()
  args = benchmark.parse_args(['--shape', 'smnist', '--json', 'out.json'])
  assert args.schemes == list(NORMS) and throwaway.name in args.schemes
  assert benchmark.parse_args(['--shape', 'ptb', '--json', 'out.json',
                               '--schemes', f'batch,{throwaway.name}']).schemes == [
                                   'batch', throwaway.name]
  model = bench.build_model(throwaway.name, TINY['smnist'], **benchmark.spec_kwargs(args))
  assert model.spec.options.gamma_init == 0.7  # the scheme's declared gamma_init


def test_unknown_scheme_is_refused(capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args(['--shape', 'smnist', '--json', 'x', '--schemes', 'batch,nope'])
  assert 'unknown scheme' in capsys.readouterr().err
  with pytest.raises(ValueError, match='not a registered LSTM scheme'):
    bench.build_model('nope', TINY['smnist'])
  with pytest.raises(ValueError, match="remat='true'"):  # a bool or 'auto', not the CLI's string
    bench.build_model('batch', TINY['smnist'], remat='true')


@pytest.mark.parametrize('shape', sorted(TINY))
def test_every_scheme_builds_and_traces(shape, throwaway):
  """Every registered scheme (the run-time one included) builds with its declared options, and
  its train step traces to a scalar loss (jax.eval_shape: no compilation, so it stays fast;
  test_main_writes_the_json runs real steps)."""
  s = TINY[shape]
  batch, tx = bench.make_batch(s, s['length']), optax.adam(1e-3)
  names = [bench.REF] + bench.default_schemes()
  assert throwaway.name in names
  for name in names:
    model = bench.build_model(name, s)
    if name != bench.REF:
      scheme = NORMS[name]
      assert model.spec.options == scheme.make_options()
      assert model.spec.options.gamma_init == scheme.gamma_init
      assert model.spec.max_time_steps == s['length']
    variables = jax.eval_shape(
        lambda k, m=model: m.init(k, batch['inputs'], batch['mask'], train=True),
        jax.random.PRNGKey(0))
    params, stats = variables['params'], variables.get('batch_stats', {})
    *_, loss = jax.eval_shape(bench.make_step(model, tx), params, stats,
                              jax.eval_shape(tx.init, params), batch)
    assert loss.shape == () and loss.dtype == jax.numpy.float32, name


def test_main_writes_the_json(tmp_path, monkeypatch):
  monkeypatch.setitem(bench.SHAPES, 'smnist', TINY['smnist'])
  matmul = benchmark.matmul_gflops
  monkeypatch.setattr(benchmark, 'matmul_gflops', lambda: matmul(n=64, reps=2))
  out = tmp_path / 'bench.json'
  benchmark.main(['--shape', 'smnist', '--json', str(out), '--reps', '1', '--schemes', 'batch',
                  '--no-torch', '--eval-length', '8'])
  r = json.loads(out.read_text())
  # The fused kernels beside the scan (the C++ one where its extension is built).
  models = [bench.REF, 'batch', 'batch/fused'] + ['batch/cpu'] * (cpu_lstm.unavailable() is None)
  for key in ('ms', 'ratio_to_flax', 'gflops', 'peak_memory_mb', 'compile_s'):
    assert list(r[key]) == models, key
  if cpu_lstm.unavailable() is None:
    assert r['cpu_kernel_blas'] and r['cpu_kernel_threads'] >= 1
  assert r['shape'] == 'smnist' and r['ratio_to_flax'][bench.REF] == 1.0
  assert r['ratio_to_torch_bn'] == {} and len(r['load_average']['before']) == 3
  assert all(math.isfinite(v) and v > 0 for v in r['ms'].values())
  assert list(r['eval']['ms']) == models and r['eval']['length'] == 8


def test_kernel_list():
  args = benchmark.parse_args(['--shape', 'smnist', '--json', 'x'])
  assert args.kernels == ['fused', 'cpu']
  assert benchmark.parse_args(['--shape', 'smnist', '--json', 'x', '--kernels', '']).kernels == []
  with pytest.raises(SystemExit):
    benchmark.parse_args(['--shape', 'smnist', '--json', 'x', '--kernels', 'nope'])
  for name in ('none', 'batch', 'layer', 'batch_input'):
    assert benchmark.kernel_refusal(name, 'fused', TINY['ptb'], args) is None, name
  # The shape's hidden size is checked too: PTB's 1000 units are more than the Pallas kernel holds.
  assert benchmark.kernel_refusal('batch', 'pallas', TINY['ptb'], args) is None
  assert 'hidden <= 128' in benchmark.kernel_refusal('batch', 'pallas', bench.SHAPES['ptb'], args)
  model = bench.build_model('batch', TINY['ptb'], kernel='fused')
  assert model.spec.kernel == 'fused'
  # The command line's settings reach the spec; 'auto' = the shape's (the task configs').
  assert (model.spec.unroll, model.spec.remat, model.spec.hoist_input) == (1, False, False)
  args = benchmark.parse_args(['--shape', 'ptb', '--json', 'x', '--unroll', '2', '--remat', 'true',
                               '--hoist-input', 'true'])
  spec = bench.build_model('batch', TINY['ptb'], **benchmark.spec_kwargs(args)).spec
  assert (spec.unroll, spec.remat, spec.hoist_input) == (2, True, True)
  # Every scheme by the scan, then by each kernel that supports it; the rest listed as skipped.
  args = benchmark.parse_args(['--shape', 'smnist', '--json', 'x', '--schemes', 'batch,streaming'])
  runs, skipped = benchmark.plan_runs(TINY['smnist'], args)
  expected = {bench.REF: (bench.REF, 'scan'), 'batch': ('batch', 'scan'),
              'streaming': ('streaming', 'scan'), 'batch/fused': ('batch', 'fused')}
  if cpu_lstm.unavailable() is None:  # the C++ kernel runs streaming too
    expected.update({'batch/cpu': ('batch', 'cpu'), 'streaming/cpu': ('streaming', 'cpu')})
  assert runs == expected
  assert list(skipped)[0] == 'streaming/fused' and 'Streaming' in skipped['streaming/fused']


@pytest.mark.parametrize('shape', sorted(TINY))
def test_torch_bn_lstm_is_the_bn_lstm(shape):
  """The torch BN-LSTM column computes normrnn's BN-LSTM (scheme 'batch', train mode: batch
  statistics per step) given the same parameters on the benchmark's full-length batches, and its
  train step runs and updates the per-step running buffers. (With padding the two differ as the
  peers' code does: its batch statistics include the padded rows.)"""
  torch = pytest.importorskip('torch')
  s = TINY[shape]
  batch = bench.make_batch(s, s['length'])
  torch_bench = benchmark.TorchBench(s, batch, bn=True)
  cell = torch_bench.lstm.cell
  model = bench.build_model('batch', s)
  variables = model.init(jax.random.PRNGKey(0), batch['inputs'], batch['mask'], train=True)
  params = jax.tree.map(np.asarray, variables['params'])
  c = params['rnn']['layer_0']['cell']
  t = lambda v: torch.as_tensor(np.array(v))
  with torch.no_grad():
    cell.weight_ih.copy_(t(c['kernel_x'])), cell.weight_hh.copy_(t(c['kernel_h']))
    cell.bias.copy_(t(c['bias']))
    for site, bn in (('input', cell.bn_ih), ('recurrent', cell.bn_hh), ('cell', cell.bn_c)):
      bn.weight.copy_(t(c[f'{site}_norm']['gamma']))
    cell.bn_c.bias.copy_(t(c['cell_norm']['beta']))
    hs = torch_bench.lstm(torch_bench.x, torch_bench.mask).numpy()
  stack = model.spec.stack(torch_bench.x.shape[-1], train=True)
  x = jax.numpy.asarray(torch_bench.x.numpy())
  (ys, _), _ = jax.jit(lambda v: stack.apply(v, x, batch['mask'], mutable=['batch_stats']))(
      {'params': params['rnn'], 'batch_stats': variables['batch_stats']['rnn']})
  np.testing.assert_allclose(hs, np.asarray(ys), rtol=1e-4, atol=1e-5)
  before = cell.bn_ih.running_mean_0.clone()
  assert math.isfinite(torch_bench.step())
  assert not torch.equal(before, cell.bn_ih.running_mean_0)


def test_main_with_torch(tmp_path, monkeypatch):
  pytest.importorskip('torch')
  monkeypatch.setitem(bench.SHAPES, 'ptb', TINY['ptb'])
  matmul = benchmark.matmul_gflops
  monkeypatch.setattr(benchmark, 'matmul_gflops', lambda: matmul(n=64, reps=2))
  out = tmp_path / 'bench.json'
  benchmark.main(['--shape', 'ptb', '--json', str(out), '--reps', '1', '--schemes', 'none',
                  '--kernels', ''])
  r = json.loads(out.read_text())
  models = [bench.REF, 'none', benchmark.TORCH, benchmark.TORCH_BN]
  assert list(r['ms']) == models and list(r['ratio_to_torch_bn']) == models
  assert r['ratio_to_torch_bn'][benchmark.TORCH_BN] == 1.0 and r['skipped'] == {}
