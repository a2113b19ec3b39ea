"""train_and_evaluate(config, workdir): the one training loop of every experiment.

Order: validate the config, build data, model and optimizer, restore the latest
checkpoint of the workdir if there is one, then train with periodic logging, evaluation (with
population and/or batch statistics), model selection and checkpoints, and finally re-estimate
the population statistics of the selected model and evaluate it on the test split.
Workdir: config.json, metrics.jsonl, checkpoints/, best/, tensorboard/, results.json.

Several processes (`train.distributed`, normrnn/parallel.py): every process runs this same loop
on its share of every batch and takes part in every jitted computation (training, evaluation,
re-estimation; their results are replicated, so every process sees the same metrics and makes
the same decisions, e.g. which step is best). Process 0 alone writes config.json, metrics.jsonl,
TensorBoard, wandb, best.json, wall_time.json and results.json and prints the progress bar and
console lines; all processes write and read the checkpoints (normrnn/checkpoint.py). SIGTERM
(preemption) is then agreed on through jax's preemption sync manager: every process saves the
same step and exits. A process that dies makes the others exit non-zero within
`train.heartbeat_timeout_s` (jax's coordination service).
"""
from __future__ import annotations

import functools
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
from tqdm import tqdm

from normrnn import losses, models, parallel
from normrnn.checkpoint import Checkpointer
from normrnn.config.schema import check_resume
from normrnn.experiment import Experiment, TrainState, params_digest  # noqa: F401 (re-export)
from normrnn.jsonio import write_json_atomic
from normrnn.storage import check_writable, storage_errors
from normrnn.writers import MetricWriter, NullWriter


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
              device_count=len(devices), process_count=jax.process_count(),
              cpu_count=os.cpu_count(), machine=platform.machine(),
              jax=jax.__version__, flax=flax.__version__, python=platform.python_version())


def _mesh(config):
  """The data-parallel mesh of `train.num_devices` (validated), or None for a single device."""
  n = config.train.num_devices
  if n == 1 and jax.process_count() == 1:
    return None
  return parallel.make_mesh(None if n == -1 else n)


def _place_batch(batch, *, mesh):
  """Splits a batch over the mesh; a batch whose size the devices do not divide (the last
  evaluation batch of a split) is computed replicated instead. Either way the sums are those of
  the whole batch. (Several processes: `batch` is this process's share, and the config was
  validated to make every batch divisible.)"""
  if (jax.process_count() == 1
      and len(next(iter(batch.values()))) % mesh.shape[parallel.DATA_AXIS]):
    return parallel.replicate(batch, mesh)
  return parallel.shard_batch(batch, mesh)


WALL_TIME_FILE = 'wall_time.json'  # {step: training wall time in seconds up to that checkpoint}


def _wall_time_before(workdir: str, step: int) -> float:
  """Wall time of the earlier segments of a resumed run, up to the checkpoint at `step` (0 for
  runs written before the file existed)."""
  path = os.path.join(workdir, WALL_TIME_FILE)
  if not os.path.exists(path):
    return 0.0
  with open(path, encoding='utf-8') as f:
    return float(json.load(f).get(str(step), 0.0))


def _record_wall_time(workdir: str, step: int, seconds: float) -> None:
  path = os.path.join(workdir, WALL_TIME_FILE)
  table = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      table = json.load(f)
  table[str(step)] = round(seconds, 3)
  write_json_atomic(path, table)


