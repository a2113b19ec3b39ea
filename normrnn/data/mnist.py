"""MNIST from the original gzip IDX files (or a prepared tfds directory), and pixel orders.

Sets (Cooijmans et al. 2016, sec. 5.1; `sequential_mnist.py` L55-59):
  mnist     train = first 50,000 of the official training set, valid = its last 10,000,
            test = the official 10,000.
  mnist10k  CPU-scale stand-in, NOT the paper's data: the official 10,000 test images split
            8,000 / 1,000 / 1,000 by `np.random.default_rng(0).permutation(10000)`.

Images are returned as uint8 [N, 28, 28] (values 0..255), labels as int32 [N].
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from normrnn.data.files import DataError, fetch, missing_error, require_host, sha256_of

BASE_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
# SHA-256 of the official files, from tensorflow_datasets' url_checksums/mnist.txt. Enforced on
# downloads. Files already on disk are validated structurally (IDX checks) instead, because
# re-gzipped copies (like ../shared/data/mnist) hold the same bytes under different checksums.
OFFICIAL_SHA256 = {
    'train-images-idx3-ubyte.gz':
        '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609',
    'train-labels-idx1-ubyte.gz':
        '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c',
    't10k-images-idx3-ubyte.gz':
        '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
    't10k-labels-idx1-ubyte.gz':
        'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6',
}
# The re-gzipped copies of the test set in ../shared/data/mnist (see its README). mnist10k accepts
# these or the official files and nothing else, since it is defined on the real test set.
SHARED_SHA256 = {
    't10k-images-idx3-ubyte.gz':
        '167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b',
    't10k-labels-idx1-ubyte.gz':
        'fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c',
}
TRAIN_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz')
TEST_FILES = ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_OFFICIAL_TRAIN = 60_000
N_VALID = 10_000  # The last 10,000 of the official training set.
MNIST10K_SPLIT = (8_000, 1_000, 1_000)

_IDX_MAGIC = {0x00000801: 'labels', 0x00000803: 'images'}  # ubyte data, 1 or 3 dims.
PIXEL_ORDERS = ('scanline', 'permuted', 'with_replacement')


def read_idx(path) -> np.ndarray:
  """Reads one gzip IDX file: uint8 [N] (labels, magic 0x801) or [N, rows, cols] (0x803).

  Raises DataError naming the file for a truncated or corrupt gzip stream, an unknown magic
  number (other dtypes than ubyte included), or dimensions that disagree with the data length.
  """
  path = Path(path)
  fix = f'Delete {path} and copy or download it again.'
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except EOFError as e:
    raise DataError(f'{path} is a truncated gzip file ({e}). {fix}') from e
  except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise DataError(f'{path} is not a valid gzip file ({e}). {fix}') from e
  if len(raw) < 4:
    raise DataError(f'{path} holds {len(raw)} bytes, too few for an IDX header. {fix}')
  magic = int.from_bytes(raw[:4], 'big')
  if magic not in _IDX_MAGIC:
    raise DataError(
        f'{path} has IDX magic number 0x{magic:08x}; expected 0x00000803 (ubyte images) or '
        f'0x00000801 (ubyte labels). Is it an MNIST IDX file? {fix}')
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f'{path}: the IDX header is cut short ({len(raw)} bytes). {fix}')
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  expected = header + int(np.prod(dims))
  if len(raw) != expected:
    raise DataError(
        f'{path}: the IDX header says shape {dims} ({expected} bytes in all) but the file holds '
        f'{len(raw)} bytes. {fix}')
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_pair(directory, images_name: str, labels_name: str):
  """Images uint8 [N, 28, 28] and labels int32 [N] from two IDX files that must agree."""
  images_path, labels_path = Path(directory) / images_name, Path(directory) / labels_name
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
    raise DataError(f'{images_path} holds an array of shape {images.shape}; MNIST images are '
                    f'[N, 28, 28]. Check that the file names are not swapped.')
  if labels.ndim != 1:
    raise DataError(f'{labels_path} holds an array of shape {labels.shape}; MNIST labels are [N]. '
                    'Check that the file names are not swapped.')
  if len(images) != len(labels):
    raise DataError(f'{images_path} holds {len(images)} images but {labels_path} holds '
                    f'{len(labels)} labels; they must come from the same release.')
  if labels.size and labels.max() > 9:
    raise DataError(f'{labels_path} holds label {labels.max()}; MNIST labels are 0..9.')
  return images, labels.astype(np.int32)


def split_official_train(images: np.ndarray, labels: np.ndarray) -> dict:
  """{'train', 'valid'} from the official training set: valid is its last N // 6 examples.

  For the real 60,000-image file this is exactly the paper's 50,000 / 10,000. Smaller files (test
  fixtures, mocked tfds data) keep the same 5 : 1 proportion; `describe()` reports the sizes.
  """
  n_valid = N_VALID if len(images) == N_OFFICIAL_TRAIN else len(images) // 6
  cut = len(images) - n_valid
  return {'train': (images[:cut], labels[:cut]), 'valid': (images[cut:], labels[cut:])}


def load_mnist(directory, *, download: bool) -> dict:
  """The paper's MNIST split from the four official IDX files in `directory`.

  Returns {'train', 'valid', 'test'}: (images uint8 [N, 28, 28], labels int32 [N]). Missing files
  are downloaded (SHA-256-checked) only if `download` is True; otherwise DataError at once.
  """
  directory = Path(directory)
  missing = [n for n in TRAIN_FILES + TEST_FILES if not (directory / n).exists()]
  if missing and not download:
    raise missing_error(missing, directory, BASE_URL, how=f'download from {BASE_URL}<name>')
  for name in missing:
    fetch(BASE_URL + name, directory / name, OFFICIAL_SHA256[name], download=True)
  splits = split_official_train(*read_pair(directory, *TRAIN_FILES))
  splits['test'] = read_pair(directory, *TEST_FILES)
  return splits


def load_mnist10k(directory, *, download: bool) -> dict:
  """mnist10k (NOT the paper's data): the official test set split 8,000 / 1,000 / 1,000.

  Reads only the two t10k files, whose SHA-256 must be the official one or that of the copies in
  ../shared/data/mnist. Returns {'train', 'valid', 'test'}: (uint8 [N, 28, 28], int32 [N]).
  """
  directory = Path(directory)
  missing = [n for n in TEST_FILES if not (directory / n).exists()]
  if missing and not download:
    raise missing_error(missing, directory, BASE_URL, how=f'download from {BASE_URL}<name>')
  for name in missing:
    fetch(BASE_URL + name, directory / name, OFFICIAL_SHA256[name], download=True)
  for name in TEST_FILES:
    got = sha256_of(directory / name)
    if got not in (OFFICIAL_SHA256[name], SHARED_SHA256[name]):
      raise DataError(
          f'{directory / name} has sha256 {got}, which is neither the official MNIST file '
          f'({OFFICIAL_SHA256[name]}) nor the copy in shared/data ({SHARED_SHA256[name]}). '
          'mnist10k is defined on the real MNIST test set: replace the file with a real copy.')
  images, labels = read_pair(directory, *TEST_FILES)
  order = np.random.default_rng(0).permutation(len(images))
  n_train, n_valid, _ = MNIST10K_SPLIT
  parts = np.split(order, [n_train, n_train + n_valid])
  return {split: (images[idx], labels[idx])
          for split, idx in zip(('train', 'valid', 'test'), parts)}


def load_mnist_tfds(data_dir, *, download: bool) -> dict:
  """The paper's MNIST split read through `tfds.data_source` (never `tfds.load`).

  tfds' own offline download retries for ~200 s, so before importing tfds this checks on disk that
  `data_dir/mnist/<version>/dataset_info.json` exists; if not and `download` is False it raises
  DataError at once. Returns the same dict as `load_mnist`.
  """
  data_dir = Path(data_dir)
  prepared = sorted((data_dir / 'mnist').glob('*/dataset_info.json'))
  if not prepared:
    if not download:
      raise DataError(
          f'no prepared tfds "mnist" in {data_dir} (expected {data_dir}/mnist/<version>/'
          'dataset_info.json). Prepare it on a machine with internet access '
          f'(tfds.data_source("mnist", data_dir="{data_dir}")) and copy the folder here, set '
          'data.download=True, or use data.source="files" with the IDX files.')
    require_host('storage.googleapis.com', port=443, timeout_s=20,
                 message='cannot download tfds mnist: {}. Offline? Copy a prepared mnist folder '
                 f'into {data_dir}.')
  try:
    import importlib_resources  # noqa: F401  tfds needs it when TensorFlow is absent.
    import tensorflow_datasets as tfds  # Heavy and optional: imported only for source='tfds'.
  except ImportError as e:
    raise DataError(f'data.source="tfds" needs tensorflow-datasets and importlib_resources ({e});'
                    ' pip install them (see requirements.txt) or use data.source="files".') from e
  splits = {}
  for split in ('train', 'test'):
    try:
      source = tfds.data_source('mnist', split=split, data_dir=str(data_dir), download=download)
      rows = [source[i] for i in range(len(source))]
    except Exception as e:  # tfds raises many types; all mean "this directory is unusable".
      raise DataError(f'tfds could not read mnist split {split!r} from {data_dir}: {e}') from e
    images = np.stack([np.asarray(r['image'], np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
                       for r in rows]) if rows else np.zeros((0, 28, 28), np.uint8)
    labels = np.asarray([int(r['label']) for r in rows], np.int32)
    splits[split] = (images, labels)
  out = split_official_train(*splits['train'])
  out['test'] = splits['test']
  return out


def pixel_order(kind: str, seed: int, n_pixels: int = N_PIXELS) -> np.ndarray:
  """Index array [n_pixels] (int64) saying which pixel is shown at each time step.

  'scanline'          row by row: arange(n_pixels).
  'permuted'          a true permutation: np.random.default_rng(seed).permutation(n_pixels).
  'with_replacement'  the authors' pMNIST index, np.random.RandomState(seed).randint(0, n, n)
                      (`sequential_mnist.py` L329-330): sampled WITH replacement, so for seed 1
                      and 784 pixels only 501 distinct pixels are ever shown.
  """
  if kind == 'scanline':
    return np.arange(n_pixels)
  if kind == 'permuted':
    return np.random.default_rng(seed).permutation(n_pixels)
  if kind == 'with_replacement':
    return np.random.RandomState(seed).randint(0, n_pixels, size=n_pixels).astype(np.int64)
  raise DataError(f'unknown data.pixel_order {kind!r}; valid kinds: {", ".join(PIXEL_ORDERS)}.')
