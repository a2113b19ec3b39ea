"""The run lifecycle, as a library: everything the trainer, the experiments and the scripts share.

  exp = Experiment.from_config(config)        # task (data), model, optimizer; no files written
  state = exp.init_state()                    # TrainState: params, batch_stats, optimizer, rng
  step_fn = jax.jit(exp.train_step())         # (state, batch) -> (state, metrics)
  metrics = exp.evaluate(state.params, state.batch_stats, 'valid', mode='population')
  stats = exp.reestimate(state.params, state.batch_stats)    # re-estimated population stats
  results = exp.final_metrics(state.params, state.batch_stats)  # test/, val_final/, test_stream/

`normrnn.trainer.train_and_evaluate` is this lifecycle plus checkpoints, logging and model
selection; `normrnn.rundir` reads what it writes back into an `Experiment` and a state.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from normrnn import losses, models, optim, parallel, popstats
from normrnn.config.schema import EVAL_PREFIX, validate
from normrnn.data import make_task

TEST_PREFIX = {'population': 'test', 'batch': 'test_batch'}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32 key data


def params_digest(params) -> str:
  """sha256 of the parameters' bytes in a fixed (path-sorted) order."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


# The positional model arguments of each batch layout (normrnn.data.tasks): question answering
# (normrnn.reader.AttentiveReader) has its own; the others are (inputs, mask).
QA_INPUTS = ('document', 'document_mask', 'query', 'query_mask', 'candidates')


def model_inputs(batch):
  if 'document' in batch:
    return tuple(batch[k] for k in QA_INPUTS)
  return batch['inputs'], batch['mask']


def loss_sums(kind, logits, batch):
  """Summed loss, correct predictions and count of one batch (see `normrnn.losses`)."""
  if kind == 'classify':
    return losses.classification(logits, batch['targets'], batch['weights'])
  if kind == 'qa':
    return losses.question_answering(logits, batch['answer'], batch['weights'])
  return losses.language_model(logits, batch['targets'], batch['mask'], batch['weights'])


def create_train_state(model, tx, batch, seed: int) -> TrainState:
  """The initial TrainState of `model` (initialized on `batch`) from one seed: the keys are
  split into (init, noise, train) as every run does."""
  init_key, noise_key, train_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  variables = model.init({'params': init_key, 'noise': noise_key}, *model_inputs(batch),
                         train=True)
  return TrainState(step=jnp.array(0, jnp.int32), params=variables['params'],
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(variables['params']), rng=jax.random.key_data(train_key))


