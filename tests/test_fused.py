"""The fused kernel (model.kernel='fused', normrnn/kernels/fused_lstm.py) against the scan.

Every comparison runs the same `Recurrent` layer with kernel='scan' (the reference) and
kernel='fused' and compares the outputs, the final carry, the moments returned for the population
tables, the updated tables and the gradients of one loss w.r.t. every parameter, the inputs, the
probe and (in evaluation) the population tables, in float64 (tight tolerance), for a masked batch
(padding of different lengths, garbage in the padding) and a full one. Then: finite differences,
sequences longer than the tables, chunked evaluation, the registry's refusals and the config
field, and a float32 smoke training run whose losses match the scan's.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normrnn import experiment, kernels, models
from normrnn.config import schema
from normrnn.kernels import fused_lstm
from normrnn.norms import NORMS, compose
from tests import helpers

LENGTHS = [5, 2, 4, 3]  # B = 4, T = 5


def _layer(scheme, kernel, **kw):
  layer = helpers.make_layer('none', kernel=kernel, **kw)
  if isinstance(scheme, str):
    scheme = NORMS[scheme]
  cell = layer.cell.clone(scheme=scheme, options=scheme.make_options(eps=helpers.EPS))
  return layer.clone(cell=cell)


def _run(scheme, *, train, length=5, use_moments=False, probe=False, **kw):
  """{kernel: [results of the full batch, results of the masked batch]}; each result holds the
  outputs, final carry, updated collections and the gradients of one loss."""
  layers = {k: _layer(scheme, k, train=train, **kw) for k in ('scan', 'fused')}
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
  for scan, fused in zip(out['scan'], out['fused']):
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
def test_equals_scan(scheme, train, settings, monkeypatch):
  settings = dict(settings)
  monkeypatch.setattr(fused_lstm, 'MAX_CHUNK', settings.pop('max_chunk', fused_lstm.MAX_CHUNK))
  with jax.enable_x64(True):
    _assert_equal(_run(scheme, train=train, **settings))


def test_finite_differences():
  helpers.check_gradients('batch', kernel='fused', hoist_input=False, remat=True)


def test_longer_than_the_tables_and_chunked_evaluation():
  """Evaluation beyond max_time_steps uses the last step's statistics (both kernels), and a long
  sequence evaluated in chunks (initial_carry, position_offset) equals it in one piece."""
  x, mask = helpers.data(length=9, lengths=[9, 4, 7, 9])
  layers = {k: _layer('batch', k, train=False, t_max=4, hoist_input=False) for k in
            ('scan', 'fused')}
  variables = layers['scan'].init(jax.random.PRNGKey(0), x, mask)
  variables = dict(variables, batch_stats=helpers.random_tables(variables['batch_stats'],
                                                                jax.random.PRNGKey(2)))
  whole = {k: jax.jit(layer.apply)(variables, x, mask) for k, layer in layers.items()}
  for a, b in zip(jax.tree.leaves(whole['scan']), jax.tree.leaves(whole['fused'])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  first, carry = layers['fused'].apply(variables, x[:, :5], mask[:, :5])
  second, carry = layers['fused'].apply(variables, x[:, 5:], mask[:, 5:], initial_carry=carry,
                                        position_offset=5)
  np.testing.assert_allclose(np.concatenate([first, second], 1), whole['fused'][0], rtol=1e-5,
                             atol=1e-6)


def test_supports_and_refusals():
  settings = dict(hoist_input=False, remat=True, unroll=1, train=True)
  ok = ['none', 'batch', 'batch_input', 'sequence', 'layer', 'weight']
  assert [n for n, s in NORMS.items() if fused_lstm.supports('lstm', s, **settings) is None] == ok
  assert fused_lstm.supports('lstm', compose('batch', input='sequence'), **settings) is None
  assert 'Streaming' in fused_lstm.supports('lstm', NORMS['streaming'], **settings)
  assert 'Cosine' in fused_lstm.supports('lstm', NORMS['cosine'], **settings)
  assert 'LSTM cell only' in fused_lstm.supports('gru', NORMS['none'], **settings)
  # A refusal names what the kernel supports.
  why = kernels.refusal('fused', 'lstm', NORMS['cosine'], hoist_input=False, remat=True, unroll=1)
  assert 'supports the schemes none, batch, batch_input, sequence, layer, weight' in why
  assert kernels.refusal('scan', 'gru', NORMS['cosine'], hoist_input=False, remat=True,
                         unroll=1) is None
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


def test_smoke_training_run_matches_the_scan():
  """A run's config with `--config.model.kernel=fused` (the digits BN-LSTM, smoke size, RMSProp)
  trains with the scan's losses and gradient norms, to float32 accuracy. (Not bitwise: the two
  sum the gradient terms in different orders. The parameters are not compared: h_0's gradient
  through the recurrent BN is zero up to rounding at t = 0 (all rows of W_h h_0 are equal), and
  RMSProp's g / sqrt(mean g^2) turns that rounding noise into full-size steps in both.)"""
  digits = helpers.config_module('digits')
  runs = {}
  for kernel in ('scan', 'fused'):
    config = digits.get_config('norm=batch,size=smoke')
    config.model.kernel = kernel
    exp = experiment.Experiment.from_config(config)
    state, step, metrics = exp.init_state(), jax.jit(exp.train_step()), []
    for i in range(6):
      state, m = step(state, exp.task.train_batch(i))
      metrics.append((m['loss'], m['grad_norm']))
    runs[kernel] = np.array(metrics)
  np.testing.assert_allclose(runs['fused'][:, 0], runs['scan'][:, 0], rtol=1e-5)  # losses
  np.testing.assert_allclose(runs['fused'][:, 1], runs['scan'][:, 1], rtol=1e-3)
