"""experiments/reproduce.py (paper tables) and experiments/gamma_sensitivity.py (Fig. 6).

Run directories are built in the trainer's format: config.json from the config files themselves
(`json.loads(config.to_json())`, what normrnn.trainer writes), results.json with the keys of
`train_and_evaluate` (checked against a real smoke run in `test_real_smoke_launch`) and
metrics.jsonl lines {"step", "time", metrics...}.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from normrnn import launch, norms, trainer
from normrnn.config import load_config
from normrnn.norms import NORMS
from tests.helpers import SHARED_DATA, load_script

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = SHARED_DATA / 'mnist'
# The keys normrnn.trainer.train_and_evaluate writes into results.json.
RESULTS_KEYS = {'task', 'paper', 'norm', 'scheme', 'gamma_init', 'metrics', 'best_step', 'best',
                'final_step', 'popstats', 'wall_time_s', 'hardware', 'data', 'params_digest',
                'command'}
HARDWARE = dict(platform='cpu', device_kind='cpu', device_count=1, cpu_count=2,
                machine='x86_64', jax='0.4.test', flax='0.10.test', python='3.11.7')
CONFIGS = {'smnist': 'smnist.py', 'pmnist': 'pmnist.py', 'ptb': 'ptb_char.py'}

reproduce = load_script('experiments/reproduce.py')
gamma_sensitivity = load_script('experiments/gamma_sensitivity.py')


# --- fake run directories in the trainer's format ---------------------------------------------

def _config(table: str, scheme: str, size: str, seed: int = 0, gamma: float = -1.0) -> dict:
  arg = f'norm={scheme},size={size},seed={seed},gamma={gamma}'
  return json.loads(load_config(f'{ROOT / "configs" / CONFIGS[table]}:{arg}').to_json())


def _write_jsonl(path: Path, records) -> None:
  path.write_text(''.join(json.dumps(dict(time=0.0, **r)) + '\n' for r in records))


def _data(config: dict) -> dict:
  image = config['data']['name'].startswith('mnist')
  sizes = {'mnist10k': (8000, 1000, 1000), 'ptb_char_valid': (353737, 19652, 19653)}[
      config['data']['name']]
  data = dict(name=config['data']['name'], kind='classify' if image else 'lm',
              label=f"{config['data']['name']}: ..., NOT the paper's data",
              source='IDX files', files=[], seed=config['seed'],
              split_sizes=dict(zip(('train', 'valid', 'test'), sizes)))
  if image:
    data.update(pixel_order=config['data']['pixel_order'], n_pixels=784,
                distinct_pixels_shown=784)
  return data


def fake_run(workdir: Path, config: dict, metrics: dict | None, *, steps=(250, 500),
             wall=1500.0) -> None:
  """A run directory; metrics=None leaves it unfinished (no results.json)."""
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text(json.dumps(config, indent=2, sort_keys=True))
  _write_jsonl(workdir / 'metrics.jsonl',
               [{'step': s, 'train/loss': 1.0 / s, 'train/grad_norm': 1.0} for s in steps])
  if metrics is None:
    return
  results = dict(task=config['task'], paper=config['paper'], norm=config['model']['norm']['name'],
                 scheme=config['model']['norm']['name'], gamma_init=config['model']['norm']['gamma_init'], metrics=metrics,
                 best_step=steps[-2], best=dict(step=steps[-2], value=0.1, metric='val/error'),
                 final_step=steps[-1], popstats='reestimate', wall_time_s=wall,
                 hardware=HARDWARE, data=_data(config), params_digest='0' * 64,
                 command='normrnn/train.py --config=...')
  assert set(results) == RESULTS_KEYS
  (workdir / 'results.json').write_text(json.dumps(results, indent=2, sort_keys=True))


def _row_line(text: str, scheme: str) -> str:
  """The table line of a scheme's row (its model cell: the registered label and paper)."""
  declared = NORMS[scheme]
  model = f'{declared.label} ({declared.paper})'
  lines = [l for l in text.splitlines() if l.startswith(f'| {model} |')]
  assert len(lines) == 1, text
  return lines[0]


