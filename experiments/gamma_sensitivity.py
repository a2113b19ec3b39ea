"""Initial-gamma sensitivity curves (Cooijmans et al. 2016, App. B, Fig. 6).

Reads the run directories of gamma sweeps:

  python scripts/sweep.py --config configs/pmnist.py:size=cpu --workdir runs/pmnist_gamma
  python scripts/sweep.py --config configs/ptb_char.py:size=cpu --workdir runs/ptb_gamma
  python experiments/gamma_sensitivity.py runs/pmnist_gamma [runs/ptb_gamma ...] --out DIR

Each ROOT is one sweep: every run directory under it that has logged metrics is a run
(`normrnn.rundir.find_runs`); its initial gamma is config.json's model.norm.gamma_init, and a run
with model.norm.name=none is the baseline (labelled with its registered label, `LSTM`). For each
ROOT (task = config.json's `task`) the figure has two panels: training loss (`train/loss`) and
validation loss vs step, one line per gamma. Validation loss is `val_batch/loss` (batch
statistics, the mode of the paper's figure) where a run logged it, else `val/loss` (population
statistics; the same thing for the LSTM). Losses are cross-entropies in nats. The JSON keeps both
validation losses where a run logged both.

Writes DIR/gamma_sensitivity.png and DIR/gamma_sensitivity.json:
  {"tasks": [{"task", "root", "gammas", "baseline", "step": {metric: {key: [...]}},
              "train/loss": {key: [...]}, "val_batch/loss": {...}, "val/loss": {...},
              "final": {key: {...}}, "ordering": {...}, "paper": {...} or null}],
   "command": ...}
where key is the gamma as text ("0.1"), "LSTM", or for a scheme other than BN-LSTM its label and
gamma ("LN-LSTM 1"). It also prints, per task, a markdown table of the validation loss per gamma
(at the last step every gamma run reached, best, mean over the evaluations) and whether it
increases with gamma, the paper's pMNIST criterion (larger gamma learns slower). The paper's PTB
criterion is different: nearly identical curves (docs/method.md, "Reference numbers from the
paper").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after matplotlib.use)

from normrnn import norms  # noqa: E402
from normrnn.jsonio import finite_or_none  # noqa: E402
from normrnn.rundir import Run, find_runs  # noqa: E402

TRAIN = 'train/loss'
VALIDATION = ('val_batch/loss', 'val/loss')  # preferred first
BASELINE_SCHEME = 'none'

# Fig. 6 (docs/method.md, "Reference numbers from the paper"; the authors' results/iclr/plot.py).
PAPER = {
    'pmnist': dict(
        source='Cooijmans et al. 2016, Fig. 6, pMNIST panels',
        metric='validation cross-entropy (nats), batch statistics',
        valid_ce={'0.1': {'10000': 0.34, '50000': 0.21}, '0.3': {'10000': 0.42, '50000': 0.23},
                  '0.5': {'10000': 0.55, '50000': 0.27}, '0.7': {'10000': 1.19, '50000': 0.31},
                  '1': {'10000': 2.26, '50000': 0.47}},
        criterion='monotone ordering: larger gamma learns slower',
        note='gamma=1.0 stays near chance (about 2.2 nats) until about 25k steps'),
    'ptb_char': dict(
        source='Cooijmans et al. 2016, Fig. 6, PTB panels',
        metric='validation cross-entropy (nats), batch statistics',
        valid_min_nats=[1.016, 1.018],
        criterion='curves nearly identical for every gamma (validation minimum about '
                  '1.016-1.018 nats)',
        note=('the authors\' plot divides the steps instead of the losses by ln 2: its panels '
              'show nats labelled "bits per character" against steps / ln 2')),
}


# --- reading a sweep -------------------------------------------------------------------------

def baseline() -> str:
  """The baseline's key: the registered label of the un-normalized LSTM ('LSTM')."""
  return norms.NORMS[BASELINE_SCHEME].label


