"""Tests for normrnn.storage and for storage failures of normrnn.checkpoint: a full disk while a
checkpoint is written (injected where orbax writes files, and for real on a tiny tmpfs when
mounting is permitted), unwritable and read-only directories. Each failure must be one line,
keep every complete checkpoint, leave no temporary directory and let a rerun resume."""
from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import pickle
import shutil
import subprocess
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import pytest

from normrnn.checkpoint import CONFIG_FILE, TMP_MARK, Checkpointer
from normrnn.storage import StorageError, check_writable, storage_errno, storage_errors

# What orbax 0.12.8 (tensorstore) raised when a 1 MB tmpfs filled up during a save.
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file '
    '"/mnt/ck/6.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/ocdbt.process_0/": Failed '
    'writing: "/mnt/ck/6.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/ocdbt.process_0/d/'
    '179d6c87a1548901306114435d28f623": Failed to write 106562 bytes to file 4: No space left on '
    "device [os_error_code='28']")


def make_state(seed: int, size: int = 64) -> dict:
  rng = np.random.default_rng(seed)
  return {'step': np.int32(seed), 'w': rng.random(size, dtype=np.float32),
          'b': jnp.full(3, float(seed))}


def assert_state(restored: dict, seed: int, size: int = 64) -> None:
  expected = make_state(seed, size)
  assert int(restored['step']) == seed
  np.testing.assert_array_equal(restored['w'], expected['w'])
  np.testing.assert_array_equal(np.asarray(restored['b']), np.asarray(expected['b']))


def assert_one_line_error(err: StorageError, directory, reason: str, resume_step) -> str:
  message = str(err)
  assert '\n' not in message and message.startswith('cannot write ')
  assert str(directory) in message and reason in message
  if resume_step is None:
    assert 'it resumes' not in message
  else:
    assert message.endswith(f'it resumes from the checkpoint at step {resume_step}.')
  return message


def assert_only_complete_checkpoints(directory, steps, config_step) -> None:
  """Exactly the complete checkpoints and the config file, which names the latest one."""
  names = sorted(os.listdir(directory))
  assert not [n for n in names if TMP_MARK in n or n.endswith(('.tmp', '.pending'))], names
  assert names == sorted([str(s) for s in steps] + [CONFIG_FILE])
  with open(os.path.join(directory, CONFIG_FILE), encoding='utf-8') as f:
    assert json.load(f)['step'] == config_step


class DiskFull:
  """Makes every file that orbax opens for writing under `directory` fail with ENOSPC (or only
  those whose path contains `only`). Orbax writes its metadata files with Python's open(), from
  its background threads, so this exercises its real failure path from there on."""

  def __init__(self, monkeypatch, directory, only: str = ''):
    self.directory, self.only, self.hits = str(directory), only, 0
    real_open = builtins.open

    def full_open(file, mode='r', *args, **kwargs):
      path = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ''
      if (isinstance(path, str) and path.startswith(self.directory) and self.only in path
          and any(c in mode for c in 'wax+')):
        self.hits += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
      return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', full_open)


# _CHECKPOINT_METADATA: the metadata-store thread; _METADATA: the handler's write (asyncio
# thread); commit_success.txt: the commit, after all the arrays are written.
@pytest.mark.parametrize('only', ['_CHECKPOINT_METADATA', '/default.orbax-checkpoint-tmp/_METADATA',
                                  'commit_success.txt'])
@pytest.mark.parametrize('max_to_keep', [1, 2])
def test_enospc_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch, caplog, only,
                                                        max_to_keep):
  directory = tmp_path / 'ckpt'
  config = {'lr': 0.1}
  ckpt = Checkpointer(directory, max_to_keep=max_to_keep)
  assert ckpt.save(1, make_state(1), config=config)

  with monkeypatch.context() as m, caplog.at_level(logging.INFO):
    full = DiskFull(m, directory, only)
    with pytest.raises(StorageError) as info:
      ckpt.save(2, make_state(2), config=dict(config, lr=0.2))
  assert full.hits  # the failure really came from orbax's own writes
  err = info.value
  assert isinstance(err, OSError) and err.errno == errno.ENOSPC
  assert err.resume_step == 1 and err.filename == str(directory)
  message = assert_one_line_error(err, directory, 'No space left on device', resume_step=1)
  assert 'the checkpoint of step 2' in message and 'Free space on the filesystem' in message
  # orbax's tracebacks (one per background thread) are not logged: the error says it all
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

  assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
  assert_only_complete_checkpoints(directory, [1], config_step=1)
  with Checkpointer(directory, max_to_keep=max_to_keep) as rerun:  # the rerun resumes
    assert rerun.latest_step() == 1 and rerun.saved_config() == config
    assert_state(rerun.restore(1, make_state(0)), 1)

  # Space freed: the same Checkpointer saves again.
  assert ckpt.save(2, make_state(2), config=dict(config, lr=0.2))
  steps = [1, 2][-max_to_keep:]
  assert ckpt.all_steps() == steps
  assert_only_complete_checkpoints(directory, steps, config_step=2)
  ckpt.close()
  with Checkpointer(directory, max_to_keep=max_to_keep) as rerun:
    assert rerun.saved_config() == dict(config, lr=0.2)
    assert_state(rerun.restore(2, make_state(0)), 2)


