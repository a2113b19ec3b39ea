"""The embedded default task: scikit-learn's bundled 8x8 digits as 64-step pixel sequences.

1,797 images with values 0..16 (scaled to [0, 1] by the tasks), split 1,437 / 180 / 180
(train / valid / test) by `np.random.default_rng(0).permutation(1797)`. Ships with
scikit-learn, so it needs no download and no data directory. NOT MNIST: a smoke-scale task.
"""
from __future__ import annotations

import numpy as np

SIDE = 8
N_PIXELS = SIDE * SIDE
MAX_VALUE = 16  # Pixel values are integers 0..16.
SPLIT = (1_437, 180, 180)


def load_digits() -> dict:
  """{'train', 'valid', 'test'}: (images uint8 [N, 8, 8] with values 0..16, labels int32 [N])."""
  from sklearn.datasets import load_digits as sklearn_digits  # Slow import; only when used.
  bunch = sklearn_digits()
  images = bunch.images.astype(np.uint8)
  labels = bunch.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(images))
  n_train, n_valid, _ = SPLIT
  parts = np.split(order, [n_train, n_train + n_valid])
  return {split: (images[idx], labels[idx])
          for split, idx in zip(('train', 'valid', 'test'), parts)}


def sklearn_version() -> str:
  import sklearn
  return sklearn.__version__
