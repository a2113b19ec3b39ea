"""Launching sets of training runs (a config's sweep, the rows of a paper table) and reading
where each one stands.

  from normrnn import launch
  jobs = launch.sweep_jobs('configs/pmnist.py:size=cpu', 'runs/pmnist_gamma',
                           ['--config.train.num_steps=500'])
  todo = [job for job in jobs if launch.needs_run(launch.status(job))]
  outcome = launch.LocalLauncher(parallel=2).run(todo)  # {name: (exit code, seconds)} or None
  for job in jobs:
    print(job.name, launch.status(job))  # finished, running (pid P, step S of N), ...

A `Job` is one `python -m normrnn.train` run: a config file (with its `:arg`), a workdir and
`--config.*` overrides. An executor runs a list of jobs to completion and returns each one's
exit code and duration; `LocalLauncher` runs them as subprocesses of this machine, N at a time,
each one's output appended to <workdir>/train.log. `normrnn.launch_submitit.SubmititExecutor`
runs the same commands as submitit jobs (SLURM, or submitit's local executor) and records each
job in <workdir>/submitit.json; `status` then also asks the scheduler where the job stands
(`pending (...)`, `running (...)`, `failed (slurm job ID STATE, ...)`).

While a launcher trains a workdir, <workdir>/launch.pid holds the training process's id, so
`status` reports it as running to any other process (a table printed meanwhile). When a training
process ends, <workdir>/launch.json records its command, exit code and duration; `status` reads
it to tell a failed run (see its train.log) from one that was stopped (SIGINT / SIGTERM make the
training write a checkpoint and exit with 128 + the signal number; launching it again resumes
from there).
"""
from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from normrnn.config import load_config, load_sweep
from normrnn.config.files import parse_override_flags, split_spec
from normrnn.jsonio import write_json_atomic
from normrnn.rundir import LOG, RESULTS, is_run_dir, read_json, read_run

PID_FILE = 'launch.pid'  # the training process's id while a launcher runs it
OUTCOME_FILE = 'launch.json'  # command, exit code, seconds and whether it was stopped
SCHEDULER_FILE = 'submitit.json'  # the scheduler's job of this workdir (normrnn.launch_submitit)
# The trainer's exit codes after it wrote a checkpoint on SIGINT / SIGTERM (128 + signal).
STOPPED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


# --- jobs --------------------------------------------------------------------------------------

def format_value(value) -> str:
  """A config value as normrnn.train's --config.k=v flag parser reads it."""
  if isinstance(value, (list, tuple)):
    return '(' + ','.join(format_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def point_name(overrides: dict) -> str:
  """`model.norm.gamma_init=0.3, model.norm.name=none` -> `gamma_init-0.3_name-none`."""
  if not overrides:
    return 'default'
  parts = [f'{key.split(".")[-1]}-{format_value(value)}' for key, value in overrides.items()]
  return re.sub(r'[^\w.=+-]', '-', '_'.join(parts))


def point_names(points) -> list[str]:
  """Unique names, in order (a repeated name gets -2, -3, ...)."""
  names, seen = [], {}
  for overrides in points:
    name = point_name(overrides)
    seen[name] = seen.get(name, 0) + 1
    names.append(name if seen[name] == 1 else f'{name}-{seen[name]}')
  return names


def absolute_spec(spec: str) -> str:
  """'configs/x.py:arg' with the file's absolute path (relative to the current directory)."""
  path, arg = split_spec(spec)
  return os.path.abspath(path) + ('' if arg is None else f':{arg}')


def _relative(path: str, base: str | None) -> str:
  if base is None:
    return path
  rel = os.path.relpath(path, base)
  return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run.

  Attributes:
    name: the job's name within its set (a sweep point, a table row's scheme).
    workdir: the run directory (absolute).
    config_spec: `<absolute path of a config file>[:<arg>]`.
    overrides: {dotted config key: value}, passed as `--config.<key>=<value>` flags.
    extra_flags: further `--config.<key>=<value>` flags, after the overrides (so they win).
  """
  name: str
  workdir: str
  config_spec: str
  overrides: dict = dataclasses.field(default_factory=dict)
  extra_flags: tuple[str, ...] = ()

  def command(self, python: str = sys.executable, relative_to: str | None = None) -> list[str]:
    """The normrnn.train command line. `relative_to`: show the config file and the workdir
    relative to that directory where they lie inside it (a command to print, not to run)."""
    path, arg = split_spec(self.config_spec)
    config = _relative(path, relative_to) + ('' if arg is None else f':{arg}')
    return ([python, '-m', 'normrnn.train', f'--config={config}',
             f'--workdir={_relative(self.workdir, relative_to)}'] +
            [f'--config.{k}={format_value(v)}' for k, v in self.overrides.items()] +
            list(self.extra_flags))

  def config(self):
    """The locked config this job trains (what normrnn.train builds from the command)."""
    return load_config(self.config_spec,
                       {**self.overrides, **parse_override_flags(self.extra_flags)})

  @property
  def log(self) -> str:
    return os.path.join(self.workdir, LOG)


def sweep_jobs(config_spec: str, root: str, extra_flags=(), name: str | None = None) -> list[Job]:
  """One job per point of a config file's `get_sweep(arg)`.

  Args:
    config_spec: 'configs/<task>.py[:<arg>]' (relative to the current directory, or absolute).
    root: the sweep's directory; point `p` trains in <root>/<p> (see `point_name`).
    extra_flags: `--config.<key>=<value>` flags passed to every point (after its own overrides).
    name: the sweep's name (default: the base name of `root`); every point logs to the wandb
      group `<the config's wandb.group>/<name>`.

  Raises:
    ConfigError: the file has no get_sweep, a flag is malformed, or a point or flag names a field
      the config does not have (checked here, before anything starts).
  """
  spec = absolute_spec(config_spec)
  extra = parse_override_flags(extra_flags)
  points = load_sweep(spec)
  group = (f'{load_config(spec, extra).wandb.group}/'
           f'{name or os.path.basename(os.path.normpath(root))}')
  root = os.path.abspath(root)
  jobs = []
  for point, overrides in zip(point_names(points), points):
    load_config(spec, {**overrides, **extra})
    jobs.append(Job(name=point, workdir=os.path.join(root, point), config_spec=spec,
                    overrides=dict(overrides),
                    extra_flags=tuple(extra_flags) + (f'--config.wandb.group={group}',)))
  return jobs


# --- where a run stands --------------------------------------------------------------------------

def _workdir(job) -> str:
  return job.workdir if isinstance(job, Job) else str(job)


def show_done(bar, name: str, code: int, seconds: float) -> None:
  """One finished job on a sweep's progress bar (None: no bar): its name and outcome."""
  if bar is not None:
    bar.set_postfix_str(f'{name}: ' + (f'ok ({seconds:.0f} s)' if code == 0
                                       else f'FAILED (exit {code})'))
    bar.update(1)


