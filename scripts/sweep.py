"""Runs every point of a config's sweep (its `get_sweep()`) as one training run each.

  python scripts/sweep.py --config configs/smnist.py:size=cpu --workdir runs/smnist_gamma \
      [--parallel N] [--dry-run] [--status] [--name NAME] [--config.train.num_steps=500 ...] \
      [--executor local|submitit_local|slurm] [--detach] [--slurm_config FILE.json] \
      [--slurm.partition=P --slurm.timeout_min=M --slurm.gpus_per_node=G ...]

`get_sweep(arg)` returns a list of {dotted config key: value} overrides. Each point runs

  python -m normrnn.train --config=<file>:<arg> --workdir=<ROOT>/<point> \
      --config.<key>=<value> ... <extra --config.* overrides> \
      --config.wandb.group=<the config's wandb.group>/<NAME>

from the current directory, its output appended to <ROOT>/<point>/train.log. Executors:
  local           subprocesses of this machine, N at a time (default 1;
                  `normrnn.launch.LocalLauncher`)
  submitit_local  one job per point through submitit's local executor, N at a time
  slurm           one SLURM job array through submitit, at most N points at a time (default:
                  no limit of ours), with the --slurm.* resources (`normrnn.launch_submitit`)
submitit's own job files and logs go to <ROOT>/submitit/<job id>/. A preempted or timed-out
submitit job checkpoints and is requeued (it resumes from the checkpoint). --detach submits and
returns; --status prints where every point stands (pending / running / finished / failed /
incomplete / missing, with its log) and launches nothing.

Point names come from the overrides (`model.norm.gamma_init=0.3` -> `gamma_init-0.3`, several
joined by `_`). A finished point (its workdir holds results.json) is skipped, and so is one that
another launcher is training now or that waits in the scheduler's queue, so rerunning the same
command resumes an interrupted sweep (unfinished runs resume from their checkpoints). NAME
defaults to ROOT's base name. At the end a table (point, status, key test metric) is printed;
the exit code is 1 if any run failed, and the failed points are named.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from normrnn import launch, launch_submitit
from normrnn.config import ConfigError, parse_args_and_overrides
from normrnn.rundir import read_json, read_run

KEY_METRICS = ('test_stream/bpc', 'test/bpc', 'test/acc', 'test/loss')


def key_metric(workdir: str) -> str:
  """The point's headline test metric from results.json, or '-'."""
  if launch.status(workdir) != 'finished':
    return '-'
  run = read_run(workdir)
  for key in KEY_METRICS:
    value = run.final(key)
    if value is not None:
      return f'{key}={value:.4f}'
  return '-'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog='Any further --config.<key>=<value> arguments are passed to every run.')
  parser.add_argument('--config', required=True, help='configs/<task>.py[:<arg>]')
  parser.add_argument('--workdir', required=True, help='root directory of the sweep')
  parser.add_argument('--parallel', type=int, default=None,
                      help='runs at a time (default 1; slurm: the job array\'s limit, default '
                           'none of ours)')
  parser.add_argument('--dry-run', action='store_true',
                      help='print the commands (and, with --executor slurm, the sbatch script)')
  parser.add_argument('--status', action='store_true',
                      help='print where every point stands and launch nothing')
  parser.add_argument('--name', default=None, help='sweep name (default: basename of --workdir)')
  launch_submitit.add_arguments(parser)
  args, extra = parse_args_and_overrides(parser, argv)
  if args.parallel is not None and args.parallel < 1:
    parser.error(f'--parallel must be >= 1, got {args.parallel}')
  return args, extra


def log_paths(job: launch.Job) -> str:
  """The point's train.log and, for a scheduler's job, submitit's log of it."""
  record = read_json(os.path.join(job.workdir, launch.SCHEDULER_FILE))
  return job.log + (f' (job log {record["stdout"]})' if record else '')


def print_status(jobs) -> None:
  states = launch.statuses(jobs)
  width = max((len(job.name) for job in jobs), default=5)
  print(f'| {"point":<{width}} | status | log |')
  print(f'|{"-" * (width + 2)}|---|---|')
  for job, state in zip(jobs, states):
    print(f'| {job.name:<{width}} | {state} | {log_paths(job)} |')
  counts = {}
  for state in states:
    word = state.split()[0]
    counts[word] = counts.get(word, 0) + 1
  print(f'\n{len(jobs)} point(s): ' + ', '.join(f'{n} {word}' for word, n in counts.items()))


def main(argv=None) -> int:
  args, extra = parse_args(argv)
  root = os.path.abspath(args.workdir)
  name = args.name or os.path.basename(os.path.normpath(root))
  try:
    jobs = launch.sweep_jobs(args.config, args.workdir, extra, name=args.name)
    executor = launch_submitit.from_args(args, root, name, args.parallel)
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  if args.status:
    print_status(jobs)
    return 0
  before = dict(zip((job.name for job in jobs), launch.statuses(jobs)))

  if args.dry_run:
    for job in jobs:
      state = before[job.name]
      note = '' if launch.needs_run(state) else f'  # {state}, would be skipped'
      print(shlex.join(job.command()) + note)
    todo = sum(launch.needs_run(state) for state in before.values())
    if (isinstance(executor, launch_submitit.SubmititExecutor) and executor.cluster == 'slurm'
        and todo):
      print(f'\n# the sbatch script submitted for the {todo} point(s) to run:')
      print(executor.sbatch_script(todo))
    return 0

  status = {name: 'skipped (finished)' if state == 'finished' else f'skipped: {state}'
            for name, state in before.items() if not launch.needs_run(state)}
  todo = [job for job in jobs if job.name not in status]
  group = jobs[0].config().wandb.group if jobs else '-'
  print(f'sweep {group}: {len(jobs)} point(s), {len(todo)} to run, {executor.describe()}; '
        f'logs in {root}/<point>/train.log', flush=True)
  outcome = executor.run(todo, desc='sweep')
  if outcome is None:
    print(f'\ninterrupted: {executor.on_interrupt}', file=sys.stderr)
    return 130
  if todo and not outcome:  # --detach: submitted, not waited for
    print(f'submitted {len(todo)} point(s); this command with --status instead of --detach '
          'shows where they stand\n')
    print_status(jobs)
    return 0
  for name, (code, seconds) in outcome.items():
    status[name] = f'ok ({seconds:.0f} s)' if code == 0 else f'FAILED (exit {code})'

  width = max((len(job.name) for job in jobs), default=5)
  print(f'\n| {"point":<{width}} | status | key test metric |')
  print(f'|{"-" * (width + 2)}|---|---|')
  for job in jobs:
    print(f'| {job.name:<{width}} | {status[job.name]} | {key_metric(job.workdir)} |')
  failed = [job for job in jobs if status[job.name].startswith('FAILED')]
  if failed:
    print('\nfailed: ' + ', '.join(f'{job.name} (see {log_paths(job)})' for job in failed),
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
