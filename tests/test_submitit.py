"""Sweeps through submitit (normrnn.launch_submitit; scripts/sweep.py --executor ...).

- submitit's local executor, end to end (scripts/sweep.py in a subprocess, configs/digits.py at
  size=smoke): a 4-point sweep in which one point is preempted (SIGUSR2 to its job, as SLURM
  sends it) and requeued from its checkpoint within the same sweep, and another point's training
  is killed (kill -9) and resumed by rerunning the sweep; every point's results.json (test
  metrics, params digest) and the sweep's table equal those of the local process pool.
- SLURM without a cluster: submitit's own mocked sbatch/sacct (submitit.core.test_core, shipped
  with submitit) for the sbatch script the --slurm.* flags produce, the job records and the status
  command; then one array task's pickled job is run by submitit's job entry point
  (`python -m submitit.core._submit`) with SLURM's environment variables, and trains its point.
"""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from submitit.core.test_core import MockedSubprocess
from submitit.slurm.slurm import SlurmJob

from normrnn import launch, launch_submitit
from normrnn.config import ConfigError
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / 'configs' / 'digits.py'
SWEEP = ROOT / 'scripts' / 'sweep.py'

sweep = load_script('scripts/sweep.py')

# Two points long enough to be caught mid-run, two of the smoke size's 4 steps. With a checkpoint
# every 2 steps, the LONG steps of a point last about 3 s (more on loaded cores); `_interrupt`
# catches a point within milliseconds of its first checkpoint.
LONG = 60
POINTS = (f'[{{"seed": 0, "train.num_steps": {LONG}}}, {{"seed": 1, "train.num_steps": {LONG}}}, '
          '{"seed": 2}, {"seed": 3}]')
PREEMPTED, KILLED = f'seed-0_num_steps-{LONG}', f'seed-1_num_steps-{LONG}'
FLAGS = ['--config.train.log_every_steps=1', '--config.train.checkpoint_every_steps=2',
         '--config.train.eval_every_steps=1000', '--config.train.progress_bar=False',
         '--config.wandb.tensorboard=False']


def _sweep_config(path: Path) -> str:
  path.write_text(
      'from normrnn.config import load_config_module\n\n'
      f'digits = load_config_module({str(DIGITS)!r})\n\n\n'
      'def get_config(arg=None):\n  return digits.get_config(arg)\n\n\n'
      f'def get_sweep(arg=None):\n  return {POINTS}\n')
  return f'{path}:norm=none,size=smoke'


@pytest.fixture(scope='module')
def env():
  # The runs reuse the session's compilations (conftest.py's JAX_COMPILATION_CACHE_DIR).
  return dict(os.environ, WANDB_MODE='disabled', JAX_PLATFORMS='cpu')


