"""The experiment scripts (experiments/*.py) on tiny settings."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import matplotlib.colors
from matplotlib.figure import Figure
import numpy as np
import pytest

from normrnn import trainer
from normrnn.config import load_config
from tests.helpers import SHARED_DATA, load_script
from tests.test_data import ptb_dir, write_idx  # noqa: F401  (ptb_dir is a fixture)

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = SHARED_DATA / 'mnist'

gradient_flow = load_script('experiments/gradient_flow.py')
tanh_grad = load_script('experiments/tanh_grad.py')
compare = load_script('experiments/compare.py')
length_generalization = load_script('experiments/length_generalization.py')


# --- gradient_flow (Fig. 4a) -----------------------------------------------------------------

@pytest.fixture
def random_mnist(tmp_path) -> Path:
  """t10k files of 16 random images: pixels vary across the batch from step 0."""
  d = tmp_path / 'mnist'
  d.mkdir()
  rng = np.random.default_rng(0)
  write_idx(d / 't10k-images-idx3-ubyte.gz', rng.integers(0, 256, (16, 28, 28)))
  write_idx(d / 't10k-labels-idx1-ubyte.gz', np.arange(16) % 10)
  return d


@pytest.fixture
def black_start_mnist(tmp_path) -> Path:
  """t10k files of 16 random images whose first two rows (56 pixels) are black in every image,
  as the leading ~65 pixels of real MNIST test images are."""
  d = tmp_path / 'black_mnist'
  d.mkdir()
  images = np.random.default_rng(0).integers(0, 256, (16, 28, 28))
  images[:, :2] = 0
  write_idx(d / 't10k-images-idx3-ubyte.gz', images)
  write_idx(d / 't10k-labels-idx1-ubyte.gz', np.arange(16) % 10)
  return d


def _reference_grads(params, x, y, eps=1e-5):
  """dL/dh_t for every t and dL/dh_T, by hand in float64 numpy (no autodiff): a plain loop
  h_t = tanh(gamma * (a_t - mean) / sqrt(var + eps) + beta), a_t = W_x x_t + W_h h_{t-1} + b,
  with batch moments per step, head on h_T, L = mean cross-entropy; then backprop through it."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  c, head = p['rnn']['layer_0']['cell'], p['head']
  gamma, beta = c['sum_norm']['gamma'], c['sum_norm']['beta']
  batch, length = x.shape[:2]
  h = np.broadcast_to(c['h0'], (batch, len(gamma)))
  cache = []
  for t in range(length):
    a = x[:, t].astype(np.float64) @ c['kernel_x'] + h @ c['kernel_h'] + c['bias']
    std = np.sqrt(a.var(0) + eps)
    xhat = (a - a.mean(0)) / std
    h = np.tanh(gamma * xhat + beta)
    cache.append((xhat, std, h))
  logits = h @ head['kernel'] + head['bias']
  prob = np.exp(logits - logits.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  final = (prob - np.eye(logits.shape[1])[y]) / batch @ head['kernel'].T  # dL/dh_T directly
  grads = np.zeros((batch, length, len(gamma)))
  g = final
  for t in range(length - 1, -1, -1):
    grads[:, t] = g
    xhat, std, h = cache[t]
    dxhat = g * (1.0 - h * h) * gamma
    da = (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0)) / std
    g = da @ c['kernel_h'].T
  return grads, final


