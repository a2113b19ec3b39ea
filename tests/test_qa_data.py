"""Tests for the question-answering data: the CNN reader on .question files written here in the
real DeepMind Q&A format, the vocabulary, the 4-sentence selection, entity re-numbering, sampling,
batches, the offline error, and the CPU-scale PTB cloze task (small text and the real file)."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from normrnn.data import DataError, cloze, cnn_qa, make_task, qa, qa_corpus, tasks
from normrnn.data.qa_corpus import FIRST_ENTITY, PAD, UNK
from tests import helpers

SHARED_PTB = helpers.SHARED_DATA / 'ptb_char'
WORDS = ('the a of to in said on was bridge mayor city police court vote bill plan money report '
         'after new state').split()
SPLIT_DIRS = ('training', 'validation', 'test')


# --- fixture: .question files in the real format ------------------------------------------------

def question_text(url, document, query, answer, names) -> str:
  """One .question file as DeepMind's generate_questions.py writes it (5 blank-line separated
  blocks: URL, document, query, answer, `@entityN:Name` lines)."""
  mapping = '\n'.join(f'{entity}:{name}' for entity, name in names.items())
  return f'{url}\n\n{document}\n\n{query}\n\n{answer}\n\n{mapping}'


def write_cnn(root: Path, articles=(4, 2, 2), questions=3, seed=0) -> dict:
  """Writes <root>/questions/{training,validation,test}/*.question; returns {split dir: [(doc
  tokens, query tokens, answer index)]} in file-name order. Every query holds a unique word
  'qidN' (to find its example in a batch); the validation split has the word 'zebra', which no
  training file has."""
  rng = np.random.default_rng(seed)
  written = {}
  qid = 0
  for folder, n_articles in zip(SPLIT_DIRS, articles):
    d = root / 'questions' / folder
    d.mkdir(parents=True)
    written[folder] = []
    for a in range(n_articles):
      sentences = []
      for _ in range(rng.integers(3, 7)):
        words = [str(w) for w in rng.choice(WORDS, rng.integers(4, 9))]
        words.insert(int(rng.integers(0, len(words) + 1)), f'@entity{rng.integers(0, 12)}')
        if folder == 'validation':
          words.append('zebra')
        sentences.append(words + ['.'])
      document = [w for s in sentences for w in s]
      names = {w: f'Name {w[7:]}' for w in sorted(set(document)) if w.startswith('@entity')}
      for q in range(questions):
        sentence = sentences[int(rng.integers(len(sentences)))]
        at = next(i for i, w in enumerate(sentence) if w.startswith('@entity'))
        query = sentence[:at] + ['@placeholder'] + sentence[at + 1:-1] + [f'qid{qid}']
        qid += 1
        url = f'http://web.archive.org/web/2015/http://edition.cnn.com/{folder}/{a}'
        name = hashlib.sha1(f'{folder}{a}{q}'.encode()).hexdigest() + '.question'
        (d / name).write_text(question_text(url, ' '.join(document), ' '.join(query),
                                            sentence[at], names))
        written[folder].append((name, document, query, int(sentence[at][7:])))
    written[folder] = [entry[1:] for entry in sorted(written[folder])]
  return written


@pytest.fixture
def cnn_dir(tmp_path):
  root = tmp_path / 'cnn'
  return root, write_cnn(root)


# helpers.data_cfg with the CNN task's defaults (arguments replace them).
data_cfg = functools.partial(helpers.data_cfg, name='cnn_qa', seq_len=500, eval_batch_size=5)


def cnn_task(root, **overrides) -> qa.QATask:
  return make_task(data_cfg(dir=str(root), **overrides), 0)


def qid(task, query_row) -> int:
  """N of the unique 'qidN' word of a query (write_cnn numbers questions as it writes them)."""
  (word,) = [w for w in task.corpus.decode(query_row) if w.startswith('qid')]
  return int(word[3:])


def example_of(task, query_row, split='train') -> int:
  """The index in the corpus split of the example a batch row shows (found by its qid)."""
  s = task.corpus.splits[split]
  for i in range(len(s)):
    if qid(task, s.queries[s.query_offsets[i]:s.query_offsets[i + 1]]) == qid(task, query_row):
      return i
  raise AssertionError('no such example')


# --- the reader ---------------------------------------------------------------------------------

def test_parse_question_real_format(tmp_path):
  path = tmp_path / 'x.question'
  path.write_text(question_text('http://u', '@entity3 ( @entity1 ) -- the mayor said .',
                                'the mayor of @placeholder', '@entity1',
                                {'@entity1': 'CNN', '@entity3': 'Atlanta: Georgia'}))
  document, query, answer = cnn_qa.parse_question(path)
  assert document[:3] == ['@entity3', '(', '@entity1'] and query[-1] == '@placeholder'
  assert answer == 1
  path.write_text('http://u\n\nonly a document\n\n')
  with pytest.raises(DataError, match='x.question.*blocks'):
    cnn_qa.parse_question(path)
  path.write_text(question_text('http://u', 'a b .', 'a @placeholder', 'Atlanta', {}))
  with pytest.raises(DataError, match=r'x.question: the answer block'):
    cnn_qa.parse_question(path)


@pytest.mark.parametrize('inner', [False, True])
def test_reader_vocabulary_and_layout(cnn_dir, inner):
  root, written = cnn_dir
  corpus, facts = cnn_qa.load_cnn_qa(root / 'questions' if inner else root, download=False)
  train = corpus.splits['train']
  assert [len(corpus.splits[s]) for s in qa_corpus.SPLITS] == [12, 6, 6]
  assert train.num_documents == 4  # three questions per article, the article stored once
  assert facts['question_files'] == {'train': 12, 'valid': 6, 'test': 6}
  assert corpus.num_entities == 1 + max(
      int(w[7:]) for entries in written.values() for doc, query, _ in entries
      for w in doc + query if w.startswith('@entity'))
  # Training words ranked by frequency in training documents (once each) and queries.
  counts = {}
  for doc in {tuple(doc) for doc, _, _ in written['training']}:
    for w in doc:
      counts[w] = counts.get(w, 0) + 1
  for _, query, _ in written['training']:
    for w in query:
      counts[w] = counts.get(w, 0) + 1
  expected = sorted((w for w in counts if not w.startswith('@entity')),
                    key=lambda w: (-counts[w], w))
  assert corpus.words[:corpus.num_training_words] == tuple(expected)
  assert 'zebra' in corpus.words[corpus.num_training_words:]  # valid-only: kept, past the vocab
  # Round trip: documents, queries and answers decode to the files' tokens.
  for split, folder in zip(qa_corpus.SPLITS, SPLIT_DIRS):
    s = corpus.splits[split]
    for i, (doc, query, answer) in enumerate(written[folder]):
      d = s.document_of[i]
      assert corpus.decode(s.documents[s.document_offsets[d]:s.document_offsets[d + 1]]) == doc
      assert corpus.decode(s.queries[s.query_offsets[i]:s.query_offsets[i + 1]]) == query
      assert s.answers[i] == answer
      candidates = s.candidates[s.candidate_offsets[i]:s.candidate_offsets[i + 1]]
      assert candidates.tolist() == sorted({int(w[7:]) for w in doc if w.startswith('@entity')})


def test_token_cache_is_written_reused_and_rebuilt(cnn_dir, monkeypatch):
  root, _ = cnn_dir
  first, facts = cnn_qa.load_cnn_qa(root, download=False)
  assert facts['cache'] == str(root / 'questions' / cnn_qa.CACHE)

  def no_reading(path):
    raise AssertionError(f'{path} read although the cache is valid')
  monkeypatch.setattr(cnn_qa, 'parse_question', no_reading)
  again, _ = cnn_qa.load_cnn_qa(root, download=False)
  assert again.words == first.words and again.num_entities == first.num_entities
  for split in qa_corpus.SPLITS:
    for field in qa_corpus.SPLIT_FIELDS:
      np.testing.assert_array_equal(getattr(again.splits[split], field),
                                    getattr(first.splits[split], field))
  monkeypatch.undo()
  # A new file changes the fingerprint: the files are read again.
  extra = root / 'questions' / 'test' / 'extra.question'
  extra.write_text(question_text('http://u', '@entity0 said . the vote .', '@placeholder said',
                                 '@entity0', {'@entity0': 'X'}))
  rebuilt, _ = cnn_qa.load_cnn_qa(root, download=False)
  assert len(rebuilt.splits['test']) == len(first.splits['test']) + 1


def test_offline_without_files_fails_fast_naming_the_directory(tmp_path):
  start = time.perf_counter()
  with pytest.raises(DataError) as error:
    cnn_task(tmp_path / 'cnn')
  assert time.perf_counter() - start < 1
  message = str(error.value)
  assert '\n' not in message and str(tmp_path / 'cnn') in message
  assert 'questions/training/*.question' in message and 'cnn.tgz' in message
  assert 'download=True' in message and 'https://cs.nyu.edu/~kcho/DMQA/' in message


def cnn_tgz(path: Path, root: Path) -> Path:
  """A cnn.tgz like the real one: members cnn/questions/<split>/<hash>.question."""
  with tarfile.open(path, 'w:gz') as tar:
    for file in sorted((root / 'questions').rglob('*.question')):
      tar.add(file, arcname=f'cnn/{file.relative_to(root)}')
    readme = tarfile.TarInfo('cnn/README')  # other members are ignored
    tar.addfile(readme, io.BytesIO(b''))
  return path


def test_download_checks_sha256_and_extracts(tmp_path, cnn_dir, monkeypatch):
  root, written = cnn_dir
  archive = cnn_tgz(tmp_path / 'source.tgz', root)
  digest = hashlib.sha256(archive.read_bytes()).hexdigest()
  monkeypatch.setattr(cnn_qa, 'ARCHIVE_URL', archive.as_uri())
  target = tmp_path / 'fresh'
  with pytest.raises(DataError, match='wrong sha256'):  # the real checksum: not this archive
    cnn_qa.load_cnn_qa(target, download=True)
  assert not (target / cnn_qa.ARCHIVE).exists() and not (target / 'questions').exists()
  monkeypatch.setattr(cnn_qa, 'ARCHIVE_SHA256', digest)
  corpus, facts = cnn_qa.load_cnn_qa(target, download=True)
  assert facts['question_files'] == {'train': 12, 'valid': 6, 'test': 6}
  assert sorted(p.name for p in (target / 'questions' / 'training').iterdir()) == sorted(
      p.name for p in (root / 'questions' / 'training').iterdir())
  assert len(corpus.splits['train']) == len(written['training'])


def test_archive_without_questions_is_rejected(tmp_path, monkeypatch):
  (tmp_path / 'cnn').mkdir()
  archive = tmp_path / 'cnn' / cnn_qa.ARCHIVE
  with tarfile.open(archive, 'w:gz') as tar:
    tar.addfile(tarfile.TarInfo('cnn/stories/a.story'), io.BytesIO(b''))
  monkeypatch.setattr(cnn_qa, 'ARCHIVE_SHA256', hashlib.sha256(archive.read_bytes()).hexdigest())
  with pytest.raises(DataError, match='has no questions/.*training'):
    cnn_qa.load_cnn_qa(tmp_path / 'cnn', download=False)
  assert not (tmp_path / 'cnn' / 'questions').exists()


# --- the "4 most relevant sentences" variant ----------------------------------------------------

def reference_selection(document, query, k):
  """Plain-Python reading of Cooijmans et al. sec. 5.4: the k sentences sharing the most distinct
  words with the query (string match), original order, ties to the earlier sentence."""
  sentences, current = [], []
  for w in document:
    current.append(w)
    if w in qa_corpus.SENTENCE_ENDS:
      sentences.append(current)
      current = []
  if current:
    sentences.append(current)
  words = set(query) - {'@placeholder', *qa_corpus.SENTENCE_ENDS}
  scores = [len(set(s) & words) for s in sentences]
  chosen = sorted(sorted(range(len(sentences)), key=lambda i: (-scores[i], i))[:k])
  return [w for i in chosen for w in sentences[i]]


@pytest.mark.parametrize('k', [1, 2, 4])
def test_relevant_sentences_match_the_reference(cnn_dir, k):
  root, written = cnn_dir
  task = cnn_task(root, relevant_sentences=k)
  for split, folder in zip(qa_corpus.SPLITS, SPLIT_DIRS):
    ex = task._examples[split]
    kept = 0
    for i, (doc, query, answer) in enumerate(written[folder]):
      start, length = ex.document_starts[i], ex.document_lengths[i]
      got = task.corpus.decode(ex.documents[start:start + length])
      assert got == reference_selection(doc, query, k)
      assert ex.answer_in_document[i] == (f'@entity{answer}' in got)
      kept += f'@entity{answer}' in got
    stats = task.describe()['splits'][split]
    assert stats['answer_in_document_fraction'] == pytest.approx(kept / len(written[folder]))


def test_selection_can_remove_the_answer_and_the_example_is_kept(tmp_path):
  root = tmp_path / 'cnn'
  doc = ('the mayor said on monday that the bridge will close . @entity1 , a spokesman , agreed . '
         '@entity2 left .')
  for folder in SPLIT_DIRS:
    (root / 'questions' / folder).mkdir(parents=True)
    (root / 'questions' / folder / 'a.question').write_text(question_text(
        'http://u', doc, '@placeholder says the bridge will close on monday', '@entity1',
        {'@entity1': 'A', '@entity2': 'B'}))
    (root / 'questions' / folder / 'b.question').write_text(question_text(
        'http://u', doc, '@placeholder left', '@entity2', {'@entity1': 'A', '@entity2': 'B'}))
  task = cnn_task(root, relevant_sentences=1, batch_size=2, eval_batch_size=2)
  assert task.split_size('valid') == 2  # the example whose answer was cut out is still there
  assert task.describe()['splits']['valid']['answer_in_document_fraction'] == 0.5
  (batch,) = list(task.eval_batches('valid'))
  # The answer stays a candidate (so the loss is finite) though the document no longer has it.
  assert batch['candidates'][np.arange(2), batch['answer']].tolist() == [1, 1]
  assert task.corpus.decode(batch['document'][0][batch['document_mask'][0] > 0])[:3] == [
      'the', 'mayor', 'said']


# --- batches ------------------------------------------------------------------------------------

def check_renumbering(task, batch, split='train', examples=None):
  """Every real row is its example (`examples[row]`, else found by its training qid) with one
  injective re-numbering of the entities applied to the document, the query, the answer and the
  candidates; words are unchanged (or unknown)."""
  corpus = task.corpus
  s = corpus.splits[split]
  maps = []
  for row in range(len(batch['answer'])):
    if batch['weights'][row] == 0:
      continue
    i = example_of(task, batch['query'][row]) if examples is None else examples[row]
    d = s.document_of[i]
    original = s.documents[s.document_offsets[d]:s.document_offsets[d + 1]]
    length = int(batch['document_mask'][row].sum())
    got = batch['document'][row]
    assert length == len(original) and (got[length:] == PAD).all()
    mapping = {}
    for a, b in zip(original, got[:length]):
      if FIRST_ENTITY <= a < corpus.first_word:
        assert FIRST_ENTITY <= b < corpus.first_word
        assert mapping.setdefault(int(a) - 2, int(b) - 2) == int(b) - 2
      else:
        assert b == (a if a < task.vocab_size else UNK)
    assert len(set(mapping.values())) == len(mapping)  # injective
    query = s.queries[s.query_offsets[i]:s.query_offsets[i + 1]]
    assert int(batch['query_mask'][row].sum()) == len(query)
    for a, b in zip(query, batch['query'][row]):
      if FIRST_ENTITY <= a < corpus.first_word:
        assert mapping.setdefault(int(a) - 2, int(b) - 2) == int(b) - 2
      else:
        assert b == (a if a < task.vocab_size else UNK)
    assert batch['answer'][row] == mapping[int(s.answers[i])]
    assert set(np.flatnonzero(batch['candidates'][row]).tolist()) == set(mapping.values())
    maps.append(mapping)
  return maps


def test_train_batches_renumber_entities_per_example_and_step(cnn_dir):
  root, _ = cnn_dir
  task = cnn_task(root, batch_size=16)
  first = task.train_batch(0)
  assert {k: (v.shape, v.dtype.name) for k, v in first.items()} == {
      'document': ((16, task.max_document_len), 'int32'),
      'document_mask': ((16, task.max_document_len), 'float32'),
      'query': ((16, task.max_query_len), 'int32'),
      'query_mask': ((16, task.max_query_len), 'float32'),
      'candidates': ((16, task.num_entities), 'float32'),
      'answer': ((16,), 'int32'), 'weights': ((16,), 'float32')}
  assert (first['weights'] == 1).all()
  maps = check_renumbering(task, first)
  assert len({tuple(sorted(m.items())) for m in maps}) > 1  # each example its own permutation
  # A pure function of (seed, step): same again, from a fresh task too; other steps differ.
  for again in (task.train_batch(0), cnn_task(root, batch_size=16).train_batch(0)):
    for key in first:
      np.testing.assert_array_equal(again[key], first[key])
  second = task.train_batch(1)
  check_renumbering(task, second)
  assert not np.array_equal(second['document'], first['document'])
  other_seed = make_task(data_cfg(dir=str(root), batch_size=16), 1).train_batch(0)
  assert not np.array_equal(other_seed['document'], first['document'])


def test_training_examples_are_drawn_with_replacement(cnn_dir):
  root, _ = cnn_dir
  task = cnn_task(root, batch_size=16)  # 12 training examples
  seen = [[example_of(task, q) for q in task.train_batch(step)['query']] for step in range(8)]
  assert all(len(set(rows)) < len(rows) for rows in seen)  # 16 draws from 12: repeats
  assert set(sum(seen, [])) == set(range(12))


def test_masks_padding_truncation_and_vocabulary_cap(cnn_dir):
  root, written = cnn_dir
  full = cnn_task(root)
  longest = max(len(doc) for entries in written.values() for doc, _, _ in entries)
  assert full.max_document_len == full.train_length == longest
  assert full.max_query_len == max(len(q) for entries in written.values() for _, q, _ in entries)
  assert tasks.train_length(data_cfg(dir=str(root))) == 500  # data.seq_len, no file read
  short = cnn_task(root, seq_len=10, max_vocab=3)
  assert short.max_document_len == 10 and short.vocab_size == 2 + short.num_entities + 3
  assert short.describe()['splits']['train']['truncated_fraction'] == 1.0
  for batch in (short.train_batch(0), next(short.eval_batches('valid'))):
    for key in ('document', 'query'):
      tokens, mask = batch[key], batch[f'{key}_mask']
      assert ((tokens != PAD) == (mask > 0)).all()  # real tokens are never 0
      assert tokens.max() < short.vocab_size
    assert (batch['document_mask'].sum(1) == 10).all()
  # Valid-only words and words past max_vocab become unknown.
  valid = next(full.eval_batches('valid'))
  assert (valid['document'] == UNK).any()
  assert 'zebra' not in full.corpus.decode(valid['document'].ravel())


def test_eval_batches_cover_each_example_once_with_weights(cnn_dir):
  root, _ = cnn_dir
  task = cnn_task(root)
  for split, size in (('valid', 4), ('test', 5), ('train', 5)):
    batches = list(task.eval_batches(split, batch_size=size))
    n = task.split_size(split)
    assert len(batches) == -(-n // size)
    # Batch j row r is example j * size + r: checked against that example's tokens.
    for j, b in enumerate(batches):
      assert b['weights'].sum() == min(size, n - j * size)
      check_renumbering(task, b, split, examples=range(j * size, (j + 1) * size))
    last = batches[-1]
    pad = last['weights'] == 0
    assert pad.sum() == len(batches) * size - n
    for key in ('document', 'document_mask', 'query', 'candidates'):
      assert not last[key][pad].any()
  # Fixed entity numbering in evaluation: independent of batch size, seed and repetition.
  one = list(task.eval_batches('test', batch_size=6))[0]
  other = list(make_task(data_cfg(dir=str(root)), 7).eval_batches('test', batch_size=6))[0]
  for key in one:
    np.testing.assert_array_equal(one[key], other[key])
  by_fives = list(task.eval_batches('test'))
  np.testing.assert_array_equal(by_fives[0]['document'], one['document'][:5])
  with pytest.raises(DataError, match='evaluation length 3 is shorter'):
    next(task.eval_batches('valid', length=3))


def test_reestimate_batches_and_process_shares(cnn_dir):
  root, _ = cnn_dir
  task = cnn_task(root)
  batches = list(task.reestimate_batches(4, 3))
  assert len(batches) == 3 and len(list(task.reestimate_batches(4))) == 12 // 4
  assert all(b['document'].shape == (4, task.max_document_len) for b in batches)
  np.testing.assert_array_equal(list(task.reestimate_batches(4, 3))[2]['query'],
                                batches[2]['query'])
  check_renumbering(task, batches[0])
  whole = task.train_batch(5)
  task.set_share(1, 2)
  half = task.train_batch(5)
  for key in whole:
    np.testing.assert_array_equal(half[key], whole[key][4:])


def test_config_validation(cnn_dir):
  root, _ = cnn_dir
  assert tasks.task_kind('cnn_qa') == tasks.task_kind('ptb_cloze') == 'qa'
  with pytest.raises(DataError, match='data.relevant_sentences'):
    cnn_task(root, relevant_sentences=-1)
  with pytest.raises(DataError, match=r'data.max_vocab=5 has no meaning for text8'):
    make_task(data_cfg(name='text8', dir=str(root), seq_len=100, max_vocab=5), 0)
  with pytest.raises(DataError, match='pixel_order="scanline"'):
    cnn_task(root, pixel_order='permuted')
  description = json.loads(json.dumps(cnn_task(root, relevant_sentences=4).describe()))
  assert description['kind'] == 'qa' and description['relevant_sentences'] == 4
  assert description['num_classes'] == description['num_entities']


def test_baseline_accuracies_match_a_plain_computation(cnn_dir):
  root, written = cnn_dir
  stats = cnn_task(root).describe()['splits']['valid']
  chance, query_only = [], []
  for doc, query, answer in written['validation']:
    candidates = {w for w in doc if w.startswith('@entity')}
    chance.append(1 / len(candidates))
    remaining = candidates - set(query)
    query_only.append(1 / len(remaining) if f'@entity{answer}' in remaining else 0)
  assert stats['chance_accuracy'] == pytest.approx(np.mean(chance))
  assert stats['query_only_accuracy'] == pytest.approx(np.mean(query_only))


# --- the CPU-scale cloze task -------------------------------------------------------------------

def test_cloze_construction_on_a_small_text(tmp_path):
  rng = np.random.default_rng(0)
  nouns = ['market', 'stock', 'bank', 'price', 'trade', 'fund']
  lines = [' '.join([str(rng.choice(nouns))] + [str(w) for w in rng.choice(WORDS, 5)] +
                    [str(rng.choice(nouns)), 'the'])
           for _ in range(200)]
  path = tmp_path / 'small.txt'
  path.write_text(helpers.mikolov_chars(line.split() for line in lines))
  sentences = cloze.read_sentences(path)
  assert sentences[0] == lines[0].split()
  corpus, entities = cloze.build_cloze(sentences, num_entities=4, sentences_per_document=3)
  assert len(entities) == 4 and set(entities) <= set(nouns)  # never 'the', 'of', ...
  assert corpus.num_entities == 4
  for split, chunk in cloze.split_sentences(sentences).items():
    s = corpus.splits[split]
    windows = [chunk[k:k + 3] for k in range(0, len(chunk), 3)]  # 3 sentences by position
    assert s.num_documents == sum(any(w in entities for x in window for w in x)
                                  for window in windows)  # (a window without entities asks none)
    for i in range(len(s)):
      d = s.document_of[i]
      document = corpus.decode(s.documents[s.document_offsets[d]:s.document_offsets[d + 1]])
      query = corpus.decode(s.queries[s.query_offsets[i]:s.query_offsets[i + 1]])
      answer = f'@entity{s.answers[i]}'
      at = query.index('@placeholder')
      filled = query[:at] + [answer] + query[at + 1:]
      text = ' '.join(document)
      assert answer in document and ' '.join(filled) in text  # a document sentence
      assert query[-1] == '.' and query.count('@placeholder') == 1
  again, _ = cloze.build_cloze(sentences, num_entities=4, sentences_per_document=3)
  np.testing.assert_array_equal(again.splits['test'].queries, corpus.splits['test'].queries)


@pytest.mark.skipif(not (SHARED_PTB / 'ptb.char.valid.txt').exists(),
                    reason='../shared/data/ptb_char is absent')
def test_ptb_cloze_on_the_real_file():
  task = make_task(data_cfg(name='ptb_cloze', dir=str(SHARED_PTB), seq_len=200, batch_size=32),
                   0)
  d = task.describe()
  assert "NOT the paper's data" in d['label']
  assert {s: d['splits'][s]['examples'] for s in d['splits']} == {
      'train': 3009, 'valid': 283, 'test': 179}
  assert task.num_entities == 20 and task.max_document_len == 104 and task.max_query_len == 60
  assert d['entity_words'][:4] == ['said', 'million', 'market', 'says']
  for split in ('train', 'valid', 'test'):
    stats = d['splits'][split]
    assert stats['answer_in_document_fraction'] == 1.0
    assert 0.3 < stats['chance_accuracy'] < stats['query_only_accuracy'] < 0.65
  batch = task.train_batch(0)
  check_renumbering_cloze(batch)
  for batch in task.eval_batches('valid'):
    check_renumbering_cloze(batch)


def check_renumbering_cloze(batch):
  """The answer occurs in every real row's document and is one of its candidates."""
  for row in np.flatnonzero(batch['weights']):
    answer_token = FIRST_ENTITY + batch['answer'][row]
    assert answer_token in batch['document'][row]
    assert batch['candidates'][row, batch['answer'][row]] == 1
