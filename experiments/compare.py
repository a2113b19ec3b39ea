"""Learning curves and a result table for several training runs (e.g. the runs of one sweep).

  python experiments/compare.py RUN_DIR [RUN_DIR ...] --out DIR [--metrics train/loss,val/bpc]

Reads each run's metrics.jsonl (`normrnn.writers.read_metrics`), config.json and results.json
(missing for a run still training: its table row says so). Writes into --out one PNG per metric
(`train_loss.png` for train/loss; one line per run, labelled by the run directory's name, norm
and initial gamma) and summary.md: a markdown table with task, norm, gamma, best step, the final
test metrics of results.json and the wall time. Default metrics: every train/, val/ and
val_batch/ key found in the files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from normrnn.writers import read_metrics  # noqa: E402

CURVE_PREFIXES = ('train/', 'val/', 'val_batch/')
TEST_PREFIXES = ('test', 'val_final')


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def load_run(run_dir: str) -> dict:
  """{'name', 'dir', 'records', 'config', 'results'} of one run directory."""
  metrics_path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.exists(metrics_path):
    raise FileNotFoundError(f'{run_dir} has no metrics.jsonl: is it a run workdir?')
  return dict(name=os.path.basename(os.path.normpath(run_dir)), dir=run_dir,
              records=read_metrics(metrics_path),
              config=_read_json(os.path.join(run_dir, 'config.json')) or {},
              results=_read_json(os.path.join(run_dir, 'results.json')))


def run_norm_gamma(run: dict):
  """(norm, gamma_init) from config.json, else results.json, else (None, None)."""
  norm = run['config'].get('model', {}).get('norm', {})
  results = run['results'] or {}
  return norm.get('name', results.get('norm')), norm.get('gamma_init', results.get('gamma_init'))


def run_label(run: dict) -> str:
  norm, gamma = run_norm_gamma(run)
  return f'{run["name"]} ({norm}, gamma={gamma:g})' if gamma is not None else (
      f'{run["name"]} ({norm})')


def curve_metrics(runs) -> list[str]:
  """train/, val/ and val_batch/ keys present in any run, in first-seen order."""
  seen = {}
  for run in runs:
    for record in run['records']:
      for key in record:
        if key.startswith(CURVE_PREFIXES):
          seen.setdefault(key, None)
  return list(seen)


def metric_filename(metric: str) -> str:
  return metric.replace('/', '_') + '.png'


def plot_metric(runs, metric: str, path: str) -> bool:
  """One line per run that logged `metric` (NaN points left out); False if none did."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  drawn = False
  for run in runs:
    points = [(r['step'], r[metric]) for r in run['records']
              if metric in r and isinstance(r[metric], (int, float)) and math.isfinite(r[metric])]
    if points:
      steps, values = zip(*points)
      ax.plot(steps, values, marker='.' if len(points) < 30 else None, label=run_label(run))
      drawn = True
  if drawn:
    ax.set_xlabel('training step')
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
  plt.close(fig)
  return drawn


def _fmt(value) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def summary_table(runs) -> str:
  """Markdown table: run, task, norm, gamma, best step, final test metrics, wall time."""
  test_keys = sorted({k for run in runs for k in ((run['results'] or {}).get('metrics') or {})
                      if k.startswith(TEST_PREFIXES)})
  header = ['run', 'task', 'norm', 'gamma', 'best step', *test_keys, 'wall time (s)']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for run in runs:
    results = run['results']
    norm, gamma = run_norm_gamma(run)
    task = run['config'].get('task', (results or {}).get('task'))
    if results is None:
      last = run['records'][-1]['step'] if run['records'] else 0
      cells = [run['name'], _fmt(task), _fmt(norm), _fmt(gamma),
               f'no results.json (last logged step {last})', *['-'] * len(test_keys), '-']
    else:
      m = results.get('metrics', {})
      cells = [run['name'], _fmt(task), _fmt(norm), _fmt(gamma), _fmt(results.get('best_step')),
               *[_fmt(m.get(k)) for k in test_keys], _fmt(results.get('wall_time_s'))]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def compare(run_dirs, out: str, metrics=None) -> dict:
  """Writes the PNGs and summary.md into `out`; returns {metric: png path or None}."""
  runs = [load_run(d) for d in run_dirs]
  metrics = list(metrics) if metrics else curve_metrics(runs)
  os.makedirs(out, exist_ok=True)
  pngs = {}
  for metric in metrics:
    path = os.path.join(out, metric_filename(metric))
    pngs[metric] = path if plot_metric(runs, metric, path) else None
  lines = ['# Run comparison', '', 'Runs: ' + ', '.join(f'`{r["dir"]}`' for r in runs), '',
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
