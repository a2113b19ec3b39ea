"""Tokenized question-answering corpora: the arrays every QA data set becomes (numpy only).

A `QACorpus` holds, per split, the documents, queries, answers and candidate answers of its
examples as flat int32 arrays with offsets, already in the vocabulary layout of the QA task
(`normrnn.data.qa`, the Attentive Reader of Hermann et al. 2015 as used by Cooijmans et al. 2016,
sec. 5.4):

  0          padding
  1          unknown word
  2 .. 2+E-1 the entities @entity0 .. @entity{E-1}
  2+E ..     the words: first the training vocabulary (documents and queries of the training
             split; most frequent first, ties in alphabetical order), then the words that occur
             only in the validation or test split. Those are kept distinct here so that the
             "most relevant sentences" selection matches strings exactly; the task maps them
             (and words beyond data.max_vocab) to 1.

Entities keep the corpus's own numbering here (@entity7 has id 9); the task re-maps them per
example by a random permutation of [0, E), so the numbering never reaches a model. An example's
candidate answers are the entities of its whole document (before any sentence selection or
truncation) plus its answer, as in Hermann et al.: the model chooses among the entities of the
document.

Unique documents are stored once (several CNN questions share one article); `document_of` gives
each example's document.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from normrnn.data.files import DataError

PAD, UNK, FIRST_ENTITY = 0, 1, 2
PLACEHOLDER = '@placeholder'
SENTENCE_ENDS = ('.', '!', '?')  # A sentence ends after one of these tokens.
SPLITS = ('train', 'valid', 'test')
ENTITY = re.compile(r'@entity(\d+)\Z')

SPLIT_FIELDS = ('documents', 'document_offsets', 'document_of', 'queries', 'query_offsets',
                'answers', 'candidates', 'candidate_offsets')


@dataclasses.dataclass
class QASplit:
  """One split. Ragged arrays are a flat array plus offsets ([n + 1], offsets[0] = 0).

  documents, document_offsets   int32 token ids of the unique documents, int64 [D + 1]
  document_of                   int32 [N] the document of each example
  queries, query_offsets        int32 query token ids (one @placeholder each), int64 [N + 1]
  answers                       int32 [N] the answer's entity index (corpus numbering)
  candidates, candidate_offsets int32 sorted entity indices each example may answer, int64 [N + 1]
  """
  documents: np.ndarray
  document_offsets: np.ndarray
  document_of: np.ndarray
  queries: np.ndarray
  query_offsets: np.ndarray
  answers: np.ndarray
  candidates: np.ndarray
  candidate_offsets: np.ndarray

  def __len__(self) -> int:
    return len(self.answers)

  @property
  def num_documents(self) -> int:
    return len(self.document_offsets) - 1


@dataclasses.dataclass
class QACorpus:
  """The three splits and the vocabulary (module docstring).

  words: the word of id 2 + E + i is words[i]; the first `num_training_words` are the training
  vocabulary, the rest occur only outside the training split.
  """
  splits: dict
  words: tuple
  num_training_words: int
  num_entities: int

  @property
  def first_word(self) -> int:
    return FIRST_ENTITY + self.num_entities

  def word_id(self, word: str):
    """The id of `word` (an entity token gives its entity id), or None if absent."""
    match = ENTITY.match(word)
    if match:
      return FIRST_ENTITY + int(match.group(1))
    if not hasattr(self, '_index'):
      self._index = {w: i for i, w in enumerate(self.words)}
    i = self._index.get(word)
    return None if i is None else self.first_word + i

  def decode(self, ids) -> list:
    """Tokens of `ids` ('<pad>', '<unk>', '@entityK', words), for inspection and tests."""
    out = []
    for i in np.asarray(ids).tolist():
      if i == PAD:
        out.append('<pad>')
      elif i == UNK:
        out.append('<unk>')
      elif i < self.first_word:
        out.append(f'@entity{i - FIRST_ENTITY}')
      else:
        out.append(self.words[i - self.first_word])
    return out

  def arrays(self) -> dict:
    """Everything as a dict of numpy arrays (for np.savez; no pickling needed to load)."""
    out = {f'{split}/{field}': getattr(self.splits[split], field)
           for split in SPLITS for field in SPLIT_FIELDS}
    # Words never contain whitespace (they come from splitting on it), so '\n' joins them.
    out['words'] = np.frombuffer('\n'.join(self.words).encode('utf-8'), np.uint8)
    out['num_training_words'] = np.int64(self.num_training_words)
    out['num_entities'] = np.int64(self.num_entities)
    return out

  @classmethod
  def from_arrays(cls, arrays) -> QACorpus:
    text = bytes(np.asarray(arrays['words'], np.uint8)).decode('utf-8')
    return cls(
        splits={split: QASplit(**{field: np.asarray(arrays[f'{split}/{field}'])
                                  for field in SPLIT_FIELDS}) for split in SPLITS},
        words=tuple(text.split('\n')) if text else (),
        num_training_words=int(arrays['num_training_words']),
        num_entities=int(arrays['num_entities']))


def ragged_index(starts, lengths):
  """(the indices s, s+1, .., s+l-1 of every (s, l) back to back, the row of every index)."""
  starts = np.asarray(starts, np.int64)
  lengths = np.asarray(lengths, np.int64)
  row = np.repeat(np.arange(len(lengths)), lengths)
  first = np.cumsum(lengths) - lengths
  return starts[row] + (np.arange(len(row)) - first[row]), row


def ragged_take(flat: np.ndarray, starts, lengths):
  """(flat[s:s + l] for every (s, l) back to back, the row of every element)."""
  index, row = ragged_index(starts, lengths)
  return flat[index], row


def sorted_unique(values) -> np.ndarray:
  """np.unique by sorting (numpy 2's hash-based np.unique is several times slower on the large
  integer keys used here)."""
  values = np.sort(np.asarray(values).ravel())
  if len(values) > 1:
    values = values[np.concatenate([[True], values[1:] != values[:-1]])]
  return values


def offsets_of(lengths) -> np.ndarray:
  """int64 [n + 1] offsets of consecutive pieces of the given lengths."""
  return np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64))]).astype(np.int64)


class CorpusBuilder:
  """Collects tokenized examples (lists of strings) and builds a `QACorpus`.

    builder.add_example('train', document_tokens, query_tokens, answer_entity_index)

  Entity tokens are '@entityN'. Identical documents (same `document_key`, or the same tokens if
  no key is given) are stored once per split. Words get temporary ids in order of first sight;
  `build` ranks them (module docstring).
  """

  def __init__(self):
    self._ids = {}  # token -> temporary id
    self._documents = {s: [] for s in SPLITS}
    self._document_index = {s: {} for s in SPLITS}
    self._document_of = {s: [] for s in SPLITS}
    self._queries = {s: [] for s in SPLITS}
    self._answers = {s: [] for s in SPLITS}

  def _encode(self, tokens) -> np.ndarray:
    ids = self._ids
    return np.array([ids.setdefault(t, len(ids)) for t in tokens], np.int32)

  def add_example(self, split: str, document, query, answer: int, document_key=None) -> None:
    """One example: document and query as token lists, answer as an entity index."""
    key = tuple(document) if document_key is None else document_key
    index = self._document_index[split].get(key)
    if index is None:
      index = self._document_index[split][key] = len(self._documents[split])
      self._documents[split].append(self._encode(document))
    self._document_of[split].append(index)
    self._queries[split].append(self._encode(query))
    self._answers[split].append(int(answer))

  def build(self, num_entities: int = 0) -> QACorpus:
    """The corpus; E = max(num_entities, 1 + the largest entity index seen anywhere)."""
    tokens = list(self._ids)  # temporary id -> token
    entity_of = np.full(len(tokens), -1, np.int64)
    for i, token in enumerate(tokens):
      match = ENTITY.match(token)
      if match:
        entity_of[i] = int(match.group(1))
    answers = {s: np.asarray(self._answers[s], np.int64) for s in SPLITS}
    largest = max([int(entity_of.max(initial=-1))] +
                  [int(a.max(initial=-1)) for a in answers.values()])
    num_entities = max(num_entities, largest + 1)
    if num_entities == 0:
      raise DataError('the question-answering data has no entity (@entityN) at all.')

    joined = {s: _concat(self._documents[s] + self._queries[s]) for s in SPLITS}
    is_word = entity_of < 0
    train_counts = np.bincount(joined['train'], minlength=len(tokens))
    other_counts = np.bincount(np.concatenate([joined['valid'], joined['test']]),
                               minlength=len(tokens))
    words_array = np.array(tokens, dtype=object)
    in_train = is_word & (train_counts > 0)
    only_other = is_word & (train_counts == 0) & (other_counts > 0)
    ranked = []
    for chosen, counts in ((in_train, train_counts), (only_other, other_counts)):
      ids = np.flatnonzero(chosen)
      ranked.extend(sorted(ids.tolist(), key=lambda i: (-int(counts[i]), tokens[i])))
    final = np.full(len(tokens), UNK, np.int64)
    final[~is_word] = FIRST_ENTITY + entity_of[~is_word]
    final[np.asarray(ranked, np.int64)] = FIRST_ENTITY + num_entities + np.arange(len(ranked))
    splits = {s: self._split(s, final, answers[s], num_entities) for s in SPLITS}
    return QACorpus(splits=splits, words=tuple(words_array[ranked].tolist()),
                    num_training_words=int(in_train.sum()), num_entities=num_entities)

  def _split(self, split, final, answers, num_entities) -> QASplit:
    documents = [final[d].astype(np.int32) for d in self._documents[split]]
    queries = [final[q].astype(np.int32) for q in self._queries[split]]
    split_arrays = QASplit(
        documents=_concat(documents).astype(np.int32),
        document_offsets=offsets_of([len(d) for d in documents]),
        document_of=np.asarray(self._document_of[split], np.int32),
        queries=_concat(queries).astype(np.int32),
        query_offsets=offsets_of([len(q) for q in queries]),
        answers=answers.astype(np.int32),
        candidates=np.zeros(0, np.int32), candidate_offsets=np.zeros(1, np.int64))
    split_arrays.candidates, split_arrays.candidate_offsets = document_entities(
        split_arrays, num_entities)
    return split_arrays


def _concat(arrays) -> np.ndarray:
  return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def document_entities(split: QASplit, num_entities: int):
  """Candidates of every example: the entities of its whole document, plus its answer.

  Returns (flat sorted entity indices int32, offsets int64 [N + 1]).
  """
  n = len(split)
  offsets = split.document_offsets
  tokens = split.documents
  is_entity = (tokens >= FIRST_ENTITY) & (tokens < FIRST_ENTITY + num_entities)
  doc_of_token = np.repeat(np.arange(split.num_documents), np.diff(offsets))
  keys = sorted_unique(doc_of_token[is_entity] * num_entities + tokens[is_entity] - FIRST_ENTITY)
  per_doc_lengths = np.bincount(keys // num_entities, minlength=split.num_documents)
  doc_entities = keys % num_entities
  doc_entity_offsets = offsets_of(per_doc_lengths)
  entity, row = ragged_take(doc_entities, doc_entity_offsets[split.document_of],
                            per_doc_lengths[split.document_of])
  keys = sorted_unique(np.concatenate([row * num_entities + entity,
                                   np.arange(n) * num_entities + split.answers]))
  return ((keys % num_entities).astype(np.int32),
          offsets_of(np.bincount(keys // num_entities, minlength=n)))


def sentence_ids(corpus: QACorpus, words=SENTENCE_ENDS) -> np.ndarray:
  """The ids of the sentence-ending tokens that the corpus has."""
  ids = [corpus.word_id(w) for w in words]
  return np.asarray([i for i in ids if i is not None], np.int32)


def select_sentences(split: QASplit, k: int, end_ids, ignore_ids, chunk: int = 65536):
  """The cost-saving variant of Cooijmans et al. sec. 5.4: each example's document cut to the
  `k` sentences that share the most distinct words with its query (exact token match; the
  `ignore_ids`, e.g. @placeholder and the sentence ends, do not count), kept in their original
  order; ties go to the earlier sentence. A sentence ends after a token in `end_ids` (or at the
  document's end). Documents with at most k sentences are kept whole.

  Vectorized: the distinct (document, word, sentence) triples are found once per split; each
  query word then looks up the sentences of its document that hold it.

  Returns (flat tokens int32, starts int64 [N], lengths int64 [N]): one document per example.
  """
  tokens = split.documents.astype(np.int64)
  offsets = split.document_offsets
  doc_lengths = np.diff(offsets)
  # Sentences: one starts at every document's first token and after every sentence end.
  starts_mask = np.zeros(len(tokens) + 1, bool)
  starts_mask[offsets[:-1][doc_lengths > 0]] = True
  starts_mask[1:] |= np.isin(tokens, end_ids)
  starts_mask = starts_mask[:-1]
  sentence_starts = np.flatnonzero(starts_mask)
  sentence_lengths = np.diff(np.append(sentence_starts, len(tokens)))
  first_sentence = np.cumsum(np.concatenate([[0], starts_mask]))[offsets]  # per doc, [D + 1]
  n_sentences = np.diff(first_sentence)
  doc_of_token = np.repeat(np.arange(split.num_documents), doc_lengths)
  local_sentence = np.cumsum(starts_mask) - 1 - first_sentence[:-1][doc_of_token]
  width = int(max(tokens.max(initial=0), split.queries.max(initial=0))) + 1
  per_doc = int(n_sentences.max(initial=0)) + 1
  triples = sorted_unique((doc_of_token * width + tokens) * per_doc + local_sentence)
  doc_word, triple_sentence = triples // per_doc, triples % per_doc

  ignore = np.asarray(ignore_ids, np.int64)
  pieces, lengths = [], []
  for begin in range(0, len(split), chunk):
    examples = np.arange(begin, min(begin + chunk, len(split)))
    n = len(examples)
    docs = split.document_of[examples].astype(np.int64)
    query, row = ragged_take(split.queries.astype(np.int64), split.query_offsets[examples],
                             np.diff(split.query_offsets)[examples])
    keys = sorted_unique(row * width + query)  # distinct query words per example
    row, word = keys // width, keys % width
    keep_word = ~np.isin(word, ignore)
    row, word = row[keep_word], word[keep_word]
    lookup = docs[row] * width + word
    lo = np.searchsorted(doc_word, lookup, 'left')
    hi = np.searchsorted(doc_word, lookup, 'right')
    index, match_of = ragged_index(lo, hi - lo)
    score = np.bincount(row[match_of] * per_doc + triple_sentence[index], minlength=n * per_doc)
    # Every sentence of every example, ranked: more shared words first, then earlier.
    sentence, example = ragged_index(np.zeros(n, np.int64), n_sentences[docs])
    pair = example * per_doc + sentence
    order = np.lexsort((sentence, -score[pair], example))
    first = np.searchsorted(example[order], np.arange(n))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - first[example[order]]
    kept = rank < k  # pairs are in (example, sentence) order, so kept ones stay in text order
    chosen = first_sentence[docs[example[kept]]] + sentence[kept]
    piece, piece_row = ragged_take(split.documents, sentence_starts[chosen],
                                   sentence_lengths[chosen])
    pieces.append(piece)
    lengths.append(np.bincount(example[kept][piece_row], minlength=n))
  lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
  flat = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)
  return flat, offsets_of(lengths)[:-1], lengths.astype(np.int64)
