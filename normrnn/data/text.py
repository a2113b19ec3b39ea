"""Character-level text: Penn Treebank (Mikolov's format) and text8, as symbol-id arrays.

Sets (Cooijmans et al. 2016, secs. 5.2-5.3):
  ptb_char        Mikolov's ptb.char.{train,valid,test}.txt; a fixed 50-symbol vocabulary.
  ptb_char_valid  CPU-scale stand-in, NOT the paper's data: ptb.char.valid.txt alone, split
                  90% / 5% / 5% by position.
  text8           the `text8` member of text8.zip (10^8 characters, a-z and space), split
                  first 90% / next 5% / last 5% by position (90M / 5M / 5M).

Loaders return {'train', 'valid', 'test'}: uint8 [N] symbol ids (uint8 keeps text8's 10^8
symbols at 100 MB; the tasks hand out int32).

Checksums of the downloads (searched for in public code, none invented):
  simple-examples.tgz  no published SHA-256, SHA-1 or MD5 was found. Only its size, 34,869,662
                       bytes, is published (TensorFlow tutorial notebooks and Kaldi-style
                       download_and_untar.sh scripts check it). So the download is checked by size
                       only, and its SHA-256 is computed and recorded in `describe()`. NOT verified.
  text8.zip            SHA-1 6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e (dmlc/gluon-nlp,
                       src/gluonnlp/data/corpora/large_text_compression_benchmark.py) and size
                       31,344,016 bytes (TensorFlow's word2vec tutorial). No SHA-256 of the zip
                       was found, so the download is checked by SHA-1 and size.
"""
from __future__ import annotations

import os
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from normrnn.data.files import DataError, fetch, missing_error, sha256_of

SPLITS = ('train', 'valid', 'test')

# --- Penn Treebank, characters ---------------------------------------------------------------
PTB_FILES = {split: f'ptb.char.{split}.txt' for split in SPLITS}
PTB_ARCHIVE = 'simple-examples.tgz'
PTB_URL = 'http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz'
PTB_ARCHIVE_BYTES = 34_869_662  # Published size; no published checksum exists (module docstring).
PTB_VALID_SHA256 = '21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8'
PTB_EOS = '\n'
# The 49 characters of Mikolov's character-level PTB (all three splits use the same set), then
# the end-of-sentence symbol that each line end becomes: 50 symbols, as in the paper's code.
PTB_VOCAB = ("#", "$", "&", "'", "*", "-", ".", "/", "0", "1", "2", "3", "4", "5", "6", "7",
             "8", "9", "<", ">", "N", "\\", "_", "a", "b", "c", "d", "e", "f", "g", "h", "i",
             "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y",
             "z", PTB_EOS)

# --- text8 -----------------------------------------------------------------------------------
TEXT8_ARCHIVE = 'text8.zip'
TEXT8_MEMBER = 'text8'
TEXT8_URL = 'http://mattmahoney.net/dc/text8.zip'
TEXT8_ZIP_SHA1 = '6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e'  # dmlc/gluon-nlp (docstring).
TEXT8_ZIP_BYTES = 31_344_016
TEXT8_VOCAB = (' ',) + tuple('abcdefghijklmnopqrstuvwxyz')


def _lookup_table(vocab) -> np.ndarray:
  """uint8 [256]: byte -> symbol id, 255 for bytes outside the vocabulary."""
  table = np.full(256, 255, np.uint8)
  for i, symbol in enumerate(vocab):
    table[ord(symbol)] = i
  return table


_PTB_TABLE = _lookup_table(PTB_VOCAB[:-1])
_TEXT8_TABLE = _lookup_table(TEXT8_VOCAB)


def encode_ptb(path) -> np.ndarray:
  """Symbol ids uint8 [N] of one file in Mikolov's character format.

  Format: symbols are single characters separated by single spaces, `_` marks a word boundary,
  one sentence per line. Every non-empty line ends with the end-of-sentence symbol (id 49).
  Raises DataError naming the file, line and symbol for a symbol outside PTB_VOCAB, and for an
  empty file.
  """
  path = Path(path)
  raw = path.read_bytes()
  b = np.frombuffer(raw, np.uint8)
  is_newline = b == ord('\n')
  is_symbol = ~(is_newline | (b == ord(' ')))
  if not is_symbol.any():
    raise DataError(f'{path} is empty (no symbols). Copy the file again from {PTB_ARCHIVE} '
                    f'({PTB_URL}).')
  ids = _PTB_TABLE[b]
  glued = np.flatnonzero(is_symbol[:-1] & is_symbol[1:])  # Two symbols without a space between.
  unknown = np.flatnonzero(is_symbol & (ids == 255))
  problems = [p[0] for p in (glued, unknown) if p.size]
  if problems:
    pos = int(min(problems))
    start = max(raw.rfind(b' ', 0, pos), raw.rfind(b'\n', 0, pos)) + 1
    ends = [e for e in (raw.find(b' ', pos), raw.find(b'\n', pos)) if e >= 0]
    symbol = raw[start:min(ends) if ends else len(raw)].decode('utf-8', errors='replace')
    line = raw.count(b'\n', 0, pos) + 1
    raise DataError(
        f'{path}, line {line}: symbol {symbol!r} is not in the 50-symbol PTB vocabulary (single '
        'characters separated by spaces). Is this a Mikolov ptb.char.*.txt file?')
  line_of = np.cumsum(is_newline) - is_newline  # Line index of every byte (newline included).
  nonempty = np.zeros(int(line_of[-1]) + 1, bool)
  nonempty[line_of[is_symbol]] = True
  keep = is_symbol | (is_newline & nonempty[line_of])
  tokens = np.where(is_newline, np.uint8(len(PTB_VOCAB) - 1), ids)[keep]
  last_symbol = np.flatnonzero(is_symbol)[-1]
  if not is_newline[last_symbol:].any():  # Last sentence without a final newline.
    tokens = np.append(tokens, np.uint8(len(PTB_VOCAB) - 1))
  return tokens


