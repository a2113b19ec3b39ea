"""scripts/quickstart.py on a few steps: the table, the comparison figure, the TensorBoard
command it prints and what TensorBoard finds in the workdir."""
from __future__ import annotations

import matplotlib.colors
import matplotlib.image
import pytest
from matplotlib.figure import Figure
from tensorboard.backend.event_processing import event_accumulator

from tests.helpers import load_script

quickstart = load_script('scripts/quickstart.py')

LSTM, BN = 'none (LSTM)', 'batch (BN-LSTM, gamma=0.1)'


@pytest.mark.slow
def test_quickstart_writes_the_comparison_figure(tmp_path, monkeypatch, capsys):
  panels = []  # every saved figure: [(panel title, {legend label: line color})]
  savefig = Figure.savefig

  def spy(fig, *args, **kwargs):
    panels.append([(ax.get_title(), {line.get_label(): matplotlib.colors.to_hex(line.get_color())
                                     for line in ax.get_lines()}) for ax in fig.axes])
    return savefig(fig, *args, **kwargs)

  monkeypatch.setattr(Figure, 'savefig', spy)
  workdir = tmp_path / 'qs'
  quickstart.main(['--workdir', str(workdir), '--steps', '3'])
  out = capsys.readouterr().out
  assert '| LSTM | none |' in out and '| BN-LSTM | batch |' in out
  figure = workdir / 'compare.png'
  assert f'Learning curves: {figure}' in out
  assert f'tensorboard --logdir {workdir}' in out
  height, width, _ = matplotlib.image.imread(figure).shape
  assert width > height  # the two panels side by side
  # train/loss and val/error, LSTM and BN-LSTM in both, one color per model in every panel.
  [axes] = panels
  assert [title for title, _ in axes] == ['train/loss', 'val/error']
  assert all(list(lines) == [LSTM, BN] for _, lines in axes), axes
  colors = {label: {lines[label] for _, lines in axes} for label in (LSTM, BN)}
  assert all(len(c) == 1 for c in colors.values()) and colors[LSTM] != colors[BN], colors

  # TensorBoard opens on the learning curves: its Time Series groups scalars by prefix in name
  # order, so only train/, val/, val_batch/ are scalars; the final numbers are one text table.
  for norm, groups in (('none', {'train', 'val'}), ('batch', {'train', 'val', 'val_batch'})):
    acc = event_accumulator.EventAccumulator(str(workdir / norm / 'tensorboard'))
    acc.Reload()
    assert {tag.split('/')[0] for tag in acc.Tags()['scalars']} == groups, acc.Tags()
    [results] = acc.Tensors('results')
    assert '| test |' in results.tensor_proto.string_val[0].decode()

  # A rerun reuses the finished runs and rewrites the figure.
  figure.unlink()
  quickstart.main(['--workdir', str(workdir), '--steps', '3'])
  assert figure.exists() and 'Learning curves' in capsys.readouterr().out
