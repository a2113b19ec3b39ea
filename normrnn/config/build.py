"""Building blocks of the experiment config files in the top-level configs/ directory.

A config file is `get_config(arg)` returning a locked ml_collections.ConfigDict that holds EVERY
value a run uses (library code never calls `config.get(key, default)`). `arg` is the string after
the colon in `--config=configs/<task>.py:<arg>`, e.g. `norm=batch,size=cpu,gamma=0.5`, parsed by
`parse_arg` against typed defaults; an unknown key fails with the list of valid keys. The
sections below write every field of the schema (`normrnn.config.schema`); the defaults that
depend on the scheme (initial gain, evaluation modes, the scheme options) come from the scheme
registry (`normrnn.norms`). A config file that builds on another one loads it with
`load_sibling(__file__, 'smnist')`.
"""
from __future__ import annotations

import os

import ml_collections

from normrnn.config.files import load_sibling  # noqa: F401  (re-exported for config files)
from normrnn.config.schema import ConfigError
from normrnn.norms import NORMS, all_options, compose, get_scheme
from normrnn.reader import CONFIG_DEFAULTS as READER_DEFAULTS

SIZES = ('paper', 'cpu', 'smoke')
# The cells of the task configs' `cell=` argument (model.cell). The tanh RNN is not one: it is the
# model of the gradient-flow experiment (Fig. 4a), whose square 'identity' init no task uses.
TASK_CELLS = ('lstm', 'gru')


def parse_arg(arg: str | None, **defaults):
  """Parses 'k=v,k2=v2' into a ConfigDict typed like `defaults`.

  A bare name sets a bool default to True. Unknown keys and values that do not parse as the
  default's type fail with the list of valid keys.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'unknown config argument {key!r}; valid arguments: '
                       f'{", ".join(sorted(defaults))}')
    kind = type(defaults[key])
    if not sep:
      if kind is not bool:
        raise ConfigError(f'config argument {key!r} needs a value ({key}=...)')
      out[key] = True
    elif kind is bool:
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ConfigError(f'config argument {key}={value!r} must be true or false')
      out[key] = value.lower() in ('true', '1')
    else:
      try:
        out[key] = kind(value)
      except ValueError:
        raise ConfigError(f'config argument {key}={value!r} must be a {kind.__name__}') from None
  return out


def check_choice(name: str, value, choices):
  if value not in choices:
    raise ConfigError(f'{name}={value!r} is not valid; choose one of: '
                      f'{", ".join(map(str, choices))}')


def gamma_default(name: str) -> float:
  """The scheme's declared initial gain (0.1 for recurrent BN, 1.0 for LN, ...)."""
  return get_scheme(name).gamma_init


def _composed(name: str, sites: dict):
  """`norms.compose(name, **sites)`, its refusals as ConfigError."""
  check_choice('norm', name, tuple(NORMS))
  try:
    return compose(name, **sites)
  except ValueError as err:
    raise ConfigError(str(err)) from None


def norm_section(name: str, *, gamma: float, max_time_steps: int, stats_rate: float,
                 input: str = '',  # pylint: disable=redefined-builtin
                 recurrent: str = '', cell: str = ''):
  """config.model.norm. gamma < 0 means 'the scheme's declared default'. Every registered
  scheme's own options are written with their declared defaults, so the config has one shape
  whichever scheme a sweep selects. `input`, `recurrent`, `cell`: per-site schemes ('' = the
  named scheme's own module; `normrnn.norms.compose`), e.g. name='batch', input='sequence' for
  BN-e*; the gain default is the named scheme's."""
  _composed(name, dict(input=input, recurrent=recurrent, cell=cell))
  return ml_collections.ConfigDict(dict(
      name=name,
      gamma_init=gamma_default(name) if gamma < 0 else gamma,
      eps=1e-5,                       # inside the sqrt (paper code)
      max_time_steps=max_time_steps,  # T_max: per-step tables; steps beyond reuse the last one
      stats_rate=stats_rate,          # running-average rate of the population statistics
      input=input, recurrent=recurrent, cell=cell,  # per-site schemes ('' = name's own)
      **{option.name: option.default for option in all_options().values()},
  ))


