"""train_and_evaluate(config, workdir): the one training loop of every experiment.

Order (house style 7.3): validate the config, build data, model and optimizer, restore the latest
checkpoint of the workdir if there is one, then train with periodic logging, evaluation (with
population and/or batch statistics), model selection and checkpoints, and finally re-estimate
the population statistics of the selected model and evaluate it on the test split.
Workdir: config.json, metrics.jsonl, checkpoints/, best/, tensorboard/, results.json.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import signal
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from normrnn import config_check, losses, models, optim, parallel, popstats
from normrnn.checkpoint import Checkpointer
from normrnn.data import make_task
from normrnn.jsonio import write_json_atomic
from normrnn.writers import MetricWriter

# Fields that may differ between a checkpoint's config and the resuming run's config.
RESUMABLE_CHANGES = ('train.num_steps', 'train.log_every_steps', 'train.eval_every_steps',
                     'train.checkpoint_every_steps', 'train.keep_checkpoints',
                     'train.progress_bar', 'train.num_devices', 'train.distributed',
                     'model.hoist_input', 'model.remat', 'model.unroll',  # speed only
                     'data.dir', 'data.download', 'wandb.mode', 'wandb.name', 'wandb.tags',
                     'wandb.init_timeout_s', 'wandb.tensorboard')
EVAL_PREFIX = {'population': 'val', 'batch': 'val_batch'}


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


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_resume_config(saved: dict | None, current: dict) -> None:
  if saved is None:
    return
  a = _flatten(config_check.upgrade_saved_config(saved))
  b = _flatten(json.loads(json.dumps(current)))
  changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
  if changed:
    details = '; '.join(f'{k}: checkpoint {a.get(k)!r} -> now {b.get(k)!r}' for k in changed)
    raise config_check.ConfigError(
        f'the workdir holds a checkpoint of a run with a different config ({details}). Use a new '
        f'--workdir, or change only fields that may change on resume: {", ".join(RESUMABLE_CHANGES)}.')


def _model_inputs(batch):
  return batch['inputs'], batch['mask']


def _loss_sums(kind, logits, batch):
  if kind == 'classify':
    return losses.classification(logits, batch['targets'], batch['weights'])
  return losses.language_model(logits, batch['targets'], batch['mask'], batch['weights'])


def make_train_step(model, tx, kind):
  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      logits, updated = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    *_model_inputs(batch), train=True, mutable=['batch_stats'],
                                    rngs={'noise': rng})
      sums = _loss_sums(kind, logits, batch)
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
  def eval_step(params, batch_stats, batch, rng, *, mode):
    variables = {'params': params, 'batch_stats': batch_stats}
    if mode == 'batch':  # batch statistics, without touching the population tables
      logits, _ = model.apply(variables, *_model_inputs(batch), train=True,
                              mutable=['batch_stats'], rngs={'noise': rng})
    else:
      logits = model.apply(variables, *_model_inputs(batch), train=False, rngs={'noise': rng})
    return _loss_sums(kind, logits, batch)

  return eval_step


class _Stop:
  """SIGTERM / SIGINT: finish the current step, write a checkpoint, exit."""

  def __init__(self):
    self.signal = None

  def __call__(self, signum, frame):
    del frame
    self.signal = signum


def _hardware():
  devices = jax.devices()
  return dict(platform=devices[0].platform, device_kind=devices[0].device_kind,
              device_count=len(devices), cpu_count=os.cpu_count(), machine=platform.machine(),
              jax=jax.__version__, flax=flax.__version__, python=platform.python_version())


def _mesh(config):
  """The data-parallel mesh of `train.num_devices`, or None for a single device."""
  n = config.train.num_devices
  if n == 1:
    return None
  mesh = parallel.make_mesh(None if n == -1 else n)
  devices = mesh.shape[parallel.DATA_AXIS]
  if config.data.batch_size % devices:
    raise config_check.ConfigError(
        f'data.batch_size={config.data.batch_size} is not divisible by the {devices} devices of '
        'train.num_devices=-1; choose a batch size that is a multiple of the device count')
  return mesh


def _place_batch(batch, *, mesh):
  """Splits a batch over the mesh; a batch whose size the devices do not divide (the last
  evaluation batch of a split) is computed replicated instead. Either way the sums are those of
  the whole batch."""
  if len(next(iter(batch.values()))) % mesh.shape[parallel.DATA_AXIS]:
    return parallel.replicate(batch, mesh)
  return parallel.shard_batch(batch, mesh)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, evaluates and writes results.json; returns the results dict."""
  config_check.validate(config)
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  task = make_task(config.data, config.seed)
  model = models.build_model(config.model, kind=task.kind, num_classes=task.num_classes)
  tx = optim.make_optimizer(config.optimizer)
  if config.model.norm.max_time_steps < task.train_length:
    raise config_check.ConfigError(
        f'model.norm.max_time_steps={config.model.norm.max_time_steps} is shorter than the '
        f'training length {task.train_length} of {task.name}; set it to {task.train_length}.')

  key = jax.random.PRNGKey(config.seed)
  init_key, noise_key, train_key = jax.random.split(key, 3)
  example = task.train_batch(0)
  variables = model.init({'params': init_key, 'noise': noise_key}, *_model_inputs(example),
                         train=True)
  state = TrainState(step=jnp.array(0, jnp.int32), params=variables['params'],
                     batch_stats=variables.get('batch_stats', {}),
                     opt_state=tx.init(variables['params']),
                     rng=jax.random.key_data(train_key))

  config_dict = json.loads(config.to_json())
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'),
                      max_to_keep=config.train.keep_checkpoints)
  best_ckpt = Checkpointer(os.path.join(workdir, 'best'), max_to_keep=1)
  best_path = os.path.join(workdir, 'best.json')
  best = dict(step=None, value=float('inf'), metric=config.eval.select_metric)
  start = ckpt.latest_step()
  if start is not None:
    check_resume_config(ckpt.saved_config(), config_dict)
    state = ckpt.restore(start, state)
    if os.path.exists(best_path):
      with open(best_path) as f:
        best = json.load(f)
    print(f'Resuming from the checkpoint at step {start} in {workdir}', file=sys.stderr)
  writer = MetricWriter(workdir, config=config_dict, wandb_mode=config.wandb.mode,
                        wandb_project=config.wandb.project, wandb_group=config.wandb.group,
                        wandb_name=config.wandb.name or os.path.basename(os.path.abspath(workdir)),
                        wandb_tags=tuple(config.wandb.tags),
                        wandb_init_timeout_s=config.wandb.init_timeout_s,
                        tensorboard=config.wandb.tensorboard, resume_step=start)

  mesh = _mesh(config)
  if mesh is None:
    train_step = jax.jit(make_train_step(model, tx, task.kind), donate_argnums=0)
    place = lambda batch: batch
  else:  # the state replicated, every batch split over the 'data' axis of the mesh
    state = parallel.replicate(state, mesh)
    train_step = parallel.jit_data_parallel(make_train_step(model, tx, task.kind), mesh,
                                            donate=True)
    place = functools.partial(_place_batch, mesh=mesh)
  eval_step = jax.jit(make_eval_step(model, task.kind), static_argnames='mode')
  eval_rng = jax.random.fold_in(noise_key, 1)

  def evaluate(params, batch_stats, split, mode, max_batches):
    sums = None
    for i, batch in enumerate(task.eval_batches(split)):
      if max_batches != -1 and i >= max_batches:
        break
      out = eval_step(params, batch_stats, place(batch), eval_rng, mode=mode)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return losses.summarize(jax.device_get(sums), task.kind)

  def validate_now(state):
    metrics = {}
    for mode in config.eval.modes:
      m = evaluate(state.params, state.batch_stats, 'valid', mode, config.eval.eval_batches)
      metrics.update({f'{EVAL_PREFIX[mode]}/{k}': v for k, v in m.items()})
    return metrics

  def save(step):
    ckpt.save(step, state, config=config_dict)

  stop = _Stop()
  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  num_steps = config.train.num_steps
  first = int(state.step)
  bar = tqdm(total=num_steps, initial=first, disable=not config.train.progress_bar,
             dynamic_ncols=True, desc=f'{config.task}/{config.model.norm.name}')
  window_start, acc, acc_n = first, None, 0
  try:
    for step in range(first + 1, num_steps + 1):
      state, metrics = train_step(state, place(task.train_batch(step - 1)))
      acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
      acc_n += 1
      bar.update(1)
      if step % config.train.log_every_steps == 0 or step == num_steps:
        host = {k: float(v) / acc_n for k, v in jax.device_get(acc).items()}
        if not all(np.isfinite(v) for v in host.values()):
          raise FloatingPointError(
              f'non-finite training metrics {host} between steps {window_start + 1} and {step}. '
              f'The last good checkpoint (step {ckpt.latest_step()}) is kept; lower the learning '
              'rate or check the data, then rerun the same command to resume from it.')
        named = {'train/loss': host['loss'],
                 ('train/acc' if task.kind == 'classify' else 'train/bpc'):
                     host['correct'] if task.kind == 'classify' else host['loss'] / losses.LN2,
                 'train/grad_norm': host['grad_norm'], 'train/update_norm': host['update_norm'],
                 'train/param_norm': host['param_norm']}
        writer.write(step, named)
        bar.set_postfix({k.split('/')[1]: f'{v:.4g}' for k, v in list(named.items())[:2]})
        acc, acc_n, window_start = None, 0, step
      if step % config.train.eval_every_steps == 0 or step == num_steps:
        metrics = validate_now(state)
        writer.write(step, metrics)
        value = metrics[config.eval.select_metric]
        if value < best['value']:
          best = dict(step=step, value=value, metric=config.eval.select_metric)
          best_ckpt.save(step, state, config=config_dict)
          write_json_atomic(best_path, best)
        bar.set_postfix({config.eval.select_metric: f'{value:.4g}'})
      if step % config.train.checkpoint_every_steps == 0 or step == num_steps:
        save(step)
      if stop.signal is not None:
        save(step)
        bar.close()
        writer.close()
        logging.warning('received signal %d: checkpoint written at step %d, exiting', stop.signal,
                        step)
        sys.exit(128 + stop.signal)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    bar.close()

  # Final evaluation of the selected model (paper: best validation step), with population
  # statistics re-estimated over training batches (spec A.2), then the test split.
  final = state
  if best['step'] is not None and best['step'] != int(state.step):
    final = best_ckpt.restore(best['step'], state)
  test_stats = final.batch_stats
  if config.eval.popstats == 'reestimate' and jax.tree.leaves(final.batch_stats):
    moments_fn = jax.jit(lambda v, b: model.apply(v, *_model_inputs(b), train=True,
                                                  mutable=['moments'],
                                                  rngs={'noise': eval_rng})[1]['moments'])
    n = config.eval.reestimate_batches
    batches = task.reestimate_batches(config.eval.reestimate_batch_size,
                                      None if n == -1 else n)
    test_stats = popstats.reestimate(
        moments_fn, {'params': final.params, 'batch_stats': final.batch_stats}, batches)
  results_metrics = {}
  if config.eval.full_stream:
    results_metrics.update(_evaluate_stream(model, final.params, test_stats, task, config,
                                            eval_rng))
  for mode in config.eval.modes:
    prefix = {'population': 'test', 'batch': 'test_batch'}[mode]
    for split, p in (('test', prefix), ('valid', prefix.replace('test', 'val_final'))):
      m = evaluate(final.params, test_stats, split, mode, -1)
      results_metrics.update({f'{p}/{k}': v for k, v in m.items()})
  writer.write(int(state.step), results_metrics)
  results = dict(
      task=config.task, paper=config.paper, norm=config.model.norm.name,
      gamma_init=config.model.norm.gamma_init, metrics=results_metrics,
      best_step=best['step'], best=best, final_step=int(state.step),
      popstats=config.eval.popstats, wall_time_s=time.time() - t0, hardware=_hardware(),
      data=task.describe(), params_digest=params_digest(final.params),
      command=' '.join(sys.argv))
  write_json_atomic(os.path.join(workdir, 'results.json'), results)
  writer.summary(results_metrics)
  writer.close()
  ckpt.close()
  best_ckpt.close()
  return results


