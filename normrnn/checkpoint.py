"""Checkpointer: atomic, resumable checkpoints of a training-state pytree (orbax).

Layout of `directory`:
  <step>/                     one complete orbax checkpoint per kept step.
  <step>.orbax-checkpoint-tmp/
                              a checkpoint being written (orbax 0.12; older versions append
                              -<timestamp>). Orbax writes there and renames it to <step>/ only
                              once it is complete, so a kill -9 leaves at most such a leftover;
                              it is never listed as a step and is deleted when the next
                              Checkpointer opens the directory, or at once when a save fails.
  config_at_checkpoint.json   {"step": int, "config": dict}: the run's config at the most recent
                              `save(..., config=...)`. It is written beforehand as
                              config_at_checkpoint.json.pending and renamed over this file only
                              once that checkpoint is complete (a rename needs no free space), so
                              it never names a step that is not on disk. `saved_config()` reads
                              it, so a resumed run can compare its config with the one that
                              produced the checkpoint.

Several processes (a multi-process job, normrnn/parallel.py): every process opens the same
(shared) directory and calls `save` and `restore` for the same steps in the same order; orbax
writes each process's shards of the state and its primary process (process 0,
`MultiprocessingOptions(primary_host=0)`) creates the directory, commits each checkpoint (the
rename of the temporary directory) and deletes old ones, with barriers between the processes.
The files this class adds (the leftover cleanup at open and config_at_checkpoint.json) are
likewise touched by process 0 alone; the others wait for its cleanup at a barrier.

Storage failures (a full disk, a read-only or unwritable directory, ...) raise
normrnn.storage.StorageError, one line naming the directory, the OS reason, what to do and the
step a rerun resumes from; a failed save leaves the directory as it was (every complete
checkpoint kept, no temporary directory, the config file unchanged), and orbax's own tracebacks
of it are not logged.

States are pytrees (dicts, flax struct dataclasses, optax namedtuple states, EmptyState) of
jax/numpy arrays. numpy scalar leaves (np.float32(3.0)), which orbax saves but cannot restore,
are turned into 0-d numpy arrays on save and in the restore target.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sys
from typing import Any, Iterator

import hashlib
import itertools

import jax
import numpy as np
import orbax.checkpoint as ocp

from normrnn.jsonio import write_json_atomic
from normrnn.storage import StorageError, check_writable, storage_errno, storage_errors

CONFIG_FILE = 'config_at_checkpoint.json'
_PENDING_CONFIG = CONFIG_FILE + '.pending'
TMP_MARK = '.orbax-checkpoint-tmp'  # orbax's temporary-directory suffix (see the layout above)

logger = logging.getLogger(__name__)
_barriers = itertools.count()  # barrier names must be unique within a job


def _primary() -> bool:
  """True in the process that owns the directory's bookkeeping (always, in one process)."""
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """A barrier of all processes of a multi-process job (a no-op in one process)."""
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(f'normrnn_{name}_{next(_barriers)}')


