"""`normrnn.rnn.NormRNN` as a drop-in for flax's `nn.RNN(nn.OptimizedLSTMCell(h))`: a one-line swap
in a small model that then trains and evaluates, equality with `nn.RNN` for the unnormalized LSTM
(lengths, both directions, both output orders, final carry), carry continuation, population
statistic re-estimation, and clear errors."""
import difflib
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normrnn import popstats
from normrnn.norms import NORMS
from normrnn.rnn import NormRNN

VOCAB, EMBED, HIDDEN = 7, 5, 8
TOL = dict(rtol=1e-5, atol=1e-5)


class FlaxTagger(nn.Module):
  """A user's model: embedding -> LSTM -> per-step classifier."""
  norm: str = 'batch'  # unused here; the drop-in below reads it

  @nn.compact
  def __call__(self, tokens, lengths, *, train: bool):
    x = nn.Embed(VOCAB, EMBED)(tokens)
    h = nn.RNN(nn.OptimizedLSTMCell(HIDDEN))(x, seq_lengths=lengths)
    return nn.Dense(VOCAB)(h)


class NormTagger(FlaxTagger):
  """The same model with the normalized LSTM."""

  @nn.compact
  def __call__(self, tokens, lengths, *, train: bool):
    x = nn.Embed(VOCAB, EMBED)(tokens)
    h = NormRNN(HIDDEN, norm=self.norm, use_running_average=not train)(x, seq_lengths=lengths)
    return nn.Dense(VOCAB)(h)


def test_swap_is_one_line():
  def body(cls):
    return inspect.getsource(cls.__call__).splitlines()

  diff = [line for line in difflib.unified_diff(body(FlaxTagger), body(NormTagger), lineterm='',
                                                n=0)
          if line[:1] in '+-' and not line.startswith(('+++', '---'))]
  assert len(diff) == 2 and 'nn.RNN(' in diff[0] and 'NormRNN(' in diff[1], diff