def reader_section(**values):
  """config.model.reader: `normrnn.reader.CONFIG_DEFAULTS` with `values` replacing some (every
  config writes the section; only the question-answering configs change it)."""
  unknown = sorted(set(values) - set(READER_DEFAULTS))
  if unknown:
    raise ConfigError(f'unknown reader field(s) {", ".join(unknown)}; valid: '
                      f'{", ".join(READER_DEFAULTS)}')
  return ml_collections.ConfigDict({**READER_DEFAULTS, **values})


def model_section(*, cell: str, hidden: int, recurrent_init: str, h0_noise: float, norm,
                  hoist_input: bool, remat: bool, reader=None, kernel: str = 'scan'):
  return ml_collections.ConfigDict(dict(
      # The Attentive Reader's sizes and switches (task kind 'qa'; unused by the other tasks).
      reader=reader_section() if reader is None else reader,
      cell=cell, hidden=hidden, layers=1, recurrent_init=recurrent_init,
      forget_bias=1.0,   # paper code: forget slice of the bias starts at 1
      h0_noise=h0_noise,
      unroll=1,          # scan unroll; 1 is fastest on CPU (docs/benchmarks.md)
      # Recompute each step's activations in the backward pass: 5-8x less memory; on CPU also
      # faster for sMNIST's small cell, slower for PTB's 1000 units (docs/benchmarks.md).
      remat=remat,
      # Input projection + input-term norm before the time loop (True) or in each step (False):
      # speed/memory only, same values. On CPU the in-step form is faster for both MNIST's one
      # pixel and PTB's one-hot characters (docs/benchmarks.md); try True on accelerators.
      hoist_input=hoist_input,
      # The implementation of the recurrence (same values): 'scan' (the reference) or 'fused'
      # (hand-written backward pass, normrnn.kernels; docs/benchmarks.md).
      kernel=kernel,
      norm=norm))


def optimizer_section(name: str, learning_rate: float):
  return ml_collections.ConfigDict(dict(
      name=name,                  # 'rmsprop' (Blocks RMSProp, MNIST) or 'adam' (PTB, text8)
      learning_rate=learning_rate,
      clip_norm=1.0,              # global-norm clipping of the raw gradient (Blocks StepClipping)
      rmsprop_decay=0.5,          # released sMNIST code (the paper text says 0.9:
                                  # docs/method.md, "Optimizers")
      rmsprop_eps=1e-5,           # Blocks: step = lr * g / max(sqrt(ms), eps)
      adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8))


def train_section(*, num_steps: int, log_every: int, eval_every: int, checkpoint_every: int):
  return ml_collections.ConfigDict(dict(
      num_steps=num_steps, log_every_steps=log_every, eval_every_steps=eval_every,
      checkpoint_every_steps=checkpoint_every, keep_checkpoints=2, progress_bar=True,
      # Data parallelism (normrnn/parallel.py): 1 = one device; N = the first N devices; -1 = all.
      # The batch is split over the devices; BN statistics stay those of the global batch.
      num_devices=1,
      # Several processes (hosts): call jax.distributed.initialize before anything touches jax;
      # every process runs the same command (coordinator, process count and id from the
      # --coordinator_address/--num_processes/--process_id flags or the cluster environment).
      distributed=False,
      # A process silent for this long is declared dead and the others exit non-zero (no
      # hang); init_timeout_s bounds the wait for all processes at start and at shutdown.
      heartbeat_timeout_s=60, init_timeout_s=300))


def eval_section(*, select_metric: str, eval_batches: int, reestimate_batches: int,
                 reestimate_batch_size: int, val_reestimate_batches: int,
                 modes=('population', 'batch'), full_stream=False):
  return ml_collections.ConfigDict(dict(
      # 'population' = population statistics ('val/...'); 'batch' = batch statistics
      # ('val_batch/...'). The paper selects the model on validation error with batch statistics.
      modes=modes,
      select_metric=select_metric,
      eval_batches=eval_batches,   # batches per validation pass (-1 = the whole split)
      # Population statistics of the `val/` evaluations during training: 'reestimate' = re-
      # estimated from the first `val_reestimate_batches` training batches (of
      # `reestimate_batch_size`) before each evaluation, so `val/` is the deployable model from
      # the first evaluation on; 'ema' = the running averages as they stand (the authors' code:
      # initialized at mean 0 / var 1, they lag for thousands of steps at small rates).
      val_popstats='reestimate',
      val_reestimate_batches=val_reestimate_batches,
      # Before the final test evaluation, population statistics are re-estimated as the plain
      # average of per-batch statistics over training batches
      # (docs/method.md, "Population statistics"); 'ema' keeps the running averages instead.
      # -1 batches = one full pass over the training set.
      popstats='reestimate',
      reestimate_batches=reestimate_batches,
      reestimate_batch_size=reestimate_batch_size,
      # Language models: also score the whole test split as ONE batch-1 sequence with population
      # statistics (PTB's reported number, docs/method.md, pitfall P13), in chunks of
      # `stream_chunk` steps carrying the state ('test_stream/...').
      full_stream=full_stream,
      stream_chunk=1000,
  ))


