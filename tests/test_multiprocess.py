"""Multi-process data parallelism (train.distributed, normrnn/parallel.py): two processes with two
CPU devices each, on localhost, run one digits job over a 4-device mesh (jax.distributed with a
local coordinator, gloo collectives). The test starts the processes itself (free ports, bounded
timeouts, always killed at the end) and checks that

  * the job ends with the parameters of the same run in one process with 4 devices, up to float
    summation order (the cross-process all-reduce adds in another order);
  * process 0 alone writes the metric files and the console output;
  * a `kill -9` of one process makes the other exit non-zero within the heartbeat timeout, and
    rerunning the same two commands resumes from the last checkpoint and ends with the digest
    of the uninterrupted job.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from normrnn import rundir
from normrnn.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = f'{ROOT / "configs" / "digits.py"}:norm=batch,size=smoke'
PROCESSES, DEVICES_PER_PROCESS = 2, 2
NUM_STEPS, CHECKPOINT_EVERY = 2, 1
HEARTBEAT_S = 5   # train.heartbeat_timeout_s of the jobs: how fast a dead process is noticed
RUN_TIMEOUT_S = 240  # per job, on a loaded 2-core machine
# Small and fast: one validation (at the end), one statistics mode, one re-estimation batch, the
# input term hoisted (its BN moments for all time steps in one all-reduce: the per-time-step
# all-reduces of recurrent BN, a few ms each across processes, dominate a step).
# adam_eps: with recurrent BN the gradient of h_0 is zero up to rounding (BN removes the constant
# W_h h_0), and Adam's default eps would turn that rounding noise into lr-sized steps of random
# sign; a larger eps keeps such steps at the noise level, so that the comparison with one
# process measures summation order, not noise amplification.
OVERRIDES = {
    'train.num_steps': NUM_STEPS, 'train.log_every_steps': CHECKPOINT_EVERY,
    'train.eval_every_steps': NUM_STEPS, 'train.checkpoint_every_steps': CHECKPOINT_EVERY,
    'train.keep_checkpoints': NUM_STEPS // CHECKPOINT_EVERY, 'train.progress_bar': False,
    'train.num_devices': -1,
    'train.heartbeat_timeout_s': HEARTBEAT_S, 'train.init_timeout_s': 60,
    'eval.modes': ('population',), 'eval.select_metric': 'val/error',
    'eval.reestimate_batches': 1, 'eval.val_reestimate_batches': 1,
    'optimizer.adam_eps': 1e-3, 'model.hoist_input': True,
}


def _config():
  config = load_config(CONFIG)
  config.unlock()
  for dotted, value in OVERRIDES.items():
    *parents, leaf = dotted.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  config.lock()
  return config


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _flag(value) -> str:
  return repr(value) if isinstance(value, tuple) else str(value)


class Job:
  """The two processes of one job (the same command but --process_id), logs in files."""

  launches = 0

  def __init__(self, workdir: Path, port: int):
    Job.launches += 1
    self.workdir, self.procs, self.logs = workdir, [], []
    # The three jobs compile the same programs: the later ones load them from the session's
    # compilation cache (conftest.py's JAX_COMPILATION_CACHE_DIR, inherited).
    env = dict(os.environ, JAX_PLATFORMS='cpu', WANDB_MODE='disabled',
               JAX_NUM_CPU_DEVICES=str(DEVICES_PER_PROCESS),
               # The pytest process forces 4 host devices through XLA_FLAGS; these processes
               # set their own count above.
               XLA_FLAGS=' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                                  if 'force_host_platform_device_count' not in f))
    env.pop('PYTHONPATH', None)
    workdir.mkdir(parents=True, exist_ok=True)
    for i in range(PROCESSES):
      cmd = [sys.executable, '-m', 'normrnn.train', f'--config={CONFIG}', f'--workdir={workdir}',
             '--config.train.distributed=True', f'--coordinator_address=localhost:{port}',
             f'--num_processes={PROCESSES}', f'--process_id={i}',
             *(f'--config.{k}={_flag(v)}' for k, v in OVERRIDES.items())]
      name = f'{workdir.name}.launch{Job.launches}.process{i}'
      out = open(workdir.parent / f'{name}.out', 'w+')
      err = open(workdir.parent / f'{name}.err', 'w+')
      self.logs.append((out, err))
      self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=workdir.parent))

  def wait(self, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    for p in self.procs:
      p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    return [p.returncode for p in self.procs]

  def output(self, i: int) -> tuple[str, str]:
    out, err = self.logs[i]
    out.seek(0)
    err.seek(0)
    return out.read(), err.read()

  def describe(self) -> str:
    return '\n'.join(f'--- process {i} (rc {p.returncode}) stderr tail:\n{self.output(i)[1][-2000:]}'
                     for i, p in enumerate(self.procs))

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
    for p in self.procs:
      with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=30)
    for out, err in self.logs:
      out.close()
      err.close()


@contextlib.contextmanager
def job(workdir: Path, port: int):
  j = Job(workdir, port)
  try:
    yield j
  finally:
    j.kill()


def _run(workdir: Path, port: int) -> dict:
  with job(workdir, port) as j:
    codes = j.wait(RUN_TIMEOUT_S)
    assert codes == [0] * PROCESSES, j.describe()
    outputs = [j.output(i) for i in range(PROCESSES)]
  return dict(results=json.loads((workdir / 'results.json').read_text()), outputs=outputs)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return tmp_path_factory.mktemp('multiprocess')


@pytest.fixture(scope='module')
def two_processes(root):
  """The job run once without interruption."""
  return _run(root / 'uninterrupted', _free_port())


@pytest.fixture(scope='module')
def one_process(root):
  """The same run in this process, on its 4 forced CPU devices."""
  from normrnn import trainer  # pylint: disable=g-import-not-at-top
  assert len(jax.devices()) == PROCESSES * DEVICES_PER_PROCESS
  return trainer.train_and_evaluate(_config(), str(root / 'one_process'))


def test_two_processes_equal_one_process_up_to_summation_order(root, two_processes, one_process):
  two = two_processes['results']
  assert two['hardware']['process_count'] == PROCESSES
  assert two['hardware']['device_count'] == PROCESSES * DEVICES_PER_PROCESS
  assert one_process['hardware']['process_count'] == 1
  assert two['final_step'] == one_process['final_step'] == NUM_STEPS
  # The same global batches and BN statistics (of the global batch): the same training up to
  # float rounding. The digests (exact bytes) differ, so compare values: the training losses,
  # the parameters to a tenth of one Adam step (lr 5e-3; statistics of the process-local half
  # batches would move many by about a step), and the final metrics. h_0 is left out: its
  # gradient is zero in exact arithmetic (recurrent BN removes the constant W_h h_0), so it
  # moves by amplified rounding noise only.
  def train_losses(workdir):
    lines = (workdir / 'metrics.jsonl').read_text().splitlines()
    return [json.loads(line)['train/loss'] for line in lines if 'train/loss' in line]
  np.testing.assert_allclose(train_losses(root / 'uninterrupted'),
                             train_losses(root / 'one_process'), rtol=1e-5)
  _, a, _ = rundir.restore(str(root / 'uninterrupted'), which='latest')
  _, b, _ = rundir.restore(str(root / 'one_process'), which='latest')
  differences = {}
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a.params),
                          jax.tree.leaves(b.params)):
    differences[jax.tree_util.keystr(path)] = float(np.abs(np.asarray(x) - np.asarray(y)).max())
  print('max |param difference|, two processes vs one:', differences)
  assert max(v for k, v in differences.items() if 'h0' not in k) < 5e-4, differences
  assert set(two['metrics']) == set(one_process['metrics'])
  for k, v in one_process['metrics'].items():
    if k.endswith('loss'):
      np.testing.assert_allclose(two['metrics'][k], v, rtol=1e-4, err_msg=k)
    else:  # accuracy / error: at most one of the 180 images may flip
      assert abs(two['metrics'][k] - v) <= 1 / 180 + 1e-9, k


def test_only_process_0_writes_metrics_and_console(root, two_processes):
  workdir = root / 'uninterrupted'
  for name in ('config.json', 'metrics.jsonl', 'results.json', 'best.json', 'wall_time.json'):
    assert (workdir / name).is_file(), name
  steps = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  # train/ every CHECKPOINT_EVERY steps, then val/ and the final line at the last step: each once.
  assert steps == list(range(CHECKPOINT_EVERY, NUM_STEPS + 1, CHECKPOINT_EVERY)) + [NUM_STEPS] * 2
  assert len(os.listdir(workdir / 'tensorboard')) == 1  # one event file: one writer
  assert sorted(json.loads((workdir / 'wall_time.json').read_text())) == sorted(
      str(s) for s in range(CHECKPOINT_EVERY, NUM_STEPS + 1, CHECKPOINT_EVERY))
  (out0, err0), (out1, err1) = two_processes['outputs']
  assert 'test/acc=' in out0 and 'test/acc=' not in out1
  assert f'step {NUM_STEPS}: val/error' in err0 and 'val/error' not in err1
  assert 'results in' in err0 and 'results in' not in err1


def test_kill_9_fails_within_the_heartbeat_and_rerun_resumes(root, two_processes):
  workdir, port = root / 'killed', _free_port()
  checkpoints = workdir / 'checkpoints'
  with job(workdir, port) as j:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (checkpoints / str(CHECKPOINT_EVERY)).is_dir():  # mid-run: the first checkpoint
      assert time.monotonic() < deadline and all(p.poll() is None for p in j.procs), j.describe()
      time.sleep(0.02)
    j.procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    survivor = j.procs[0]
    survivor.wait(timeout=HEARTBEAT_S + 60)
    detected = time.monotonic() - killed
    assert survivor.returncode != 0, j.describe()
  print(f'process 0 exited ({survivor.returncode}) {detected:.1f} s after the kill -9 of process 1')
  assert detected < HEARTBEAT_S + 30
  steps = sorted(int(s) for s in os.listdir(checkpoints) if s.isdigit())
  assert steps and steps[-1] < NUM_STEPS and not (workdir / 'results.json').exists()

  resumed = _run(workdir, port)  # the same two commands again
  assert f'Resuming from the checkpoint at step {steps[-1]}' in resumed['outputs'][0][1]
  assert resumed['results']['params_digest'] == two_processes['results']['params_digest']
  assert resumed['results']['metrics'] == two_processes['results']['metrics']


def test_distributed_without_a_coordinator_is_a_usage_error(tmp_path):
  """--config.train.distributed=True with neither flags nor a cluster environment: one line and
  exit 2, before anything is written."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COORDINATOR', 'SLURM_', 'OMPI_', 'PMI_'))}
  env.update(JAX_PLATFORMS='cpu', WANDB_MODE='disabled')
  env.pop('PYTHONPATH', None)
  out = subprocess.run(
      [sys.executable, '-m', 'normrnn.train', f'--config={CONFIG}', f'--workdir={tmp_path / "run"}',
       '--config.train.distributed=True'], env=env, cwd=tmp_path, capture_output=True, text=True,
      timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.startswith('error (usage): --config.train.distributed=True: coordinator_address'
                               ' should be defined. Pass --coordinator_address='), out.stderr
  assert not (tmp_path / 'run').exists()
