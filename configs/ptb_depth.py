"""Depth x normalization site on CPU-scale PTB: the BN debate (Laurent et al. vs Deep Speech 2 vs
Cooijmans et al. 2016), one sweep.

Laurent et al. 2016 (5-layer stacks): BN on the input ("vertical") term helps, BN on the
recurrent ("horizontal") term hurts. Deep Speech 2 (Amodei et al. 2016): vertical BN helps only
in deep stacks. Cooijmans et al. 2016: horizontal BN helps once its initial gain is small (0.1)
and a large gain (1.0) explains the earlier negative result (docs/method.md, "batch_input" and
the gamma = 0.1 item of "Initialization"). The sweep crosses depth 1, 3, 5 with four variants:

  none                no BN (the LSTM baseline)
  batch_input         BN on the input term only, gamma 0.1 (`batch_input`; the gain is the same
                      as recurrent BN's so that only the site differs)
  batch, gamma 0.1    BN on the input and recurrent terms and the cell (BN-LSTM), gamma 0.1
  batch, gamma 1.0    the same with gamma 1.0 (the gain blamed for Laurent et al.'s result)

Every point has the same budget (SIZE below): model.hidden, data.batch_size, train.num_steps,
optimizer.learning_rate, the data, the evaluation schedule and the seed; only model.layers,
model.norm.name and model.norm.gamma_init differ. Data: ptb_char_valid (the PTB valid file split
90/5/5, ../shared/data/ptb_char; NOT the paper's data), segments of 100 characters.

Selection and curves: every point selects its checkpoint on `val/loss` (population statistics,
re-estimated before each evaluation), and only the population mode is evaluated. `val/loss` is
the cross-entropy, so it selects the same step as bits per character (loss / ln 2), the quantity
the three claims and the figure are about; `val/error` (next-character error) can disagree with
it. Population statistics are the model as it would be deployed and mean the same thing for a
scheme without statistics, so every point is selected and plotted by one rule.

Commands (argument keys: layers, size, norm, gamma, seed; the sweep sets layers, norm, gamma):
  python scripts/sweep.py --config configs/ptb_depth.py --workdir runs/depth --parallel 1
  python experiments/depth_sweep.py runs/depth --out experiments/results/depth_sweep
  one point: python -m normrnn.train --config=configs/ptb_depth.py:layers=5,norm=batch_input \
      --workdir=runs/depth_one

Sizes: cpu (default) = 128 units, batch 32, 2,000 steps (about 9 epochs of the 0.7M training
characters), Adam 2e-3, evaluation every 100 steps, checkpoint every 500. Runtime, measured on the
2 shared CPU cores (load 4-5 from other work) for this size: 0.030 / 0.119 / 0.206 s per training
step at depth 1 / 3 / 5 without BN, 0.057 / 0.165 / 0.296 with BN-LSTM, 0.243 for input-only BN at
depth 5 (0.137 at depth 3); one validation pass 1-3 s, the final evaluation (re-estimation, test
split, the test split as one batch-1 stream) about 5 s, start and compilation about 20 s. A
200-step depth-5 BN-LSTM run took 90 s in all. So the 12 runs cost 1.8 s per step together:
about 61 min of training steps + 8 min of evaluations + 6 min of start-up: about 75 min for the
sweep with --parallel 1, less on an idle machine; the longest run (depth 5, BN-LSTM) about
11 min. smoke = 8 units, 4 steps, seconds (tests).
Expected: see experiments/RESULTS.md once the sweep has run.
"""
from normrnn.config import build

ptb_char = build.load_sibling(__file__, 'ptb_char')

LAYERS = (1, 3, 5)
# Variant name -> (model.norm.name, model.norm.gamma_init or None: unused by `none`).
VARIANTS = {
    'none': ('none', None),
    'batch_input': ('batch_input', 0.1),
    'batch_g0.1': ('batch', 0.1),
    'batch_g1.0': ('batch', 1.0),
}
SIZES = ('cpu', 'smoke')
# The budget shared by every point (ptb_char's own sizes otherwise: data, seq_len, eval batch).
BUDGET = dict(
    cpu=dict(hidden=128, batch=32, steps=2000, every=100, checkpoint=500, lr=2e-3),
    smoke=dict(hidden=8, batch=4, steps=4, every=2, checkpoint=2, lr=2e-3),
)


def get_config(arg=None):
  a = build.parse_arg(arg, layers=1, size='cpu', norm='batch', gamma=-1.0, seed=0)
  build.check_choice('layers', a.layers, LAYERS)
  build.check_choice('size', a.size, SIZES)
  budget = BUDGET[a.size]
  config = ptb_char.get_config(
      f'norm={a.norm},size={a.size},gamma={a.gamma},seed={a.seed},select=population',
      task='ptb_depth', paper_row='BN site vs depth (Laurent et al., Deep Speech 2)')
  config.model.layers = a.layers
  config.model.hidden = budget['hidden']
  config.data.batch_size = budget['batch']
  config.optimizer.learning_rate = budget['lr']
  config.train.num_steps = budget['steps']
  config.train.eval_every_steps = budget['every']
  config.train.checkpoint_every_steps = budget['checkpoint']
  config.train.log_every_steps = min(config.train.log_every_steps, budget['every'])
  # One evaluation protocol for every point (see the docstring): population statistics only.
  config.eval.modes = ('population',)
  config.eval.select_metric = 'val/loss'
  return config


def point(layers: int, variant: str) -> dict:
  """The overrides of one sweep point; `none` has no gain, so its point sets none."""
  name, gamma = VARIANTS[variant]
  out = {'model.layers': layers, 'model.norm.name': name}
  if gamma is not None:
    out['model.norm.gamma_init'] = gamma
  return out


def get_sweep(arg=None):
  """Depth 1, 3, 5 x the four VARIANTS: 12 points, named like
  `layers-5_name-batch_gamma_init-1.0` (normrnn.launch.point_name)."""
  del arg
  return [point(layers, variant) for layers in LAYERS for variant in VARIANTS]
