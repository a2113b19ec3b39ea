"""Small builders shared by the tests."""
import importlib.util
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np

from normrnn import cells, recurrent
from normrnn.config import load_config_module
from normrnn.norms import NORMS
from tests.numpy_reference import LSTMReference

EPS = 1e-5
LAM = 0.3
RATE = 0.1


def _scheme(scheme):
  """A registered scheme's name, or a Scheme (e.g. a per-site composite of `norms.compose`)."""
  return NORMS[scheme] if isinstance(scheme, str) else scheme


def options(scheme):
  # The scheme's declared gain (0.1 BN-type, 1.0 otherwise) and the test values of its options.
  values = {'streaming_mix': LAM}
  s = _scheme(scheme)
  return s.make_options(eps=EPS, **{o.name: values[o.name] for o in s.options if o.name in values})


def make_layer(scheme, *, train, hidden=3, features=2, t_max=5, reverse=False, cell='lstm',
               recurrent_init='orthogonal', unroll=1, remat=False, h0_noise=0.0,
               hoist_input=True, kernel='scan'):
  cell_cls = cells.get_cell(cell)
  c = cell_cls(hidden, features, _scheme(scheme), options(scheme), recurrent_init, 1.0, h0_noise,
               train, hoist_input)
  return recurrent.Recurrent(c, max_time_steps=t_max, stats_rate=RATE, reverse=reverse,
                             unroll=unroll, remat=remat, kernel=kernel)


def setup(scheme, x, mask, *, train, seed=0, **layer):
  """A `make_layer` layer (`layer`: its further arguments) initialized on `x`, `mask`, with its
  parameters moved off their init and random population tables: (layer, params, tables)."""
  layer = make_layer(scheme, train=train, **layer)
  variables = layer.init(jax.random.PRNGKey(seed), x, mask)
  params = perturb_params(variables['params'], jax.random.PRNGKey(seed + 1))
  tables = random_tables(variables.get('batch_stats', {}), jax.random.PRNGKey(seed + 2))
  return layer, params, tables


def reference(params, tables, scheme, *, t_max=5, kinds=None, cls=LSTMReference):
  """The numpy reference (tests/numpy_reference.py) of a `setup` layer with these parameters and
  tables; `kinds`: what each site does where `scheme` (a name) does not say it (composites)."""
  return cls(to_numpy(params['cell']), scheme, eps=EPS, lam=LAM, tables=to_numpy(tables),
             max_time_steps=t_max, kinds=kinds)


def check_gradients(scheme, *, cell='lstm', **layer):
  """Reverse-mode gradients of a small layer w.r.t. parameters and inputs against finite
  differences, in float64, training mode, with a masked (shorter) sequence. `layer`: further
  `make_layer` arguments (kernel, remat, hoist_input, ...)."""
  with jax.enable_x64(True):
    x, mask = data(batch=3, length=3, lengths=[3, 2, 3], seed=9)
    x = x.astype(jnp.float64)
    layer = make_layer(scheme, train=True, cell=cell, hidden=2, t_max=3, **layer)
    variables = layer.init(jax.random.PRNGKey(0), x, mask)
    f64 = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), t)
    params = f64(perturb_params(variables['params'], jax.random.PRNGKey(1)))
    stats = f64(random_tables(variables.get('batch_stats', {}), jax.random.PRNGKey(2)))

    @jax.jit  # one compilation for the many evaluations of the check
    def loss(p, inputs):
      (y, _), _ = layer.apply({'params': p, 'batch_stats': stats}, inputs, mask,
                              mutable=['batch_stats'])
      return jnp.sum(jnp.sin(3.0 * y))

    jax.test_util.check_grads(loss, (params, x), order=1, modes=['rev'], atol=1e-5, rtol=1e-5,
                              eps=1e-6)


def perturb_params(params, key, scale=0.3):
  """Moves every parameter off its init so that betas, h0, c0 and gains matter in comparisons."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      tree, [v + scale * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


def random_tables(batch_stats, key):
  """Population tables with non-trivial values (var > 0)."""
  flat = jax.tree_util.tree_flatten_with_path(batch_stats)[0]
  out = {}
  for (path, v), k in zip(flat, jax.random.split(key, max(len(flat), 1))):
    name = path[-1].key
    noise = jax.random.normal(k, v.shape)
    out[name] = 0.5 + jnp.abs(noise) if name.endswith('_var') else noise
  return out


def data(batch=4, length=5, features=2, seed=0, lengths=None):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, length, features)).astype(np.float32)
  mask = np.ones((batch, length), np.float32)
  if lengths is not None:
    for b, n in enumerate(lengths):
      mask[b, n:] = 0
      x[b, n:] = rng.normal(size=(length - n, features)) * 100  # garbage in the padding
  return jnp.asarray(x), jnp.asarray(mask)


def pad_with_garbage(x, mask, steps=3, seed=1):
  """`x`, `mask` with `steps` more time steps of large random inputs, all masked out."""
  rng = np.random.default_rng(seed)
  batch, _, features = x.shape
  x_pad = jnp.concatenate(
      [x, jnp.asarray(rng.normal(size=(batch, steps, features)) * 50, jnp.float32)], 1)
  return x_pad, jnp.concatenate([mask, jnp.zeros((batch, steps))], 1)


def to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'  # the real data sets, where present


def data_cfg(**overrides):
  """A data config with exactly the fields make_task reads (attribute access, no defaults):
  the digits task's, `overrides` replacing some."""
  fields = dict(name='digits', dir='', source='files', download=False, pixel_order='scanline',
                permutation_seed=1, seq_len=64, batch_size=8, eval_batch_size=7,
                relevant_sentences=0, max_vocab=0)
  fields.update(overrides)
  return types.SimpleNamespace(**fields)


def mikolov_chars(sentences) -> str:
  """Sentences (lists of words) in Mikolov's PTB char format: ' c h a r s _ w o r d s ' plus a
  newline each."""
  return ''.join(' ' + ' '.join('_'.join(words)) + ' \n' for words in sentences)


def config_module(task: str):
  """configs/<task>.py, loaded by path as normrnn.train loads it."""
  return load_config_module(str(ROOT / 'configs' / f'{task}.py'))


def load_script(relative: str):
  """Imports a script of the repository by path (experiments/ and scripts/ are not packages)."""
  path = ROOT / relative
  spec = importlib.util.spec_from_file_location(path.stem + '_under_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