def test_enospc_on_the_first_save_names_no_step(tmp_path, monkeypatch):
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    with monkeypatch.context() as m:
      DiskFull(m, tmp_path)
      with pytest.raises(StorageError) as info:
        ckpt.save(1, make_state(1), config={'a': 1})
    assert_one_line_error(info.value, tmp_path, 'No space left on device', resume_step=None)
    assert ckpt.latest_step() is None and os.listdir(tmp_path) == []


def test_other_errors_pass_unchanged_and_leave_nothing(tmp_path, monkeypatch):
  """Not a storage failure: the original exception, but the same cleanup."""
  real_open = builtins.open

  def broken_open(file, mode='r', *args, **kwargs):
    if 'commit_success' in str(file):
      raise RuntimeError('something else broke')
    return real_open(file, mode, *args, **kwargs)

  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    ckpt.save(1, make_state(1), config={'a': 1})
    with monkeypatch.context() as m:
      m.setattr(builtins, 'open', broken_open)
      with pytest.raises(RuntimeError, match='something else broke'):
        ckpt.save(2, make_state(2), config={'a': 2})
    assert ckpt.all_steps() == [1]
    assert_only_complete_checkpoints(tmp_path, [1], config_step=1)


def test_error_after_the_checkpoint_is_complete(tmp_path, monkeypatch):
  """An I/O error while orbax deletes the checkpoint that max_to_keep drops, after the new one
  is complete: the new one counts (config and resume step), the old one is still there."""
  real_rmtree = shutil.rmtree
  old = str(tmp_path / '1')

  def failing_rmtree(path, *args, **kwargs):
    if os.fspath(path) == old:
      raise OSError(errno.EIO, os.strerror(errno.EIO), old)
    return real_rmtree(path, *args, **kwargs)

  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(1, make_state(1), config={'a': 1})
    with monkeypatch.context() as m:
      m.setattr(shutil, 'rmtree', failing_rmtree)
      with pytest.raises(StorageError) as info:
        ckpt.save(2, make_state(2), config={'a': 2})
    assert_one_line_error(info.value, tmp_path, 'Input/output error', resume_step=2)
    assert ckpt.all_steps() == [1, 2]
  assert_only_complete_checkpoints(tmp_path, [1, 2], config_step=2)
  with Checkpointer(tmp_path, max_to_keep=1) as rerun:
    assert rerun.latest_step() == 2 and rerun.saved_config() == {'a': 2}
    assert_state(rerun.restore(2, make_state(0)), 2)


def test_saving_prints_nothing(tmp_path, capfd):
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    for step in (1, 2):
      ckpt.save(step, make_state(step), config={'a': step})
  assert capfd.readouterr() == ('', '')


