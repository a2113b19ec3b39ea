"""The BN debate on PTB: depth 1, 3, 5 x {no BN, input-only BN, BN-LSTM gamma 0.1, gamma 1.0}.

Reads the run directories of the sweep of configs/ptb_depth.py:

  python scripts/sweep.py --config configs/ptb_depth.py --workdir runs/depth --parallel 1
  python experiments/depth_sweep.py runs/depth --out experiments/results/depth_sweep

Every run directory under ROOT (`normrnn.rundir.find_runs`) is placed in the grid by its
config.json: the depth is `model.layers`, the variant is `model.norm.name` with
`model.norm.gamma_init` (configs/ptb_depth.py, VARIANTS). A cell without a run is listed as
missing; a run that has not finished (`normrnn.launch.status`: incomplete, running, failed) keeps
its validation curve (dashed) but has no test number and is left out of the verdicts. Runs that
match no cell are listed and left out.

Numbers: validation bits per character (`val/bpc`, population statistics, every evaluation) and
the final test bpc of the selected model: `test_stream/bpc` (the test split as one batch-1
stream, the paper's evaluation) when every finished run has it, else `test/bpc` (length-T
segments); the JSON says which.

Writes DIR/depth_sweep.png (one panel per depth, the validation bpc curves of the four variants,
one color per variant in every panel), DIR/depth_sweep.json and DIR/depth_sweep.md (a depth x
variant table of final test bpc and one of best validation bpc, the missing cells, and one verdict
per claim), and prints the markdown. The claims, each judged on final test bpc (and, as a
check, on best validation bpc), lower is better:
  Laurent et al.: at depth 5, input-only BN beats no BN and BN-LSTM with gamma 1.0 is worse than
    no BN.
  Deep Speech 2: input-only BN's gain over no BN (no BN minus input-only BN) grows with depth.
  Cooijmans et al.: BN-LSTM with gamma 0.1 beats both BN-LSTM with gamma 1.0 and no BN, at every
    depth.
One seed per cell: a difference of a few thousandths of a bit is within run-to-run noise, which
the verdicts do not model; they print the differences.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from normrnn import launch
from normrnn.config import load_config_module
from normrnn.jsonio import finite_or_none
from normrnn.plots import run_styles
from normrnn.rundir import find_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = load_config_module(os.path.join(REPO, 'configs', 'ptb_depth.py'))
LAYERS = SWEEP.LAYERS
VARIANTS = SWEEP.VARIANTS  # key -> (model.norm.name, model.norm.gamma_init or None)
LABELS = {'none': 'no BN', 'batch_input': 'input-only BN (gamma 0.1)',
          'batch_g0.1': 'BN-LSTM, gamma 0.1', 'batch_g1.0': 'BN-LSTM, gamma 1.0'}
VALIDATION = 'val/bpc'
TEST_METRICS = ('test_stream/bpc', 'test/bpc')  # preferred first
# Config fields that must agree between points for "the same budget per run".
BUDGET_KEYS = ('model.hidden', 'data.batch_size', 'data.seq_len', 'data.name',
               'train.num_steps', 'optimizer.learning_rate', 'seed', 'eval.select_metric')
CLAIMS = {
    'laurent': 'Laurent et al.: at depth 5, input-only BN beats no BN and BN-LSTM with gamma 1.0 '
               'is worse than no BN',
    'deep_speech_2': "Deep Speech 2: input-only BN's gain over no BN grows with depth",
    'cooijmans': 'Cooijmans et al.: BN-LSTM with gamma 0.1 beats gamma 1.0 and no BN at every '
                 'depth',
}


# --- reading the sweep ---------------------------------------------------------------------------

def variant_of(run) -> str | None:
  """The VARIANTS key of a run's config, or None if it matches none of them."""
  for key, (name, gamma) in VARIANTS.items():
    if run.scheme != name:
      continue
    if gamma is None or (run.gamma is not None and math.isclose(run.gamma, gamma)):
      return key
  return None


def _series(run, metric: str) -> tuple[list[int], list]:
  """(steps, values) of `metric`; non-finite values become None."""
  steps, values = [], []
  for record in run.records:
    if metric in record:
      value = record[metric]
      steps.append(record['step'])
      values.append(value if isinstance(value, (int, float)) and math.isfinite(value) else None)
  return steps, values


