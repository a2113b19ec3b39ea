"""Tests for normrnn.checkpoint: round trips (optax states, flax struct states, numpy scalar
leaves), max_to_keep, leftovers of a killed save, and the config sidecar."""
from __future__ import annotations

import json
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normrnn.checkpoint import CONFIG_FILE, Checkpointer


def make_state(seed: int):
  """A training state shaped like normrnn's: params, batch_stats, optax state, raw rng."""
  key = jax.random.key(seed)
  k1, k2, k3 = jax.random.split(key, 3)
  params = {'cell': {'kernel': jax.random.normal(k1, (3, 8)), 'bias': jnp.zeros(8)},
            'head': {'kernel': jax.random.normal(k2, (8, 2), jnp.float32)}}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  opt_state = tx.init(params)
  if seed:  # make the optimizer state non-trivial
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  return {'step': jnp.asarray(seed, jnp.int32), 'params': params,
          'batch_stats': {'bn': {'mean': jnp.full((5, 8), float(seed)), 'var': jnp.ones((5, 8))}},
          'opt_state': opt_state, 'rng': jax.random.key_data(k3)}


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_optax_state(tmp_path):
  saved = make_state(7)
  with Checkpointer(tmp_path / 'ckpt', max_to_keep=2) as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    assert ckpt.save(7, saved)
    restored = ckpt.restore(7, make_state(0))  # a fresh state as the target
  assert_trees_equal(restored, saved)
  adam = restored['opt_state'][1][0]
  assert type(adam).__name__ == 'ScaleByAdamState' and int(adam.count) == 1
  assert isinstance(restored['opt_state'][0], optax.EmptyState)
  assert restored['rng'].dtype == jnp.uint32
  jax.random.wrap_key_data(restored['rng'])  # still a usable key


def test_round_trip_flax_struct_state_and_reopen(tmp_path):
  @flax.struct.dataclass
  class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState

  params = {'w': jnp.arange(4.0)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  state = TrainState(step=jnp.asarray(3, jnp.int32), params=params, opt_state=tx.init(params))
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(3, state)
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:  # a new process resuming
    assert ckpt.latest_step() == 3
    restored = ckpt.restore(3, state.replace(params={'w': jnp.zeros(4)}))
  assert isinstance(restored, TrainState)
  assert_trees_equal(restored, state)


def test_max_to_keep_and_repeated_steps(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in (1, 2, 3):
      assert ckpt.save(step, make_state(step))
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    assert not ckpt.save(3, make_state(99))  # same step again (e.g. on a signal): a no-op
    assert not ckpt.save(1, make_state(1))  # older than the latest: skipped
    assert ckpt.all_steps() == [2, 3]
    assert_trees_equal(ckpt.restore(3, make_state(0)), make_state(3))
  assert sorted(os.listdir(tmp_path)) == ['2', '3']


def test_half_written_checkpoint_is_ignored(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    ckpt.save(1, make_state(1))
  # What a kill -9 in the middle of saving step 2 leaves behind: orbax's temporary directory,
  # here even with a full copy of the data, that was never renamed to "2".
  leftover = tmp_path / '2.orbax-checkpoint-tmp-1732470000000000'
  shutil.copytree(tmp_path / '1', leftover)
  (leftover / '_CHECKPOINT_METADATA').unlink()
  with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    (tmp_path / '3.orbax-checkpoint-tmp-1732470000000001' / 'default').mkdir(parents=True)
    assert ckpt.latest_step() == 1  # also while the Checkpointer is open
    assert ckpt.save(2, make_state(2))
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
    assert_trees_equal(ckpt.restore(2, make_state(0)), make_state(2))
    with pytest.raises(FileNotFoundError, match=r'available steps: \[1, 2\]'):
      ckpt.restore(3, make_state(0))
  assert not leftover.exists()  # leftovers are removed when a Checkpointer opens the directory


def test_config_sidecar(tmp_path):
  config = {'model': {'hidden': 8, 'norm': 'batch'}, 'optimizer': {'lr': 1e-3}}
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.saved_config() is None
    ckpt.save(1, make_state(1))
    assert ckpt.saved_config() is None  # no config given
    ckpt.save(2, make_state(2), config=config)
    ckpt.save(3, make_state(3), config=dict(config, seed=1))
  assert sorted(os.listdir(tmp_path)) == ['2', '3', CONFIG_FILE]  # no temporary file left
  on_disk = json.loads((tmp_path / CONFIG_FILE).read_text())
  assert on_disk == {'step': 3, 'config': dict(config, seed=1)}
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.saved_config() == dict(config, seed=1)


def test_numpy_scalar_leaves(tmp_path):
  state = {'step': np.int32(5), 'loss': np.float32(2.5), 'w': np.arange(3, dtype=np.float32),
           'x': jnp.ones(2)}
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(5, state)
    target = {'step': np.int32(0), 'loss': np.float32(0), 'w': np.zeros(3, np.float32),
              'x': jnp.zeros(2)}
    restored = ckpt.restore(5, target)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert restored['step'] == 5 and restored['step'].dtype == np.int32
  assert restored['loss'] == 2.5 and restored['loss'].dtype == np.float32
  np.testing.assert_array_equal(restored['w'], state['w'])
  np.testing.assert_array_equal(restored['x'], state['x'])


def test_mismatched_target_gives_a_clear_error(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(1, {'a': jnp.ones(3), 'b': jnp.ones(2)})
    with pytest.raises(ValueError, match='cannot restore step 1'):
      ckpt.restore(1, {'a': jnp.ones(3)})


@pytest.mark.parametrize('bad', [0, -1, 1.5, None])
def test_max_to_keep_validated(tmp_path, bad):
  with pytest.raises(ValueError, match='max_to_keep'):
    Checkpointer(tmp_path, max_to_keep=bad)
