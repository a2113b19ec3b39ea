"""Tasks: fixed-shape numpy batches for training, evaluation and BN re-estimation.

A task is a plain object (numpy only, no jax). Batches are dicts of numpy arrays:

  classify  inputs  float32 [batch, time, 1]  pixels in [0, 1], in the chosen pixel order
            targets int32   [batch]           class labels
            mask    float32 [batch, time]     1 = valid step
            weights float32 [batch]           1 = real example, 0 = padding row
  lm        inputs  int32   [batch, time]     symbol ids (the model one-hot encodes them)
            targets int32   [batch, time]     the next symbol of every input position
            mask    float32 [batch, time]     1 = a real prediction step
            weights float32 [batch]           1 = real segment, 0 = padding row

Training batches are a deterministic function of (seed, step), so a resumed run sees exactly the
data it would have seen: epoch = step // steps_per_epoch draws its shuffle (and, for LM, its
random offset) from np.random.default_rng([seed, epoch]). Deviation from Fuel's ShuffledScheme,
which the paper's code used: the last partial training batch of an epoch is dropped, so every
training batch has the same shape and the jitted step compiles once.

Process shares (multi-process data parallelism, normrnn/parallel.py): after
`task.set_share(i, n)` every batch method returns only rows [i*B/n, (i+1)*B/n) of the batch it
would return otherwise (B its batch size, padding rows included), and builds only those rows.
The global batch stays the same function of seed and step; `Task._local` is the one place that
cuts a share, and every batch builder calls it.
"""
from __future__ import annotations

import operator
from pathlib import Path

import numpy as np

from normrnn.data import mnist, sources
from normrnn.data.files import DataError

SPLITS = ('train', 'valid', 'test')
TASK_NAMES = tuple(sources.LOADERS)  # digits, mnist, mnist10k, ptb_char, ptb_char_valid, text8,
                                     # cnn_qa, ptb_cloze


def _integer(value, what: str, minimum: int, maximum: int | None = None) -> int:
  """`value` as an int (Python, numpy or scalar jax integers) in [minimum, maximum)."""
  try:
    number = None if isinstance(value, bool) else operator.index(value)
  except TypeError:
    number = None
  if number is None or number < minimum or (maximum is not None and number >= maximum):
    bounds = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum})'
    raise DataError(f'{what} must be an integer {bounds}, got {value!r}.')
  return number


def _positive_int(value, what: str) -> int:
  return _integer(value, what, 1)


class Task:
  """Shared interface. Attributes:

    name, kind ('classify', 'lm' or 'qa': qa.py), splits ('train', 'valid', 'test'),
    input_features  features per input step (1 for images; vocab_size for LM, one-hot),
    num_classes     10 for images, vocab_size for LM,
    vocab_size      None for images,
    train_length    prediction steps of one training example (784, 64 or seq_len - 1),
    batch_size, eval_batch_size, seed,
    steps_per_epoch full training batches per epoch (the partial last one is dropped).
  """
  splits = SPLITS
  kind: str

  def __init__(self, name: str, *, seed: int, batch_size: int, eval_batch_size: int,
               info: dict):
    self.name = name
    self.seed = seed
    self.batch_size = batch_size
    self.eval_batch_size = eval_batch_size
    self._info = info
    self._epoch_cache = None  # (epoch, drawn values) of the last epoch used by train_batch.
    self.share = (0, 1)  # (index, count): this process's block of rows of every batch

  def set_share(self, index: int, count: int) -> None:
    """From now on every batch holds only block `index` of `count` equal blocks of rows of the
    global batch (one process's share; see the module docstring). (0, 1) = whole batches."""
    count = _positive_int(count, 'share count')
    self.share = (_integer(index, 'share index', 0, count), count)

  def _local(self, items, size: int):
    """(items, size) of this process's share of a global batch of `size` rows whose first
    len(items) rows are `items` (row indices or segment starts; the rest is padding)."""
    index, count = self.share
    if size % count:
      raise DataError(f'{self.name}: a batch of {size} rows cannot be split into {count} equal '
                      f'process shares; use batch sizes divisible by {count}.')
    rows = size // count
    return items[index * rows:(index + 1) * rows], rows

  def _check_split(self, split: str) -> None:
    if split not in SPLITS:
      raise DataError(f'unknown split {split!r}; valid splits: {", ".join(SPLITS)}.')

  def _epoch(self, step: int):
    """(position in epoch, values drawn for the epoch), cached for consecutive steps."""
    epoch, position = divmod(_integer(step, 'train_batch step', 0), self.steps_per_epoch)
    if self._epoch_cache is None or self._epoch_cache[0] != epoch:
      self._epoch_cache = (epoch, self._draw_epoch(np.random.default_rng([self.seed, epoch])))
    return position, self._epoch_cache[1]

  def _batches(self, n: int, batch_size: int, num_batches, what: str):
    """Start indices of the full batches of a pass over `n` items (partial batch dropped)."""
    available = n // batch_size
    if available == 0:
      raise DataError(f'{self.name}: {what} gives {n} examples, fewer than one batch of '
                      f'{batch_size}; use a smaller batch size.')
    if num_batches is None:
      num_batches = available
    num_batches = _positive_int(num_batches, 'num_batches')
    if num_batches > available:
      raise DataError(f'{self.name}: asked for {num_batches} re-estimation batches of '
                      f'{batch_size} but one pass of {what} holds only {available}.')
    return range(0, num_batches * batch_size, batch_size)

  def describe(self) -> dict:
    """JSON-serializable provenance: source, files with sha256, split sizes, settings."""
    return {
        'name': self.name, 'kind': self.kind, **self._info,
        'split_sizes': {s: self.split_size(s) for s in SPLITS},
        'seed': self.seed, 'batch_size': self.batch_size,
        'eval_batch_size': self.eval_batch_size, 'steps_per_epoch': self.steps_per_epoch,
        'train_length': self.train_length, 'input_features': self.input_features,
        'num_classes': self.num_classes, 'vocab_size': self.vocab_size,
    }


