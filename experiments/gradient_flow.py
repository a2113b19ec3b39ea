"""Gradient flow through a batch-normalized tanh RNN vs initial gamma (Cooijmans et al. 2016,
Fig. 4a; the paper's values are in docs/method.md, "Reference numbers from the paper").

Model: h_t = tanh(BN(W_h h_{t-1} + W_x x_t + b; gamma, beta)), one BN on the summed
pre-activation with per-step batch statistics, 100 units, W_h = I, W_x a unit-norm random row,
h_0 = 0, beta = b = 0, eps = 1e-5, at initialization. Input: one batch of real MNIST test
images (the first `batch` of t10k), pixels / 255 in scanline order, one pixel per step.
Loss: mean cross-entropy of the classifier head on the last hidden state.

For every gamma, dL/dh_t is the gradient with respect to the model's `probe` (zeros added to
h_t); the curve is log10 of the mean over examples of the per-example L2 norm ||dL/dh_t||_2.

  python experiments/gradient_flow.py --workdir experiments/results/gradient_flow
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
                h0_noise: float = 0.0) -> models.SequenceClassifier:
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


def run(workdir: str, data_dir: str = DEFAULT_DATA, batch: int = 100, length: int = N_PIXELS,
        gammas=GAMMAS, *, hidden: int = 100, seed: int = 0, pixel_order: str = 'scanline',
        h0_noise: float = 0.0, float64: bool = False, progress: bool = True) -> dict:
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
    h0_noise: std of Gaussian noise on h_0 (0 = the paper's h_0 = 0).
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
  result = {
      'gammas': [float(g) for g in gammas], 't': list(range(length)),
      'log10_grad_norm': curves,
      'at_paper_t': {'t': PAPER['t'], 'log10_grad_norm': at_paper_t},
      'below_1e-26_for_t_before': {
          k: crossing(v, nonfinite[k].get('zero', ())) for k, v in curves.items()},
      'nonfinite_t': nonfinite, 'paper': PAPER,
      'dtype': np.dtype(dtype).name,
      'notes': (
          'log10 of the mean over examples of ||dL/dh_t||_2 at initialization (gradients in '
          f'{np.dtype(dtype).name}, norms in float64). JSON has no -inf/inf/NaN: null marks a '
          'non-finite log10, and nonfinite_t lists, per gamma, the t whose gradient norm is '
          'exactly 0 ("zero": the gradient underflowed, float32 below ~1e-38, far under the '
          'paper axis floor of 1e-26), overflowed ("inf") or is NaN ("nan": an overflow inside '
          'the backward pass, inf - inf). Overflow happens in the first steps when every example '
          'has seen the same (zero) pixels (before data.first_step_with_batch_variance, h0 noise '
          'off): the pre-activation then has zero batch variance and each step back multiplies '
          'the gradient by gamma / sqrt(eps) = gamma * 316 (docs/method.md, P16); --float64 '
          'shows the finite values. below_1e-26_for_t_before: reading right to left, the first t '
          'below 1e-26 (or underflowed to 0), null if none (compare '
          'paper.below_1e-26_for_t_before).'),
      'command': shlex.join(
          ['python', 'experiments/gradient_flow.py', '--workdir', str(workdir), '--data-dir',
           str(data_dir), '--batch', str(batch), '--length', str(length), '--gammas',
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
  """One curve per gamma on the paper's log axis (1e-26 .. 1e2), the paper's values as crosses;
  non-finite points are left out."""
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  cmap = plt.get_cmap('viridis')
  keys = list(result['log10_grad_norm'])
  colors = {key: cmap(i / max(len(keys) - 1, 1)) for i, key in enumerate(keys)}
  for key in keys:
    v = np.array([np.nan if a is None else a for a in result['log10_grad_norm'][key]])
    ax.plot(result['t'], 10.0 ** v, color=colors[key], lw=1, label=f'gamma={key}')
  paper = result['paper']
  for key, values in paper['log10_grad_norm'].items():
    points = [(t, 10.0 ** v) for t, v in zip(paper['t'], values) if v is not None]
    if key in colors and points:
      ax.plot(*zip(*points), 'x', color=colors[key], ms=6, mew=1.5)
  first = result['data'].get('first_step_with_batch_variance')
  if first:
    ax.axvline(first, color='grey', ls=':', lw=1)
    ax.text(first + 5, 3e-26, f'before t={first} all examples saw the same pixels:\n'
            'zero batch variance, gradients explode (off the top)', fontsize=7, color='grey')
  ax.set_yscale('log')
  ax.set_ylim(1e-26, 1e2)
  ax.set_xlim(0, len(result['t']) - 1)
  ax.set_xlabel('t')
  ax.set_ylabel('mean over examples of ||dL/dh_t||_2')
  ax.set_title('BN tanh RNN at init: gradient flow vs gamma (paper Fig. 4a; x = paper values)',
               fontsize=10)
  ax.legend(fontsize=7, ncol=2, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data-dir', default=DEFAULT_DATA)
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--length', type=int, default=N_PIXELS)
  parser.add_argument('--gammas', default=','.join(map(str, GAMMAS)),
                      help='comma-separated initial gammas')
  parser.add_argument('--seed', type=int, default=0, help='parameter init seed')
  parser.add_argument('--pixel-order', default='scanline', choices=mnist.PIXEL_ORDERS)
  parser.add_argument('--h0-noise', type=float, default=0.0,
                      help='std of Gaussian noise on h_0 (the paper: 0; sMNIST training: 0.1)')
  parser.add_argument('--float64', action='store_true',
                      help='compute in float64 (enables jax_enable_x64 for this process)')
  args = parser.parse_args()
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
  print(f'wrote {args.workdir}/gradient_flow.json and gradient_flow.png '
        f'({result["wall_time_s"]} s)')


if __name__ == '__main__':
  main()