def run_key(run: Run) -> str:
  """The baseline's label ('LSTM'), else the initial gamma as text ('0.3'), prefixed by the
  scheme's label for schemes other than BN-LSTM ('LN-LSTM 1')."""
  if run.scheme == BASELINE_SCHEME:
    return baseline()
  if run.gamma is None:
    raise ValueError(f'{run.path}/config.json has no model.norm.gamma_init')
  key = f'{run.gamma:g}'
  return key if run.scheme in (None, 'batch') else f'{run.model_label} {key}'


def load_sweep(root: str) -> list[dict]:
  """The runs under `root` that have logged metrics, sorted: the baseline, then by gamma. Each
  is {'key', 'run'} (a normrnn.rundir.Run)."""
  runs = [dict(key=run_key(run), run=run) for run in find_runs(root) if run.records]
  if not runs:
    raise FileNotFoundError(f'no run directories (subdirectories with metrics.jsonl) in {root}; '
                            'pass the --workdir of scripts/sweep.py')
  seen = {}
  for entry in runs:  # two runs with one gamma (e.g. two seeds): keep both, named apart
    seen[entry['key']] = seen.get(entry['key'], 0) + 1
    if seen[entry['key']] > 1:
      entry['key'] = f'{entry["key"]} ({entry["run"].name})'
  return sorted(runs, key=_order)


def _order(entry: dict):
  return (entry['run'].scheme != BASELINE_SCHEME, entry['run'].gamma or 0.0, entry['key'])


def series(records, metric: str) -> tuple[list[int], list]:
  """(steps, values) of every record holding `metric`; non-finite values become None."""
  steps, values = [], []
  for record in records:
    if metric in record:
      value = record[metric]
      steps.append(record['step'])
      values.append(value if isinstance(value, (int, float)) and math.isfinite(value) else None)
  return steps, values


def validation_metric(records) -> str | None:
  """val_batch/loss if the run logged it (batch statistics, the paper's mode), else val/loss."""
  for metric in VALIDATION:
    if any(metric in r for r in records):
      return metric
  return None


# --- summaries -------------------------------------------------------------------------------

def _values_upto(steps, values, last: int) -> list[tuple[int, float]]:
  return [(s, v) for s, v in zip(steps, values) if v is not None and s <= last]


def summarize(root: str, runs) -> dict:
  """The JSON entry of one sweep: curves, final/best numbers, ordering verdict, paper values."""
  base = baseline()
  tasks = sorted({r['run'].task or '?' for r in runs})
  task = tasks[0] if len(tasks) == 1 else '+'.join(tasks)
  entry = dict(task=task, root=root, runs={r['key']: r['run'].path for r in runs},
               gammas=[r['run'].gamma for r in runs if r['key'] != base],
               baseline=base if any(r['key'] == base for r in runs) else None,
               validation_metric={}, step={}, final={})
  for run in runs:
    val = validation_metric(run['run'].records)
    entry['validation_metric'][run['key']] = val
    for metric in (TRAIN, *VALIDATION):  # every loss the run logged; `val` is the one plotted
      steps, values = series(run['run'].records, metric)
      if not steps:
        continue
      entry.setdefault(metric, {})[run['key']] = values
      entry['step'].setdefault(metric, {})[run['key']] = steps
  gamma_runs = [r for r in runs if r['key'] != base]
  entry['compare_step'] = _common_step(entry, gamma_runs)
  for run in runs:
    entry['final'][run['key']] = _final(entry, run, entry['compare_step'])
  entry['ordering'] = ordering(entry, [r['key'] for r in gamma_runs])
  entry['paper'] = PAPER.get(task)
  return entry


def _common_step(entry: dict, gamma_runs) -> int | None:
  """The last validation step that every gamma run reached (a fair point to compare at)."""
  lasts = []
  for run in gamma_runs:
    metric = entry['validation_metric'][run['key']]
    steps = entry['step'].get(metric, {}).get(run['key']) if metric else None
    if not steps:
      return None
    lasts.append(max(steps))
  return min(lasts) if lasts else None


