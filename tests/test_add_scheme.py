"""The README recipe "Adding a normalization scheme", proven: the scheme file written in the README
(RMS normalization) is saved to a temporary directory, registered, and then picked up by config
validation, a smoke training run, a reproduce table row and the benchmark's scheme list, with no
file of the repository touched."""
import importlib.util
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from normrnn import bench, norms, trainer
from normrnn.config import ConfigError, validate
from tests import helpers
from tests.test_data import ptb_dir  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
reproduce = helpers.load_script('experiments/reproduce.py')


def _readme_scheme_file() -> str:
  readme = (ROOT / 'README.md').read_text()
  section = readme[readme.index('## Adding a normalization scheme'):]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  return '\n'.join(line[3:] if line.startswith('   ') else line for line in code.splitlines())


@pytest.fixture
def rms_scheme(tmp_path):
  path = tmp_path / 'rms.py'
  path.write_text(_readme_scheme_file())
  spec = importlib.util.spec_from_file_location('readme_rms_scheme', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  scheme = norms.register(module.SCHEME)
  yield scheme
  norms.unregister(scheme.name)


def _numpy_rms_lstm(p, x, eps, rms_eps):
  """The RMS-LSTM written out in numpy (gate order [g, f, i, o]), for one layer from h0, c0."""
  def rms(a, gamma, beta=0.0):
    return gamma * a / np.sqrt(np.mean(a ** 2, axis=-1, keepdims=True) + rms_eps) + beta
  del eps
  batch = x.shape[0]
  h = np.broadcast_to(p['h0'], (batch, p['h0'].shape[0]))
  c = np.broadcast_to(p['c0'], h.shape)
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  ys = []
  for t in range(x.shape[1]):
    pre = (rms(x[:, t] @ p['kernel_x'], p['input_norm']['gamma'])
           + rms(h @ p['kernel_h'], p['recurrent_norm']['gamma']) + p['bias'])
    g, f, i, o = np.split(pre, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(rms(c, p['cell_norm']['gamma'], p['cell_norm']['beta']))
    ys.append(h)
  return np.stack(ys, 1)


def test_readme_scheme_plugs_into_every_table(rms_scheme, tmp_path, ptb_dir):  # noqa: F811
  assert 'rms' in norms.NORMS and rms_scheme.label == 'RMS-LSTM'

  # The scan with the new scheme against its numpy formula (batch size 1 included).
  for batch in (4, 1):
    x, mask = helpers.data(batch=batch)
    layer = helpers.make_layer('rms', train=True)
    variables = layer.init(jax.random.PRNGKey(0), x, mask)
    params = helpers.perturb_params(variables['params'], jax.random.PRNGKey(1))
    y, _ = layer.apply({'params': params}, x, mask)
    expected = _numpy_rms_lstm(jax.tree.map(lambda v: np.asarray(v, np.float64),
                                            params['cell']), np.asarray(x, np.float64),
                               helpers.EPS, 1e-6)
    np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-5)

  # Config: defaults from the declaration, its option in every config, validated.
  ptb = helpers.config_module('ptb_char')
  config = ptb.get_config('norm=rms,size=smoke')
  assert config.model.norm.gamma_init == 1.0 and config.model.norm.rms_eps == 1e-6
  assert helpers.config_module('digits').get_config('norm=batch').model.norm.rms_eps == 1e-6
  validate(config)
  config.model.norm.rms_eps = 0.0
  with pytest.raises(ConfigError, match=r'model.norm.rms_eps=0.0 is not valid; it must be > 0'):
    validate(config)

  # A reproduce table row, trained by a smoke run of the row's own config, then collected.
  extra = ('--config.data.name=ptb_char', f'--config.data.dir={ptb_dir}')
  rows = reproduce.make_rows('ptb', str(tmp_path / 'runs'), 'smoke', extra=extra)
  row = next(r for r in rows if r['scheme'] == 'rms')
  assert row['model'] == 'RMS-LSTM (Zhang & Sennrich 2019, eq. 4)'
  results = trainer.train_and_evaluate(row['job'].config(), row['job'].workdir)
  assert results['norm'] == 'rms' and math.isfinite(results['metrics']['test/bpc'])
  reproduce.collect(row, 'ptb', 'smoke', 0, extra)
  assert row['status'] == 'finished'
  table = reproduce.markdown('ptb', 'smoke', [row])
  assert f'| RMS-LSTM (Zhang & Sennrich 2019, eq. 4) | —, not in the paper | {row["ours"]:.3f} |' in (
      table)

  # The benchmark times it: in the default scheme list, and its model builds and runs.
  assert 'rms' in bench.default_schemes()
  shape = dict(bench.SHAPES['smnist'], batch=2, length=5, hidden=4)
  model = bench.build_model('rms', shape)
  batch = bench.make_batch(shape, shape['length'])
  variables = model.init(jax.random.PRNGKey(0), batch['inputs'], batch['mask'], train=True)
  assert model.apply(variables, batch['inputs'], batch['mask'], train=False).shape == (2, 10)
