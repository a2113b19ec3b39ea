"""The Attentive Reader (normrnn.reader; Hermann et al. 2015, Cooijmans et al. 2016 sec. 5.4):
the whole model against the numpy reference in training and evaluation mode, population
statistics of the BN-everywhere terms (running averages and re-estimation), valid-prefix
reversal, candidate masking in the loss, gradients, a smoke training run of the cloze task and
the reproduce table for Table 4 / Fig. 3a.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from normrnn import experiment, losses, trainer
from normrnn.config import ConfigError, load_config
from normrnn.config.build import SIZES
from normrnn.config.schema import validate
from normrnn.models import RNNSpec
from normrnn.norms import NORMS
from normrnn.reader import AttentiveReader, ReaderSpec, variant_label
from tests import helpers
from tests import numpy_reference as ref

EPS = 1e-5
B, TD, TQ, E, V = 3, 6, 3, 4, 12
# name: (norm, per-site schemes, numpy site kinds, reader fields)
VARIANTS = {
    'lstm': ('none', (), ref.SITE_KIND['none'], dict(bidirectional=False, everywhere='none')),
    'bn_e_star2': ('batch', (('input', 'sequence'),), ref.BN_E_STAR,
                   dict(bidirectional=True, everywhere='batch')),
    'ln': ('layer', (), ref.SITE_KIND['layer'], dict(bidirectional=False, everywhere='layer')),
}


def _batch(seed=0, doc_lengths=(6, 4, 2), query_lengths=(3, 2, 3)):
  rng = np.random.default_rng(seed)
  n = len(doc_lengths)
  document = rng.integers(2, V, (n, TD)).astype(np.int32)
  document_mask = (np.arange(TD)[None] < np.array(doc_lengths)[:, None]).astype(np.float32)
  document[document_mask == 0] = 0
  query = rng.integers(2, V, (n, TQ)).astype(np.int32)
  query_mask = (np.arange(TQ)[None] < np.array(query_lengths)[:, None]).astype(np.float32)
  query[query_mask == 0] = 0
  candidates = (rng.random((n, E)) < 0.6).astype(np.float32)
  answer = rng.integers(0, E, n).astype(np.int32)
  candidates[np.arange(n), answer] = 1
  return dict(document=document, document_mask=document_mask, query=query, query_mask=query_mask,
              candidates=candidates, answer=answer, weights=np.ones(n, np.float32))


def _model(variant, *, reverse_padding='valid', answer_mask='candidates', hidden=3, h0_noise=0.0,
           **changes):
  norm, sites, _, fields = VARIANTS[variant]
  fields = {**fields, **changes}
  spec = RNNSpec(hidden=hidden, norm=norm, sites=sites, max_time_steps=TD, stats_rate=0.1,
                 h0_noise=h0_noise,
                 options=NORMS[norm].make_options(eps=EPS))
  return AttentiveReader(spec, ReaderSpec(vocab_size=V, num_entities=E, embed=4, attention=3,
                                          output=3, reverse_padding=reverse_padding,
                                          answer_mask=answer_mask, everywhere_gamma=0.1,
                                          **fields))


def _variables(model, batch, seed=1):
  """Random parameters and population tables with non-trivial values (var > 0), from the
  variables' shapes alone (no initialization run: every compilation costs seconds here)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             *experiment.model_inputs(batch), train=True))
  leaves, tree = jax.tree_util.tree_flatten_with_path(dict(shapes))
  rng = np.random.default_rng(seed)  # numpy: a jax.random call per shape would compile each
  values = []
  for path, v in leaves:
    noise = rng.normal(size=v.shape).astype(np.float32)
    if path[0].key == 'params':
      values.append(0.5 * noise)
    else:
      values.append(0.5 + np.abs(noise) if path[-1].key.endswith('_var') else noise)
  return jax.tree_util.tree_unflatten(tree, values)


def _jit_apply(model):
  """model.apply compiled as one program (faster to compile than op by op)."""
  return jax.jit(model.apply, static_argnames=('train', 'return_attention', 'mutable'))