def _final(entry: dict, run: dict, compare_step: int | None) -> dict:
  """Per run: last train/loss, validation loss at compare_step, best and mean up to it."""
  out = dict(finished=run['run'].finished)
  steps = entry['step'].get(TRAIN, {}).get(run['key'], [])
  values = entry.get(TRAIN, {}).get(run['key'], [])
  points = [(s, v) for s, v in zip(steps, values) if v is not None]
  if points:
    out[TRAIN] = points[-1][1]
    out['train_last_step'] = points[-1][0]
  metric = entry['validation_metric'][run['key']]
  if metric is None:
    return out
  steps, values = entry['step'][metric][run['key']], entry[metric][run['key']]
  last = compare_step if compare_step is not None else max(steps)
  points = _values_upto(steps, values, last)
  if not points:
    return out
  best_step, best = min(points, key=lambda p: p[1])
  out.update({'validation_metric': metric, 'step': points[-1][0], metric: points[-1][1],
              f'{metric}_best': best, f'{metric}_best_step': best_step,
              f'{metric}_mean': sum(v for _, v in points) / len(points),
              f'{metric}_last': [v for v in values if v is not None][-1],
              'last_step': max(steps)})
  return out


def _increasing(values) -> bool:
  return all(a <= b for a, b in zip(values, values[1:]))


def ordering(entry: dict, keys) -> dict:
  """Does the validation loss increase with gamma (larger gamma slower, the paper's pMNIST
  criterion)? At the common step, for the best value and for the mean over evaluations (an
  area-under-curve measure of speed), and at every evaluation step all gamma runs share."""
  finals = [entry['final'][k] for k in keys]
  metrics = [f.get('validation_metric') for f in finals]
  if len(keys) < 2 or None in metrics:
    return dict(keys=list(keys), verdict='fewer than two gamma runs with validation losses')
  at = [f[m] for f, m in zip(finals, metrics)]
  best = [f[f'{m}_best'] for f, m in zip(finals, metrics)]
  mean = [f[f'{m}_mean'] for f, m in zip(finals, metrics)]
  shared = set.intersection(*(set(entry['step'][m][k]) for k, m in zip(keys, metrics)))
  per_step = {}
  for step in sorted(shared):
    values = [dict(zip(entry['step'][m][k], entry[m][k]))[step] for k, m in zip(keys, metrics)]
    if None not in values:
      per_step[str(step)] = _increasing(values)
  out = dict(keys=list(keys), compare_step=entry['compare_step'],
             at_compare_step=_increasing(at), best=_increasing(best), mean=_increasing(mean),
             per_step=per_step,
             monotone_steps=f'{sum(per_step.values())} of {len(per_step)}',
             spread_best=max(best) - min(best))
  if out['at_compare_step'] and out['mean']:
    out['verdict'] = 'monotone: larger gamma is slower (at the common step and on average)'
  elif out['at_compare_step'] or out['mean']:
    out['verdict'] = ('partly monotone: ' + ('at the common step' if out['at_compare_step']
                                             else 'on average over the evaluations') + ' only')
  else:
    out['verdict'] = 'not monotone in gamma'
  return out


# --- output ----------------------------------------------------------------------------------

def _fmt(value, digits=4) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def _paper_cell(paper: dict | None, key: str) -> str:
  if not paper or 'valid_ce' not in paper:
    return '-'
  values = paper['valid_ce'].get(key)
  return f'{values["10000"]:.2f} / {values["50000"]:.2f}' if values else '-'


