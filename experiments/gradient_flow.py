"""Gradient flow through a batch-normalized tanh RNN vs initial gamma (Cooijmans et al. 2016,
Fig. 4a; the paper's values are in docs/method.md, "Reference numbers from the paper").

Model: h_t = tanh(BN(W_h h_{t-1} + W_x x_t + b; gamma, beta)), one BN on the summed
pre-activation with per-step batch statistics, 100 units, W_h = I, W_x a unit-norm random row,
h_0 = 0 plus Gaussian noise of std 0.1 (--h0-noise), beta = b = 0, eps = 1e-5, at
initialization. Input: one batch of real MNIST test images (the first `batch` of t10k), pixels /
255 in scanline order, one pixel per step. Loss: mean cross-entropy of the classifier head on the
last hidden state.

For every gamma, dL/dh_t is the gradient with respect to the model's `probe` (zeros added to
h_t); the curve is log10 of the mean over examples of the per-example L2 norm ||dL/dh_t||_2.

Why h_0 noise 0.1 by default: it is the authors' setting for the sequential-MNIST BN model
(docs/method.md, "h_0 noise 0.1 for the sequential-MNIST BN-LSTM"), and without it this figure
cannot be computed in float32. All 100 scanline images start with about 65 black pixels, so with
a shared h_0 every example has the same state over those steps: the pre-activation has zero batch
variance, BN divides by sqrt(eps), and each step back multiplies the gradient by gamma / sqrt(eps)
~ 316 gamma (docs/method.md, P16). The float32 curves are then NaN for the first 43-55 steps and
reach 1e35-1e37 after them. With the noise, gamma 0.1 stays flat near 1e-3 and gamma 1.0 drops
below the paper's 1e-26 floor close to where the paper's does.

  python experiments/gradient_flow.py --workdir experiments/results/gradient_flow
  # variant: no h_0 noise (h_0 = 0 exactly): NaN / overflow over the leading black pixels
  python experiments/gradient_flow.py --workdir experiments/results/gradient_flow_no_h0_noise \
      --h0-noise 0
  # variant: permuted pixels (no black prefix, the pMNIST setting, which has no h_0 noise)
  python experiments/gradient_flow.py --workdir experiments/results/gradient_flow_permuted \
      --pixel-order permuted --h0-noise 0
  python experiments/gradient_flow.py --workdir /tmp/gf --length 100 --batch 16 --gammas 0.1,1.0

Writes gradient_flow.json and gradient_flow.png in --workdir. --data-dir defaults to
../shared/data/mnist next to the repository (the data directory of the MNIST configs).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import time

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from tqdm import tqdm  # noqa: E402

from normrnn import models  # noqa: E402
from normrnn.data import mnist  # noqa: E402
from normrnn.norms import NORMS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data', 'mnist'))
GAMMAS = tuple(round(0.1 * i, 1) for i in range(1, 11))
N_PIXELS = 784
PAPER_FLOOR = -26.0  # the paper's y axis ends at 1e-26
H0_NOISE = 0.1  # the authors' sequential-MNIST BN setting; see the module docstring for why
# Fig. 4a: log10 ||dL/dh_t|| read off the figure (None = below the axis, < 1e-26); docs/method.md,
# "Reference numbers from the paper".
PAPER = {
    't': [783, 600, 400, 200, 100],
    'log10_grad_norm': {
        '0.1': [-2.0, -2.9, -3.1, -3.1, -3.1],
        '0.3': [-2.0, -2.6, -1.5, -2.5, -2.8],
        '0.5': [-2.0, -3.7, -2.3, -7.7, -9.7],
        '0.6': [-2.0, -6.7, -11.1, -15.7, -18.0],
        '0.7': [-2.0, -12.2, None, None, None],
        '1.0': [-2.0, None, None, None, None],
    },
    'below_1e-26_for_t_before': {'0.7': 414, '0.8': 554, '0.9': 580, '1.0': 656},
    'notes': ('Values read off the paper figure (Fig. 4a). null = below 1e-26, off the '
              "paper's axis. below_1e-26_for_t_before: reading right to left, the curve drops "
              'below 1e-26 at about this t.'),
}


def gamma_key(gamma: float) -> str:
  """The JSON key of a gamma: '0.1', '1.0'."""
  return repr(round(float(gamma), 6))


def load_batch(data_dir: str, batch: int, length: int, pixel_order: str = 'scanline'):
  """The first `batch` t10k images as float32 [batch, length, 1] (pixels / 255) + labels.

  `pixel_order` is a `normrnn.data.mnist.pixel_order` kind (permutation seed 1, as pMNIST).
  """
  images = mnist.read_idx(os.path.join(data_dir, 't10k-images-idx3-ubyte.gz'))
  labels = mnist.read_idx(os.path.join(data_dir, 't10k-labels-idx1-ubyte.gz'))
  if batch > len(images):
    raise ValueError(f'--batch {batch} is larger than the {len(images)} images in {data_dir}')
  order = mnist.pixel_order(pixel_order, 1, N_PIXELS)[:length]
  x = images[:batch].reshape(batch, -1)[:, order].astype(np.float32) / 255.0
  return x[..., None], labels[:batch].astype(np.int32)


def build_model(gamma: float, hidden: int, max_time_steps: int,
                h0_noise: float = H0_NOISE) -> models.SequenceClassifier:
  """The Fig. 4a model: a batch-normalized tanh RNN + a softmax head."""
  spec = models.RNNSpec(
      cell='tanh_rnn', hidden=hidden, layers=1, norm='batch',
      options=NORMS['batch'].make_options(gamma_init=gamma),
      recurrent_init='identity', forget_bias=0.0, h0_noise=h0_noise,
      max_time_steps=max_time_steps, stats_rate=0.01, unroll=1, remat=False)
  return models.SequenceClassifier(spec, num_classes=10)


@functools.lru_cache(maxsize=16)
def _init_fn(spec: models.RNNSpec):
  return jax.jit(lambda key, x: models.SequenceClassifier(spec, num_classes=10).init(
      key, x, None, train=True))


def init_variables(model, x, seed: int) -> dict:
  """{'params', 'batch_stats'} of `model` at initialization (key PRNGKey(seed)).

  No shape depends on the batch size or the sequence length, so the init runs on x[:2, :1]:
  one compilation per model spec serves every input.
  """
  init = _init_fn(model.spec)(jax.random.PRNGKey(seed), x[:2, :1])
  return {'params': init['params'], 'batch_stats': init['batch_stats']}


@functools.lru_cache(maxsize=4)
def _grad_fn(spec: models.RNNSpec):
  """jit(dL/dprobe) for one model spec. `apply` never reads gamma_init (the gains are
  parameters), so specs that differ only in it share one compilation (see probe_gradients)."""
  model = models.SequenceClassifier(spec, num_classes=10)

  def loss_fn(probe, variables, x, y, noise_rng):
    logits, _ = model.apply(variables, x, None, train=True, mutable=['batch_stats'],
                            probe=probe, rngs={'noise': noise_rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return jax.jit(jax.grad(loss_fn))


def probe_gradients(model, variables, x, y, noise_rng):
  """dL/dh_t for every t: [batch, time, hidden] in x's dtype (batch statistics, train mode).

  L is the mean cross-entropy of the head on the last hidden state; dL/dh_t is the gradient
  with respect to the model's `probe` (zeros added to h_t).
  """
  spec = model.spec
  options = NORMS[spec.norm].make_options(gamma_init=1.0, eps=spec.options.eps,
                                          **dict(spec.options.extra))
  shared = dataclasses.replace(spec, options=options)
  probe = jnp.zeros(x.shape[:2] + (spec.hidden,), x.dtype)
  return _grad_fn(shared)(probe, variables, x, y, noise_rng)


def mean_norm(grads) -> np.ndarray:
  """Mean over examples of the per-example L2 norm, [time] float64.

  Computed in float64 and scaled by the largest entry, so that squaring neither underflows
  (float32 gradients below 1e-19) nor overflows (float64 gradients above 1e154).
  """
  g = np.abs(np.asarray(grads, np.float64))
  scale = g.max(axis=-1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    ratio = np.where(scale > 0, g / scale, 0.0)
  return (scale[..., 0] * np.sqrt(np.sum(ratio * ratio, axis=-1))).mean(axis=0)


def to_log10(norms: np.ndarray):
  """log10 values with every non-finite one as None, and the t's of each kind."""
  values, kinds = [], {'zero': [], 'inf': [], 'nan': []}
  for t, v in enumerate(norms):
    if np.isnan(v):
      kinds['nan'].append(t)
      values.append(None)
    elif np.isinf(v):
      kinds['inf'].append(t)
      values.append(None)
    elif v == 0.0:
      kinds['zero'].append(t)
      values.append(None)
    else:
      values.append(round(math.log10(v), 4))
  return values, kinds