def _np_tree(tree):
  return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_matches_numpy_reference(variant):
  """Logits and attention weights of the whole reader equal the numpy reference in training
  (batch statistics) and evaluation (population statistics) mode: masked softmax over valid
  positions only, -inf outside the candidates, padded documents and queries."""
  batch = _batch()
  model = _model(variant)
  variables = _variables(model, batch)
  norm, _, kinds, fields = VARIANTS[variant]
  finite = batch['candidates'] > 0
  for train in (True, False):
    (logits, s), _ = _jit_apply(model)(variables, *experiment.model_inputs(batch), train=train,
                                       return_attention=True, mutable=('batch_stats',))
    want_logits, want_s = ref.attentive_reader_np(
        _np_tree(variables['params']), _np_tree(variables.get('batch_stats', {})),
        *experiment.model_inputs(batch), scheme=norm, kinds=kinds,
        everywhere=fields['everywhere'], answer_mask='candidates',
        bidirectional=fields['bidirectional'], train=train, eps=EPS, max_time_steps=TD)
    np.testing.assert_allclose(np.asarray(s), want_s, rtol=2e-4, atol=1e-6, err_msg=str(train))
    assert np.all(np.asarray(s)[batch['document_mask'] == 0] == 0)
    np.testing.assert_array_equal(np.isfinite(np.asarray(logits)), finite)
    np.testing.assert_allclose(np.asarray(logits)[finite], want_logits[finite], rtol=2e-4,
                               atol=1e-5, err_msg=str(train))


def test_bn_everywhere_population_statistics():
  """BN-e**: training moves the attention terms' running averages towards the batch moments,
  writes those moments for re-estimation, and evaluation with statistics re-estimated from the
  batch itself reproduces the training-mode output (every BN of the model, attention included,
  then uses this batch's statistics). With h_0 noise: with one shared h_0 the recurrent term's
  first step has zero batch variance, and 1/sqrt(eps) would amplify the float32 rounding of the
  stored statistics (docs/method.md, P16)."""
  # Every position has >= 2 valid examples (one example would be a zero variance too).
  batch = _batch(doc_lengths=(6, 6, 3), query_lengths=(3, 3, 2))
  model = _model('bn_e_star2', h0_noise=0.1)
  variables = _variables(model, batch)
  inputs = experiment.model_inputs(batch)
  key = jax.random.PRNGKey(3)
  apply = _jit_apply(model)
  train_logits, updated = apply(variables, *inputs, train=True,
                                mutable=('batch_stats', 'moments'), rngs={'noise': key})
  old = variables['batch_stats']['attention']
  for term in ('norm_ym', 'norm_um', 'norm_rg', 'norm_ug'):
    mom = updated['moments']['attention'][term]['sites']['input']
    for stat in ('mean', 'var'):
      np.testing.assert_allclose(updated['batch_stats']['attention'][term][f'input_{stat}'],
                                 0.9 * old[term][f'input_{stat}'] + 0.1 * mom[stat], rtol=1e-5,
                                 atol=1e-6)
  # The document term's statistics count every valid document position of the batch.
  assert float(updated['moments']['attention']['norm_ym']['sites']['input']['count']) == 15
  stats = experiment.reestimate(model, variables['params'], variables['batch_stats'], [batch],
                                key)
  eval_logits = apply({'params': variables['params'], 'batch_stats': stats}, *inputs,
                      train=False, rngs={'noise': key})
  finite = batch['candidates'] > 0
  np.testing.assert_allclose(np.asarray(eval_logits)[finite], np.asarray(train_logits)[finite],
                             rtol=1e-3, atol=3e-4)
  # ... while the tables it started from give something else.
  before = apply(variables, *inputs, train=False, rngs={'noise': key})
  assert np.abs(np.asarray(before)[finite] - np.asarray(train_logits)[finite]).max() > 0.05


def test_padding_and_reversal():
  """BN-e** at batch size 1 in evaluation: one example alone and the same example with extra
  padding give the same logits with reverse_padding='valid' (the reverse pass reverses the valid
  prefix only and per-step statistics are indexed by the position in it). 'whole' (the reversal
  before BN-e**) flips the padded array, so the reverse pass normalizes the document's steps with
  other positions' statistics and padding changes the output; without padding the two agree."""
  padded = _batch(doc_lengths=(4,), query_lengths=(2,))
  alone = {k: v[:, :4] if k.startswith('document') else v[:, :2] if k.startswith('query') else v
           for k, v in padded.items()}
  valid, whole = (_model('bn_e_star2', reverse_padding=r) for r in ('valid', 'whole'))
  variables = _variables(valid, _batch())
  finite = padded['candidates'] > 0
  out = {}
  for name, model in (('valid', valid), ('whole', whole)):
    apply = _jit_apply(model)
    for key, batch in (('padded', padded), ('alone', alone)):
      out[name, key] = np.asarray(apply(variables, *experiment.model_inputs(batch),
                                        train=False))[finite]
  np.testing.assert_allclose(out['valid', 'padded'], out['valid', 'alone'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['whole', 'alone'], out['valid', 'alone'], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out['whole', 'padded'], out['valid', 'padded'], atol=1e-4)


def test_loss_counts_unanswerable_examples_as_errors():
  """An answer outside the candidates (a document cut to its relevant sentences) is an error with
  no loss and no gradient; a padding row without candidates adds nothing; no NaN anywhere."""
  logits_raw = jnp.array([[2.0, 1.0, 0.0], [0.5, 3.0, 1.0], [1.0, 1.0, 1.0]])
  candidates = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
  answer = jnp.array([0, 1, 2])
  weights = jnp.array([1.0, 1.0, 0.0])

  def total(raw):
    logits = jnp.where(candidates > 0, raw, -jnp.inf)
    return losses.question_answering(logits, answer, weights)['loss']

  sums = losses.question_answering(jnp.where(candidates > 0, logits_raw, -jnp.inf), answer,
                                   weights)
  want = -np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(1.0)))
  np.testing.assert_allclose(float(sums['loss']), want, rtol=1e-6)
  assert float(sums['correct']) == 1.0 and float(sums['count']) == 2.0
  assert losses.summarize(jax.device_get(sums), 'qa')['error'] == 0.5
  grad = np.asarray(jax.grad(total)(logits_raw))
  assert np.all(np.isfinite(grad)) and np.all(grad[1:] == 0) and grad[0, 2] == 0


