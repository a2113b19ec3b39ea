"""The README's command line, run as a subprocess: train, resume, and stop on SIGTERM."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cmd(workdir, *extra):
  return [sys.executable, '-m', 'normrnn.train', '--config=configs/digits.py:norm=batch,size=smoke',
          f'--workdir={workdir}', '--config.train.progress_bar=False', *extra]


def _env():
  return dict(os.environ, WANDB_MODE='disabled', JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))


def test_train_command_writes_results_and_resumes(tmp_path):
  out = subprocess.run(_cmd(tmp_path, '--config.train.num_steps=2'), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'test/acc=' in out.stdout
  first = json.loads((tmp_path / 'results.json').read_text())
  assert first['final_step'] == 2
  out = subprocess.run(_cmd(tmp_path, '--config.train.num_steps=4'), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / 'results.json').read_text())['final_step'] == 4


def test_misspelt_override_fails_with_the_valid_fields(tmp_path):
  out = subprocess.run(_cmd(tmp_path, '--config.train.num_step=2'), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'num_step' in out.stderr and 'num_steps' in out.stderr  # ml_collections "did you mean"


def test_sigterm_writes_a_checkpoint_then_exits(tmp_path):
  proc = subprocess.Popen(_cmd(tmp_path, '--config.train.num_steps=100000',
                               '--config.train.checkpoint_every_steps=100000',
                               '--config.train.eval_every_steps=100000'),
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
  full = subprocess.run(_cmd(tmp_path / 'full', *args), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert full.returncode == 0, full.stderr[-3000:]
  proc = subprocess.Popen(_cmd(tmp_path / 'killed', *args), cwd=ROOT, env=_env(),
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
  rerun = subprocess.run(_cmd(tmp_path / 'killed', *args), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed_at = int(re.search(r'Resuming from the checkpoint at step (\d+)', rerun.stderr)[1])
  assert 15 <= resumed_at < 60
  digest = lambda d: json.loads((tmp_path / d / 'results.json').read_text())['params_digest']
  assert digest('killed') == digest('full')
