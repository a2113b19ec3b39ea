"""text8: Cooijmans et al. 2016 (arXiv:1603.09025), Table 3.

Paper (test bits per character): LSTM 1.43, BN-LSTM 1.36 (which evaluation produced them is not
recorded: length-1000 chunks or the full 5M test sequence; docs/method.md, "Open points").
Setup (docs/method.md, "Tasks and data"): 27 symbols (a-z, space), first 90M / next 5M / last
5M characters, segments of 180 (179 predictions, T_max = 179) with a random offset per epoch,
2000 units, batch 128, Adam 1e-3, clip 1.0, orthogonal init, gamma 0.1, EMA rate 0.05,
evaluation every 500 steps, selection on validation error with batch statistics.

Commands (text8.zip in data/text8, or --config.data.download=True):
  python -m normrnn.train --config=configs/text8.py:norm=batch --workdir=runs/text8_bn
  python -m normrnn.train --config=configs/text8.py:norm=none --workdir=runs/text8_lstm
Sizes: paper = 195,000 steps (50 epochs of ~3.9k), days on a GPU; cpu and smoke run the same
model family on ptb_char_valid (text8 is not available offline here), so use them for plumbing only.
Expected: paper size 1.36 (BN) / 1.43 (LSTM).
"""
from normrnn.config import build

ptb_char = build.load_sibling(__file__, 'ptb_char')


def get_config(arg=None):
  return ptb_char.get_config(arg, task='text8', paper_row='Table 3, text8', text8=True)


get_sweep = ptb_char.get_sweep
