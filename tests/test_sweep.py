"""normrnn.launch (jobs, the local launcher, run status) and scripts/sweep.py on top of it.

The end-to-end tests run scripts/sweep.py from an unrelated directory on configs/digits.py at
size=smoke (a few seconds per run); the rest build jobs and fake run directories.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normrnn import launch
from normrnn.config import ConfigError, load_sweep
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / 'configs' / 'digits.py'

sweep = load_script('scripts/sweep.py')


def _sweep_config(path: Path, points: str) -> str:
  """A config file: digits' get_config and the sweep `points` (Python source of a list)."""
  path.write_text(
      'from normrnn.config import load_config_module\n\n'
      f'digits = load_config_module({str(DIGITS)!r})\n\n\n'
      'def get_config(arg=None):\n  return digits.get_config(arg)\n\n\n'
      f'def get_sweep(arg=None):\n  return {points}\n')
  return str(path)


def _env(tmp_path: Path) -> dict:
  # The runs reuse the session's compilations (conftest.py's JAX_COMPILATION_CACHE_DIR).
  del tmp_path
  return dict(os.environ, WANDB_MODE='disabled', JAX_PLATFORMS='cpu')


def _write_run(workdir: Path, *, steps=(), num_steps=4, results=False) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(json.dumps({'train': {'num_steps': num_steps}}))
  (workdir / 'metrics.jsonl').write_text(
      ''.join(json.dumps({'step': s, 'time': 0.0, 'train/loss': 1.0}) + '\n' for s in steps))
  if results:
    (workdir / 'results.json').write_text(json.dumps({'metrics': {'test/acc': 0.5}}))


# --- jobs ----------------------------------------------------------------------------------------

