"""The benchmark's shapes, models and timed train step, shared by scripts/benchmark.py (the CPU
side-by-side tables) and scripts/gpu_check.py (the GPU sections); scripts/benchmark.py's
docstring describes what is measured.

  SHAPES, REF          the two task shapes (sMNIST, PTB) and the reference model's name
  FlaxLSTM             the reference: flax's nn.OptimizedLSTMCell in nn.RNN, Dense head
  default_schemes()    every registered LSTM scheme, read when called
  build_model(name, s, *, kernel, unroll, remat, hoist_input)   REF or a scheme's model
  spec_settings(s, *, unroll, remat, hoist_input)   the RNNSpec settings build_model uses
  forward_flops, make_batch    nominal matmul FLOPs of a forward pass; a random batch
  make_step, JaxBench  the jitted train step (loss, backward, optax update) and one timed model
  memory_mb, timed     XLA's memory estimate of a compiled step; one blocked call's seconds

No torch here: the torch columns are scripts/benchmark.py's own.
"""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from normrnn import kernels, models
from normrnn.norms import NORMS

SHAPES = {  # per_step: loss at every step; stats_rate as in the paper's code (README)
    'smnist': dict(batch=64, length=784, features=1, hidden=100, classes=10, per_step=False,
                   stats_rate=0.01, hoist_input=False, remat=True),
    'ptb': dict(batch=64, length=100, features=50, hidden=1000, classes=50, per_step=True,
                stats_rate=0.05, hoist_input=False, remat=False),
}
REF = 'flax_optimized_lstm'
AUTO = 'auto'  # remat / hoist_input: the shape's (the task configs') setting


def forward_flops(s, length):
  """Nominal matmul FLOPs of one forward pass of shape `s` (a SHAPES entry) over `length` steps:
  the LSTM's input and recurrent matmuls (one-hot inputs counted as dense) and the head."""
  b, d, h, c = s['batch'], s['features'], s['hidden'], s['classes']
  return 2 * b * length * (d * 4 * h + h * 4 * h) + 2 * b * (length if s['per_step'] else 1) * h * c


def make_batch(s, length, seed=0):
  """A random batch of shape `s` and `length` steps: {'inputs', 'mask' (all valid), 'targets'}."""
  rng, b = np.random.default_rng(seed), s['batch']
  if s['per_step']:  # ptb: integer symbols in, next symbols out, loss at every step
    inputs = rng.integers(0, s['features'], (b, length)).astype(np.int32)
    targets = rng.integers(0, s['classes'], (b, length)).astype(np.int32)
  else:  # smnist: one pixel per step, one label per sequence
    inputs = rng.random((b, length, 1), dtype=np.float32)
    targets = rng.integers(0, s['classes'], (b,)).astype(np.int32)
  return dict(inputs=jnp.asarray(inputs), mask=jnp.ones((b, length), jnp.float32),
              targets=jnp.asarray(targets))


class FlaxLSTM(nn.Module):
  """The reference: flax's fused-gate LSTM cell in nn.RNN, Dense head (mask unused: all valid)."""
  hidden: int
  classes: int
  per_step: bool
  one_hot: int = 0

  @nn.compact
  def __call__(self, x, mask=None, *, train=True):
    del mask, train
    if self.one_hot:
      x = jax.nn.one_hot(x, self.one_hot, dtype=jnp.float32)
    h = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
    return nn.Dense(self.classes)(h if self.per_step else h[:, -1])


def default_schemes() -> list[str]:
  """Every scheme of the registry with an LSTM form, read now (schemes registered at run time
  included)."""
  return [name for name, scheme in NORMS.items() if 'lstm' in scheme.cells]


def _choose(name, value, shape_value):
  if value == AUTO:
    return shape_value
  if isinstance(value, bool):
    return value
  raise ValueError(f'{name}={value!r}: must be {AUTO!r}, True or False')