def make_train_step(model, tx, kind):
  """(state, batch) -> (state, metrics): one optimizer step with batch statistics (pure)."""
  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      logits, updated = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    *model_inputs(batch), train=True, mutable=['batch_stats'],
                                    rngs={'noise': rng})
      sums = loss_sums(kind, logits, batch)
      return sums['loss'] / jnp.maximum(sums['count'], 1.0), (sums, updated)

    (loss, (sums, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(loss=loss, correct=sums['correct'] / jnp.maximum(sums['count'], 1.0),
                   grad_norm=optax.tree.norm(grads), update_norm=optax.tree.norm(updates),
                   param_norm=optax.tree.norm(params))
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        batch_stats=updated.get('batch_stats', state.batch_stats))
    return new, metrics

  return train_step


def make_eval_step(model, kind):
  """(params, batch_stats, batch, rng, *, mode) -> loss sums. mode 'population' uses the
  population statistics (train=False); 'batch' the batch's own statistics, without touching the
  population tables."""
  def eval_step(params, batch_stats, batch, rng, *, mode):
    variables = {'params': params, 'batch_stats': batch_stats}
    if mode == 'batch':
      logits, _ = model.apply(variables, *model_inputs(batch), train=True,
                              mutable=['batch_stats'], rngs={'noise': rng})
    else:
      logits = model.apply(variables, *model_inputs(batch), train=False, rngs={'noise': rng})
    return loss_sums(kind, logits, batch)

  return eval_step


def make_moments_fn(model, rng):
  """(variables, batch) -> this batch's per-site moments (the input of `popstats.reestimate`)."""
  return jax.jit(lambda v, b: model.apply(v, *model_inputs(b), train=True, mutable=['moments'],
                                          rngs={'noise': rng})[1]['moments'])


def reestimate(model, params, batch_stats, batches, rng=None) -> dict:
  """Population statistics re-estimated as the plain average of per-batch statistics over
  `batches` (training-mode moments; docs/method.md, "Population statistics"). Unchanged for a
  model without population tables. `rng` feeds the h_0 noise, if the model has any."""
  if not jax.tree.leaves(batch_stats):
    return batch_stats
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return popstats.reestimate(make_moments_fn(model, rng),
                             {'params': params, 'batch_stats': batch_stats}, batches)


@dataclasses.dataclass
class Experiment:
  """A validated config with its task, model and optimizer.

  Attributes:
    config: the locked run config.
    task: `normrnn.data` task (numpy batches).
    model: the flax model (`SequenceClassifier` or `CharLM`).
    tx: the optax optimizer.
    place: batch -> device placement (identity on one device; the trainer sets a sharding).
  """
  config: Any
  task: Any
  model: Any
  tx: Any
  place: Callable = lambda batch: batch

  @classmethod
  def from_config(cls, config, *, task=None, device_count: int | None = None) -> Experiment:
    """Validates `config` (ConfigError) and builds its task (DataError), model and optimizer."""
    validate(config, device_count=device_count)
    task = task if task is not None else make_task(config.data, config.seed)
    model = models.build_model(config.model, kind=task.kind, num_classes=task.num_classes,
                               vocab_size=task.vocab_size)
    return cls(config=config, task=task, model=model, tx=optim.make_optimizer(config.optimizer))

  @property
  def kind(self) -> str:
    return self.task.kind

  @functools.cached_property
  def eval_rng(self):
    """The noise key of every evaluation (h_0 noise is applied in evaluation too): derived from
    the run's noise key (the second of the (init, noise, train) keys of `create_train_state`).
    Computed once: `evaluate` uses it for every batch."""
    return jax.random.fold_in(jax.random.split(jax.random.PRNGKey(self.config.seed), 3)[1], 1)

  def init_state(self) -> TrainState:
    """The initial TrainState (parameters from config.seed, on an example training batch)."""
    # Jitted: one compilation instead of one per primitive of an eager init (seconds in every
    # fresh process); the values are bitwise those of the eager init.
    init = jax.jit(functools.partial(create_train_state, self.model, self.tx,
                                     seed=self.config.seed))
    return init(self.task.train_batch(0))

  def abstract_state(self) -> TrainState:
    """Shapes and dtypes of `init_state()` without computing it (a restore target)."""
    return jax.eval_shape(self.init_state)

  def train_step(self):
    return make_train_step(self.model, self.tx, self.kind)

  @functools.cached_property
  def _eval_step(self):
    return jax.jit(make_eval_step(self.model, self.kind), static_argnames='mode')

  def evaluate(self, params, batch_stats, split: str, *, mode: str = 'population',
               max_batches: int = -1, batches=None) -> dict:
    """Metrics (loss, error, acc or bpc) over `split` (or the given batches) in one statistics
    mode; max_batches=-1 = the whole split."""
    sums = None
    batches = self.task.eval_batches(split) if batches is None else batches
    for i, batch in enumerate(batches):
      if max_batches != -1 and i >= max_batches:
        break
      out = parallel.settle(  # (several processes: one collective program at a time)
          self._eval_step(params, batch_stats, self.place(batch), self.eval_rng, mode=mode))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return losses.summarize(jax.device_get(sums), self.kind)

  def validate_metrics(self, params, batch_stats) -> dict:
    """`val/...` (population statistics) and `val_batch/...` for every mode of eval.modes.

    With eval.val_popstats='reestimate' the population statistics of `val/` are first
    re-estimated from eval.val_reestimate_batches training batches (the model as it would be
    deployed now); with 'ema' they are the running averages as they stand."""
    metrics = {}
    e = self.config.eval
    if 'population' in e.modes and e.val_popstats == 'reestimate':
      population = self.reestimate(params, batch_stats, num_batches=e.val_reestimate_batches)
    else:
      population = batch_stats
    for mode in e.modes:
      m = self.evaluate(params, population if mode == 'population' else batch_stats, 'valid',
                        mode=mode, max_batches=e.eval_batches)
      metrics.update({f'{EVAL_PREFIX[mode]}/{k}': v for k, v in m.items()})
    return metrics

  def reestimate(self, params, batch_stats, *, num_batches: int | None = None,
                 batch_size: int | None = None) -> dict:
    """Population statistics re-estimated as the plain average of per-batch statistics over
    training batches (eval.reestimate_batches x eval.reestimate_batch_size unless given).
    Unchanged (and nothing computed) for a model without population tables."""
    if not jax.tree.leaves(batch_stats):
      return batch_stats
    n = self.config.eval.reestimate_batches if num_batches is None else num_batches
    size = self.config.eval.reestimate_batch_size if batch_size is None else batch_size
    # Placed like every other batch: on a mesh the moments are those of the global batch.
    batches = map(self.place, self.task.reestimate_batches(size, None if n == -1 else n))
    return reestimate(self.model, params, batch_stats, batches, self.eval_rng)

  def test_stats(self, params, batch_stats) -> dict:
    """The population statistics the final evaluation uses (eval.popstats)."""
    if self.config.eval.popstats == 'reestimate':
      return self.reestimate(params, batch_stats)
    return batch_stats

  def final_metrics(self, params, batch_stats) -> dict:
    """The final evaluation of a selected model: population statistics per eval.popstats, then
    `test/`, `val_final/` (and `test_batch/`, `val_final_batch/` for the batch mode) over whole
    splits, and `test_stream/` for language models with eval.full_stream."""
    stats = self.test_stats(params, batch_stats)
    out = {}
    if self.config.eval.full_stream:
      out.update(self.evaluate_stream(params, stats))
    for mode in self.config.eval.modes:
      prefix = TEST_PREFIX[mode]
      for split, p in (('test', prefix), ('valid', prefix.replace('test', 'val_final'))):
        m = self.evaluate(params, stats, split, mode=mode)
        out.update({f'{p}/{k}': v for k, v in m.items()})
    return out

  def evaluate_stream(self, params, batch_stats, split: str = 'test') -> dict:
    """A whole split as one batch-1 sequence with population statistics (the paper's PTB test
    number), in chunks of eval.stream_chunk steps that carry the recurrent state."""
    stream = self.task.stream(split)
    chunk = self.config.eval.stream_chunk
    t_max = self.config.model.norm.max_time_steps
    model, rng = self.model, self.eval_rng

    @functools.partial(jax.jit, static_argnames='offset')
    def run(carries, x, y, mask, *, offset):
      logits, carries = model.apply({'params': params, 'batch_stats': batch_stats}, x, mask,
                                    train=False, carries=carries, position_offset=offset,
                                    return_carries=True, rngs={'noise': rng})
      return losses.language_model(logits, y, mask, jnp.ones((1,))), carries

    carries, sums = None, None
    inputs, targets = stream[:-1], stream[1:]
    for start in tqdm(range(0, len(inputs), chunk), desc=f'{split} stream', leave=False,
                      disable=not self.config.train.progress_bar):
      x = np.zeros((1, chunk), np.int32)
      y = np.zeros((1, chunk), np.int32)
      mask = np.zeros((1, chunk), np.float32)
      n = min(chunk, len(inputs) - start)
      x[0, :n], y[0, :n], mask[0, :n] = inputs[start:start + n], targets[start:start + n], 1.0
      # Any offset >= T_max clamps every position to the last row: two compilations suffice.
      out, carries = parallel.settle(run(carries, x, y, mask, offset=min(start, t_max)))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    m = losses.summarize(jax.device_get(sums), 'lm')
    return {f'{split}_stream/{k}': v for k, v in m.items()}