# --- reproduce.py ------------------------------------------------------------------------------

def test_smnist_table_finished_missing_and_incomplete(tmp_path, capsys):
  root = tmp_path / 'runs'
  table = root / 'smnist_cpu'
  fake_run(table / 'none_seed0', _config('smnist', 'none', 'cpu'),
           {'test/acc': 0.9712, 'test/loss': 0.1, 'val_final/acc': 0.97},
           steps=(1250, 1500), wall=1500.0)
  fake_run(table / 'batch_seed0', _config('smnist', 'batch', 'cpu'),
           {'test/acc': 0.9855, 'test_batch/acc': 0.98}, steps=(1000, 1500), wall=45.0)
  fake_run(table / 'layer_seed0', _config('smnist', 'layer', 'cpu'), None, steps=(50, 250))

  code = reproduce.main(['smnist', '--root', str(root), '--size', 'cpu',
                         '--schemes', 'none,batch,layer,weight'])
  out = capsys.readouterr().out
  assert code == 0
  md = (table / 'TABLE.md').read_text()
  assert md in out  # printed and written
  assert md.count('\n| ') == 5  # header + 4 rows
  assert '| model | paper | ours | metric | data | hardware | steps | wall time | command |' in md
  assert "does not use the paper's data" in md and 'mnist10k' in md
  wd = root / 'smnist_cpu'
  assert _row_line(md, 'none') == (
      f"| LSTM ({NORMS['none'].paper}) | 98.9 | 97.12 | test/acc (%) | mnist10k "
      "8000/1000/1000, scanline pixels, not the paper's data | CPU (2 cores), jax 0.4.test | "
      "1500 (best 1250) | 25.0 min | "
      f"`python -m normrnn.train --config=configs/smnist.py:norm=none,size=cpu,seed=0 "
      f"--workdir={wd / 'none_seed0'}` |")
  bn = _row_line(md, 'batch')
  assert '| BN-LSTM (Cooijmans et al. 2016, eqs. 6-8) | 99.0 | 98.55 | test/acc (%) |' in bn
  assert '| 45 s |' in bn
  ln = _row_line(md, 'layer')
  assert ln.startswith('| LN-LSTM (') and (
      '| —, not in the paper | incomplete (step 250 of 1500) |' in ln)
  wn = _row_line(md, 'weight')
  assert wn.startswith('| WN-LSTM (') and '| —, not in the paper | missing |' in wn
  assert 'iRNN (Le et al. 2015) 97.0' in md and 'uRNN (Arjovsky et al. 2015) 95.1' in md
  # The commands that would start the unfinished rows, and only those.
  tail = out.split('row(s) not finished')[1]
  assert (f'python -m normrnn.train --config=configs/smnist.py:norm=layer,size=cpu,seed=0 '
          f'--workdir={wd / "layer_seed0"}') in tail
  assert 'norm=weight,size=cpu,seed=0' in tail
  assert 'norm=none' not in tail and 'norm=batch,' not in tail

  report = json.loads((table / 'TABLE.json').read_text())
  assert report['table'] == 'smnist' and report['size'] == 'cpu' and report['unit'] == '%'
  rows = {r['scheme']: r for r in report['rows']}
  assert list(rows) == ['none', 'batch', 'layer', 'weight']
  assert rows['none']['paper'] == 98.9 and rows['none']['ours'] == pytest.approx(97.12)
  assert rows['batch']['paper'] == 99.0 and rows['batch']['ours'] == pytest.approx(98.55)
  assert rows['none']['status'] == 'finished' and rows['weight']['status'] == 'missing'
  assert rows['layer']['paper'] is None and rows['layer']['last_step'] == 250
  assert rows['none']['data']['split_sizes'] == {'train': 8000, 'valid': 1000, 'test': 1000}
  assert rows['none']['hardware']['cpu_count'] == 2 and rows['none']['final_step'] == 1500
  assert rows['none']['results_metrics']['val_final/acc'] == 0.97
  assert 'norm=none,size=cpu,seed=0' in rows['none']['command']
  assert rows['batch']['model'] == 'BN-LSTM (Cooijmans et al. 2016, eqs. 6-8)'
  assert {'model': 'iRNN (Le et al. 2015)', 'value': 97.0} in report['paper_context']