def spec_settings(s, *, unroll=1, remat=AUTO, hoist_input=AUTO):
  """RNNSpec's unroll, remat and hoist_input for shape `s`: remat and hoist_input are 'auto'
  (the shape's, i.e. the task configs', setting) or a bool."""
  return dict(unroll=unroll, remat=_choose('remat', remat, s['remat']),
              hoist_input=_choose('hoist_input', hoist_input, s['hoist_input']))


def build_model(name, s, *, kernel=kernels.SCAN, unroll=1, remat=AUTO, hoist_input=AUTO):
  """The benchmarked model `name` (REF or a registered LSTM scheme) for shape `s` (a SHAPES
  entry), run by `kernel`, with the settings of `spec_settings` (REF ignores them: unroll 1)."""
  if name == REF:
    return FlaxLSTM(s['hidden'], s['classes'], s['per_step'],
                    s['features'] if s['per_step'] else 0)
  scheme = NORMS.get(name)
  if scheme is None or 'lstm' not in scheme.cells:
    raise ValueError(f'{name!r} is not a registered LSTM scheme; valid: '
                     f'{", ".join(default_schemes())}')
  spec = models.RNNSpec(
      cell='lstm', hidden=s['hidden'], layers=1, norm=name,
      options=scheme.make_options(gamma_init=scheme.gamma_init, eps=1e-5),
      recurrent_init='orthogonal', forget_bias=1.0, h0_noise=0.0, max_time_steps=s['length'],
      stats_rate=s['stats_rate'], kernel=kernel,
      **spec_settings(s, unroll=unroll, remat=remat, hoist_input=hoist_input))
  if s['per_step']:
    return models.CharLM(spec, vocab_size=s['classes'])
  return models.SequenceClassifier(spec, num_classes=s['classes'])


def make_step(model, tx):
  """step(params, stats, opt_state, batch) -> (params, stats, opt_state, loss): softmax
  cross-entropy (mean over the targets), its gradient and the optax update `tx`."""
  def loss_fn(params, stats, batch):
    variables = {'params': params, **({'batch_stats': stats} if stats else {})}
    logits, updated = model.apply(variables, batch['inputs'], batch['mask'], train=True,
                                  mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets']).mean()
    return loss, updated.get('batch_stats', stats)

  def step(params, stats, opt_state, batch):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  return step


def memory_mb(compiled):
  """XLA's argument + output + temp bytes of a compiled function, in MB (1e6 bytes)."""
  m = compiled.memory_analysis()  # None (or an error) where the backend does not report it
  return None if m is None else (m.argument_size_in_bytes + m.output_size_in_bytes
                                 + m.temp_size_in_bytes) / 1e6


def timed(fn):
  """Seconds of one call of `fn`, its result blocked on."""
  t = time.perf_counter()
  jax.block_until_ready(fn())  # torch's step returns a float: a no-op there
  return time.perf_counter() - t


class JaxBench:
  """One model: compiled train step, its state, and its timings."""

  def __init__(self, name, model, batch, tx):
    self.name, self.model, self.batch, self.times = name, model, batch, []
    variables = jax.jit(lambda k: model.init(k, batch['inputs'], batch['mask'], train=True))(
        jax.random.PRNGKey(0))
    params, stats = variables['params'], variables.get('batch_stats', {})
    self.state = (params, stats, tx.init(params))
    t = time.perf_counter()
    self.compiled = jax.jit(make_step(model, tx)).lower(*self.state, batch).compile()
    self.compile_s = time.perf_counter() - t
    self.memory_mb = memory_mb(self.compiled)

  def step(self):
    params, stats, opt_state, loss = self.compiled(*self.state, self.batch)
    self.state = (params, stats, opt_state)
    return loss

  def rep(self):
    """One untimed step (it absorbs what the previous model left running), then a timed one."""
    jax.block_until_ready(self.step())
    self.times.append(timed(self.step))