def _task(seed, batch=16, length=10):
  """Predict the previous token (needs one step of memory); variable lengths."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, size=(batch, length))
  lengths = rng.integers(length // 2, length + 1, size=batch)
  lengths[0] = length
  targets = np.concatenate([np.zeros((batch, 1), int), tokens[:, :-1]], axis=1)
  return jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(targets)


def _loss(logits, targets, lengths):
  mask = (jnp.arange(targets.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(losses * mask) / jnp.sum(mask)


@pytest.mark.parametrize('norm', ['batch', 'layer'])
def test_swapped_model_trains_and_evaluates(norm):
  model = NormTagger(norm=norm)
  tokens, lengths, targets = _task(0)
  variables = model.init(jax.random.key(0), tokens, lengths, train=True)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  tx = optax.adam(3e-2)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, batch_stats, opt_state, tokens, lengths, targets):
    def loss_fn(p):
      logits, updates = model.apply({'params': p, 'batch_stats': batch_stats}, tokens, lengths,
                                    train=True, mutable=['batch_stats'])
      return _loss(logits, targets, lengths), updates.get('batch_stats', {})

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  losses = []
  for step in range(40):
    tokens, lengths, targets = _task(step)
    params, new_stats, opt_state, loss = train_step(params, batch_stats, opt_state, tokens,
                                                    lengths, targets)
    if norm == 'batch' and step == 0:
      moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), batch_stats, new_stats)
      assert all(jax.tree.leaves(moved))  # every table got this batch's statistics
    batch_stats = new_stats
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses

  if norm == 'batch':
    tables = batch_stats['NormRNN_0']['rnn']
    assert tables['input_mean'].shape == (tokens.shape[1], 4 * HIDDEN)
    assert tables['cell_var'].shape == (tokens.shape[1], HIDDEN)
  else:
    assert not jax.tree.leaves(batch_stats)  # layer norm keeps no statistics
  tokens, lengths, targets = _task(100)
  evaluate = jax.jit(lambda p, s, t, n: model.apply({'params': p, 'batch_stats': s}, t, n,
                                                    train=False))
  eval_loss = float(_loss(evaluate(params, batch_stats, tokens, lengths), targets, lengths))
  assert np.isfinite(eval_loss)
  if norm == 'batch':
    # 40 steps at stats_rate 0.01 leave the running averages near their init: re-estimate them
    # from training batches, the paper's evaluation protocol.
    moments_fn = jax.jit(lambda v, b: model.apply(v, *b, train=True, mutable=['moments'])[1][
        'moments'])
    batch_stats = popstats.reestimate(moments_fn, {'params': params, 'batch_stats': batch_stats},
                                      [_task(s)[:2] for s in range(200, 205)])
    eval_loss = float(_loss(evaluate(params, batch_stats, tokens, lengths), targets, lengths))
  assert eval_loss < np.mean(losses[:5]), (eval_loss, losses)
  # Evaluation beyond the training length uses the last step's statistics.
  long_tokens = jnp.tile(tokens, (1, 2))
  long_logits = evaluate(params, batch_stats, long_tokens, jnp.full_like(lengths, 20))
  assert long_logits.shape == (tokens.shape[0], 20, VOCAB)
  assert bool(jnp.all(jnp.isfinite(long_logits)))


def _flax_params_to_ours(flax_cell):
  """Our LSTM params (gate order [g, f, i, o]) from OptimizedLSTMCell's 'ii'..'ho'."""
  order = 'gfio'
  return {'rnn': {'cell': {
      'kernel_x': jnp.concatenate([flax_cell[f'i{g}']['kernel'] for g in order], axis=1),
      'kernel_h': jnp.concatenate([flax_cell[f'h{g}']['kernel'] for g in order], axis=1),
      'bias': jnp.concatenate([flax_cell[f'h{g}']['bias'] for g in order]),
      'h0': jnp.zeros((HIDDEN,)), 'c0': jnp.zeros((HIDDEN,)),
      'cell_norm': {'beta': jnp.zeros((HIDDEN,))}}}}


def _valid(a, lengths):
  mask = np.arange(a.shape[1])[None, :] < np.asarray(lengths)[:, None]
  return np.asarray(a) * mask[..., None]


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('keep_order', [False, True])
def test_unnormalized_equals_flax_rnn(reverse, keep_order):
  x = jax.random.normal(jax.random.key(1), (4, 6, EMBED))
  lengths = jnp.array([6, 2, 4, 1])
  flax_rnn = nn.RNN(nn.OptimizedLSTMCell(HIDDEN), reverse=reverse, keep_order=keep_order,
                    return_carry=True)
  flax_vars = flax_rnn.init(jax.random.key(2), x, seq_lengths=lengths)
  # Nonzero biases, so that a wrong gate order shows.
  flax_params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape),
                             flax_vars['params'])
  (flax_c, flax_h), flax_out = flax_rnn.apply({'params': flax_params}, x, seq_lengths=lengths)

  ours = NormRNN(HIDDEN, norm='none', reverse=reverse, keep_order=keep_order, return_carry=True)
  ours_params = _flax_params_to_ours(flax_params['cell'])
  init_params = ours.init(jax.random.key(0), x, seq_lengths=lengths)['params']
  assert jax.tree.map(jnp.shape, init_params) == jax.tree.map(jnp.shape, ours_params)
  carry, out = ours.apply({'params': ours_params}, x, seq_lengths=lengths)

  np.testing.assert_allclose(_valid(out, lengths), _valid(flax_out, lengths), **TOL)
  assert not np.any(_valid(out, lengths) != np.asarray(out))  # zeros at padded steps
  np.testing.assert_allclose(carry['h'], flax_h, **TOL)
  np.testing.assert_allclose(carry['c'], flax_c, **TOL)

  # The call arguments override the attributes, as in nn.RNN.
  flipped = NormRNN(HIDDEN, norm='none')
  _, out2 = flipped.apply({'params': ours_params}, x, seq_lengths=lengths, reverse=reverse,
                          keep_order=keep_order, return_carry=True)
  np.testing.assert_array_equal(out2, out)