def test_rows_are_the_registered_schemes_by_default(tmp_path):
  rows = reproduce.make_rows('ptb', str(tmp_path), 'cpu')
  assert [r['scheme'] for r in rows] == list(NORMS)
  assert [r['model'] for r in rows] == [f'{s.label} ({s.paper})' for s in NORMS.values()]
  job = rows[1]['job']
  assert job.workdir == str(tmp_path / 'ptb_cpu' / 'batch_seed0')
  config = job.config()  # what the row's command trains
  assert (config.task, config.model.norm.name, config.seed) == ('ptb_char', 'batch', 0)


def test_ptb_table_uses_the_whole_stream_metric(tmp_path, capsys):
  root = tmp_path / 'r'
  fake_run(root / 'ptb_cpu' / 'none_seed0', _config('ptb', 'none', 'cpu'),
           {'test_stream/bpc': 1.6104, 'test/bpc': 1.7}, steps=(800, 1000))
  fake_run(root / 'ptb_cpu' / 'batch_seed0', _config('ptb', 'batch', 'cpu'),
           {'test/bpc': 1.5512}, steps=(800, 1000))
  out_md = tmp_path / 'ptb.md'
  assert reproduce.main(['ptb', '--root', str(root), '--size', 'cpu', '--schemes', 'none,batch',
                         '--out', str(out_md)]) == 0
  capsys.readouterr()
  md = out_md.read_text()
  assert ' | 1.38 | 1.610 | test_stream/bpc | ptb_char_valid 353737/19652/19653' in _row_line(
      md, 'none')
  bn = _row_line(md, 'batch')
  # No whole-stream number: the segment metric, flagged as not comparable.
  assert ' | 1.32 | 1.551 | test/bpc — length-100 segments' in bn
  assert 'no test_stream/bpc' in bn
  assert 'configs/ptb_char.py:norm=batch,size=cpu,seed=0' in bn
  assert 'Zoneout (Krueger 2016) 1.27' in md
  report = json.loads((tmp_path / 'ptb.json').read_text())
  assert [r['metric_key'] for r in report['rows']] == ['test_stream/bpc', 'test/bpc']
  assert report['rows'][0]['ours'] == pytest.approx(1.6104) and report['unit'] == 'bpc'


def test_run_with_other_settings_is_not_used(tmp_path, capsys):
  root = tmp_path / 'r'
  # Finished with seed 1 and 1500 steps in the seed-0 directory; asked: seed 0, 3000 steps.
  fake_run(root / 'pmnist_cpu' / 'batch_seed0', _config('pmnist', 'batch', 'cpu', seed=1),
           {'test/acc': 0.9})
  assert reproduce.main(['pmnist', '--root', str(root), '--size', 'cpu', '--schemes', 'batch',
                         '--config.train.num_steps=3000']) == 0
  out = capsys.readouterr().out
  row = _row_line(out, 'batch')
  assert '| 95.4 | config differs: seed: run 1, asked 0; train.num_steps: run 1500, asked ' \
         "'3000' |" in row
  assert '--config.train.num_steps=3000`' in row
  assert 'with_replacement' in out  # the pMNIST pixel-order note
  report = json.loads((root / 'pmnist_cpu' / 'TABLE.json').read_text())
  assert report['rows'][0]['ours'] is None
  assert 'row(s) not finished' not in out  # not offered for (re)launch


class _FakeTraining:
  """Stands in for the training subprocess: writes a run directory like the trainer's."""

  def __init__(self, job):
    self.job, self.pid, self.returncode = job, os.getpid(), None

  def wait(self):
    workdir = Path(self.job.workdir)
    # While it trains, the launcher's pid file marks the workdir as running.
    assert (workdir / launch.PID_FILE).read_text().strip() == str(self.pid)
    assert launch.status(self.job).startswith(f'running (pid {self.pid}, ')
    config = self.job.config()
    if config.model.norm.name == 'cosine':
      self.returncode = 1
      return 1
    fake_run(workdir / 'x', json.loads(config.to_json()), {'test/acc': 0.25}, steps=(2, 4))
    for name in os.listdir(workdir / 'x'):
      os.replace(workdir / 'x' / name, workdir / name)
    self.returncode = 0
    return 0

  def poll(self):
    return self.returncode


