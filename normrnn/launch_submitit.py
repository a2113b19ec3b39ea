"""Sweep points and paper-table rows as submitit jobs: on SLURM, or with submitit's local executor.

  from normrnn import launch, launch_submitit
  jobs = launch.sweep_jobs('configs/pmnist.py:size=paper', 'runs/pmnist_gamma')
  options = launch_submitit.SlurmOptions(partition='gpu', timeout_min=240, gpus_per_node=1)
  executor = launch_submitit.SubmititExecutor('slurm', 'runs/pmnist_gamma/submitit/%j',
                                              parallel=8, options=options)
  outcome = executor.run(jobs)  # {name: (exit code, seconds)}, like launch.LocalLauncher

submitit (https://github.com/facebookincubator/submitit) is the job engine: it writes the sbatch
file, submits, requeues and reports job states; this module only says what a job runs and where
its records go.

- One job per point. On SLURM the points of one `run` are one job array
  (`#SBATCH --array=0-N%parallel`); with submitit's local executor they are processes of this
  machine, `parallel` at a time. A job's function, `TrainPoint`, runs the point's training
  command (`Job.command`: `python -m normrnn.train ... --workdir=<point>`) as a subprocess with
  its output appended to <workdir>/train.log (it is `launch.LocalLauncher.run_one`, so the pid
  file and launch.json are those of the local pool). submitit's own logs (the job's stdout and
  stderr: start, signals, requeues, tracebacks) go to <folder>/<job id>_0_log.{out,err}; the
  folder is <sweep root>/submitit/%j in the scripts.
- <workdir>/submitit.json records the job at submission (executor, job id, log paths, command).
  `launch.status` then asks the scheduler: `pending (slurm job J PENDING)`,
  `running (slurm job J, step S of N)`, `failed (slurm job J TIMEOUT, see L)`; where the
  scheduler cannot be asked (no sacct on this machine) it reads the workdir as for the local pool.
  Pending and running points are not submitted again; finished ones are skipped.
- Preemption and time limits: SLURM sends SIGUSR2 (`signal_delay_s` before the time limit, and on
  preemption where the cluster sends the user signal); submitit's handler calls
  `TrainPoint.checkpoint`, which sends SIGTERM to the training (it finishes its step, writes a
  checkpoint and exits 143) and returns the same point, which submitit requeues; the requeued job
  resumes from the checkpoint. The training process blocks SIGUSR2 itself: SLURM signals every
  process of a job step, and the trainer would otherwise die of it without a checkpoint. A
  SIGTERM that reaches the training directly (SLURM's preemption or `scancel`) also ends in a
  checkpoint; the job then waits `PREEMPT_WAIT_S` for the user signal that requeues a preempted
  job, and otherwise ends, so that a rerun of the sweep resumes the point.

Only submitit's local executor ran here (tests/test_submitit.py); the SLURM path is tested with
submitit's own mocked sbatch/sacct, not on a cluster.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from normrnn import launch
from normrnn.config import ConfigError
from normrnn.jsonio import write_json_atomic
from normrnn.rundir import read_json

EXECUTORS = ('local', 'submitit_local', 'slurm')  # --executor: the pool, or a submitit cluster
CLUSTERS = {'submitit_local': 'local', 'slurm': 'slurm'}  # --executor -> submitit's cluster name
PREEMPT_WAIT_S = 60  # after a direct SIGTERM: how long a SLURM job waits for the requeue signal

# SLURM job states (sacct) by what they mean for a point.
PENDING_STATES = frozenset({'PENDING', 'REQUEUED', 'REQUEUE_FED', 'REQUEUE_HOLD', 'RESV_DEL_HOLD',
                            'CONFIGURING', 'SUSPENDED', 'STOPPED'})
RUNNING_STATES = frozenset({'RUNNING', 'COMPLETING', 'SIGNALING', 'STAGE_OUT', 'RESIZING'})
ENDED_STATES = frozenset({'COMPLETED', 'ENDED'})  # 'ENDED': a local job whose process is gone


# --- resources -----------------------------------------------------------------------------------

@dataclasses.dataclass
class SlurmOptions:
  """The resources of every job of a run (one sweep point or table row per job).

  On the command line `--slurm.<field>=VALUE`, and/or `--slurm_config FILE.json` holding a JSON
  object of these fields (the flags win). `timeout_min`, `signal_delay_s`, `max_num_timeout`,
  `gpus_per_node` and `python` apply to submitit's local executor too.
  """
  partition: str | None = None
  timeout_min: int = 24 * 60
  gpus_per_node: int | None = None
  cpus_per_task: int | None = None
  mem: str | None = None
  account: str | None = None
  qos: str | None = None
  constraint: str | None = None
  job_name: str | None = None
  signal_delay_s: int = 120
  max_num_timeout: int = 3
  setup: list = dataclasses.field(default_factory=list)
  additional: dict = dataclasses.field(default_factory=dict)
  python: str | None = None

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      kind = _KINDS[field.name]
      ok = (value is None and field.default is None) or (
          isinstance(value, kind) and not isinstance(value, bool))
      if kind is list:
        ok = ok and all(isinstance(v, str) for v in value)
      if not ok:
        raise ConfigError(f'slurm.{field.name}={value!r} is not valid; expected '
                          f'{_KIND_NAMES[kind]}')
    for name in ('timeout_min', 'signal_delay_s', 'gpus_per_node', 'cpus_per_task'):
      value = getattr(self, name)
      if value is not None and value < (1 if name in ('timeout_min', 'cpus_per_task') else 0):
        raise ConfigError(f'slurm.{name}={value} is not valid; must be >= '
                          f'{1 if name in ("timeout_min", "cpus_per_task") else 0}')
    if self.max_num_timeout < 0:
      raise ConfigError(f'slurm.max_num_timeout={self.max_num_timeout} is not valid; must be >= 0')


_KINDS = dict(partition=str, timeout_min=int, gpus_per_node=int, cpus_per_task=int, mem=str,
              account=str, qos=str, constraint=str, job_name=str, signal_delay_s=int,
              max_num_timeout=int, setup=list, additional=dict, python=str)
_KIND_NAMES = {str: 'a string', int: 'an integer', list: 'a list of strings',
               dict: 'an object {"sbatch-option": value}'}
OPTION_HELP = dict(
    partition='#SBATCH --partition',
    timeout_min='time limit of each job in minutes (default 1440); on reaching it minus '
                'signal_delay_s the job checkpoints and is requeued, up to max_num_timeout times',
    gpus_per_node='#SBATCH --gpus-per-node (submitit_local: GPUs 0..N-1 visible to each job; '
                  'none by default)',
    cpus_per_task='#SBATCH --cpus-per-task',
    mem='#SBATCH --mem in SLURM syntax, e.g. 16G',
    account='#SBATCH --account',
    qos='#SBATCH --qos',
    constraint='#SBATCH --constraint',
    job_name='#SBATCH --job-name (default normrnn-<sweep or table name>)',
    signal_delay_s='seconds before the time limit at which SIGUSR2 asks for a checkpoint '
                   '(default 120)',
    max_num_timeout='requeues after a time limit (default 3; preemptions are not counted)',
    setup='a shell line run in the sbatch script before the job, e.g. "source venv/bin/activate" '
          '(repeatable)',
    additional='a further sbatch option as KEY=VALUE, e.g. mail-type=END (repeatable)',
    python='the Python interpreter of the jobs (a path; default: this one)',
)


def load_options(path: str | None = None, flags: dict | None = None) -> SlurmOptions:
  """SlurmOptions from a JSON file (a .json object of the fields) and flag values (which win).

  Raises:
    ConfigError: an unknown field, a wrong type, an unreadable file.
  """
  values = {}
  if path:
    try:
      with open(path, encoding='utf-8') as f:
        values = json.load(f)
    except (OSError, ValueError) as err:
      raise ConfigError(f'--slurm_config {path}: {err}') from err
    if not isinstance(values, dict):
      raise ConfigError(f'--slurm_config {path}: expected a JSON object of SLURM options')
  values.update(flags or {})
  valid = [field.name for field in dataclasses.fields(SlurmOptions)]
  unknown = sorted(set(values) - set(valid))
  if unknown:
    raise ConfigError(f'unknown SLURM option(s) {", ".join(unknown)}; valid options: '
                      f'{", ".join(valid)}')
  return SlurmOptions(**values)


# --- what a job runs -----------------------------------------------------------------------------

def preempt_signal() -> signal.Signals:
  """The signal submitit handles as "checkpoint and requeue" (SIGUSR2 unless
  SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
  return getattr(signal, 'SIG' + submitit.JobEnvironment.USR_SIG)


class TrainingStopped(RuntimeError):
  """The training of a job did not finish (an error, or a stop without a requeue); the message
  names the exit code and the log."""


class _JobLauncher(launch.LocalLauncher):
  """`LocalLauncher.run_one` inside a scheduler's job. The pid file also names this host: the
  sweep's status may be read on another machine (a login node), where this pid means nothing."""

  def pid_text(self, proc) -> str:
    return f'{proc.pid}\n{socket.gethostname()}\n'

  def kill(self) -> None:
    with self._lock:
      for proc in self._running:
        if proc.poll() is None:
          proc.kill()


class TrainPoint(submitit.helpers.Checkpointable):
  """The function of one submitit job: trains `job` to its end (or to a requeue).

  Returns {'exit_code': 0, 'seconds': S} when the training finished; raises TrainingStopped
  otherwise (the scheduler then records the job as failed; launch.json in the workdir holds the
  training's exit code). `checkpoint` (called by submitit on the preemption / time-limit signal)
  stops the training with SIGTERM, waits up to `stop_timeout_s` for its checkpoint, and returns a
  fresh TrainPoint of the same job for submitit to requeue.
  """

  def __init__(self, job: launch.Job, python: str = sys.executable,
               stop_timeout_s: float = 90.0):
    self.job = job
    self.python = python
    self.stop_timeout_s = stop_timeout_s
    self._launcher = None
    self._worker = None

  def __getstate__(self):  # the launcher and its thread stay in this process
    return {**self.__dict__, '_launcher': None, '_worker': None}

  def __call__(self) -> dict:
    launcher = _JobLauncher(python=self.python)
    outcome = {}
    blocked = preempt_signal()

    def train():
      # Blocked in this thread, so also in the training process it starts (the mask is
      # inherited): only this job's handler, in the main thread, acts on the signal.
      signal.pthread_sigmask(signal.SIG_BLOCK, {blocked})
      try:
        outcome['result'] = launcher.run_one(self.job)
      except BaseException as err:  # pylint: disable=broad-except (re-raised in the main thread)
        outcome['error'] = err

    # The training is waited for in a thread so that the main thread, where submitit's signal
    # handler runs, never blocks inside Popen.wait (whose lock the handler would need).
    self._launcher, self._worker = launcher, threading.Thread(target=train, daemon=True)
    self._worker.start()
    try:
      while self._worker.is_alive():
        self._worker.join(0.5)
    except KeyboardInterrupt:  # the local executor's cancel: stop the training with a checkpoint
      self._stop()
      raise
    if 'error' in outcome:
      raise outcome['error']
    code, seconds = outcome['result']
    if code == 0:
      return dict(exit_code=0, seconds=seconds)
    if code in launch.STOPPED_CODES and os.environ.get('SUBMITIT_EXECUTOR') == 'slurm':
      # SLURM's SIGTERM reached the training (preemption, scancel): it wrote a checkpoint. A
      # preemption's SIGUSR2 may follow; submitit's handler then requeues this job from here.
      time.sleep(PREEMPT_WAIT_S)
    if code in launch.STOPPED_CODES:
      raise TrainingStopped(f'{self.job.name}: the training was stopped by a signal (exit '
                            f'{code}) and wrote a checkpoint; rerun the sweep to resume it; '
                            f'log: {self.job.log}')
    raise TrainingStopped(f'{self.job.name}: the training failed (exit {code}); see '
                          f'{self.job.log}')

  def _stop(self) -> None:
    if self._launcher is None:
      return
    self._launcher.stop()  # SIGTERM: the training finishes its step, checkpoints and exits
    self._worker.join(self.stop_timeout_s)
    if self._worker.is_alive():  # no checkpoint in time: the last periodic one is resumed
      self._launcher.kill()
      self._worker.join(10)

  def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
    del args, kwargs
    self._stop()
    return submitit.helpers.DelayedSubmission(
        TrainPoint(self.job, self.python, self.stop_timeout_s))


# --- where a job stands --------------------------------------------------------------------------

def _key(record: dict) -> tuple[str, str]:
  return record.get('cluster', ''), str(record.get('job_id'))


def job_states(records) -> dict:
  """{(cluster, job id): the scheduler's state} for the jobs of `records` (submitit.json
  contents): sacct's state on SLURM (one sacct call for all; 'UNKNOWN' where sacct is not
  available), 'RUNNING' or 'ENDED' for a local job (its controller process on this host)."""
  states = {}
  slurm_ids = sorted({str(r['job_id']) for r in records if r.get('cluster') == 'slurm'})
  if slurm_ids:
    if shutil.which('sacct') is None:
      states.update({('slurm', j): 'UNKNOWN' for j in slurm_ids})
    else:
      watcher = SlurmInfoWatcher()
      for job_id in slurm_ids:
        watcher.register_job(job_id)
      watcher.update()
      for job_id in slurm_ids:
        states['slurm', job_id] = watcher.get_state(job_id, mode='cache').split()[0].upper()
  for record in records:
    if record.get('cluster') == 'local':
      states[_key(record)] = _local_state(record)
  return states


def _local_state(record: dict) -> str:
  if record.get('host') != socket.gethostname():
    return 'UNKNOWN'
  if os.path.exists(record.get('result', '')):
    return 'ENDED'
  try:
    os.kill(int(record['job_id']), 0)  # the job's controller process
  except (OSError, ValueError):
    return 'ENDED'
  return 'RUNNING'


def scheduled_status(workdir: str, base: str, record: dict, states: dict | None = None) -> str:
  """`launch.status` of a workdir whose last launch was the scheduler's job `record`, given the
  workdir's own status `base` (not 'finished')."""
  if states is None or _key(record) not in states:
    states = job_states([record])
  state = states.get(_key(record), 'UNKNOWN')
  label = f'{record.get("executor")} job {record.get("job_id")}'
  if state in PENDING_STATES:
    return f'pending ({label} {state})'
  if state in RUNNING_STATES:
    return f'running ({label}, {launch.progress(workdir)})'
  if state in ENDED_STATES or state == 'UNKNOWN' or base.startswith(('failed', 'running')):
    return base  # what the training left in the workdir says more
  return f'failed ({label} {state}, see {record.get("stderr")})'


def _record(executor: str, cluster: str, job: launch.Job, sjob, python: str) -> dict:
  paths = sjob.paths
  record = dict(executor=executor, cluster=cluster, job_id=str(sjob.job_id),
                folder=str(paths.folder), stdout=str(paths.stdout), stderr=str(paths.stderr),
                result=str(paths.result_pickle), host=socket.gethostname(),
                submitted=datetime.datetime.now().isoformat(timespec='seconds'),
                command=shlex.join(job.command(python)))
  write_json_atomic(os.path.join(job.workdir, launch.SCHEDULER_FILE), record)
  return record


# --- the executor --------------------------------------------------------------------------------

class SubmititExecutor(launch.Executor):
  """Runs jobs as submitit jobs and waits for them (see the module docstring).

  Args:
    cluster: 'slurm' or 'local' (submitit's local executor: processes of this machine).
    folder: submitit's folder for job files and logs; '%j' is replaced by the job id.
    parallel: jobs at a time (the array's `%N` on SLURM; None: submitit's 256 there, 1 locally).
    options: SlurmOptions (resources, time limit, requeues, interpreter).
    wait: False: `run` submits and returns {} at once (the jobs go on without this process).
    name: default job name (`normrnn-<name>`).
    poll_s: seconds between two looks at the jobs (default 0.5 locally, 15 on SLURM).
  """

  def __init__(self, cluster: str, folder: str, *, parallel: int | None = None,
               options: SlurmOptions | None = None, wait: bool = True, name: str = 'sweep',
               poll_s: float | None = None):
    if cluster not in ('local', 'slurm'):
      raise ValueError(f"cluster must be 'local' or 'slurm', got {cluster!r}")
    if parallel is not None and parallel < 1:
      raise ValueError(f'parallel must be >= 1, got {parallel}')
    self.cluster = cluster
    self.executor_name = 'slurm' if cluster == 'slurm' else 'submitit_local'
    self.folder = os.path.abspath(folder)
    self.parallel = parallel
    self.options = options or SlurmOptions()
    self.wait = wait
    self.name = name
    self.python = self.options.python or sys.executable
    self.poll_s = poll_s if poll_s is not None else (0.5 if cluster == 'local' else 15.0)
    if cluster == 'slurm':
      self.on_interrupt = (
          'this command stopped waiting; the submitted SLURM jobs go on (`scancel <job id>` '
          'stops one: its training checkpoints on SIGTERM). Rerunning the same command skips '
          'the pending and running points and resubmits the others.')

  def describe(self) -> str:
    at_a_time = (f'{self.parallel} at a time' if self.parallel else 'as many at a time as '
                 'SLURM allows') if self.cluster == 'slurm' else f'{self.parallel or 1} at a time'
    kind = 'SLURM jobs (one array)' if self.cluster == 'slurm' else "submitit's local jobs"
    return f'{kind}, {at_a_time}; job logs in {self.folder.replace("%j", "<job id>")}'

  def make_executor(self) -> submitit.Executor:
    """The configured submitit executor (SlurmExecutor needs SLURM's srun on PATH)."""
    o = self.options
    python = shlex.quote(self.python)
    if self.cluster == 'slurm':
      executor = submitit.SlurmExecutor(self.folder, max_num_timeout=o.max_num_timeout,
                                        python=python)
      params = dict(job_name=o.job_name or f'normrnn-{self.name}', time=o.timeout_min, nodes=1,
                    ntasks_per_node=1, signal_delay_s=o.signal_delay_s, partition=o.partition,
                    gpus_per_node=o.gpus_per_node, cpus_per_task=o.cpus_per_task, mem=o.mem,
                    account=o.account, qos=o.qos, constraint=o.constraint,
                    setup=list(o.setup) or None, additional_parameters=dict(o.additional) or None,
                    array_parallelism=self.parallel)
    else:
      executor = submitit.LocalExecutor(self.folder, max_num_timeout=o.max_num_timeout,
                                        python=python)
      params = dict(timeout_min=o.timeout_min, signal_delay_s=o.signal_delay_s, nodes=1,
                    tasks_per_node=1, gpus_per_node=o.gpus_per_node or 0)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor

  def sbatch_script(self, num_jobs: int) -> str:
    """The sbatch file `run` would submit for `num_jobs` points (an array if more than one); ''
    for the local executor. Built by submitit itself, without submitting anything."""
    executor = self.make_executor()
    if self.cluster != 'slurm':
      return ''
    if num_jobs > 1:
      executor.parameters['map_count'] = num_jobs  # what submitit sets for a job array
    return executor._make_submission_file_text(  # pylint: disable=protected-access
        executor._submitit_command_str, 'dry-run')  # pylint: disable=protected-access

  def submit(self, jobs, executor: submitit.Executor | None = None) -> list:
    """Submits one submitit job per job (a job array on SLURM); returns the submitit jobs and
    writes <workdir>/submitit.json for each."""
    jobs = list(jobs)
    executor = executor or self.make_executor()
    stop_timeout = max(self.options.signal_delay_s - 30, self.options.signal_delay_s / 2)
    points = [TrainPoint(job, self.python, stop_timeout) for job in jobs]
    for job in jobs:
      os.makedirs(job.workdir, exist_ok=True)
      outcome = os.path.join(job.workdir, launch.OUTCOME_FILE)
      if os.path.exists(outcome):  # from an earlier launch: this job writes its own
        os.remove(outcome)
    if self.cluster == 'slurm' and len(points) > 1:
      with executor.batch():
        submitted = [executor.submit(point) for point in points]
    else:
      submitted = [executor.submit(point) for point in points]
    for job, sjob in zip(jobs, submitted):
      _record(self.executor_name, self.cluster, job, sjob, self.python)
    return submitted

  def _outcome(self, job: launch.Job, sjob, started: float) -> tuple[int, float]:
    """(exit code, seconds) of a finished submitit job: the training's, from launch.json."""
    outcome = read_json(os.path.join(job.workdir, launch.OUTCOME_FILE)) or {}
    code = outcome.get('exit_code')
    if code is None:  # the job ended outside the training (killed, node failure, ...)
      code = 0 if (sjob.paths.result_pickle.exists() and sjob.exception() is None) else 1
    return code, outcome.get('seconds', time.time() - started)

  def run(self, jobs, progress: bool = True, desc: str = 'launch') -> dict | None:
    jobs = list(jobs)
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
      raise ValueError(f'job names must be unique: {names}')
    if not jobs:
      return {}
    executor = self.make_executor()
    if not self.wait:
      self.submit(jobs, executor)
      return {}
    limit = len(jobs) if self.cluster == 'slurm' else (self.parallel or 1)
    queue, active, outcome = list(jobs), {}, {}
    bar = None
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm(total=len(jobs), desc=desc, unit='run', dynamic_ncols=True)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, launch.raise_interrupt) if in_main else None
    try:
      while queue or active:
        if queue and len(active) < limit:
          batch, queue = queue[:limit - len(active)], queue[limit - len(active):]
          for job, sjob in zip(batch, self.submit(batch, executor)):
            active[job.name] = (job, sjob, time.time())
        for name, (job, sjob, started) in list(active.items()):
          if sjob.done():
            code, seconds = outcome[name] = self._outcome(job, sjob, started)
            del active[name]
            launch.show_done(bar, name, code, seconds)
        if active and not (queue and len(active) < limit):
          time.sleep(self.poll_s)
    except KeyboardInterrupt:
      if self.cluster == 'local':
        self._stop_local(active.values())
      return None
    finally:
      if in_main:
        signal.signal(signal.SIGTERM, previous)
      if bar is not None:
        bar.close()
    return outcome

  def _stop_local(self, active, timeout_s: float = 120.0) -> None:
    """SIGTERM to the trainings of the running local jobs (they checkpoint and exit; the jobs
    end); a job whose training has not started yet is cancelled."""
    for job, sjob, _ in active:
      pid = launch.running_pid(job.workdir)
      if pid is not None:
        os.kill(pid, signal.SIGTERM)
      else:
        sjob.cancel(check=False)
    deadline = time.time() + timeout_s
    while time.time() < deadline and not all(sjob.done() for _, sjob, _ in active):
      time.sleep(0.2)


