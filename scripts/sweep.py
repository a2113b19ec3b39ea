"""Runs every point of a config's sweep (its `get_sweep()`) as one training run each.

  python scripts/sweep.py --config configs/smnist.py:size=cpu --workdir runs/smnist_gamma \
      [--parallel N] [--dry-run] [--name NAME] [--config.train.num_steps=500 ...]

`get_sweep(arg)` returns a list of {dotted config key: value} overrides. Each point runs

  python -m normrnn.train --config=<file>:<arg> --workdir=<ROOT>/<point> \
      --config.<key>=<value> ... <extra --config.* overrides> \
      --config.wandb.group=<the config's wandb.group>/<NAME>

as a subprocess in the current directory (so relative data paths mean what they mean for
`normrnn.train`), N at a time (default 1), its output streamed to <ROOT>/<point>/train.log.
Point names come from the overrides (`model.norm.gamma_init=0.3` -> `gamma_init-0.3`, several
joined by `_`). A point whose workdir holds results.json is finished and skipped, so rerunning
the same command resumes an interrupted sweep (unfinished runs resume from their checkpoints).
NAME defaults to ROOT's base name. At the end a table (point, status, key test metric) is
printed; the exit code is 1 if any run failed, and the failed points are named.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_METRICS = ('test_stream/bpc', 'test/bpc', 'test/acc', 'test/loss')
_RUNNING: set = set()  # the training processes this sweep has started and not yet reaped
_STOPPING = threading.Event()  # set on SIGINT / SIGTERM: start nothing new
_LOCK = threading.Lock()


def load_config_module(path: str):
  """Imports a config file by path (the repository root on sys.path for `configs.common`)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  name = '_sweep_config_' + re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


def build_command(config_arg: str, workdir: str, overrides: dict, extra, group: str) -> list:
  config_file, sep, arg = config_arg.partition(':')
  config_flag = os.path.abspath(config_file) + (f':{arg}' if sep else '')
  return ([sys.executable, '-m', 'normrnn.train', f'--config={config_flag}',
           f'--workdir={workdir}'] +
          [f'--config.{k}={format_value(v)}' for k, v in overrides.items()] + list(extra) +
          [f'--config.wandb.group={group}'])


def key_metric(workdir: str) -> str:
  """The point's headline test metric from results.json, or '-'."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return '-'
  with open(path, encoding='utf-8') as f:
    metrics = json.load(f).get('metrics', {})
  for key in KEY_METRICS:
    if key in metrics:
      return f'{key}={metrics[key]:.4f}'
  return '-'


def run_point(command: list, workdir: str) -> tuple[int, float]:
  """Runs one training command, its stdout and stderr appended to workdir/train.log."""
  os.makedirs(workdir, exist_ok=True)
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
  t0 = time.time()
  with open(os.path.join(workdir, 'train.log'), 'a', encoding='utf-8') as log:
    log.write(f'$ {shlex.join(command)}\n')
    log.flush()
    with _LOCK:
      if _STOPPING.is_set():
        return 130, 0.0
      proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
      _RUNNING.add(proc)
    try:
      returncode = proc.wait()
    finally:
      with _LOCK:
        _RUNNING.discard(proc)
  return returncode, time.time() - t0


def _stop_running() -> None:
  """SIGTERM to every run this sweep started: normrnn.train checkpoints and exits, so rerunning
  the sweep resumes them."""
  with _LOCK:
    _STOPPING.set()
    for proc in _RUNNING:
      if proc.poll() is None:
        proc.terminate()


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


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
  config_file, _, arg = args.config.partition(':')
  module = load_config_module(config_file)
  if not hasattr(module, 'get_sweep'):
    raise SystemExit(f'{config_file} defines no get_sweep(); nothing to sweep')
  points = module.get_sweep(arg or None)
  group = f'{module.get_config(arg or None).wandb.group}/' + (
      args.name or os.path.basename(os.path.normpath(args.workdir)))
  root = os.path.abspath(args.workdir)
  jobs = []
  for name, overrides in zip(point_names(points), points):
    workdir = os.path.join(root, name)
    jobs.append(dict(name=name, workdir=workdir,
                     command=build_command(args.config, workdir, overrides, extra, group),
                     done=os.path.exists(os.path.join(workdir, 'results.json'))))

  if args.dry_run:
    for job in jobs:
      print(shlex.join(job['command']) + ('  # finished, would be skipped' if job['done'] else ''))
    return 0

  status = {j['name']: 'skipped (finished)' for j in jobs if j['done']}
  todo = [j for j in jobs if not j['done']]
  print(f'sweep {group}: {len(jobs)} point(s), {len(todo)} to run, {args.parallel} at a time; '
        f'logs in {root}/<point>/train.log', flush=True)
  bar = tqdm(total=len(todo), desc='sweep', unit='run', dynamic_ncols=True)
  previous = signal.signal(signal.SIGTERM, _interrupt)
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel)
  try:
    futures = {pool.submit(run_point, j['command'], j['workdir']): j for j in todo}
    for future in concurrent.futures.as_completed(futures):
      job = futures[future]
      returncode, seconds = future.result()
      status[job['name']] = (f'ok ({seconds:.0f} s)' if returncode == 0
                             else f'FAILED (exit {returncode})')
      bar.set_postfix_str(f'{job["name"]}: {status[job["name"]]}')
      bar.update(1)
  except KeyboardInterrupt:
    pool.shutdown(wait=False, cancel_futures=True)
    _stop_running()
    pool.shutdown(wait=True)
    bar.close()
    print('\ninterrupted: the running points were stopped (they checkpoint on SIGTERM); rerun '
          'the same command to resume', file=sys.stderr)
    return 130
  finally:
    signal.signal(signal.SIGTERM, previous)
  pool.shutdown(wait=True)
  bar.close()

  width = max(len(j['name']) for j in jobs) if jobs else 5
  print(f'\n| {"point":<{width}} | status | key test metric |')
  print(f'|{"-" * (width + 2)}|---|---|')
  for job in jobs:
    print(f'| {job["name"]:<{width}} | {status[job["name"]]} | {key_metric(job["workdir"])} |')
  failed = [j for j in jobs if status[j['name']].startswith('FAILED')]
  if failed:
    print('\nfailed: ' + ', '.join(f'{j["name"]} (see {j["workdir"]}/train.log)' for j in failed),
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