def cell_entry(run) -> dict:
  """What the figure, the tables and the verdicts need of one run."""
  steps, values = _series(run, VALIDATION)
  points = [(s, v) for s, v in zip(steps, values) if v is not None]
  best_step, best = min(points, key=lambda p: p[1]) if points else (None, None)
  entry = dict(run=run.path, name=run.name, status=launch.status(run.path),
               finished=run.finished, last_step=run.last_step, num_steps=run.num_steps,
               step=steps, values=values, best_val_bpc=best, best_val_step=best_step,
               selected_step=(run.best or {}).get('step'))
  for key in TEST_METRICS:
    entry[key] = run.final(key)
  return entry


def read_sweep(root: str) -> dict:
  """{'cells': {depth: {variant: entry}}, 'missing', 'duplicates', 'other_runs',
  'budget_differs'}."""
  cells = {layers: {} for layers in LAYERS}
  duplicates, other = [], []
  for run in find_runs(root):
    layers, variant = run.lookup('model.layers'), variant_of(run)
    if layers not in cells or variant is None:
      other.append(f'{run.name} (layers={layers}, norm={run.scheme}, gamma={run.gamma})')
      continue
    entry = cell_entry(run)
    entry['budget'] = {key: run.lookup(key) for key in BUDGET_KEYS}
    held = cells[layers].get(variant)
    if held is not None:  # e.g. a rerun under another name: keep the finished one, else the first
      keep, drop = (entry, held) if entry['finished'] and not held['finished'] else (held, entry)
      duplicates.append(f'depth {layers}, {LABELS[variant]}: {drop["name"]} left out '
                        f'(using {keep["name"]})')
      entry = keep
    cells[layers][variant] = entry
  missing = [f'depth {layers}, {LABELS[variant]}: '
             + ('missing' if variant not in cells[layers] else cells[layers][variant]['status'])
             for layers in LAYERS for variant in VARIANTS
             if variant not in cells[layers] or not cells[layers][variant]['finished']]
  budget = {}  # over the runs in the grid (a left-out copy does not count)
  for row in cells.values():
    for entry in row.values():
      for key, value in entry['budget'].items():
        budget.setdefault(key, set()).add(json.dumps(value))
  differs = {key: sorted(values) for key, values in budget.items() if len(values) > 1}
  return dict(cells=cells, missing=missing, duplicates=duplicates, other_runs=other,
              budget_differs=differs)


def pick_test_metric(cells) -> str:
  """test_stream/bpc if every finished run reported it, else test/bpc."""
  finished = [e for row in cells.values() for e in row.values() if e['finished']]
  for key in TEST_METRICS:
    if finished and all(e.get(key) is not None for e in finished):
      return key
  return TEST_METRICS[-1]


# --- the claims ----------------------------------------------------------------------------------

def _value(cells, layers: int, variant: str, measure: str):
  """A finished run's number; an unfinished run has not had the budget, so it is not judged."""
  entry = cells.get(layers, {}).get(variant)
  if entry is None or not entry.get('finished', True):
    return None
  return entry.get(measure)


def _missing(cells, pairs, measure: str) -> list[str]:
  return [f'depth {layers} {LABELS[variant]}' for layers, variant in pairs
          if _value(cells, layers, variant, measure) is None]


def _diff(a, b) -> str:
  return f'{a - b:+.4f}'


def _depths(depths) -> str:
  return ('depth ' if len(depths) == 1 else 'depths ') + ', '.join(map(str, depths))


def _judged_on(depths) -> str:
  """'' when every depth could be judged, else which ones were."""
  return '' if len(depths) == len(LAYERS) else f' (judged on {_depths(list(depths))} only)'


def laurent(cells, measure: str) -> dict:
  need = [(5, 'none'), (5, 'batch_input'), (5, 'batch_g1.0')]
  gone = _missing(cells, need, measure)
  if gone:
    return dict(holds=None, verdict='undecided', details=f'no value for {", ".join(gone)}')
  none, vertical, horizontal = (_value(cells, *p, measure) for p in need)
  parts = {'input-only BN beats no BN': vertical < none,
           'BN-LSTM gamma 1.0 is worse than no BN': horizontal > none}
  held = [name for name, ok in parts.items() if ok]
  verdict = ('holds' if len(held) == 2 else 'does not hold' if not held
             else f'holds in part (only: {held[0]})')
  details = (f'depth 5: no BN {none:.4f}, input-only BN {vertical:.4f} ({_diff(vertical, none)}), '
             f'BN-LSTM gamma 1.0 {horizontal:.4f} ({_diff(horizontal, none)})')
  return dict(holds=len(held) == 2, verdict=verdict, details=details, parts=parts)


