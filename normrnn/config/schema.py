"""Validation of a whole experiment config before anything is downloaded or compiled.

The config is the whole truth: every field below must exist (configs/common.py writes them all),
no field may be missing or unknown, and impossible values fail here with the valid choices.
"""
from __future__ import annotations

import json

from normrnn import cells, inits, optim
from normrnn.data import TASK_NAMES
from normrnn.norms import NORMS, get_scheme

SECTIONS = {
    'data': ('name', 'dir', 'source', 'download', 'pixel_order', 'permutation_seed', 'seq_len',
             'batch_size', 'eval_batch_size'),
    'model': ('cell', 'hidden', 'layers', 'recurrent_init', 'forget_bias', 'h0_noise', 'unroll',
              'remat', 'hoist_input', 'norm'),
    'model.norm': ('name', 'gamma_init', 'eps', 'streaming_mix', 'max_time_steps', 'stats_rate'),
    'optimizer': ('name', 'learning_rate', 'clip_norm', 'rmsprop_decay', 'rmsprop_eps', 'adam_b1',
                  'adam_b2', 'adam_eps'),
    'train': ('num_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints', 'progress_bar', 'num_devices', 'distributed'),
    'eval': ('modes', 'select_metric', 'eval_batches', 'popstats', 'reestimate_batches',
             'reestimate_batch_size', 'full_stream', 'stream_chunk'),
    'wandb': ('mode', 'project', 'group', 'name', 'tags', 'init_timeout_s', 'tensorboard'),
}
TOP_LEVEL = ('task', 'paper', 'seed', 'data', 'model', 'optimizer', 'train', 'eval', 'wandb')
EVAL_MODES = ('population', 'batch')
POPSTATS = ('reestimate', 'ema')
WANDB_MODES = ('disabled', 'offline', 'online')


class ConfigError(ValueError):
  pass


# Fields added after runs were already saved, with the value that reproduces what those runs did.
# None of them changes the computed values (speed/placement only), so a saved config.json that
# lacks them is read as if it had these values (`upgrade_saved_config`).
ADDED_FIELDS = {
    'model.hoist_input': True,     # 2026-11-24: before, the input term was always hoisted
    'train.num_devices': 1,        # 2026-11-24: before, always one device
    'train.distributed': False,
}


def upgrade_saved_config(saved: dict) -> dict:
  """A saved config.json dict with the fields of ADDED_FIELDS filled in where missing."""
  out = json.loads(json.dumps(saved))
  for dotted, value in ADDED_FIELDS.items():
    *parents, leaf = dotted.split('.')
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node.setdefault(leaf, value)
  return out