def test_without_lengths_equals_flax_rnn():
  x = jax.random.normal(jax.random.key(4), (3, 5, EMBED))
  flax_rnn = nn.RNN(nn.OptimizedLSTMCell(HIDDEN), reverse=True)
  flax_params = flax_rnn.init(jax.random.key(5), x)['params']
  ours = NormRNN(HIDDEN, norm='none', reverse=True)
  np.testing.assert_allclose(
      ours.apply({'params': _flax_params_to_ours(flax_params['cell'])}, x, init_key=None),
      flax_rnn.apply({'params': flax_params}, x), **TOL)


def _split_run(model, variables, x, k, **kw):
  carry, first = model.apply(variables, x[:, :k], return_carry=True, **kw)
  second = model.apply(variables, x[:, k:], initial_carry=carry, **kw)
  return jnp.concatenate([first, second], axis=1)


def test_initial_carry_continues_the_sequence():
  x = jax.random.normal(jax.random.key(6), (3, 9, EMBED))
  model = NormRNN(HIDDEN, norm='layer')
  variables = model.init(jax.random.key(7), x)
  variables = {'params': jax.tree.map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(8), p.shape), variables['params'])}
  whole = model.apply(variables, x)
  np.testing.assert_allclose(_split_run(model, variables, x, 4), whole, **TOL)


def test_position_offset_continues_per_step_statistics():
  x = jax.random.normal(jax.random.key(9), (3, 8, EMBED))
  model = NormRNN(HIDDEN, norm='batch', use_running_average=True)
  variables = model.init(jax.random.key(10), x)
  keys = iter(jax.random.split(jax.random.key(11), 100))
  stats = jax.tree.map(lambda t: t + 0.5 * jnp.abs(jax.random.normal(next(keys), t.shape)),
                       variables['batch_stats'])
  variables = dict(variables, batch_stats=stats)
  whole = model.apply(variables, x)
  carry, first = model.apply(variables, x[:, :3], return_carry=True)
  second = model.apply(variables, x[:, 3:], initial_carry=carry, position_offset=3)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, **TOL)
  # Without the offset the second chunk would read the statistics of steps 0.. again.
  wrong = model.apply(variables, x[:, 3:], initial_carry=carry)
  assert not np.allclose(wrong, second, **TOL)


def test_reestimate_population_statistics():
  tokens, lengths, _ = _task(3)
  model = NormTagger(norm='batch')
  variables = model.init(jax.random.key(0), tokens, lengths, train=True)
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  moments_fn = jax.jit(lambda v, b: model.apply(v, *b, train=True, mutable=['moments'])[1][
      'moments'])
  batches = [_task(s)[:2] for s in range(3)]
  new = popstats.reestimate(moments_fn, variables, batches)
  assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, variables['batch_stats'])
  sites = [moments_fn(variables, b)['NormRNN_0']['rnn']['sites'] for b in batches]
  expect = np.mean([np.asarray(s['cell']['mean']) for s in sites], axis=0)  # every step seen
  np.testing.assert_allclose(new['NormRNN_0']['rnn']['cell_mean'], expect, rtol=1e-5, atol=1e-6)


def test_tanh_rnn_cell():
  x = jax.random.normal(jax.random.key(12), (4, 5, EMBED))
  model = NormRNN(HIDDEN, norm='batch', cell='tanh_rnn', recurrent_init='identity',
                  use_running_average=False)
  variables = model.init(jax.random.key(13), x)
  (carry, out), _ = model.apply(variables, x, return_carry=True, mutable=['batch_stats'])
  assert out.shape == (4, 5, HIDDEN) and set(carry) == {'h', 'norm'}
  assert variables['batch_stats']['rnn']['sum_mean'].shape == (5, HIDDEN)