class ClassifyTask(Task):
  """Pixel-by-pixel image classification (sequential / permuted MNIST, digits).

  Args:
    splits: {'train', 'valid', 'test'}: (images uint8 [N, height, width], labels int32 [N]).
    scale: multiplies the uint8 pixels into [0, 1] (1/255 for MNIST, 1/16 for digits).
    order: int [time] pixel index shown at each step (see mnist.pixel_order).
  """
  kind = 'classify'
  vocab_size = None

  def __init__(self, name, splits, *, scale: float, order: np.ndarray, seed, batch_size,
               eval_batch_size, info):
    super().__init__(name, seed=seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
                     info=info)
    self._data = {s: (images.reshape(len(images), -1), labels)
                  for s, (images, labels) in splits.items()}
    self._scale = np.float32(scale)
    self._order = np.asarray(order)
    self.input_features = 1
    self.num_classes = 10
    self.train_length = len(self._order)
    n_train = len(self._data['train'][1])
    self.steps_per_epoch = n_train // batch_size
    if self.steps_per_epoch == 0:
      raise DataError(f'{name}: data.batch_size={batch_size} is larger than the training set '
                      f'({n_train} examples); use a smaller batch size.')

  def split_size(self, split: str) -> int:
    self._check_split(split)
    return len(self._data[split][1])

  def _draw_epoch(self, rng):
    return rng.permutation(len(self._data['train'][1]))

  def _batch(self, split: str, rows: np.ndarray, size: int) -> dict:
    rows, size = self._local(rows, size)
    images, labels = self._data[split]
    n, steps = len(rows), self.train_length
    inputs = np.zeros((size, steps, 1), np.float32)
    inputs[:n, :, 0] = images[rows][:, self._order] * self._scale
    targets = np.zeros(size, np.int32)
    targets[:n] = labels[rows]
    weights = np.zeros(size, np.float32)
    weights[:n] = 1
    return {'inputs': inputs, 'targets': targets,
            'mask': np.repeat(weights[:, None], steps, axis=1), 'weights': weights}

  def train_batch(self, step: int) -> dict:
    """Training batch number `step` (a pure function of seed and step)."""
    position, permutation = self._epoch(step)
    rows = permutation[position * self.batch_size:(position + 1) * self.batch_size]
    return self._batch('train', rows, self.batch_size)

  def eval_batches(self, split: str, *, batch_size=None, length=None):
    """Batches over `split` in order, each example once; the last batch is padded (weights 0).

    `length` must be None or train_length (an image's length is its pixel count).
    """
    self._check_split(split)
    size = _positive_int(self.eval_batch_size if batch_size is None else batch_size,
                         'eval batch_size')
    if length is not None and length != self.train_length:
      raise DataError(f'{self.name}: evaluation length {length} is not possible; every image is '
                      f'a sequence of {self.train_length} pixels.')
    n = self.split_size(split)
    return (self._batch(split, np.arange(start, min(start + size, n)), size)
            for start in range(0, n, size))

  def reestimate_batches(self, batch_size: int, num_batches=None):
    """Training images in order (no shuffling), for BN population statistics.

    Full batches only: the last len(train) % batch_size images are left out so shapes stay fixed.
    `num_batches` (default: one full pass) takes the first that many batches. See
    docs/method.md, "Population statistics".
    """
    size = _positive_int(batch_size, 'batch_size')
    starts = self._batches(self.split_size('train'), size, num_batches, 'the training set')
    return (self._batch('train', np.arange(s, s + size), size) for s in starts)


