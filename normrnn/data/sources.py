"""One loader per task name: the data arrays plus the provenance `describe()` reports.

Each entry returns (splits, info): splits as the loaders return them (see mnist.py, text.py,
digits.py; a `qa_corpus.QACorpus` for the QA_TASKS), info a JSON-serializable dict with 'label'
(what the set is, and whether it is the paper's data), 'source' and 'files' (path, bytes and
sha256 of every file read).
"""
from __future__ import annotations

from pathlib import Path

from normrnn.data import cloze, cnn_qa, digits, mnist, text
from normrnn.data.files import provenance

_MNIST_SPLIT_NOTE = ('train = first 50,000 of the official training set, valid = its last 10,000,'
                     ' test = the official 10,000 (Cooijmans et al. 2016, sec. 5.1)')


def _mnist_label(splits: dict) -> str:
  n_official = len(splits['train'][1]) + len(splits['valid'][1])
  if n_official == mnist.N_OFFICIAL_TRAIN:
    return f"MNIST, the paper's split: {_MNIST_SPLIT_NOTE}"
  return (f'MNIST-format data whose training file holds {n_official} images, not the official '
          f'60,000: valid = its last {len(splits["valid"][1])} (same 5:1 proportion). NOT the '
          "paper's data")


def load_digits(cfg) -> tuple[dict, dict]:
  splits = digits.load_digits()
  return splits, {
      'label': 'digits: scikit-learn 8x8 digits (1,797 images) split 1437/180/180 by '
               'default_rng(0).permutation, NOT MNIST and NOT the paper\'s data',
      'source': f'sklearn.datasets.load_digits (scikit-learn {digits.sklearn_version()})',
      'files': []}


def load_mnist(cfg) -> tuple[dict, dict]:
  if cfg.source == 'tfds':
    splits = mnist.load_mnist_tfds(cfg.dir, download=cfg.download)
    info_files = sorted(Path(cfg.dir).glob('mnist/*/dataset_info.json'))
    return splits, {'label': _mnist_label(splits),
                    'source': f'tfds.data_source("mnist", data_dir="{cfg.dir}")',
                    'files': provenance(info_files)}
  splits = mnist.load_mnist(cfg.dir, download=cfg.download)
  names = mnist.TRAIN_FILES + mnist.TEST_FILES
  return splits, {'label': _mnist_label(splits), 'source': f'IDX files in {cfg.dir}',
                  'files': provenance(Path(cfg.dir) / n for n in names)}


def load_mnist10k(cfg) -> tuple[dict, dict]:
  splits = mnist.load_mnist10k(cfg.dir, download=cfg.download)
  return splits, {
      'label': "mnist10k: official MNIST test set split 8000/1000/1000 by "
               "default_rng(0).permutation(10000), NOT the paper's data",
      'source': f'IDX files in {cfg.dir}',
      'files': provenance(Path(cfg.dir) / n for n in mnist.TEST_FILES)}


def load_ptb_char(cfg) -> tuple[dict, dict]:
  splits = text.load_ptb_char(cfg.dir, download=cfg.download)
  paths = [Path(cfg.dir) / text.PTB_FILES[s] for s in text.SPLITS]
  archive = Path(cfg.dir) / text.PTB_ARCHIVE
  return splits, {
      'label': "Penn Treebank characters, Mikolov's train/valid/test split (the paper's data); "
               'every line end is an end-of-sentence symbol',
      'source': f"Mikolov's ptb.char.*.txt in {cfg.dir}",
      'files': provenance(paths + ([archive] if archive.exists() else [])),
      'checksum_note': f'no published checksum of {text.PTB_ARCHIVE} was found; the sha256 '
                       'values here are recorded, not verified'}


def load_ptb_char_valid(cfg) -> tuple[dict, dict]:
  splits = text.load_ptb_char_valid(cfg.dir, download=cfg.download)
  return splits, {
      'label': 'ptb_char_valid: PTB character validation split alone, split 90/5/5 by '
               "position, NOT the paper's data",
      'source': f'ptb.char.valid.txt in {cfg.dir}',
      'files': provenance([Path(cfg.dir) / text.PTB_FILES['valid']])}


def load_text8(cfg) -> tuple[dict, dict]:
  splits = text.load_text8(cfg.dir, download=cfg.download)
  return splits, {
      'label': "text8 split first 90% / next 5% / last 5% by position (90M/5M/5M for the real "
               "file; the paper's split)",
      'source': f'member text8 of {Path(cfg.dir) / text.TEXT8_ARCHIVE}',
      'files': provenance([Path(cfg.dir) / text.TEXT8_ARCHIVE])}


def load_cnn_qa(cfg) -> tuple:
  corpus, facts = cnn_qa.load_cnn_qa(cfg.dir, download=cfg.download)
  archive = Path(cfg.dir) / cnn_qa.ARCHIVE
  return corpus, {
      'label': "the DeepMind Q&A CNN corpus (Hermann et al. 2015), its training / validation / "
               "test questions (the paper's data)",
      'source': f'.question files in {facts["questions_dir"]}',
      'files': provenance([archive]) if archive.exists() else [], **facts}


def load_ptb_cloze(cfg) -> tuple:
  corpus, facts = cloze.load_ptb_cloze(cfg.dir, download=cfg.download)
  return corpus, {
      'label': 'ptb_cloze: cloze questions built from the PTB character validation file '
               '(20 frequent words anonymized as entities, 2-sentence documents, a document '
               'sentence with one entity removed as the query; normrnn/data/cloze.py), split '
               "90/5/5 by sentence position, NOT the paper's data",
      'source': f'ptb.char.valid.txt in {cfg.dir}',
      'files': provenance([Path(cfg.dir) / text.PTB_FILES['valid']]), **facts}


LOADERS = {
    'digits': load_digits,
    'mnist': load_mnist,
    'mnist10k': load_mnist10k,
    'ptb_char': load_ptb_char,
    'ptb_char_valid': load_ptb_char_valid,
    'text8': load_text8,
    'cnn_qa': load_cnn_qa,
    'ptb_cloze': load_ptb_cloze,
}
IMAGE_TASKS = {'digits': (digits.N_PIXELS, 1.0 / digits.MAX_VALUE),
               'mnist': (mnist.N_PIXELS, 1.0 / 255), 'mnist10k': (mnist.N_PIXELS, 1.0 / 255)}
# Question answering (kind 'qa'): the loaders return (QACorpus, info) instead of arrays.
QA_TASKS = ('cnn_qa', 'ptb_cloze')
TEXT_VOCABS = {'ptb_char': text.PTB_VOCAB, 'ptb_char_valid': text.PTB_VOCAB,
               'text8': text.TEXT8_VOCAB}
