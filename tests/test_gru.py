"""The GRU (normrnn.cells.NormGRUCell) with every scheme the registry gives it: against the
independent numpy reference (tests/numpy_reference.py) in training and evaluation, with masks,
reversed, at batch size 1 and beyond T_max; the scan against a Python loop over `step`; the input
term in the loop vs hoisted; finite differences; inits; flax's nn.GRUCell for 'none'; and the
task configs' `cell=gru`. Tiny shapes: every case compiles its own scan."""
import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normrnn import trainer
from normrnn.config import ConfigError, load_config, validate
from normrnn.config import build
from normrnn.norms import NORMS
from tests import helpers
from tests.numpy_reference import SITE_KIND, GRUReference
from tests.test_recurrent import _python_loop

GRU_SCHEMES = [name for name, s in NORMS.items() if 'gru' in s.cells]
TOL = dict(rtol=2e-4, atol=2e-5)
T_MAX = 5


def _layer(scheme, *, train, reverse=False, hoist_input=True):
  return helpers.make_layer(scheme, train=train, reverse=reverse, cell='gru', t_max=T_MAX,
                            hoist_input=hoist_input)


@functools.lru_cache(maxsize=None)
def _variables(scheme):
  """Parameters moved off their init and population tables with non-trivial values, one set
  per scheme (they depend on neither the mode, the direction nor the data)."""
  variables = _layer(scheme, train=False).init(jax.random.PRNGKey(0), *helpers.data())
  params = helpers.perturb_params(variables['params'], jax.random.PRNGKey(1))
  tables = helpers.random_tables(variables.get('batch_stats', {}), jax.random.PRNGKey(2))
  return params, tables


def _reference(params, tables, scheme):
  return GRUReference(helpers.to_numpy(params['cell']), scheme, eps=helpers.EPS, lam=helpers.LAM,
                      tables=helpers.to_numpy(tables), max_time_steps=T_MAX)


def test_every_builtin_scheme_has_a_gru_form_and_the_registry_checks_its_sites():
  # Every built-in scheme defines the input and recurrent sites, all a GRU needs.
  assert set(SITE_KIND) <= set(GRU_SCHEMES)
  no_recurrent = dataclasses.replace(NORMS['none'], name='no_recurrent', recurrent=None,
                                     cells=('gru',))
  with pytest.raises(ValueError, match="lists cell 'gru' but has no 'recurrent' site"):
    no_recurrent.check()
  lstm_only = dataclasses.replace(NORMS['layer'], cells=('lstm',))
  cell = helpers.make_layer('layer', train=True, cell='gru').cell.clone(scheme=lstm_only)
  with pytest.raises(ValueError, match="gru cell does not support scheme 'layer'"):
    cell.init(jax.random.PRNGKey(0), 4, method='initialize_carry')


@pytest.mark.parametrize('scheme', GRU_SCHEMES)
@pytest.mark.parametrize('train', [True, False])
def test_gru_matches_numpy_reference(scheme, train):
  """Masked (garbage in the padding), forward and reversed; in evaluation on sequences 2.4x
  longer than T_max (per-step statistics of the last trained step beyond it). Training also
  checks the running averages of the population tables."""
  length, lengths = (5, [5, 3, 1, 4]) if train else (12, [12, 7, 1, 10])
  x, mask = helpers.data(length=length, lengths=lengths, seed=3)
  for reverse in (False, True):
    layer, (params, tables) = _layer(scheme, train=train, reverse=reverse), _variables(scheme)
    (y, carry), updated = layer.apply({'params': params, 'batch_stats': tables}, x, mask,
                                      mutable=['batch_stats'])
    ref = _reference(params, tables, scheme)
    y_ref, h_ref = ref.run(x, mask, train=train, reverse=reverse)
    np.testing.assert_allclose(y, y_ref, err_msg=f'reverse={reverse}', **TOL)
    np.testing.assert_allclose(carry['h'], h_ref, **TOL)
    got = helpers.to_numpy(updated.get('batch_stats', {}))
    expected = ref.updated_tables(helpers.RATE, length) if train else tables
    assert set(got) == set(expected)
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], err_msg=name, **TOL)


@pytest.mark.parametrize('scheme', GRU_SCHEMES)
def test_gru_at_batch_size_one(scheme):
  """Evaluation of one sequence = the reference (and so its row of a batch); training at batch
  size 1 = the reference, or a clear error where a statistic is over the batch axis alone."""
  x, mask = helpers.data(batch=1, length=4, seed=5)
  layer, (params, tables) = _layer(scheme, train=False), _variables(scheme)
  y, _ = layer.apply({'params': params, 'batch_stats': tables}, x, mask)
  np.testing.assert_allclose(y, _reference(params, tables, scheme).run(x, mask, train=False)[0],
                             **TOL)
  train_layer = _layer(scheme, train=True)
  variables = {'params': params, 'batch_stats': tables}
  if 'BatchStep' in (NORMS[scheme].input.__name__, NORMS[scheme].recurrent.__name__):
    with pytest.raises(ValueError, match='batch size'):
      train_layer.apply(variables, x, mask, mutable=['batch_stats'])
  else:
    (y, _), _ = train_layer.apply(variables, x, mask, mutable=['batch_stats'])
    y_ref, _ = _reference(params, tables, scheme).run(x, mask, train=True)
    np.testing.assert_allclose(y, y_ref, **TOL)


