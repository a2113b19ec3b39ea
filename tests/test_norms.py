"""Every scheme against the independent numpy reference (tests/numpy_reference.py), in train and
eval mode, with masks, reversed, at batch size 1 and on sequences longer than T_max."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normrnn.norms import NORMS, NormOptions, get_scheme
from tests import helpers
from tests.numpy_reference import SITE_KIND

SCHEMES = list(NORMS)
TOL = dict(rtol=2e-4, atol=2e-5)


def test_reference_covers_every_scheme():
  assert set(SITE_KIND) == set(NORMS)


@pytest.mark.parametrize('scheme', SCHEMES)
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('masked, reverse', [(False, False), (True, False), (True, True)])
def test_scheme_matches_numpy_reference(scheme, train, masked, reverse):
  x, mask = helpers.data(lengths=[5, 3, 1, 4] if masked else None)
  layer, params, tables = helpers.setup(scheme, x, mask, train=train, reverse=reverse)
  (y, carry), updated = layer.apply({'params': params, 'batch_stats': tables}, x, mask,
                                    mutable=['batch_stats'])
  ref = helpers.reference(params, tables, scheme)
  y_ref, h_ref = ref.run(x, mask, train=train, reverse=reverse)
  np.testing.assert_allclose(y, y_ref, **TOL)
  if not reverse:
    np.testing.assert_allclose(carry['h'], h_ref, **TOL)
  if train:  # running averages of the population statistics
    expected = ref.updated_tables(helpers.RATE, x.shape[1])
    got = helpers.to_numpy(updated.get('batch_stats', {}))
    assert set(got) == set(expected)
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], err_msg=name, **TOL)
  else:
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                     updated.get('batch_stats', {}), tables))


@pytest.mark.parametrize('scheme', SCHEMES)
def test_eval_three_times_longer_than_training_uses_last_step_stats(scheme):
  t_max = 5
  x, mask = helpers.data(length=3 * t_max, seed=3)
  layer, params, tables = helpers.setup(scheme, x, mask, train=False, t_max=t_max)
  y, _ = layer.apply({'params': params, 'batch_stats': tables}, x, mask)
  assert y.shape == (4, 15, 3)
  assert bool(jnp.all(jnp.isfinite(y)))
  y_ref, _ = helpers.reference(params, tables, scheme, t_max=t_max).run(x, mask, train=False)
  np.testing.assert_allclose(y, y_ref, **TOL)
  if NORMS[scheme].recurrent.stats_kind == 'per_step':
    # Changing the table rows < T_max - 1 must not change steps >= T_max through their stats:
    # equivalently, rows >= T_max are never read. Replace the last row and see steps >= T_max move.
    bumped = dict(tables, recurrent_mean=tables['recurrent_mean'].at[-1].add(1.0))
    y2, _ = layer.apply({'params': params, 'batch_stats': bumped}, x, mask)
    assert not np.allclose(y2[:, t_max:], y[:, t_max:])
    np.testing.assert_allclose(y2[:, :t_max - 1], y[:, :t_max - 1], **TOL)


@pytest.mark.parametrize('scheme', SCHEMES)
def test_batch_size_one_eval_equals_row_of_full_batch(scheme):
  x, mask = helpers.data(batch=4, seed=5)
  layer, params, tables = helpers.setup(scheme, x, mask, train=False)
  variables = {'params': params, 'batch_stats': tables}
  y_all, _ = layer.apply(variables, x, mask)
  y_one, _ = layer.apply(variables, x[2:3], mask[2:3])
  assert bool(jnp.all(jnp.isfinite(y_one)))
  np.testing.assert_allclose(y_one[0], y_all[2], **TOL)


@pytest.mark.parametrize('scheme', SCHEMES)
def test_batch_statistics_at_batch_size_one_fail_clearly(scheme):
  x, mask = helpers.data(batch=1)
  layer = helpers.make_layer(scheme, train=True)
  if NORMS[scheme].input.__name__ == 'BatchStep' or NORMS[scheme].recurrent.__name__ == 'BatchStep':
    with pytest.raises(ValueError, match='batch size 1'):
      layer.init(jax.random.PRNGKey(0), x, mask)
  else:  # statistics-free or batch-size-independent in training
    variables = layer.init(jax.random.PRNGKey(0), x, mask)
    y, _ = layer.apply(variables, x, mask, mutable=['batch_stats'])[0]
    assert bool(jnp.all(jnp.isfinite(y)))


def test_masked_padding_leaves_statistics_of_unpadded_batch():
  """A batch padded with garbage steps (mask 0) gives the same outputs on the valid part and
  the same running statistics as the unpadded batch; padded steps' table rows are untouched."""
  for scheme in ('batch', 'sequence', 'streaming', 'batch_input'):
    x, mask = helpers.data(batch=4, length=4, seed=7)
    x_pad, mask_pad = helpers.pad_with_garbage(x, mask)
    layer = helpers.make_layer(scheme, train=True, t_max=7)
    variables = layer.init(jax.random.PRNGKey(0), x_pad, mask_pad)
    (y_pad, _), st_pad = layer.apply(variables, x_pad, mask_pad, mutable=['batch_stats'])
    (y, _), st = layer.apply(variables, x, mask, mutable=['batch_stats'])
    np.testing.assert_allclose(y_pad[:, :4], y, **TOL)
    assert bool(jnp.all(y_pad[:, 4:] == 0))
    for name, table in st['batch_stats'].items():
      np.testing.assert_allclose(st_pad['batch_stats'][name], table, err_msg=f'{scheme} {name}',
                                 **TOL)
      if table.ndim == 2:  # per-step rows of padded-only steps keep their initial values
        np.testing.assert_array_equal(table[4:], variables['batch_stats'][name][4:])


