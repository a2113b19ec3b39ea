"""Command line: python -m normrnn.train --config=configs/<task>.py:<arg> --workdir=<dir>

Any config field can be overridden with --config.<a>.<b>=<value> (ml_collections config flags;
the config is locked, so a misspelt field fails instead of being ignored). Rerunning the same
command on a workdir with checkpoints resumes from the latest one.

A bad config, missing data or an unwritable workdir fails before anything is written or
compiled, with one line on stderr (field, value, valid choices; or path and what to do) and exit
code 2; --verbose shows the traceback instead. A full disk during training ends the same way, with
the last complete checkpoint kept for the rerun. The INFO logs of jax, orbax and absl are hidden
unless --library_logs is given: stderr holds the progress bar, one line per evaluation, the
resume line and the final summary.

Several processes (hosts) run one job with --config.train.distributed=True: every process runs
the same command plus who it is (--coordinator_address, --num_processes, --process_id, or the
cluster environment); see README.md, "Several processes and hosts". Process 0 alone writes the
metrics, results and console output; all of them write and read the checkpoints.
"""
from __future__ import annotations

import difflib
import re
import sys

from absl import flags, logging
from ml_collections import config_flags

from normrnn import parallel
from normrnn.config import ConfigError, load_config
from normrnn.config.schema import check_distributed
from normrnn.data import DataError
from normrnn.storage import StorageError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file[:argument].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_bool('verbose', False, 'Show the full traceback of configuration and data errors.')
flags.DEFINE_bool('library_logs', False,
                  'Show the INFO log lines of jax, orbax and absl (hidden by default).')
# Multi-process runs (--config.train.distributed=True): who this process is. Unset values come
# from the environment (JAX_COORDINATOR_ADDRESS, or SLURM / Open MPI / Kubernetes, which
# jax.distributed.initialize detects).
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 in a multi-process run (default: from the '
                    'environment).')
flags.DEFINE_integer('num_processes', None,
                     'Processes in a multi-process run (default: from the environment).')
flags.DEFINE_integer('process_id', None,
                     "This process's index in a multi-process run (default: from the "
                     'environment).')

USAGE = ('usage: python -m normrnn.train --config=configs/<task>.py[:<arg>] --workdir=<dir> '
         '[--config.<field>=<value> ...] [--verbose] [--library_logs] '
         '[--coordinator_address=<host:port> --num_processes=<n> --process_id=<i>]')


def _one_line(err: BaseException) -> tuple[str, str]:
  """(error kind, message as one line). A config file's own error (e.g. an unknown argument
  after the colon) is the last line of the traceback text ml_collections wraps it in."""
  kind, text = type(err).__name__, str(err)
  if 'Traceback (most recent call last)' in text:
    text = [line for line in text.splitlines() if line.strip()][-1]
    match = re.match(r'^([\w.]*?)(\w+(?:Error|Exception)): (.*)$', text)
    if match:
      kind, text = match.group(2), match.group(3)
  if isinstance(err, flags.Error) and not isinstance(err, flags.IllegalFlagValueError):
    kind = 'usage'
  return kind, ' '.join(text.split())


def _misspelt_override(argv) -> str | None:
  """The first --config.<path>=... flag whose path is not a field of the config, or None."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  try:
    config = load_config(spec)
  except Exception:  # pylint: disable=broad-except
    return None
  for arg in argv:
    if arg.startswith('--config.'):
      node, path = config, arg[2:].split('=', 1)[0]
      for part in path.split('.')[1:]:
        if not hasattr(node, 'keys') or part not in node:
          return path
        node = node[part]
  return None


def _unknown_field_message(argv, flag: str) -> str:
  """'config.train.num_devce' -> the valid fields of config.train, with a close match."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  dotted = flag[len('config.'):]
  try:
    node = load_config(spec)
  except Exception:  # pylint: disable=broad-except
    return f'unknown config field {dotted!r}'
  parts = dotted.split('.')
  for depth, part in enumerate(parts):
    valid = sorted(node.keys()) if hasattr(node, 'keys') else []
    if part not in valid:
      close = difflib.get_close_matches(part, valid, n=1)
      where = '.'.join(['config'] + parts[:depth])
      hint = f' (did you mean {".".join(parts[:depth] + close[:1])}?)' if close else ''
      return (f'--config.{dotted}: unknown config field{hint}; valid fields of {where}: '
              f'{", ".join(valid)}')
    node = node[part]
  return f'unknown config field {dotted!r}'


def _initialize_distributed(train) -> None:
  """jax.distributed.initialize from the flags / environment; a launch mistake (no coordinator,
  a bad process id) is a usage error, one line."""
  check_distributed(train)
  try:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id,
                                    heartbeat_timeout_s=train.heartbeat_timeout_s,
                                    init_timeout_s=train.init_timeout_s)
  except (ValueError, TypeError) as err:
    raise flags.Error(
        f'--config.train.distributed=True: {err} Pass --coordinator_address=<host:port of '
        'process 0> --num_processes=<n> --process_id=<i> (or set JAX_COORDINATOR_ADDRESS, or run '
        'under SLURM, which jax detects).') from err


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  verbose = any(a in ('--verbose', '--verbose=true', '--verbose=True') for a in argv)
  try:
    try:
      rest = FLAGS(argv)
    except flags.UnrecognizedFlagError as err:
      if err.flagname.startswith('config.'):
        raise ConfigError(_unknown_field_message(argv, err.flagname)) from err
      raise
    except (AttributeError, KeyError) as err:  # ml_collections: a misspelt --config.<field>
      bad = _misspelt_override(argv)
      if bad is None:
        raise
      raise ConfigError(_unknown_field_message(argv, bad)) from err
    if len(rest) > 1:
      raise flags.Error(f'unexpected arguments: {" ".join(rest[1:])}')
    if FLAGS.config is None or FLAGS.workdir is None:
      raise flags.Error('--config and --workdir are required')
    if FLAGS.library_logs:
      logging.use_absl_handler()
      logging.set_verbosity(logging.INFO)
    if FLAGS.config.train.distributed:  # before anything touches jax (multi-process)
      _initialize_distributed(FLAGS.config.train)
    from normrnn import trainer  # pylint: disable=g-import-not-at-top
    results = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (flags.Error, ConfigError, DataError, StorageError) as err:
    if verbose:
      raise
    kind, message = _one_line(err)
    print(f'error ({kind}): {message}', file=sys.stderr)
    if kind == 'usage':
      print(USAGE, file=sys.stderr)
    return 2
  if parallel.is_primary():  # one process prints a multi-process job's numbers
    print(' '.join(f'{k}={v:.4f}' for k, v in sorted(results['metrics'].items())))
  return 0


if __name__ == '__main__':
  sys.exit(main())