def deep_speech_2(cells, measure: str) -> dict:
  gains = {}
  for layers in LAYERS:
    none, vertical = (_value(cells, layers, v, measure) for v in ('none', 'batch_input'))
    if none is not None and vertical is not None:
      gains[layers] = none - vertical
  if len(gains) < 2:
    gone = _missing(cells, [(layers, v) for layers in LAYERS for v in ('none', 'batch_input')],
                    measure)
    return dict(holds=None, verdict='undecided', gains=gains,
                details=f'needs two depths with both runs; no value for {", ".join(gone)}')
  depths = sorted(gains)
  grows = all(gains[a] < gains[b] for a, b in zip(depths, depths[1:]))
  details = ('gain of input-only BN over no BN (no BN minus input-only BN): '
             + ', '.join(f'depth {layers} {gains[layers]:+.4f}' for layers in depths))
  only_deep = gains[depths[0]] <= 0 < gains[depths[-1]]
  details += (f'; helps only when deep (no gain at depth {depths[0]}, a gain at depth '
              f'{depths[-1]}): {"yes" if only_deep else "no"}')
  verdict = ('holds' if grows else 'does not hold') + _judged_on(depths)
  return dict(holds=grows, verdict=verdict, details=details, gains=gains, only_deep=only_deep)


def cooijmans(cells, measure: str) -> dict:
  per_depth, lines = {}, []
  for layers in LAYERS:
    small, large, none = (_value(cells, layers, v, measure)
                          for v in ('batch_g0.1', 'batch_g1.0', 'none'))
    if None in (small, large, none):
      continue
    per_depth[layers] = small < large and small < none
    lines.append(f'depth {layers}: gamma 0.1 {small:.4f}, gamma 1.0 {large:.4f}, '
                 f'no BN {none:.4f}')
  if not per_depth:
    gone = _missing(cells, [(layers, v) for layers in LAYERS
                            for v in ('batch_g0.1', 'batch_g1.0', 'none')], measure)
    return dict(holds=None, verdict='undecided', per_depth=per_depth,
                details=f'no depth with all three runs; no value for {", ".join(gone)}')
  held = [layers for layers, ok in per_depth.items() if ok]
  if len(held) == len(per_depth):
    verdict = 'holds'
  elif held:
    verdict = f'holds in part (at {_depths(held)} only)'
  else:
    verdict = 'does not hold'
  verdict += _judged_on(per_depth)
  return dict(holds=len(held) == len(per_depth), verdict=verdict, per_depth=per_depth,
              details='; '.join(lines))


JUDGES = {'laurent': laurent, 'deep_speech_2': deep_speech_2, 'cooijmans': cooijmans}


def judge(cells, measure: str) -> dict:
  return {name: dict(claim=CLAIMS[name], **fn(cells, measure)) for name, fn in JUDGES.items()}


# --- output --------------------------------------------------------------------------------------

def _cell(entry, key: str) -> str:
  if entry is None:
    return 'missing'
  value = entry.get(key)
  if value is None:
    return 'unfinished' if not entry['finished'] else '-'
  text = f'{value:.4f}'
  if key == 'best_val_bpc':
    text += f' ({entry["best_val_step"]})'
    if not entry['finished']:
      text += f', unfinished at step {entry["last_step"]}'
  return text


def markdown(result: dict) -> str:
  cells, metric = result['cells'], result['test_metric']
  header = '| depth | ' + ' | '.join(LABELS[v] for v in VARIANTS) + ' |'
  rule = '|---' * (len(VARIANTS) + 1) + '|'
  lines = [f'Depth sweep {result["root"]}: bits per character, lower is better.', '',
           f'Final test bpc ({metric}, the model selected on validation):', '', header, rule]
  for layers in LAYERS:
    lines.append(f'| {layers} | ' + ' | '.join(_cell(cells[layers].get(v), 'test')
                                              for v in VARIANTS) + ' |')
  lines += ['', f'Best validation bpc ({VALIDATION}, population statistics; its step):', '',
            header, rule]
  for layers in LAYERS:
    lines.append(f'| {layers} | ' + ' | '.join(_cell(cells[layers].get(v), 'best_val_bpc')
                                              for v in VARIANTS) + ' |')
  lines.append('')
  if result['missing']:
    lines.append('Missing or unfinished: ' + '; '.join(result['missing']) + '.')
  for key, text in (('duplicates', 'Duplicates'), ('other_runs', 'Not in the grid')):
    if result[key]:
      lines.append(f'{text}: ' + '; '.join(result[key]) + '.')
  if result['budget_differs']:
    lines.append('WARNING, the runs do not share one budget: ' + '; '.join(
        f'{k} = {", ".join(v)}' for k, v in result['budget_differs'].items()) + '.')
  lines += ['', 'Verdicts (final test bpc; one seed per cell, so differences of a few '
            'thousandths are noise):', '']
  for name, claim in result['claims'].items():
    check = result['claims_on_best_val'][name]
    lines.append(f'- {claim["claim"]}: **{claim["verdict"]}**. {claim["details"]}. '
                 f'On best validation bpc: {check["verdict"]}.')
  return '\n'.join(lines) + '\n'