def test_batch_t1_equals_flax_batchnorm():
  """Per-step BN on a length-1 sequence = nn.BatchNorm: outputs and running averages after
  two updates (init2winit's reduction test)."""
  layer = helpers.make_layer('batch', train=True, t_max=1)
  x1, mask1 = helpers.data(batch=6, length=1, seed=11)
  x2, mask2 = helpers.data(batch=6, length=1, seed=12)
  variables = layer.init(jax.random.PRNGKey(0), x1, mask1)
  stats = variables['batch_stats']
  for x, mask in ((x1, mask1), (x2, mask2)):
    _, upd = layer.apply({'params': variables['params'], 'batch_stats': stats}, x, mask,
                         mutable=['batch_stats'])
    stats = upd['batch_stats']
  bn = nn.BatchNorm(use_running_average=False, momentum=1 - helpers.RATE, epsilon=helpers.EPS,
                    use_bias=False, scale_init=nn.initializers.constant(0.1))
  cell_params = variables['params']['cell']
  a1 = x1[:, 0] @ cell_params['kernel_x']
  a2 = x2[:, 0] @ cell_params['kernel_x']
  bn_vars = bn.init(jax.random.PRNGKey(0), a1)
  for a in (a1, a2):
    y_bn, upd = bn.apply(bn_vars, a, mutable=['batch_stats'])
    bn_vars = {'params': bn_vars['params'], 'batch_stats': upd['batch_stats']}
  # outputs: the hoisted input-term normalization of the cell
  cell = layer.cell
  carry = cell.apply({'params': cell_params}, x2.shape[0], method='initialize_carry')
  # the hoist is time-major: x [time, batch, in], output [time, batch, 4H]
  y_ours, _, _, _ = cell.apply({'params': cell_params}, x2.swapaxes(0, 1), mask2.T, {}, carry,
                               method='hoist')
  np.testing.assert_allclose(y_ours[0], y_bn, **TOL)
  np.testing.assert_allclose(stats['input_mean'][0], bn_vars['batch_stats']['mean'], **TOL)
  np.testing.assert_allclose(stats['input_var'][0], bn_vars['batch_stats']['var'], **TOL)


def test_unknown_scheme_lists_valid_names():
  with pytest.raises(ValueError, match='valid names: none, batch, batch_input'):
    get_scheme('batchnorm')


@pytest.mark.parametrize('gamma', [0.0, -0.1])
def test_gamma_must_be_positive(gamma):
  with pytest.raises(ValueError, match='gamma_init must be > 0'):
    NormOptions(gamma_init=gamma, eps=1e-5, streaming_mix=0.5)


def test_layer_norm_gain_init_and_bn_gamma_init_follow_options():
  x, mask = helpers.data()
  for scheme, gamma in (('batch', 0.1), ('layer', 1.0)):
    params = helpers.make_layer(scheme, train=True).init(jax.random.PRNGKey(0), x, mask)['params']
    for site in ('input_norm', 'recurrent_norm', 'cell_norm'):
      np.testing.assert_allclose(params['cell'][site]['gamma'], gamma)
    assert 'beta' not in params['cell']['input_norm']
    assert 'beta' not in params['cell']['recurrent_norm']
    np.testing.assert_allclose(params['cell']['cell_norm']['beta'], 0.0)


@pytest.mark.parametrize('axes, shape', [((0,), (6, 5)), ((1,), (4, 6, 5)), ((0, 1), (4, 6, 5))])
def test_masked_standardize_gradient_equals_autodiff_of_the_formula(axes, shape):
  """The hand-written BN backward pass (base.masked_standardize) == jax autodiff of the plain
  masked formula, for the output AND the returned moments, with padded positions, in float64."""
  from normrnn.norms import base
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=shape) * 2 + 1)
    mask = np.ones(shape[:-1])
    mask[(-1,) * (len(shape) - 1)] = 0  # one padded position
    mask[(0,) * (len(shape) - 1)] = 0
    mask = jnp.asarray(mask)
    w = [jnp.asarray(rng.normal(size=s)) for s in (shape, shape[-1:], shape[-1:])]

    def reference(a):
      mean, var, count = base.masked_moments(a, mask, axes)
      y = base.standardize(a, jnp.expand_dims(mean, axes), jnp.expand_dims(var, axes), 1e-5)
      return y, mean, var, count

    def loss(fn, a):
      y, mean, var, _ = fn(a)
      return jnp.sum(w[0] * jnp.sin(y)) + jnp.sum(w[1] * mean) + jnp.sum(w[2] * var)

    ours = lambda a: base.masked_standardize(a, mask, axes, 1e-5)
    for x, y in zip(ours(a), reference(a)):
      np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jax.grad(lambda a: loss(ours, a))(a),
                               jax.grad(lambda a: loss(reference, a))(a), rtol=1e-9, atol=1e-11)
