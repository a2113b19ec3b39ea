"""LSTM vs BN-LSTM on the embedded digits task: the README's first command.

  python scripts/quickstart.py --workdir runs/quickstart

Trains configs/digits.py with norm=none and norm=batch (offline, no download, ~1-2 min on 2 CPU
cores) and prints a markdown table of the test results. Reruns resume / reuse finished runs.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # noqa: E402
from normrnn import trainer  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='runs/quickstart')
  parser.add_argument('--steps', type=int, default=None, help='override train.num_steps')
  args = parser.parse_args()
  rows = []
  for norm, label in (('none', 'LSTM'), ('batch', 'BN-LSTM')):
    config = digits.get_config(f'norm={norm}')
    if args.steps is not None:
      with config.unlocked():
        config.train.num_steps = args.steps
    workdir = os.path.join(args.workdir, norm)
    results_path = os.path.join(workdir, 'results.json')
    if os.path.exists(results_path):
      with open(results_path) as f:
        results = json.load(f)
    else:
      results = trainer.train_and_evaluate(config, workdir)
    m = results['metrics']
    rows.append((label, norm, m['test/acc'], m['test/loss'], results['best_step'],
                 results['wall_time_s']))
  print('\n| model | norm | test acc | test loss (nats) | best step | wall time (s) |')
  print('|---|---|---|---|---|---|')
  for label, norm, acc, loss, best, wall in rows:
    print(f'| {label} | {norm} | {100 * acc:.1f}% | {loss:.3f} | {best} | {wall:.0f} |')
  print('\nData: scikit-learn digits (8x8, 64-step pixel sequences), 1437/180/180 split; '
        'CPU, population statistics re-estimated on the training set.')


if __name__ == '__main__':
  main()
