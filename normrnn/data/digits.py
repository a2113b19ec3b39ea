"""The embedded default task: scikit-learn's bundled 8x8 digits as 64-step pixel sequences.

1,797 images with values 0..16 (scaled to [0, 1] by the tasks), split 1,437 / 180 / 180
(train / valid / test) by `np.random.default_rng(0).permutation(1797)`. Ships with
scikit-learn, so it needs no download and no data directory. NOT MNIST: a smoke-scale task.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

SIDE = 8
N_PIXELS = SIDE * SIDE
MAX_VALUE = 16  # Pixel values are integers 0..16.
SPLIT = (1_437, 180, 180)


def csv_path() -> Path:
  """scikit-learn's bundled sklearn/datasets/data/digits.csv.gz, found without importing sklearn
  (its import costs seconds in every training process; `find_spec` of a top-level package only
  locates it)."""
  spec = importlib.util.find_spec('sklearn')
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError('the digits task reads the 8x8 digits that ship with scikit-learn: '
                              'pip install scikit-learn')
  return Path(next(iter(spec.submodule_search_locations)), 'datasets', 'data', 'digits.csv.gz')


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 (images uint8 [N, 8, 8], labels int32 [N]) in the file's order: the values of
  `sklearn.datasets.load_digits()`'s `images` and `target` (it reads the same file with
  `np.loadtxt(..., delimiter=',')`: 64 pixel columns, then the label)."""
  with gzip.open(csv_path(), mode='rt', encoding='utf-8') as f:
    data = np.loadtxt(f, delimiter=',')
  return (data[:, :-1].reshape(-1, SIDE, SIDE).astype(np.uint8),
          data[:, -1].astype(np.int32))


def load_digits() -> dict:
  """{'train', 'valid', 'test'}: (images uint8 [N, 8, 8] with values 0..16, labels int32 [N])."""
  images, labels = load_arrays()
  order = np.random.default_rng(0).permutation(len(images))
  n_train, n_valid, _ = SPLIT
  parts = np.split(order, [n_train, n_train + n_valid])
  return {split: (images[idx], labels[idx])
          for split, idx in zip(('train', 'valid', 'test'), parts)}


def sklearn_version() -> str:
  return importlib.metadata.version('scikit-learn')  # without importing sklearn
