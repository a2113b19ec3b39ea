"""Command line: python -m normrnn.train --config=configs/<task>.py:<arg> --workdir=<dir>

Any config field can be overridden with --config.<a>.<b>=<value> (ml_collections config flags;
the config is locked, so a misspelt field fails instead of being ignored). Rerunning the same
command on a workdir with checkpoints resumes from the latest one.
"""
from absl import app, flags
from ml_collections import config_flags

from normrnn import parallel, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file[:argument].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.config.train.distributed:  # before anything touches jax (multi-host)
    parallel.initialize_distributed()
  results = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(' '.join(f'{k}={v:.4f}' for k, v in sorted(results['metrics'].items())))


if __name__ == '__main__':
  app.run(main)
