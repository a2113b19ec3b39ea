"""End to end: a smoke training run per task and per scheme, results.json / metrics.jsonl /
config.json, automatic and exact resume, and config mismatch on resume."""
import json
import os

import pytest

from normrnn import experiment, trainer
from normrnn.config import schema as config_schema
from normrnn.norms import NORMS
from tests import helpers
from tests.test_data import mnist_dir, ptb_dir, text8_dir  # noqa: F401  (pytest fixtures)

digits, pmnist, ptb_char, smnist, text8 = (
    helpers.config_module(t) for t in ('digits', 'pmnist', 'ptb_char', 'smnist', 'text8'))


def _smoke(module, arg='norm=batch', **overrides):
  config = module.get_config(f'{arg},size=smoke')
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.train.progress_bar = False
  return config


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _check_outputs(workdir, kind):
  for name in ('config.json', 'metrics.jsonl', 'results.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  metric = 'acc' if kind == 'classify' else 'bpc'
  assert f'test/{metric}' in results['metrics']
  assert len(results['params_digest']) == 64
  for key in ('best_step', 'wall_time_s', 'hardware', 'data'):
    assert key in results
  keys = set().union(*(r.keys() for r in _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))))
  assert {'step', 'train/loss', f'train/{metric}', 'train/grad_norm', f'val/{metric}'} <= keys
  return results


@pytest.mark.parametrize('module, fixture, name', [
    (smnist, 'mnist_dir', 'mnist'), (pmnist, 'mnist_dir', 'mnist'),
    (ptb_char, 'ptb_dir', 'ptb_char'), (text8, 'text8_dir', 'text8'), (digits, None, 'digits')])
def test_smoke_run_per_task(module, fixture, name, request, tmp_path):
  overrides = {'data.name': name}
  if module is ptb_char:
    overrides['eval.full_stream'] = True  # the paper's batch-1 whole-test-set evaluation
  if fixture:
    overrides['data.dir'] = str(request.getfixturevalue(fixture))
  config = _smoke(module, **overrides)
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  _check_outputs(str(tmp_path / 'run'), 'classify' if module in (smnist, pmnist, digits) else 'lm')
  assert results['metrics']['test_batch/loss'] > 0  # batch-statistics evaluation ran
  if module is ptb_char:
    assert results['metrics']['test_stream/bpc'] > 0


@pytest.mark.parametrize('norm', list(NORMS))
def test_smoke_run_per_scheme(norm, tmp_path):
  results = trainer.train_and_evaluate(_smoke(digits, f'norm={norm}'), str(tmp_path))
  assert results['norm'] == norm
  assert 0.0 <= results['metrics']['test/acc'] <= 1.0


def test_interrupted_run_resumes_exactly(tmp_path):
  full = trainer.train_and_evaluate(_smoke(digits, **{'train.num_steps': 6}), str(tmp_path / 'a'))
  # "Interrupted" after 4 steps (its last checkpoint), then the same command with 6 steps.
  trainer.train_and_evaluate(_smoke(digits, **{'train.num_steps': 4}), str(tmp_path / 'b'))
  first = json.loads((tmp_path / 'b' / 'wall_time.json').read_text())['4']
  resumed = trainer.train_and_evaluate(_smoke(digits, **{'train.num_steps': 6}),
                                       str(tmp_path / 'b'))
  assert resumed['params_digest'] == full['params_digest']
  # Wall time counts every segment: the first one (up to its checkpoint) and the resumed one.
  assert first > 0 and resumed['wall_time_s'] > first
  assert json.loads((tmp_path / 'b' / 'wall_time.json').read_text())['6'] > first
  steps = [r['step'] for r in _read_jsonl(tmp_path / 'b' / 'metrics.jsonl') if 'train/loss' in r]
  assert steps == sorted(steps) and steps[-1] == 6


def test_resume_with_a_different_config_fails_clearly(tmp_path):
  trainer.train_and_evaluate(_smoke(digits), str(tmp_path))
  with pytest.raises(config_schema.ConfigError, match='optimizer.learning_rate'):
    trainer.train_and_evaluate(_smoke(digits, **{'optimizer.learning_rate': 0.5}), str(tmp_path))


