"""Tests for normrnn.data: loaders on small fixtures written in the real formats, the real shared
data where present, deterministic batching, and a DataError for every bad-data case."""
from __future__ import annotations

import gzip
import hashlib
import json
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from normrnn.data import TASK_NAMES, DataError, make_task
from normrnn.data import files, mnist, text
from tests import helpers
from tests.helpers import data_cfg

SHARED = helpers.SHARED_DATA
N_TRAIN_FIXTURE, N_TEST_FIXTURE = 60, 20


# --- fixture writers (real formats) -----------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
  """A gzip IDX file: big-endian magic (0x801 / 0x803), dims, then uint8 data."""
  array = np.asarray(array, np.uint8)
  magic = (0x800 + array.ndim) if magic is None else magic
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  path.write_bytes(gzip.compress(header + array.tobytes()))
  return path


def fixture_images(n: int, first_index: int = 0) -> np.ndarray:
  """uint8 [n, 28, 28] whose pixel (0, 0) holds the image's index, so batches reveal order."""
  images = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
  images[:, 0, 0] = np.arange(first_index, first_index + n)
  return images


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
  d = tmp_path / 'mnist'
  d.mkdir()
  write_idx(d / 'train-images-idx3-ubyte.gz', fixture_images(N_TRAIN_FIXTURE))
  write_idx(d / 'train-labels-idx1-ubyte.gz', np.arange(N_TRAIN_FIXTURE) % 10)
  write_idx(d / 't10k-images-idx3-ubyte.gz', fixture_images(N_TEST_FIXTURE, 100))
  write_idx(d / 't10k-labels-idx1-ubyte.gz', np.arange(N_TEST_FIXTURE) % 10)
  return d


def mikolov_text(n_lines: int, seed: int) -> str:
  """Lines in Mikolov's char format: ' c h a r s _ w o r d s ' plus a newline."""
  rng = np.random.default_rng(seed)
  letters = list('abcdefghijklmnopqrstuvwxyz') + ['N', "'", '$', '<', '>', '\\', '#', '0', '9']
  return helpers.mikolov_chars(
      [''.join(rng.choice(letters, rng.integers(1, 8))) for _ in range(rng.integers(3, 12))]
      for _ in range(n_lines))


@pytest.fixture
def ptb_dir(tmp_path) -> Path:
  d = tmp_path / 'ptb'
  d.mkdir()
  for i, split in enumerate(text.SPLITS):
    (d / f'ptb.char.{split}.txt').write_text(mikolov_text(300 if split == 'train' else 40, i))
  return d


def text8_zip(path: Path, content: bytes, member: str = 'text8') -> Path:
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    zf.writestr(member, content)
  return path


@pytest.fixture
def text8_dir(tmp_path) -> Path:
  d = tmp_path / 'text8'
  d.mkdir()
  rng = np.random.default_rng(0)
  content = bytes(rng.choice(list(b' abcdefghijklmnopqrstuvwxyz'), 20_000).tolist())
  text8_zip(d / 'text8.zip', content)
  return d


def decode(tokens, vocab) -> str:
  return ''.join(vocab[int(t)] for t in tokens)


# --- loaders on fixtures ------------------------------------------------------------------------

def test_read_idx_roundtrip(tmp_path):
  images = fixture_images(5)
  got = mnist.read_idx(write_idx(tmp_path / 'x.gz', images))
  assert got.dtype == np.uint8 and got.shape == (5, 28, 28)
  np.testing.assert_array_equal(got, images)
  labels = mnist.read_idx(write_idx(tmp_path / 'y.gz', np.arange(5)))
  np.testing.assert_array_equal(labels, np.arange(5))


def test_load_mnist_fixture_split(mnist_dir):
  splits = mnist.load_mnist(mnist_dir, download=False)
  sizes = {s: len(splits[s][1]) for s in splits}
  assert sizes == {'train': 50, 'valid': 10, 'test': 20}  # Last 1/6 of train is valid.
  np.testing.assert_array_equal(splits['train'][0][:, 0, 0], np.arange(50))
  np.testing.assert_array_equal(splits['valid'][0][:, 0, 0], np.arange(50, 60))
  assert splits['test'][1].dtype == np.int32


