"""Runs every point of a config's sweep (its `get_sweep()`) as one training run each.

  python scripts/sweep.py --config configs/smnist.py:size=cpu --workdir runs/smnist_gamma \
      [--parallel N] [--dry-run] [--name NAME] [--config.train.num_steps=500 ...]

`get_sweep(arg)` returns a list of {dotted config key: value} overrides. Each point runs

  python -m normrnn.train --config=<file>:<arg> --workdir=<ROOT>/<point> \
      --config.<key>=<value> ... <extra --config.* overrides> \
      --config.wandb.group=<the config's wandb.group>/<NAME>

as a subprocess in the current directory, N at a time (default 1), its output appended to
<ROOT>/<point>/train.log (`normrnn.launch.LocalLauncher`). Point names come from the overrides
(`model.norm.gamma_init=0.3` -> `gamma_init-0.3`, several joined by `_`). A finished point (its
workdir holds results.json) is skipped, and so is one that another launcher is training now, so
rerunning the same command resumes an interrupted sweep (unfinished runs resume from their
checkpoints). NAME defaults to ROOT's base name. At the end a table (point, status, key test
metric) is printed; the exit code is 1 if any run failed, and the failed points are named.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from normrnn import launch
from normrnn.config import ConfigError
from normrnn.rundir import read_run

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
  parser.add_argument('--parallel', type=int, default=1, help='runs at a time')
  parser.add_argument('--dry-run', action='store_true', help='print the commands only')
  parser.add_argument('--name', default=None, help='sweep name (default: basename of --workdir)')
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith('--config.')]
  if bad:
    parser.error(f'unrecognized arguments: {" ".join(bad)} (only --config.<key>=<value> '
                 'overrides are passed through)')
  if args.parallel < 1:
    parser.error(f'--parallel must be >= 1, got {args.parallel}')
  return args, extra


def main(argv=None) -> int:
  args, extra = parse_args(argv)
  try:
    jobs = launch.sweep_jobs(args.config, args.workdir, extra, name=args.name)
  except ConfigError as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  before = {job.name: launch.status(job) for job in jobs}

  if args.dry_run:
    for job in jobs:
      state = before[job.name]
      note = '' if launch.needs_run(state) else f'  # {state}, would be skipped'
      print(shlex.join(job.command()) + note)
    return 0

  status = {name: 'skipped (finished)' if state == 'finished' else f'skipped: {state}'
            for name, state in before.items() if not launch.needs_run(state)}
  todo = [job for job in jobs if job.name not in status]
  root = os.path.abspath(args.workdir)
  group = jobs[0].config().wandb.group if jobs else '-'
  print(f'sweep {group}: {len(jobs)} point(s), {len(todo)} to run, {args.parallel} at a time; '
        f'logs in {root}/<point>/train.log', flush=True)
  outcome = launch.LocalLauncher(parallel=args.parallel).run(todo, desc='sweep')
  if outcome is None:
    print('\ninterrupted: the running points were stopped (they checkpoint on SIGTERM); rerun '
          'the same command to resume', file=sys.stderr)
    return 130
  for name, (code, seconds) in outcome.items():
    status[name] = f'ok ({seconds:.0f} s)' if code == 0 else f'FAILED (exit {code})'

  width = max((len(job.name) for job in jobs), default=5)
  print(f'\n| {"point":<{width}} | status | key test metric |')
  print(f'|{"-" * (width + 2)}|---|---|')
  for job in jobs:
    print(f'| {job.name:<{width}} | {status[job.name]} | {key_metric(job.workdir)} |')
  failed = [job for job in jobs if status[job.name].startswith('FAILED')]
  if failed:
    print('\nfailed: ' + ', '.join(f'{job.name} (see {job.log})' for job in failed),
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
