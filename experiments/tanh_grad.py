"""The tanh derivative vs the standard deviation of its input (Cooijmans et al. 2016, Fig. 4b):
why a BN gain of 1 saturates tanh and a gain of 0.1 does not.

For 1000 sigma in linspace(0, 1) and 1000 samples x ~ N(0, sigma^2), the mean and the 25% / 75%
quantiles of 1 - tanh(x)^2. The samples are x = sigma * z with ONE seeded draw of 1000 standard
normal z shared by every sigma (common random numbers), so the curves are smooth and exactly
monotone. The JSON also holds the exact expectation (Gauss-Hermite quadrature) and the paper's
values at sigma = 0.1, 0.25, 0.5, 0.75, 1.0 (docs/method.md, "Reference numbers from the
paper"; JSON key reference.paper_spec).

  python experiments/tanh_grad.py --workdir experiments/results/tanh_grad

Writes tanh_grad.json and tanh_grad.png in --workdir.
"""
from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

# Fig. 4b: E[1 - tanh(x)^2] for x ~ N(0, sigma^2) (2M-sample Monte Carlo); docs/method.md,
# "Reference numbers from the paper".
PAPER = {'sigma': [0.1, 0.25, 0.5, 0.75, 1.0], 'mean': [0.990, 0.944, 0.827, 0.707, 0.606],
         'iqr_at_sigma_1': [0.33, 0.91]}


def exact_mean(sigma: float, degree: int = 80) -> float:
  """E[1 - tanh(sigma z)^2], z ~ N(0, 1), by Gauss-Hermite quadrature."""
  z, w = np.polynomial.hermite_e.hermegauss(degree)
  return float(np.sum(w * (1.0 - np.tanh(sigma * z) ** 2)) / np.sqrt(2.0 * np.pi))


def run(workdir: str, num_sigmas: int = 1000, num_samples: int = 1000, seed: int = 0,
        progress: bool = True) -> dict:
  """Computes the curve, writes tanh_grad.json/.png in `workdir`, returns the JSON dict."""
  sigmas = np.linspace(0.0, 1.0, num_sigmas)
  z = np.random.default_rng(seed).standard_normal(num_samples)
  mean, q25, q75 = (np.empty(num_sigmas) for _ in range(3))
  for i in tqdm(range(num_sigmas), desc='sigma', disable=not progress, mininterval=0.5):
    d = 1.0 - np.tanh(sigmas[i] * z) ** 2
    mean[i] = d.mean()
    q25[i], q75[i] = np.quantile(d, [0.25, 0.75])
  at = np.array(PAPER['sigma'])
  result = {
      'sigma': sigmas.round(6).tolist(), 'mean': mean.round(6).tolist(),
      'q25': q25.round(6).tolist(), 'q75': q75.round(6).tolist(),
      'reference': {
          'sigma': PAPER['sigma'],
          'paper_spec': PAPER['mean'],
          'ours_monte_carlo': np.interp(at, sigmas, mean).round(4).tolist(),
          'exact': [round(exact_mean(s), 4) for s in PAPER['sigma']],
          'ours_iqr_at_sigma_1': [round(float(q25[-1]), 3), round(float(q75[-1]), 3)],
          'paper_iqr_at_sigma_1': PAPER['iqr_at_sigma_1'],
      },
      'num_samples': num_samples, 'seed': seed,
      'notes': ('x = sigma * z with one seeded draw of z ~ N(0, 1) shared by all sigma; '
                'ours_monte_carlo interpolates the mean curve at the reference sigma; exact = '
                'Gauss-Hermite quadrature (80 nodes).'),
      'command': (f'python experiments/tanh_grad.py --workdir {workdir} --num-sigmas '
                  f'{num_sigmas} --num-samples {num_samples} --seed {seed}'),
  }
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'tanh_grad.json'), 'w') as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(workdir, 'tanh_grad.png'))
  return result


def plot(result: dict, path: str) -> None:
  """Mean and 25-75% band of the tanh derivative vs sigma, axes [0, 1] x [0, 1]."""
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.fill_between(result['sigma'], result['q25'], result['q75'], alpha=0.3,
                  label='25-75% quantiles')
  ax.plot(result['sigma'], result['mean'], label='mean')
  ref = result['reference']
  ax.plot(ref['sigma'], ref['paper_spec'], 'k.', label='paper (Fig. 4b)')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel('input standard deviation sigma')
  ax.set_ylabel("tanh'(x) = 1 - tanh(x)^2")
  ax.set_title('tanh derivative vs input std (paper Fig. 4b)')
  ax.legend(loc='lower left')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--num-sigmas', type=int, default=1000)
  parser.add_argument('--num-samples', type=int, default=1000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  result = run(args.workdir, args.num_sigmas, args.num_samples, args.seed)
  ref = result['reference']
  print('sigma | paper | ours (MC) | exact')
  for row in zip(ref['sigma'], ref['paper_spec'], ref['ours_monte_carlo'], ref['exact']):
    print(' | '.join(f'{v:g}' for v in row))
  print(f'wrote {args.workdir}/tanh_grad.json and tanh_grad.png')


if __name__ == '__main__':
  main()
