"""One paper table per command: the paper's number beside ours, one row per scheme.

Cooijmans et al. 2016, Tables 1-3 (numbers: docs/method.md, "Reference numbers from the paper"):
collects, and with --launch trains, one run per normalization scheme.

  python experiments/reproduce.py TABLE --root runs/reproduce [--size paper|cpu|smoke] \
      [--launch] [--parallel N] [--schemes none,batch,...] [--seed 0] [--out FILE.md] \
      [--config.a.b=v ...] [--executor local|submitit_local|slurm] [--detach] \
      [--slurm_config FILE.json] [--slurm.partition=P --slurm.timeout_min=M ...]

TABLE is `smnist` (Table 1, MNIST column), `pmnist` (Table 1, pMNIST column), `ptb` (Table 2) or
`text8` (Table 3). There is one row per registered scheme of `normrnn.norms.NORMS` (default: all
of them, including schemes added with `normrnn.norms.register`), labelled with the scheme's
label and paper, each trained by

  python -m normrnn.train --config=configs/<file>.py:norm=<scheme>,size=<size>,seed=<seed> \
      --workdir=<root>/<table>_<size>/<scheme>_seed<seed> [--config.a.b=v ...]

(`ptb` uses configs/ptb_char.py). A row whose workdir holds results.json is collected. Otherwise
the row reads `missing`, `incomplete (step S of N)`, `running (pid P, ...)` or `failed (...)`
(`normrnn.launch.status`): without --launch the commands that would (re)start the missing,
incomplete and failed rows are printed; with --launch those rows are trained, N at a time
(`normrnn.launch.LocalLauncher`: output in <workdir>/train.log, SIGINT/SIGTERM stop the runs,
which checkpoint, and rerunning resumes them). `--executor submitit_local|slurm` trains them as
submitit jobs instead (`normrnn.launch_submitit`: one SLURM job array with the --slurm.*
resources, job logs in <root>/<table>_<size>/submitit/; a preempted job checkpoints and is
requeued); rows whose job is queued or running read `pending (...)` / `running (...)` and are
not submitted again, so this command without --launch is the status of the table. A run whose
config.json differs from the requested task, scheme, size, seed or --config overrides reads
`config differs` and is neither used nor relaunched: use another --root for other settings.

Writes the markdown table to stdout and to --out (default <root>/<table>_<size>/TABLE.md) and
the same rows as JSON next to it (TABLE.json). Columns: model | paper | ours | metric | data |
hardware | steps | wall time | command. Paper numbers exist for the LSTM and BN-LSTM rows only.

In-process use (e.g. a notebook, or a test that registers its own scheme):
  rows = make_rows('smnist', 'runs/reproduce', 'smoke')    # every scheme registered now
  trainer.train_and_evaluate(rows[0]['job'].config(), rows[0]['workdir'])
  print(markdown('smnist', 'smoke', [collect(r, 'smnist', 'smoke', 0, []) for r in rows]))
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from normrnn import launch
from normrnn import launch_submitit
from normrnn import norms
from normrnn.config import ConfigError, parse_args_and_overrides
from normrnn.jsonio import finite_or_none
from normrnn.reader import variant_label
from normrnn.rundir import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ('paper', 'cpu', 'smoke')

# The paper's numbers (docs/method.md, "Reference numbers from the paper"). `rows` are the
# paper's own LSTM (`none`) and BN-LSTM (`batch`); `context` are the other rows of the table.
PAPER = {
    'smnist': dict(
        source='Cooijmans et al. 2016, Table 1, MNIST column',
        rows={'none': 98.9, 'batch': 99.0},
        context=[('TANH-RNN (Le et al. 2015)', 35.0), ('iRNN (Le et al. 2015)', 97.0),
                 ('uRNN (Arjovsky et al. 2015)', 95.1), ('sTANH-RNN (Zhang et al. 2016)', 98.1)]),
    'pmnist': dict(
        source='Cooijmans et al. 2016, Table 1, pMNIST column',
        rows={'none': 90.2, 'batch': 95.4},
        context=[('TANH-RNN (Le et al. 2015)', 35.0), ('iRNN (Le et al. 2015)', 82.0),
                 ('uRNN (Arjovsky et al. 2015)', 91.4), ('sTANH-RNN (Zhang et al. 2016)', 94.0)]),
    'ptb': dict(
        source='Cooijmans et al. 2016, Table 2, PTB test bpc',
        rows={'none': 1.38, 'batch': 1.32},
        context=[('LSTM (Graves 2013), different split', 1.26), ('HF-MRNN (Mikolov 2012)', 1.41),
                 ('Norm-stabilized LSTM (Krueger & Memisevic 2016)', 1.39),
                 ('ME n-gram (Mikolov 2012)', 1.37), ('Zoneout (Krueger 2016)', 1.27),
                 ('HM-LSTM (Chung 2016)', 1.24), ('HyperNetworks (Ha 2016)', 1.22)]),
    'text8': dict(
        source='Cooijmans et al. 2016, Table 3, text8 test bpc',
        rows={'none': 1.43, 'batch': 1.36},
        context=[('td-LSTM (Zhang 2016)', 1.63), ('HF-MRNN (Mikolov 2012)', 1.54),
                 ('skipping RNN (Pachitariu 2013)', 1.48), ('HM-LSTM (Chung 2016)', 1.29)]),
    # Rows: Attentive Reader variants (TABLES['cnn_qa']['variants']); error rates in %.
    'cnn_qa': dict(
        source=('Cooijmans et al. 2016, Table 4 (CNN, full documents: test error %) and Fig. 3a '
                '(CNN, 4 relevant sentences: lowest validation error %)'),
        rows={'lstm_full': 45.0, 'bn_e_star2_full': 36.3, 'lstm_top4': 50.3, 'bn_top4': 49.5,
              'bn_everywhere_top4': 50.0, 'bn_e_star_top4': 47.1, 'bn_e_star2_top4': 43.9},
        context=[('Attentive Reader (Hermann et al. 2015), test', 37.0),
                 ('Attentive Reader (Hermann et al. 2015), valid', 38.4),
                 ('LSTM (Cooijmans et al.), full documents, valid', 45.5),
                 ('BN-e** (Cooijmans et al.), full documents, valid', 37.9)]),
}

# config file, the run's `task`, metric keys of results.json in order of preference (the first
# is the paper's evaluation), unit, and notes on the evaluation and on the non-paper sizes.
TABLES = {
    'smnist': dict(
        config='configs/smnist.py', task='smnist', keys=('test/acc',), percent=True,
        metric='test accuracy (%), re-estimated population statistics',
        small_data='mnist10k (the official MNIST test set split 8000/1000/1000)'),
    'pmnist': dict(
        config='configs/pmnist.py', task='pmnist', keys=('test/acc',), percent=True,
        metric='test accuracy (%), re-estimated population statistics',
        small_data='mnist10k (the official MNIST test set split 8000/1000/1000)',
        note=("Pixel order: the configs' default is a true permutation; the paper's 95.4 / 90.2 "
              "came from the authors' with-replacement index (501 distinct pixels; "
              'docs/method.md, "Tasks and data"). Add --config.data.pixel_order=with_replacement '
              '(and another --root) to run that; the data column names the order each run '
              'used.')),
    'ptb': dict(
        config='configs/ptb_char.py', task='ptb_char', keys=('test_stream/bpc', 'test/bpc'),
        percent=False,
        metric=('test bpc of the whole test split as one batch-1 sequence with re-estimated '
                'population statistics (test_stream/bpc, the paper\'s evaluation; docs/method.md, '
                '"Evaluation protocol")'),
        small_data='ptb_char_valid (the PTB validation file split 90/5/5)',
        fallback_note='length-{T} segments, not the whole stream: not comparable to the paper'),
    'text8': dict(
        config='configs/text8.py', task='text8', keys=('test/bpc',), percent=False,
        metric=('test bpc on length-180 segments with re-estimated population statistics '
                '(test/bpc); the paper does not record which evaluation gave Table 3 '
                '(docs/method.md, "Where the paper and the authors\' code disagree")'),
        small_data=("ptb_char_valid (the PTB validation file split 90/5/5): text8 is not "
                    "available offline, so these sizes check the plumbing only")),
    # Rows are config variants of one file, not schemes: `variants` maps a row name to its
    # config argument, data description and metric keys (Table 4: the test error of the model
    # selected on validation; Fig. 3a: the lowest validation error, results.json 'best').
    'cnn_qa': dict(
        config='configs/cnn_qa.py', task='cnn_qa', keys=('test/error',), percent=True,
        metric='error (%): test/error for the Table 4 rows, the lowest validation error for the '
               'Fig. 3a rows',
        small_data=('ptb_cloze (a cloze task built from the PTB validation text; '
                    'configs/ptb_cloze.py); its documents are short, so the full and top4 rows '
                    'train the same task there'),
        note=('Table 4 also gives validation errors (LSTM 45.5, BN-e** 37.9); each row\'s '
              'results.json has val_final/error. Fig. 3a minima are on the selection metric '
              '(eval.select_metric: batch statistics for the BN variants, as the authors).'),
        variants={
            f'{v}_{d}': dict(arg=f'variant={v},data={d}', data=text,
                             keys=('test/error',) if d == 'full' else ('best',))
            for d, text, names in (
                ('full', 'full documents', ('lstm', 'bn_e_star2')),
                ('top4', '4 relevant sentences',
                 ('lstm', 'bn', 'bn_everywhere', 'bn_e_star', 'bn_e_star2', 'ln')))
            for v in names}),
}
COLUMNS = ('model', 'paper', 'ours', 'metric', 'data', 'hardware', 'steps', 'wall time',
           'command')


# --- rows and their runs -------------------------------------------------------------------------

def table_dir(root: str, table: str, size: str) -> str:
  return os.path.join(root, f'{table}_{size}')


def run_dir(root: str, table: str, size: str, scheme: str, seed: int) -> str:
  """<root>/<table>_<size>/<scheme>_seed<seed>."""
  return os.path.join(table_dir(root, table, size), f'{scheme}_seed{seed}')


def default_rows(table: str) -> list[str]:
  """The row names of a table: its variants, or every scheme registered now."""
  return list(TABLES[table].get('variants') or norms.NORMS)


def config_arg(scheme: str, size: str, seed: int, table: str | None = None) -> str:
  """The config argument of a row: `norm=<scheme>`, or a variant row's own argument."""
  variant = (TABLES[table].get('variants') or {}).get(scheme) if table else None
  return f'{variant["arg"] if variant else f"norm={scheme}"},size={size},seed={seed}'


