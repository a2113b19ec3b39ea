"""The README's command line, run as a subprocess from an unrelated directory (the package is
installed): train, resume, stop on SIGTERM, and fail on bad configs with one line and no files."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


CONFIG = ROOT / 'configs' / 'digits.py'


def _cmd(workdir, *extra, arg='norm=batch,size=smoke'):
  return [sys.executable, '-m', 'normrnn.train', f'--config={CONFIG}:{arg}',
          f'--workdir={workdir}', '--config.train.progress_bar=False', *extra]


def _env():
  env = dict(os.environ, WANDB_MODE='disabled', JAX_PLATFORMS='cpu')
  env.pop('PYTHONPATH', None)
  return env


def test_train_command_writes_results_and_resumes(tmp_path):
  out = subprocess.run(_cmd(tmp_path, '--config.train.num_steps=2'), cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'test/acc=' in out.stdout
  first = json.loads((tmp_path / 'results.json').read_text())
  assert first['final_step'] == 2
  out = subprocess.run(_cmd(tmp_path, '--config.train.num_steps=4'), cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / 'results.json').read_text())['final_step'] == 4


@pytest.mark.parametrize('extra, arg, message', [
    (['--config.train.num_step=2'], 'size=smoke',
     '--config.train.num_step: unknown config field (did you mean train.num_steps?); valid '
     'fields of config.train: checkpoint_every_steps, distributed,'),
    (['--config.train.num_devices=2'], 'size=smoke',
     'train.num_devices=2 is not valid: this machine has 1 device(s)'),
    ([], 'size=smoke,gamma=0', 'model.norm.gamma_init=0.0 is not valid; it must be > 0'),
    ([], 'size=smoke,gama=0.1',
     "unknown config argument 'gama'; valid arguments: cell, data, gamma,"),
    (['--config.model.norm.name=bn'], 'size=smoke',
     "model.norm.name='bn' is not valid; choose one of: none, batch,"),
    (['--config.data.dir=/nonexistent', '--config.data.name=mnist10k',
      '--config.data.seq_len=784', '--config.model.norm.max_time_steps=784'], 'size=smoke',
     'missing t10k-images-idx3-ubyte.gz'),
])
def test_bad_config_fails_with_one_line_and_no_files(tmp_path, extra, arg, message):
  workdir = tmp_path / 'run'
  env = dict(_env(), XLA_FLAGS='')  # one device, as on a laptop
  out = subprocess.run(_cmd(workdir, *extra, arg=arg), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error ('), out.stderr[-3000:]
  assert message in lines[0]
  assert not workdir.exists()
  verbose = subprocess.run(_cmd(workdir, *extra, '--verbose', arg=arg), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr
  assert not workdir.exists()


def test_sigterm_writes_a_checkpoint_then_exits(tmp_path):
  proc = subprocess.Popen(_cmd(tmp_path, '--config.train.num_steps=100000',
                               '--config.train.checkpoint_every_steps=100000',
                               '--config.train.eval_every_steps=100000'),
                          cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
    time.sleep(0.5)
  assert metrics.exists(), 'training never started'
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM
  steps = [int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]
  assert steps and max(steps) >= 2  # written at the step where the signal arrived


def test_kill_9_then_same_command_matches_the_uninterrupted_run(tmp_path):
  """kill -9 at an arbitrary step, rerun: training continues from the last checkpoint and ends
  with the params_digest of an uninterrupted run (data and randomness keyed by seed and step)."""
  args = ('--config.train.num_steps=60', '--config.train.checkpoint_every_steps=5',
          '--config.train.log_every_steps=5', '--config.train.eval_every_steps=20')
  full = subprocess.run(_cmd(tmp_path / 'full', *args), cwd=tmp_path, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert full.returncode == 0, full.stderr[-3000:]
  proc = subprocess.Popen(_cmd(tmp_path / 'killed', *args), cwd=tmp_path, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = tmp_path / 'killed' / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    done = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
    if done and max(done) >= 15:
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run finished before it could be killed'
  proc.kill()  # SIGKILL: no handler runs
  proc.wait(timeout=60)
  assert not (tmp_path / 'killed' / 'results.json').exists()
  rerun = subprocess.run(_cmd(tmp_path / 'killed', *args), cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed_at = int(re.search(r'Resuming from the checkpoint at step (\d+)', rerun.stderr)[1])
  assert 15 <= resumed_at < 60
  digest = lambda d: json.loads((tmp_path / d / 'results.json').read_text())['params_digest']
  assert digest('killed') == digest('full')


def test_console_is_quiet_by_default_and_library_logs_on_request(tmp_path):
  """A 20-step digits run: stderr holds the progress bar, one line per evaluation and the final
  summary, and no INFO line of absl/orbax/jax; --library_logs shows them."""
  args = ('--config.train.num_steps=20', '--config.train.eval_every_steps=10',
          '--config.train.progress_bar=True', '--config.model.hidden=16')
  out = subprocess.run(_cmd(tmp_path / 'quiet', *args, arg='norm=batch'), cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [l for l in re.split(r'[\r\n]', out.stderr) if l.strip()]
  info = [l for l in lines if re.match(r'^[IWE]\d{4} ', l) or 'INFO' in l]
  assert not info, info[:5]
  assert [l.split(':')[0] for l in lines if l.startswith('step ')] == ['step 10', 'step 20']
  assert 'val/error' in next(l for l in lines if l.startswith('step 10'))
  bar = re.compile(r'^digits/batch:\s+\d+%\|')  # tqdm's redraws of the progress bar
  other = [l for l in lines if not l.startswith('step ') and not bar.match(l)]
  assert len(other) == 1 and 'results in' in other[0], other  # the final summary
  verbose = subprocess.run(_cmd(tmp_path / 'logs', '--config.train.num_steps=2',
                                '--config.train.eval_every_steps=2', '--library_logs',
                                arg='norm=batch,size=smoke'),
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert any(re.match(r'^I\d{4} ', l) for l in verbose.stderr.splitlines())
