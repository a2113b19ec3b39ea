"""Learning curves and a result table for several training runs (e.g. the runs of one sweep).

  python experiments/compare.py RUN_DIR [RUN_DIR ...] --out DIR [--metrics train/loss,val/bpc]

Reads each run directory with `normrnn.rundir.read_run` (metrics.jsonl, config.json and
results.json, which is missing for a run still training: its table row says so). Writes into
--out one PNG per metric (`train_loss.png` for train/loss; one line per run, labelled with
`Run.label`: 'run_bn (BN-LSTM, gamma=0.1)', 'run_lstm (LSTM)' without gamma for schemes without a
gain; each run keeps one color in every plot, see `normrnn.plots`) and summary.md: a markdown
table with task, norm, gamma, best step, the final test metrics of results.json and the wall
time. Default metrics: every train/, val/ and val_batch/ key found in the files.
"""
from __future__ import annotations

import argparse
import os

from normrnn.plots import plot_metric, run_styles
from normrnn.rundir import read_run

CURVE_PREFIXES = ('train/', 'val/', 'val_batch/')
TEST_PREFIXES = ('test', 'val_final')


def curve_metrics(runs) -> list[str]:
  """train/, val/ and val_batch/ keys present in any run, in first-seen order."""
  seen = {}
  for run in runs:
    for record in run.records:
      for key in record:
        if key.startswith(CURVE_PREFIXES):
          seen.setdefault(key, None)
  return list(seen)


def metric_filename(metric: str) -> str:
  return metric.replace('/', '_') + '.png'


def _fmt(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def summary_table(runs) -> str:
  """Markdown table: run, task, norm, gamma, best step, final test metrics, wall time."""
  test_keys = sorted({k for run in runs for k in ((run.results or {}).get('metrics') or {})
                      if k.startswith(TEST_PREFIXES)})
  header = ['run', 'task', 'norm', 'gamma', 'best step', *test_keys, 'wall time (s)']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for run in runs:
    first = [run.name, _fmt(run.task), _fmt(run.scheme), _fmt(run.gamma)]
    if not run.finished:
      cells = [*first, f'no results.json (last logged step {run.last_step or 0})',
               *['-'] * len(test_keys), '-']
    else:
      cells = [*first, _fmt(run.results.get('best_step')),
               *[_fmt(run.final(k)) for k in test_keys], _fmt(run.results.get('wall_time_s'))]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def compare(run_dirs, out: str, metrics=None) -> dict:
  """Writes the PNGs and summary.md into `out`; returns {metric: png path or None}."""
  runs = [read_run(d) for d in run_dirs]
  metrics = list(metrics) if metrics else curve_metrics(runs)
  styles = run_styles(runs)
  os.makedirs(out, exist_ok=True)
  pngs = {}
  for metric in metrics:
    path = os.path.join(out, metric_filename(metric))
    pngs[metric] = path if plot_metric(runs, metric, path, styles) else None
  lines = ['# Run comparison', '', 'Runs: ' + ', '.join(f'`{r.path}`' for r in runs), '',
           summary_table(runs), '## Learning curves', '']
  for metric, path in pngs.items():
    lines.append(f'- `{metric}`: ' + (f'![{metric}]({os.path.basename(path)})' if path
                                      else 'not logged by any run'))
  with open(os.path.join(out, 'summary.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return pngs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('run_dirs', nargs='+', metavar='RUN_DIR')
  parser.add_argument('--out', required=True)
  parser.add_argument('--metrics', default='',
                      help='comma-separated metric keys (default: all train/ and val keys)')
  args = parser.parse_args()
  metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
  pngs = compare(args.run_dirs, args.out, metrics)
  missing = [m for m, p in pngs.items() if p is None]
  print(f'wrote {args.out}/summary.md and {len(pngs) - len(missing)} plots')
  if missing:
    print(f'not logged by any run: {", ".join(missing)}')


if __name__ == '__main__':
  main()
