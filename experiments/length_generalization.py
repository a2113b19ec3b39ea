"""Bits per character vs evaluation segment length for trained character LMs (Cooijmans et al.
2016, Fig. 2b): does BN-LSTM generalize beyond its training length T_max?

  python experiments/length_generalization.py --runs LSTM=runs/ptb_lstm BN-LSTM=runs/ptb_bn \
      --out experiments/results/length_generalization [--lengths 100,200,...,1000]

Every run workdir (written by `normrnn.train` for ptb_char / ptb_char_valid / text8) is
restored with `normrnn.rundir.restore(workdir, which='best')`: its Experiment (config, task,
model; `--data-dir` replaces config.data.dir) and the BEST parameters (the model selected on
validation, as the paper; the latest checkpoint, with a warning, if there is no best/). Then the
test-split BPC on non-overlapping segments of each length (`task.eval_batches('test',
length=L)`, batch `--batch-size`, default config.data.eval_batch_size; the paper: 100) with
  * population statistics (train=False), re-estimated first with `Experiment.reestimate` (the
    plain average of per-batch statistics over config.eval.reestimate_batches training batches,
    which is how the trainer's test numbers are made by default); steps beyond T_max use the last
    trained step's statistics;
  * for schemes with batch statistics (`Scheme.batch_statistics`), also batch statistics
    (train=True, the statistics of the current batch at every step, also beyond T_max; the
    updated tables are discarded).
Curve labels: LABEL for schemes without batch statistics, else 'LABEL, population stats' and
'LABEL, batch stats'. Writes length_generalization.json ({"lengths", "bpc": {label: [...]},
"paper": the Fig. 2b values, ...}) and length_generalization.png into --out. The paper's values
are those of docs/method.md, "Reference numbers from the paper".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import time

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from tqdm import tqdm  # noqa: E402

from normrnn import models  # noqa: E402
from normrnn.rundir import restore  # noqa: E402

LENGTHS = tuple(range(100, 1001, 100))
# Fig. 2b: mean test BPC vs evaluation length (PTB, batch 100, paper-size models); docs/method.md,
# "Reference numbers from the paper".
PAPER = {
    'lengths': list(LENGTHS),
    'bpc': {
        'LSTM': [1.449, 1.415, 1.404, 1.397, 1.395, 1.395, 1.387, 1.393, 1.390, 1.391],
        'BN-LSTM, population stats': [1.398, 1.360, 1.348, 1.340, 1.338, 1.338, 1.330, 1.335,
                                      1.332, 1.333],
        'BN-LSTM, batch stats': [1.420, 1.387, 1.372, 1.383, 1.361, 1.367, 1.360, 1.362, 1.355,
                                 1.362],
    },
}


def long_tables(batch_stats, length: int):
  """Per-step tables [T_max, F] padded to [length, F] by repeating the last row (what the scan
  does beyond T_max anyway); shared [F] tables unchanged."""
  def pad(v):
    if v.ndim == 2 and v.shape[0] < length:
      return jnp.pad(v, ((0, length - v.shape[0]), (0, 0)), mode='edge')
    return v
  return jax.tree.map(pad, batch_stats)


def batch_stat_model(config, vocab_size: int, length: int):
  """The run's model with per-step tables of at least `length` rows. Batch statistics need no
  table, but the scan refuses training-mode sequences longer than max_time_steps; the
  parameters do not depend on max_time_steps."""
  model_cfg = ml_collections.ConfigDict(config.model.to_dict())
  model_cfg.norm.max_time_steps = max(model_cfg.norm.max_time_steps, length)
  return models.build_model(model_cfg, kind='lm', num_classes=vocab_size)


def evaluate_run(label: str, workdir: str, lengths, *, data_dir=None, batch_size=None,
                 progress: bool = True) -> dict:
  """{curve label: [bpc per length]} and provenance for one run workdir."""
  exp, state, step = restore(workdir, which='best', data_dir=data_dir)
  config, task = exp.config, exp.task
  if task.kind != 'lm':
    raise ValueError(f'{workdir} is a {task.kind} run ({config.data.name}); length '
                     'generalization needs a character language model')
  stats = exp.reestimate(state.params, state.batch_stats)
  runs = [('population', exp, stats)]
  scheme = models.spec_from_config(config.model).scheme  # per-site composites included
  if scheme.batch_statistics:
    steps = max(lengths) - 1
    long_exp = dataclasses.replace(exp, model=batch_stat_model(config, task.vocab_size, steps))
    runs.append(('batch', long_exp, long_tables(state.batch_stats, steps)))
  names = ({'population': label} if len(runs) == 1 else
           {'population': f'{label}, population stats', 'batch': f'{label}, batch stats'})
  curves = {}
  bar = tqdm(total=len(runs) * len(lengths), desc=label, disable=not progress)
  for mode, e, batch_stats in runs:
    values = []
    for length in lengths:
      batches = task.eval_batches('test', batch_size=batch_size, length=length)
      metrics = e.evaluate(state.params, batch_stats, 'test', mode=mode, batches=batches)
      values.append(round(float(metrics['bpc']), 5))
      bar.update(1)
      bar.set_postfix_str(f'{mode} L={length}: {values[-1]:.4f}')
    curves[names[mode]] = values
  bar.close()
  info = dict(workdir=os.path.abspath(workdir), task=config.task, data=config.data.name,
              norm=config.model.norm.name, scheme=scheme.name,
              gamma_init=config.model.norm.gamma_init,
              hidden=config.model.hidden, max_time_steps=config.model.norm.max_time_steps,
              best_step=step, curves=list(curves),
              eval_batch_size=batch_size or config.data.eval_batch_size,
              popstats_reestimated=bool(jax.tree.leaves(state.batch_stats)))
  return dict(curves=curves, info=info)


def run(runs, out: str, lengths=LENGTHS, *, data_dir=None, batch_size=None,
        progress: bool = True) -> dict:
  """Evaluates every (label, workdir) of `runs`; writes the JSON and PNG into `out`."""
  t0 = time.time()
  lengths = [int(n) for n in lengths]
  if min(lengths) < 2:
    raise ValueError(f'every length must be >= 2 (one input and one target), got {lengths}')
  result = {'lengths': lengths, 'bpc': {}, 'runs': {}, 'paper': PAPER}
  for label, workdir in runs:
    r = evaluate_run(label, workdir, lengths, data_dir=data_dir, batch_size=batch_size,
                     progress=progress)
    result['bpc'].update(r['curves'])
    result['runs'][label] = r['info']
  result['notes'] = (
      'Test-split bits per character on non-overlapping segments of each length (a segment of '
      'L symbols = L - 1 predictions from h_0, c_0). Population statistics are re-estimated '
      'over training batches first; beyond T_max the last trained step\'s statistics are used. '
      'Batch statistics: the current batch\'s per-step statistics at every step. paper = Fig. '
      '2b of the paper (paper-size PTB models, batch 100; docs/method.md, "Reference numbers '
      'from the paper").')
  result['command'] = shlex.join(
      ['python', 'experiments/length_generalization.py', '--runs',
       *[f'{label}={workdir}' for label, workdir in runs], '--out', str(out), '--lengths',
       ','.join(map(str, lengths))] + (['--data-dir', str(data_dir)] if data_dir else []) +
      (['--batch-size', str(batch_size)] if batch_size else []))
  result['wall_time_s'] = round(time.time() - t0, 1)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'length_generalization.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(out, 'length_generalization.png'))
  return result


def plot(result: dict, path: str) -> None:
  """Left: these runs; right: the paper's curves (Fig. 2b)."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, lengths, curves, title in (
      (axes[0], result['lengths'], result['bpc'], 'these runs'),
      (axes[1], result['paper']['lengths'], result['paper']['bpc'], 'paper (Fig. 2b)')):
    for label, values in curves.items():
      ax.plot(lengths, values, marker='o', ms=3, label=label)
    ax.set_xlabel('evaluation segment length')
    ax.set_ylabel('test bits per character')
    ax.set_title(f'BPC vs length, {title}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_runs(items):
  """['LABEL=WORKDIR', ...] -> [(label, workdir), ...]."""
  runs = []
  for item in items:
    label, sep, workdir = item.partition('=')
    if not sep or not label or not workdir:
      raise SystemExit(f'--runs takes LABEL=WORKDIR, got {item!r}')
    runs.append((label, workdir))
  return runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', nargs='+', required=True, metavar='LABEL=WORKDIR')
  parser.add_argument('--out', required=True)
  parser.add_argument('--lengths', default=','.join(map(str, LENGTHS)),
                      help='comma-separated segment lengths')
  parser.add_argument('--data-dir', default=None, help='replaces config.data.dir of every run')
  parser.add_argument('--batch-size', type=int, default=None,
                      help='evaluation batch size (default: config.data.eval_batch_size)')
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(',')]
  result = run(parse_runs(args.runs), args.out, lengths, data_dir=args.data_dir,
               batch_size=args.batch_size)
  print('label | ' + ' | '.join(map(str, lengths)))
  for label, values in result['bpc'].items():
    print(f'{label} | ' + ' | '.join(f'{v:.3f}' for v in values))
  print(f'wrote {args.out}/length_generalization.json and length_generalization.png')


if __name__ == '__main__':
  main()