def _start_sweep(config, root, env, *args) -> subprocess.Popen:
  # A session of its own, so that `_end` can stop everything the sweep started.
  return subprocess.Popen([sys.executable, str(SWEEP), '--config', config, '--workdir', str(root),
                           '--parallel', '2', *args, *FLAGS], cwd=root.parent, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
  """Kills whatever is left of a sweep: the script, job controllers, jobs, trainings."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  proc.wait()


def _end(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
  """The sweep's output once it has ended (killed after `timeout` seconds)."""
  try:
    return proc.communicate(timeout=timeout)
  finally:
    _kill(proc)


def _run_sweep(config, root, env, *args) -> tuple[int, str, str]:
  proc = _start_sweep(config, root, env, *args)
  out, err = _end(proc)
  return proc.returncode, out, err


def _metric_column(stdout: str) -> dict:
  """{point: key test metric} from the sweep's final table."""
  rows = re.findall(r'^\| (\S+) +\| [^|]+ \| (\S+) \|$', stdout, flags=re.M)
  return {name: metric for name, metric in rows if name != 'point'}


def _trainer_pid(workdir: Path) -> int | None:
  """The training process of a point, once it has written a checkpoint."""
  checkpoints = workdir / 'checkpoints'
  if not (checkpoints.is_dir() and any(p.isdigit() for p in os.listdir(checkpoints))):
    return None
  return launch.running_pid(str(workdir))


def _parent(pid: int) -> int:
  with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
    return int(f.read().rsplit(')', 1)[1].split()[1])


def _proc_status(pid: int) -> dict:
  with open(f'/proc/{pid}/status', encoding='utf-8') as f:
    return {k: v.strip() for k, v in (line.split(':', 1) for line in f if ':' in line)}


def _stopped(pid: int) -> bool:
  return _proc_status(pid)['State'].startswith('T')


def _term_pending(pid: int) -> bool:
  status = _proc_status(pid)
  return bool((int(status['ShdPnd'], 16) | int(status['SigPnd'], 16)) & (1 << (signal.SIGTERM - 1)))


def _interrupt(actions: dict, deadline: float) -> None:
  """Waits for each point's first checkpoint, then 'preempt' (its training frozen with SIGSTOP,
  SIGUSR2 to its submitit job process as SLURM sends it before a time limit or on preemption,
  SIGCONT once the job has passed SIGTERM on to the training) or 'kill' (kill -9 of the
  training). The points are watched together: each is caught while it still trains."""
  actions = dict(actions)
  while actions:
    assert time.time() < deadline, f'never caught running: {list(actions)}'
    for workdir, action in list(actions.items()):
      pid = _trainer_pid(workdir)
      if pid is None:
        continue
      del actions[workdir]
      if action == 'kill':
        os.kill(pid, signal.SIGKILL)
        continue
      os.kill(pid, signal.SIGSTOP)
      while not _stopped(pid):  # else the SIGTERM below could be taken before the stop
        time.sleep(0.001)
      os.kill(_parent(pid), signal.SIGUSR2)
      while not _term_pending(pid):
        assert time.time() < deadline, 'the job did not stop its training'
        time.sleep(0.01)
      os.kill(pid, signal.SIGCONT)
    time.sleep(0.01)


@pytest.mark.slow
def test_submitit_local_sweep_preempt_kill_and_same_table(tmp_path, capsys, env):
  config = _sweep_config(tmp_path / 'tiny_sweep.py')
  code, pool, err = _run_sweep(config, tmp_path / 'pool', env)
  assert code == 0, pool[-2000:] + err[-3000:]

  root = tmp_path / 'submitit_sweep'
  proc = _start_sweep(config, root, env, '--executor', 'submitit_local')
  try:
    _interrupt({root / PREEMPTED: 'preempt', root / KILLED: 'kill'},
               deadline=time.time() + 240)
  except BaseException:
    _kill(proc)
    raise
  out, err = _end(proc)
  assert proc.returncode == 1, out[-2000:] + err[-3000:]  # the killed point failed
  assert f'| {KILLED} | FAILED (exit -9) |' in out
  preempted = root / PREEMPTED
  record = json.loads((preempted / launch.SCHEDULER_FILE).read_text())
  assert record['executor'] == 'submitit_local' and record['stdout'].startswith(str(root))
  job_log = Path(record['stdout']).read_text() + Path(record['stderr']).read_text()
  assert 'this job is preempted' in job_log and 'Requeued job' in job_log  # submitit's words
  log = (preempted / 'train.log').read_text()
  assert 'received signal 15: checkpoint written' in log
  assert 'Resuming from the checkpoint at step' in log
  assert launch.status(str(preempted)) == 'finished'

  killed = root / KILLED
  assert launch.status(str(killed)) == f'failed (exit -9, see {killed / "train.log"})'
  code, again, err = _run_sweep(config, root, env, '--executor', 'submitit_local')
  assert code == 0, again[-2000:] + err[-3000:]
  assert '4 point(s), 1 to run' in again and again.count('skipped (finished)') == 3
  assert 'Resuming from the checkpoint at step' in (killed / 'train.log').read_text()

  # Same numbers as the local pool: every point's results and the sweep's table.
  for point in os.listdir(tmp_path / 'pool'):
    ours = json.loads((root / point / 'results.json').read_text())
    theirs = json.loads((tmp_path / 'pool' / point / 'results.json').read_text())
    assert ours['params_digest'] == theirs['params_digest'], point
    assert ours['metrics'] == theirs['metrics'], point
    assert ours['final_step'] == theirs['final_step']
  assert _metric_column(again) == _metric_column(pool)
  assert len(_metric_column(pool)) == 4

  assert sweep.main(['--config', config, '--workdir', str(root), '--status', *FLAGS]) == 0
  status = capsys.readouterr().out
  assert '4 point(s): 4 finished' in status
  assert f'| finished | {killed / "train.log"} (job log {root / "submitit"}' in status


def _slurm_flags(root: Path, config: str, *extra) -> list[str]:
  return ['--config', config, '--workdir', str(root), '--executor', 'slurm', '--parallel', '3',
          '--slurm.partition=gpu', '--slurm.timeout_min=90', '--slurm.gpus_per_node=1',
          '--slurm.cpus_per_task=4', '--slurm.mem=16G', '--slurm.account=lab', '--slurm.qos=high',
          '--slurm.setup=source venv/bin/activate', '--slurm.additional=mail-type=END', *extra,
          *FLAGS]


def test_slurm_sbatch_records_status_and_a_job_that_trains(tmp_path, capsys, env):
  config = _sweep_config(tmp_path / 'tiny_sweep.py')
  root = tmp_path / 'slurm_sweep'
  (tmp_path / 'options.json').write_text(json.dumps({'partition': 'cpu', 'constraint': 'v100'}))
  mock = MockedSubprocess(known_cmds=['srun', 'sacct'])
  try:
    with mock.context():
      assert sweep.main(_slurm_flags(root, config, '--dry-run', '--slurm_config',
                                     str(tmp_path / 'options.json'))) == 0
      dry = capsys.readouterr().out
      assert not (root / 'seed-2').exists()  # nothing submitted
      assert sweep.main(_slurm_flags(root, config, '--detach')) == 0
      out = capsys.readouterr().out
      # submitit's sbatch file: the flags' resources, one array of 4 tasks, 3 at a time.
      scripts = glob.glob(str(root / 'submitit' / '*' / '*_submission.sh'))
      sbatch = Path(scripts[0]).read_text()
      for line in ('--partition=gpu', '--time=90', '--gpus-per-node=1', '--cpus-per-task=4',
                   '--mem=16G', '--account=lab', '--qos=high', '--array=0-3%3',
                   '--signal=USR2@120', '--mail-type=END', '--job-name=normrnn-slurm_sweep',
                   '--nodes=1', '--ntasks-per-node=1'):
        assert f'#SBATCH {line}\n' in sbatch, line
      assert 'source venv/bin/activate\n' in sbatch and '-m submitit.core._submit' in sbatch
      assert f'--output={root}/submitit/%A_%a/%A_%a_0_log.out' in sbatch
      # --dry-run printed the same script (the file's flags first, the command-line flags win).
      assert '#SBATCH --constraint=v100' in dry and '#SBATCH --partition=gpu' in dry
      assert '#SBATCH --array=0-3%3' in dry

      jobs = launch.sweep_jobs(config, str(root), FLAGS)
      ids = [json.loads(Path(j.workdir, launch.SCHEDULER_FILE).read_text())['job_id']
             for j in jobs]
      assert ids == ['12_0', '12_1', '12_2', '12_3'] and 'submitted 4 point(s)' in out
      assert f'--workdir={jobs[2].workdir}' in json.loads(
          Path(jobs[2].workdir, launch.SCHEDULER_FILE).read_text())['command']

      mock.job_sacct['12'] = ('JobID|State\n12_0|RUNNING\n12_1|PENDING\n12_2|TIMEOUT\n'
                              '12_3|CANCELLED by 1000')
      states = launch.statuses(jobs)
      logs = [str(root / 'submitit' / i / f'{i}_0_log') for i in ids]
      assert states == [
          'running (slurm job 12_0, nothing logged yet)',
          'pending (slurm job 12_1 PENDING)',
          f'failed (slurm job 12_2 TIMEOUT, see {logs[2]}.err)',
          f'failed (slurm job 12_3 CANCELLED, see {logs[3]}.err)']
      assert [launch.needs_run(s) for s in states] == [False, False, True, True]
      assert sweep.main(['--config', config, '--workdir', str(root), '--status', *FLAGS]) == 0
      table = capsys.readouterr().out
      assert f'| {states[1]} | {jobs[1].log} (job log {logs[1]}.out) |' in table
      assert '4 point(s): 1 running, 1 pending, 2 failed' in table

      # A rerun submits only the failed points (a new array), not the queued or running ones.
      assert sweep.main(_slurm_flags(root, config, '--detach')) == 0
      capsys.readouterr()
      ids = [json.loads(Path(j.workdir, launch.SCHEDULER_FILE).read_text())['job_id']
             for j in jobs]
      assert ids == ['12_0', '12_1', '13_0', '13_1']
  finally:
    SlurmJob.watcher.clear()

  # What a SLURM node runs for array task 13_1 (point seed-3): submitit's entry point, which
  # loads the pickled TrainPoint and trains the point.
  job_env = dict(env, SUBMITIT_EXECUTOR='slurm', SLURM_JOB_ID='14', SLURM_ARRAY_JOB_ID='13',
                 SLURM_ARRAY_TASK_ID='1')
  ran = subprocess.run([sys.executable, '-m', 'submitit.core._submit', str(root / 'submitit' /
                                                                          '%j')],
                       env=job_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
  assert launch.status(jobs[3]) == 'finished'
  assert 'Job completed successfully' in ran.stdout  # submitit's log
  assert json.loads(Path(jobs[3].workdir, launch.OUTCOME_FILE).read_text())['exit_code'] == 0
  train_log = (Path(jobs[3].workdir) / 'train.log').read_text()
  assert train_log.startswith(f'$ {sys.executable} -m normrnn.train')


def test_options_from_flags_and_file(tmp_path):
  parser = sweep.parse_args
  args, _ = parser(['--config', 'c.py', '--workdir', 'w', '--executor', 'slurm',
                    '--slurm.timeout_min=30', '--slurm.additional=mail-user=a@b.c'])
  options = launch_submitit.options_from_args(args)
  assert options.timeout_min == 30 and options.additional == {'mail-user': 'a@b.c'}
  assert options.signal_delay_s == 120 and options.partition is None
  (tmp_path / 'bad.json').write_text(json.dumps({'partiton': 'gpu'}))
  with pytest.raises(ConfigError, match='unknown SLURM option.s. partiton; valid options: '
                                        'partition, timeout_min'):
    launch_submitit.load_options(str(tmp_path / 'bad.json'))
  with pytest.raises(ConfigError, match='slurm.timeout_min=.90. is not valid; expected an '
                                        'integer'):
    launch_submitit.load_options(None, {'timeout_min': '90'})
  args, _ = parser(['--config', 'c.py', '--workdir', 'w', '--slurm.partition=gpu'])
  with pytest.raises(ConfigError, match='apply to --executor submitit_local or slurm'):
    launch_submitit.from_args(args, str(tmp_path), 'x', None)
  args, _ = parser(['--config', 'c.py', '--workdir', 'w', '--executor', 'slurm'])
  if launch_submitit.shutil.which('srun') is None:  # this machine: no SLURM
    with pytest.raises(ConfigError, match="needs SLURM's srun and sbatch on PATH"):
      launch_submitit.from_args(args, str(tmp_path), 'x', None)