def row_job(table: str, root: str, size: str, scheme: str, seed: int, extra=()) -> launch.Job:
  """The training run of one row (`job.config()` is the config it trains)."""
  arg = config_arg(scheme, size, seed, table)
  return launch.Job(
      name=scheme, workdir=os.path.abspath(run_dir(root, table, size, scheme, seed)),
      config_spec=f'{os.path.join(ROOT, TABLES[table]["config"])}:{arg}',
      extra_flags=tuple(extra))


def model_name(scheme: str) -> str:
  """'BN-LSTM (Cooijmans et al. 2016, eqs. 6-8)': the registered scheme's label and paper."""
  declared = norms.get_scheme(scheme)
  return f'{declared.label} ({declared.paper})'


def make_rows(table: str, root: str, size: str, schemes=None, seed: int = 0,
              extra=()) -> list[dict]:
  """One row per scheme (None: every scheme registered when this is called), or per variant of a
  table whose rows are config variants (TABLES[table]['variants']), not collected."""
  rows = []
  variants = TABLES[table].get('variants') or {}
  for scheme in default_rows(table) if schemes is None else schemes:
    job = row_job(table, root, size, scheme, seed, extra)
    row = dict(scheme=scheme, paper=PAPER[table]['rows'].get(scheme), workdir=job.workdir,
               job=job, command=shlex.join(job.command(python='python', relative_to=ROOT)))
    if scheme in variants:
      config = job.config().to_dict()
      row.update(model=f'{variant_label(config)}, {variants[scheme]["data"]}',
                 keys=variants[scheme]['keys'],
                 expected={k: _lookup(config, k) for k in VARIANT_FIELDS})
    else:
      row['model'] = model_name(scheme)
    rows.append(row)
  return rows


