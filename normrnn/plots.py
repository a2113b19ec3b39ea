"""Learning-curve figures of run directories (`normrnn.rundir.Run`), shared by the quickstart and
experiments/compare.py.

  styles = run_styles(runs)                                  # one color per run, in every plot
  plot_metric(runs, 'val/bpc', 'val_bpc.png', styles)       # one metric, one line per run
  plot_panels(runs, ['train/loss', 'val/error'], 'compare.png')  # side-by-side panels

Figures are built with matplotlib's object API (no pyplot): importing this module neither picks
a backend nor touches the figures of an interactive session.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure

LINESTYLES = ('-', '--', ':', '-.')


def run_styles(runs: Sequence) -> list[dict]:
  """One line style per run, by run order: the tab10 colors, then the next line style for runs
  11-20 and so on, so that a run looks the same in every plot (also in plots that some runs did
  not log)."""
  colors = matplotlib.colormaps['tab10'].colors
  return [dict(color=colors[i % len(colors)],
               linestyle=LINESTYLES[(i // len(colors)) % len(LINESTYLES)])
          for i in range(len(runs))]


def draw_metric(ax, runs: Sequence, metric: str, styles: Sequence[dict]) -> bool:
  """One line per run that logged `metric` (NaN points left out), labelled `Run.label`; False if
  none did (the axes are then left empty)."""
  drawn = False
  for run, style in zip(runs, styles):
    points = [(r['step'], r[metric]) for r in run.records
              if metric in r and isinstance(r[metric], (int, float)) and math.isfinite(r[metric])]
    if points:
      steps, values = zip(*points)
      ax.plot(steps, values, marker='.' if len(points) < 30 else None, label=run.label, **style)
      drawn = True
  if drawn:
    ax.set_xlabel('training step')
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return drawn


def plot_metric(runs: Sequence, metric: str, path: str, styles=None) -> bool:
  """Writes a PNG of one metric (see `draw_metric`); False, and no file, if no run logged it.
  `styles`: per-run line styles (default `run_styles(runs)`)."""
  styles = run_styles(runs) if styles is None else styles
  fig = Figure(figsize=(7, 4.5))
  drawn = draw_metric(fig.subplots(), runs, metric, styles)
  if drawn:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
  return drawn


def plot_panels(runs: Sequence, metrics: Sequence[str], path: str, styles=None,
                title: str | None = None) -> list[str]:
  """Writes one PNG with a panel per metric side by side, each run in the same style in every
  panel. Returns the metrics that some run logged (the others' panels say 'not logged')."""
  styles = run_styles(runs) if styles is None else styles
  fig = Figure(figsize=(5.5 * len(metrics), 4.2))
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  drawn = []
  for ax, metric in zip(axes, metrics):
    if draw_metric(ax, runs, metric, styles):
      drawn.append(metric)
    else:
      ax.set_title(metric)
      ax.text(0.5, 0.5, 'not logged', ha='center', va='center', transform=ax.transAxes)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return drawn
