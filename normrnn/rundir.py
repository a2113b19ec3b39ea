"""Reading a run directory (the workdir of `normrnn.train`) back into one object.

  run = read_run('runs/ptb_bn')          # config, metrics, results, best, status
  run.label, run.scheme, run.gamma, run.finished, run.final('test/bpc')
  runs = find_runs('runs/pmnist_gamma')  # every run directory under a sweep root
  exp, state, step = restore(run)        # Experiment + the selected (best) TrainState

A workdir holds config.json, metrics.jsonl, results.json (once finished), best.json,
checkpoints/, best/, tensorboard/ and, for runs started by `normrnn.launch`, train.log,
launch.pid (while training) and launch.json (how the last launch ended); `normrnn.launch.status`
says where such a run stands.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from normrnn.norms import NORMS
from normrnn.writers import read_metrics

CONFIG, METRICS, RESULTS, BEST = 'config.json', 'metrics.jsonl', 'results.json', 'best.json'
LOG = 'train.log'


def read_json(path: str):
  """The parsed JSON file, or None if it does not exist."""
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


@dataclasses.dataclass
class Run:
  """One run directory.

  Attributes:
    path: the directory.
    name: its base name.
    config: config.json as a dict ({} if missing).
    records: the metrics.jsonl lines ([] if missing).
    results: results.json (None until the run has finished).
    best: best.json (the selected step and its metric), or None.
  """
  path: str
  name: str
  config: dict
  records: list
  results: dict | None
  best: dict | None

  @property
  def finished(self) -> bool:
    return self.results is not None

  @property
  def last_step(self) -> int | None:
    """The last step logged in metrics.jsonl, or None."""
    return self.records[-1]['step'] if self.records else None

  @property
  def num_steps(self) -> int | None:
    return self.config.get('train', {}).get('num_steps')

  @property
  def task(self) -> str | None:
    return self.config.get('task', (self.results or {}).get('task'))

  @property
  def scheme(self) -> str | None:
    norm = self.config.get('model', {}).get('norm', {})
    return norm.get('name', (self.results or {}).get('norm'))

  @property
  def gamma(self) -> float | None:
    norm = self.config.get('model', {}).get('norm', {})
    return norm.get('gamma_init', (self.results or {}).get('gamma_init'))

  @property
  def model_label(self) -> str:
    """The scheme's display label ('BN-LSTM'); the scheme name if it is not registered."""
    scheme = NORMS.get(self.scheme)
    return scheme.label if scheme is not None else str(self.scheme)

  @property
  def label(self) -> str:
    """'<name> (BN-LSTM, gamma=0.1)'; gamma only for schemes that have a gain."""
    if self.scheme == 'none' or self.gamma is None:
      return f'{self.name} ({self.model_label})'
    return f'{self.name} ({self.model_label}, gamma={self.gamma:g})'

  def final(self, key: str, default=None):
    """A final metric of results.json ('test/bpc'), or `default`."""
    return ((self.results or {}).get('metrics') or {}).get(key, default)

  def series(self, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over metrics.jsonl (lines without it are skipped)."""
    points = [(r['step'], r[key]) for r in self.records if key in r]
    return [p[0] for p in points], [p[1] for p in points]

  def lookup(self, dotted: str, default=None) -> Any:
    """A config value by dotted key ('model.norm.name'), or `default`."""
    node = self.config
    for part in dotted.split('.'):
      if not isinstance(node, dict) or part not in node:
        return default
      node = node[part]
    return node


def is_run_dir(path: str) -> bool:
  return os.path.exists(os.path.join(path, METRICS)) or os.path.exists(
      os.path.join(path, CONFIG))


def read_run(path: str) -> Run:
  """Reads one run directory. Raises FileNotFoundError if `path` holds neither config.json nor
  metrics.jsonl."""
  if not os.path.isdir(path) or not is_run_dir(path):
    raise FileNotFoundError(f'{path} is not a run directory (no {CONFIG} or {METRICS})')
  metrics = os.path.join(path, METRICS)
  return Run(path=path, name=os.path.basename(os.path.normpath(path)),
             config=read_json(os.path.join(path, CONFIG)) or {},
             records=read_metrics(metrics) if os.path.exists(metrics) else [],
             results=read_json(os.path.join(path, RESULTS)),
             best=read_json(os.path.join(path, BEST)))


def find_runs(root: str) -> list[Run]:
  """Every run directory directly under `root` (e.g. a sweep's workdir), sorted by name."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'{root} is not a directory')
  return [read_run(os.path.join(root, name)) for name in sorted(os.listdir(root))
          if is_run_dir(os.path.join(root, name))]


def restore(run: Run | str, *, which: str = 'best', data_dir: str | None = None):
  """Rebuilds a run's Experiment and restores a checkpoint.

  Args:
    run: a Run or a run directory.
    which: 'best' (the model selected on validation; falls back to the latest checkpoint with a
      warning if there is none) or 'latest'.
    data_dir: replaces config.data.dir (data moved since the run).

  Returns:
    (Experiment, TrainState, restored step).
  """
  # pylint: disable=g-import-not-at-top  (jax-heavy; reading runs does not need it)
  import ml_collections
  from normrnn.checkpoint import Checkpointer
  from normrnn.config.schema import upgrade_saved_config
  from normrnn.experiment import Experiment
  run = read_run(run) if isinstance(run, str) else run
  config = ml_collections.ConfigDict(upgrade_saved_config(run.config))
  if data_dir is not None:
    config.data.dir = data_dir
  config.train.num_devices = 1  # placement only; restored arrays land on the default device
  config.lock()
  exp = Experiment.from_config(config)
  target = exp.abstract_state()
  directories = (['best'] if which == 'best' else []) + ['checkpoints']
  for i, sub in enumerate(directories):
    if not os.path.isdir(os.path.join(run.path, sub)):
      continue
    ckpt = Checkpointer(os.path.join(run.path, sub), max_to_keep=100, read_only=True)
    step = ckpt.latest_step()
    if step is not None:
      if i > 0 and which == 'best':
        logging.warning('%s has no best/ checkpoint; using the latest checkpoint (step %d)',
                        run.path, step)
      state = ckpt.restore(step, target)
      ckpt.close()
      return exp, state, step
    ckpt.close()
  raise FileNotFoundError(f'{run.path} has no checkpoint in {" or ".join(directories)}/')
