"""Tests for normrnn.writers: JSONL format and resume, config.json, wandb modes and fallbacks
(no network), TensorBoard event files."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator

from normrnn import writers
from normrnn.writers import MetricWriter, read_metrics

CONFIG = {'seed': 0, 'model': {'hidden': 8, 'norm': 'batch'}, 'tags': ('a', 'b')}
UNREACHABLE = 'http://127.0.0.1:9'  # the discard port: connections are refused at once


def make_writer(workdir, **overrides):
  kwargs = dict(config=CONFIG, wandb_mode='disabled', wandb_project='normrnn-test',
                wandb_group='g', wandb_name='n', wandb_tags=('t',), wandb_init_timeout_s=5.0,
                tensorboard=False, resume_step=None)
  kwargs.update(overrides)
  return MetricWriter(str(workdir), **kwargs)


@pytest.fixture
def no_network(monkeypatch):
  """wandb without credentials and with an unreachable server."""
  monkeypatch.delenv('WANDB_API_KEY', raising=False)
  monkeypatch.setenv('WANDB_BASE_URL', UNREACHABLE)
  monkeypatch.setenv('WANDB_SILENT', 'true')


def test_jsonl_lines_keys_and_value_types(tmp_path):
  with make_writer(tmp_path) as writer:
    writer.write(1, {'train/loss': 2.5, 'train/bpc': np.float32(3.0)})
    writer.write(2, {'val/acc': jnp.asarray(0.75), 'val/count': 7})
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [list(r) for r in records] == [['step', 'time', 'train/loss', 'train/bpc'],
                                        ['step', 'time', 'val/acc', 'val/count']]
  assert records[0]['step'] == 1 and records[0]['train/bpc'] == 3.0
  assert records[1]['val/acc'] == 0.75 and isinstance(records[1]['val/count'], float)
  assert abs(records[0]['time'] - time.time()) < 60
  assert read_metrics(tmp_path / 'metrics.jsonl') == records


def test_lines_are_flushed_before_close(tmp_path):
  writer = make_writer(tmp_path)
  writer.write(3, {'train/loss': 1.0})
  assert read_metrics(tmp_path / 'metrics.jsonl')[0]['train/loss'] == 1.0
  writer.close()
  writer.close()  # idempotent


def test_non_finite_values_are_json_null(tmp_path):
  with make_writer(tmp_path) as writer:
    writer.write(1, {'train/loss': float('nan'), 'train/grad_norm': np.inf, 'train/ok': 1.0})
  text = (tmp_path / 'metrics.jsonl').read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  record = json.loads(text)
  assert record['train/loss'] is None and record['train/grad_norm'] is None
  back = read_metrics(tmp_path / 'metrics.jsonl')[0]
  assert math.isnan(back['train/loss']) and back['train/ok'] == 1.0


@pytest.mark.parametrize('key', ['loss', 'step', 'time', 3])
def test_keys_must_be_namespaced(tmp_path, key):
  with make_writer(tmp_path) as writer, pytest.raises(ValueError, match='slash-namespaced'):
    writer.write(1, {key: 1.0})


def test_non_scalar_value_names_the_key(tmp_path):
  with make_writer(tmp_path) as writer, pytest.raises(ValueError, match='train/vec'):
    writer.write(1, {'train/vec': np.ones(3)})


def test_resume_drops_lines_after_resume_step(tmp_path):
  with make_writer(tmp_path) as writer:
    for step in range(1, 7):
      writer.write(step, {'train/loss': float(step)})
  with make_writer(tmp_path, resume_step=4) as writer:
    writer.write(5, {'train/loss': 50.0})
  records = read_metrics(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5]
  assert records[-1]['train/loss'] == 50.0


def test_partial_trailing_line_is_skipped_and_dropped(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "time": 0, "train/loss": 1.0}\n{"step": 2, "time": 0, "train/lo')
  assert [r['step'] for r in read_metrics(path)] == [1]
  # A restart without resume_step must not glue its first line onto the partial one.
  with make_writer(tmp_path) as writer:
    writer.write(2, {'train/loss': 2.0})
  assert path.read_text().count('\n') == 2
  assert [r['step'] for r in read_metrics(path)] == [1, 2]
  with make_writer(tmp_path, resume_step=1):
    pass
  assert [r['step'] for r in read_metrics(path)] == [1]


def test_corrupt_middle_line_raises_with_line_number(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:2'):
    read_metrics(path)


def test_config_json(tmp_path):
  make_writer(tmp_path).close()
  text = (tmp_path / 'config.json').read_text()
  assert json.loads(text) == {'seed': 0, 'model': {'hidden': 8, 'norm': 'batch'},
                              'tags': ['a', 'b']}
  assert text.startswith('{\n  "model": {\n    "hidden": 8,')  # sorted keys, indent 2


def test_invalid_wandb_mode_lists_valid_modes(tmp_path):
  with pytest.raises(ValueError, match='disabled, offline, online'):
    make_writer(tmp_path, wandb_mode='dryrun')


def test_disabled_does_not_import_wandb(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # any `import wandb` now raises ImportError
  with make_writer(tmp_path, wandb_mode='disabled') as writer:
    writer.write(1, {'train/loss': 1.0})
    writer.summary({'test/bpc': 1.0})
    assert writer.wandb_run is None
  assert not (tmp_path / 'wandb').exists()
  assert not (tmp_path / 'wandb_run_id.txt').exists()


def test_offline_run_dir_and_id_reused_on_resume(tmp_path, no_network):
  start = time.time()
  with make_writer(tmp_path, wandb_mode='offline') as writer:
    assert writer.wandb_run is not None
    assert writer.wandb_run.settings.mode == 'offline'  # beats WANDB_MODE=disabled (conftest)
    writer.write(1, {'train/loss': 1.0, 'val/bpc': float('nan')})
    writer.summary({'test/bpc': 1.5})
  run_id = (tmp_path / 'wandb_run_id.txt').read_text().strip()
  runs = sorted(p.name for p in (tmp_path / 'wandb').glob('offline-run-*'))
  assert len(runs) == 1 and runs[0].endswith(f'-{run_id}')
  assert (tmp_path / 'wandb' / runs[0] / f'run-{run_id}.wandb').exists()
  with make_writer(tmp_path, wandb_mode='offline', resume_step=1) as writer:
    assert writer.wandb_run.id == run_id
  assert time.time() - start < 20
  # Nothing tried to reach the (unreachable) server.
  logs = ''.join(p.read_text(errors='replace') for p in (tmp_path / 'wandb').rglob('*.log'))
  assert '127.0.0.1:9' not in logs and 'graphql' not in logs


def test_online_without_network_falls_back_to_offline(tmp_path, no_network, monkeypatch, caplog):
  monkeypatch.setenv('WANDB_API_KEY', 'a' * 40)  # a key, so wandb really tries the server
  start = time.time()
  with caplog.at_level(logging.WARNING, logger='normrnn.writers'):
    writer = make_writer(tmp_path, wandb_mode='online', wandb_init_timeout_s=3.0)
  elapsed = time.time() - start
  try:
    assert elapsed < 30
    assert 'wandb online init failed' in caplog.text and 'offline' in caplog.text
    assert writer.wandb_run is not None and writer.wandb_run.settings.mode == 'offline'
    writer.write(1, {'train/loss': 1.0})
  finally:
    writer.close()
  run_id = (tmp_path / 'wandb_run_id.txt').read_text().strip()
  assert list((tmp_path / 'wandb').glob(f'offline-run-*-{run_id}'))


def test_hanging_online_init_is_abandoned_after_timeout(tmp_path, no_network, monkeypatch,
                                                        caplog):
  """Our own thread guard, against an init that ignores wandb's init_timeout."""
  import wandb  # pylint: disable=g-import-not-at-top
  release = threading.Event()
  real_init = wandb.init

  def fake_init(*args, mode, **kwargs):
    if mode == 'online':
      release.wait(60)
      raise RuntimeError('released')
    return real_init(*args, mode=mode, **kwargs)

  monkeypatch.setattr(wandb, 'init', fake_init)
  start = time.time()
  try:
    with caplog.at_level(logging.WARNING, logger='normrnn.writers'):
      writer = make_writer(tmp_path, wandb_mode='online', wandb_init_timeout_s=1.0)
    elapsed = time.time() - start
    writer.close()
  finally:
    release.set()
  assert elapsed < 15
  assert 'TimeoutError' in caplog.text and 'no answer within 1 s' in caplog.text
  assert list((tmp_path / 'wandb').glob('offline-run-*'))


