"""The config schema and its validation: the one place that knows which fields a run's config has
and which values they may take.

`validate(config)` runs before anything is written to the workdir, any data is read or anything
is compiled; every bad value raises `ConfigError` with one line naming the field, the value and
the valid choices. The fields of `model.norm` come from the scheme registry (`normrnn.norms`):
the common ones below plus every registered scheme's own options.
"""
from __future__ import annotations

import json

from normrnn import cells, inits, kernels, optim, reader
from normrnn.data import tasks as data_tasks
from normrnn.norms import COMPOSABLE_SITES, NORMS, all_options, compose, valid_at

SECTIONS = {
    'data': data_tasks.CONFIG_FIELDS,
    'model': ('cell', 'hidden', 'layers', 'recurrent_init', 'forget_bias', 'h0_noise', 'unroll',
              'remat', 'hoist_input', 'kernel', 'norm', 'reader'),
    # The Attentive Reader's own sizes and switches (task kind 'qa'; normrnn.reader).
    'model.reader': tuple(reader.CONFIG_DEFAULTS),
    # + options. input/recurrent/cell: per-site schemes ('' = the named scheme's own module;
    # normrnn.norms.compose), e.g. name='batch', input='sequence' is BN-e*.
    'model.norm': ('name', 'gamma_init', 'eps', 'max_time_steps', 'stats_rate',
                   *COMPOSABLE_SITES),
    'optimizer': ('name', 'learning_rate', 'clip_norm', 'rmsprop_decay', 'rmsprop_eps', 'adam_b1',
                  'adam_b2', 'adam_eps'),
    'train': ('num_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints', 'progress_bar', 'num_devices', 'distributed',
              'heartbeat_timeout_s', 'init_timeout_s'),
    'eval': ('modes', 'select_metric', 'eval_batches', 'val_popstats', 'val_reestimate_batches',
             'popstats', 'reestimate_batches', 'reestimate_batch_size', 'full_stream',
             'stream_chunk'),
    'wandb': ('mode', 'project', 'group', 'name', 'tags', 'init_timeout_s', 'tensorboard'),
}
TOP_LEVEL = ('task', 'paper', 'seed', 'data', 'model', 'optimizer', 'train', 'eval', 'wandb')
EVAL_MODES = ('population', 'batch')
EVAL_PREFIX = {'population': 'val', 'batch': 'val_batch'}
POPSTATS = ('reestimate', 'ema')
WANDB_MODES = ('disabled', 'offline', 'online')

# Fields that may differ between a checkpoint's config and the config of the run resuming it:
# durations, logging, placement and speed settings that do not change the computed values.
RESUMABLE_CHANGES = ('train.num_steps', 'train.log_every_steps', 'train.eval_every_steps',
                     'train.checkpoint_every_steps', 'train.keep_checkpoints',
                     'train.progress_bar', 'train.num_devices', 'train.distributed',
                     'train.heartbeat_timeout_s', 'train.init_timeout_s',
                     'model.hoist_input', 'model.remat', 'model.unroll', 'model.kernel',
                     'data.dir', 'data.download', 'wandb.mode', 'wandb.name', 'wandb.tags',
                     'wandb.init_timeout_s', 'wandb.tensorboard')

# Fields added after runs were already saved, with the value that reproduces what those runs did,
# so a saved config.json that lacks them is read as if it had these values
# (`upgrade_saved_config`) and such a run resumes exactly as it was.
ADDED_FIELDS = {
    'model.hoist_input': True,     # before: the input term was always hoisted
    'model.kernel': 'scan',        # before: always the scan
    'train.num_devices': 1,        # before: always one device
    'train.distributed': False,
    'train.heartbeat_timeout_s': 60,  # (multi-process settings; no effect on a single process)
    'train.init_timeout_s': 300,
    'eval.val_popstats': 'ema',    # before: val/ used the running averages
    'eval.val_reestimate_batches': 1,
    'data.relevant_sentences': 0,  # before: no question-answering data (0 = unused)
    'data.max_vocab': 0,
    'model.norm.input': '',        # before: the named scheme at every site
    'model.norm.recurrent': '',
    'model.norm.cell': '',
    # before: no question-answering model (the section is unused by the other tasks)
    **{f'model.reader.{k}': v for k, v in reader.CONFIG_DEFAULTS.items()},
}


