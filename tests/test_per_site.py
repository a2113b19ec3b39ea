"""Per-site schemes (`normrnn.norms.compose`): BN-e* and other composites against the independent
numpy reference (train and eval mode, masked padding, reversed, batch size 1, sequences longer
than the training length), the refusals with their lists of valid schemes, the config fields
model.norm.{input,recurrent,cell}, a smoke training run and gradients."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normrnn import NormRNN, experiment, models
from normrnn.config import build
from normrnn.config import schema as config_schema
from normrnn.norms import NORMS, compose, register, site_pairs, unregister, valid_at
from normrnn.norms.batch import BatchStep
from normrnn.norms.sequence import BatchSequence
from tests import helpers
from tests.numpy_reference import BN_E_STAR, GRUReference

TOL = dict(rtol=2e-4, atol=2e-5)
BN_E = compose('batch', input='sequence')


def test_bn_e_star_is_derived_from_the_registry():
  assert BN_E.name == 'batch[input=sequence]'
  assert BN_E.label == 'BN-LSTM (input: sequence-BN)'
  assert BN_E.paper == f"{NORMS['batch'].paper}; input: {NORMS['sequence'].paper}"
  assert (BN_E.input, BN_E.recurrent, BN_E.cell) == (BatchSequence, BatchStep, BatchStep)
  assert BN_E.kernel is NORMS['batch'].kernel and BN_E.gamma_init == NORMS['batch'].gamma_init
  assert BN_E.batch_statistics and BN_E.cells == ('lstm', 'gru') and BN_E.sum is None
  assert BN_E.parts == (('input', 'sequence'),)
  # Nothing to replace: the named scheme itself (also for a scheme with the same module there).
  assert compose('batch') is NORMS['batch']
  assert compose('batch', input='batch_input', cell='') is NORMS['batch']
  # batch_statistics follows the site modules, not the named scheme.
  assert not compose('batch', input='layer', recurrent='layer', cell='layer').batch_statistics
  assert compose('none', input='sequence').batch_statistics
  assert compose('batch', cell='layer').cells == ('lstm',)  # a GRU has no cell site
  assert compose('batch', recurrent='streaming').options == NORMS['streaming'].options


@pytest.mark.parametrize('name, site, other, valid', [
    ('batch', 'recurrent', 'sequence', 'none, batch, layer, streaming'),  # does not act there
    ('batch', 'cell', 'batch_input', 'none, batch, layer, streaming'),
    ('batch', 'input', 'cosine', 'none, batch, batch_input, sequence, layer, streaming'),  # kernel
    ('cosine', 'recurrent', 'batch', 'cosine'),
    ('weight', 'input', 'layer', 'weight'),
])
def test_invalid_combinations_fail_with_the_valid_ones(name, site, other, valid):
  assert ', '.join(valid_at(name, site)) == valid
  with pytest.raises(ValueError, match=f'valid at the {site} site: {valid}$'):
    compose(name, **{site: other})


def test_whole_sequence_modules_only_at_the_input_site():
  seq_everywhere = register(dataclasses.replace(NORMS['sequence'], name='seq_everywhere',
                                                recurrent=BatchSequence, cells=('lstm',)))
  try:
    with pytest.raises(ValueError, match='needs the whole sequence'):
      compose('batch', recurrent='seq_everywhere')
    assert compose('batch', input='seq_everywhere').input is BatchSequence
  finally:
    unregister(seq_everywhere.name)
  with pytest.raises(ValueError, match="input='bn' is not valid with scheme 'batch': no scheme "
                     'has that name; valid at the input site: none, batch'):
    compose('batch', input='bn')
  with pytest.raises(ValueError, match='unknown site'):
    site_pairs({'sum': 'batch'})
  assert site_pairs([('cell', 'layer'), ('input', 'sequence'), ('recurrent', '')]) == (
      ('input', 'sequence'), ('cell', 'layer'))


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('masked, reverse', [(False, False), (True, False), (True, True)])
def test_bn_e_star_matches_numpy_reference(train, masked, reverse):
  x, mask = helpers.data(lengths=[5, 3, 1, 4] if masked else None)
  layer, params, tables = helpers.setup(BN_E, x, mask, train=train, reverse=reverse)
  (y, carry), updated = layer.apply({'params': params, 'batch_stats': tables}, x, mask,
                                    mutable=['batch_stats'])
  ref = helpers.reference(params, tables, 'batch', kinds=BN_E_STAR)
  y_ref, h_ref = ref.run(x, mask, train=train, reverse=reverse)
  np.testing.assert_allclose(y, y_ref, **TOL)
  if not reverse:
    np.testing.assert_allclose(carry['h'], h_ref, **TOL)
  got = helpers.to_numpy(updated['batch_stats'])
  assert got['input_mean'].shape == (12,) and got['recurrent_mean'].shape == (5, 12)
  expected = ref.updated_tables(helpers.RATE, x.shape[1]) if train else helpers.to_numpy(tables)
  assert set(got) == set(expected)
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], err_msg=name, **TOL)


@pytest.mark.parametrize('name, sites, kinds', [
    ('batch', {'recurrent': 'streaming'}, ('bn_step', 'stream', 'bn_step')),  # state at one site
    ('layer', {'input': 'sequence', 'cell': 'batch'}, ('bn_seq', 'ln', 'bn_step')),
    ('none', {'recurrent': 'layer'}, ('id', 'ln', 'shift')),
])
def test_other_composites_match_numpy_reference(name, sites, kinds):
  x, mask = helpers.data(lengths=[5, 3, 2, 4])
  scheme = compose(name, **sites)
  for train in (True, False):
    layer, params, tables = helpers.setup(scheme, x, mask, train=train)
    (y, _), updated = layer.apply({'params': params, 'batch_stats': tables}, x, mask,
                                  mutable=['batch_stats'])
    ref = helpers.reference(params, tables, name, kinds=kinds)
    np.testing.assert_allclose(y, ref.run(x, mask, train=train)[0], err_msg=str(train), **TOL)
    if train:
      expected = ref.updated_tables(helpers.RATE, x.shape[1])
      for table in expected:
        np.testing.assert_allclose(updated['batch_stats'][table], expected[table], **TOL)


def test_every_site_replaced_equals_that_scheme():
  """Streaming norm's per-sequence state is carried from whichever site it sits at: a 'none'
  with all three sites streaming is the streaming scheme."""
  x, mask = helpers.data(lengths=[5, 3, 2, 4])
  everywhere = compose('none', input='streaming', recurrent='streaming', cell='streaming')
  layer, params, tables = helpers.setup(everywhere, x, mask, train=True)
  variables = {'params': params, 'batch_stats': tables}
  a = layer.apply(variables, x, mask, mutable=['batch_stats'])
  b = helpers.make_layer('streaming', train=True).apply(variables, x, mask, mutable=['batch_stats'])
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), a, b)


def test_input_statistics_exclude_padded_frames():
  """BN-e*'s input statistics come from valid frames only: a batch padded with garbage steps
  gives the outputs and population tables of the unpadded batch (padded per-step rows untouched),
  and the input table moves toward the masked moments of W_x x_t."""
  x, mask = helpers.data(batch=4, length=4, seed=7, lengths=[4, 2, 3, 1])
  x_pad, mask_pad = helpers.pad_with_garbage(x, mask)
  layer = helpers.make_layer(BN_E, train=True, t_max=7)
  variables = layer.init(jax.random.PRNGKey(0), x_pad, mask_pad)
  (y_pad, _), st_pad = layer.apply(variables, x_pad, mask_pad, mutable=['batch_stats'])
  (y, _), st = layer.apply(variables, x, mask, mutable=['batch_stats'])
  np.testing.assert_allclose(y_pad[:, :4], y, **TOL)
  assert bool(jnp.all(y_pad[:, 4:] == 0))
  for name, table in st['batch_stats'].items():
    np.testing.assert_allclose(st_pad['batch_stats'][name], table, err_msg=name, **TOL)
    if table.ndim == 2:
      np.testing.assert_array_equal(table[4:], variables['batch_stats'][name][4:])
  a = np.asarray(x @ variables['params']['cell']['kernel_x'])[np.asarray(mask) > 0]
  np.testing.assert_allclose(st_pad['batch_stats']['input_mean'], helpers.RATE * a.mean(0),
                             **TOL)
  np.testing.assert_allclose(st_pad['batch_stats']['input_var'],
                             1 - helpers.RATE + helpers.RATE * a.var(0), **TOL)


def test_eval_longer_than_training_batch_size_one_and_hoisting():
  t_max = 5
  x, mask = helpers.data(length=3 * t_max, seed=3, lengths=[15, 9, 12, 4])
  layer, params, tables = helpers.setup(BN_E, x, mask, train=False, t_max=t_max)
  variables = {'params': params, 'batch_stats': tables}
  y, _ = layer.apply(variables, x, mask)
  y_ref, _ = helpers.reference(params, tables, 'batch', t_max=t_max, kinds=BN_E_STAR).run(
      x, mask, train=False)
  np.testing.assert_allclose(y, y_ref, **TOL)
  y_one, _ = layer.apply(variables, x[2:3], mask[2:3])  # population statistics: per example
  np.testing.assert_allclose(y_one[0], y[2], **TOL)
  # The sequence-wise input site is always hoisted; the in-step form gives the same values.
  in_step = helpers.make_layer(BN_E, train=True, hoist_input=False)
  x5, m5 = helpers.data(lengths=[5, 3, 1, 4])
  a = helpers.make_layer(BN_E, train=True).apply(variables, x5, m5, mutable=['batch_stats'])
  b = in_step.apply(variables, x5, m5, mutable=['batch_stats'])
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), a, b)


def test_batch_size_one_is_refused_in_training():
  x, mask = helpers.data(batch=1)
  with pytest.raises(ValueError, match='batch size 1'):
    helpers.make_layer(BN_E, train=True).init(jax.random.PRNGKey(0), x, mask)
  config = helpers.config_module('ptb_char').get_config('norm=none,size=smoke')
  config.model.norm.input = 'sequence'
  config.data.batch_size = 1
  with pytest.raises(config_schema.ConfigError,
                     match=r"model.norm 'none\[input=sequence\]': batch statistics are undefined"):
    config_schema.validate(config, device_count=1)


def test_gru_bn_e_star_matches_numpy_reference():
  x, mask = helpers.data(lengths=[5, 3, 1, 4])
  layer, params, tables = helpers.setup(BN_E, x, mask, train=True, cell='gru')
  (y, _), _ = layer.apply({'params': params, 'batch_stats': tables}, x, mask,
                          mutable=['batch_stats'])
  ref = helpers.reference(params, tables, 'batch', kinds=BN_E_STAR, cls=GRUReference)
  np.testing.assert_allclose(y, ref.run(x, mask, train=True)[0], **TOL)


def test_gradients_match_finite_differences():
  scheme = register(dataclasses.replace(BN_E, name='bn_e_star_under_test', parts=()))
  try:
    helpers.check_gradients(scheme.name)
  finally:
    unregister(scheme.name)


def test_config_fields_validation_and_model():
  module = helpers.config_module('ptb_char')
  config = module.get_config('norm=batch,size=smoke')
  assert (config.model.norm.input, config.model.norm.recurrent, config.model.norm.cell) == (
      '', '', '')
  config.model.norm.input = 'sequence'
  config_schema.validate(config, device_count=1)
  spec = models.spec_from_config(config.model)
  assert spec.sites == (('input', 'sequence'),) and spec.scheme == BN_E
  assert dataclasses.replace(spec, sites={'input': 'sequence'}) == spec  # a mapping is canonical
  for site, value, match in [
      ('input', 'cosine', "model.norm.input='cosine' is not valid with model.norm.name='batch'; "
                          "choose '' \\(the named scheme's own\\) or one of: none, batch, "
                          'batch_input, sequence, layer, streaming$'),
      ('recurrent', 'sequence', 'one of: none, batch, layer, streaming$'),
      ('cell', 'bn', 'one of: none, batch, layer, streaming$')]:
    bad = module.get_config('norm=batch,size=smoke')
    bad.model.norm[site] = value
    with pytest.raises(config_schema.ConfigError, match=match):
      config_schema.validate(bad, device_count=1)
  gru = module.get_config('norm=batch,cell=gru,size=smoke')
  gru.model.norm.cell = 'layer'
  with pytest.raises(config_schema.ConfigError, match='a GRU has no cell site'):
    config_schema.validate(gru, device_count=1)
  # Old runs (saved before the fields existed) read as the named scheme at every site.
  saved = json.loads(config.to_json())
  for site in ('input', 'recurrent', 'cell'):
    del saved['model']['norm'][site]
  assert config_schema.upgrade_saved_config(saved)['model']['norm']['input'] == ''
  # The config builders know the composite: eval modes from its batch statistics.
  assert build.eval_modes('none', input='sequence') == (('population', 'batch'), 'val/error')
  assert build.eval_modes('batch', input='layer', recurrent='layer', cell='layer') == (
      ('population',), 'val/error')
  section = build.norm_section('batch', gamma=-1.0, max_time_steps=9, stats_rate=0.05,
                               input='sequence')
  assert section.input == 'sequence' and section.gamma_init == 0.1
  with pytest.raises(config_schema.ConfigError, match='valid at the recurrent site'):
    build.norm_section('batch', gamma=-1.0, max_time_steps=9, stats_rate=0.05,
                       recurrent='sequence')


@pytest.mark.skipif(not (helpers.SHARED_DATA / 'ptb_char').is_dir(),
                    reason='shared PTB copy absent')
def test_smoke_training_run_with_site_override():
  config = helpers.config_module('ptb_char').get_config('norm=batch,size=smoke')
  config.model.norm.input = 'sequence'
  exp = experiment.Experiment.from_config(config, device_count=1)
  assert exp.model.spec.scheme == BN_E
  state = exp.init_state()
  assert state.batch_stats['rnn']['layer_0']['input_mean'].ndim == 1  # shared over time
  step = jax.jit(exp.train_step())
  for i in range(config.train.num_steps):
    state, metrics = step(state, exp.task.train_batch(i))
  assert np.isfinite(float(metrics['loss']))
  val = exp.validate_metrics(state.params, state.batch_stats)
  assert np.isfinite(val['val/bpc']) and np.isfinite(val['val_batch/bpc'])


def test_drop_in_takes_sites():
  x, _ = helpers.data(batch=3, length=4)
  layer = NormRNN(3, norm='batch', sites=(('input', 'sequence'),), use_running_average=False)
  variables = layer.init(jax.random.PRNGKey(0), x)
  assert variables['batch_stats']['rnn']['input_mean'].shape == (12,)
  assert variables['batch_stats']['rnn']['recurrent_mean'].shape == (4, 12)
  with pytest.raises(ValueError, match='valid at the cell site'):
    NormRNN(3, norm='batch', sites={'cell': 'sequence'})