def test_gradient_flow_matches_a_plain_loop(tmp_path, random_mnist):
  # The reference loop has no h_0 noise, so both sides run with h_0 = 0 exactly.
  batch, length, gammas = 8, 20, (0.1, 1.0)
  result = gradient_flow.run(str(tmp_path / 'out'), str(random_mnist), batch, length, gammas,
                             h0_noise=0.0, progress=False)
  saved = json.loads((tmp_path / 'out' / 'gradient_flow.json').read_text())
  assert (tmp_path / 'out' / 'gradient_flow.png').stat().st_size > 0
  for key in ('gammas', 't', 'log10_grad_norm', 'paper', 'command', 'data', 'notes'):
    assert key in saved
  assert saved['t'] == list(range(length)) and saved['gammas'] == [0.1, 1.0]
  assert set(saved['log10_grad_norm']) == {'0.1', '1.0'}
  assert saved['paper']['log10_grad_norm']['0.1'] == [-2.0, -2.9, -3.1, -3.1, -3.1]

  x, y = gradient_flow.load_batch(str(random_mnist), batch, length)
  for gamma in gammas:
    curve = saved['log10_grad_norm'][gradient_flow.gamma_key(gamma)]
    assert len(curve) == length and all(v is not None and math.isfinite(v) for v in curve)
    model = gradient_flow.build_model(gamma, 100, 784, h0_noise=0.0)
    variables = gradient_flow.init_variables(model, x, 0)  # as run() does (cached compile)
    np.testing.assert_allclose(
        variables['params']['rnn']['layer_0']['cell']['sum_norm']['gamma'], gamma, rtol=1e-7)
    ours = np.asarray(gradient_flow.probe_gradients(model, variables, x, y,
                                                    jax.random.PRNGKey(1)))
    ref, final = _reference_grads(variables['params'], x, y)
    rel = np.linalg.norm(ours - ref, axis=(0, 2)) / np.linalg.norm(ref, axis=(0, 2))
    assert rel.max() < 1e-3, rel
    np.testing.assert_allclose(ours[:, -1], final, rtol=1e-4, atol=1e-8)  # dL/dh_T
    np.testing.assert_allclose(curve, np.log10(gradient_flow.mean_norm(ref)), atol=1e-3)
  # Over 20 steps back, gamma 1.0 (saturated tanh) loses far more gradient than gamma 0.1.
  g01, g10 = (np.array(result['log10_grad_norm'][k]) for k in ('0.1', '1.0'))
  assert g10[0] - g10[-1] < g01[0] - g01[-1] - 1.0


def test_gradient_flow_nonfinite_values_become_null():
  values, kinds = gradient_flow.to_log10(np.array([1e-3, 0.0, np.inf, np.nan, 1.0]))
  assert values == [-3.0, None, None, None, 0.0]
  assert kinds == {'zero': [1], 'inf': [2], 'nan': [3]}
  # Right to left, the first value under 1e-26 or underflowed to 0; overflow (NaN) is not.
  assert gradient_flow.crossing([None, -30.0, -3.0, -2.0], zero_t=()) == 1
  assert gradient_flow.crossing([None, -20.0, -3.0, -2.0], zero_t=()) is None
  assert gradient_flow.crossing([None, -20.0, -3.0, -2.0], zero_t=(0,)) == 0
  # Norms of tiny float32 gradients do not underflow when squared.
  assert gradient_flow.mean_norm(np.full((1, 1, 4), 1e-30, np.float32))[0] == pytest.approx(
      2e-30, rel=1e-6)


def test_gradient_flow_crossings_beside_the_paper():
  curves = {'0.1': [-3.0, -2.9, -2.0], '0.2': [-3.0, None, -2.0], '1.0': [None, -30.0, -2.0]}
  nonfinite = {'0.1': {}, '0.2': {'nan': [1]}, '1.0': {'zero': [0]}}
  c = gradient_flow.crossings(curves, nonfinite)
  assert c['0.1'] == {'ours': None, 'paper': None, 'paper_read': True, 'nan_or_inf': False,
                      'log10_min': -3.0, 'log10_max': -2.0}
  assert c['0.2']['nan_or_inf'] and not c['0.2']['paper_read']  # 0.2 not read off the paper
  assert (c['1.0']['ours'], c['1.0']['paper'], c['1.0']['paper_read']) == (1, 656, True)
  assert not c['1.0']['nan_or_inf']  # an underflow to 0 is not an overflow