def test_gradients_match_finite_differences():
  """Reverse-mode gradients of the attention and output with BN-everywhere (training mode,
  float64, padded documents, a padding row) against finite differences, w.r.t. every parameter
  and the encodings y_d and u (the encoders' gradients are the scan's, tested in
  test_recurrent.py and test_per_site.py)."""
  from normrnn.reader import Attention  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    spec = ReaderSpec(vocab_size=V, num_entities=E, embed=4, attention=3, output=3,
                      everywhere='batch')
    module = Attention(spec, EPS, 0.1, True)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], np.float64)
    y_d = rng.normal(size=(4, 4, 5)) * mask[..., None]
    u = rng.normal(size=(4, 6))
    candidates = np.array([[1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], np.float64)
    answer, weights = np.array([0, 2, 3, 0]), np.array([1.0, 1.0, 1.0, 0.0])
    variables = module.init(jax.random.PRNGKey(0), y_d, mask, u, candidates)
    params = jax.tree.map(lambda v: v + 0.3 * rng.normal(size=v.shape), variables['params'])

    @jax.jit  # one compilation for the many evaluations of the check
    def loss(p, y, q):
      (logits, _), _ = module.apply({'params': p, 'batch_stats': variables['batch_stats']}, y,
                                    mask, q, candidates, mutable=['batch_stats'])
      return losses.question_answering(logits, answer, weights)['loss']

    jax.test_util.check_grads(loss, (params, y_d, u), order=1, modes=['rev'], atol=1e-5,
                              rtol=1e-5, eps=1e-6)


# --- configs, a smoke training run, Fig. 3 curves and the reproduce table ----------------------

ROOT = Path(__file__).resolve().parents[1]
SHARED_PTB = helpers.SHARED_DATA / 'ptb_char'
QUIET = {'train.progress_bar': False, 'wandb.tensorboard': False}
# Loaded at collection, as tests/test_reproduce.py does (before pytest captures the output).
reproduce = helpers.load_script('experiments/reproduce.py')
qa_curves = helpers.load_script('experiments/qa_curves.py')


def test_configs_variants_and_sweep():
  """Every variant and size of both config files validates; the variants are the paper's
  (labels from the config itself), and every sweep point turns the base config into a variant's
  config."""
  cnn_qa = helpers.config_module('cnn_qa')
  for name, variant in cnn_qa.VARIANTS.items():
    for size in SIZES:
      config = cnn_qa.get_config(f'variant={name},size={size}')
      validate(config)
      assert variant_label(json.loads(config.to_json())) == variant['label']
  paper = cnn_qa.get_config('variant=bn_e_star2,data=full')
  assert (paper.model.hidden, paper.optimizer.clip_norm, paper.data.relevant_sentences) == (
      120, 10.0, 0)
  text, runs = (cnn_qa.get_config(f'variant=bn_e_star2,hparams={h}') for h in ('text', 'runs'))
  assert (text.optimizer.learning_rate, text.data.batch_size) == (8e-4, 40)
  assert (runs.optimizer.learning_rate, runs.data.batch_size) == (8e-5, 64)
  lstm = cnn_qa.get_config('variant=lstm')
  assert (lstm.model.hidden, lstm.optimizer.learning_rate, lstm.data.relevant_sentences,
          lstm.model.reader.bidirectional) == (240, 8e-5, 4, False)
  bad = cnn_qa.get_config('variant=bn_e_star2')
  bad.model.reader.everywhere = 'group'
  with pytest.raises(ConfigError, match=r"model.reader.everywhere='group' is not valid; choose "
                                        r'one of: none, batch, layer'):
    validate(bad)
  cloze = helpers.config_module('ptb_cloze')
  assert cloze.get_config().data.name == 'ptb_cloze'
  with pytest.raises(ConfigError, match='size'):
    cloze.get_config('size=paper')
  for point, name in zip(cloze.get_sweep('size=smoke'), cloze.cnn_qa.VARIANTS):
    config = cloze.get_config('size=smoke')
    for dotted, value in point.items():
      *parents, leaf = dotted.split('.')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
    validate(config)
    assert variant_label(json.loads(config.to_json())) == cnn_qa.VARIANTS[name]['label']


@pytest.mark.skipif(not SHARED_PTB.is_dir(), reason=f'{SHARED_PTB} is missing')
@pytest.mark.parametrize('variant', ['lstm', 'bn_e_star2'])
def test_cloze_smoke_training(variant, tmp_path):
  """configs/ptb_cloze.py size=smoke trains end to end (trainer, evaluation in both statistics
  modes, re-estimation, results.json) and experiments/qa_curves.py draws the run."""
  config = load_config(f'{ROOT / "configs" / "ptb_cloze.py"}:variant={variant},size=smoke',
                       QUIET)
  results = trainer.train_and_evaluate(config, str(tmp_path / variant))
  metrics = results['metrics']
  assert 0.0 <= metrics['test/error'] <= 1.0 and np.isfinite(metrics['test/loss'])
  assert ('test_batch/error' in metrics) == (variant == 'bn_e_star2')
  out = tmp_path / 'curves.png'
  assert qa_curves.main([str(tmp_path / variant), '--out', str(out), '--stats', 'batch']) == 0
  (row,) = json.loads(out.with_suffix('.json').read_text())['runs']
  assert row['label'] == ('LSTM' if variant == 'lstm' else 'BN-e**')
  assert row['valid_key'] == ('val/error' if variant == 'lstm' else 'val_batch/error')
  assert row['min_valid_error'] is not None and out.stat().st_size > 0


def test_reproduce_cnn_qa_table(tmp_path, capsys):
  """The Table 4 / Fig. 3a table: rows are variants; a finished Fig. 3a row shows its lowest
  validation error, a finished Table 4 row its test error, the others their status; a run of
  another variant in a row's directory reads `config differs`."""
  root = tmp_path / 'runs'
  rows = {r['scheme']: r for r in reproduce.make_rows('cnn_qa', str(root), 'cpu')}
  assert list(rows)[:2] == ['lstm_full', 'bn_e_star2_full'] and 'ln_top4' in rows
  assert rows['bn_e_star2_top4']['paper'] == 43.9 and rows['lstm_full']['paper'] == 45.0

  def fake(name, arg, metrics, best):
    config = json.loads(load_config(f'{ROOT / "configs" / "cnn_qa.py"}:{arg},size=cpu')
                        .to_json())
    d = Path(rows[name]['workdir'])
    d.mkdir(parents=True)
    (d / 'config.json').write_text(json.dumps(config))
    (d / 'metrics.jsonl').write_text(json.dumps({'step': 10, 'time': 0.0}) + '\n')
    (d / 'results.json').write_text(json.dumps(dict(
        metrics=metrics, best=dict(step=10, value=best, metric=config['eval']['select_metric']),
        best_step=10, final_step=10, wall_time_s=5.0, data={'name': 'ptb_cloze'})))

  fake('bn_e_star2_top4', 'variant=bn_e_star2,data=top4', {'test/error': 0.5}, 0.41)
  fake('lstm_full', 'variant=lstm,data=full', {'test/error': 0.473}, 0.45)
  fake('bn_top4', 'variant=bn_everywhere,data=top4', {'test/error': 0.5}, 0.4)  # wrong variant
  assert reproduce.main(['cnn_qa', '--root', str(root), '--size', 'cpu']) == 0
  out = capsys.readouterr().out
  line = lambda model: next(l for l in out.splitlines() if l.startswith(f'| {model} |'))
  assert line('BN-e**, 4 relevant sentences').startswith(
      '| BN-e**, 4 relevant sentences | 43.9 | 41.00 | lowest validation error')
  assert line('LSTM, full documents').startswith(
      '| LSTM, full documents | 45.0 | 47.30 | test/error')
  assert '| missing |' in line('LN-LSTM, 4 relevant sentences')
  assert 'config differs: model.reader.everywhere' in line('BN-LSTM, 4 relevant sentences')
  assert 'Attentive Reader (Hermann et al. 2015), test 37.0' in out
