"""cnn_qa: the DeepMind Q&A CNN corpus (Hermann et al. 2015), the data of Cooijmans et al. 2016,
sec. 5.4 (the Attentive Reader, Table 4, Fig. 3).

Format: one `.question` file per example, five blocks separated by blank lines (DeepMind's
rc-data `generate_questions.py`):

  URL
  the document: one line of lowercased tokens, entities anonymized as @entityN
  the query: one line, the answer replaced by @placeholder
  the answer: @entityN
  the entity mapping: lines `@entityN:Real Name` (not used: the task stays anonymized)

Layout: <dir>/questions/{training,validation,test}/*.question, where <dir> is the unpacked
`cnn/` folder of cnn.tgz; <dir> may also be the `questions/` folder itself. 380,298 / 3,924 /
3,198 questions on 90,266 / 1,220 / 1,093 articles; documents have at most 2,000 tokens.

Cache: reading 387k small files takes minutes, so the tokenized corpus (`qa_corpus.QACorpus`:
unique documents stored once, vocabulary ranked by training frequency) is written once to
<questions dir>/normrnn_tokens.npz and read from there afterwards (seconds). The cache records
a fingerprint of the file names and sizes and the format version; any change rebuilds it. An
unwritable directory only costs the cache (a warning), not the run.

Download (data.download=True): cnn.tgz (the "Questions" archive of the CNN corpus linked from
https://cs.nyu.edu/~kcho/DMQA/, a Google Drive file) into <dir>, checked against the SHA-256
that ParlAI publishes for it (parlai/tasks/qacnn/build.py), then its questions/ folder is
extracted into <dir>. A cnn.tgz already in <dir> is extracted without downloading.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from normrnn.data.files import DataError, fetch, missing_error, sha256_of
from normrnn.data.qa_corpus import ENTITY, SPLITS, CorpusBuilder, QACorpus

SPLIT_DIRS = {'train': 'training', 'valid': 'validation', 'test': 'test'}
QUESTIONS = 'questions'
SUFFIX = '.question'
ARCHIVE = 'cnn.tgz'
PAGE_URL = 'https://cs.nyu.edu/~kcho/DMQA/'
# The DMQA page's "CNN Questions" link; confirm=t skips Google Drive's "cannot scan large files
# for viruses" page (as ParlAI's downloader does).
ARCHIVE_URL = ('https://drive.google.com/uc?export=download&id=0BwmD_VLjROrfTTljRDVZMFJnVWM'
               '&confirm=t')
ARCHIVE_SHA256 = '9405beb90c9267e7769c86fa42720b7e479bcf38c64217c0d3f456ce8cd122ce'  # ParlAI
CACHE = 'normrnn_tokens.npz'
CACHE_VERSION = 1
HOW = (f'the DeepMind Q&A CNN "Questions" archive {ARCHIVE} from {PAGE_URL}, unpacked: '
       f'{ARCHIVE} holds cnn/{QUESTIONS}/{{training,validation,test}}/*{SUFFIX}; putting '
       f'{ARCHIVE} itself in the directory also works')


def questions_dir(directory) -> Path | None:
  """<dir>/questions if it has the three split folders, else <dir> if it has them, else None."""
  directory = Path(directory)
  for candidate in (directory / QUESTIONS, directory):
    if all((candidate / d).is_dir() for d in SPLIT_DIRS.values()):
      return candidate
  return None


def parse_question(path) -> tuple:
  """(document tokens, query tokens, answer entity index) of one .question file."""
  path = Path(path)
  try:
    blocks = path.read_text(encoding='utf-8').strip('\n').split('\n\n')
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'cannot read {path} ({e}).') from e
  if len(blocks) < 4:
    raise DataError(f'{path} has {len(blocks)} blank-line separated blocks, expected 5 (URL, '
                    'document, query, answer, entity mapping): is it a DeepMind Q&A .question '
                    'file?')
  document, query, answer = blocks[1].split(), blocks[2].split(), blocks[3].strip()
  match = ENTITY.match(answer)
  if match is None:
    raise DataError(f'{path}: the answer block is {answer[:80]!r}, expected an entity '
                    '(@entityN).')
  if not document or '@placeholder' not in query:
    what = 'the document is empty' if not document else 'the query has no @placeholder'
    raise DataError(f'{path}: {what}; is it a DeepMind Q&A .question file?')
  return document, query, int(match.group(1))


def _list_files(root: Path) -> dict:
  """{split: sorted [(name, bytes)]} of the .question files of each split folder."""
  out = {}
  for split, folder in SPLIT_DIRS.items():
    with os.scandir(root / folder) as entries:
      out[split] = sorted((e.name, e.stat().st_size) for e in entries
                          if e.name.endswith(SUFFIX) and e.is_file())
    if not out[split]:
      raise DataError(f'{root / folder} has no *{SUFFIX} files. Put the CNN corpus there '
                      f'({HOW}).')
  return out


def _fingerprint(files: dict) -> str:
  h = hashlib.sha256(f'cnn_qa cache v{CACHE_VERSION}\n'.encode())
  for split in SPLITS:
    for name, size in files[split]:
      h.update(f'{split}/{name} {size}\n'.encode())
  return h.hexdigest()


def read_corpus(root: Path, files: dict) -> QACorpus:
  """Reads every .question file (slow: minutes for the real corpus) into a QACorpus."""
  builder = CorpusBuilder()
  for split in SPLITS:
    folder = root / SPLIT_DIRS[split]
    for name, _ in files[split]:
      document, query, answer = parse_question(folder / name)
      # Questions on the same article share the document: keyed by a digest, stored once.
      key = hashlib.blake2b(' '.join(document).encode('utf-8'), digest_size=16).digest()
      builder.add_example(split, document, query, answer, document_key=key)
  return builder.build()


def _load_cache(path: Path, fingerprint: str) -> QACorpus | None:
  try:
    with np.load(path, allow_pickle=False) as arrays:
      if str(arrays['fingerprint']) != fingerprint:
        return None
      return QACorpus.from_arrays(arrays)
  except (OSError, KeyError, ValueError, zlib.error, EOFError):
    return None  # absent, stale or damaged: rebuilt


def _save_cache(path: Path, corpus: QACorpus, fingerprint: str) -> bool:
  try:
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.part', dir=path.parent)
  except OSError as e:
    print(f'cnn_qa: cannot write the token cache {path} ({e}); the .question files will be '
          'read again next time.', file=sys.stderr)
    return False
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, fingerprint=np.array(fingerprint), **corpus.arrays())
    os.replace(tmp, path)
    return True
  except OSError as e:
    print(f'cnn_qa: cannot write the token cache {path} ({e}).', file=sys.stderr)
    return False
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def extract_questions(archive: Path, directory: Path) -> Path:
  """Unpacks the questions/{training,validation,test}/*.question members of cnn.tgz into
  <directory>/questions (built in a temporary folder and renamed, so an interrupted extraction
  leaves nothing half-done). Only those members are written, under their own base names."""
  target = directory / QUESTIONS
  partial = Path(tempfile.mkdtemp(prefix='.questions.', dir=directory))
  counts = dict.fromkeys(SPLIT_DIRS.values(), 0)
  fix = f'Delete {archive} and download it again ({PAGE_URL}).'
  try:
    for folder in counts:
      (partial / folder).mkdir()
    with tarfile.open(archive, 'r:gz') as tar:
      for member in tar:
        parts = Path(member.name).parts
        if (member.isfile() and len(parts) >= 3 and parts[-3] == QUESTIONS
            and parts[-2] in counts and parts[-1].endswith(SUFFIX)):
          with tar.extractfile(member) as src, open(partial / parts[-2] / parts[-1], 'wb') as dst:
            shutil.copyfileobj(src, dst)
          counts[parts[-2]] += 1
    empty = [f for f, n in counts.items() if n == 0]
    if empty:
      raise DataError(f'{archive} has no {QUESTIONS}/{{{",".join(empty)}}}/*{SUFFIX} files; is '
                      f'it the CNN questions archive {ARCHIVE}? {fix}')
    os.replace(partial, target)
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise DataError(f'{archive} is not a readable .tgz archive ({e}). {fix}') from e
  finally:
    if partial.exists():
      shutil.rmtree(partial)
  return target


def load_cnn_qa(directory, *, download: bool) -> tuple[QACorpus, dict]:
  """The CNN corpus in `directory` (module docstring): (corpus, facts for describe())."""
  directory = Path(directory)
  root = questions_dir(directory)
  archive = directory / ARCHIVE
  if root is None:
    if not archive.exists() and not download:
      raise missing_error([f'{QUESTIONS}/{d}/*{SUFFIX}' for d in SPLIT_DIRS.values()],
                          directory, PAGE_URL, how=HOW)
    fetch(ARCHIVE_URL, archive, ARCHIVE_SHA256, download=download)
    got = sha256_of(archive)  # A copy put there by hand is checked too.
    if got != ARCHIVE_SHA256:
      raise DataError(f'{archive} has sha256 {got}, expected {ARCHIVE_SHA256} (the published '
                      f'checksum of the CNN questions archive). Delete it and download it again, '
                      f'or unpack your copy so that {directory / QUESTIONS}/training etc. exist.')
    root = extract_questions(archive, directory)
  files = _list_files(root)
  fingerprint = _fingerprint(files)
  cache = root / CACHE
  corpus = _load_cache(cache, fingerprint)
  cached = corpus is not None
  if corpus is None:
    corpus = read_corpus(root, files)
    cached = _save_cache(cache, corpus, fingerprint)
  return corpus, {
      'questions_dir': str(root),
      'question_files': {s: len(files[s]) for s in SPLITS},
      'question_bytes': sum(size for s in SPLITS for _, size in files[s]),
      'files_fingerprint': fingerprint,
      'cache': str(cache) if cached else None}