# The config fields that tell a variant row's run from the other rows' (besides task and seed).
VARIANT_FIELDS = ('model.norm.name', 'model.norm.input', 'model.reader.everywhere',
                  'model.reader.bidirectional', 'model.reader.reverse_padding',
                  'data.relevant_sentences')


def _lookup(config: dict, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


_ABSENT = object()


def _same(value, text: str) -> bool:
  """Whether a config.json value is what the override `--config.k=text` sets."""
  if isinstance(value, bool):
    return text.strip().lower() in (('true', '1') if value else ('false', '0'))
  if isinstance(value, (int, float)):
    try:
      return float(text) == float(value)
    except ValueError:
      return False
  if isinstance(value, list):
    return launch.format_value(value) == text.replace(' ', '')
  return str(value) == text


def config_differences(run, table: str, scheme: str, size: str, seed: int, extra,
                       fields=None) -> list[str]:
  """Fields of a run's config.json that differ from what this row asks for (`fields`: a
  variant row's own config values, else model.norm.name = the row's scheme)."""
  expected = {'task': TABLES[table]['task'],
              **(fields if fields is not None else {'model.norm.name': scheme}), 'seed': seed}
  out = []
  for key, want in expected.items():
    got = run.lookup(key)
    if got != want:
      out.append(f'{key}: run {got!r}, asked {want!r}')
  tags = run.lookup('wandb.tags') or []
  if size not in tags:
    out.append(f'size: run tags {tags}, asked {size!r}')
  for item in extra:
    key, sep, text = item[len('--config.'):].partition('=')
    if not sep:
      continue
    got = run.lookup(key, _ABSENT)
    if got is _ABSENT:
      out.append(f'{key}: not in the run\'s config, asked {text!r}')
    elif not _same(got, text):
      out.append(f'{key}: run {got!r}, asked {text!r}')
  return out


# --- formatting ------------------------------------------------------------------------------

def format_wall(seconds) -> str:
  if seconds is None:
    return '-'
  if seconds < 120:
    return f'{seconds:.0f} s'
  if seconds < 7200:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.1f} h'


