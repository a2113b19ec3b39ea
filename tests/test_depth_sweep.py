"""configs/ptb_depth.py (depth x BN site, the BN debate) and experiments/depth_sweep.py.

The configs and the verdicts are checked without training; one test trains four smoke points of
the sweep in-process (depth 1 and 5, no BN and input-only BN; about 20 s on 2 cores) and reads
them back with the script next to a fake unfinished run and a run outside the grid.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from normrnn import launch, trainer
from normrnn.config import ConfigError, load_config, schema
from tests.helpers import config_module, load_script
from tests.test_data import ptb_dir  # noqa: F401  (a pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'ptb_depth.py')

ptb_depth = config_module('ptb_depth')
depth_sweep = load_script('experiments/depth_sweep.py')
sweep_script = load_script('scripts/sweep.py')

NAMES = {  # (layers, norm, gamma or None) -> point name
    (layers, norm, gamma): f'layers-{layers}_name-{norm}'
    + ('' if gamma is None else f'_gamma_init-{gamma}')
    for layers in (1, 3, 5)
    for norm, gamma in (('none', None), ('batch_input', 0.1), ('batch', 0.1), ('batch', 1.0))}


def _budget(config) -> tuple:
  """Everything but depth and normalization that a point's result depends on."""
  return (config.model.hidden, config.model.cell, config.data.name, config.data.batch_size,
          config.data.seq_len, config.train.num_steps, config.train.eval_every_steps,
          config.optimizer.name, config.optimizer.learning_rate, config.seed,
          tuple(config.eval.modes), config.eval.select_metric, config.eval.full_stream)


# --- the config ----------------------------------------------------------------------------------

@pytest.mark.parametrize('size', ptb_depth.SIZES)
def test_every_point_validates_with_one_budget(size):
  budgets = set()
  for point in ptb_depth.get_sweep():
    config = load_config(f'{CONFIG}:size={size}', point)
    schema.validate(config, device_count=1)
    assert config.model.layers == point['model.layers']
    assert config.model.norm.name == point['model.norm.name']
    if 'model.norm.gamma_init' in point:
      assert config.model.norm.gamma_init == point['model.norm.gamma_init']
    budgets.add(_budget(config))
  assert len(budgets) == 1, budgets
  for layers in ptb_depth.LAYERS:  # the `layers` argument of a single run
    for norm in ('none', 'batch_input', 'batch'):
      config = ptb_depth.get_config(f'layers={layers},norm={norm},size={size}')
      schema.validate(config, device_count=1)
      assert config.model.layers == layers and _budget(config) in budgets


def test_cpu_budget_and_selection():
  config = ptb_depth.get_config()
  assert _budget(config) == (128, 'lstm', 'ptb_char_valid', 32, 100, 2000, 100, 'adam', 2e-3, 0,
                             ('population',), 'val/loss', True)
  assert config.task == 'ptb_depth' and config.data.dir.endswith('shared/data/ptb_char')
  assert config.model.norm.max_time_steps == 99
  with pytest.raises(ConfigError, match='layers=2'):
    ptb_depth.get_config('layers=2')
  with pytest.raises(ConfigError, match="size='paper'"):
    ptb_depth.get_config('size=paper')


def test_sweep_has_the_twelve_points():
  points = ptb_depth.get_sweep()
  assert len(points) == 12
  got = {(p['model.layers'], p['model.norm.name'], p.get('model.norm.gamma_init')): name
         for p, name in zip(points, launch.point_names(points))}
  assert got == NAMES
  assert all(set(p) <= {'model.layers', 'model.norm.name', 'model.norm.gamma_init'}
             for p in points)
  assert ptb_depth.get_sweep('size=smoke') == points