class LMTask(Task):
  """Next-symbol prediction on character streams (PTB, text8).

  Training examples are non-overlapping segments of seq_len symbols: each epoch draws a random
  offset in [0, seq_len) and keeps floor(N / seq_len) - 1 segments, shuffled (Cooijmans et al.
  sec. 5.2; `penntreebank.py` L80-103). A segment gives inputs = symbols[:-1] and
  targets = symbols[1:], so seq_len - 1 prediction steps.

  Args:
    splits: {'train', 'valid', 'test'}: uint8 or int [N] symbol ids.
    vocab: the symbols, index = id.
  """
  kind = 'lm'

  def __init__(self, name, splits, *, vocab, seq_len: int, seed, batch_size, eval_batch_size,
               info):
    super().__init__(name, seed=seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
                     info=info)
    self._tokens = dict(splits)
    self.vocab = tuple(vocab)
    self.vocab_size = self.input_features = self.num_classes = len(self.vocab)
    self.seq_len = seq_len
    self.train_length = seq_len - 1
    n_train = len(self._tokens['train'])
    self._n_segments = n_train // seq_len - 1
    self.steps_per_epoch = max(self._n_segments, 0) // batch_size
    if self.steps_per_epoch == 0:
      raise DataError(
          f'{name}: the training split ({n_train} symbols) gives {max(self._n_segments, 0)} '
          f'segments of data.seq_len={seq_len} per epoch, fewer than data.batch_size='
          f'{batch_size}; use a smaller batch size or seq_len.')

  def split_size(self, split: str) -> int:
    """Symbols in `split`."""
    self._check_split(split)
    return len(self._tokens[split])

  def stream(self, split: str) -> np.ndarray:
    """The whole split as one int32 [N] symbol array (for batch-1 full-sequence evaluation)."""
    self._check_split(split)
    return self._tokens[split].astype(np.int32)

  def _draw_epoch(self, rng):
    offset = int(rng.integers(0, self.seq_len))  # Drawn first, then the shuffle.
    return offset, rng.permutation(self._n_segments)

  def _segments(self, split: str, starts: np.ndarray, length: int, size: int) -> dict:
    """Rows of `length` symbols from `starts`, cut at the split's end, padded to `size` rows."""
    starts, size = self._local(starts, size)
    tokens = self._tokens[split]
    window = starts[:, None] + np.arange(length)
    valid = window < len(tokens)
    symbols = np.where(valid, tokens[np.minimum(window, len(tokens) - 1)], 0).astype(np.int32)
    steps = length - 1
    batch = {'inputs': np.zeros((size, steps), np.int32),
             'targets': np.zeros((size, steps), np.int32),
             'mask': np.zeros((size, steps), np.float32),
             'weights': np.zeros(size, np.float32)}
    n = len(starts)
    batch['inputs'][:n] = symbols[:, :-1]
    batch['targets'][:n] = symbols[:, 1:]
    batch['mask'][:n] = valid[:, 1:]
    batch['weights'][:n] = 1
    return batch

  def train_batch(self, step: int) -> dict:
    """Training batch number `step` (a pure function of seed and step): [batch, seq_len - 1]."""
    position, (offset, permutation) = self._epoch(step)
    chosen = permutation[position * self.batch_size:(position + 1) * self.batch_size]
    return self._segments('train', offset + chosen * self.seq_len, self.seq_len, self.batch_size)

  def eval_batches(self, split: str, *, batch_size=None, length=None):
    """Non-overlapping segments of `length` symbols from offset 0 (default seq_len), in order.

    Each segment gives length - 1 predictions. The split's tail (fewer than `length` symbols,
    at least 2) forms a final shorter segment whose missing steps have mask 0; the last batch is
    padded with rows of weight 0. Works for any length >= 2 (e.g. 100..1000 for the paper's
    length-generalization figure).
    """
    self._check_split(split)
    size = _positive_int(self.eval_batch_size if batch_size is None else batch_size,
                         'eval batch_size')
    length = self.seq_len if length is None else _positive_int(length, 'evaluation length')
    if length < 2:
      raise DataError(f'evaluation length must be >= 2 (one input and one target), got {length}.')
    starts = np.arange(0, max(self.split_size(split) - 1, 0), length)
    return (self._segments(split, starts[i:i + size], length, size)
            for i in range(0, len(starts), size))

  def reestimate_batches(self, batch_size: int, num_batches=None):
    """Training segments of seq_len from offset 0 (no random crop, no shuffle), in order.

    For BN population statistics (docs/method.md, "Population statistics"). floor(N / seq_len)
    segments, full batches only (the remainder is left out); `num_batches` (default: one full
    pass) takes the first that many.
    """
    size = _positive_int(batch_size, 'batch_size')
    n_segments = self.split_size('train') // self.seq_len
    starts = self._batches(n_segments, size, num_batches, 'the training split')
    return (self._segments('train', np.arange(s, s + size) * self.seq_len, self.seq_len, size)
            for s in starts)

  def describe(self) -> dict:
    return {**super().describe(), 'seq_len': self.seq_len, 'vocab': list(self.vocab)}


