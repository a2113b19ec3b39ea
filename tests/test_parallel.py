"""Data parallelism (normrnn.parallel): a train step on a batch sharded over 4 forced CPU devices
equals the same step on one device, batch-norm statistics included (GSPMD reduces the moments
over the global batch)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import helpers
from normrnn import models, parallel
from normrnn.norms import NORMS
from normrnn.experiment import create_train_state, make_train_step

NDEV = 4
pytestmark = pytest.mark.skipif(
    len(jax.devices()) != NDEV,
    reason=f'needs {NDEV} devices (tests/conftest.py forces 4 host devices through XLA_FLAGS '
           'before jax is imported); got a different device count')

BATCH, LENGTH, FEATURES, HIDDEN, CLASSES = 8, 6, 2, 8, 3


def _model(norm):
  spec = models.RNNSpec(
      cell='lstm', hidden=HIDDEN, layers=1, norm=norm, options=NORMS[norm].make_options(),
      recurrent_init='orthogonal', forget_bias=1.0, h0_noise=0.0, max_time_steps=LENGTH,
      stats_rate=0.1, unroll=1, remat=False)
  return models.SequenceClassifier(spec, num_classes=CLASSES)


def _batch(batch=BATCH, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((batch, LENGTH), np.float32)
  mask[1, 4:] = 0  # one shorter sequence: padding must stay out of the statistics
  return dict(inputs=rng.normal(size=(batch, LENGTH, FEATURES)).astype(np.float32),
              mask=mask, targets=rng.integers(0, CLASSES, batch).astype(np.int32),
              weights=np.ones(batch, np.float32))


def _setup(norm):
  model = _model(norm)
  # SGD with momentum, not Adam: Adam divides each coordinate by its own gradient scale, so a
  # gradient that is zero in exact arithmetic but ~1e-7 of float noise becomes an lr-sized step of
  # random sign. That happens here: with recurrent BN, h_0 is shared by all examples, so the BN of
  # W_h h_0 removes it and dL/dh_0 = 0 up to rounding. Comparing such steps would compare float
  # summation orders, not the parallel semantics.
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
  batch = _batch()
  state = create_train_state(model, tx, batch, seed=0)
  return make_train_step(model, tx, 'classify'), state, batch


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=1e-4, atol=1e-5), a, b)


def _two_steps(step, state, batches):
  for b in batches:
    state, metrics = step(state, b)
  return state, metrics


@pytest.mark.parametrize('norm', ['batch', 'layer'])
def test_sharded_step_equals_single_device(norm):
  train_step, state, batch = _setup(norm)
  batches = [batch, _batch(seed=1)]
  ref_state, ref_metrics = _two_steps(jax.jit(train_step), state, batches)

  mesh = parallel.make_mesh(NDEV)
  sharded = [parallel.shard_batch(b, mesh) for b in batches]
  for v in sharded[0].values():
    assert len(v.addressable_shards) == NDEV
    assert {s.data.shape[0] for s in v.addressable_shards} == {BATCH // NDEV}
  step = parallel.jit_data_parallel(train_step, mesh)
  dp_state, dp_metrics = _two_steps(step, parallel.replicate(state, mesh), sharded)

  _assert_close(dp_state.params, ref_state.params)
  _assert_close(dp_state.batch_stats, ref_state.batch_stats)
  _assert_close(dp_metrics, ref_metrics)
  assert int(dp_state.step) == 2
  if norm == 'batch':  # the population tables really moved (so the comparison means something)
    assert any(np.abs(np.asarray(v)).max() > 0 for k, v in
               jax.tree_util.tree_leaves_with_path(dp_state.batch_stats) if 'mean' in str(k[-1]))
  # Everything that comes out is replicated over the 4 devices of the mesh.
  for leaf in jax.tree.leaves((dp_state, dp_metrics)):
    assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == NDEV


def test_plain_jit_on_sharded_inputs_keeps_params_replicated():
  """Without pinned shardings, GSPMD propagation alone gives the same result and replicated
  parameters (the plain `jax.jit` of the trainer works on sharded inputs)."""
  train_step, state, batch = _setup('batch')
  ref_state, ref_metrics = jax.jit(train_step)(state, batch)
  mesh = parallel.make_mesh(None)
  new, metrics = jax.jit(train_step)(parallel.replicate(state, mesh),
                                     parallel.shard_batch(batch, mesh))
  _assert_close(new.params, ref_state.params)
  _assert_close(new.batch_stats, ref_state.batch_stats)
  _assert_close(metrics['loss'], ref_metrics['loss'])
  for leaf in jax.tree.leaves(new.params):
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == NDEV


def test_batch_not_divisible_fails_clearly():
  mesh = parallel.make_mesh(NDEV)
  with pytest.raises(ValueError, match=r'batch size 6 .* not divisible by the 4 devices'):
    parallel.shard_batch(_batch(batch=6), mesh)
  with pytest.raises(ValueError, match='scalar'):
    parallel.shard_batch(dict(x=np.float32(1.0)), mesh)


def test_mesh_and_shardings():
  mesh = parallel.make_mesh(2)
  assert mesh.axis_names == ('data',) and mesh.shape['data'] == 2
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert parallel.batch_sharding(mesh).spec == jax.sharding.PartitionSpec('data')
  assert parallel.replicated(mesh).spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match='num_devices'):
    parallel.make_mesh(NDEV + 1)
  tree = parallel.replicate(dict(a=np.ones(3, np.float32)), mesh)
  assert tree['a'].sharding.is_fully_replicated


def _digits_smoke(num_devices, **extra):
  digits = helpers.config_module('digits')
  config = digits.get_config('norm=batch,size=smoke')
  config.train.progress_bar = False
  config.wandb.tensorboard = False
  config.train.num_devices = num_devices
  config.train.eval_every_steps = config.train.num_steps  # one validation pass, for speed
  config.eval.reestimate_batches = 4
  for k, v in extra.items():
    setattr(config.data, k, v)
  return config


def test_trainer_on_4_devices_equals_one_device(tmp_path):
  """`train.num_devices` selects data parallelism in the real training loop: the same smoke run
  on 4 devices (batch split 16 per device, eval batch 180 = 45 per device) ends with the same
  validation/test metrics and BN population statistics as on one device."""
  from normrnn import trainer
  one = trainer.train_and_evaluate(_digits_smoke(1), str(tmp_path / 'one'))
  four = trainer.train_and_evaluate(_digits_smoke(NDEV), str(tmp_path / 'four'))
  assert four['hardware']['device_count'] == NDEV
  assert set(one['metrics']) == set(four['metrics'])
  for k, v in one['metrics'].items():
    np.testing.assert_allclose(four['metrics'][k], v, rtol=1e-3, atol=1e-4, err_msg=k)
  rows = [json.loads(l) for l in open(tmp_path / 'four' / 'metrics.jsonl')]
  ref = [json.loads(l) for l in open(tmp_path / 'one' / 'metrics.jsonl')]
  losses = [(a['train/loss'], b['train/loss']) for a, b in zip(rows, ref) if 'train/loss' in a]
  assert losses
  np.testing.assert_allclose(*zip(*losses), rtol=1e-4)
  # A checkpoint written on 4 devices restores without a sharded target (normrnn.rundir), e.g.
  # in a one-device analysis process; orbax alone would insist on the saved device layout.
  from normrnn import rundir
  from normrnn.experiment import params_digest
  _, state, step = rundir.restore(str(tmp_path / 'four'))
  assert step == four['best_step'] and params_digest(state.params) == four['params_digest']
  assert all(len(leaf.devices()) == 1 for leaf in jax.tree.leaves(state))


def test_num_devices_must_divide_the_batch():
  from normrnn.config import schema as config_schema
  with pytest.raises(config_schema.ConfigError,
                     match='not divisible by the 3 devices of train.num_devices=3'):
    config_schema.validate(_digits_smoke(3))
  with pytest.raises(config_schema.ConfigError, match='train.num_devices=0 is not valid'):
    config_schema.validate(_digits_smoke(0))


def _lm_task(batch_size=8, eval_batch_size=4):
  from normrnn.data.tasks import LMTask
  tokens = np.random.default_rng(0).integers(0, 5, 400).astype(np.uint8)
  splits = {'train': tokens, 'valid': tokens[:97], 'test': tokens[:53]}
  return LMTask('toy', splits, vocab='abcde', seq_len=10, seed=3, batch_size=batch_size,
                eval_batch_size=eval_batch_size, info={})


def _digits_task():
  from normrnn.data import make_task
  return make_task(_digits_smoke(1).data, seed=0)


@pytest.mark.parametrize('make', [_digits_task, _lm_task], ids=['classify', 'lm'])
def test_process_shares_tile_the_global_batch(make):
  """Multi-process data parallelism: process i of n builds rows [i*B/n, (i+1)*B/n) of every
  batch (training, evaluation with its zero-weight padding rows, re-estimation); the shares of
  all processes, stacked, are the global batch."""
  task = make()

  def batches():
    return [task.train_batch(0), task.train_batch(task.steps_per_epoch + 1),
            *list(task.eval_batches('valid', batch_size=8))[-2:], *task.reestimate_batches(4, 2)]

  whole = batches()
  assert any(b['weights'].min() == 0 for b in whole)  # a padded last evaluation batch is in
  for count in (2, 4):
    parts = []
    for index in range(count):
      task.set_share(index, count)
      parts.append(batches())
    task.set_share(0, 1)
    for i, batch in enumerate(whole):
      for key, value in batch.items():
        np.testing.assert_array_equal(np.concatenate([p[i][key] for p in parts]), value)
        assert len(parts[0][i][key]) == len(value) // count
  from normrnn.data import DataError
  task.set_share(0, 3)
  with pytest.raises(DataError, match='cannot be split into 3 equal process shares'):
    task.train_batch(0)
  with pytest.raises(DataError, match='share index'):
    task.set_share(3, 3)


def test_process_share_and_host_copies_in_one_process():
  mesh = parallel.make_mesh(None)
  assert parallel.process_share(mesh) == (0, 1) and parallel.is_primary()
  with pytest.raises(ValueError, match='every process must own part of it'):
    parallel.process_share(parallel.make_mesh(2))
  tree = parallel.replicate(dict(a=np.arange(3.0, dtype=np.float32)), mesh)
  host = parallel.to_host(tree)
  assert isinstance(host['a'], np.ndarray) and host['a'].tolist() == [0.0, 1.0, 2.0]
  sharded = parallel.shard_batch(dict(x=np.arange(8.0)), mesh)
  np.testing.assert_array_equal(parallel.to_host(sharded)['x'], np.arange(8.0))
  assert not parallel.preemption_point(1)  # one process: signals are the trainer's own


def test_multi_process_config_checks():
  """With several processes the mesh must span every device and every batch must split evenly
  over all of them, evaluation batches included; the timeouts are whole seconds >= 1."""
  from normrnn.config import schema as config_schema
  config_schema.validate(_digits_smoke(-1), device_count=4, process_count=2)
  with pytest.raises(config_schema.ConfigError,
                     match='num_devices=2 is not valid in a job of 2 processes'):
    config_schema.validate(_digits_smoke(2), device_count=4, process_count=2)
  with pytest.raises(config_schema.ConfigError, match='data.eval_batch_size=90 is not divisible'):
    config_schema.validate(_digits_smoke(-1, eval_batch_size=90), device_count=4,
                           process_count=2)
  config_schema.validate(_digits_smoke(-1, eval_batch_size=90), device_count=4)  # one process
  config = _digits_smoke(-1)
  config.train.heartbeat_timeout_s = 0
  with pytest.raises(config_schema.ConfigError, match='train.heartbeat_timeout_s=0 is not valid'):
    config_schema.validate(config, device_count=4)