def test_offline_failure_continues_without_wandb(tmp_path, no_network, monkeypatch, caplog):
  import wandb  # pylint: disable=g-import-not-at-top

  def broken_init(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(wandb, 'init', broken_init)
  with caplog.at_level(logging.WARNING, logger='normrnn.writers'):
    writer = make_writer(tmp_path, wandb_mode='offline')
  assert writer.wandb_run is None and 'disk full' in caplog.text
  writer.write(1, {'train/loss': 1.0})
  writer.close()
  assert read_metrics(tmp_path / 'metrics.jsonl')[0]['train/loss'] == 1.0


class FakeRun:
  """Stands in for a wandb run: records log calls, the summary and finish."""

  def __init__(self):
    self.logged, self.summary, self.finished = [], {}, False

  def log(self, metrics, step):
    self.logged.append((step, dict(metrics)))

  def finish(self):
    self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
  run = FakeRun()
  monkeypatch.setattr(writers, '_init_wandb', lambda *a, **k: run)
  return run


def test_wandb_log_receives_the_jsonl_keys(tmp_path, fake_wandb):
  with make_writer(tmp_path, wandb_mode='offline') as writer:
    writer.write(7, {'train/loss': np.float32(2.0), 'val/bpc': float('nan')})
    writer.summary({'test/bpc': jnp.asarray(1.25)})
  [(step, metrics)] = fake_wandb.logged
  assert step == 7 and fake_wandb.finished
  record = read_metrics(tmp_path / 'metrics.jsonl')[0]
  assert set(metrics) == set(record) - {'step', 'time'}
  assert metrics['train/loss'] == 2.0 and math.isnan(metrics['val/bpc'])
  assert fake_wandb.summary == {'test/bpc': 1.25}


def test_tensorboard_scalars_readable(tmp_path):
  with make_writer(tmp_path, tensorboard=True) as writer:
    for step in (1, 2, 3):
      writer.write(step, {'train/loss': float(step), 'val/bpc': float('nan')})
  # A resumed run from step 2 rewrites step 3; TensorBoard must drop the orphaned old one.
  with make_writer(tmp_path, tensorboard=True, resume_step=2) as writer:
    writer.write(3, {'train/loss': 30.0})
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  acc.Reload()
  assert {'train/loss', 'val/bpc'} <= set(acc.Tags()['scalars'])
  assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == [(1, 1.0), (2, 2.0), (3, 30.0)]
  assert all(math.isnan(e.value) for e in acc.Scalars('val/bpc'))
  assert os.listdir(tmp_path / 'tensorboard')


def _tensorboard(tmp_path):
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  acc.Reload()
  return acc


def _text(acc, tag):
  """[(step, text)] of a text-plugin summary."""
  return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


FINAL = {'test/acc': 0.9444, 'test/loss': 0.2307, 'val_final/acc': 0.9333,
         'test_batch/acc': 0.95, 'test_stream/bpc': float('nan')}


def test_final_metrics_are_one_tensorboard_text_not_scalar_cards(tmp_path):
  """TensorBoard's Time Series dashboard expands only the first two tag groups in name order, so
  single-point test/ scalars would open before train/: the final numbers go to a text table."""
  with make_writer(tmp_path, tensorboard=True) as writer:
    for step in (50, 100):
      writer.write(step, {'train/loss': 1.0 / step, 'train/acc': 0.5})
      writer.write(step, {'val/error': 0.3, 'val_batch/error': 0.2})
    writer.write_final(100, FINAL)
  acc = _tensorboard(tmp_path)
  assert sorted(acc.Tags()['scalars']) == ['train/acc', 'train/loss', 'val/error',
                                           'val_batch/error']
  assert acc.SummaryMetadata('results').plugin_data.plugin_name == 'text'
  [(step, text)] = _text(acc, 'results')
  assert step == 100 and text.startswith('Final metrics at step 100')
  lines = text.splitlines()
  assert lines[2:] == ['| | acc | loss | bpc |', '|---|---|---|---|',
                       '| test | 0.9444 | 0.2307 | - |', '| val_final | 0.9333 | - | - |',
                       '| test_batch | 0.95 | - | - |', '| test_stream | - | - | nan |']
  # metrics.jsonl: the final numbers are one more line with exactly their keys.
  records = read_metrics(tmp_path / 'metrics.jsonl')
  assert len(records) == 5 and records[-1]['step'] == 100
  assert set(records[-1]) - {'step', 'time'} == set(FINAL)
  assert records[-1]['test/acc'] == 0.9444 and math.isnan(records[-1]['test_stream/bpc'])


def test_final_metrics_text_is_purged_on_resume(tmp_path):
  with make_writer(tmp_path, tensorboard=True) as writer:
    writer.write(2, {'train/loss': 2.0})
    writer.write(3, {'train/loss': 3.0})
    writer.write_final(3, {'test/acc': 0.5})
  # A crash after the final numbers but before the run was marked finished: resumed from 2.
  with make_writer(tmp_path, tensorboard=True, resume_step=2) as writer:
    writer.write(3, {'train/loss': 30.0})
    writer.write_final(3, {'test/acc': 0.75})
  # The loader of `tensorboard --load_fast=false` (the default Rust loader purges alike; the
  # legacy EventAccumulator purges scalars only). It ignores a run's first START event, hence
  # the START that every new event file begins with.
  acc = plugin_event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  acc.Reload()
  assert [(e.step, e.tensor_proto.float_val[0]) for e in acc.Tensors('train/loss')] == [
      (2, 2.0), (3, 30.0)]
  [results] = acc.Tensors('results')
  assert results.step == 3 and '| test | 0.75 |' in results.tensor_proto.string_val[0].decode()
  assert sorted(acc.Tags()['tensors']) == ['results', 'train/loss']


def test_wandb_write_final_logs_the_jsonl_keys_and_sets_the_summary(tmp_path, fake_wandb):
  logged = fake_wandb.logged
  with make_writer(tmp_path, wandb_mode='offline') as writer:
    writer.write(7, {'train/loss': 2.0})
    writer.write_final(7, {'test/acc': np.float32(0.5), 'val_final/acc': jnp.asarray(0.25)})
  records = read_metrics(tmp_path / 'metrics.jsonl')
  assert [step for step, _ in logged] == [7, 7]
  for (_, metrics), record in zip(logged, records):
    assert set(metrics) == set(record) - {'step', 'time'}
  assert fake_wandb.summary == {'test/acc': 0.5, 'val_final/acc': 0.25}


def test_write_final_checks_keys_like_write(tmp_path):
  with make_writer(tmp_path) as writer, pytest.raises(ValueError, match='slash-namespaced'):
    writer.write_final(1, {'accuracy': 1.0})