def test_sweep_dry_run_lists_every_point(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the config by absolute path, from any directory
  assert sweep.main(['--config', f'{DIGITS}:size=smoke', '--workdir', str(tmp_path),
                     '--dry-run', '--config.train.num_steps=3']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  points = load_sweep(str(DIGITS))
  assert len(lines) == len(points)
  for line, point in zip(lines, points):
    for key, value in point.items():
      assert f'--config.{key}={value}' in line
    assert '--config.train.num_steps=3' in line and '--config.wandb.group=digits/' in line
    assert f'--workdir={tmp_path / launch.point_name(point)}' in line
  assert launch.point_name({'model.norm.gamma_init': 0.3}) == 'gamma_init-0.3'
  assert launch.point_name({'model.norm.name': 'none'}) == 'name-none'


def test_only_config_overrides_pass_through(tmp_path, capsys):
  """An unknown argument that is not a --config.<key>=<value> override is a usage error naming
  it, in both commands that pass overrides through to their runs (before anything is written)."""
  reproduce = load_script('experiments/reproduce.py')
  for main, argv in [(sweep.main, ['--config', str(DIGITS), '--workdir', str(tmp_path / 'w')]),
                     (reproduce.main, ['smnist', '--root', str(tmp_path / 'r')])]:
    with pytest.raises(SystemExit) as stop:
      main(argv + ['--config.train.num_steps=3', '--num_steps=3'])
    assert stop.value.code == 2
    assert ('unrecognized arguments: --num_steps=3 (only --config.<key>=<value> overrides'
            in capsys.readouterr().err)
  assert list(tmp_path.iterdir()) == []


def test_sweep_jobs_and_their_commands(tmp_path, monkeypatch):
  config = _sweep_config(tmp_path / 'tiny.py', '[{"seed": 0}, {"seed": 1}, {"seed": 0}]')
  monkeypatch.chdir(tmp_path)
  jobs = launch.sweep_jobs('tiny.py:norm=none,size=smoke', 'out/grid',
                           ['--config.train.num_steps=2'], name='first')
  assert [j.name for j in jobs] == ['seed-0', 'seed-1', 'seed-0-2']
  assert jobs[1].workdir == str(tmp_path / 'out' / 'grid' / 'seed-1')
  assert jobs[1].command(python='py') == [
      'py', '-m', 'normrnn.train', f'--config={config}:norm=none,size=smoke',
      f'--workdir={tmp_path / "out" / "grid" / "seed-1"}', '--config.seed=1',
      '--config.train.num_steps=2', '--config.wandb.group=digits/first']
  shown = jobs[1].command(python='python', relative_to=str(tmp_path))
  assert shown[3:5] == ['--config=tiny.py:norm=none,size=smoke', '--workdir=out/grid/seed-1']
  trained = jobs[1].config()  # what that command trains
  assert (trained.seed, trained.train.num_steps, trained.model.norm.name) == (1, 2, 'none')
  assert trained.wandb.group == 'digits/first'
  assert launch.format_value((1, 2)) == '(1,2)' and launch.format_value([3]) == '(3,)'
  with pytest.raises(ConfigError, match='num_stepz'):  # refused before anything starts
    launch.sweep_jobs(config, 'out', ['--config.train.num_stepz=2'])
  (tmp_path / 'plain.py').write_text(
      'from normrnn.config import load_config_module\n\n'
      f'get_config = load_config_module({str(DIGITS)!r}).get_config\n')
  with pytest.raises(ConfigError, match='defines no get_sweep'):
    launch.sweep_jobs('plain.py', 'out')


def test_status_of_a_workdir(tmp_path):
  job = launch.Job('p', str(tmp_path / 'p'), f'{DIGITS}:size=smoke')
  assert launch.status(job) == 'missing' and launch.needs_run('missing')
  _write_run(tmp_path / 'p', steps=(2,), num_steps=4)
  assert launch.status(job) == 'incomplete (step 2 of 4)'
  (tmp_path / 'p' / launch.PID_FILE).write_text(f'{os.getpid()}\n')  # a live process
  assert launch.status(job) == f'running (pid {os.getpid()}, step 2 of 4)'
  assert not launch.needs_run(launch.status(job))
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  (tmp_path / 'p' / launch.PID_FILE).write_text(f'{dead}\n')  # left behind by a killed launcher
  assert launch.status(job) == 'incomplete (step 2 of 4)'
  outcome = tmp_path / 'p' / launch.OUTCOME_FILE
  outcome.write_text(json.dumps({'exit_code': 143, 'stopped': True}))
  assert launch.status(job) == 'incomplete (step 2 of 4)'  # stopped: resumable, not failed
  outcome.write_text(json.dumps({'exit_code': 1, 'stopped': False}))
  assert launch.status(job) == f'failed (exit 1, see {tmp_path / "p" / "train.log"})'
  assert launch.needs_run(launch.status(job))
  _write_run(tmp_path / 'p', steps=(2, 4), num_steps=4, results=True)
  assert launch.status(str(tmp_path / 'p')) == 'finished'
  assert not launch.needs_run('finished')


# --- launching -----------------------------------------------------------------------------------

def test_sweep_runs_then_skips_finished_points(tmp_path):
  config = _sweep_config(tmp_path / 'tiny_sweep.py', '[{"seed": 0}, {"seed": 1}]')
  cmd = [sys.executable, str(ROOT / 'scripts' / 'sweep.py'),
         '--config', f'{config}:norm=none,size=smoke', '--workdir', str(tmp_path / 'sweep'),
         '--parallel', '2', '--config.train.num_steps=2', '--config.train.progress_bar=False',
         '--config.wandb.tensorboard=False']
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  out = subprocess.run(cmd, cwd=elsewhere, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  for name in ('seed-0', 'seed-1'):
    workdir = tmp_path / 'sweep' / name
    assert (workdir / 'results.json').exists()
    assert (workdir / 'train.log').read_text().startswith(f'$ {sys.executable} -m normrnn.train')
    assert not (workdir / launch.PID_FILE).exists()
    assert json.loads((workdir / launch.OUTCOME_FILE).read_text())['exit_code'] == 0
    assert launch.status(str(workdir)) == 'finished'
    assert f'| {name} | ok' in out.stdout
  assert 'test/acc=' in out.stdout
  again = subprocess.run(cmd, cwd=elsewhere, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=60)
  assert again.returncode == 0 and again.stdout.count('skipped (finished)') == 2
  assert '0 to run' in again.stdout


def test_sweep_names_a_failed_point(tmp_path):
  config = _sweep_config(tmp_path / 'bad_sweep.py', '[{"model.norm.gamma_init": -1.0}]')
  out = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'sweep.py'), '--config',
                        f'{config}:size=smoke', '--workdir', str(tmp_path / 'sweep')],
                       cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1
  log = tmp_path / 'sweep' / 'gamma_init--1.0' / 'train.log'
  assert f'failed: gamma_init--1.0 (see {log})' in out.stderr
  assert '| gamma_init--1.0 | FAILED (exit 2) |' in out.stdout
  text = log.read_text()  # the trainer's one-line reason
  assert 'gamma_init' in text.splitlines()[-1] and 'must be > 0' in text.splitlines()[-1]
  assert launch.status(str(log.parent)) == f'failed (exit 2, see {log})'


def test_sigterm_stops_the_runs_with_a_checkpoint(tmp_path):
  """SIGTERM to the sweep: the training checkpoints and stops; the point reads `incomplete`, so
  rerunning the sweep resumes it."""
  config = _sweep_config(tmp_path / 'long.py', '[{"seed": 0}]')
  workdir = tmp_path / 'sweep' / 'seed-0'
  proc = subprocess.Popen(
      [sys.executable, str(ROOT / 'scripts' / 'sweep.py'), '--config',
       f'{config}:norm=none,size=smoke', '--workdir', str(tmp_path / 'sweep'),
       '--config.train.num_steps=1000000', '--config.train.progress_bar=False',
       '--config.wandb.tensorboard=False'],
      cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  try:
    deadline = time.time() + 120
    while not (launch.status(str(workdir)).startswith('running (pid ')
               and 'step ' in launch.status(str(workdir))):  # it has logged a step
      assert proc.poll() is None and time.time() < deadline, proc.communicate()
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130 and 'rerun the same command to resume' in err
  assert launch.status(str(workdir)).startswith('incomplete (step ')
  assert launch.status(str(workdir)).endswith(' of 1000000)')
  assert json.loads((workdir / launch.OUTCOME_FILE).read_text())['stopped'] is True
  assert os.listdir(workdir / 'checkpoints')
  assert 'received signal 15' in (workdir / 'train.log').read_text()
