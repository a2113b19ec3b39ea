"""The scan (normrnn.recurrent) against a plain Python loop over the cell, plus stacking,
unroll/remat, gradients, retracing, re-estimation and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normrnn import models, popstats
from normrnn.norms import NORMS, NormOptions
from normrnn.recurrent import RecurrentStack
from tests import helpers
from tests.numpy_reference import reverse_valid_np

SCHEMES = list(NORMS)
TOL = dict(rtol=2e-4, atol=2e-5)


def _python_loop(layer, variables, x, mask, reverse):
  """Runs the cell by hand: hoist, then one `step` call per time step in a Python loop."""
  cell = layer.cell
  cell_vars = {'params': variables['params']['cell']}
  t_max = layer.max_time_steps
  stats = variables.get('batch_stats', {})
  x, mask = np.asarray(x), np.asarray(mask)
  lengths = mask.sum(1).astype(int)
  if reverse:
    x = reverse_valid_np(x, lengths)
  specs = cell.apply(cell_vars, method='stat_specs')
  length = x.shape[1]
  lookup = {}
  for site, (_, kind) in specs.items():
    mean, var = stats[f'{site}_mean'], stats[f'{site}_var']
    if kind == 'per_step':
      idx = np.minimum(np.arange(length), t_max - 1)
      mean, var = mean[idx], var[idx]
    lookup[site] = dict(mean=mean, var=var)
  carry = cell.apply(cell_vars, x.shape[0], method='initialize_carry')
  inputs, consts, _, carry = cell.apply(cell_vars, x.swapaxes(0, 1), mask.T, lookup, carry,
                                        method='hoist')  # time-major
  ys = []
  for t in range(length):
    stats_t = {s: (jax.tree.map(lambda v: v[t], d) if specs[s][1] == 'per_step' else d)
               for s, d in lookup.items() if s != 'input'}
    carry, y, _ = cell.apply(cell_vars, carry, inputs[t], mask[:, t], stats_t, consts,
                             method='step')
    ys.append(np.asarray(y))
  out = np.stack(ys, 1)
  return (reverse_valid_np(out, lengths) if reverse else out), carry


@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.parametrize('masked, reverse', [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize('train', [True, False])
def test_scan_equals_python_loop(scheme, masked, reverse, train):
  x, mask = helpers.data(lengths=[5, 2, 4, 3] if masked else None, seed=2)
  layer = helpers.make_layer(scheme, train=train, reverse=reverse)
  variables = layer.init(jax.random.PRNGKey(0), x, mask)
  variables = dict(variables, params=helpers.perturb_params(variables['params'],
                                                            jax.random.PRNGKey(1)))
  if 'batch_stats' in variables:
    variables['batch_stats'] = helpers.random_tables(variables['batch_stats'],
                                                     jax.random.PRNGKey(2))
  (y, carry), _ = layer.apply(variables, x, mask, mutable=['batch_stats'])
  y_loop, carry_loop = _python_loop(layer, variables, x, mask, reverse)
  np.testing.assert_allclose(y, y_loop, **TOL)
  np.testing.assert_allclose(carry['h'], carry_loop['h'], **TOL)


@pytest.mark.parametrize('scheme', ['none', 'batch', 'streaming'])
def test_unroll_and_remat_change_nothing(scheme):
  x, mask = helpers.data(lengths=[5, 3, 4, 5], seed=4)

  def loss_and_grad(**kw):
    layer = helpers.make_layer(scheme, train=True, **kw)
    variables = layer.init(jax.random.PRNGKey(0), x, mask)

    def loss(p):
      (y, _), _ = layer.apply({**variables, 'params': p}, x, mask, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y))

    return jax.value_and_grad(loss)(variables['params'])

  base = loss_and_grad()
  for kw in (dict(unroll=3), dict(remat=True), dict(unroll=2, remat=True)):
    other = loss_and_grad(**kw)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), base, other)


@pytest.mark.parametrize('cell, scheme', [('lstm', s) for s in SCHEMES] + [('tanh_rnn', 'batch')])
def test_input_in_the_loop_equals_hoisted_input(cell, scheme):
  """hoist_input=False (W_x x_t and its norm inside each step) computes exactly what the hoisted
  path computes: outputs, updated population tables, moments and gradients in training (masked,
  reversed), and outputs in evaluation with population statistics (sequence-wise BN is always
  hoisted, so its two layers must agree trivially)."""
  x, mask = helpers.data(lengths=[5, 2, 4, 3], seed=8)
  results = []
  for hoist in (True, False):
    layer = helpers.make_layer(scheme, train=True, cell=cell, reverse=True, hoist_input=hoist)
    variables = layer.init(jax.random.PRNGKey(0), x, mask)
    variables = dict(variables, params=helpers.perturb_params(variables['params'],
                                                              jax.random.PRNGKey(1)))

    def loss(p, layer=layer, variables=variables):
      (y, _), upd = layer.apply({**variables, 'params': p}, x, mask,
                                mutable=['batch_stats', 'moments'])
      return jnp.sum(jnp.sin(y)), (y, upd)

    (_, (y, upd)), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
    eval_layer = helpers.make_layer(scheme, train=False, cell=cell, hoist_input=hoist)
    stats = upd.get('batch_stats', {})
    y_eval, _ = eval_layer.apply({'params': variables['params'], 'batch_stats': stats}, x, mask)
    results.append((y, upd, grads, y_eval))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), results[0], results[1])


def test_stack_equals_layers_applied_in_turn():
  x, mask = helpers.data(lengths=[5, 3, 4, 2], seed=6)
  opts = helpers.options('batch')
  from normrnn.cells import NormLSTMCell
  cells = tuple(NormLSTMCell(3, d, NORMS['batch'], opts, 'orthogonal', 1.0, 0.0, True)
                for d in (2, 3))
  stack = RecurrentStack(cells, 5, helpers.RATE, reverse=(False, True))
  variables = stack.init(jax.random.PRNGKey(0), x, mask)
  (y, _), _ = stack.apply(variables, x, mask, mutable=['batch_stats'])
  h = x
  for i, rev in enumerate((False, True)):
    layer = helpers.make_layer('batch', train=True, features=h.shape[-1], reverse=rev)
    sub = {'params': variables['params'][f'layer_{i}'],
           'batch_stats': variables['batch_stats'][f'layer_{i}']}
    (h, _), _ = layer.apply(sub, h, mask, mutable=['batch_stats'])
  np.testing.assert_allclose(y, h, **TOL)


def test_tanh_rnn_with_bn_on_the_sum_matches_numpy():
  x, mask = helpers.data(seed=8)
  layer = helpers.make_layer('batch', train=True, cell='tanh_rnn', recurrent_init='identity')
  variables = layer.init(jax.random.PRNGKey(0), x, mask)
  p = helpers.to_numpy(variables['params']['cell'])
  np.testing.assert_array_equal(p['kernel_h'], np.eye(3))
  (y, _), _ = layer.apply(variables, x, mask, mutable=['batch_stats'])
  h = np.tile(p['h0'], (4, 1)).astype(np.float64)
  ax = np.asarray(x, np.float64) @ p['kernel_x']
  for t in range(x.shape[1]):
    pre = ax[:, t] + h @ p['kernel_h'] + p['bias']
    pre = (p['sum_norm']['gamma'] * (pre - pre.mean(0)) / np.sqrt(pre.var(0) + helpers.EPS)
           + p['sum_norm']['beta'])
    h = np.tanh(pre)
    np.testing.assert_allclose(y[:, t], h, **TOL)


def test_tanh_rnn_rejects_schemes_it_cannot_host():
  x, mask = helpers.data()
  with pytest.raises(ValueError,
                     match='tanh_rnn cell does not support scheme .cosine.; schemes with a '
                           'tanh_rnn form: none, batch, layer, streaming'):
    helpers.make_layer('cosine', train=True, cell='tanh_rnn').init(jax.random.PRNGKey(0), x, mask)


@pytest.mark.parametrize('scheme', SCHEMES)
def test_gradients_match_finite_differences(scheme):
  helpers.check_gradients(scheme)


def test_jitted_train_step_compiles_once():
  spec = models.RNNSpec(cell='lstm', hidden=4, layers=1, norm='batch',
                        options=NormOptions(0.1, 1e-5, streaming_mix=0.5),
                        recurrent_init='identity_orthogonal',
                        forget_bias=1.0, h0_noise=0.1, max_time_steps=6, stats_rate=0.1, unroll=1,
                        remat=False)
  model = models.SequenceClassifier(spec, num_classes=3)
  x, mask = helpers.data(batch=4, length=6, features=1)
  variables = model.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, x,
                         mask, train=True)
  tx = optax.adam(1e-2)
  opt = tx.init(variables['params'])
  traces = []

  @jax.jit
  def step(params, stats, opt, x, y, key):
    traces.append(1)

    def loss(p):
      logits, upd = model.apply({'params': p, 'batch_stats': stats}, x, mask, train=True,
                                mutable=['batch_stats'], rngs={'noise': key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

    (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), upd['batch_stats'], opt, l

  params, stats = variables['params'], variables['batch_stats']
  losses = []
  for i in range(4):
    xi, _ = helpers.data(batch=4, length=6, features=1, seed=i)
    params, stats, opt, l = step(params, stats, opt, xi, jnp.array([0, 1, 2, 0]),
                                 jax.random.PRNGKey(i))
    losses.append(float(l))
  assert len(traces) == 1
  assert all(np.isfinite(losses))


def test_reestimate_is_plain_average_of_batch_moments():
  layer = helpers.make_layer('batch', train=True, t_max=6)
  batches = [helpers.data(length=n, seed=20 + n) for n in (6, 4, 6)]
  variables = layer.init(jax.random.PRNGKey(0), *batches[0])

  def moments_fn(v, b):
    return layer.apply(v, b[0], b[1], mutable=['moments'])[1]['moments']

  new = popstats.reestimate(moments_fn, variables, batches)
  cell_p = helpers.to_numpy(variables['params']['cell'])
  # input site: per-step mean of W_x x over the batch, averaged over the batches having step t
  per_batch = [np.einsum('btd,dk->btk', np.asarray(x, np.float64), cell_p['kernel_x'])
               for x, _ in batches]
  for t in range(6):
    having = [a[:, t] for a in per_batch if a.shape[1] > t]
    np.testing.assert_allclose(new['input_mean'][t], np.mean([a.mean(0) for a in having], 0),
                               **TOL)
    np.testing.assert_allclose(new['input_var'][t], np.mean([a.var(0) for a in having], 0), **TOL)
  assert set(new) == set(variables['batch_stats'])


def test_h0_noise_needs_rng_and_is_redrawn():
  x, mask = helpers.data()
  layer = helpers.make_layer('none', train=False, h0_noise=0.1)
  variables = layer.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, x,
                         mask)
  y1, _ = layer.apply(variables, x, mask, rngs={'noise': jax.random.PRNGKey(2)})
  y2, _ = layer.apply(variables, x, mask, rngs={'noise': jax.random.PRNGKey(3)})
  assert not np.allclose(y1, y2)
  with pytest.raises(Exception, match='noise'):
    layer.apply(variables, x, mask)


@pytest.mark.parametrize('bad, match', [
    (lambda x, m: (x[0], m), r'\[batch, time, features\]'),
    (lambda x, m: (x, m[:, :3]), 'mask must have shape'),
    (lambda x, m: (jnp.concatenate([x, x], 1), jnp.concatenate([m, m], 1)),
     'longer than max_time_steps'),
])
def test_bad_input_fails_clearly(bad, match):
  x, mask = helpers.data()
  layer = helpers.make_layer('batch', train=True)
  with pytest.raises(ValueError, match=match):
    layer.init(jax.random.PRNGKey(0), *bad(x, mask))


def test_lm_model_rejects_float_inputs_and_classifier_rejects_rank2():
  spec = models.RNNSpec(cell='lstm', hidden=3, layers=1, norm='none',
                        options=NormOptions(1.0, 1e-5, streaming_mix=0.5),
                        recurrent_init='orthogonal', forget_bias=1.0, h0_noise=0.0,
                        max_time_steps=5, stats_rate=0.1, unroll=1, remat=False)
  with pytest.raises(ValueError, match='integer tokens'):
    models.CharLM(spec, 7).init(jax.random.PRNGKey(0), jnp.ones((2, 5)), train=False)
  with pytest.raises(ValueError, match='batch, time, features'):
    models.SequenceClassifier(spec, 3).init(jax.random.PRNGKey(0), jnp.ones((2, 5)), train=False)
  with pytest.raises(ValueError, match='unknown normalization scheme'):
    models.RNNSpec(cell='lstm', hidden=3, layers=1, norm='bn',
                   options=NormOptions(1.0, 1e-5, streaming_mix=0.5), recurrent_init='orthogonal',
                   forget_bias=1.0, h0_noise=0.0, max_time_steps=5, stats_rate=0.1, unroll=1,
                   remat=False)


def test_lstm_none_init_matches_paper():
  """Forget bias 1 on the f slice of [g, f, i, o]; identity on the g block of W_h; (n, 4n)
  kernels with orthonormal rows; h0 = c0 = 0."""
  x, mask = helpers.data(features=1)
  layer = helpers.make_layer('none', train=False, hidden=4, features=1,
                             recurrent_init='identity_orthogonal')
  p = helpers.to_numpy(layer.init(jax.random.PRNGKey(0), x, mask)['params']['cell'])
  np.testing.assert_array_equal(p['bias'], np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
  np.testing.assert_allclose(p['kernel_h'][:, :4], np.eye(4))
  rest = p['kernel_h'][:, 4:]
  np.testing.assert_allclose(rest @ rest.T, np.eye(4), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(p['kernel_x']), 1.0, atol=1e-5)
  assert not p['h0'].any() and not p['c0'].any()


@pytest.mark.parametrize('scheme', ['batch', 'streaming', 'layer'])
def test_chunked_stream_evaluation_equals_one_pass(scheme):
  spec = models.RNNSpec(cell='lstm', hidden=4, layers=2, norm=scheme,
                        options=helpers.options(scheme), recurrent_init='orthogonal',
                        forget_bias=1.0, h0_noise=0.0, max_time_steps=5, stats_rate=0.1, unroll=1,
                        remat=False)
  model = models.CharLM(spec, vocab_size=7)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 7, (1, 30)), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), tokens[:, :5], train=False)
  if 'batch_stats' in variables:
    variables = dict(variables, batch_stats=jax.tree.map(
        lambda v: v + 0.3 * jax.random.normal(jax.random.PRNGKey(1), v.shape) ** 2,
        variables['batch_stats']))
  whole = model.apply(variables, tokens, train=False)
  carries, parts = None, []
  for start in range(0, 30, 10):
    logits, carries = model.apply(variables, tokens[:, start:start + 10], train=False,
                                  carries=carries, position_offset=min(start, 5),
                                  return_carries=True)
    parts.append(logits)
  np.testing.assert_allclose(jnp.concatenate(parts, 1), whole, **TOL)