def running_pid(workdir: str) -> int | None:
  """The id of a live training process a launcher started in `workdir`, or None. The pid file
  holds the process id, and on a second line the host when a scheduler's job wrote it (a process
  of another host is not looked up here)."""
  try:
    with open(os.path.join(workdir, PID_FILE), encoding='utf-8') as f:
      lines = f.read().split()
    pid = int(lines[0])
    if len(lines) > 1 and lines[1] != socket.gethostname():
      return None
    os.kill(pid, 0)
  except (OSError, ValueError, IndexError):
    return None
  return pid


def progress(workdir: str) -> str:
  """'step S of N' from the run's metrics.jsonl and config.json, or 'nothing logged yet'."""
  if is_run_dir(workdir):
    run = read_run(workdir)
    if run.last_step is not None:
      return f'step {run.last_step} of {run.num_steps}'
  return 'nothing logged yet'


def status(job, scheduler_states: dict | None = None) -> str:
  """Where a job (or a workdir) stands, one of:

    'finished'                        results.json exists
    'running (pid P, step S of N)'    a launcher's training process is alive in it
    'failed (exit C, see <log>)'      the last launch ended with an error
    'incomplete (step S of N)'        started, not running (stopped, or the machine went down)
    'missing'                         nothing there yet

  and for a workdir whose last launch was a scheduler's job (<workdir>/submitit.json), what the
  scheduler says (`normrnn.launch_submitit.scheduled_status`): 'pending (slurm job J PENDING)',
  'running (slurm job J, step S of N)' or 'failed (slurm job J STATE, see <job log>)'.
  `scheduler_states`: the scheduler's states already queried for several jobs (`statuses`).
  """
  workdir = _workdir(job)
  state = _workdir_status(workdir)
  if state == 'finished':
    return state
  record = read_json(os.path.join(workdir, SCHEDULER_FILE))
  if record is None:
    return state
  from normrnn import launch_submitit  # pylint: disable=g-import-not-at-top (submitit only here)
  return launch_submitit.scheduled_status(workdir, state, record, scheduler_states)


def statuses(jobs) -> list[str]:
  """`status` of every job (or workdir), asking the scheduler once for all of them."""
  workdirs = [_workdir(job) for job in jobs]
  records = [read_json(os.path.join(w, SCHEDULER_FILE)) for w in workdirs
             if not os.path.exists(os.path.join(w, RESULTS))]
  states = None
  if any(records):
    from normrnn import launch_submitit  # pylint: disable=g-import-not-at-top
    states = launch_submitit.job_states([r for r in records if r])
  return [status(w, states) for w in workdirs]


def _workdir_status(workdir: str) -> str:
  """`status` from the workdir alone."""
  if os.path.exists(os.path.join(workdir, RESULTS)):
    return 'finished'
  where = progress(workdir)
  pid = running_pid(workdir)
  if pid is not None:
    return f'running (pid {pid}, {where})'
  outcome = read_json(os.path.join(workdir, OUTCOME_FILE)) or {}
  if outcome.get('exit_code') not in (None, 0) and not outcome.get('stopped'):
    return f'failed (exit {outcome["exit_code"]}, see {os.path.join(workdir, LOG)})'
  if is_run_dir(workdir):
    return f'incomplete ({where})'
  return 'missing'


