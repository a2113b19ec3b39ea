"""ptb_cloze: a CPU-scale cloze task built from Penn Treebank text. NOT the paper's data.

The Attentive Reader's real data (the DeepMind CNN corpus, cnn_qa.py) is 380k questions; this
stand-in is small enough to train an Attentive Reader on 2 CPU cores in minutes, and keeps what
makes the CNN task a reading task: anonymized entities re-numbered per example, so the answer
can only be found by reading the document. Construction (deterministic, no randomness):

1. Sentences: ptb.char.valid.txt, Mikolov's character format (characters separated by spaces,
   '_' between words, one sentence per line), read back into words: 3,370 sentences, 70k words.
2. Splits by sentence position, as ptb_char_valid: the first 90% of the sentences for training,
   the next 5% for validation, the rest for test (3,033 / 168 / 169 sentences).
3. Entities: the ENTITY_WORDS most frequent words of the training split that are alphabetic,
   at least 3 letters long, not '<unk>' and not FUNCTION_WORDS (ties alphabetical): 'said',
   'million', 'market', 'says', 'stock', 'year', 'company', ... Every occurrence of the k-th
   becomes @entityk, in every split.
4. Documents: consecutive windows of SENTENCES_PER_DOCUMENT sentences within a split (a split's
   last window may be shorter), every sentence ended by a '.' token (PTB has no punctuation;
   the token marks sentence boundaries for the model and for data.relevant_sentences).
5. Examples: one per entity occurrence in a document: the query is that occurrence's sentence
   with the occurrence replaced by @placeholder, the answer is the entity. The sentence stays in
   the document, so the answer always occurs there: the reader has to find the sentence the
   query restates and read the entity off it (a simplified form of the CNN queries, which
   restate a sentence of the article in other words).
6. The task (qa.py) re-numbers each example's entities by a random permutation, so a model that
   ignores the document can only guess among the candidates: `describe()` reports that chance
   accuracy per split, and the accuracy of a guess among the candidates that are not in the
   query (a model that reads the query alone can rule those out).

Result: 3,009 / 283 / 179 questions (train / valid / test), 20 entities, documents of at most
104 tokens (mean 49), queries of at most 60, about 3.3 candidates per question (chance 0.34 on
validation, 0.41 for the document's most frequent candidate, 0.60 for the query-only guess).
Why so small: the Attentive Reader learns this task only slowly as the entity count and the
document length grow. A 64-unit LSTM reader (batch 32, Adam 3e-3) on 2 CPU cores stayed at
chance for 600 steps with 100 entities and 4-sentence documents; with 20 entities and 2-sentence
documents it reached 0.51 validation accuracy at 500 steps and 0.68 at 2,000 (about 9 minutes),
past the query-only guess.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from normrnn.data import text
from normrnn.data.files import DataError, sha256_of
from normrnn.data.qa_corpus import PLACEHOLDER, SPLITS, CorpusBuilder, QACorpus

ENTITY_WORDS = 20
SENTENCES_PER_DOCUMENT = 2
SENTENCE_END = '.'
MIN_ENTITY_LETTERS = 3
# English function words (and adverbs/quantifiers that behave like them), never entities.
FUNCTION_WORDS = frozenset('''
a about above after again against ago all almost also although always among an and another any
are around as at back be because been before being below between both but by can could did do
does doing done down during each either else even ever every few for from further had has have
having he her here hers him his how however i if in including into is it its itself just last
least less like many may me might more most much must my neither never new no nor not now of off
often on once one only or other others our out over own per perhaps quite rather same several
she should since so some still such than that the their them then there these they this those
though three through thus to too two under until up upon us very was we well were what when
where whether which while who whom whose why will with within without would yet you your
'''.split())


def read_sentences(path) -> list:
  """The sentences of a file in Mikolov's character format, each a list of words."""
  sentences = []
  for line in Path(path).read_text().splitlines():
    words = [w for w in ''.join(line.split()).split('_') if w]
    if words:
      sentences.append(words)
  return sentences


def split_sentences(sentences: list) -> dict:
  """{'train', 'valid', 'test'}: the first 90%, the next 5% and the rest of the sentences."""
  n = len(sentences)
  n_train, n_valid = n * 9 // 10, n // 20
  return {'train': sentences[:n_train], 'valid': sentences[n_train:n_train + n_valid],
          'test': sentences[n_train + n_valid:]}


def entity_words(sentences: list, count: int = ENTITY_WORDS) -> tuple:
  """The `count` most frequent qualifying words of `sentences` (module docstring, step 3)."""
  counts = Counter(w for s in sentences for w in s)
  eligible = [w for w in counts if w.isalpha() and len(w) >= MIN_ENTITY_LETTERS
              and w not in FUNCTION_WORDS]
  return tuple(sorted(eligible, key=lambda w: (-counts[w], w))[:count])


def build_cloze(sentences: list, *, num_entities: int = ENTITY_WORDS,
                sentences_per_document: int = SENTENCES_PER_DOCUMENT):
  """The cloze corpus of `sentences` (lists of words) and the entity words (index = entity)."""
  by_split = split_sentences(sentences)
  entities = entity_words(by_split['train'], num_entities)
  if not entities:
    raise DataError('ptb_cloze: the training sentences have no word that can be an entity '
                    f'(alphabetic, >= {MIN_ENTITY_LETTERS} letters, not a function word).')
  entity_of = {w: f'@entity{k}' for k, w in enumerate(entities)}
  builder = CorpusBuilder()
  for split in SPLITS:
    chunk = by_split[split]
    for begin in range(0, len(chunk), sentences_per_document):
      window = [[entity_of.get(w, w) for w in s] + [SENTENCE_END]
                for s in chunk[begin:begin + sentences_per_document]]
      document = [w for s in window for w in s]
      for sentence in window:
        for position, word in enumerate(sentence):
          if word.startswith('@entity'):
            query = sentence[:position] + [PLACEHOLDER] + sentence[position + 1:]
            builder.add_example(split, document, query, int(word[len('@entity'):]),
                                document_key=(split, begin))
  return builder.build(num_entities=len(entities)), entities


def load_ptb_cloze(directory, *, download: bool) -> tuple[QACorpus, dict]:
  """ptb_cloze from ptb.char.valid.txt in `directory` (the same file as ptb_char_valid: its
  SHA-256 must be text.PTB_VALID_SHA256). Returns (corpus, facts for describe())."""
  (path,) = text.ptb_paths(directory, ('valid',), download=download)
  got = sha256_of(path)
  if got != text.PTB_VALID_SHA256:
    raise DataError(f'{path} has sha256 {got}, expected {text.PTB_VALID_SHA256} (Mikolov\'s '
                    'ptb.char.valid.txt). ptb_cloze is defined on that exact file: replace it '
                    'with a real copy.')
  corpus, entities = build_cloze(read_sentences(path))
  return corpus, {'entity_words': list(entities),
                  'sentences_per_document': SENTENCES_PER_DOCUMENT}