def _ylim(curves):
  """Limits that leave out the first quarter of each curve when the curves are long enough
  (the first evaluations sit far above the rest and would flatten the differences)."""
  kept = []
  for steps, values in curves:
    points = [(s, v) for s, v in zip(steps, values) if v is not None]
    if len(points) >= 4:
      points = [(s, v) for s, v in points if s >= 0.25 * points[-1][0]]
    kept += [v for _, v in points]
  if not kept:
    return None
  low, high = min(kept), max(kept)
  pad = 0.05 * (high - low) if high > low else 0.05 * abs(high) + 1e-3
  return low - pad, high + pad


def plot(result: dict, path: str) -> None:
  """One panel per depth, one line per variant; the same color for a variant in every panel,
  dashed while a run is unfinished; a shared y axis so depths compare too."""
  styles = dict(zip(VARIANTS, run_styles(list(VARIANTS))))
  fig = Figure(figsize=(5.0 * len(LAYERS), 4.4))
  axes = fig.subplots(1, len(LAYERS), sharex=True, sharey=True, squeeze=False)[0]
  curves = []
  for ax, layers in zip(axes, LAYERS):
    row, absent = result['cells'][layers], []
    for variant in VARIANTS:
      entry = row.get(variant)
      if entry is None:
        absent.append(LABELS[variant])
        continue
      points = [(s, v) for s, v in zip(entry['step'], entry['values']) if v is not None]
      if not points:
        absent.append(f'{LABELS[variant]} (no evaluation yet)')
        continue
      curves.append((entry['step'], entry['values']))
      label = LABELS[variant]
      style = dict(styles[variant])
      if not entry['finished']:
        label += f' (unfinished, step {entry["last_step"]})'
        style['linestyle'] = '--'
      ax.plot(*zip(*points), marker='.' if len(points) < 30 else None, label=label, **style)
    ax.set_title(f'{layers} layer{"s" if layers > 1 else ""}')
    ax.set_xlabel('training step')
    ax.grid(alpha=0.3)
    if absent:
      ax.text(0.02, 0.02, 'missing:\n' + '\n'.join(f'  {a}' for a in absent),
              transform=ax.transAxes, fontsize=8, va='bottom', color='0.35')
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8, loc='best')
  axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
  axes[0].set_ylabel(f'validation bits per character ({VALIDATION})')
  limits = _ylim(curves)
  if limits is not None:
    axes[0].set_ylim(*limits)
  fig.suptitle(f'PTB (ptb_char_valid), depth x BN site: {result["root"]}', fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def depth_sweep(root: str, out: str) -> dict:
  """Reads the sweep under `root`, writes the PNG, JSON and markdown into `out`; returns the
  JSON object (its 'markdown' holds the text written to depth_sweep.md)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'{root} is not a directory: pass the --workdir of scripts/sweep.py')
  result = dict(root=root, **read_sweep(root))
  cells = result['cells']
  metric = result['test_metric'] = pick_test_metric(cells)
  for row in cells.values():
    for entry in row.values():
      entry['test'] = entry.get(metric)
  result['validation_metric'] = VALIDATION
  result['variants'] = {k: dict(label=LABELS[k], norm=n, gamma=g)
                        for k, (n, g) in VARIANTS.items()}
  result['claims'] = judge(cells, 'test')
  result['claims_on_best_val'] = judge(cells, 'best_val_bpc')
  result['command'] = shlex.join(sys.argv)
  os.makedirs(out, exist_ok=True)
  plot(result, os.path.join(out, 'depth_sweep.png'))
  text = markdown(result)
  with open(os.path.join(out, 'depth_sweep.md'), 'w', encoding='utf-8') as f:
    f.write(text)
  result = finite_or_none(json.loads(json.dumps(result, default=str)))
  with open(os.path.join(out, 'depth_sweep.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2, allow_nan=False)
    f.write('\n')
  result['markdown'] = text
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('root', metavar='ROOT', help='workdir of the sweep (scripts/sweep.py)')
  parser.add_argument('--out', required=True, help='output directory')
  args = parser.parse_args(argv)
  try:
    result = depth_sweep(args.root, args.out)
  except FileNotFoundError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  print(result['markdown'])
  names = [os.path.join(args.out, f'depth_sweep.{ext}') for ext in ('png', 'json', 'md')]
  print(f'wrote {", ".join(names)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