def format_hardware(hw: dict | None) -> str:
  if not hw:
    return '-'
  if hw.get('platform') == 'cpu':
    return f'CPU ({hw.get("cpu_count")} cores), jax {hw.get("jax")}'
  return (f'{hw.get("device_count")}x {hw.get("device_kind")} ({hw.get("platform")}), '
          f'jax {hw.get("jax")}')


def format_data(data: dict | None) -> str:
  """`mnist10k 8000/1000/1000, permuted pixels, not the paper's data` from results.json."""
  if not data:
    return '-'
  sizes = data.get('split_sizes', {})
  splits = '/'.join(str(sizes.get(s, '?')) for s in ('train', 'valid', 'test'))
  text = f'{data.get("name")} {splits}'
  if data.get('pixel_order'):
    text += f', {data["pixel_order"]} pixels'
    distinct = data.get('distinct_pixels_shown')
    if distinct is not None and distinct != data.get('n_pixels'):
      text += f' ({distinct} distinct)'
  if "NOT the paper's data" in data.get('label', ''):
    text += ", not the paper's data"
  return text


def format_number(value: float | None, percent: bool) -> str:
  if value is None:
    return '—, not in the paper'
  return f'{value:.1f}' if percent else f'{value:.2f}'


# A metric key of the tables: the lowest validation error of the run (results.json 'best', on
# the config's eval.select_metric), the figure's number for the Fig. 3a rows.
BEST = 'best'


def metric_label(table: str, key: str) -> str:
  if key == BEST:
    key = 'lowest validation error (best.value)'
  return f'{key} (%)' if TABLES[table]['percent'] else key


def _result(results: dict, key: str):
  if key == BEST:
    best = results.get('best') or {}
    return best.get('value') if str(best.get('metric', '')).endswith('/error') else None
  return (results.get('metrics') or {}).get(key)