@pytest.mark.parametrize('scheme', GRU_SCHEMES)
def test_gru_scan_equals_python_loop(scheme):
  """Training mode, masked and reversed: the scan = hoist + one `step` call per time step."""
  x, mask = helpers.data(lengths=[5, 2, 4, 3], seed=2)
  layer, (params, tables) = _layer(scheme, train=True, reverse=True), _variables(scheme)
  variables = {'params': params, 'batch_stats': tables}
  (y, carry), _ = layer.apply(variables, x, mask, mutable=['batch_stats'])
  y_loop, carry_loop = _python_loop(layer, variables, x, mask, True)
  np.testing.assert_allclose(y, y_loop, **TOL)
  np.testing.assert_allclose(carry['h'], carry_loop['h'], **TOL)


def test_gru_input_in_the_loop_equals_hoisted_input():
  """hoist_input=False computes what the hoisted path computes: outputs, updated tables and
  gradients in training (masked, reversed). The input-term code is the LSTM's, tested there for
  every scheme; streaming norm has both statistics and per-sequence state at the input site."""
  scheme = 'streaming'
  x, mask = helpers.data(lengths=[5, 2, 4, 3], seed=8)
  results = []
  for hoist in (True, False):
    layer = _layer(scheme, train=True, reverse=True, hoist_input=hoist)
    params, tables = _variables(scheme)

    def loss(p, layer=layer, tables=tables):
      (y, _), upd = layer.apply({'params': p, 'batch_stats': tables}, x, mask,
                                mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y)), (y, upd)

    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), results[0], results[1])


@pytest.mark.parametrize('scheme', ['batch', 'streaming'])
def test_gru_gradients_match_finite_differences(scheme):
  """Reverse-mode gradients w.r.t. parameters and inputs in float64, training mode, masked."""
  helpers.check_gradients(scheme, cell='gru')


def test_gru_init():
  """[I, orthogonal(H, 2H)] with the identity on the candidate block n (gate order [n, r, z]) or
  one semi-orthogonal (H, 3H) matrix; biases and h_0 zero; the scheme's gains, no shifts at the
  two sites, no cell site."""
  x, mask = helpers.data(features=1)
  for init in ('identity_orthogonal', 'orthogonal'):
    layer = helpers.make_layer('batch', train=True, cell='gru', hidden=4, features=1,
                               recurrent_init=init)
    p = helpers.to_numpy(layer.init(jax.random.PRNGKey(0), x, mask)['params']['cell'])
    assert set(p) == {'kernel_x', 'kernel_h', 'bias', 'bias_hn', 'h0', 'input_norm',
                      'recurrent_norm'}
    assert p['kernel_h'].shape == (4, 12)
    rest = p['kernel_h'][:, 4:] if init == 'identity_orthogonal' else p['kernel_h']
    if init == 'identity_orthogonal':
      np.testing.assert_allclose(p['kernel_h'][:, :4], np.eye(4))
    np.testing.assert_allclose(rest @ rest.T, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p['kernel_x']), 1.0, atol=1e-5)
    assert not p['bias'].any() and not p['bias_hn'].any() and not p['h0'].any()
    for site in ('input_norm', 'recurrent_norm'):
      assert set(p[site]) == {'gamma'}
      np.testing.assert_allclose(p[site]['gamma'], 0.1)


def test_gru_none_is_flax_gru_cell():
  """With scheme 'none' the cell is flax's nn.GRUCell (same equations and biases), weights mapped
  gate by gate from the fused [n, r, z] matrices."""
  x, mask = helpers.data(seed=4)
  layer, (params, _) = _layer('none', train=False), _variables('none')
  p = helpers.to_numpy(params['cell'])
  split = lambda a: np.split(a, 3, axis=-1)
  (kx_n, kx_r, kx_z), (kh_n, kh_r, kh_z), (b_n, b_r, b_z) = (
      split(p['kernel_x']), split(p['kernel_h']), split(p['bias']))
  flax_params = {'params': {
      'ir': {'kernel': kx_r, 'bias': b_r}, 'iz': {'kernel': kx_z, 'bias': b_z},
      'in': {'kernel': kx_n, 'bias': b_n}, 'hr': {'kernel': kh_r}, 'hz': {'kernel': kh_z},
      'hn': {'kernel': kh_n, 'bias': p['bias_hn']}}}
  y, _ = layer.apply({'params': params}, x, mask)
  h = jnp.broadcast_to(p['h0'], (x.shape[0], 3))
  for t in range(x.shape[1]):
    h, out = nn.GRUCell(features=3).apply(flax_params, h, x[:, t])
    np.testing.assert_allclose(y[:, t], out, **TOL)


@pytest.mark.parametrize('task', ['digits', 'smnist', 'pmnist', 'ptb_char', 'text8'])
def test_every_task_config_builds_a_gru(task):
  module = helpers.config_module(task)
  for norm in GRU_SCHEMES:
    config = module.get_config(f'norm={norm},cell=gru,size=smoke')
    validate(config)
    assert config.model.cell == 'gru'
  assert module.get_config('size=smoke').model.cell == 'lstm'
  config = load_config(str(helpers.ROOT / 'configs' / f'{task}.py') + ':size=smoke',
                       {'model.cell': 'gru'})
  validate(config)
  assert config.model.cell == 'gru'
  with pytest.raises(ConfigError, match='choose one of: ' + ', '.join(build.TASK_CELLS)):
    module.get_config('cell=tanh_rnn')


def test_digits_smoke_run_trains_a_bn_gru(tmp_path):
  config = helpers.config_module('digits').get_config('norm=batch,cell=gru,size=smoke')
  config.train.progress_bar = False
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert results['norm'] == 'batch'
  assert 0.0 <= results['metrics']['test/acc'] <= 1.0
  assert np.isfinite(results['metrics']['test/loss'])
  with open(os.path.join(tmp_path, 'config.json')) as f:
    assert json.load(f)['model']['cell'] == 'gru'