# --- make_task -------------------------------------------------------------------------------
CONFIG_FIELDS = ('name', 'dir', 'source', 'download', 'pixel_order', 'permutation_seed',
                 'seq_len', 'batch_size', 'eval_batch_size', 'relevant_sentences', 'max_vocab')
SOURCES = ('files', 'tfds')


def _field(cfg, key: str):
  try:
    return getattr(cfg, key)
  except (AttributeError, KeyError) as e:
    raise DataError(f'the data config has no field {key!r}; it needs exactly: '
                    f'{", ".join(CONFIG_FIELDS)}.') from e


def _seed(value, what: str) -> int:
  return _integer(value, what, 0, 2**32)  # np.random.RandomState accepts [0, 2**32).


def task_kind(name: str) -> str:
  """'classify' for the image tasks, 'qa' for question answering, 'lm' for the text tasks."""
  if name in sources.IMAGE_TASKS:
    return 'classify'
  return 'qa' if name in sources.QA_TASKS else 'lm'


def check_data_config(data_cfg) -> dict:
  """Validates config.data (a ConfigDict or any object with the CONFIG_FIELDS as attributes)
  without reading any file; returns the fields as a dict. Raises DataError naming the field."""
  cfg = {key: _field(data_cfg, key) for key in CONFIG_FIELDS}
  name = cfg['name']
  if name not in TASK_NAMES:
    raise DataError(f'data.name={name!r} is not valid; choose one of: {", ".join(TASK_NAMES)}')
  if cfg['source'] not in SOURCES:
    raise DataError(f'data.source={cfg["source"]!r} is not valid; choose one of: '
                    f'{", ".join(SOURCES)}')
  if cfg['source'] == 'tfds' and name != 'mnist':
    raise DataError(f'data.source="tfds" works only for mnist (tfds has no {name}); use '
                    'data.source="files".')
  if not isinstance(cfg['download'], bool):
    raise DataError(f'data.download must be True or False, got {cfg["download"]!r}.')
  if name != 'digits' and not isinstance(cfg['dir'], (str, bytes)) and not hasattr(
      cfg['dir'], '__fspath__'):
    raise DataError(f'data.dir must be a directory path, got {cfg["dir"]!r}.')
  if cfg['pixel_order'] not in mnist.PIXEL_ORDERS:
    raise DataError(f'data.pixel_order={cfg["pixel_order"]!r} is not valid; choose one of: '
                    f'{", ".join(mnist.PIXEL_ORDERS)}')
  cfg['permutation_seed'] = _seed(cfg['permutation_seed'], 'data.permutation_seed')
  cfg['batch_size'] = _positive_int(cfg['batch_size'], 'data.batch_size')
  cfg['eval_batch_size'] = _positive_int(cfg['eval_batch_size'], 'data.eval_batch_size')
  cfg['seq_len'] = _positive_int(cfg['seq_len'], 'data.seq_len')
  cfg['relevant_sentences'] = _integer(cfg['relevant_sentences'], 'data.relevant_sentences', 0)
  cfg['max_vocab'] = _integer(cfg['max_vocab'], 'data.max_vocab', 0)
  if name not in sources.QA_TASKS:
    for key in ('relevant_sentences', 'max_vocab'):
      if cfg[key]:
        raise DataError(f'data.{key}={cfg[key]} has no meaning for {name} (it is for the '
                        f'question-answering tasks {", ".join(sources.QA_TASKS)}); set '
                        f'data.{key}=0.')
  if name in sources.IMAGE_TASKS:
    n_pixels = sources.IMAGE_TASKS[name][0]
    if cfg['seq_len'] != n_pixels:
      raise DataError(f'data.seq_len={cfg["seq_len"]} does not fit {name}: its images have '
                      f'{n_pixels} pixels, one per time step, so set data.seq_len={n_pixels}.')
  else:
    if cfg['pixel_order'] != 'scanline':
      raise DataError(f'data.pixel_order={cfg["pixel_order"]!r} has no meaning for the text task '
                      f'{name}; set data.pixel_order="scanline".')
    if cfg['seq_len'] < 2 and name not in sources.QA_TASKS:
      raise DataError(f'data.seq_len={cfg["seq_len"]} gives no prediction step for {name}: a '
                      'language-model segment of length L has L - 1 predictions; use '
                      'data.seq_len >= 2 (the paper: 100 PTB, 180 text8).')
  return cfg