def headline(table: str, results: dict, config: dict,
             keys=None) -> tuple[str | None, float | None, str]:
  """(metric key, value in the paper's unit, metric column text) of a finished run; `keys`: a
  row's own metric keys (default the table's)."""
  spec = TABLES[table]
  keys = spec['keys'] if keys is None else keys
  for i, key in enumerate(keys):
    value = _result(results, key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      text = metric_label(table, key)
      if i > 0:
        length = config.get('data', {}).get('seq_len', '?')
        text += ' — ' + spec['fallback_note'].format(T=length) + f' (no {keys[0]})'
      value = float(value)
      if spec['percent']:
        value *= 100
      if key == BEST:
        text += f' of {results["best"]["metric"]}'
      return key, value, text
  return None, None, f'none of {", ".join(keys)} in results.json'


# --- collecting and launching ------------------------------------------------------------------

def collect(row: dict, table: str, size: str, seed: int, extra=()) -> dict:
  """Fills the row's status, ours, data, hardware, steps and wall time from its workdir."""
  row.update(status='missing', ours=None, metric_key=None,
             metric=metric_label(table, row.get('keys', TABLES[table]['keys'])[0]),
             run_command=None,
             data=None, hardware=None, final_step=None, best_step=None, wall_time_s=None,
             results_metrics=None, last_step=None, num_steps=None, differences=[])
  state = launch.status(row['workdir'])
  try:
    run = read_run(row['workdir'])
  except FileNotFoundError:  # missing, or failed before it wrote anything
    row['status'] = state
    return row
  row.update(last_step=run.last_step, num_steps=run.num_steps)
  if run.config:
    row['differences'] = config_differences(run, table, row['scheme'], size, seed, extra,
                                            row.get('expected'))
  if state != 'finished' or run.results is None:
    row['status'] = state
  else:
    key, value, metric_text = headline(table, run.results, run.config, row.get('keys'))
    results = run.results
    row.update(status='finished', ours=value, metric_key=key, metric=metric_text,
               data=results.get('data'), hardware=results.get('hardware'),
               final_step=results.get('final_step'), best_step=results.get('best_step'),
               wall_time_s=results.get('wall_time_s'), results_metrics=results.get('metrics'),
               run_command=results.get('command'))
  if row['differences']:
    row['status'] = 'config differs: ' + '; '.join(row['differences'])
    row['ours'] = None
  return row


def needs_launch(row: dict) -> bool:
  """Missing, incomplete or failed; not finished, running elsewhere, or of other settings."""
  return launch.needs_run(row['status'])


def train_rows(rows, parallel: int, progress: bool = True,
               executor: launch.Executor | None = None) -> dict | None:
  """Trains the rows, `parallel` at a time (through `executor`, default the local pool);
  {scheme: (exit code, seconds)}, or None if stopped by SIGINT/SIGTERM (the local pool sends the
  running trainings SIGTERM and they checkpoint)."""
  executor = executor or launch.LocalLauncher(parallel=parallel or 1)
  return executor.run([row['job'] for row in rows], progress=progress, desc='reproduce')


# --- output ----------------------------------------------------------------------------------

def _cell(text) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


def ours_cell(row: dict, percent: bool) -> str:
  if row['status'] != 'finished':
    return row['status']
  if row['ours'] is None:
    return 'no test metric'
  return f'{row["ours"]:.2f}' if percent else f'{row["ours"]:.3f}'


def steps_cell(row: dict) -> str:
  if row['final_step'] is None:
    return '-'
  return f'{row["final_step"]} (best {row["best_step"]})'


def intro_lines(table: str, size: str) -> list[str]:
  spec, paper = TABLES[table], PAPER[table]
  own = ('the variants the paper reports' if spec.get('variants')
         else 'the paper\'s own LSTM and BN-LSTM rows')
  lines = [f'# {paper["source"]}', '',
           f'Size `{size}`; metric: {spec["metric"]}. Paper numbers exist for {own} only.']
  if size != 'paper':
    lines.append(f'**Size `{size}` does not use the paper\'s data or training length**: the runs '
                 f'train on {spec["small_data"]}'
                 + (', a few steps of a tiny model (numbers are meaningless)' if size == 'smoke'
                    else ', with a smaller budget (see the config file)')
                 + '. Compare the rows with each other, not with the paper column.')
  if spec.get('note'):
    lines.append(spec['note'])
  return lines + ['']


def markdown(table: str, size: str, rows) -> str:
  percent = TABLES[table]['percent']
  lines = intro_lines(table, size)
  lines += ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  for row in rows:
    cells = [row['model'], format_number(row['paper'], percent), ours_cell(row, percent),
             row['metric'], format_data(row['data']), format_hardware(row['hardware']),
             steps_cell(row), format_wall(row['wall_time_s']), f'`{row["command"]}`']
    lines.append('| ' + ' | '.join(_cell(c) for c in cells) + ' |')
  context = '; '.join(f'{name} {format_number(value, percent)}'
                      for name, value in PAPER[table]['context'])
  lines += ['', f'Other rows of the paper\'s table (not run here): {context}.', '']
  return '\n'.join(lines)


def report_json(table: str, size: str, seed: int, rows) -> dict:
  keep = ('scheme', 'model', 'paper', 'ours', 'status', 'metric', 'metric_key', 'workdir',
          'command', 'run_command', 'data', 'hardware', 'final_step', 'best_step',
          'wall_time_s', 'last_step', 'num_steps', 'results_metrics', 'differences')
  return finite_or_none(dict(
      table=table, size=size, seed=seed, source=PAPER[table]['source'],
      metric=TABLES[table]['metric'], unit='%' if TABLES[table]['percent'] else 'bpc',
      notes=intro_lines(table, size)[2:-1],
      rows=[{k: row.get(k) for k in keep} for row in rows],
      paper_context=[dict(model=m, value=v) for m, v in PAPER[table]['context']],
      generated=time.strftime('%Y-%m-%d %H:%M:%S'), command=shlex.join(sys.argv)))


def write_outputs(path: str, text: str, data: dict) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  json_path = os.path.splitext(path)[0] + '.json'
  with open(json_path, 'w', encoding='utf-8') as f:
    json.dump(data, f, indent=2, allow_nan=False)
    f.write('\n')
  return json_path


# --- command line ------------------------------------------------------------------------------

def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog='Any further --config.<key>=<value> arguments are passed to every run.')
  parser.add_argument('table', choices=tuple(TABLES),
                      help='smnist | pmnist (Table 1), ptb (Table 2), text8 (Table 3), cnn_qa '
                           '(Table 4 and Fig. 3a: rows are Attentive Reader variants)')
  parser.add_argument('--root', required=True, help='root of the run directories')
  parser.add_argument('--size', default='paper', choices=SIZES)
  parser.add_argument('--launch', action='store_true', help='train the unfinished rows')
  parser.add_argument('--parallel', type=int, default=None,
                      help='runs at a time with --launch (default 1; slurm: the job array\'s '
                           'limit, default none of ours)')
  registered = list(norms.NORMS)  # now, so that schemes registered after import are rows too
  parser.add_argument('--schemes', default=None,
                      help=f'comma-separated subset of {",".join(registered)} (default: all; '
                           'for cnn_qa the subset of its variant rows)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=None,
                      help='markdown file (default <root>/<table>_<size>/TABLE.md); the JSON '
                           'goes next to it')
  launch_submitit.add_arguments(parser)
  args, extra = parse_args_and_overrides(parser, argv)
  valid = list(TABLES[args.table].get('variants') or registered)
  schemes = [s.strip() for s in (args.schemes or ','.join(valid)).split(',') if s.strip()]
  unknown = [s for s in schemes if s not in valid]
  if unknown or not schemes:
    kind = 'row' if 'variants' in TABLES[args.table] else 'scheme'
    parser.error(f'unknown {kind}(s) {", ".join(unknown) or "(none given)"}; valid {kind}s: '
                 f'{", ".join(valid)}')
  if args.parallel is not None and args.parallel < 1:
    parser.error(f'--parallel must be >= 1, got {args.parallel}')
  args.schemes = list(dict.fromkeys(schemes))
  return args, extra


