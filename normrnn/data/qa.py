"""The question-answering task (kind 'qa'): batches for the Attentive Reader.

Hermann et al. 2015 as used by Cooijmans et al. 2016 (sec. 5.4, App. B): a document, a query
with one @placeholder, and the answer: the entity that fills it. A batch is a dict of numpy
arrays:

  document       int32   [B, Td]  token ids (0 = padding)
  document_mask  float32 [B, Td]  1 = a real token
  query          int32   [B, Tq]
  query_mask     float32 [B, Tq]
  candidates     float32 [B, E]   1 where entity k may be the answer (it occurs in the document)
  answer         int32   [B]      the answer's entity index in [0, E)
  weights        float32 [B]      1 = real example, 0 = padding row of a last eval batch

Vocabulary: 0 padding, 1 unknown, 2 .. 2+E-1 the entity placeholders, then the words of the
training split, most frequent first (`normrnn.data.qa_corpus`). Every batch has the same shape,
Td = max_document_len and Tq = max_query_len (the longest document, after sentence selection and
truncation, and the longest query of the whole corpus), so the train step compiles once.

Randomness (each a pure function of its arguments, so a resumed run sees the same data):
  - training examples are drawn WITH replacement (Cooijmans et al. sec. 5.4):
    rows = default_rng([seed, 0, step]).integers(0, N, batch_size);
  - the entities of every example are re-numbered by a random permutation of [0, E), drawn per
    example in each minibatch from the same generator ("entity-placeholder order shuffled per
    text in each minibatch"), so an entity id carries no meaning across examples and a model
    can only answer by reading the document;
  - evaluation re-numbers example i of a split with default_rng([EVAL_SEED, 2, split, i]): the
    same for every run, batch size and seed;
  - re-estimation batches (BN population statistics) are training-distribution batches:
    batch j = default_rng([seed, 1, j]) draws like a training batch.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from normrnn.data import qa_corpus
from normrnn.data.files import DataError
from normrnn.data.qa_corpus import FIRST_ENTITY, PLACEHOLDER, UNK
from normrnn.data.tasks import SPLITS, Task, _integer, _positive_int

TRAIN_STREAM, REESTIMATE_STREAM, EVAL_STREAM = 0, 1, 2
EVAL_SEED = 20160331  # Fixed: every run is evaluated on identically re-numbered examples.
_CHUNK = 4096         # Examples per vectorized step when checking answers in documents.


@dataclasses.dataclass
class Examples:
  """One split ready for batching: per example, its document (after sentence selection and
  truncation) and query as (start, length) into flat arrays, its answer and candidates."""
  documents: np.ndarray
  document_starts: np.ndarray
  document_lengths: np.ndarray
  queries: np.ndarray
  query_starts: np.ndarray
  query_lengths: np.ndarray
  answers: np.ndarray
  candidates: np.ndarray
  candidate_offsets: np.ndarray
  num_documents: int
  truncated: int                  # documents cut at max_document_len
  answer_in_document: np.ndarray  # bool [N]: the answer still occurs in the document
  query_only_accuracy: float      # see stats()

  def __len__(self) -> int:
    return len(self.answers)

  def stats(self) -> dict:
    """JSON-serializable sizes and fractions (describe())."""
    n = len(self)
    n_candidates = np.diff(self.candidate_offsets)
    return {
        'examples': n, 'documents': self.num_documents,
        'mean_document_len': float(self.document_lengths.mean()) if n else 0.0,
        'max_document_len': int(self.document_lengths.max(initial=0)),
        'mean_query_len': float(self.query_lengths.mean()) if n else 0.0,
        'truncated_fraction': self.truncated / n if n else 0.0,
        # With sentence selection or truncation the answer can be cut out: an upper bound on
        # accuracy (the paper's 57% for the 4-sentence CNN variant).
        'answer_in_document_fraction': float(self.answer_in_document.mean()) if n else 0.0,
        'mean_candidates': float(n_candidates.mean()) if n else 0.0,
        # Entity ids are re-shuffled per example, so without the document and query a model can
        # only guess among the candidates: this accuracy. One that reads the query alone can
        # also rule out the query's other entities: `query_only_accuracy` (a uniform guess among
        # the remaining candidates).
        'chance_accuracy': float((1.0 / np.maximum(n_candidates, 1)).mean()) if n else 0.0,
        'query_only_accuracy': self.query_only_accuracy,
    }


def prepare(split: qa_corpus.QASplit, corpus: qa_corpus.QACorpus, *, relevant_sentences: int,
            max_document_len: int) -> Examples:
  """Applies the "k most relevant sentences" selection (k = relevant_sentences, 0 = whole
  documents) and then truncation to max_document_len tokens (the first ones are kept)."""
  if relevant_sentences:
    ignore = np.concatenate([qa_corpus.sentence_ids(corpus),
                             [corpus.word_id(PLACEHOLDER) or -1]])
    documents, starts, lengths = qa_corpus.select_sentences(
        split, relevant_sentences, qa_corpus.sentence_ids(corpus), ignore)
  else:
    documents = split.documents
    starts = split.document_offsets[:-1][split.document_of]
    lengths = np.diff(split.document_offsets)[split.document_of]
  truncated = int((lengths > max_document_len).sum())
  lengths = np.minimum(lengths, max_document_len)
  answer_in = np.zeros(len(split), bool)
  for begin in range(0, len(split), _CHUNK):
    rows = slice(begin, begin + _CHUNK)
    tokens, row = qa_corpus.ragged_take(documents, starts[rows], lengths[rows])
    answers = split.answers[rows].astype(np.int64) + FIRST_ENTITY
    hit = tokens == answers[row]
    answer_in[begin + row[hit]] = True
  return Examples(
      documents=documents, document_starts=starts.astype(np.int64),
      document_lengths=lengths.astype(np.int64), queries=split.queries,
      query_starts=split.query_offsets[:-1], query_lengths=np.diff(split.query_offsets),
      answers=split.answers, candidates=split.candidates,
      candidate_offsets=split.candidate_offsets, num_documents=split.num_documents,
      truncated=truncated, answer_in_document=answer_in,
      query_only_accuracy=_query_only_accuracy(split, corpus.num_entities))


def _query_only_accuracy(split: qa_corpus.QASplit, num_entities: int) -> float:
  """Mean accuracy of a uniform guess among the candidates that do not occur in the query."""
  n = len(split)
  if n == 0:
    return 0.0
  tokens, row = qa_corpus.ragged_take(split.queries.astype(np.int64), split.query_offsets[:-1],
                                      np.diff(split.query_offsets))
  entity = tokens - FIRST_ENTITY
  in_query = (entity >= 0) & (entity < num_entities)
  query_keys = qa_corpus.sorted_unique(row[in_query] * num_entities + entity[in_query])
  candidate_row = np.repeat(np.arange(n), np.diff(split.candidate_offsets))
  candidate_keys = candidate_row * num_entities + split.candidates
  remaining = ~np.isin(candidate_keys, query_keys)
  counts = np.bincount(candidate_row[remaining], minlength=n)
  answer_remains = ~np.isin(np.arange(n) * num_entities + split.answers, query_keys)
  return float(np.where(answer_remains & (counts > 0), 1.0 / np.maximum(counts, 1), 0.0).mean())


def _pad(flat: np.ndarray, starts, lengths, size: int, width: int):
  """([size, width] int32 tokens, float32 mask): row i = flat[starts[i]:][:lengths[i]]."""
  tokens = np.zeros((size, width), np.int32)
  mask = np.zeros((size, width), np.float32)
  n = len(starts)
  if n and len(flat):
    cols = np.arange(width)
    valid = cols < np.asarray(lengths)[:, None]
    index = np.minimum(np.asarray(starts)[:, None] + cols, len(flat) - 1)
    tokens[:n] = np.where(valid, flat[index], 0)
    mask[:n] = valid
  return tokens, mask


class QATask(Task):
  """Cloze-style question answering over anonymized entities (module docstring).

  Args:
    corpus: a `QACorpus` (cnn_qa.py or cloze.py).
    relevant_sentences: 0 = whole documents; k = each document cut to the k sentences sharing
      the most words with the query (Cooijmans et al.'s 4-sentence CNN variant).
    max_document_len: documents longer than this (after selection) are truncated.
    max_vocab: 0 = every training word; otherwise the most frequent max_vocab words (the rest
      become unknown).

  Attributes beyond Task's: num_entities (E), vocab_size (2 + E + words), max_document_len and
  max_query_len (Td and Tq of every batch), corpus, relevant_sentences, max_vocab.
  """
  kind = 'qa'

  def __init__(self, name, corpus: qa_corpus.QACorpus, *, relevant_sentences: int,
               max_document_len: int, max_vocab: int, seed, batch_size, eval_batch_size, info):
    super().__init__(name, seed=seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
                     info=info)
    self.corpus = corpus
    self.relevant_sentences = relevant_sentences
    self.max_vocab = max_vocab
    self.num_entities = corpus.num_entities
    words = corpus.num_training_words
    self.vocab_size = FIRST_ENTITY + self.num_entities + (min(words, max_vocab) if max_vocab
                                                           else words)
    self._examples = {s: prepare(corpus.splits[s], corpus, relevant_sentences=relevant_sentences,
                                 max_document_len=max_document_len) for s in SPLITS}
    for split, examples in self._examples.items():
      if len(examples) == 0:
        raise DataError(f'{name}: the {split} split has no examples.')
    self.max_document_len = max(int(e.document_lengths.max()) for e in self._examples.values())
    self.max_query_len = max(int(e.query_lengths.max()) for e in self._examples.values())
    self.train_length = self.max_document_len
    self.input_features = self.vocab_size
    self.num_classes = self.num_entities
    # No epochs (examples are drawn with replacement): a nominal pass over the training set.
    self.steps_per_epoch = max(1, len(self._examples['train']) // batch_size)

  def split_size(self, split: str) -> int:
    """Examples in `split`."""
    self._check_split(split)
    return len(self._examples[split])

  def _batch(self, split: str, rows: np.ndarray, size: int, document_len: int,
             permutations: np.ndarray | None = None) -> dict:
    """Examples `rows` of `split` padded to `size` rows; entity k of example i re-numbered
    permutations[i, k] (None: the fixed evaluation permutations). Only this process's share of
    the rows is built (Task._local)."""
    positions, size = self._local(np.arange(len(rows)), size)
    rows = rows[positions]
    permutations = (self.eval_permutations(split, rows) if permutations is None
                    else permutations[positions])
    ex = self._examples[split]
    n = len(rows)
    document, document_mask = _pad(ex.documents, ex.document_starts[rows],
                                   ex.document_lengths[rows], size, document_len)
    query, query_mask = _pad(ex.queries, ex.query_starts[rows], ex.query_lengths[rows], size,
                             self.max_query_len)
    for tokens in (document, query):
      tokens[tokens >= self.vocab_size] = UNK  # valid/test-only words and words past max_vocab
      entity = tokens - FIRST_ENTITY
      is_entity = (entity >= 0) & (tokens < FIRST_ENTITY + self.num_entities)
      row = np.nonzero(is_entity)[0]
      tokens[is_entity] = FIRST_ENTITY + permutations[row, entity[is_entity]]
    candidates = np.zeros((size, self.num_entities), np.float32)
    for i, r in enumerate(rows):
      own = ex.candidates[ex.candidate_offsets[r]:ex.candidate_offsets[r + 1]]
      candidates[i, permutations[i, own]] = 1
    answer = np.zeros(size, np.int32)
    answer[:n] = permutations[np.arange(n), ex.answers[rows]]
    weights = np.zeros(size, np.float32)
    weights[:n] = 1
    return {'document': document, 'document_mask': document_mask, 'query': query,
            'query_mask': query_mask, 'candidates': candidates, 'answer': answer,
            'weights': weights}

  def _random_batch(self, rng: np.random.Generator, size: int) -> dict:
    """`size` training examples drawn with replacement, each with its own entity permutation."""
    rows = rng.integers(0, len(self._examples['train']), size)
    permutations = rng.permuted(np.tile(np.arange(self.num_entities), (size, 1)), axis=1)
    return self._batch('train', rows, size, self.max_document_len, permutations)

  def train_batch(self, step: int) -> dict:
    """Training batch number `step`: a pure function of (seed, step)."""
    step = _integer(step, 'train_batch step', 0)
    return self._random_batch(np.random.default_rng([self.seed, TRAIN_STREAM, step]),
                              self.batch_size)

  def eval_permutations(self, split: str, rows) -> np.ndarray:
    """The fixed entity permutations [len(rows), E] of examples `rows` of `split` in evaluation
    (independent of seed and batch size)."""
    index = SPLITS.index(split)
    return np.stack([np.random.default_rng([EVAL_SEED, EVAL_STREAM, index, int(r)]).permutation(
        self.num_entities) for r in rows]) if len(rows) else np.zeros((0, self.num_entities),
                                                                      np.int64)

  def eval_batches(self, split: str, *, batch_size=None, length=None):
    """Every example of `split` once, in order; the last batch is padded with rows of weight 0.

    `length` (default max_document_len) is the document width Td; it must hold the longest
    document of the split (evaluation never truncates beyond data.seq_len).
    """
    self._check_split(split)
    size = _positive_int(self.eval_batch_size if batch_size is None else batch_size,
                         'eval batch_size')
    width = self.max_document_len if length is None else _positive_int(length,
                                                                       'evaluation length')
    longest = int(self._examples[split].document_lengths.max())
    if width < longest:
      raise DataError(f'{self.name}: evaluation length {width} is shorter than the longest '
                      f'{split} document ({longest} tokens); use length >= {longest} (or None).')
    n = self.split_size(split)

    def batches():
      for start in range(0, n, size):
        rows = np.arange(start, min(start + size, n))
        yield self._batch(split, rows, size, width)
    return batches()

  def reestimate_batches(self, batch_size: int, num_batches=None):
    """Training-distribution batches (drawn with replacement, entities re-numbered) for BN
    population statistics: batch j from default_rng([seed, 1, j]). `num_batches` defaults to a
    nominal pass over the training set (at least one batch)."""
    size = _positive_int(batch_size, 'batch_size')
    count = (max(1, self.split_size('train') // size) if num_batches is None
             else _positive_int(num_batches, 'num_batches'))
    return (self._random_batch(np.random.default_rng([self.seed, REESTIMATE_STREAM, j]), size)
            for j in range(count))

  def describe(self) -> dict:
    return {**super().describe(), 'num_entities': self.num_entities,
            'max_document_len': self.max_document_len, 'max_query_len': self.max_query_len,
            'relevant_sentences': self.relevant_sentences, 'max_vocab': self.max_vocab,
            'training_words': self.corpus.num_training_words,
            'splits': {s: self._examples[s].stats() for s in SPLITS}}