def _fmt(metrics: dict, keys) -> str:
  return ', '.join(f'{k} {metrics[k]:.4f}' for k in keys if k in metrics)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, evaluates and writes results.json; returns the results dict.

  The config is validated (ConfigError), the data read (DataError) and the workdir checked for
  writing (StorageError) before anything is written or compiled. Console (stderr): the progress
  bar, one line per evaluation, the resume line and a final summary line.
  """
  t0 = time.time()
  exp = Experiment.from_config(config)
  check_writable(workdir)
  task = exp.task
  primary = parallel.is_primary()
  mesh = _mesh(config)
  if mesh is not None and jax.process_count() > 1:
    task.set_share(*parallel.process_share(mesh))  # this process builds only its rows
  state = exp.init_state()
  if mesh is not None:  # the state replicated (a restore keeps this sharding)
    state = parallel.replicate(state, mesh)

  config_dict = json.loads(config.to_json())
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'),
                      max_to_keep=config.train.keep_checkpoints)
  best_ckpt = Checkpointer(os.path.join(workdir, 'best'), max_to_keep=1)
  best_path = os.path.join(workdir, 'best.json')
  best = dict(step=None, value=float('inf'), metric=config.eval.select_metric)
  start = ckpt.latest_step()
  earlier = 0.0  # wall time of the earlier segments of a resumed run
  if start is not None:
    check_resume(ckpt.saved_config(), config_dict)
    state = ckpt.restore(start, state)
    if os.path.exists(best_path):
      with open(best_path) as f:
        best = json.load(f)
    earlier = _wall_time_before(workdir, start)
    if primary:
      print(f'Resuming from the checkpoint at step {start} in {workdir}', file=sys.stderr)
  if primary:
    writer = MetricWriter(
        workdir, config=config_dict, wandb_mode=config.wandb.mode,
        wandb_project=config.wandb.project, wandb_group=config.wandb.group,
        wandb_name=config.wandb.name or os.path.basename(os.path.abspath(workdir)),
        wandb_tags=tuple(config.wandb.tags), wandb_init_timeout_s=config.wandb.init_timeout_s,
        tensorboard=config.wandb.tensorboard, resume_step=start)
  else:  # process 0 writes the metrics of the whole job
    writer = NullWriter()

  if mesh is None:
    train_step = jax.jit(exp.train_step(), donate_argnums=0)
  else:  # the state replicated, every batch split over the 'data' axis of the mesh
    train_step = parallel.jit_data_parallel(exp.train_step(), mesh, donate=True)
    exp.place = functools.partial(_place_batch, mesh=mesh)
  place = exp.place
  num_steps = config.train.num_steps
  first = int(state.step)
  if first < num_steps:
    # Compiled ahead, so that the progress bar's rate and ETA count training steps only.
    train_step = train_step.lower(state, place(task.train_batch(first))).compile()

  def elapsed():
    return earlier + time.time() - t0

  def save(step):
    with storage_errors('a checkpoint', ckpt.directory, resume_step=ckpt.latest_step):
      ckpt.save(step, state, config=config_dict)
      if primary:
        _record_wall_time(workdir, step, elapsed())

  stop = _Stop()
  # One process: SIGTERM / SIGINT set `stop`. Several: SIGTERM stays with jax's preemption sync
  # manager (installed by jax.distributed.initialize), which makes every process stop at the
  # same step (`parallel.preemption_point`); a process stopping alone would leave the others
  # waiting in a collective.
  handled = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else ()
  previous = {s: signal.signal(s, stop) for s in handled}
  # The scheme as run: a per-site composite is named by its sites ('batch[input=sequence]').
  scheme_name = models.spec_from_config(config.model).scheme.name
  bar = tqdm(total=num_steps, initial=first,
             disable=not (config.train.progress_bar and primary),
             dynamic_ncols=True, desc=f'{config.task}/{scheme_name}')
  window_start, acc, acc_n = first, None, 0
  headline = [config.eval.select_metric] + [
      k for k in ('val/error', 'val/bpc', 'val_batch/error', 'val_batch/bpc', 'val/loss')
      if k != config.eval.select_metric]
  try:
    for step in range(first + 1, num_steps + 1):
      state, metrics = parallel.settle(train_step(state, place(task.train_batch(step - 1))))
      acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
      acc_n += 1
      bar.update(1)
      if step % config.train.log_every_steps == 0 or step == num_steps:
        host = {k: float(v) / acc_n for k, v in parallel.to_host(acc).items()}
        if not all(np.isfinite(v) for v in host.values()):
          raise FloatingPointError(
              f'non-finite training metrics {host} between steps {window_start + 1} and {step}. '
              f'The last good checkpoint (step {ckpt.latest_step()}) is kept; lower the learning '
              'rate or check the data, then rerun the same command to resume from it.')
        named = {'train/loss': host['loss'],
                 ('train/bpc' if task.kind == 'lm' else 'train/acc'):
                     host['loss'] / losses.LN2 if task.kind == 'lm' else host['correct'],
                 'train/grad_norm': host['grad_norm'], 'train/update_norm': host['update_norm'],
                 'train/param_norm': host['param_norm']}
        with storage_errors('metrics', workdir, resume_step=ckpt.latest_step()):
          writer.write(step, named)
        bar.set_postfix({k.split('/')[1]: f'{v:.4g}' for k, v in list(named.items())[:2]})
        acc, acc_n, window_start = None, 0, step
      if step % config.train.eval_every_steps == 0 or step == num_steps:
        metrics = exp.validate_metrics(state.params, state.batch_stats)
        value = metrics[config.eval.select_metric]
        improved = value < best['value']
        with storage_errors('metrics', workdir, resume_step=ckpt.latest_step()):
          writer.write(step, metrics)
          if improved:
            best = dict(step=step, value=value, metric=config.eval.select_metric)
            best_ckpt.save(step, state, config=config_dict)
            if primary:
              write_json_atomic(best_path, best)
        if primary:
          bar.write(f'step {step}: {_fmt(metrics, headline[:3])}'
                    + (' (best so far)' if improved else ''), file=sys.stderr)
      if step % config.train.checkpoint_every_steps == 0 or step == num_steps:
        save(step)
      if parallel.preemption_point(step):
        stop.signal = signal.SIGTERM
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
  # statistics re-estimated over training batches, then the test split.
  final = state
  if best['step'] is not None and best['step'] != int(state.step):
    final = best_ckpt.restore(best['step'], state)
  results_metrics = exp.final_metrics(final.params, final.batch_stats)
  results = dict(
      task=config.task, paper=config.paper, norm=config.model.norm.name, scheme=scheme_name,
      gamma_init=config.model.norm.gamma_init, metrics=results_metrics,
      best_step=best['step'], best=best, final_step=int(state.step),
      popstats=config.eval.popstats, wall_time_s=elapsed(), hardware=_hardware(),
      data=task.describe(), params_digest=params_digest(final.params),
      command=' '.join(sys.argv))
  with storage_errors('the results', workdir, resume_step=ckpt.latest_step()):
    writer.write_final(int(state.step), results_metrics)
    if primary:
      write_json_atomic(os.path.join(workdir, 'results.json'), results)
  writer.close()
  ckpt.close()
  best_ckpt.close()
  if not primary:
    return results
  keys = [k for k in ('test_stream/bpc', 'test/bpc', 'test/acc', 'test/loss', 'test_batch/acc',
                      'test_batch/bpc') if k in results_metrics]
  print(f'{config.task}/{scheme_name}: {_fmt(results_metrics, keys[:3])} (model of '
        f'step {best["step"]}, {results["wall_time_s"]:.0f} s); results in '
        f'{os.path.join(workdir, "results.json")}', file=sys.stderr)
  return results