def main(argv=None) -> int:
  args, extra = parse_args(argv)
  rows = make_rows(args.table, args.root, args.size, args.schemes, args.seed, extra)
  for row in rows:
    collect(row, args.table, args.size, args.seed, extra)
  code = 0
  if args.launch:
    try:
      executor = launch_submitit.from_args(args, table_dir(os.path.abspath(args.root), args.table,
                                                           args.size),
                                           f'{args.table}_{args.size}', args.parallel)
    except ConfigError as err:
      print(f'error: {err}', file=sys.stderr)
      return 2
    todo = [row for row in rows if needs_launch(row)]
    if todo:
      print(f'{args.table} ({args.size}): training {len(todo)} run(s), {executor.describe()}; '
            f'logs in <workdir>/train.log', flush=True)
      outcome = train_rows(todo, args.parallel, executor=executor)
      if outcome is None:
        print(f'\ninterrupted: {executor.on_interrupt}', file=sys.stderr)
        code = 130
      elif any(exit_code != 0 for exit_code, _ in outcome.values()):
        code = 1
      for row in rows:
        collect(row, args.table, args.size, args.seed, extra)
  text = markdown(args.table, args.size, rows)
  out = args.out or os.path.join(table_dir(args.root, args.table, args.size), 'TABLE.md')
  json_path = write_outputs(out, text, report_json(args.table, args.size, args.seed, rows))
  print(text)
  print(f'wrote {out} and {json_path}')
  todo = [row for row in rows if needs_launch(row)]
  if todo and not args.launch:
    print(f'\n{len(todo)} row(s) not finished. Rerun with --launch, or run from the repository '
          'root:')
    for row in todo:
      print(row['command'])
  failed = [row for row in rows if row['status'].startswith('failed')]
  if failed:
    print('failed: ' + ', '.join(row['scheme'] for row in failed), file=sys.stderr)
  return code


if __name__ == '__main__':
  sys.exit(main())
