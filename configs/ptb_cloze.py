"""ptb_cloze: the Attentive Reader of configs/cnn_qa.py on a CPU-scale cloze task built from the
PTB text that is here (normrnn/data/cloze.py: frequent words anonymized as entities, re-numbered
per example; the query is a document sentence with one entity removed). NOT the paper's data: it
shows that the whole path (data, reader, every variant, population statistics, evaluation)
trains, at a scale that fits 2 CPU cores; compare the variants with each other, not with
Cooijmans et al.'s numbers.

Variants, hyperparameters and argument keys as configs/cnn_qa.py (variant=lstm|bn|bn_everywhere|
bn_e_star|bn_e_star2|ln, size=cpu|smoke, seed, select, hparams); the cpu size: 64 units
(embedding, attention and output too), batch 32, Adam 2e-3 for every variant (raised from the
paper's 8e-5/8e-4 for a 1,500-step budget), clip 10, 1,500 steps, evaluation every 100 steps.

  python -m normrnn.train --config=configs/ptb_cloze.py:variant=lstm --workdir=runs/ptb_cloze/lstm
  python -m normrnn.train --config=configs/ptb_cloze.py:variant=bn_e_star2 \
      --workdir=runs/ptb_cloze/bn_e_star2
  python experiments/qa_curves.py runs/ptb_cloze/lstm runs/ptb_cloze/bn_e_star2 \
      --out experiments/results/ptb_cloze/curves.png
  python scripts/sweep.py --config configs/ptb_cloze.py --workdir runs/ptb_cloze_variants  # all

Expected (experiments/RESULTS.md, "Attentive Reader on a CPU-scale cloze task"): both readers
fall from chance (66 % validation error) to about 40 % in 1,500 steps; about 5 min (LSTM) and
14 min (BN-e**) on the loaded 2-core machine. smoke = a few steps of a tiny model (tests).
"""
from normrnn.config import build

cnn_qa = build.load_sibling(__file__, 'cnn_qa')
SIZES = ('cpu', 'smoke')


def get_config(arg=None):
  return cnn_qa.get_config(arg, task='ptb_cloze', default_size='cpu', sizes_allowed=SIZES)


def get_sweep(arg=None):
  """One point per variant (configs/cnn_qa.py, `variant_sweep`)."""
  return cnn_qa.variant_sweep(get_config, arg)