def test_gradient_flow_default_h0_noise(tmp_path, black_start_mnist):
  """The default (h_0 noise 0.1) has no NaN/inf over identical leading black pixels; the
  zero-noise variant still runs and overflows only there (zero batch variance, P16)."""
  assert gradient_flow.make_parser().parse_args(['--workdir', 'x']).h0_noise == 0.1
  batch, length, gammas = 8, 64, (0.1, 1.0)
  noisy = gradient_flow.run(str(tmp_path / 'noise'), str(black_start_mnist), batch, length,
                            gammas, progress=False)
  saved = json.loads((tmp_path / 'noise' / 'gradient_flow.json').read_text())
  assert saved['model']['h0_noise'] == 0.1 and '--h0-noise 0.1' in saved['command']
  assert saved['data']['first_step_with_batch_variance'] == 56
  assert set(saved['crossing_1e-26']) == {'0.1', '1.0'}
  assert saved['crossing_1e-26']['1.0']['paper'] == 656
  for key in ('0.1', '1.0'):
    assert not saved['crossing_1e-26'][key]['nan_or_inf']
    assert not {'nan', 'inf'} & set(saved['nonfinite_t'][key])
    assert all(v is not None for v in noisy['log10_grad_norm'][key])
  plain = gradient_flow.run(str(tmp_path / 'plain'), str(black_start_mnist), batch, length,
                            gammas, h0_noise=0.0, progress=False)
  assert '--h0-noise 0.0' in plain['command']
  for key in ('0.1', '1.0'):
    assert plain['crossing_1e-26'][key]['nan_or_inf']
    bad = plain['nonfinite_t'][key].get('nan', []) + plain['nonfinite_t'][key].get('inf', [])
    assert bad and max(bad) < 56


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason='needs ../shared/data/mnist')
def test_gradient_flow_real_mnist(tmp_path):
  """The paper's setting (784 steps, 100 test images, h_0 noise 0.1) with gamma 0.1 and 1.0."""
  r = gradient_flow.run(str(tmp_path), str(SHARED_MNIST), 100, 784, (0.1, 1.0), progress=False)
  assert r['data']['first_step_with_batch_variance'] == 65  # the leading black pixels
  g01, g10 = r['log10_grad_norm']['0.1'], r['log10_grad_norm']['1.0']
  assert g01[783] == pytest.approx(-2.0, abs=0.1) and g10[783] == pytest.approx(-2.0, abs=0.1)
  assert all(v is not None and -3.5 < v < -1.5 for v in g01)  # gamma 0.1: flat near 1e-3
  assert g10[600] < -26                                       # gamma 1.0: vanishes going back
  c = r['crossing_1e-26']
  assert not c['0.1']['nan_or_inf'] and not c['1.0']['nan_or_inf']
  assert c['0.1']['ours'] is None and c['0.1']['log10_max'] < -1.5
  # gamma 1.0 drops below the paper's 1e-26 near where the paper's does (656).
  assert c['1.0']['paper'] == 656 and 600 <= c['1.0']['ours'] <= 700
  for kinds in r['nonfinite_t'].values():
    assert set(kinds) <= {'zero'}  # only float32 underflow, far below the paper's axis


# --- tanh_grad (Fig. 4b) ---------------------------------------------------------------------

def test_tanh_grad(tmp_path):
  r = tanh_grad.run(str(tmp_path), progress=False)
  mean = np.array(r['mean'])
  assert len(mean) == 1000 and mean[0] == 1.0
  assert abs(mean[-1] - 0.606) < 0.02
  assert np.all(np.diff(mean) <= 1e-12)
  assert np.all(np.array(r['q25']) <= mean + 1e-12) and np.all(mean <= np.array(r['q75']) + 0.05)
  np.testing.assert_allclose(r['reference']['exact'], r['reference']['paper_spec'], atol=1e-3)
  assert (tmp_path / 'tanh_grad.png').exists() and (tmp_path / 'tanh_grad.json').exists()


# --- compare ---------------------------------------------------------------------------------

def _fake_run(path: Path, norm: str, gamma: float, results: bool, extra=None):
  path.mkdir()
  lines = [{'step': s, 'time': 0, 'train/loss': 2.0 / s, 'train/acc': 0.1 * s} for s in (1, 2, 3)]
  lines.append({'step': 3, 'time': 0, 'val/loss': 1.5, 'val_batch/error': None, **(extra or {})})
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  (path / 'config.json').write_text(json.dumps(
      {'task': 'digits', 'model': {'norm': {'name': norm, 'gamma_init': gamma}}}))
  if results:
    (path / 'results.json').write_text(json.dumps(
        {'metrics': {'test/acc': 0.9, 'test/loss': 0.3}, 'best_step': 3, 'wall_time_s': 12.5}))