def eval_section_from_sizes(sizes: dict, **options):
  """`eval_section` from a config's chosen entry of its per-size table: `sizes['eval_batches']`,
  `sizes['reest']` = (reestimate_batches, reestimate_batch_size) and `sizes['val_reest']`
  (val_reestimate_batches). `options`: eval_section's other arguments (select_metric, modes,
  full_stream)."""
  reestimate_batches, reestimate_batch_size = sizes['reest']
  return eval_section(eval_batches=sizes['eval_batches'], reestimate_batches=reestimate_batches,
                      reestimate_batch_size=reestimate_batch_size,
                      val_reestimate_batches=sizes['val_reest'], **options)


def wandb_section(*, group: str, tags=()):
  return ml_collections.ConfigDict(dict(
      mode='disabled',       # 'disabled' | 'offline' | 'online' (online falls back to offline)
      project='normrnn', group=group, name='', tags=tuple(tags), init_timeout_s=20.0,
      tensorboard=True))


def experiment(*, args, task: str, paper: str, data, model, optimizer, train, eval_, wandb_group):
  """Assembles and locks the full config. `args` is the parsed config argument."""
  config = ml_collections.ConfigDict()
  config.task = task          # a label for tables and wandb groups
  config.paper = paper        # the paper row this config reproduces
  config.seed = args.seed
  config.data = data
  config.model = model
  config.optimizer = optimizer
  config.train = train
  config.eval = eval_
  config.wandb = wandb_section(group=wandb_group, tags=(task, model.norm.name, args.size))
  config.lock()
  return config


SELECTIONS = ('population', 'paper')


def eval_modes(norm: str, selection: str = 'population', **sites):
  """(eval.modes, eval.select_metric) for a scheme (with per-site schemes `sites`, e.g.
  input='sequence', as in `norm_section`).

  Modes: ('population', 'batch') for batch-statistic schemes, else ('population',).
  Selection: 'population' selects every scheme on `val/error` (population statistics: the model
  as it will be deployed, comparable across schemes); 'paper' is the authors' protocol, which
  selects the batch-statistic schemes on `val_batch/error` (batch statistics) and the others on
  `val/error`.
  """
  scheme = _composed(norm, sites)
  check_choice('select', selection, SELECTIONS)
  if scheme.batch_statistics:
    return ('population', 'batch'), ('val_batch/error' if selection == 'paper' else 'val/error')
  return ('population',), 'val/error'


def repo_path(config_file: str, path: str) -> str:
  """`path` relative to the repository holding `config_file` (configs/<task>.py), absolute, so
  that a command means the same data from any working directory; '' and absolute paths are
  returned as they are."""
  if not path or os.path.isabs(path):
    return path
  root = os.path.dirname(os.path.dirname(os.path.abspath(config_file)))
  return os.path.normpath(os.path.join(root, path))


def data_section(*, config_file, name, dir, pixel_order='scanline', permutation_seed=1, seq_len,
                 batch_size, eval_batch_size, relevant_sentences=0, max_vocab=0):
  """config.data; a relative `dir` is taken relative to the repository root (`repo_path`).
  Question answering only (0 elsewhere): `relevant_sentences` (0 = whole documents, k = the k
  sentences most relevant to the query) and `max_vocab` (0 = every training word); `seq_len`
  is then the longest document (longer ones are truncated)."""
  return ml_collections.ConfigDict(dict(
      name=name, dir=repo_path(config_file, dir), source='files', download=False,
      pixel_order=pixel_order, permutation_seed=permutation_seed, seq_len=seq_len,
      batch_size=batch_size, eval_batch_size=eval_batch_size,
      relevant_sentences=relevant_sentences, max_vocab=max_vocab))