def test_launch_trains_only_unfinished_rows(tmp_path, capsys, monkeypatch):
  root = tmp_path / 'r'
  fake_run(root / 'smnist_smoke' / 'none_seed3', _config('smnist', 'none', 'smoke', seed=3),
           {'test/acc': 0.5}, steps=(2, 4))
  launched = []

  def fake_start(self, job, log):
    del self, log
    launched.append(job.command())
    return _FakeTraining(job)

  monkeypatch.setattr(launch.LocalLauncher, 'start', fake_start)
  code = reproduce.main(['smnist', '--root', str(root), '--size', 'smoke', '--seed', '3',
                         '--schemes', 'none,layer,cosine', '--launch', '--parallel', '2',
                         '--config.train.num_steps=4'])
  captured = capsys.readouterr()
  assert code == 1  # the cosine run failed
  assert sorted(a[3] for a in launched) == [
      f'--config={ROOT / "configs" / "smnist.py"}:norm={s},size=smoke,seed=3'
      for s in ('cosine', 'layer')]
  for argv in launched:
    assert argv[:3] == [sys.executable, '-m', 'normrnn.train']
    assert argv[4].startswith(f'--workdir={root.resolve()}') and argv[5:] == [
        '--config.train.num_steps=4']
  assert ' | —, not in the paper | 25.00 |' in _row_line(captured.out, 'layer')
  cosine = _row_line(captured.out, 'cosine')
  assert 'failed (exit 1, see ' in cosine and 'cosine_seed3/train.log' in cosine
  assert ' | 98.9 | 50.00 |' in _row_line(captured.out, 'none')
  assert 'failed: cosine' in captured.err
  layer = root / 'smnist_smoke' / 'layer_seed3'
  assert not (layer / launch.PID_FILE).exists()
  assert launch.status(str(layer)) == 'finished'
  assert (layer / 'train.log').read_text().startswith(f'$ {sys.executable} -m normrnn.train ')