def test_compare(tmp_path, monkeypatch):
  _fake_run(tmp_path / 'run_lstm', 'none', 1.0, results=True)
  _fake_run(tmp_path / 'run_bn', 'batch', 0.1, results=False, extra={'val/bpc': 2.0})
  out = tmp_path / 'out'
  figures = []  # every figure as it is saved: (title, {legend label: line color})
  savefig = Figure.savefig

  def spy(fig, *args, **kwargs):
    figures.append((fig.axes[0].get_title(), {
        line.get_label(): matplotlib.colors.to_hex(line.get_color())
        for line in fig.axes[0].get_lines()}))
    return savefig(fig, *args, **kwargs)

  monkeypatch.setattr(Figure, 'savefig', spy)
  pngs = compare.compare([str(tmp_path / 'run_lstm'), str(tmp_path / 'run_bn')], str(out))
  assert set(pngs) == {'train/loss', 'train/acc', 'val/loss', 'val_batch/error', 'val/bpc'}
  assert (out / 'train_loss.png').exists() and (out / 'val_loss.png').exists()
  assert pngs['val_batch/error'] is None  # only nulls: nothing to draw
  assert not (out / 'val_batch_error.png').exists()
  summary = (out / 'summary.md').read_text()
  assert 'run_lstm' in summary and 'run_bn' in summary
  assert '| run_lstm | digits | none | 1 | 3 | 0.9 | 0.3 | 12.5 |' in summary
  assert 'no results.json (last logged step 3)' in summary
  # Legends use the registry labels (no gamma for the LSTM); each run keeps one color in every
  # plot, also in val/bpc, which only the second run logged.
  lstm, bn = 'run_lstm (LSTM)', 'run_bn (BN-LSTM, gamma=0.1)'
  drawn = {title: lines for title, lines in figures if lines}
  assert set(drawn) == {'train/loss', 'train/acc', 'val/loss', 'val/bpc'}
  assert list(drawn['val/bpc']) == [bn]
  for title in ('train/loss', 'train/acc', 'val/loss'):
    assert list(drawn[title]) == [lstm, bn]
  colors = {label: {lines[label] for lines in drawn.values() if label in lines}
            for label in (lstm, bn)}
  assert all(len(c) == 1 for c in colors.values()) and colors[lstm] != colors[bn], colors


# --- length_generalization (Fig. 2b) ---------------------------------------------------------

def test_length_generalization(tmp_path, ptb_dir, monkeypatch):  # noqa: F811
  config = load_config(str(ROOT / 'configs' / 'ptb_char.py') + ':norm=batch,size=smoke', {
      'data.name': 'ptb_char', 'data.dir': str(ptb_dir), 'train.num_steps': 2,
      'train.progress_bar': False, 'wandb.tensorboard': False})
  results = trainer.train_and_evaluate(config, str(tmp_path / 'bn'))
  out = tmp_path / 'lengths'
  monkeypatch.setattr(sys, 'argv', ['length_generalization.py', '--runs',
                                    f'BN={tmp_path / "bn"}', '--out', str(out),
                                    '--lengths', '6,12,30'])
  length_generalization.main()
  r = json.loads((out / 'length_generalization.json').read_text())
  assert r['lengths'] == [6, 12, 30]  # 30: beyond the training length (T_max = 11)
  assert set(r['bpc']) == {'BN, population stats', 'BN, batch stats'}
  assert all(len(v) == 3 and all(math.isfinite(x) for x in v) for v in r['bpc'].values())
  assert r['paper']['bpc']['LSTM'][0] == 1.449
  # At the training length (seq_len 12) the numbers are the trainer's own test numbers.
  assert r['bpc']['BN, population stats'][1] == pytest.approx(results['metrics']['test/bpc'],
                                                              rel=1e-4)
  assert r['bpc']['BN, batch stats'][1] == pytest.approx(results['metrics']['test_batch/bpc'],
                                                         rel=1e-4)
  assert (out / 'length_generalization.png').exists()