class ConfigError(ValueError):
  """A bad config value; the message is one line: field, value, valid choices."""


def norm_fields() -> tuple[str, ...]:
  """The fields of config.model.norm: the common ones + every registered scheme's options."""
  return SECTIONS['model.norm'] + tuple(all_options())


def section_fields(dotted: str) -> tuple[str, ...]:
  return norm_fields() if dotted == 'model.norm' else SECTIONS[dotted]


def upgrade_saved_config(saved: dict) -> dict:
  """A saved config.json dict with the fields of ADDED_FIELDS and the options of schemes
  registered since (their defaults; they do not affect other schemes) filled in where missing."""
  out = json.loads(json.dumps(saved))
  added = dict(ADDED_FIELDS)
  added.update({f'model.norm.{name}': option.default for name, option in all_options().items()})
  for dotted, value in added.items():
    *parents, leaf = dotted.split('.')
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node.setdefault(leaf, value)
  return out


def flatten(d, prefix=''):
  """A nested dict as {'a.b.c': leaf} (config.json's fields by dotted name)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_resume(saved: dict | None, current: dict) -> None:
  """Raises ConfigError if a checkpoint's config differs from `current` in fields that are not
  RESUMABLE_CHANGES (both plain dicts, as in config.json)."""
  if saved is None:
    return
  a = flatten(upgrade_saved_config(saved))
  b = flatten(json.loads(json.dumps(current)))
  changed = sorted(k for k in set(a) | set(b)
                   if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
  if changed:
    details = '; '.join(f'{k}: checkpoint {a.get(k)!r} -> now {b.get(k)!r}' for k in changed)
    raise ConfigError(
        f'the workdir holds a checkpoint of a run with a different config ({details}). Use a new '
        f'--workdir, or change only fields that may change on resume: '
        f'{", ".join(RESUMABLE_CHANGES)}.')


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
    _fail(f'{name}={value!r} is not valid; it must be >= 1'
          f'{" (or -1 for all)" if allow_minus_one else ""}')


def select_metrics(modes) -> list[str]:
  """The valid eval.select_metric values for the given eval.modes."""
  return [f'{EVAL_PREFIX[mode]}/{metric}' for mode in EVAL_PREFIX if mode in modes
          for metric in ('error', 'loss')]


def _check_sites(n, cell: str):
  """The scheme of config.model.norm with its per-site fields applied (`norms.compose`)."""
  sites = {}
  for site in COMPOSABLE_SITES:
    value, valid = n[site], valid_at(n.name, site)
    if value != '' and value not in valid:
      _fail(f'model.norm.{site}={value!r} is not valid with model.norm.name={n.name!r}; choose '
            f"'' (the named scheme's own) or one of: {', '.join(valid)}")
    sites[site] = value
  scheme = compose(n.name, **sites)
  if cell not in scheme.cells:
    why = (' (a GRU has no cell site: leave model.norm.cell empty)'
           if cell == 'gru' and n.cell else '')
    _fail(f'model.norm {scheme.name!r} is not valid with model.cell={cell!r}{why}; its cells: '
          f'{", ".join(scheme.cells)}')
  return scheme


def _check_reader(r, batch_size: int) -> None:
  """config.model.reader (normrnn.reader; checked for every task, used by task kind 'qa')."""
  for name in ('embed', 'attention', 'output'):
    _positive(f'model.reader.{name}', r[name])
  if not isinstance(r.bidirectional, bool):
    _fail(f'model.reader.bidirectional={r.bidirectional!r} is not valid; it must be True or False')
  _choice('model.reader.reverse_padding', r.reverse_padding, reader.REVERSE_PADDING)
  _choice('model.reader.everywhere', r.everywhere, reader.EVERYWHERE)
  _choice('model.reader.answer_mask', r.answer_mask, reader.ANSWER_MASKS)
  for name in ('everywhere_gamma', 'embed_init_std'):
    if not r[name] > 0:
      _fail(f'model.reader.{name}={r[name]} is not valid; it must be > 0')
  if r.everywhere == 'batch' and batch_size < 2:
    _fail(f"data.batch_size={batch_size} is not valid with model.reader.everywhere='batch': "
          'batch statistics are undefined at batch size 1')


def check_distributed(train) -> None:
  """The multi-process settings of config.train (checked before `jax.distributed.initialize`,
  which must run before anything else touches jax, so before `validate`)."""
  if not isinstance(train.distributed, bool):
    _fail(f'train.distributed={train.distributed!r} is not valid; it must be True or False')
  for name in ('heartbeat_timeout_s', 'init_timeout_s'):
    value = train[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      _fail(f'train.{name}={value!r} is not valid; it must be an integer number of seconds >= 1')


def validate(config, *, device_count: int | None = None,
             process_count: int | None = None) -> None:
  """Raises ConfigError naming the field and the valid choices for any bad value.

  Args:
    config: the whole run config (a ConfigDict as the config files build it).
    device_count: the number of devices `train.num_devices` may use; None asks jax (call it
      after `jax.distributed.initialize` on several hosts).
    process_count: the processes of the job; None asks jax when device_count is None, else 1.
  """
  keys = set(config.keys())
  if keys != set(TOP_LEVEL):
    _fail(f'config sections {sorted(keys)} differ from the expected {sorted(TOP_LEVEL)}: '
          f'missing {sorted(set(TOP_LEVEL) - keys)}, unknown {sorted(keys - set(TOP_LEVEL))}')
  for dotted in SECTIONS:
    fields = section_fields(dotted)
    got = set(_section(config, dotted).keys())
    if got != set(fields):
      _fail(f'config.{dotted} has missing fields {sorted(set(fields) - got)} and unknown fields '
            f'{sorted(got - set(fields))}; valid fields: {", ".join(fields)}')
  d, m, n, o, t, e, w = (config.data, config.model, config.model.norm, config.optimizer,
                         config.train, config.eval, config.wandb)
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
    _fail(f'seed={config.seed!r} is not valid; it must be an integer >= 0')
  try:
    data_tasks.check_data_config(d)
  except data_tasks.DataError as err:
    _fail(str(err))

  _choice('model.cell', m.cell, tuple(cells.CELLS))
  _choice('model.recurrent_init', m.recurrent_init, inits.RECURRENT_INITS)
  for name in ('hidden', 'layers', 'unroll'):
    _positive(f'model.{name}', m[name])
  if m.h0_noise < 0:
    _fail(f'model.h0_noise={m.h0_noise} is not valid; it must be >= 0')
  _choice('model.norm.name', n.name, tuple(NORMS))
  scheme = NORMS[n.name]
  if m.cell not in scheme.cells:
    _choice(f'model.norm.name (with model.cell={m.cell!r})', n.name,
            [name for name, s in NORMS.items() if m.cell in s.cells])
  scheme = _check_sites(n, m.cell)
  _choice('model.kernel', m.kernel, kernels.names())
  why = kernels.refusal(m.kernel, m.cell, scheme, hoist_input=m.hoist_input, remat=m.remat,
                        unroll=m.unroll, hidden=m.hidden)
  if why is not None:
    _fail(f'model.kernel={m.kernel!r} is not valid: {why}')
  if not n.gamma_init > 0:
    _fail(f'model.norm.gamma_init={n.gamma_init} is not valid; it must be > 0 (the paper uses '
          '0.1 for BN; values <= 0.01 were unstable)')
  if not n.eps > 0:
    _fail(f'model.norm.eps={n.eps} is not valid; it must be > 0')
  for name, option in all_options().items():
    if not option.check(n[name]):
      _fail(f'model.norm.{name}={n[name]!r} is not valid; it must be {option.valid}')
  _positive('model.norm.max_time_steps', n.max_time_steps)
  length = data_tasks.train_length(d)
  if n.max_time_steps < length:
    _fail(f'model.norm.max_time_steps={n.max_time_steps} is not valid; it must be >= the training '
          f'length {length} of data.name={d.name!r} (set it to {length})')
  if not 0 < n.stats_rate <= 1:
    _fail(f'model.norm.stats_rate={n.stats_rate} is not valid; it must be in (0, 1]')
  _check_reader(m.reader, d.batch_size)
  if scheme.batch_statistics and d.batch_size < 2:
    named = f'model.norm {scheme.name!r}' if scheme.parts else f'model.norm.name={n.name!r}'
    _fail(f'data.batch_size={d.batch_size} is not valid with {named}: batch '
          'statistics are undefined at batch size 1 (zero variance). Use batch_size >= 2, or a '
          'scheme without batch statistics: '
          + ', '.join(k for k, s in NORMS.items() if not s.batch_statistics))

  _choice('optimizer.name', o.name, optim.OPTIMIZERS)
  for name in ('learning_rate', 'clip_norm', 'rmsprop_eps', 'adam_eps'):
    if not o[name] > 0:
      _fail(f'optimizer.{name}={o[name]} is not valid; it must be > 0')
  for name in ('rmsprop_decay', 'adam_b1', 'adam_b2'):
    if not 0 <= o[name] < 1:
      _fail(f'optimizer.{name}={o[name]} is not valid; it must be in [0, 1)')

  _positive('train.num_steps', t.num_steps)
  for name in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints'):
    _positive(f'train.{name}', t[name])
  _positive('train.num_devices', t.num_devices, allow_minus_one=True)
  check_distributed(t)
  if device_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    device_count, process_count = len(jax.devices()), jax.process_count()
  process_count = 1 if process_count is None else process_count
  if t.num_devices > device_count:
    _fail(f'train.num_devices={t.num_devices} is not valid: this machine has {device_count} '
          f'device(s); use 1..{device_count} or -1 for all')
  devices = device_count if t.num_devices == -1 else t.num_devices
  if devices > 1 and d.batch_size % devices:
    _fail(f'data.batch_size={d.batch_size} is not divisible by the {devices} devices of '
          f'train.num_devices={t.num_devices}: every device must get the same number of examples')
  if process_count > 1:
    # Every process owns part of the mesh and of every batch, evaluation batches included (one
    # process cannot compute a batch the others do not see).
    if devices != device_count:
      _fail(f'train.num_devices={t.num_devices} is not valid in a job of {process_count} '
            f'processes: the mesh must span all {device_count} devices; use -1')
    for name, size in (('data.eval_batch_size', d.eval_batch_size),
                       ('eval.reestimate_batch_size', e.reestimate_batch_size)):
      if size % devices:
        _fail(f'{name}={size} is not divisible by the {devices} devices of this '
              f'{process_count}-process job: every device must get the same number of examples')

  if not e.modes or any(mode not in EVAL_MODES for mode in e.modes):
    _fail(f'eval.modes={tuple(e.modes)!r} is not valid; each must be one of '
          f'{", ".join(EVAL_MODES)}')
  _choice('eval.select_metric', e.select_metric, select_metrics(e.modes))
  _positive('eval.eval_batches', e.eval_batches, allow_minus_one=True)
  _choice('eval.popstats', e.popstats, POPSTATS)
  _choice('eval.val_popstats', e.val_popstats, POPSTATS)
  _positive('eval.val_reestimate_batches', e.val_reestimate_batches)
  _positive('eval.reestimate_batches', e.reestimate_batches, allow_minus_one=True)
  _positive('eval.reestimate_batch_size', e.reestimate_batch_size)
  _positive('eval.stream_chunk', e.stream_chunk)
  if e.full_stream and data_tasks.task_kind(d.name) != 'lm':
    _fail(f'eval.full_stream=True is not valid with data.name={d.name!r}: it is for language '
          'models')
  _choice('wandb.mode', w.mode, WANDB_MODES)
  if not w.init_timeout_s > 0:
    _fail(f'wandb.init_timeout_s={w.init_timeout_s} is not valid; it must be > 0')