def needs_run(state: str) -> bool:
  """Whether a job in this `status` should be (re)started: missing, incomplete or failed (not
  finished, not running under another launcher, not pending in a scheduler's queue)."""
  return state == 'missing' or state.startswith(('incomplete', 'failed'))


# --- executors ---------------------------------------------------------------------------------

class Executor(abc.ABC):
  """Runs a list of jobs to completion."""

  # What became of the jobs when `run` returned None (printed by the scripts).
  on_interrupt = ('the running points were stopped (they checkpoint on SIGTERM); rerun the '
                  'same command to resume')

  @abc.abstractmethod
  def run(self, jobs, progress: bool = True) -> dict | None:
    """Runs `jobs`; returns {job.name: (exit code, seconds)}, or None if it was interrupted
    (the jobs still running were stopped and checkpointed; running them again resumes them)."""

  def describe(self) -> str:
    """How the jobs run, for a status line ('2 at a time')."""
    return type(self).__name__


def raise_interrupt(signum, frame):
  """A SIGTERM handler: the launcher stops as on Ctrl-C."""
  del signum, frame
  raise KeyboardInterrupt


class LocalLauncher(Executor):
  """Subprocesses of this machine, `parallel` at a time, in the current directory.

  SIGINT or SIGTERM to the launcher starts nothing new and sends SIGTERM to the running
  trainings, which write a checkpoint and exit; `run` then returns None.
  """

  def __init__(self, parallel: int = 1, python: str = sys.executable):
    if parallel < 1:
      raise ValueError(f'parallel must be >= 1, got {parallel}')
    self.parallel = parallel
    self.python = python
    self._running = set()
    self._stopping = threading.Event()
    self._lock = threading.Lock()

  def describe(self) -> str:
    return f'{self.parallel} at a time'

  def start(self, job: Job, log) -> subprocess.Popen:
    """Starts one training process with stdout and stderr going to `log` (an open file)."""
    return subprocess.Popen(job.command(self.python), stdout=log, stderr=subprocess.STDOUT)

  def pid_text(self, proc) -> str:
    """The pid file's text while `proc` trains."""
    return f'{proc.pid}\n'

  def run_one(self, job: Job) -> tuple[int, float]:
    """Trains one job to its end; (exit code, seconds). The pid file marks it as running
    meanwhile, and launch.json records how it ended."""
    os.makedirs(job.workdir, exist_ok=True)
    pid_path = os.path.join(job.workdir, PID_FILE)
    outcome_path = os.path.join(job.workdir, OUTCOME_FILE)
    command = job.command(self.python)
    t0 = time.time()
    with open(job.log, 'a', encoding='utf-8') as log:
      log.write(f'$ {shlex.join(command)}\n')
      log.flush()
      with self._lock:
        if self._stopping.is_set():
          return 130, 0.0
        if os.path.exists(outcome_path):
          os.remove(outcome_path)
        try:
          proc = self.start(job, log)
        except OSError as err:  # e.g. no such interpreter: a failed job, not a crashed launcher
          log.write(f'error: could not start the training: {err}\n')
          proc = None
        else:
          self._running.add(proc)
          with open(pid_path, 'w', encoding='utf-8') as f:
            f.write(self.pid_text(proc))
      code = 127
      if proc is not None:
        try:
          code = proc.wait()
        finally:
          with self._lock:
            self._running.discard(proc)
            if os.path.exists(pid_path):
              os.remove(pid_path)
    seconds = time.time() - t0
    write_json_atomic(outcome_path, dict(command=command, exit_code=code, seconds=seconds,
                                         stopped=self._stopping.is_set() or code in STOPPED_CODES))
    return code, seconds

  def stop(self) -> None:
    """Starts nothing new; SIGTERM to every training this launcher has running."""
    with self._lock:
      self._stopping.set()
      for proc in self._running:
        if proc.poll() is None:
          proc.terminate()

  def run(self, jobs, progress: bool = True, desc: str = 'launch') -> dict | None:
    jobs = list(jobs)
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
      raise ValueError(f'job names must be unique: {names}')
    self._stopping.clear()
    for job in jobs:  # this pool takes the points over from a scheduler's earlier jobs
      if os.path.exists(os.path.join(job.workdir, SCHEDULER_FILE)):
        os.remove(os.path.join(job.workdir, SCHEDULER_FILE))
    outcome = {}
    bar = None
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm(total=len(jobs), desc=desc, unit='run', dynamic_ncols=True)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_interrupt) if in_main else None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.parallel)
    try:
      futures = {pool.submit(self.run_one, job): job for job in jobs}
      for future in concurrent.futures.as_completed(futures):
        job = futures[future]
        code, seconds = outcome[job.name] = future.result()
        show_done(bar, job.name, code, seconds)
    except KeyboardInterrupt:
      pool.shutdown(wait=False, cancel_futures=True)
      self.stop()
      pool.shutdown(wait=True)
      return None
    finally:
      if in_main:
        signal.signal(signal.SIGTERM, previous)
      if bar is not None:
        bar.close()
    pool.shutdown(wait=True)
    return outcome