def test_sweep_command_lists_the_twelve_runs(tmp_path, capsys):
  assert sweep_script.main(['--config', CONFIG, '--workdir', str(tmp_path / 'depth'),
                            '--parallel', '1', '--dry-run']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 12
  assert {line.split('--workdir=')[1].split()[0] for line in lines} == {
      str(tmp_path / 'depth' / name) for name in NAMES.values()}


# --- the verdicts --------------------------------------------------------------------------------

def _cells(none, vertical, small, large):
  """Synthetic cells: per variant, one test bpc per depth 1, 3, 5 (None: no run)."""
  cells = {layers: {} for layers in ptb_depth.LAYERS}
  for variant, values in (('none', none), ('batch_input', vertical), ('batch_g0.1', small),
                          ('batch_g1.0', large)):
    for layers, value in zip(ptb_depth.LAYERS, values):
      if value is not None:
        cells[layers][variant] = dict(test=value, best_val_bpc=value)
  return cells


def test_verdicts_hold_when_the_numbers_agree():
  claims = depth_sweep.judge(_cells(none=(2.0, 2.0, 2.0), vertical=(2.01, 1.95, 1.9),
                                    small=(1.8, 1.8, 1.8), large=(2.1, 2.1, 2.1)), 'test')
  assert {name: c['verdict'] for name, c in claims.items()} == {
      'laurent': 'holds', 'deep_speech_2': 'holds', 'cooijmans': 'holds'}
  assert claims['deep_speech_2']['only_deep'] is True
  assert 'depth 5 +0.1000' in claims['deep_speech_2']['details']
  assert 'BN-LSTM gamma 1.0 2.1000 (+0.1000)' in claims['laurent']['details']


def test_verdicts_fail_in_part_and_with_missing_runs():
  claims = depth_sweep.judge(_cells(none=(2.0, 2.0, 2.0), vertical=(1.9, 1.95, 1.9),
                                    small=(1.8, 2.2, 1.8), large=(2.1, 2.1, 1.95)), 'test')
  assert claims['laurent']['verdict'] == 'holds in part (only: input-only BN beats no BN)'
  assert claims['deep_speech_2']['verdict'] == 'does not hold'
  assert claims['cooijmans']['verdict'] == 'holds in part (at depths 1, 5 only)'
  assert claims['cooijmans']['holds'] is False
  claims = depth_sweep.judge(_cells(none=(2.0, None, None), vertical=(1.9, None, 1.9),
                                    small=(None,) * 3, large=(None,) * 3), 'test')
  assert all(c['verdict'] == 'undecided' and c['holds'] is None for c in claims.values())
  assert 'depth 5 no BN' in claims['laurent']['details']


# --- a tiny real sweep ---------------------------------------------------------------------------

def _fake_unfinished(source: Path, target: Path, layers=None, **norm) -> None:
  """A run stopped after its first evaluation: `source`'s config with another depth or other
  norm settings."""
  target.mkdir()
  config = json.loads((source / 'config.json').read_text())
  config['model']['norm'].update(norm)
  config['model']['layers'] = layers or config['model']['layers']
  (target / 'config.json').write_text(json.dumps(config))
  records = [json.loads(line) for line in (source / 'metrics.jsonl').read_text().splitlines()]
  first = [r for r in records if r['step'] <= 2 and 'val_final/bpc' not in r]
  (target / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in first))