def test_mnist_task_pixels_and_orders(mnist_dir):
  images = mnist.load_mnist(mnist_dir, download=False)['test'][0].reshape(20, -1)
  for kind in mnist.PIXEL_ORDERS:
    task = make_task(data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784, pixel_order=kind),
                     seed=0)
    batch = next(task.eval_batches('test'))
    order = mnist.pixel_order(kind, 1)
    np.testing.assert_allclose(batch['inputs'][:7, :, 0], images[:7][:, order] / 255, rtol=1e-6)
    assert task.describe()['distinct_pixels_shown'] == len(np.unique(order))
  assert (task.kind, task.input_features, task.num_classes, task.train_length) == (
      'classify', 1, 10, 784)
  assert task.steps_per_epoch == 50 // 8


def test_pixel_orders():
  np.testing.assert_array_equal(mnist.pixel_order('scanline', 1), np.arange(784))
  perm = mnist.pixel_order('permuted', 3)
  np.testing.assert_array_equal(np.sort(perm), np.arange(784))
  assert not np.array_equal(perm, mnist.pixel_order('permuted', 4))
  with_replacement = mnist.pixel_order('with_replacement', 1)
  assert len(with_replacement) == 784 and len(np.unique(with_replacement)) == 501  # Spec B.1.
  with pytest.raises(DataError, match='scanline, permuted, with_replacement'):
    mnist.pixel_order('spiral', 1)


def test_ptb_fixture_encoding(ptb_dir):
  splits = text.load_ptb_char(ptb_dir, download=False)
  raw = (ptb_dir / 'ptb.char.valid.txt').read_text()
  expected = ''.join(line.replace(' ', '') + '\n' for line in raw.splitlines())
  assert decode(splits['valid'], text.PTB_VOCAB) == expected
  assert len(text.PTB_VOCAB) == 50 and (splits['valid'] == 49).sum() == 40  # One EOS per line.


def test_ptb_last_line_without_newline_gets_eos(tmp_path):
  path = tmp_path / 'ptb.char.valid.txt'
  path.write_text(' a _ b \n\n c')
  assert decode(text.encode_ptb(path), text.PTB_VOCAB) == 'a_b\nc\n'


def test_text8_fixture(text8_dir):
  splits = text.load_text8(text8_dir, download=False)
  assert [len(splits[s]) for s in text.SPLITS] == [18_000, 1_000, 1_000]
  with zipfile.ZipFile(text8_dir / 'text8.zip') as zf:
    content = zf.read('text8').decode()
  assert decode(np.concatenate([splits[s] for s in text.SPLITS]), text.TEXT8_VOCAB) == content
  task = make_task(data_cfg(name='text8', dir=str(text8_dir), seq_len=180), seed=0)
  assert (task.vocab_size, task.train_length) == (27, 179)


def test_digits_task():
  task = make_task(data_cfg(name='digits'), seed=0)
  assert task.describe()['split_sizes'] == {'train': 1437, 'valid': 180, 'test': 180}
  batch = task.train_batch(0)
  assert batch['inputs'].shape == (8, 64, 1) and batch['inputs'].dtype == np.float32
  assert 0 <= batch['inputs'].min() and batch['inputs'].max() <= 1
  assert 'NOT MNIST' in task.describe()['label']