class Checkpointer:
  """Saves and restores training states under one directory, keeping the newest few.

  Usage:
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=2)
    step = ckpt.latest_step()
    if step is not None:
      state = ckpt.restore(step, state)   # `state`: a freshly initialised state (the target)
    ...
    ckpt.save(step, state, config=config_dict)
    ckpt.close()
  """

  def __init__(self, directory: str, *, max_to_keep: int, read_only: bool = False):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: where the checkpoints live.
      max_to_keep: how many of the newest checkpoints to keep (>= 1).
      read_only: only restore: the directory is neither created, checked for writability nor
        cleaned of temporary leftovers (which may belong to a run still writing there), and
        `save` raises.

    Raises:
      ValueError: max_to_keep < 1.
      StorageError: (unless read_only) the directory cannot be created or written, e.g. a
        read-only filesystem, no permission, a file in the way or a full disk.
    """
    if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(f'max_to_keep must be an int >= 1, got {max_to_keep!r}')
    self.directory = os.path.abspath(directory)
    self._max_to_keep = max_to_keep
    self._read_only = read_only
    if not read_only:
      # Fails in milliseconds with one line instead of seconds later deep inside orbax.
      check_writable(self.directory, what='checkpoints')
    with storage_errors('checkpoints', self.directory):
      self._open()

  def _open(self, *, keep_pending_config: bool = False) -> None:
    if not self._read_only:
      if _primary():
        self._remove_leftovers(keep_pending_config)
      _sync('checkpoint_open')  # nobody opens the directory while process 0 cleans it
    # Leftovers are removed above, synchronously: orbax's cleanup_tmp_directories runs in a
    # thread that only a save waits for, and that fails when the process exits first.
    # The barrier prefix keeps the barriers of two Checkpointers (checkpoints/ and best/, which
    # may save the same step) apart.
    prefix = 'normrnn_' + hashlib.sha1(self.directory.encode()).hexdigest()[:12]
    # Several processes: synchronous saves. orbax's barriers are device collectives (gloo on
    # CPU); an async save issues them from its commit and finalize threads while the main
    # thread issues its own, and two threads' collectives can reach the processes in different
    # orders (seen here: gloo "Received data size doesn't match expected size"). `save` waits
    # for the checkpoint anyway, so nothing is lost.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._max_to_keep, create=not self._read_only,
        cleanup_tmp_directories=False,
        enable_async_checkpointing=jax.process_count() == 1,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=0, barrier_sync_key_prefix=prefix))
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _remove_leftovers(self, keep_pending_config: bool = False) -> None:
    """Deletes what an interrupted or failed save leaves: orbax's temporary directories and the
    pending config file. None of them is ever taken for a checkpoint; this frees their space."""
    with contextlib.suppress(OSError):
      for name in os.listdir(self.directory):
        path = os.path.join(self.directory, name)
        if TMP_MARK in name and os.path.isdir(path):
          shutil.rmtree(path, ignore_errors=True)
        elif ((name.startswith(_PENDING_CONFIG) and not keep_pending_config)
              or name == CONFIG_FILE + '.tmp'):
          _remove(path)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of all complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False,
           config: dict | None = None) -> bool:
    """Writes a checkpoint of `state` at `step` and waits until it is complete on disk.

    Saving a step that already has a checkpoint is a no-op (the loop may save the same step
    twice, e.g. periodically and again on a signal); saving a step older than the newest
    checkpoint is skipped with a warning unless `force`, in which case the newer ones become
    the oldest and are the first deleted by `max_to_keep`.

    All or nothing: if the save fails, orbax's background work is waited for, the temporary
    directory of the step is deleted, every complete checkpoint is kept (older ones are only
    deleted by `max_to_keep` after the new one is complete) and config_at_checkpoint.json is
    left unchanged; the Checkpointer stays usable (a later save may succeed). Only if orbax had
    completed the checkpoint before the error (e.g. one while deleting an older checkpoint) does
    the new step count, config file included.

    Args:
      step: the training step the state belongs to.
      state: a pytree of arrays (numpy scalar leaves are allowed).
      force: save even a step older than the newest checkpoint.
      config: if given, the run's config dict, written to config_at_checkpoint.json once the
        checkpoint is complete.

    Returns:
      True if a checkpoint was written, False if it was skipped.

    Raises:
      StorageError: the storage failed (full disk, quota, read-only, permission, I/O error);
        its message ends with the step a rerun resumes from (`resume_step`, the latest complete
        checkpoint, or none if there is none).
    """
    if self._read_only:
      raise ValueError(f'{self.directory} was opened read_only; cannot save step {step}')
    step = int(step)
    if step in self._manager.all_steps():
      logger.info('checkpoint for step %d already exists in %s; not saving again', step,
                  self.directory)
      return False
    latest = self._manager.latest_step()
    if not force and latest is not None and step < latest:
      self._warn_skipped(step)
      return False
    what = f'the checkpoint of step {step}'
    pending = os.path.join(self.directory, _PENDING_CONFIG)
    if not _primary():  # the config file is process 0's (see the module docstring)
      config = None
    if config is not None:
      # Written before the checkpoint, so that once it is complete the config only needs a
      # rename, which cannot fail for want of space.
      try:
        with storage_errors(what, self.directory, resume_step=latest):
          write_json_atomic(pending, {'step': step, 'config': config})
      except BaseException:
        _remove(pending + '.tmp', pending)
        raise
    try:
      with _quiet_orbax_storage_failures():
        try:
          saved = self._manager.save(step, args=ocp.args.StandardSave(_arrays(state)),
                                     force=force)
          self._manager.wait_until_finished()
        except Exception:
          self._recover()
          raise
    except Exception as e:  # pylint: disable=broad-except  (re-raised below unless storage)
      # Committed despite a later error (e.g. while deleting older checkpoints)?
      if config is not None and step in self._manager.all_steps():
        with contextlib.suppress(OSError):
          os.replace(pending, os.path.join(self.directory, CONFIG_FILE))
      if config is not None:
        _remove(pending)
      err = StorageError.from_exception(e, what, self.directory,
                                        resume_step=self._manager.latest_step())
      if err is None:
        raise
      raise err from e
    if not saved:
      if config is not None:
        _remove(pending)
      self._warn_skipped(step)
      return False
    if config is not None:
      with storage_errors(f'the config of checkpoint step {step}', self.directory,
                          resume_step=step):
        os.replace(pending, os.path.join(self.directory, CONFIG_FILE))
    return True

  def _warn_skipped(self, step: int) -> None:
    logger.warning('checkpoint for step %d not saved: it is older than the latest checkpoint '
                   '(step %s) in %s; pass force=True to save it anyway', step,
                   self._manager.latest_step(), self.directory)

  def _recover(self) -> None:
    """After a failed save: waits for all of orbax's background work, then deletes the
    temporary directory and reopens the directory (orbax's in-memory list of steps no longer
    matches the disk: it already dropped the steps `max_to_keep` would delete)."""
    for _ in range(8):  # each wait re-raises each stored background error at most once
      try:
        self._manager.close()
        break
      except Exception:  # pylint: disable=broad-except  (the save's own error, seen already)
        continue
    else:
      logger.warning('orbax did not shut down cleanly after a failed save in %s', self.directory)
    # Nothing is being written any more: remove the temporary directory, reread the steps.
    self._open(keep_pending_config=True)  # `save` decides what becomes of the config

  def restore(self, step: int, target: Any) -> Any:
    """Restores the checkpoint of `step` into the structure, dtypes and shardings of `target`.

    Args:
      step: a step listed by `all_steps()`.
      target: a pytree shaped like the saved state, e.g. a freshly initialised state (its arrays'
        shardings are those of the result, whatever the device layout at save time was) or
        `jax.eval_shape` of one (leaves without a sharding land on the first local device).

    Returns:
      The restored pytree, with the same tree structure as `target`.

    Raises:
      FileNotFoundError: no complete checkpoint for `step` (lists the available steps).
      ValueError: `target`'s structure or shapes do not match the checkpoint (orbax's message).
    """
    step = int(step)
    steps = self.all_steps()
    if step not in steps:
      raise FileNotFoundError(f'no complete checkpoint for step {step} in {self.directory}; '
                              f'available steps: {steps or "none"}')
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(_restore_target(target)))
    except ValueError as e:
      raise ValueError(f'cannot restore step {step} of {self.directory} into the given target '
                       f'(does the model/optimizer config match the checkpoint?): {e}') from e

  def saved_config(self) -> dict | None:
    """The config saved with the most recent `save(..., config=...)`, or None if none was."""
    path = os.path.join(self.directory, CONFIG_FILE)
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
    latest = self.latest_step()
    if saved['step'] != latest:
      logger.warning('%s belongs to step %d but the latest checkpoint is step %s', path,
                     saved['step'], latest)
    return saved['config']

  def close(self) -> None:
    """Waits for pending work and releases orbax's resources."""
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@contextlib.contextmanager
def _quiet_orbax_storage_failures() -> Iterator[None]:
  """While a save runs, drops the noise a storage failure makes in orbax's threads, which `save`
  raises as one StorageError line instead: orbax's log records (absl; a traceback per thread),
  asyncio's "Task exception was never retrieved" for the array writes abandoned after the first
  failed, and "Event loop is closed" from tensorstore completing such a write after orbax
  closed its event loop. Other records and unraisable exceptions pass unchanged."""
  loggers = [logging.getLogger('absl'), logging.getLogger('asyncio')]  # orbax logs via absl
  for lg in loggers:
    lg.addFilter(_drop_storage_failures)
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    gc.collect()  # the abandoned tasks are logged when collected: now, while filtered
    raise
  finally:
    sys.unraisablehook = previous_hook
    for lg in loggers:
      lg.removeFilter(_drop_storage_failures)


def _drop_storage_failures(record: logging.LogRecord) -> bool:
  if record.levelno < logging.WARNING:
    return True
  if record.exc_info and record.exc_info[1] is not None:
    return storage_errno(record.exc_info[1]) is None
  try:
    message = record.getMessage()
  except Exception:  # pylint: disable=broad-except  (a malformed record is not ours to judge)
    return True
  return storage_errno(ValueError(message)) is None


def _remove(*paths: str) -> None:
  """Deletes files if they exist; failures are ignored (what stays is removed on the next open,
  and the error being handled matters more)."""
  for path in paths:
    with contextlib.suppress(OSError):
      os.remove(path)


def _restore_target(tree: Any) -> Any:
  """The restore target: `_arrays(tree)` with every abstract leaf (jax.ShapeDtypeStruct) that
  has no sharding placed on the first local device. Without a sharding orbax would use the
  saved one, which fails on another device layout (a run saved on 4 devices read on 1)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
    return x
  return jax.tree.map(leaf, _arrays(tree))


def _arrays(tree: Any) -> Any:
  """Replaces numpy scalar leaves by 0-d numpy arrays (orbax cannot restore numpy scalars)."""
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, np.generic) else x, tree)
