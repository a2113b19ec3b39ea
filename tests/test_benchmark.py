"""scripts/benchmark.py on tiny shapes: its scheme list follows the registry at run time, and
every registered scheme builds and takes a train step (no timing assertions)."""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import optax
import pytest

from normrnn.norms import NORMS, register, unregister
from tests.helpers import load_script

benchmark = load_script('scripts/benchmark.py')

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
  assert benchmark.default_schemes() == list(NORMS)
  assert throwaway.name in benchmark.default_schemes()
  args = benchmark.parse_args(['--shape', 'smnist', '--json', 'out.json'])
  assert args.schemes == list(NORMS) and throwaway.name in args.schemes
  assert benchmark.parse_args(['--shape', 'ptb', '--json', 'out.json',
                               '--schemes', f'batch,{throwaway.name}']).schemes == [
                                   'batch', throwaway.name]
  model = benchmark.build_model(throwaway.name, TINY['smnist'], args)
  assert model.spec.options.gamma_init == 0.7  # the scheme's declared gamma_init


def test_unknown_scheme_is_refused(capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args(['--shape', 'smnist', '--json', 'x', '--schemes', 'batch,nope'])
  assert 'unknown scheme' in capsys.readouterr().err
  with pytest.raises(ValueError, match='not a registered LSTM scheme'):
    benchmark.build_model('nope', TINY['smnist'], benchmark.parse_args(
        ['--shape', 'smnist', '--json', 'x']))


@pytest.mark.parametrize('shape', sorted(TINY))
def test_every_scheme_builds_and_traces(shape, throwaway):
  """Every registered scheme (the run-time one included) builds with its declared options, and
  its train step traces to a scalar loss (jax.eval_shape: no compilation, so it stays fast;
  test_main_writes_the_json runs real steps)."""
  s = TINY[shape]
  args = benchmark.parse_args(['--shape', shape, '--json', 'x'])
  batch, tx = benchmark.make_batch(s, s['length']), optax.adam(1e-3)
  names = [benchmark.REF] + benchmark.default_schemes()
  assert throwaway.name in names
  for name in names:
    model = benchmark.build_model(name, s, args)
    if name != benchmark.REF:
      scheme = NORMS[name]
      assert model.spec.options == scheme.make_options()
      assert model.spec.options.gamma_init == scheme.gamma_init
      assert model.spec.max_time_steps == s['length']
    variables = jax.eval_shape(
        lambda k, m=model: m.init(k, batch['inputs'], batch['mask'], train=True),
        jax.random.PRNGKey(0))
    params, stats = variables['params'], variables.get('batch_stats', {})
    *_, loss = jax.eval_shape(benchmark.make_step(model, tx), params, stats,
                              jax.eval_shape(tx.init, params), batch)
    assert loss.shape == () and loss.dtype == jax.numpy.float32, name


def test_main_writes_the_json(tmp_path, monkeypatch):
  monkeypatch.setitem(benchmark.SHAPES, 'smnist', TINY['smnist'])
  matmul = benchmark.matmul_gflops
  monkeypatch.setattr(benchmark, 'matmul_gflops', lambda: matmul(n=64, reps=2))
  out = tmp_path / 'bench.json'
  benchmark.main(['--shape', 'smnist', '--json', str(out), '--reps', '1', '--schemes', 'batch',
                  '--no-torch', '--eval-length', '8'])
  r = json.loads(out.read_text())
  models = [benchmark.REF, 'batch']
  for key in ('ms', 'ratio_to_flax', 'gflops', 'peak_memory_mb', 'compile_s'):
    assert list(r[key]) == models, key
  assert r['shape'] == 'smnist' and r['ratio_to_flax'][benchmark.REF] == 1.0
  assert all(math.isfinite(v) and v > 0 for v in r['ms'].values())
  assert list(r['eval']['ms']) == models and r['eval']['length'] == 8