def markdown(entry: dict) -> str:
  step = entry['compare_step']
  lines = [f'## {entry["task"]}: {entry["root"]}', '',
           f'| gamma | validation metric | val loss at step {step} | best (step) | mean over '
           'evaluations | last train/loss | finished | paper valid CE at 10k / 50k |',
           '|---|---|---|---|---|---|---|---|']
  for key, final in entry['final'].items():
    m = final.get('validation_metric')
    best = (f'{_fmt(final.get(f"{m}_best"))} ({final.get(f"{m}_best_step")})' if m else '-')
    lines.append(f'| {key} | {m or "-"} | {_fmt(final.get(m)) if m else "-"} | {best} | '
                 f'{_fmt(final.get(f"{m}_mean")) if m else "-"} | {_fmt(final.get(TRAIN))} | '
                 f'{"yes" if final["finished"] else "no"} | {_paper_cell(entry["paper"], key)} |')
  o = entry['ordering']
  lines.append('')
  if 'at_compare_step' in o:
    yes = {True: 'yes', False: 'no'}
    lines.append(f'Validation loss increases with gamma (larger gamma slower): at step {step}: '
                 f'{yes[o["at_compare_step"]]}; best: {yes[o["best"]]}; mean over evaluations: '
                 f'{yes[o["mean"]]}; at {o["monotone_steps"]} shared evaluation steps. '
                 f'Spread of the best values: {o["spread_best"]:.4f} nats.')
  lines.append(f'Verdict: {o["verdict"]}.')
  if entry['paper']:
    lines.append(f'Paper ({entry["paper"]["source"]}): {entry["paper"]["criterion"]}.')
  else:
    lines.append('Paper: Fig. 6 has pMNIST and PTB panels only; no paper values for this task.')
  return '\n'.join(lines) + '\n'


def _color(entry: dict, key: str):
  if key == entry['baseline']:
    return 'black'
  keys = [k for k in entry['final'] if k != entry['baseline']]
  return plt.cm.viridis(keys.index(key) / max(len(keys) - 1, 1) * 0.9)


def _label(entry: dict, key: str) -> str:
  return f'{key} (baseline)' if key == entry['baseline'] else f'gamma = {key}'


def plot(entries, path: str) -> None:
  """Rows = sweeps, columns = train/loss and validation loss vs step."""
  fig, axes = plt.subplots(len(entries), 2, figsize=(11, 3.8 * len(entries)), squeeze=False)
  for (ax_train, ax_val), entry in zip(axes, entries):
    for key in entry['final']:
      style = dict(color=_color(entry, key), ls='--' if key == entry['baseline'] else '-',
                   label=_label(entry, key))
      for ax, metric in ((ax_train, TRAIN), (ax_val, entry['validation_metric'][key])):
        values = entry.get(metric, {}).get(key) if metric else None
        if values:
          points = [(s, v) for s, v in zip(entry['step'][metric][key], values) if v is not None]
          if points:
            ax.plot(*zip(*points), **style)
    ax_train.set_title(f'{entry["task"]}: training loss (train/loss)')
    ax_val.set_title(f'{entry["task"]}: validation loss\n(val_batch/loss, batch statistics, '
                     'where logged; else val/loss)', fontsize=10)
    for ax in (ax_train, ax_val):
      ax.set_xlabel('training step')
      ax.set_ylabel('cross-entropy (nats)')
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def gamma_sensitivity(roots, out: str) -> dict:
  """Reads the sweeps, writes the PNG and the JSON into `out`; returns the JSON object."""
  entries = [summarize(root, load_sweep(root)) for root in roots]
  os.makedirs(out, exist_ok=True)
  plot(entries, os.path.join(out, 'gamma_sensitivity.png'))
  result = finite_or_none(dict(tasks=entries, command=shlex.join(sys.argv)))
  with open(os.path.join(out, 'gamma_sensitivity.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2, allow_nan=False)
    f.write('\n')
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('roots', nargs='+', metavar='ROOT',
                      help='workdir of a gamma sweep (scripts/sweep.py --workdir)')
  parser.add_argument('--out', required=True, help='output directory')
  args = parser.parse_args(argv)
  result = gamma_sensitivity(args.roots, args.out)
  for entry in result['tasks']:
    print(markdown(entry))
  print(f'wrote {os.path.join(args.out, "gamma_sensitivity.png")} and '
        f'{os.path.join(args.out, "gamma_sensitivity.json")}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