def test_digits_equal_sklearn_load_digits():
  """normrnn.data.digits reads scikit-learn's bundled CSV itself (importing sklearn costs seconds
  in every training process): the same images and labels, in the same order, as
  sklearn.datasets.load_digits, the same version string, and sklearn left unimported."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import sklearn  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from normrnn.data import digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  images, labels = digits.load_arrays()
  assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
  assert labels.shape == (1797,) and labels.dtype == np.int32
  np.testing.assert_array_equal(images.astype(np.float64), bunch.images)  # exact, before casts
  np.testing.assert_array_equal(labels, bunch.target)
  split = digits.load_digits()
  order = np.random.default_rng(0).permutation(1797)
  for name, idx in zip(('train', 'valid', 'test'), np.split(order, [1437, 1617])):
    np.testing.assert_array_equal(split[name][0], bunch.images[idx].astype(np.uint8))
    np.testing.assert_array_equal(split[name][1], bunch.target[idx].astype(np.int32))
  assert digits.sklearn_version() == sklearn.__version__
  # The module alone (by path: the package would import jax and flax first), in a fresh process.
  code = ('import importlib.util, sys\n'
          f'spec = importlib.util.spec_from_file_location("digits", {digits.__file__!r})\n'
          'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n'
          'm.load_digits(); m.sklearn_version()\n'
          'print(sorted(k for k in sys.modules if "sklearn" in k))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == '[]', out.stdout + out.stderr[-2000:]


def test_ptb_extracted_from_local_archive(tmp_path, ptb_dir):
  archive_dir = tmp_path / 'archive'
  archive_dir.mkdir()
  with tarfile.open(archive_dir / 'simple-examples.tgz', 'w:gz') as tar:
    for split in text.SPLITS:
      tar.add(ptb_dir / f'ptb.char.{split}.txt', f'./simple-examples/data/ptb.char.{split}.txt')
  splits = text.load_ptb_char(archive_dir, download=False)
  np.testing.assert_array_equal(splits['test'], text.encode_ptb(ptb_dir / 'ptb.char.test.txt'))


def test_ptb_download_path_with_file_url(tmp_path, ptb_dir, monkeypatch):
  archive = tmp_path / 'served' / 'simple-examples.tgz'
  archive.parent.mkdir()
  with tarfile.open(archive, 'w:gz') as tar:
    for split in text.SPLITS:
      tar.add(ptb_dir / f'ptb.char.{split}.txt', f'./simple-examples/data/ptb.char.{split}.txt')
  monkeypatch.setattr(text, 'PTB_URL', archive.as_uri())
  with pytest.raises(DataError, match='wrong size in bytes: expected 34869662'):
    text.load_ptb_char(tmp_path / 'fresh', download=True)
  monkeypatch.setattr(text, 'PTB_ARCHIVE_BYTES', archive.stat().st_size)
  splits = text.load_ptb_char(tmp_path / 'fresh', download=True)
  np.testing.assert_array_equal(splits['valid'], text.encode_ptb(ptb_dir / 'ptb.char.valid.txt'))
  task = make_task(data_cfg(name='ptb_char', dir=str(tmp_path / 'fresh'), seq_len=20), 0)
  recorded = {Path(f['file']).name: f['sha256'] for f in task.describe()['files']}
  assert recorded['simple-examples.tgz'] == files.sha256_of(archive)  # Recorded, not verified.


# --- the real shared data -----------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / 'mnist').is_dir(), reason='shared MNIST copy absent')
def test_real_mnist10k():
  task = make_task(data_cfg(name='mnist10k', dir=str(SHARED / 'mnist'), seq_len=784,
                            batch_size=100), seed=0)
  info = task.describe()
  assert info['split_sizes'] == {'train': 8000, 'valid': 1000, 'test': 1000}
  assert "NOT the paper's data" in info['label']
  assert {f['sha256'] for f in info['files']} == set(mnist.SHARED_SHA256.values())
  assert task.steps_per_epoch == 80
  json.dumps(info)


@pytest.mark.skipif(not (SHARED / 'ptb_char').is_dir(), reason='shared PTB copy absent')
def test_real_ptb_char_valid():
  task = make_task(data_cfg(name='ptb_char_valid', dir=str(SHARED / 'ptb_char'), seq_len=100,
                            batch_size=32, eval_batch_size=100), seed=0)
  sizes = task.describe()['split_sizes']
  assert sum(sizes.values()) == 389_672 + 3_370  # Symbols plus one end-of-sentence per line.
  assert sizes == {'train': 353_737, 'valid': 19_652, 'test': 19_653}
  assert (task.vocab_size, task.train_length, task.input_features) == (50, 99, 50)
  for length in (100, 1000):
    batches = list(task.eval_batches('test', length=length))
    n_segments = len(range(0, 19_652, length))  # Each segment loses its first symbol.
    assert sum(b['mask'].sum() for b in batches) == 19_653 - n_segments


# --- deterministic batching ---------------------------------------------------------------------

def test_train_batch_is_a_function_of_seed_and_step(mnist_dir, ptb_dir):
  for cfg in (data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784),
              data_cfg(name='ptb_char', dir=str(ptb_dir), seq_len=20)):
    task, resumed, other = make_task(cfg, 0), make_task(cfg, 0), make_task(cfg, 1)
    steps = [5, 0, 3 * task.steps_per_epoch + 1, 0, 5]
    first = [task.train_batch(s) for s in steps]
    for step, batch in zip(reversed(steps), [resumed.train_batch(s) for s in reversed(steps)]):
      for key in batch:
        np.testing.assert_array_equal(batch[key], first[steps.index(step)][key])
    assert not np.array_equal(other.train_batch(0)['inputs'], first[1]['inputs'])
    epoch1 = task.train_batch(task.steps_per_epoch)
    assert not np.array_equal(epoch1['inputs'], first[1]['inputs'])  # Reshuffled.


def test_classify_epoch_shows_each_training_image_at_most_once(mnist_dir):
  task = make_task(data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784), seed=0)
  for epoch in range(2):
    ids = np.concatenate([
        np.rint(task.train_batch(epoch * task.steps_per_epoch + p)['inputs'][:, 0, 0] * 255)
        for p in range(task.steps_per_epoch)])
    assert len(ids) == task.steps_per_epoch * 8 == 48 and len(np.unique(ids)) == 48
    assert ids.max() < 50  # Never a validation image.


def test_lm_train_segments(ptb_dir):
  task = make_task(data_cfg(name='ptb_char', dir=str(ptb_dir), seq_len=20, batch_size=4), seed=0)
  stream = task.stream('train')
  assert stream.dtype == np.int32
  n_segments = len(stream) // 20 - 1
  assert task.steps_per_epoch == n_segments // 4
  batch = task.train_batch(0)
  assert batch['inputs'].shape == batch['targets'].shape == (4, 19)
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  position_of = {}  # Window content -> first start position in the stream.
  for i, window in enumerate(np.lib.stride_tricks.sliding_window_view(stream, 19)):
    position_of.setdefault(window.tobytes(), i)
  starts = {position_of[row.tobytes()] for p in range(task.steps_per_epoch)
            for row in task.train_batch(p)['inputs']}
  offsets = {s % 20 for s in starts}
  assert len(offsets) == 1 and len(starts) == task.steps_per_epoch * 4  # One offset per epoch.


# --- evaluation and re-estimation batches -------------------------------------------------------

def test_classify_eval_batches_cover_split_once(mnist_dir):
  task = make_task(data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784), seed=0)
  batches = list(task.eval_batches('test'))  # 20 examples in batches of 7: 7, 7, 6 + 1 padding.
  assert len(batches) == 3 and all(b['inputs'].shape == (7, 784, 1) for b in batches)
  weights = np.concatenate([b['weights'] for b in batches])
  assert weights.sum() == 20 and weights[-1] == 0
  assert batches[-1]['mask'][-1].sum() == 0 and batches[-1]['mask'][0].sum() == 784
  ids = np.concatenate([np.rint(b['inputs'][:, 0, 0] * 255)[b['weights'] > 0] for b in batches])
  np.testing.assert_array_equal(ids, np.arange(100, 120))
  assert len(list(task.eval_batches('valid', batch_size=4))) == 3
  with pytest.raises(DataError, match='784 pixels'):
    task.eval_batches('test', length=100)


@pytest.mark.parametrize('length', [2, 20, 100, 1000])
def test_lm_eval_batches_cover_stream_once(ptb_dir, length):
  task = make_task(data_cfg(name='ptb_char', dir=str(ptb_dir), seq_len=20), seed=0)
  stream = task.stream('valid')
  pieces = []
  for b in task.eval_batches('valid', length=length):
    assert b['inputs'].shape == (7, length - 1)
    for i in np.flatnonzero(b['weights']):
      valid = b['mask'][i] > 0
      pieces.append(np.concatenate([b['inputs'][i, :1], b['targets'][i, valid]]))
    assert (b['mask'][b['weights'] == 0] == 0).all()
  np.testing.assert_array_equal(np.concatenate(pieces), stream)


def test_reestimate_batches(mnist_dir, ptb_dir):
  task = make_task(data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784), seed=0)
  batches = list(task.reestimate_batches(10))
  assert len(batches) == 5 and all(b['weights'].all() for b in batches)
  ids = np.concatenate([np.rint(b['inputs'][:, 0, 0] * 255) for b in batches])
  np.testing.assert_array_equal(ids, np.arange(50))  # In order, no augmentation.
  assert len(list(task.reestimate_batches(10, num_batches=2))) == 2
  with pytest.raises(DataError, match='holds only 5'):
    task.reestimate_batches(10, num_batches=6)
  lm = make_task(data_cfg(name='ptb_char', dir=str(ptb_dir), seq_len=20), seed=0)
  first = next(lm.reestimate_batches(3))
  np.testing.assert_array_equal(first['inputs'][1], lm.stream('train')[20:39])  # Offset 0.


def test_describe_is_json(mnist_dir, ptb_dir, text8_dir):
  for cfg in (data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784),
              data_cfg(name='ptb_char', dir=str(ptb_dir), seq_len=20),
              data_cfg(name='text8', dir=str(text8_dir), seq_len=180)):
    info = json.loads(json.dumps(make_task(cfg, 0).describe()))
    assert info['files'] and all(len(f['sha256']) == 64 for f in info['files'])
  assert 'NOT the paper' in make_task(
      data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784), 0).describe()['label']


# --- every bad-data case is a DataError naming the file -----------------------------------------

def test_truncated_and_corrupt_gzip(tmp_path):
  good = gzip.compress(b'\x00\x00\x08\x01' + (3).to_bytes(4, 'big') + b'\x01\x02\x03')
  (tmp_path / 'cut.gz').write_bytes(good[:-10])
  with pytest.raises(DataError, match='cut.gz.*truncated'):
    mnist.read_idx(tmp_path / 'cut.gz')
  (tmp_path / 'bad.gz').write_bytes(good[:10] + b'\xff' * 8 + good[18:])
  with pytest.raises(DataError, match='bad.gz'):
    mnist.read_idx(tmp_path / 'bad.gz')
  (tmp_path / 'plain.gz').write_bytes(b'not gzip at all')
  with pytest.raises(DataError, match='plain.gz.*not a valid gzip'):
    mnist.read_idx(tmp_path / 'plain.gz')


def test_wrong_magic_and_wrong_size(tmp_path):
  with pytest.raises(DataError, match=r'magic.gz.*0x00000d03'):
    mnist.read_idx(write_idx(tmp_path / 'magic.gz', np.zeros((2, 28, 28)), magic=0xD03))
  header = (0x803).to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in (3, 28, 28))
  (tmp_path / 'short.gz').write_bytes(gzip.compress(header + bytes(2 * 28 * 28)))
  with pytest.raises(DataError, match=r'short.gz.*\(3, 28, 28\)'):
    mnist.read_idx(tmp_path / 'short.gz')
  write_idx(tmp_path / 'train-images-idx3-ubyte.gz', np.zeros((4, 10, 10)))
  write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.zeros(4))
  with pytest.raises(DataError, match=r'train-images.*\[N, 28, 28\]'):
    mnist.read_pair(tmp_path, *mnist.TRAIN_FILES)


def test_mismatched_image_and_label_counts(mnist_dir):
  write_idx(mnist_dir / 't10k-labels-idx1-ubyte.gz', np.zeros(19))
  with pytest.raises(DataError, match='t10k-images.*20 images.*19 labels'):
    mnist.load_mnist(mnist_dir, download=False)


def test_mnist10k_rejects_files_that_are_not_the_real_test_set(mnist_dir):
  with pytest.raises(DataError, match='t10k-images-idx3-ubyte.gz has sha256'):
    make_task(data_cfg(name='mnist10k', dir=str(mnist_dir), seq_len=784), 0)


def test_fetch_file_url_checks_sha256(tmp_path):
  source = tmp_path / 'source.bin'
  source.write_bytes(b'payload' * 1000)
  digest = hashlib.sha256(source.read_bytes()).hexdigest()
  out = tmp_path / 'out'
  with pytest.raises(DataError, match=f'expected {"0" * 64}, got {digest}'):
    files.fetch(source.as_uri(), out / 'x.bin', '0' * 64, download=True)
  assert list(out.iterdir()) == []  # No partial file, no dest.
  got = files.fetch(source.as_uri(), out / 'x.bin', digest, download=True, size=7000)
  assert got.read_bytes() == source.read_bytes() and len(list(out.iterdir())) == 1


def test_mnist_download_path_with_file_urls(tmp_path, mnist_dir, monkeypatch):
  monkeypatch.setattr(mnist, 'BASE_URL', mnist_dir.as_uri() + '/')
  monkeypatch.setattr(mnist, 'OFFICIAL_SHA256',
                      {p.name: files.sha256_of(p) for p in mnist_dir.iterdir()})
  splits = mnist.load_mnist(tmp_path / 'fresh', download=True)
  assert len(splits['test'][1]) == 20
  monkeypatch.setattr(mnist, 'OFFICIAL_SHA256', dict.fromkeys(mnist.OFFICIAL_SHA256, 'f' * 64))
  with pytest.raises(DataError, match='wrong sha256'):
    mnist.load_mnist(tmp_path / 'other', download=True)


def test_ptb_bad_symbol_empty_and_missing(tmp_path, ptb_dir):
  (ptb_dir / 'ptb.char.test.txt').write_text(' a b \n c d \n e % f \n')
  with pytest.raises(DataError, match=r"ptb.char.test.txt, line 3: symbol '%'"):
    text.load_ptb_char(ptb_dir, download=False)
  (ptb_dir / 'ptb.char.test.txt').write_text(' a b \n c dd \n')
  with pytest.raises(DataError, match=r"line 2: symbol 'dd'"):
    text.load_ptb_char(ptb_dir, download=False)
  (ptb_dir / 'ptb.char.test.txt').write_text(' \n\n')
  with pytest.raises(DataError, match='ptb.char.test.txt is empty'):
    text.load_ptb_char(ptb_dir, download=False)
  (ptb_dir / 'ptb.char.test.txt').unlink()
  with pytest.raises(DataError, match=f'missing ptb.char.test.txt in {ptb_dir}'):
    text.load_ptb_char(ptb_dir, download=False)


def test_ptb_char_valid_checks_sha256(ptb_dir):
  with pytest.raises(DataError, match='ptb.char.valid.txt has sha256'):
    make_task(data_cfg(name='ptb_char_valid', dir=str(ptb_dir), seq_len=100), 0)


def test_text8_corrupt_zip_missing_member_bad_symbols(tmp_path):
  good = text8_zip(tmp_path / 'good.zip', b' abc def' * 100).read_bytes()
  bad = tmp_path / 'text8.zip'
  bad.write_bytes(good[:len(good) // 2])
  with pytest.raises(DataError, match='text8.zip is not a readable zip'):
    text.load_text8(tmp_path, download=False)
  text8_zip(bad, b'abc', member='enwik8')
  with pytest.raises(DataError, match=r"text8.zip has no member 'text8'.*enwik8"):
    text.load_text8(tmp_path, download=False)
  text8_zip(bad, b'abc Def')
  with pytest.raises(DataError, match=r"text8.zip: member 'text8' has byte b'D' at position 4"):
    text.load_text8(tmp_path, download=False)
  corrupt = bytearray(good)
  start = good.index(b'text8') + len(b'text8')  # Flip bytes in the compressed member data.
  corrupt[start + 5:start + 15] = bytes(10)
  bad.write_bytes(bytes(corrupt))
  with pytest.raises(DataError, match='text8.zip'):
    text.load_text8(tmp_path, download=False)


# --- offline behaviour: fail fast, say what to put where ----------------------------------------

@pytest.mark.parametrize('name, expected', [
    ('mnist', 'train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
              't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz'),
    ('mnist10k', 't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz'),
    ('ptb_char', 'ptb.char.train.txt, ptb.char.valid.txt, ptb.char.test.txt'),
    ('ptb_char_valid', 'ptb.char.valid.txt'),
    ('text8', 'text8.zip'),
])
def test_offline_without_files_fails_fast(tmp_path, name, expected):
  seq_len = 784 if 'mnist' in name else 100
  start = time.perf_counter()
  with pytest.raises(DataError) as error:
    make_task(data_cfg(name=name, dir=str(tmp_path / 'empty'), seq_len=seq_len), 0)
  assert time.perf_counter() - start < 2
  message = str(error.value)
  assert f'missing {expected} in {tmp_path / "empty"}' in message
  assert 'http' in message and 'download=True' in message


def test_download_from_unreachable_url_fails_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(DataError, match=r'Offline\? Put x.gz in'):
    files.fetch('http://127.0.0.1:9/x.gz', tmp_path / 'x.gz', '0' * 64, download=True,
                timeout_s=5)
  assert time.perf_counter() - start < 5
  assert list(tmp_path.iterdir()) == []


def test_download_from_silent_server_times_out(tmp_path):
  server = socket.socket()  # Accepts connections (kernel backlog) but never answers.
  server.bind(('127.0.0.1', 0))
  server.listen(1)
  try:
    start = time.perf_counter()
    with pytest.raises(DataError, match='timed out'):
      files.fetch(f'http://127.0.0.1:{server.getsockname()[1]}/x.gz', tmp_path / 'x.gz',
                  '0' * 64, download=True, timeout_s=0.5)
    assert time.perf_counter() - start < 3
  finally:
    server.close()
  assert list(tmp_path.iterdir()) == []


def test_tfds_unprepared_fails_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(DataError, match='no prepared tfds "mnist"'):
    make_task(data_cfg(name='mnist', source='tfds', dir=str(tmp_path), seq_len=784), 0)
  assert time.perf_counter() - start < 2


def test_tfds_source_with_mock_data(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('importlib_resources')  # tfds needs it without TensorFlow.
  # The on-disk "prepared" check looks for <dir>/mnist/<version>/dataset_info.json; mock_data
  # then serves random examples in place of the real (absent) files.
  (tmp_path / 'mnist' / '3.0.1').mkdir(parents=True)
  (tmp_path / 'mnist' / '3.0.1' / 'dataset_info.json').write_text('{}')
  with tfds.testing.mock_data(num_examples=12):
    task = make_task(data_cfg(name='mnist', source='tfds', dir=str(tmp_path), seq_len=784,
                              batch_size=4), 0)
  assert task.describe()['split_sizes'] == {'train': 10, 'valid': 2, 'test': 12}
  batch = task.train_batch(0)
  assert batch['inputs'].shape == (4, 784, 1) and 0 <= batch['inputs'].min() <= 1


# --- config validation ------------------------------------------------------------------------

def test_config_errors(tmp_path):
  with pytest.raises(DataError, match=', '.join(TASK_NAMES)):
    make_task(data_cfg(name='cifar'), 0)
  with pytest.raises(DataError, match='tfds.*only for mnist'):
    make_task(data_cfg(name='text8', source='tfds', seq_len=100), 0)
  with pytest.raises(DataError, match='data.source'):
    make_task(data_cfg(source='web'), 0)
  with pytest.raises(DataError, match='pixel_order="scanline"'):
    make_task(data_cfg(name='text8', dir=str(tmp_path), pixel_order='permuted', seq_len=100), 0)
  with pytest.raises(DataError, match='data.seq_len=784'):
    make_task(data_cfg(name='mnist', dir=str(tmp_path), seq_len=100), 0)
  with pytest.raises(DataError, match='data.seq_len=64'):
    make_task(data_cfg(name='digits', seq_len=784), 0)
  with pytest.raises(DataError, match='data.batch_size'):
    make_task(data_cfg(batch_size=0), 0)
  with pytest.raises(DataError, match='larger than the training set'):
    make_task(data_cfg(batch_size=5000), 0)
  incomplete = data_cfg()
  del incomplete.eval_batch_size
  with pytest.raises(DataError, match="no field 'eval_batch_size'"):
    make_task(incomplete, 0)


def test_ml_collections_config_works(mnist_dir):
  ml_collections = pytest.importorskip('ml_collections')
  cfg = ml_collections.ConfigDict(vars(data_cfg(name='mnist', dir=str(mnist_dir), seq_len=784)))
  assert make_task(cfg, 0).steps_per_epoch == 6
  del cfg['pixel_order']
  with pytest.raises(DataError, match="no field 'pixel_order'"):
    make_task(cfg, 0)