def test_leftovers_are_removed_on_open_but_not_read_only(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    ckpt.save(1, make_state(1), config={'a': 1})
  leftovers = [tmp_path / '2.orbax-checkpoint-tmp', tmp_path / '3.orbax-checkpoint-tmp-17324700']
  for leftover in leftovers:
    shutil.copytree(tmp_path / '1', leftover)  # even a full copy is not taken for a step
  (tmp_path / f'{CONFIG_FILE}.pending').write_text('{"step": 2, "config": {}}')
  with Checkpointer(tmp_path, max_to_keep=2, read_only=True) as reader:  # e.g. a live run
    assert reader.all_steps() == [1]
    assert_state(reader.restore(1, make_state(0)), 1)
    with pytest.raises(ValueError, match='read_only'):
      reader.save(2, make_state(2))
  assert all(leftover.exists() for leftover in leftovers)
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert not any(leftover.exists() for leftover in leftovers)  # at once, not in a thread
    assert ckpt.all_steps() == [1]
    assert_only_complete_checkpoints(tmp_path, [1], config_step=1)


# --- check_writable and unwritable checkpoint directories ------------------------------------

def test_check_writable_creates_and_leaves_nothing(tmp_path):
  path = tmp_path / 'a' / 'b'
  assert check_writable(path) == str(path)
  assert path.is_dir() and os.listdir(path) == []
  assert check_writable(str(path)) == str(path)  # existing: fine too


def test_unwritable_paths_fail_fast(tmp_path):
  (tmp_path / 'file').write_text('x')
  for path, reason in [(tmp_path / 'file', 'not a directory'),
                       (tmp_path / 'file' / 'run', 'Not a directory')]:
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
      check_writable(path)
    assert_one_line_error(info.value, path, reason, resume_step=None)
    with pytest.raises(StorageError):
      Checkpointer(path / 'checkpoints', max_to_keep=1)
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize('code,advice', [(errno.EROFS, 'is read-only: remount it read-write'),
                                         (errno.EACCES, 'write permission'),
                                         (errno.EDQUOT, 'disk quota')])
def test_unwritable_directory_via_the_os(tmp_path, monkeypatch, code, advice):
  """The OS refusing the test file (what a read-only mount or missing permission does even
  where these tests run as root) fails at once, before orbax is involved."""
  def refuse(*args, **kwargs):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(tempfile, 'mkstemp', refuse)
  t0 = time.monotonic()
  with pytest.raises(StorageError) as info:
    Checkpointer(tmp_path / 'ckpt', max_to_keep=2)
  assert time.monotonic() - t0 < 2
  assert info.value.errno == code
  message = assert_one_line_error(info.value, tmp_path / 'ckpt', os.strerror(code), None)
  assert advice in message


@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0,
                    reason='root writes into a chmod 0o555 directory anyway')
def test_chmod_read_only_directory(tmp_path):
  tmp_path.chmod(0o555)
  try:
    with pytest.raises(StorageError, match='Permission denied'):
      check_writable(tmp_path)
    with pytest.raises(StorageError, match='Permission denied'):
      Checkpointer(tmp_path / 'ckpt', max_to_keep=1)
  finally:
    tmp_path.chmod(0o755)


# --- the error itself --------------------------------------------------------------------------

def test_storage_errno_finds_wrapped_and_tensorstore_errors():
  assert storage_errno(ValueError(TENSORSTORE_ENOSPC)) == errno.ENOSPC
  assert storage_errno(OSError(errno.EROFS, 'ro')) == errno.EROFS
  assert storage_errno(OSError(errno.ENOENT, 'missing')) is None
  assert storage_errno(ValueError('shapes do not match')) is None
  assert storage_errno(ValueError("[os_error_code='2'] not found")) is None
  try:
    try:
      raise OSError(errno.EDQUOT, 'quota')
    except OSError as e:
      raise RuntimeError('commit failed') from e
  except RuntimeError as e:
    assert storage_errno(e) == errno.EDQUOT
  group = ExceptionGroup('threads', [KeyError('x'), ValueError(TENSORSTORE_ENOSPC)])
  assert storage_errno(group) == errno.ENOSPC


def test_storage_errors_context(tmp_path):
  with pytest.raises(StorageError) as info:
    with storage_errors('results.json', tmp_path / 'results.json', resume_step=40):
      raise ValueError(TENSORSTORE_ENOSPC)
  err = info.value
  assert isinstance(err.__cause__, ValueError) and err.errno == errno.ENOSPC
  assert_one_line_error(err, tmp_path / 'results.json', 'No space left on device', 40)
  with pytest.raises(KeyError):  # anything else passes unchanged
    with storage_errors('results.json', tmp_path):
      raise KeyError('x')
  with pytest.raises(FileNotFoundError):
    with storage_errors('results.json', tmp_path):
      open(tmp_path / 'missing' / 'x', encoding='utf-8')  # pylint: disable=consider-using-with
  calls = []

  def latest_step():
    calls.append(1)
    return 7

  with storage_errors('metrics', tmp_path, resume_step=latest_step):
    pass
  assert not calls  # only asked on failure
  with pytest.raises(StorageError, match='at step 7.$'):
    with storage_errors('metrics', tmp_path, resume_step=latest_step):
      raise OSError(errno.ENOSPC, 'full')
  # A StorageError from inside (e.g. the Checkpointer of the best model, at its own latest
  # step) keeps its step unless the caller says where a rerun resumes (even: nowhere).
  inner = StorageError('the checkpoint of step 9', tmp_path, errno.ENOSPC, resume_step=9)
  with pytest.raises(StorageError) as info:
    with storage_errors('a checkpoint', tmp_path):
      raise inner
  assert info.value is inner and inner.resume_step == 9
  with pytest.raises(StorageError) as info:
    with storage_errors('a checkpoint', tmp_path, resume_step=latest_step):
      raise inner
  assert info.value is inner and inner.resume_step == 7
  with pytest.raises(StorageError) as info:
    with storage_errors('a checkpoint', tmp_path, resume_step=None):
      raise inner
  assert inner.resume_step is None and 'resumes' not in str(inner)