@pytest.mark.parametrize('argv, message', [
    (['imagenet', '--root', 'x'], "invalid choice: 'imagenet' (choose from 'smnist', 'pmnist', "
                                  "'ptb', 'text8', 'cnn_qa')"),
    (['ptb', '--root', 'x', '--schemes', 'batch,groupnorm'],
     'unknown scheme(s) groupnorm; valid schemes: ' + ', '.join(NORMS)),
    (['ptb', '--root', 'x', '--size', 'huge'],
     "invalid choice: 'huge' (choose from 'paper', 'cpu', 'smoke')"),
    (['ptb', '--root', 'x', '--lr', '3'], 'only --config.<key>=<value> overrides'),
])
def test_bad_arguments_fail_with_the_valid_choices(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    reproduce.main(argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err


@pytest.fixture
def throwaway_scheme():
  """A scheme registered at run time (WN's sites under another name), removed afterwards."""
  scheme = norms.register(dataclasses.replace(
      NORMS['weight'], name='throwaway_wn', label='throwaway WN-LSTM',
      paper='a test of the registry'))
  yield scheme
  norms.unregister(scheme.name)


@pytest.mark.slow
def test_a_registered_scheme_gets_a_row(tmp_path, capsys, throwaway_scheme):
  """A scheme registered after import is a row: its default --schemes, its label, its run."""
  if not SHARED_MNIST.is_dir():
    pytest.skip(f'{SHARED_MNIST} is missing')
  root = tmp_path / 'r'
  extra = ['--config.train.progress_bar=False', '--config.wandb.tensorboard=False']
  (row,) = reproduce.make_rows('smnist', str(root), 'smoke', [throwaway_scheme.name], 0, extra)
  results = trainer.train_and_evaluate(row['job'].config(), row['workdir'])
  assert reproduce.main(['smnist', '--root', str(root), '--size', 'smoke'] + extra) == 0
  out = capsys.readouterr().out
  line = _row_line(out, throwaway_scheme.name)
  assert line.startswith('| throwaway WN-LSTM (a test of the registry) | —, not in the paper | '
                         f'{100 * results["metrics"]["test/acc"]:.2f} | test/acc (%) |')
  report = json.loads((root / 'smnist_smoke' / 'TABLE.json').read_text())
  assert [r['scheme'] for r in report['rows']] == list(NORMS)  # every registered scheme
  assert report['rows'][-1]['status'] == 'finished'


@pytest.mark.slow
def test_real_smoke_launch(tmp_path, capsys, monkeypatch):
  """One real training run (smnist smoke, ~10 s): launched, collected, then reused."""
  if not SHARED_MNIST.is_dir():
    pytest.skip(f'{SHARED_MNIST} is missing')
  root = tmp_path / 'r'
  argv = ['smnist', '--root', str(root), '--size', 'smoke', '--schemes', 'none',
          '--config.train.progress_bar=False', '--config.wandb.tensorboard=False']
  monkeypatch.chdir(tmp_path)  # any directory: the package is installed, data paths absolute
  assert reproduce.main(argv + ['--launch']) == 0
  workdir = root / 'smnist_smoke' / 'none_seed0'
  results = json.loads((workdir / 'results.json').read_text())
  assert set(results) == RESULTS_KEYS  # the fake runs above use the same format
  assert 'normrnn.train' in (workdir / 'train.log').read_text()
  acc = 100 * results['metrics']['test/acc']
  out = capsys.readouterr().out
  assert f' | 98.9 | {acc:.2f} | test/acc (%) | mnist10k 8000/1000/1000' in _row_line(out, 'none')
  assert 'a few steps of a tiny model' in out
  assert reproduce.main(argv) == 0  # rerun: collected, nothing to launch
  assert 'not finished' not in capsys.readouterr().out


# --- gamma_sensitivity.py --------------------------------------------------------------------

def _sweep_run(root: Path, name: str, table: str, scheme: str, gamma: float, val, *,
               finished=True):
  """A sweep point: train/loss every 50 steps, validation every 100 (val[i] at 100*(i+1))."""
  config = _config(table, scheme, 'cpu', gamma=gamma)
  workdir = root / name
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text(json.dumps(config))
  records = []
  last = 100 * len(val)
  for step in range(50, last + 1, 50):
    records.append({'step': step, 'train/loss': val[min(step // 100, len(val) - 1)] + 0.05})
    if step % 100 == 0:
      v = val[step // 100 - 1]
      records.append({'step': step, 'val/loss': v + 0.01, 'val/error': 0.5} if scheme == 'none'
                     else {'step': step, 'val/loss': v + 0.02, 'val_batch/loss': v})
  _write_jsonl(workdir / 'metrics.jsonl', records)
  if finished:
    (workdir / 'results.json').write_text(json.dumps({'metrics': {'test/acc': 0.5}}))


def _pmnist_sweep(root: Path, monotone: bool = True):
  _sweep_run(root, 'name-none', 'pmnist', 'none', 1.0, [2.0, 1.5, 1.2, 1.0, 0.9])
  curves = {0.1: [1.0, 0.6, 0.4, 0.3, 0.25], 0.3: [1.2, 0.8, 0.5, 0.35, 0.3],
            1.0: [2.3, 2.2, 1.9, 1.1]}  # gamma 1.0 stopped at step 400
  if not monotone:
    curves[0.1], curves[0.3] = curves[0.3], curves[0.1]
  for gamma, val in curves.items():
    _sweep_run(root, f'gamma_init-{gamma}', 'pmnist', 'batch', gamma, val,
               finished=gamma != 1.0)


def test_gamma_sensitivity_pmnist(tmp_path, capsys):
  _pmnist_sweep(tmp_path / 'pmnist_gamma')
  out = tmp_path / 'fig'
  assert gamma_sensitivity.main([str(tmp_path / 'pmnist_gamma'), '--out', str(out)]) == 0
  png = (out / 'gamma_sensitivity.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 20_000
  result = json.loads((out / 'gamma_sensitivity.json').read_text())
  (entry,) = result['tasks']
  assert entry['task'] == 'pmnist' and entry['gammas'] == [0.1, 0.3, 1.0]
  assert entry['baseline'] == 'LSTM'
  assert list(entry['train/loss']) == ['LSTM', '0.1', '0.3', '1']
  assert set(entry['val_batch/loss']) == {'0.1', '0.3', '1'}  # batch statistics for BN runs
  assert set(entry['val/loss']) == {'LSTM', '0.1', '0.3', '1'}
  assert entry['validation_metric'] == {'LSTM': 'val/loss', '0.1': 'val_batch/loss',
                                        '0.3': 'val_batch/loss', '1': 'val_batch/loss'}
  assert entry['step']['val_batch/loss']['0.1'] == [100, 200, 300, 400, 500]
  assert entry['val_batch/loss']['0.1'] == [1.0, 0.6, 0.4, 0.3, 0.25]
  assert entry['step']['train/loss']['1'] == list(range(50, 401, 50))
  assert entry['compare_step'] == 400  # the last step every gamma run reached
  final = entry['final']
  assert final['0.1']['val_batch/loss'] == 0.3 and final['0.1']['val_batch/loss_last'] == 0.25
  assert final['1']['val_batch/loss'] == 1.1 and final['1']['finished'] is False
  assert final['0.3']['val_batch/loss_best'] == 0.35
  assert final['0.3']['val_batch/loss_mean'] == pytest.approx((1.2 + 0.8 + 0.5 + 0.35) / 4)
  assert final['LSTM']['val/loss'] == pytest.approx(1.01)
  ordering = entry['ordering']
  assert ordering['keys'] == ['0.1', '0.3', '1']
  assert ordering['at_compare_step'] and ordering['best'] and ordering['mean']
  assert ordering['monotone_steps'] == '4 of 4'
  assert ordering['verdict'].startswith('monotone')
  assert entry['paper']['valid_ce']['0.1'] == {'10000': 0.34, '50000': 0.21}
  assert entry['paper']['valid_ce']['1']['10000'] == 2.26
  printed = capsys.readouterr().out
  assert '| 0.1 | val_batch/loss | 0.3000 | 0.3000 (400) |' in printed
  assert '| 1 | val_batch/loss | 1.1000 |' in printed and '| no | 2.26 / 0.47 |' in printed
  assert 'Verdict: monotone' in printed


def test_gamma_sensitivity_not_monotone_and_two_tasks(tmp_path, capsys):
  _pmnist_sweep(tmp_path / 'pmnist_gamma', monotone=False)
  ptb_root = tmp_path / 'ptb_gamma'
  _sweep_run(ptb_root, 'name-none', 'ptb', 'none', 1.0, [1.3, 1.1, 1.05])
  for gamma in (0.1, 0.5):
    _sweep_run(ptb_root, f'gamma_init-{gamma}', 'ptb', 'batch', gamma, [1.2, 1.05, 1.02])
  result = gamma_sensitivity.gamma_sensitivity([str(tmp_path / 'pmnist_gamma'), str(ptb_root)],
                                               str(tmp_path / 'fig'))
  pm, ptb = result['tasks']
  assert pm['ordering']['at_compare_step'] is False and pm['ordering']['mean'] is False
  assert pm['ordering']['verdict'] == 'not monotone in gamma'
  assert pm['ordering']['monotone_steps'] == '0 of 4'
  assert ptb['task'] == 'ptb_char' and ptb['gammas'] == [0.1, 0.5]
  assert ptb['ordering']['spread_best'] == 0.0  # identical curves, the paper's PTB criterion
  assert ptb['paper']['valid_min_nats'] == [1.016, 1.018]
  assert (tmp_path / 'fig' / 'gamma_sensitivity.png').stat().st_size > 20_000
  with pytest.raises(FileNotFoundError, match='no run directories'):
    gamma_sensitivity.gamma_sensitivity([str(tmp_path / 'fig')], str(tmp_path / 'fig2'))
