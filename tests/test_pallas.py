"""The Pallas kernel (model.kernel='pallas', normrnn/kernels/pallas_lstm.py) against the scan.

On CPU the kernel runs in Pallas interpret mode: the same kernel body that the GPU compiles,
executed by JAX. Every comparison runs the same `Recurrent` layer twice, kernel='scan' (the
reference) and kernel='pallas', and compares outputs, final carries, the moments returned for
the population tables, the updated tables and the gradients of every parameter and of the inputs,
masked (padding of different lengths) and unmasked, in float64 so that the tolerance is tight.
A last test lowers both kernels for a GPU (platform 'cuda', from this CPU) to Triton IR.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normrnn import kernels, models
from normrnn.config import schema
from normrnn.kernels import pallas_lstm
from normrnn.norms import NORMS, compose
from tests import helpers

LENGTHS = [5, 2, 4]  # B = 3, T = 5: one full row, two padded ones


def _layer(scheme, *, train, kernel, hidden, **kw):
  return helpers.make_layer(scheme, train=train, hidden=hidden, t_max=5, **kw).clone(
      kernel=kernel)


def _run(scheme, *, train, hidden=4, batch=3, hoist_input=True, reverse=False, probe=False,
         use_moments=False, also_eval=False):
  """{masked: {kernel: result}} for the masked and the unmasked batch, kernel 'scan' and
  'pallas'. A result holds the outputs, final carry, moments, updated tables and gradients of
  one loss w.r.t. the parameters, the inputs (and the probe); with `also_eval`, also the outputs
  and carry of the same parameters in evaluation mode."""
  x, _ = helpers.data(batch=batch, length=5)
  layers = {k: _layer(scheme, train=train, kernel=k, hidden=hidden, hoist_input=hoist_input,
                      reverse=reverse) for k in ('scan', 'pallas')}
  variables = jax.jit(layers['scan'].init)(jax.random.PRNGKey(0), x)
  f64 = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), t)
  params = f64(helpers.perturb_params(variables['params'], jax.random.PRNGKey(1)))
  stats = f64(helpers.random_tables(variables.get('batch_stats', {}), jax.random.PRNGKey(2)))

  def make(layer):
    def loss(p, inputs, probe_in, mask):
      (y, carry), upd = layer.apply({'params': p, 'batch_stats': stats}, inputs, mask,
                                    probe=probe_in, mutable=['batch_stats', 'moments'])
      value = jnp.sum(jnp.sin(3.0 * y)) + jnp.sum(jnp.cos(carry['h'])) + jnp.sum(carry['c'] ** 2)
      if use_moments:  # the cotangents of the returned moments reach the kernel too
        sites = upd['moments']['sites']
        value += jnp.sum(sites['recurrent']['mean'] ** 2) + jnp.sum(sites['cell']['var'])
      return value, (y, carry, upd)

    evaluate = layer.clone(cell=layer.cell.clone(train=False))

    @jax.jit
    def run(p, inputs, probe_in, mask):
      (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
          p, inputs, probe_in, mask)
      if also_eval:
        aux += (evaluate.apply({'params': p, 'batch_stats': stats}, inputs, mask),)
      return aux, grads
    return run

  runs = {k: make(layer) for k, layer in layers.items()}  # one compilation each
  out = {}
  for masked in (False, True):
    xm, mask = helpers.data(batch=batch, length=5,
                            lengths=(LENGTHS + [5] * (batch - 3)) if masked else None)
    xm, mask = f64(xm), f64(mask)
    probe_in = jnp.zeros((batch, 5, hidden), jnp.float64) if probe else None
    out[masked] = {k: run(params, xm, probe_in, mask) for k, run in runs.items()}
  return out


def _assert_equal(result):
  for masked, r in result.items():
    flat_scan = jax.tree_util.tree_flatten_with_path(r['scan'])[0]
    flat_pallas = jax.tree.leaves(r['pallas'])
    assert len(flat_scan) == len(flat_pallas)
    for (path, a), b in zip(flat_scan, flat_pallas):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-10,
                                 err_msg=f'masked={masked} {jax.tree_util.keystr(path)}')


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def test_none_with_probe_and_reverse():
  _assert_equal(_run('none', train=True, probe=True, reverse=True, also_eval=True))


def test_layer_with_probe():
  _assert_equal(_run('layer', train=True, probe=True, hidden=8, also_eval=True))


def test_batch_train_moments_and_in_loop_input():
  # hoist_input=False: the step would normalize the input term; `run` does it before the kernel.
  _assert_equal(_run('batch', train=True, hoist_input=False, use_moments=True))


def test_batch_eval_population_tables_over_a_grid_of_two_programs():
  # 20 rows -> padded to 32 -> two programs of 16 rows (rows are independent in evaluation).
  _assert_equal(_run('batch', train=False, batch=20))


def test_registry_and_supports():
  assert kernels.KERNELS['pallas'].run is pallas_lstm.run
  settings = dict(hoist_input=True, remat=False, unroll=1, hidden=pallas_lstm.MAX_HIDDEN,
                  train=True)
  for name in ('none', 'batch', 'batch_input', 'layer', 'weight', 'sequence'):
    assert pallas_lstm.supports('lstm', NORMS[name], **settings) is None, name
  assert pallas_lstm.supports('lstm', compose('batch', input='sequence'), **settings) is None
  for name in ('cosine', 'streaming'):
    assert 'does not implement' in pallas_lstm.supports('lstm', NORMS[name], **settings)
  assert 'LSTM cell only' in pallas_lstm.supports('gru', NORMS['none'], **settings)
  assert 'unroll' in pallas_lstm.supports('lstm', NORMS['none'], **dict(settings, unroll=2))
  # More units than the kernel holds: refused by `supports` itself (so before anything is
  # built), for every scheme, and the refusal gives that reason alone, not a list of schemes.
  big = dict(settings, hidden=pallas_lstm.MAX_HIDDEN + 1)
  for name in ('none', 'batch', 'cosine'):
    assert 'supports hidden <= 128' in pallas_lstm.supports('lstm', NORMS[name], **big), name
  why = kernels.refusal('pallas', 'lstm', NORMS['batch'], **big)
  assert why == ("the pallas kernel supports hidden <= 128 (one gate's W_h tile must fit in shared "
                 'memory), got 129; use model.kernel=scan')
  assert 'supports the schemes none, batch' in kernels.refusal('pallas', 'lstm', NORMS['cosine'],
                                                               **settings)
  x, mask = helpers.data(batch=2, length=3)
  layer = _layer('none', train=True, kernel='pallas', hidden=pallas_lstm.MAX_HIDDEN + 1)
  with pytest.raises(ValueError, match='model.kernel=scan'):  # refused before its init, too
    jax.eval_shape(layer.init, jax.random.PRNGKey(0), x, mask)


def test_config_validation_refuses_more_units_than_the_kernel_holds():
  """PTB's 1000 units with model.kernel=pallas fail at validation, before anything is written
  or compiled, with one line naming the limit; a small model validates."""
  config = helpers.config_module('ptb_char').get_config('norm=batch')
  config.model.kernel = 'pallas'
  with pytest.raises(schema.ConfigError,
                     match=r"model.kernel='pallas' is not valid: the pallas kernel supports "
                           r'hidden <= 128 .*got 1000; use model.kernel=scan') as err:
    schema.validate(config)
  assert '\n' not in str(err.value) and 'supports no scheme' not in str(err.value)
  with pytest.raises(ValueError, match='hidden <= 128'):
    models.RNNSpec(hidden=1000, norm='batch', max_time_steps=5, kernel='pallas')
  small = helpers.config_module('digits').get_config('norm=batch,size=smoke')
  small.model.kernel = 'pallas'
  assert small.model.hidden <= pallas_lstm.MAX_HIDDEN
  schema.validate(small)


def test_lowers_to_triton_for_a_gpu(monkeypatch):
  """Both kernels at the sMNIST size (H = 100 -> 128 padded, B = 64, the whole batch in one
  program) lower to verified Triton modules for platform 'cuda', here on the CPU: every
  operation of the kernel bodies has a Triton lowering and every tensor has a power-of-two
  size. (Compiling the modules to GPU code needs the GPU: scripts/gpu_check.py.)"""
  from jax._src.pallas.triton import pallas_call_registration as registration
  verified = []
  lower = registration.lowering.lower_jaxpr_to_triton_module

  def lower_and_verify(*args, **kw):
    result = lower(*args, **kw)
    verified.append(result.module.operation.verify())
    return result
  monkeypatch.setattr(registration.lowering, 'lower_jaxpr_to_triton_module', lower_and_verify)

  t, b, h = 4, 64, 100
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  x = jax.random.normal(keys[0], (t, b, 4 * h), jnp.float32)
  h0, c0 = (jax.random.normal(k, (b, h), jnp.float32) for k in keys[1:3])
  w, bias = jax.random.normal(keys[3], (h, 4 * h)), jax.random.normal(keys[4], (4 * h,))
  stats = dict(mean=jnp.zeros((t, 4 * h)), var=jnp.ones((t, 4 * h)))
  cell_stats = dict(mean=jnp.zeros((t, h)), var=jnp.ones((t, h)))
  for kind, train in (('batch', True), ('batch', False), ('layer', True)):
    cfg = pallas_lstm.KernelConfig(hidden=h, recurrent=kind, cell=kind, train=train,
                                   interpret=False)

    def loss(x, w):
      hs, cs, _ = pallas_lstm.lstm_recurrence(
          x, jnp.ones((t, b)), h0, c0, w, bias, cfg=cfg, recurrent_gain=bias,
          cell_gain=bias[:h], cell_shift=bias[:h], recurrent_stats=stats, cell_stats=cell_stats)
      return jnp.sum(jnp.sin(hs)) + jnp.sum(cs)

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(x, w).lower(
        lowering_platforms=('cuda',)).as_text()
    assert text.count('xla.gpu.triton') == 2, kind  # the forward and the backward kernel
  assert verified == [True] * 6