def crossing(values, zero_t=(), floor=PAPER_FLOOR):
  """Reading right to left, the first t whose value is below `floor` or underflowed to 0
  (listed in `zero_t`); None if there is none. Overflow / NaN (None values not in zero_t) do not
  count."""
  zero_t = set(zero_t)
  for t in range(len(values) - 1, -1, -1):
    v = values[t]
    if (v is None and t in zero_t) or (v is not None and v < floor):
      return t
  return None


def crossings(curves: dict, nonfinite: dict) -> dict:
  """Per gamma key: our crossing of the paper's 1e-26 floor beside the paper's, and whether any
  value overflowed.

  ours: `crossing` of the curve (reading right to left, the first t below 1e-26 or underflowed to
  0; null if none). paper: the paper's figure's crossing, null if it has none. paper_read: whether
  the paper's figure gives this gamma (PAPER's crossings, or a read-off row that stays above
  1e-26); with paper_read false, paper is null because it is unknown. nan_or_inf: any NaN or
  overflowed value in our curve. log10_min / log10_max: range of the finite log10 values.
  """
  paper_cross = PAPER['below_1e-26_for_t_before']
  out = {}
  for key, values in curves.items():
    kinds = nonfinite.get(key, {})
    finite = [v for v in values if v is not None]
    read = key in paper_cross or (key in PAPER['log10_grad_norm'] and all(
        v is not None for v in PAPER['log10_grad_norm'][key]))
    out[key] = {'ours': crossing(values, kinds.get('zero', ())), 'paper': paper_cross.get(key),
                'paper_read': read, 'nan_or_inf': bool(kinds.get('nan') or kinds.get('inf')),
                'log10_min': min(finite) if finite else None,
                'log10_max': max(finite) if finite else None}
  return out


