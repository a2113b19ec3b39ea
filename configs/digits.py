"""The embedded default: scikit-learn's 8x8 digits as a 64-step pixel sequence (no download).

Not a paper row: a 1-2 minute CPU sanity check that trains the paper's model family (LSTM vs
BN-LSTM, same inits and optimizer family as sequential MNIST) on real images that ship with
scikit-learn (1,797 images split 1437/180/180). `python scripts/quickstart.py` runs it for
`none` and `batch` and prints the table.

Commands:
  python -m normrnn.train --config=configs/digits.py:norm=batch --workdir=runs/digits_bn
  python scripts/quickstart.py --workdir runs/quickstart
Runtime: ~15-45 s per run on 2 CPU cores. Expected (seed 0, 2026-11-24): LSTM 73.9%, BN-LSTM
89.4% test accuracy (see README; a few of the 180 test images move with float-level changes).
"""
from configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, norm='batch', size='cpu', gamma=-1.0, seed=0,
                       pixel_order='scanline', data='')
  common.check_choice('size', a.size, common.SIZES)
  smoke = a.size == 'smoke'
  modes, select = common.eval_modes(a.norm)
  return common.experiment(
      args=a, task='digits', paper='none (embedded sanity check)',
      data=common.data_section(name=a.data or 'digits', dir='', pixel_order=a.pixel_order,
                               seq_len=64, batch_size=64, eval_batch_size=180),
      model=common.model_section(
          cell='lstm', hoist_input=False, remat=False,
          hidden=8 if smoke else 64, recurrent_init='identity_orthogonal',
          h0_noise=0.0,
          norm=common.norm_section(a.norm, gamma=a.gamma, max_time_steps=64, stats_rate=0.05)),
      optimizer=common.optimizer_section('adam', 5e-3),
      train=common.train_section(num_steps=4 if smoke else 600, log_every=2 if smoke else 50,
                                 eval_every=2 if smoke else 100,
                                 checkpoint_every=2 if smoke else 200),
      eval_=common.eval_section(select_metric=select, modes=modes, eval_batches=-1,
                                reestimate_batches=-1, reestimate_batch_size=64),
      wandb_group='digits')


def get_sweep(arg=None):
  del arg
  return [{'model.norm.name': n, 'model.norm.gamma_init': common.GAMMA_INIT[n]}
          for n in common.SCHEMES]
