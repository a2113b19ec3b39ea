"""The embedded default: scikit-learn's 8x8 digits as a 64-step pixel sequence (no download).

Not a paper row: a 1-2 minute CPU sanity check that trains the paper's model family (LSTM vs
BN-LSTM, same inits and optimizer family as sequential MNIST) on real images that ship with
scikit-learn (1,797 images split 1437/180/180). `python scripts/quickstart.py` runs it for
`none` and `batch` and prints the table.

Commands (argument keys: norm, cell, size, gamma, seed, pixel_order, data, select):
  python -m normrnn.train --config=configs/digits.py:norm=batch --workdir=runs/digits_bn
  python -m normrnn.train --config=configs/digits.py:norm=batch,cell=gru --workdir=runs/digits_bngru
  python scripts/quickstart.py --workdir runs/quickstart
Runtime: ~10-45 s per run on 2 CPU cores. Expected (seed 0, 2026-11-30): LSTM 73.3%, BN-LSTM
94.4% test accuracy (see README; a few of the 180 test images move with float-level changes).
"""
from normrnn.config import build
from normrnn.norms import NORMS


def get_config(arg=None):
  a = build.parse_arg(arg, norm='batch', cell='lstm', size='cpu', gamma=-1.0, seed=0,
                      pixel_order='scanline', data='', select='population')
  build.check_choice('size', a.size, build.SIZES)
  build.check_choice('cell', a.cell, build.TASK_CELLS)
  smoke = a.size == 'smoke'
  modes, select = build.eval_modes(a.norm, a.select)
  return build.experiment(
      args=a, task='digits', paper='none (embedded sanity check)',
      data=build.data_section(config_file=__file__, name=a.data or 'digits', dir='',
                              pixel_order=a.pixel_order, seq_len=64, batch_size=64,
                              eval_batch_size=180),
      model=build.model_section(
          cell=a.cell, hoist_input=False, remat=False,
          hidden=8 if smoke else 64, recurrent_init='identity_orthogonal',
          h0_noise=0.0,
          norm=build.norm_section(a.norm, gamma=a.gamma, max_time_steps=64, stats_rate=0.05)),
      optimizer=build.optimizer_section('adam', 5e-3),
      train=build.train_section(num_steps=4 if smoke else 600, log_every=2 if smoke else 50,
                                eval_every=2 if smoke else 100,
                                checkpoint_every=2 if smoke else 200),
      eval_=build.eval_section(select_metric=select, modes=modes, eval_batches=-1,
                               reestimate_batches=-1, reestimate_batch_size=64,
                               val_reestimate_batches=8),
      wandb_group='digits')


def get_sweep(arg=None):
  del arg
  return [{'model.norm.name': n, 'model.norm.gamma_init': build.gamma_default(n)}
          for n in NORMS]
