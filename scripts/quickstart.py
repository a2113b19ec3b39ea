"""LSTM vs BN-LSTM on the embedded digits task: the README's first command.

  python scripts/quickstart.py --workdir runs/quickstart [--steps N]

Trains configs/digits.py with norm=none and norm=batch (offline, no download, ~1-2 min on 2 CPU
cores) into <workdir>/none and <workdir>/batch, prints a markdown table of the test results,
writes <workdir>/compare.png (train/loss and val/error against the step, one color per model in
both panels) and prints the TensorBoard command for the workdir. Reruns reuse finished runs and
resume unfinished ones. Works from any directory.
"""
import argparse
import os

from normrnn import launch, norms, trainer
from normrnn.config import load_config
from normrnn.plots import plot_panels
from normrnn.rundir import read_run

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                      'digits.py')
SCHEMES = ('none', 'batch')
FIGURE_METRICS = ('train/loss', 'val/error')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='runs/quickstart')
  parser.add_argument('--steps', type=int, default=None, help='override train.num_steps')
  args = parser.parse_args(argv)
  rows, runs = [], []
  for norm in SCHEMES:
    overrides = {} if args.steps is None else {'train.num_steps': args.steps}
    workdir = os.path.join(args.workdir, norm)
    if launch.status(workdir) != 'finished':
      trainer.train_and_evaluate(load_config(f'{CONFIG}:norm={norm}', overrides), workdir)
    run = read_run(workdir)
    runs.append(run)
    rows.append((norms.NORMS[norm].label, norm, run.final('test/acc'), run.final('test/loss'),
                 run.results['best_step'], run.results['wall_time_s']))
  print('\n| model | norm | test acc | test loss (nats) | best step | wall time (s) |')
  print('|---|---|---|---|---|---|')
  for label, norm, acc, loss, best, wall in rows:
    print(f'| {label} | {norm} | {100 * acc:.1f}% | {loss:.3f} | {best} | {wall:.0f} |')
  print('\nData: scikit-learn digits (8x8, 64-step pixel sequences), 1437/180/180 split; '
        'CPU, population statistics re-estimated on the training set.')
  figure = os.path.join(args.workdir, 'compare.png')
  plot_panels(runs, FIGURE_METRICS, figure, title='digits: LSTM vs BN-LSTM')
  print(f'\nLearning curves: {figure}')
  print(f'TensorBoard:     tensorboard --logdir {args.workdir}')


if __name__ == '__main__':
  main()