def split_by_position(tokens: np.ndarray) -> dict:
  """{'train', 'valid', 'test'}: the first 90%, the next 5% and the rest of `tokens`."""
  n = len(tokens)
  n_train, n_valid = n * 9 // 10, n // 20
  return {'train': tokens[:n_train], 'valid': tokens[n_train:n_train + n_valid],
          'test': tokens[n_train + n_valid:]}


def ptb_paths(directory, splits, *, download: bool) -> list[Path]:
  """Paths of the PTB files for `splits`, extracting them from simple-examples.tgz if needed.

  The archive is used if it is already in `directory`; it is downloaded (size-checked only, see
  the module docstring) only if `download` is True. Otherwise a missing file is a DataError.
  """
  directory = Path(directory)
  names = [PTB_FILES[s] for s in splits]
  missing = [n for n in names if not (directory / n).exists()]
  if missing:
    archive = directory / PTB_ARCHIVE
    if not archive.exists() and not download:
      raise missing_error(missing, directory, PTB_URL,
                          how=f'they are data/ptb.char.*.txt inside {PTB_URL}; putting '
                          f'{PTB_ARCHIVE} itself in {directory} also works')
    fetch(PTB_URL, archive, None, size=PTB_ARCHIVE_BYTES, download=download)
    _extract_ptb(archive, directory, missing)
  return [directory / n for n in names]


def _extract_ptb(archive: Path, directory: Path, names) -> None:
  """Copies data/<name> out of Mikolov's archive into `directory` (atomically, one by one)."""
  try:
    with tarfile.open(archive, 'r:gz') as tar:
      members = {Path(m.name).name: m for m in tar.getmembers()
                 if m.isfile() and Path(m.name).parent.name == 'data'}
      for name in names:
        if name not in members:
          raise DataError(f'{archive} has no data/{name}; is it Mikolov\'s {PTB_ARCHIVE}? '
                          f'Delete it and download it again from {PTB_URL}.')
        _write_atomically(directory / name, tar.extractfile(members[name]).read())
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise DataError(f'{archive} is not a readable .tgz archive ({e}). Delete it and download it '
                    f'again from {PTB_URL}.') from e


def _write_atomically(dest: Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f'.{dest.name}.', suffix='.part', dir=dest.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def load_ptb_char(directory, *, download: bool) -> dict:
  """Mikolov's three character-level PTB splits: {'train', 'valid', 'test'}: uint8 [N]."""
  paths = ptb_paths(directory, SPLITS, download=download)
  return {split: encode_ptb(path) for split, path in zip(SPLITS, paths)}


def load_ptb_char_valid(directory, *, download: bool) -> dict:
  """ptb_char_valid (NOT the paper's data): ptb.char.valid.txt split 90 / 5 / 5 by position.

  The file's SHA-256 must be PTB_VALID_SHA256 (the copy in ../shared/data/ptb_char).
  """
  (path,) = ptb_paths(directory, ('valid',), download=download)
  got = sha256_of(path)
  if got != PTB_VALID_SHA256:
    raise DataError(f'{path} has sha256 {got}, expected {PTB_VALID_SHA256} (Mikolov\'s '
                    'ptb.char.valid.txt). ptb_char_valid is defined on that exact file: replace '
                    'it with a real copy.')
  return split_by_position(encode_ptb(path))


def read_text8(path) -> np.ndarray:
  """Symbol ids uint8 [N] of the `text8` member of a text8.zip (' ' = 0, a..z = 1..26).

  Raises DataError naming the file for a corrupt or truncated zip, a missing member, and any
  character outside a-z and space.
  """
  path = Path(path)
  fix = f'Delete {path} and download it again from {TEXT8_URL}.'
  try:
    with zipfile.ZipFile(path) as zf:
      if TEXT8_MEMBER not in zf.namelist():
        raise DataError(f'{path} has no member {TEXT8_MEMBER!r} (it holds {zf.namelist()}). {fix}')
      raw = zf.read(TEXT8_MEMBER)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
    raise DataError(f'{path} is not a readable zip file ({e}). {fix}') from e
  if not raw:
    raise DataError(f'{path}: member {TEXT8_MEMBER!r} is empty. {fix}')
  ids = _TEXT8_TABLE[np.frombuffer(raw, np.uint8)]
  bad = np.flatnonzero(ids == 255)
  if bad.size:
    pos = int(bad[0])
    raise DataError(f'{path}: member {TEXT8_MEMBER!r} has byte {raw[pos:pos + 1]!r} at position '
                    f'{pos}; text8 holds only a-z and space. {fix}')
  return ids


def load_text8(directory, *, download: bool) -> dict:
  """text8 split 90% / 5% / 5% by position: {'train', 'valid', 'test'}: uint8 [N]."""
  path = fetch(TEXT8_URL, Path(directory) / TEXT8_ARCHIVE, None, sha1=TEXT8_ZIP_SHA1,
               size=TEXT8_ZIP_BYTES, download=download)
  return split_by_position(read_text8(path))