# --- command line --------------------------------------------------------------------------------

def add_arguments(parser) -> None:
  """--executor, --detach, --slurm_config and --slurm.<option> (scripts/sweep.py,
  experiments/reproduce.py)."""
  group = parser.add_argument_group(
      'executor', 'how the runs are launched: local = subprocesses of this machine (the default); '
      "submitit_local = submitit's local executor; slurm = a SLURM job array through submitit")
  group.add_argument('--executor', choices=EXECUTORS, default='local')
  group.add_argument('--detach', action='store_true',
                     help='submitit executors: submit and return without waiting')
  group.add_argument('--slurm_config', default=None, metavar='FILE.json',
                     help='a JSON object of --slurm.* options (the flags win)')
  for field in dataclasses.fields(SlurmOptions):
    kind = _KINDS[field.name]
    extra = dict(action='append') if kind in (list, dict) else dict(type=kind)
    group.add_argument(f'--slurm.{field.name}', dest=f'slurm.{field.name}', default=None,
                       metavar='VALUE', help=OPTION_HELP[field.name], **extra)


def options_from_args(args) -> SlurmOptions | None:
  """SlurmOptions from the parsed --slurm_config / --slurm.* arguments; None if none given.

  Raises:
    ConfigError: a bad option, or additional= not given as KEY=VALUE.
  """
  flags = {}
  for field in dataclasses.fields(SlurmOptions):
    value = getattr(args, f'slurm.{field.name}')
    if value is None:
      continue
    if field.name == 'additional':
      pairs = [item.partition('=') for item in value]
      bad = [item for item, (_, sep, _) in zip(value, pairs) if not sep]
      if bad:
        raise ConfigError(f'--slurm.additional={bad[0]} is not valid; expected KEY=VALUE, e.g. '
                          'mail-type=END')
      value = {key: val for key, _, val in pairs}
    flags[field.name] = value
  if not flags and not args.slurm_config:
    return None
  return load_options(args.slurm_config, flags)


def from_args(args, root: str, name: str, parallel: int | None) -> launch.Executor:
  """The executor the parsed arguments ask for; submitit's folder is <root>/submitit/%j.

  Raises:
    ConfigError: SLURM options with --executor local, --detach with the local pool, bad SLURM
      options, or --executor slurm without SLURM's commands on PATH.
  """
  options = options_from_args(args)
  if args.executor == 'local':
    if options is not None or args.detach:
      raise ConfigError('--slurm.*, --slurm_config and --detach apply to --executor '
                        'submitit_local or slurm, not to the local pool')
    return launch.LocalLauncher(parallel=parallel or 1)
  if args.executor == 'slurm' and shutil.which('srun') is None:
    raise ConfigError("--executor slurm needs SLURM's srun and sbatch on PATH (run it on a login "
                      'node of the cluster); --executor submitit_local runs the same jobs here')
  return SubmititExecutor(CLUSTERS[args.executor], os.path.join(root, 'submitit', '%j'),
                          parallel=parallel, options=options, wait=not args.detach, name=name)