def _section(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _fail(msg):
  raise ConfigError(msg)


def _choice(name, value, choices):
  if value not in choices:
    _fail(f'{name}={value!r} is not valid; choose one of: {", ".join(map(str, choices))}')


def _positive(name, value, *, allow_minus_one=False):
  if allow_minus_one and value == -1:
    return
  if not value >= 1:
    _fail(f'{name} must be >= 1{" (or -1 for all)" if allow_minus_one else ""}, got {value}')


def validate(config) -> None:
  """Raises ConfigError naming the field and the valid choices for any bad value."""
  keys = set(config.keys())
  if keys != set(TOP_LEVEL):
    _fail(f'config sections {sorted(keys)} differ from the expected {sorted(TOP_LEVEL)}: '
          f'missing {sorted(set(TOP_LEVEL) - keys)}, unknown {sorted(keys - set(TOP_LEVEL))}')
  for dotted, fields in SECTIONS.items():
    got = set(_section(config, dotted).keys())
    if got != set(fields):
      _fail(f'config.{dotted} has missing fields {sorted(set(fields) - got)} and unknown fields '
            f'{sorted(got - set(fields))}; valid fields: {", ".join(fields)}')
  d, m, n, o, t, e, w = (config.data, config.model, config.model.norm, config.optimizer,
                         config.train, config.eval, config.wandb)
  _choice('data.name', d.name, TASK_NAMES)
  _choice('data.source', d.source, ('files', 'tfds'))
  _choice('data.pixel_order', d.pixel_order, ('scanline', 'permuted', 'with_replacement'))
  for name in ('seq_len', 'batch_size', 'eval_batch_size'):
    _positive(f'data.{name}', d[name])
  if d.name in ('ptb_char', 'ptb_char_valid', 'text8') and d.seq_len < 2:
    _fail(f'data.seq_len={d.seq_len} gives no prediction step: a language-model segment of '
          'length L has L - 1 predictions; use data.seq_len >= 2 (the paper: 100 PTB, 180 text8)')
  _choice('model.cell', m.cell, tuple(cells.CELLS))
  _choice('model.recurrent_init', m.recurrent_init, inits.RECURRENT_INITS)
  for name in ('hidden', 'layers', 'unroll'):
    _positive(f'model.{name}', m[name])
  if m.h0_noise < 0:
    _fail(f'model.h0_noise must be >= 0, got {m.h0_noise}')
  _choice('model.norm.name', n.name, tuple(NORMS))
  if not n.gamma_init > 0:
    _fail(f'model.norm.gamma_init must be > 0, got {n.gamma_init} (the paper uses 0.1; values '
          '<= 0.01 were unstable)')
  if not n.eps > 0:
    _fail(f'model.norm.eps must be > 0, got {n.eps}')
  if not 0 <= n.streaming_mix <= 1:
    _fail(f'model.norm.streaming_mix must be in [0, 1], got {n.streaming_mix}')
  _positive('model.norm.max_time_steps', n.max_time_steps)
  if not 0 < n.stats_rate <= 1:
    _fail(f'model.norm.stats_rate must be in (0, 1], got {n.stats_rate}')
  if get_scheme(n.name).uses_batch_statistics and d.batch_size < 2:
    _fail(f'data.batch_size=1 with model.norm.name={n.name!r}: batch statistics are undefined at '
          'batch size 1 (zero variance). Use batch_size >= 2, or a scheme without batch '
          'statistics (none, layer, weight, cosine, streaming).')
  _choice('optimizer.name', o.name, optim.OPTIMIZERS)
  for name in ('learning_rate', 'clip_norm', 'rmsprop_eps', 'adam_eps'):
    if not o[name] > 0:
      _fail(f'optimizer.{name} must be > 0, got {o[name]}')
  _positive('train.num_steps', t.num_steps)
  for name in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints'):
    _positive(f'train.{name}', t[name])
  if t.num_devices != -1:
    _positive('train.num_devices', t.num_devices, allow_minus_one=True)
  if t.num_devices > 1 and d.batch_size % t.num_devices:
    _fail(f'data.batch_size={d.batch_size} is not divisible by train.num_devices='
          f'{t.num_devices}: every device must get the same number of examples')
  if not e.modes or any(mode not in EVAL_MODES for mode in e.modes):
    _fail(f'eval.modes={tuple(e.modes)!r}: each must be one of {", ".join(EVAL_MODES)}')
  valid_select = [f'{prefix}/{metric}'
                  for mode, prefix in (('population', 'val'), ('batch', 'val_batch'))
                  if mode in e.modes for metric in ('error', 'loss')]
  _choice('eval.select_metric', e.select_metric, valid_select)
  _positive('eval.eval_batches', e.eval_batches, allow_minus_one=True)
  _choice('eval.popstats', e.popstats, POPSTATS)
  _positive('eval.reestimate_batches', e.reestimate_batches, allow_minus_one=True)
  _positive('eval.reestimate_batch_size', e.reestimate_batch_size)
  _positive('eval.stream_chunk', e.stream_chunk)
  if e.full_stream and d.name in ('digits', 'mnist', 'mnist10k'):
    _fail(f'eval.full_stream is for language models; data.name={d.name!r} is a classification '
          'task')
  _choice('wandb.mode', w.mode, WANDB_MODES)