def train_length(data_cfg) -> int:
  """Time steps of one training example, from the config alone (no file is read): the pixel
  count, seq_len - 1 predictions for LM, the longest document (data.seq_len) for QA."""
  cfg = check_data_config(data_cfg)
  return cfg['seq_len'] - 1 if task_kind(cfg['name']) == 'lm' else cfg['seq_len']


def make_task(data_cfg, seed: int) -> Task:
  """Builds the task that `data_cfg` (a ConfigDict or any object with these attributes) names.

  Fields (all required): name (one of TASK_NAMES), dir (folder with the data files; ignored for
  digits), source ('files', or 'tfds' for mnist), download (bool), pixel_order ('scanline',
  'permuted', 'with_replacement'; 'scanline' for text), permutation_seed (int), seq_len (text:
  training segment length including the target shift; images: must equal the pixel count;
  question answering: the longest document in tokens, longer ones are truncated), batch_size and
  eval_batch_size (int), relevant_sentences (QA: 0 = whole documents, k = the k sentences most
  relevant to the query; else 0), max_vocab (QA: 0 = every training word, else the most
  frequent max_vocab; else 0). `seed` drives the training shuffle (and LM offsets, QA draws).
  """
  cfg = check_data_config(data_cfg)
  name = cfg['name']
  if name != 'digits':
    cfg['dir'] = Path(cfg['dir']).expanduser()
  permutation_seed = cfg['permutation_seed']
  seed = _seed(seed, 'the seed passed to make_task')
  seq_len = cfg['seq_len']
  common = dict(seed=seed, batch_size=cfg['batch_size'], eval_batch_size=cfg['eval_batch_size'])

  if name in sources.IMAGE_TASKS:
    n_pixels, scale = sources.IMAGE_TASKS[name]
    order = mnist.pixel_order(cfg['pixel_order'], permutation_seed, n_pixels)
    splits, info = sources.LOADERS[name](_Config(cfg))
    info.update(pixel_order=cfg['pixel_order'], permutation_seed=permutation_seed,
                n_pixels=n_pixels, distinct_pixels_shown=int(len(np.unique(order))),
                pixel_scale=float(scale))
    return ClassifyTask(name, splits, scale=scale, order=order, info=info, **common)

  if name in sources.QA_TASKS:
    from normrnn.data.qa import QATask  # Here: qa.py extends Task, defined in this module.
    corpus, info = sources.LOADERS[name](_Config(cfg))
    return QATask(name, corpus, relevant_sentences=cfg['relevant_sentences'],
                  max_document_len=seq_len, max_vocab=cfg['max_vocab'], info=info, **common)

  splits, info = sources.LOADERS[name](_Config(cfg))
  return LMTask(name, splits, vocab=sources.TEXT_VOCABS[name], seq_len=seq_len, info=info,
                **common)


class _Config:
  """The validated fields as attributes, for the loaders in sources.py."""

  def __init__(self, fields: dict):
    self.__dict__.update(fields)
