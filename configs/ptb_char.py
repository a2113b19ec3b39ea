"""Character-level Penn Treebank: Cooijmans et al. 2016 (arXiv:1603.09025), Table 2, Fig. 2.

Paper (test bits per character): LSTM 1.38, BN-LSTM 1.32 (whole test set as one batch-1 sequence
with re-estimated population statistics; length-100 chunks give ~1.45 / ~1.40;
docs/method.md, pitfall P13).
Setup (docs/method.md, "Tasks and data"): one-hot inputs (50 symbols), 1000 units, batch 64,
Adam 2e-3, clip 1.0, 50 epochs, segments of 100 characters (99 predictions, T_max = 99) with a
random offset each epoch, orthogonal init, gamma 0.1, EMA rate 0.05; selection on validation
error with batch stats.

Commands (argument keys: norm, cell, size, gamma, seed, data, select;
cell=lstm (default) or gru, docs/method.md, "GRU"):
  python -m normrnn.train --config=configs/ptb_char.py:norm=batch --workdir=runs/ptb_bn
  python -m normrnn.train --config=configs/ptb_char.py:norm=none --workdir=runs/ptb_lstm
  (ptb.char.{train,valid,test}.txt in data/ptb_char, or --config.data.download=True)
  CPU scale, ptb_char_valid (the PTB valid file split 90/5/5, ../shared/data/ptb_char):
  python -m normrnn.train --config=configs/ptb_char.py:norm=batch,size=cpu --workdir=runs/ptb_cpu_bn
  GRU instead of LSTM: --config=configs/ptb_char.py:norm=layer,cell=gru,size=cpu

Sizes: paper = 39,550 steps (50 epochs x 791), about 1.5 s/step on 2 CPU cores (~16 h), far less
on a GPU; cpu = 256 units, 1,000 steps, ~10-15 min on 2 CPU cores; smoke = seconds.
Expected: paper size 1.32 (BN) / 1.38 (LSTM) test bpc; cpu size: see experiments/RESULTS.md.
"""
from normrnn.config import build

VOCAB = 50


def get_config(arg=None, *, task='ptb_char', paper_row='Table 2, PTB', text8=False):
  a = build.parse_arg(arg, norm='batch', cell='lstm', size='paper', gamma=-1.0, seed=0, data='',
                      select='paper')
  build.check_choice('size', a.size, build.SIZES)
  build.check_choice('cell', a.cell, build.TASK_CELLS)
  if text8:
    paper = dict(data='text8', dir='data/text8', hidden=2000, batch=128, steps=195_000,
                 every=500, lr=1e-3, seq_len=180, eval_batch=100, reest=(-1, 1000), val_reest=2)
  else:
    paper = dict(data='ptb_char', dir='data/ptb_char', hidden=1000, batch=64, steps=39_550,
                 every=791, lr=2e-3, seq_len=100, eval_batch=100, reest=(-1, 100), val_reest=10)
  sizes = dict(
      paper=dict(paper, eval_batches=-1),
      cpu=dict(data='ptb_char_valid', dir='../shared/data/ptb_char', hidden=256, batch=32,
               steps=1000, every=200, lr=2e-3, seq_len=paper['seq_len'], eval_batch=64,
               reest=(32, 64), val_reest=8, eval_batches=-1),
      smoke=dict(data='ptb_char_valid', dir='../shared/data/ptb_char', hidden=8, batch=4,
                 steps=4, every=2, lr=2e-3, seq_len=12, eval_batch=8, reest=(1, 4), val_reest=1,
                 eval_batches=1),
  )[a.size]
  modes, select = build.eval_modes(a.norm, a.select)
  return build.experiment(
      args=a, task=task, paper=f'Cooijmans et al. 2016, {paper_row}',
      data=build.data_section(config_file=__file__, name=a.data or sizes['data'], dir=sizes['dir'],
                              seq_len=sizes['seq_len'], batch_size=sizes['batch'],
                              eval_batch_size=sizes['eval_batch']),
      model=build.model_section(
          cell=a.cell, hoist_input=False, remat=False,
          hidden=sizes['hidden'], recurrent_init='orthogonal', h0_noise=0.0,
          norm=build.norm_section(a.norm, gamma=a.gamma, max_time_steps=sizes['seq_len'] - 1,
                                  stats_rate=0.05)),
      optimizer=build.optimizer_section('adam', sizes['lr']),
      train=build.train_section(num_steps=sizes['steps'], log_every=min(50, sizes['every']),
                                eval_every=sizes['every'], checkpoint_every=sizes['every']),
      eval_=build.eval_section_from_sizes(sizes, select_metric=select, modes=modes,
                                          full_stream=a.size != 'smoke' and not text8),
      wandb_group=f'cooijmans2016/{task}')


def get_sweep(arg=None):
  """Initial-gamma sensitivity (paper App. B, Fig. 6, PTB panels) plus the LSTM baseline."""
  del arg
  return ([{'model.norm.name': 'none'}] +
          [{'model.norm.gamma_init': g} for g in (0.1, 0.3, 0.5, 0.7, 1.0)])