def test_depth_sweep_on_smoke_runs(tmp_path, ptb_dir, capsys):  # noqa: F811
  root = tmp_path / 'depth'
  jobs = {job.name: job for job in launch.sweep_jobs(
      f'{CONFIG}:size=smoke', str(root),
      ['--config.data.name=ptb_char', f'--config.data.dir={ptb_dir}',
       '--config.train.progress_bar=False', '--config.wandb.tensorboard=False'])}
  trained = [NAMES[(layers, norm, gamma)] for layers in (1, 5)
             for norm, gamma in (('none', None), ('batch_input', 0.1))]
  for name in trained:  # what `scripts/sweep.py` would run for these points, in-process
    trainer.train_and_evaluate(jobs[name].config(), jobs[name].workdir)
  unfinished = root / NAMES[(5, 'batch', 1.0)]
  _fake_unfinished(root / NAMES[(5, 'none', None)], unfinished, name='batch', gamma_init=1.0)
  config = json.loads((unfinished / 'config.json').read_text())
  config['model']['hidden'] = 16  # not the budget of the others: a warning
  (unfinished / 'config.json').write_text(json.dumps(config))
  _fake_unfinished(root / NAMES[(1, 'none', None)], root / 'layers-2_name-none', layers=2)
  duplicate = root / 'again-layers-1_name-none'  # a second copy of a cell, unfinished
  shutil.copytree(root / NAMES[(1, 'none', None)], duplicate)
  (duplicate / 'results.json').unlink()

  out = tmp_path / 'out'
  assert depth_sweep.main([str(root), '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  assert (out / 'depth_sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (out / 'depth_sweep.md').read_text() in printed
  result = json.loads((out / 'depth_sweep.json').read_text())

  assert result['test_metric'] == 'test/bpc'  # smoke runs skip the whole-stream evaluation
  cells = result['cells']
  for layers in ('1', '5'):
    for variant in ('none', 'batch_input'):
      entry = cells[layers][variant]
      assert entry['finished'] and entry['status'] == 'finished'
      assert entry['step'] == [2, 4] and len(entry['values']) == 2
      assert entry['test'] == entry['test/bpc'] > 0
      assert entry['best_val_bpc'] == min(entry['values'])
  assert cells['1']['none']['name'] == NAMES[(1, 'none', None)]  # the finished copy is kept
  assert cells['5']['batch_g1.0']['status'] == 'incomplete (step 2 of 4)'
  assert cells['5']['batch_g1.0']['test'] is None and cells['5']['batch_g1.0']['step'] == [2]
  assert cells['3'] == {}
  assert len(result['missing']) == 8  # 12 cells, 4 finished
  assert 'depth 3, no BN: missing' in result['missing']
  assert 'depth 5, BN-LSTM, gamma 1.0: incomplete (step 2 of 4)' in result['missing']
  assert result['other_runs'] == ['layers-2_name-none (layers=2, norm=none, gamma=0.1)']
  assert result['duplicates'] == ['depth 1, no BN: again-layers-1_name-none left out '
                                  f'(using {NAMES[(1, "none", None)]})']
  assert result['budget_differs'] == {'model.hidden': ['16', '8']}
  assert 'WARNING, the runs do not share one budget: model.hidden = 16, 8.' in printed

  claims, on_val = result['claims'], result['claims_on_best_val']
  # Depth 5 gamma 1.0 is unfinished: it has a validation curve but is judged on neither.
  assert claims['laurent']['verdict'] == on_val['laurent']['verdict'] == 'undecided'
  assert 'depth 5 BN-LSTM, gamma 1.0' in on_val['laurent']['details']
  assert claims['deep_speech_2']['verdict'].endswith('(judged on depths 1, 5 only)')
  assert claims['cooijmans']['verdict'] == 'undecided'
  for name in ('Laurent et al.', 'Deep Speech 2', 'Cooijmans et al.'):
    assert sum(line.startswith(f'- {name}') for line in printed.splitlines()) == 1
  assert '| 3 | missing | missing | missing | missing |' in printed
  assert 'unfinished at step 2' in printed


def test_depth_sweep_reports_an_empty_or_absent_root(tmp_path, capsys):
  assert depth_sweep.main([str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out')]) == 2
  assert 'is not a directory' in capsys.readouterr().err
  (tmp_path / 'empty').mkdir()
  assert depth_sweep.main([str(tmp_path / 'empty'), '--out', str(tmp_path / 'out')]) == 0
  result = json.loads((tmp_path / 'out' / 'depth_sweep.json').read_text())
  assert len(result['missing']) == 12
  assert all(c['verdict'] == 'undecided' for c in result['claims'].values())
  assert (tmp_path / 'out' / 'depth_sweep.png').exists()