def test_bad_config_fails_before_data_is_touched(tmp_path):
  config = _smoke(smnist, **{'data.dir': str(tmp_path / 'nothing_here'),
                             'model.norm.gamma_init': 0.0})
  with pytest.raises(config_schema.ConfigError, match='gamma_init'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_gamma_table_is_what_configs_use():
  assert digits.get_config('norm=layer').model.norm.gamma_init == NORMS['layer'].gamma_init


def test_non_finite_loss_stops_with_step_window_and_keeps_last_good_checkpoint(tmp_path,
                                                                               monkeypatch):
  real_make_task = experiment.make_task

  def poisoned(data_cfg, seed):
    task = real_make_task(data_cfg, seed)
    clean = task.train_batch

    def train_batch(step):
      batch = dict(clean(step))
      if step >= 2:  # steps 3 and 4 (1-based) see NaN pixels
        batch['inputs'] = batch['inputs'] * float('nan')
      return batch

    task.train_batch = train_batch
    return task

  monkeypatch.setattr(experiment, 'make_task', poisoned)
  config = _smoke(digits, **{'train.log_every_steps': 2, 'train.checkpoint_every_steps': 2,
                             'train.eval_every_steps': 100})
  with pytest.raises(FloatingPointError, match='between steps 3 and 4'):
    trainer.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [2]
  monkeypatch.setattr(experiment, 'make_task', real_make_task)
  results = trainer.train_and_evaluate(_smoke(digits, **{'train.log_every_steps': 2,
                                                        'train.checkpoint_every_steps': 2,
                                                        'train.eval_every_steps': 100}),
                                       str(tmp_path))
  assert results['final_step'] == 4


def test_saved_config_without_later_fields_resumes_and_is_upgraded():
  """A workdir written before model.hoist_input / train.num_devices existed still resumes
  (those fields only change speed) and is read with the values that run used."""
  saved = config_schema.upgrade_saved_config({'model': {'cell': 'lstm'}, 'train': {}})
  assert saved['model']['hoist_input'] is True and saved['train']['num_devices'] == 1
  current = json.loads(_smoke(digits).to_json())
  old = json.loads(_smoke(digits).to_json())  # as an old run's checkpoint config would be
  del old['model']['hoist_input'], old['train']['num_devices'], old['train']['distributed']
  config_schema.check_resume(old, current)  # no error
  old['model']['hidden'] = 99
  with pytest.raises(config_schema.ConfigError, match='model.hidden'):
    config_schema.check_resume(old, current)


def test_population_statistics_are_usable_from_the_first_evaluation(tmp_path):
  """val/ (population statistics re-estimated from a few training batches before each evaluation,
  the default) agrees with val_batch/ at step 100 of the digits BN-LSTM; the authors' plain running
  averages (eval.val_popstats='ema', init mean 0 / var 1, rate 0.05) still lag far behind there."""
  errors = {}
  for popstats in ('reestimate', 'ema'):
    config = digits.get_config('norm=batch')
    config.train.num_steps = 100
    config.train.progress_bar = False
    config.eval.val_popstats = popstats
    trainer.train_and_evaluate(config, str(tmp_path / popstats))
    record = [r for r in _read_jsonl(tmp_path / popstats / 'metrics.jsonl') if 'val/error' in r][0]
    assert record['step'] == 100
    errors[popstats] = (record['val/error'], record['val_batch/error'])
  population, batch = errors['reestimate']
  assert abs(population - batch) < 0.05, errors
  ema, batch_ema = errors['ema']
  assert batch_ema == batch  # the same training run; only the val/ statistics differ
  assert ema > batch + 0.3, errors


def test_selection_metric_is_the_same_for_every_scheme_by_default():
  for name in NORMS:
    assert digits.get_config(f'norm={name}').eval.select_metric == 'val/error'
  # The paper configs keep the authors' protocol: batch-statistics validation for the BN family.
  assert smnist.get_config('norm=batch').eval.select_metric == 'val_batch/error'
  assert ptb_char.get_config('norm=batch_input').eval.select_metric == 'val_batch/error'
  assert ptb_char.get_config('norm=layer').eval.select_metric == 'val/error'
  assert digits.get_config('norm=batch,select=paper').eval.select_metric == 'val_batch/error'


def test_full_disk_during_training_fails_with_one_line_and_the_rerun_resumes(tmp_path,
                                                                            monkeypatch):
  """ENOSPC in orbax's own writes of the step-4 checkpoint: one StorageError naming the directory
  and the step to resume from; no leftover is taken for a checkpoint; the rerun finishes with the
  parameters of an uninterrupted run."""
  from normrnn.storage import StorageError
  from tests.test_storage import DiskFull
  full = trainer.train_and_evaluate(_smoke(digits, **{'train.num_steps': 6}), str(tmp_path / 'a'))
  checkpoints = tmp_path / 'b' / 'checkpoints'
  real_save = trainer.Checkpointer.save

  def save(self, step, state, **kwargs):
    if step == 4 and self.directory == str(checkpoints):
      with monkeypatch.context() as m:
        DiskFull(m, checkpoints)
        return real_save(self, step, state, **kwargs)
    return real_save(self, step, state, **kwargs)

  monkeypatch.setattr(trainer.Checkpointer, 'save', save)
  with pytest.raises(StorageError) as info:
    trainer.train_and_evaluate(_smoke(digits, **{'train.num_steps': 6}), str(tmp_path / 'b'))
  message = str(info.value)
  assert '\n' not in message and 'No space left on device' in message
  assert str(checkpoints) in message and 'resumes from the checkpoint at step 2' in message
  assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ['2']
  monkeypatch.setattr(trainer.Checkpointer, 'save', real_save)
  resumed = trainer.train_and_evaluate(_smoke(digits, **{'train.num_steps': 6}),
                                       str(tmp_path / 'b'))
  assert resumed['params_digest'] == full['params_digest']