def run(workdir: str, data_dir: str = DEFAULT_DATA, batch: int = 100, length: int = N_PIXELS,
        gammas=GAMMAS, *, hidden: int = 100, seed: int = 0, pixel_order: str = 'scanline',
        h0_noise: float = H0_NOISE, float64: bool = False, progress: bool = True) -> dict:
  """Computes the curves, writes gradient_flow.json/.png in `workdir`, returns the JSON dict.

  Args:
    workdir: output directory.
    data_dir: folder with the MNIST t10k IDX files.
    batch: number of test images (the first ones).
    length: time steps (pixels) per sequence, <= 784.
    gammas: initial BN gains, one curve each.
    hidden: units.
    seed: parameter init seed (W_x and the head).
    pixel_order: 'scanline' (default), 'permuted' or 'with_replacement' (seed 1).
    h0_noise: std of the Gaussian noise on h_0, redrawn per example (0.1, the authors'
      sequential-MNIST BN setting, by default; 0 = h_0 = 0 exactly, which in scanline order
      gives NaN / overflow in float32, see the module docstring).
    float64: compute in float64 (needs jax_enable_x64, set by the CLI's --float64): no overflow
      in the zero-variance steps, no underflow before 1e-308.
    progress: show a progress bar.
  """
  if float64 and not jax.config.jax_enable_x64:
    raise ValueError('float64=True needs jax.config.update("jax_enable_x64", True) first '
                     '(the --float64 flag does that)')
  dtype = np.float64 if float64 else np.float32
  if not 1 <= length <= N_PIXELS:
    raise ValueError(f'--length must be in [1, {N_PIXELS}], got {length}')
  if batch < 2:
    raise ValueError(f'--batch must be >= 2 (batch statistics), got {batch}')
  t0 = time.time()
  x, y = load_batch(data_dir, batch, length, pixel_order)
  x = x.astype(dtype)
  nonzero = np.flatnonzero(np.any(x[..., 0] != x[:1, :, 0], axis=0))
  # Before this step every example has seen the same pixels, so (with h0 noise off) the
  # pre-activation has zero batch variance and BN's backward pass multiplies by gamma/sqrt(eps).
  # With h0 noise the states differ from step 0 and this step no longer matters.
  first_varying = int(nonzero[0]) if len(nonzero) else None
  curves, nonfinite, at_paper_t = {}, {}, {}
  noise_rng = jax.random.PRNGKey(seed + 1)
  for gamma in tqdm(gammas, desc='gamma', disable=not progress):
    model = build_model(gamma, hidden, N_PIXELS, h0_noise)
    variables = jax.tree.map(lambda v: v.astype(dtype), init_variables(model, x, seed))
    grads = probe_gradients(model, variables, x, y, noise_rng)
    values, kinds = to_log10(mean_norm(grads))
    key = gamma_key(gamma)
    curves[key] = values
    nonfinite[key] = {k: v for k, v in kinds.items() if v}
    at_paper_t[key] = [values[t] if t < length else None for t in PAPER['t']]
  # The default data directory is written as the repository-relative path the commands are run
  # with, so that the committed command does not name this machine's absolute path.
  data_arg = ('../shared/data/mnist' if os.path.abspath(data_dir) == DEFAULT_DATA
              else str(data_dir))
  result = {
      'gammas': [float(g) for g in gammas], 't': list(range(length)),
      'log10_grad_norm': curves,
      'at_paper_t': {'t': PAPER['t'], 'log10_grad_norm': at_paper_t},
      'crossing_1e-26': crossings(curves, nonfinite),
      'nonfinite_t': nonfinite, 'paper': PAPER,
      'dtype': np.dtype(dtype).name,
      'notes': (
          'log10 of the mean over examples of ||dL/dh_t||_2 at initialization (gradients in '
          f'{np.dtype(dtype).name}, norms in float64). JSON has no -inf/inf/NaN: null marks a '
          'non-finite log10, and nonfinite_t lists, per gamma, the t whose gradient norm is '
          'exactly 0 ("zero": the gradient underflowed, float32 below ~1e-38, far under the '
          'paper axis floor of 1e-26), overflowed ("inf") or is NaN ("nan": an overflow inside '
          'the backward pass, inf - inf). model.h0_noise is the std of the Gaussian noise on h_0 '
          '(0.1 by default, the authors\' sequential-MNIST BN setting). With it 0, overflow '
          'happens in the first steps when every example has seen the same (zero) pixels (before '
          'data.first_step_with_batch_variance): the pre-activation then has zero batch variance '
          'and each step back multiplies the gradient by gamma / sqrt(eps) = gamma * 316 '
          '(docs/method.md, P16); --float64 shows the finite values. crossing_1e-26, per gamma: '
          'ours = reading right to left, the first t below 1e-26 (or underflowed to 0), null if '
          'none; paper = the same read off the paper\'s figure (paper.below_1e-26_for_t_before), '
          'null if the paper\'s curve stays above 1e-26 (paper_read true) or the paper gives no '
          'reading for this gamma (paper_read false); nan_or_inf = any NaN or overflow in our '
          'curve; log10_min / log10_max = the range of our finite values.'),
      'command': shlex.join(
          ['python', 'experiments/gradient_flow.py', '--workdir', str(workdir), '--data-dir',
           data_arg, '--batch', str(batch), '--length', str(length), '--gammas',
           ','.join(map(str, gammas)), '--seed', str(seed), '--pixel-order', pixel_order,
           '--h0-noise', str(h0_noise)] + (['--float64'] if float64 else [])),
      'data': dict(dir=os.path.abspath(data_dir), files=['t10k-images-idx3-ubyte.gz',
                                                         't10k-labels-idx1-ubyte.gz'],
                   examples=f'first {batch} test images', pixel_order=pixel_order,
                   permutation_seed=1, scale='1/255', length=length,
                   first_step_with_batch_variance=first_varying),
      'model': dict(cell='tanh_rnn', norm='batch', hidden=hidden, recurrent_init='identity',
                    h0='0', h0_noise=h0_noise, eps=1e-5, statistics='batch', init_seed=seed),
      'wall_time_s': round(time.time() - t0, 1)}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'gradient_flow.json'), 'w') as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(workdir, 'gradient_flow.png'))
  return result