def test_message_resume_step_and_pickling(tmp_path):
  err = StorageError('the checkpoint of step 6', tmp_path, errno.ENOSPC)
  assert 'resumes' not in str(err) and err.free_bytes is not None
  assert err.with_resume_step(5) is err
  message = assert_one_line_error(err, tmp_path, 'No space left on device', 5)
  assert 'free of' in message  # the free space of the filesystem, for the user to judge
  again = pickle.loads(pickle.dumps(err))
  assert type(again) is StorageError and str(again) == message and again.errno == errno.ENOSPC
  multi = StorageError('a\nb', tmp_path, errno.EIO, reason='bad\nsector')
  assert '\n' not in str(multi) and 'I/O error' in str(multi)


# --- for real: a tiny tmpfs (root only; skipped where mounting is not permitted) ---------------

@pytest.fixture
def mount_tmpfs(tmp_path):
  mounted = []

  def mount(name: str, options: str):
    path = tmp_path / name
    path.mkdir()
    if shutil.which('mount') is None:
      pytest.skip('no mount command')
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                          capture_output=True, check=False)
    if done.returncode:
      pytest.skip(f'mounting a tmpfs is not permitted here: {done.stderr.decode().strip()}')
    mounted.append(path)
    return path

  yield mount
  for path in mounted:
    if subprocess.run(['umount', str(path)], capture_output=True, check=False).returncode:
      subprocess.run(['umount', '-l', str(path)], capture_output=True, check=False)


def test_full_tmpfs(mount_tmpfs, capfd):
  disk = mount_tmpfs('disk', 'size=1m')
  filler = disk / 'other-files'
  filler.write_bytes(b'\0' * 250_000)
  directory = disk / 'checkpoints'
  size = 40_000  # ~170 kB a checkpoint: the disk is full after a few
  ckpt = Checkpointer(directory, max_to_keep=100)
  capfd.readouterr()
  for step in range(1, 20):
    try:
      ckpt.save(step, make_state(step, size), config={'step': step})
    except StorageError as e:
      err = e
      break
  else:
    pytest.fail('the 1 MB tmpfs never filled up')
  last = step - 1
  assert last >= 1
  assert err.errno == errno.ENOSPC and err.resume_step == last
  message = assert_one_line_error(err, directory, 'No space left on device', last)
  assert f'the filesystem mounted at {disk} (' in message
  assert 'Traceback' not in capfd.readouterr().err  # nothing from orbax's threads either
  assert ckpt.all_steps() == list(range(1, step))
  assert_only_complete_checkpoints(directory, range(1, step), config_step=last)
  with Checkpointer(directory, max_to_keep=100) as rerun:
    assert_state(rerun.restore(last, make_state(0, size)), last, size)

  filler.unlink()  # free space, then the same save works
  assert ckpt.save(step, make_state(step, size), config={'step': step})
  ckpt.close()
  with Checkpointer(directory, max_to_keep=100) as rerun:
    assert rerun.latest_step() == step and rerun.saved_config() == {'step': step}
    assert_state(rerun.restore(step, make_state(0, size)), step, size)


def test_full_tmpfs_keeps_the_only_checkpoint(mount_tmpfs):
  """max_to_keep=1: the old checkpoint is deleted only after the new one is complete, so a full
  disk (no room for two) keeps it."""
  disk = mount_tmpfs('disk', 'size=1m')
  size = 150_000  # ~600 kB: one fits, two do not
  with Checkpointer(disk, max_to_keep=1) as ckpt:
    ckpt.save(1, make_state(1, size), config={'a': 1})
    with pytest.raises(StorageError) as info:
      ckpt.save(2, make_state(2, size), config={'a': 2})
    assert_one_line_error(info.value, disk, 'No space left on device', resume_step=1)
    assert ckpt.all_steps() == [1]
  assert_only_complete_checkpoints(disk, [1], config_step=1)
  with Checkpointer(disk, max_to_keep=1) as rerun:
    assert_state(rerun.restore(1, make_state(0, size)), 1, size)


def test_read_only_mount(mount_tmpfs):
  disk = mount_tmpfs('ro', 'ro,size=64k')
  t0 = time.monotonic()
  with pytest.raises(StorageError) as info:
    check_writable(disk / 'run')
  with pytest.raises(StorageError):
    Checkpointer(disk / 'run' / 'checkpoints', max_to_keep=1)
  assert time.monotonic() - t0 < 2
  assert info.value.errno == errno.EROFS
  message = assert_one_line_error(info.value, disk / 'run', 'Read-only file system', None)
  assert f'The filesystem mounted at {disk} is read-only' in message