def _evaluate_stream(model, params, batch_stats, task, config, rng) -> dict:
  """The whole test split as one batch-1 sequence with population statistics (the paper's PTB
  test number), run in fixed-size chunks that carry the recurrent state."""
  stream = task.stream('test')
  chunk = config.eval.stream_chunk
  t_max = config.model.norm.max_time_steps

  @functools.partial(jax.jit, static_argnames='offset')
  def run(carries, x, y, mask, *, offset):
    logits, carries = model.apply({'params': params, 'batch_stats': batch_stats}, x, mask,
                                  train=False, carries=carries, position_offset=offset,
                                  return_carries=True, rngs={'noise': rng})
    return losses.language_model(logits, y, mask, jnp.ones((1,))), carries

  carries, sums = None, None
  inputs, targets = stream[:-1], stream[1:]
  for start in tqdm(range(0, len(inputs), chunk), desc='test stream', leave=False,
                    disable=not config.train.progress_bar):
    x = np.zeros((1, chunk), np.int32)
    y = np.zeros((1, chunk), np.int32)
    mask = np.zeros((1, chunk), np.float32)
    n = min(chunk, len(inputs) - start)
    x[0, :n], y[0, :n], mask[0, :n] = inputs[start:start + n], targets[start:start + n], 1.0
    # Any offset >= T_max clamps every position to the last row, so two compilations suffice.
    out, carries = run(carries, x, y, mask, offset=min(start, t_max))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  m = losses.summarize(jax.device_get(sums), 'lm')
  return {f'test_stream/{k}': v for k, v in m.items()}
