"""Every config loads for every documented argument, validates, and every sweep point applies to
the locked config; bad values fail before anything is built."""
import re
from pathlib import Path

import pytest

from tests import helpers
from normrnn.config import build as common
from normrnn.config import schema as config_schema
from normrnn.norms import NORMS

ROOT = Path(__file__).resolve().parents[1]
TASKS = ('smnist', 'pmnist', 'ptb_char', 'text8', 'digits')


def _load(task):
  return helpers.config_module(task)


def test_config_defaults_come_from_the_scheme_registry():
  for name, scheme in NORMS.items():
    config = _load('digits').get_config(f'norm={name}')
    assert config.model.norm.gamma_init == scheme.gamma_init
    assert tuple(config.eval.modes) == (('population', 'batch') if scheme.batch_statistics
                                        else ('population',))
    for option in scheme.options:
      assert config.model.norm[option.name] == option.default


@pytest.mark.parametrize('task', TASKS)
@pytest.mark.parametrize('norm', list(NORMS))
@pytest.mark.parametrize('size', common.SIZES)
def test_config_loads_and_validates(task, norm, size):
  config = _load(task).get_config(f'norm={norm},size={size}')
  config_schema.validate(config)
  assert config.model.norm.name == norm
  assert config.model.norm.gamma_init == NORMS[norm].gamma_init
  with pytest.raises(AttributeError):
    config.not_a_field = 1  # locked


@pytest.mark.parametrize('task', TASKS)
def test_sweeps_apply_to_locked_config(task):
  module = _load(task)
  for point in module.get_sweep():
    config = module.get_config('size=smoke')
    for dotted, value in point.items():
      *parents, leaf = dotted.split('.')
      node = config
      for p in parents:
        node = node[p]
      assert leaf in node, f'{task} sweep key {dotted} is not a config field'
      node[leaf] = value
    config_schema.validate(config)


def test_paper_values():
  s = _load('smnist').get_config('norm=batch')
  assert (s.model.hidden, s.data.batch_size, s.optimizer.name, s.optimizer.learning_rate,
          s.model.h0_noise, s.model.norm.max_time_steps, s.model.norm.stats_rate) == (
              100, 100, 'rmsprop', 1e-3, 0.1, 784, 0.01)
  assert _load('pmnist').get_config('norm=batch').model.h0_noise == 0.0
  assert _load('smnist').get_config('norm=none').model.h0_noise == 0.0
  p = _load('ptb_char').get_config('norm=batch')
  assert (p.model.hidden, p.data.batch_size, p.optimizer.learning_rate, p.data.seq_len,
          p.model.norm.max_time_steps, p.model.norm.stats_rate) == (1000, 64, 2e-3, 100, 99, 0.05)
  t = _load('text8').get_config('norm=batch')
  assert (t.model.hidden, t.data.batch_size, t.optimizer.learning_rate, t.data.seq_len,
          t.model.norm.max_time_steps) == (2000, 128, 1e-3, 180, 179)
  assert _load('pmnist').get_config('pixel_order=with_replacement').data.pixel_order == (
      'with_replacement')


def test_unknown_argument_lists_valid_ones():
  with pytest.raises(ValueError, match='valid arguments: cell, data, gamma, norm'):
    _load('smnist').get_config('nrom=batch')
  with pytest.raises(ValueError, match='choose one of'):
    _load('smnist').get_config('norm=bn')
  with pytest.raises(ValueError, match='must be a float'):
    _load('smnist').get_config('gamma=big')


@pytest.mark.parametrize('field, value, match', [
    ('model.norm.gamma_init', 0.0, r'gamma_init=0.0 is not valid; it must be > 0'),
    ('model.norm.gamma_init', -1.0, r'gamma_init=-1.0 is not valid; it must be > 0'),
    ('model.norm.streaming_mix', 1.5, r'streaming_mix=1.5 is not valid; it must be in \[0, 1\]'),
    ('model.norm.max_time_steps', 5, 'must be >= the training length 11'),
    ('train.num_steps', 0, 'train.num_steps=0 is not valid; it must be >= 1'),
    ('train.num_devices', 99, 'train.num_devices=99 is not valid: this machine has'),
    ('data.batch_size', 1, 'batch statistics are undefined at batch size 1'),
    ('data.seq_len', 0, 'data.seq_len must be an integer >= 1'),
    ('data.seq_len', 1, 'gives no prediction step'),
    ('eval.stream_chunk', 0, 'eval.stream_chunk=0 is not valid; it must be >= 1'),
    ('eval.select_metric', 'val/acc', 'choose one of'),
    ('model.norm.name', 'bn', 'choose one of: none, batch'),
    ('optimizer.name', 'sgd', 'choose one of: rmsprop, adam'),
    ('wandb.mode', 'cloud', 'choose one of: disabled, offline, online'),
    ('eval.reestimate_batches', 0, 'eval.reestimate_batches=0 is not valid'),
    ('model.cell', 'rnn', 'choose one of: lstm, tanh_rnn, gru'),
])
def test_impossible_values_fail_with_choices(field, value, match):
  config = _load('ptb_char').get_config('norm=batch,size=smoke')
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_schema.ConfigError, match=match):
    config_schema.validate(config)


def test_wrong_type_override_is_rejected_by_the_locked_config():
  config = _load('smnist').get_config('size=smoke')
  with pytest.raises(TypeError):
    config.train.num_steps = 'many'


def test_readme_commands_name_real_configs_and_arguments():
  readme = (ROOT / 'README.md').read_text()
  commands = re.findall(r'--config=configs/(\w+)\.py:([\w=.,]+)', readme)
  assert len(commands) >= 6
  for task, arg in commands:
    config = _load(task).get_config(arg)
    config_schema.validate(config)
  for path in set(re.findall(r'--config\.([\w.]+)=', readme)) - {'a.b'}:  # a.b: placeholder
    node = _load('smnist').get_config('size=smoke')
    *parents, leaf = path.split('.')
    for p in parents:
      node = node[p]
    assert leaf in node, path