def test_h0_noise_uses_the_noise_rng():
  x = jnp.ones((2, 3, EMBED))
  model = NormRNN(HIDDEN, norm='layer', h0_noise=0.1)
  variables = model.init({'params': jax.random.key(0), 'noise': jax.random.key(1)}, x)
  a, b = (model.apply(variables, x, rngs={'noise': jax.random.key(s)}) for s in (2, 3))
  assert not np.allclose(a, b)
  with pytest.raises(Exception, match='noise'):
    model.apply(variables, x)


def test_explicit_max_time_steps():
  x = jnp.ones((2, 4, EMBED))
  model = NormRNN(HIDDEN, norm='batch', max_time_steps=12, use_running_average=False)
  variables = model.init(jax.random.key(0), x)
  assert variables['batch_stats']['rnn']['recurrent_mean'].shape == (12, 4 * HIDDEN)
  out, _ = model.apply(variables, jnp.ones((2, 12, EMBED)), mutable=['batch_stats'])
  assert out.shape == (2, 12, HIDDEN)
  with pytest.raises(ValueError, match='max_time_steps=20 but the per-step statistics'):
    NormRNN(HIDDEN, norm='batch', max_time_steps=20, use_running_average=True).apply(variables, x)


def test_errors():
  x = jnp.ones((2, 4, EMBED))
  with pytest.raises(ValueError, match="unknown normalization scheme 'nope'.*batch"):
    NormRNN(HIDDEN, norm='nope')
  with pytest.raises(ValueError, match="unknown cell 'rnn'"):
    NormRNN(HIDDEN, cell='rnn')
  lstm_only = [name for name, s in NORMS.items() if 'tanh_rnn' not in s.cells]
  if lstm_only:
    with pytest.raises(ValueError, match='has no tanh_rnn form'):
      NormRNN(HIDDEN, norm=lstm_only[0], cell='tanh_rnn')
  with pytest.raises(ValueError, match='time_major=False'):
    NormRNN(HIDDEN, norm='layer', time_major=True)
  model = NormRNN(HIDDEN, norm='layer')
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='time_major=False'):
    model.apply(variables, x, time_major=True)
  with pytest.raises(ValueError, match=r'\[batch, time, features\]'):
    model.apply(variables, x[0])
  with pytest.raises(ValueError, match='seq_lengths must have shape'):
    model.apply(variables, x, seq_lengths=jnp.array([1, 2, 3]))
  bn = NormRNN(HIDDEN, norm='batch')
  with pytest.raises(ValueError, match='pass use_running_average'):
    bn.init(jax.random.key(0), x)
  variables = bn.init(jax.random.key(0), x, use_running_average=False)
  with pytest.raises(ValueError, match='longer than its per-step statistic tables'):
    bn.apply(variables, jnp.ones((2, 6, EMBED)), use_running_average=False,
             mutable=['batch_stats'])
  with pytest.raises(ValueError, match='passed to the constructor and at call time'):
    NormRNN(HIDDEN, norm='batch', use_running_average=True).apply(variables, x,
                                                                   use_running_average=True)


@pytest.mark.parametrize('norm', ['layer', 'batch'])
def test_gru_cell(norm):
  """cell='gru' runs through the same module: outputs, carry and (for BN) per-step tables."""
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, EMBED))
  rnn = NormRNN(HIDDEN, norm=norm, cell='gru', use_running_average=False)
  variables = rnn.init(jax.random.PRNGKey(1), x)
  (carry, y), _ = rnn.apply(variables, x, seq_lengths=jnp.array([5, 3, 1]), return_carry=True,
                            mutable=['batch_stats'])
  assert y.shape == (3, 5, HIDDEN) and carry['h'].shape == (3, HIDDEN) and 'c' not in carry
  assert float(jnp.abs(y[1, 3:]).max()) == 0.0  # padded steps output zeros
  tables = variables.get('batch_stats', {})
  assert bool(tables) == (norm == 'batch')