def plot(result: dict, path: str) -> None:
  """One curve per gamma on the paper's log axis (1e-26 .. 1e2); the paper's values as crosses
  and its 1e-26 crossings as triangles on the bottom edge; non-finite points are left out."""
  fig, ax = plt.subplots(figsize=(9, 5.2), layout='constrained')
  # turbo (ends trimmed) keeps the gamma order readable with 10 curves and stays distinct
  # from the crosses' black edges.
  cmap = plt.get_cmap('turbo')
  keys = list(result['log10_grad_norm'])
  colors = {key: cmap(0.05 + 0.9 * i / max(len(keys) - 1, 1)) for i, key in enumerate(keys)}
  for key in keys:
    v = np.array([np.nan if a is None else a for a in result['log10_grad_norm'][key]])
    ax.plot(result['t'], 10.0 ** v, color=colors[key], lw=1.1, label=f'gamma={key}')
  paper = result['paper']
  for key, values in paper['log10_grad_norm'].items():
    points = [(t, 10.0 ** v) for t, v in zip(paper['t'], values) if v is not None]
    if key in colors and points:
      ax.plot(*zip(*points), 'X', color=colors[key], ms=8, mec='black', mew=0.8)
  for key, t in paper['below_1e-26_for_t_before'].items():
    if key in colors and t < len(result['t']):
      ax.plot([t], [2.2e-26], 'v', color=colors[key], ms=9, mec='black', mew=0.8, clip_on=False)
  first = result['data'].get('first_step_with_batch_variance')
  if first and not result['model'].get('h0_noise'):
    ax.axvline(first, color='grey', ls=':', lw=1)
    ax.text(first + 5, 1e-24, f'before t={first} all examples saw the same pixels:\n'
            'zero batch variance, gradients NaN / explode (off the top)', fontsize=7,
            color='dimgrey', bbox=dict(facecolor='white', edgecolor='none', alpha=0.8))
  ax.set_yscale('log')
  ax.set_ylim(1e-26, 1e2)
  ax.set_yticks([10.0 ** e for e in range(-26, 3, 2)])
  ax.set_xlim(0, len(result['t']) - 1)
  ax.grid(True, which='major', axis='y', color='0.9', lw=0.6)
  ax.set_xlabel('t')
  ax.set_ylabel('mean over examples of ||dL/dh_t||_2')
  model, data = result['model'], result['data']
  ax.set_title('BN tanh RNN at init, paper Fig. 4a: gradient flow vs initial gamma\n'
               f'{len(result["t"])} steps, {data["pixel_order"]} pixels, '
               f'h_0 noise std {model.get("h0_noise", 0.0):g}, {result["dtype"]}', fontsize=10)
  handles, labels = ax.get_legend_handles_labels()
  handles += [plt.Line2D([], [], ls='', marker='X', color='grey', mec='black', ms=8),
              plt.Line2D([], [], ls='', marker='v', color='grey', mec='black', ms=8)]
  labels += ['paper values', 'paper: < 1e-26 before this t']
  ax.legend(handles, labels, fontsize=7, ncol=1, loc='center left', bbox_to_anchor=(1.01, 0.5),
            frameon=False)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def make_parser() -> argparse.ArgumentParser:
  """The command line (a function, so that its defaults can be checked without running it)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data-dir', default=DEFAULT_DATA)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--length', type=int, default=N_PIXELS)
  parser.add_argument('--gammas', default=','.join(map(str, GAMMAS)),
                      help='comma-separated initial gammas')
  parser.add_argument('--seed', type=int, default=0, help='parameter init seed')
  parser.add_argument('--pixel-order', default='scanline', choices=mnist.PIXEL_ORDERS)
  parser.add_argument('--h0-noise', type=float, default=H0_NOISE,
                      help='std of the Gaussian noise on h_0 (default %(default)s, the authors\' '
                      'sequential-MNIST BN setting; 0 = h_0 = 0 exactly, which in scanline order '
                      'gives NaN / overflow over the leading black pixels)')
  parser.add_argument('--float64', action='store_true',
                      help='compute in float64 (enables jax_enable_x64 for this process)')
  return parser


def main():
  args = make_parser().parse_args()
  if args.float64:
    jax.config.update('jax_enable_x64', True)
  gammas = [float(g) for g in args.gammas.split(',')]
  result = run(args.workdir, args.data_dir, args.batch, args.length, gammas, seed=args.seed,
               pixel_order=args.pixel_order, h0_noise=args.h0_noise, float64=args.float64)
  t = [t for t in PAPER['t'] if t < args.length]
  print('gamma | ' + ' | '.join(f't={i}' for i in t))
  for key, values in result['log10_grad_norm'].items():
    print(f'{key} | ' + ' | '.join('null' if values[i] is None else f'{values[i]:.1f}'
                                   for i in t))
  print('gamma | t where the curve drops below 1e-26 (right to left): ours | paper | NaN/inf')
  for key, c in result['crossing_1e-26'].items():
    paper = ('not read' if not c['paper_read'] else 'never' if c['paper'] is None
             else c['paper'])
    ours = 'never' if c['ours'] is None else c['ours']
    print(f'{key} | {ours} | {paper} | {c["nan_or_inf"]}')
  print(f'wrote {args.workdir}/gradient_flow.json and gradient_flow.png '
        f'({result["wall_time_s"]} s)')


if __name__ == '__main__':
  main()
