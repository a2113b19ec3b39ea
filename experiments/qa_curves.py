"""Fig. 3a / 3b of Cooijmans et al. 2016: error rate of Attentive Reader variants against
training steps, training error dotted and validation error solid, one color per run.

  python experiments/qa_curves.py RUN_DIR [RUN_DIR ...] --out FILE.png [--stats population|batch]
      [--title TEXT]

Reads each run directory with `normrnn.rundir.read_run` (a run still training is drawn as far as
it got). Curves: training error = 1 - train/acc (the average over each logging window, batch
statistics), validation error = val/error (population statistics, re-estimated before each
evaluation with the configs' eval.val_popstats) or, with --stats batch, val_batch/error (batch
statistics, the authors' monitor) for the runs that log it. Labels: the paper's variant name
(`normrnn.reader.variant_label`) and the lowest validation error, as the figure's caption gives
them (Fig. 3a: LSTM 50.3, BN-LSTM 49.5, BN-everywhere 50.0, BN-e* 47.1, BN-e** 43.9). Steps are
shown in thousands once a run passes 10,000 steps. Also writes FILE.json with each run's
minimum (value and step), its last values and its final test metrics.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from matplotlib.figure import Figure

from normrnn.jsonio import finite_or_none
from normrnn.plots import run_styles
from normrnn.reader import variant_label
from normrnn.rundir import read_run

STATS = {'population': 'val/error', 'batch': 'val_batch/error'}


def valid_key(run, stats: str) -> str:
  """The validation-error key of a run: val_batch/error with --stats batch where logged (a
  scheme without batch statistics logs only val/error, which is then the same thing)."""
  key = STATS[stats]
  if any(key in r for r in run.records):
    return key
  return STATS['population']


def _finite(steps, values):
  points = [(s, v) for s, v in zip(steps, values)
            if isinstance(v, (int, float)) and math.isfinite(v)]
  return [p[0] for p in points], [p[1] for p in points]


def curves(run, stats: str) -> dict:
  """{'train': (steps, errors), 'valid': (steps, errors), 'valid_key': key} of one run."""
  steps, acc = _finite(*run.series('train/acc'))
  key = valid_key(run, stats)
  return dict(train=(steps, [1.0 - a for a in acc]), valid=_finite(*run.series(key)),
              valid_key=key)


def summary(run, stats: str) -> dict:
  c = curves(run, stats)
  steps, values = c['valid']
  best = min(range(len(values)), key=values.__getitem__) if values else None
  return dict(run=run.path, label=variant_label(run.config), valid_key=c['valid_key'],
              min_valid_error=None if best is None else values[best],
              min_valid_step=None if best is None else steps[best],
              last_step=run.last_step, last_valid_error=values[-1] if values else None,
              last_train_error=c['train'][1][-1] if c['train'][1] else None,
              finished=run.finished,
              test={k: v for k, v in ((run.results or {}).get('metrics') or {}).items()
                    if k.startswith('test')},
              wall_time_s=(run.results or {}).get('wall_time_s'))


def plot(runs, path: str, *, stats: str = 'population', title: str | None = None) -> list[dict]:
  """Writes the PNG (and FILE.json next to it); returns the per-run summaries."""
  rows = [summary(run, stats) for run in runs]
  last = max([r['last_step'] or 0 for r in rows] + [0])
  scale, unit = (1000.0, 'training steps (thousands)') if last >= 10_000 else (1.0,
                                                                                'training steps')
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  for run, row, style in zip(runs, rows, run_styles(runs)):
    c = curves(run, stats)
    color = style['color']
    label = row['label']
    if row['min_valid_error'] is not None:
      label += f' (min valid {100 * row["min_valid_error"]:.1f}%)'
    if len(runs) > len({r['label'] for r in rows}):  # two runs of one variant: name them
      label = f'{run.name}: {label}'
    if c['valid'][0]:
      ax.plot([s / scale for s in c['valid'][0]], c['valid'][1], '-', color=color, label=label)
    if c['train'][0]:
      ax.plot([s / scale for s in c['train'][0]], c['train'][1], ':', color=color,
              label=None if c['valid'][0] else label)
  ax.set_xlabel(unit)
  ax.set_ylabel('error rate')
  ax.grid(alpha=0.3)
  ax.set_title(title or f'training (dotted) and validation (solid, {STATS[stats]}) error')
  if any(r['last_step'] for r in rows):
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  with open(os.path.splitext(path)[0] + '.json', 'w', encoding='utf-8') as f:
    json.dump(finite_or_none(dict(stats=stats, runs=rows)), f, indent=2, allow_nan=False)
    f.write('\n')
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('run_dirs', nargs='+', metavar='RUN_DIR')
  parser.add_argument('--out', required=True, help='the PNG to write (FILE.json goes beside it)')
  parser.add_argument('--stats', choices=tuple(STATS), default='population',
                      help='validation error with population (val/error) or batch statistics')
  parser.add_argument('--title', default=None)
  args = parser.parse_args(argv)
  runs = []
  for d in args.run_dirs:
    try:
      runs.append(read_run(d))
    except FileNotFoundError as err:
      print(f'skipped: {err}', file=sys.stderr)
  if not runs:
    print('no run directory to plot', file=sys.stderr)
    return 2
  rows = plot(runs, args.out, stats=args.stats, title=args.title)
  for row in rows:
    best = ('-' if row['min_valid_error'] is None else
            f'{100 * row["min_valid_error"]:.1f}% at step {row["min_valid_step"]}')
    print(f'{row["label"]:<24} min valid error {best} ({row["run"]})')
  print(f'wrote {args.out} and {os.path.splitext(args.out)[0]}.json')
  return 0


if __name__ == '__main__':
  sys.exit(main())
