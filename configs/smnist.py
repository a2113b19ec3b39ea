"""Sequential MNIST: Cooijmans et al. 2016 (arXiv:1603.09025), Table 1 column "MNIST", Fig. 1 left.

Paper (test accuracy, re-estimated population statistics): LSTM 98.9, BN-LSTM 99.0.
Setup (docs/method.md, "Per-task setup (paper size)"): 784 pixels one per step, 100 units,
batch 100, RMSProp lr 1e-3 (Blocks rule, decay 0.5 as in the released code), global-norm clip
1.0, 200 epochs of 500 steps, W_h = [I, orth], BN-LSTM with gamma 0.1 and h_0 noise 0.1
(docs/method.md, "Initialization"), EMA rate 0.01. Model selection on validation error with
batch statistics, once per epoch.

Commands (argument keys: norm, cell, size, gamma, seed, pixel_order, data, select;
cell=lstm (default) or gru, docs/method.md, "GRU"):
  python -m normrnn.train --config=configs/smnist.py:norm=batch --workdir=runs/smnist_bn
  python -m normrnn.train --config=configs/smnist.py:norm=none --workdir=runs/smnist_lstm
  CPU scale, mnist10k (the official test set split 8000/1000/1000, ../shared/data/mnist):
  python -m normrnn.train --config=configs/smnist.py:norm=batch,size=cpu \
      --workdir=runs/smnist_cpu_bn
  Put train-images-idx3-ubyte.gz etc. in data/mnist, or pass --config.data.download=True, or
  --config.data.source=tfds --config.data.dir=<tfds data_dir>.

Sizes: paper = the paper's setup on full MNIST (50k/10k/10k); 100k steps, about 10 h on a GPU
(CPU: ~0.5 s/step, i.e. ~14 h); cpu = mnist10k, 1,500 steps, ~15-25 min on 2 CPU cores;
smoke = a few steps of a tiny model, seconds (tests).
Expected numbers: paper size: 99.0 (BN) / 98.9 (LSTM); cpu size: see experiments/RESULTS.md.
"""
from normrnn.config import build


def get_config(arg=None, *, pixel_order='scanline', task='smnist',
               paper_row='Table 1, MNIST'):
  a = build.parse_arg(arg, norm='batch', cell='lstm', size='paper', gamma=-1.0, seed=0,
                      pixel_order=pixel_order, data='', select='paper')
  build.check_choice('size', a.size, build.SIZES)
  build.check_choice('cell', a.cell, build.TASK_CELLS)
  build.check_choice('pixel_order', a.pixel_order, ('scanline', 'permuted', 'with_replacement'))
  sizes = dict(  # data, hidden, batch, steps, eval/ckpt every, eval batch, re-estimation batches
      paper=dict(data='mnist', dir='data/mnist', hidden=100, batch=100, steps=100_000, every=500,
                 eval_batch=1000, reest=(10, 5000), val_reest=1, eval_batches=-1),
      cpu=dict(data='mnist10k', dir='../shared/data/mnist', hidden=100, batch=100, steps=1500,
               every=250, eval_batch=500, reest=(16, 500), val_reest=4, eval_batches=-1),
      smoke=dict(data='mnist10k', dir='../shared/data/mnist', hidden=8, batch=8, steps=4,
                 every=2, eval_batch=16, reest=(1, 8), val_reest=1, eval_batches=1),
  )[a.size]
  # The paper's noise on h_0 is for the unpermuted BN-LSTM only (zero-variance early steps; the
  # same holds for the BN-GRU, which gets it too).
  noise = 0.1 if (a.norm == 'batch' and a.pixel_order == 'scanline') else 0.0
  modes, select = build.eval_modes(a.norm, a.select)
  return build.experiment(
      args=a, task=task, paper=f'Cooijmans et al. 2016, {paper_row}',
      data=build.data_section(config_file=__file__, name=a.data or sizes['data'], dir=sizes['dir'],
                              pixel_order=a.pixel_order, permutation_seed=1, seq_len=784,
                              batch_size=sizes['batch'], eval_batch_size=sizes['eval_batch']),
      model=build.model_section(
          cell=a.cell, hoist_input=False, remat=True,
          hidden=sizes['hidden'], recurrent_init='identity_orthogonal',
          h0_noise=noise, norm=build.norm_section(a.norm, gamma=a.gamma, max_time_steps=784,
                                                  stats_rate=0.01)),
      optimizer=build.optimizer_section('rmsprop', 1e-3),
      train=build.train_section(num_steps=sizes['steps'], log_every=min(50, sizes['every']),
                                eval_every=sizes['every'], checkpoint_every=sizes['every']),
      eval_=build.eval_section_from_sizes(sizes, select_metric=select, modes=modes),
      wandb_group=f'cooijmans2016/{task}')


def get_sweep(arg=None):
  """Initial-gamma sensitivity (paper App. B, Fig. 6) x {LSTM, BN-LSTM} baseline."""
  del arg
  # The LSTM baseline point also turns the h_0 noise off: the paper used it for BN-LSTM only.
  return ([{'model.norm.name': 'none', 'model.h0_noise': 0.0}] +
          [{'model.norm.gamma_init': g} for g in (0.1, 0.3, 0.5, 0.7, 1.0)])
