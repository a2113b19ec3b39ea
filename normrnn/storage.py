"""Storage failures as one-line errors: a full disk, an exceeded quota, a read-only or unwritable
run directory, an I/O error.

Such failures surface in many shapes: an OSError from Python's own file calls, or, from orbax's
array writes (tensorstore, C++), a ValueError whose text ends in "[os_error_code='28']", often
raised again from a background thread or chained under another exception. `storage_errno` finds
the OS error number in any of them; `StorageError` turns it into one line that names what was
being written, where, the OS reason and what to do, e.g.

  cannot write the checkpoint of step 600 in /runs/a/checkpoints: No space left on device. Free
  space on the filesystem mounted at /runs (0.3 MB free of 20.0 GB) and rerun the same command:
  it resumes from the checkpoint at step 500.

(one line; wrapped here). Usage:

  check_writable(workdir)                  # before any expensive work: fails in milliseconds
  with storage_errors('results.json', path, resume_step=ckpt.latest_step):
    write_json_atomic(path, results)
"""
from __future__ import annotations

import contextlib
import errno as errno_lib
import getpass
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator

# The OS errors that mean "this storage cannot take the write" rather than a bug in the caller.
STORAGE_ERRNOS = frozenset({errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EROFS,
                            errno_lib.EACCES, errno_lib.EPERM, errno_lib.EIO})

# tensorstore (orbax's array writer) reports OS errors as absl Status text in a ValueError, e.g.
# 'RESOURCE_EXHAUSTED: ... Failed to write 106562 bytes to file 4: No space left on device
# [os_error_code='28']'; an OSError turned into text (str(e), a log message) reads '[Errno 28] ...'.
_OS_ERROR_CODE = re.compile(r"os_error_code\s*=\s*'?(\d+)|\[Errno (\d+)\]")


class StorageError(OSError):
  """A write failed because of the storage (full, over quota, read-only, no permission, I/O).

  `str(e)` is one line: what was being written, the path, the OS reason and what to do. The
  attributes are those of OSError (errno, strerror, filename = the path) plus `what`,
  `resume_step` (the checkpoint step a rerun resumes from, or None) and `free_bytes` (free space
  on the path's filesystem when the error was made, or None if unknown).
  """

  def __init__(self, what: str, path: str, errno: int, *, resume_step: int | None = None,
               reason: str | None = None):
    """Args:
      what: what was being written, e.g. 'the checkpoint of step 600' or 'results.json'.
      path: the file or directory being written (made absolute).
      errno: the OS error number (errno.ENOSPC, ...).
      resume_step: the step of the last complete checkpoint, if known.
      reason: the OS reason; os.strerror(errno) if None.
    """
    path = os.path.abspath(os.fspath(path))
    super().__init__(errno, _one_line(reason or os.strerror(errno)), path)
    self.what = _one_line(what)
    self.resume_step = None if resume_step is None else int(resume_step)
    self._mount, self.free_bytes, self._total_bytes = _filesystem(path)

  def with_resume_step(self, step: int | None) -> StorageError:
    """Sets the step a rerun resumes from (None: unknown) and returns this same error, so a
    caller that knows it can `raise err.with_resume_step(ckpt.latest_step())`."""
    self.resume_step = None if step is None else int(step)
    return self

  @classmethod
  def from_exception(cls, exc: BaseException, what: str, path: str, *,
                     resume_step: int | None = None) -> StorageError | None:
    """The StorageError for `exc` if it (or an exception it was raised from) is a storage
    failure, else None. A StorageError is returned as is (its resume step filled in if unset)."""
    if isinstance(exc, StorageError):
      if exc.resume_step is None and resume_step is not None:
        exc.with_resume_step(resume_step)
      return exc
    code = storage_errno(exc)
    if code is None:
      return None
    return cls(what, path, code, resume_step=resume_step)

  def __str__(self) -> str:
    return (f'cannot write {self.what} in {self.filename}: {self.strerror}. '
            f'{self._advice()}{self._resume()}.')

  def __reduce__(self):  # picklable despite the non-OSError signature (e.g. across processes)
    return (_rebuild, (type(self), self.what, self.filename, self.errno, self.resume_step,
                       self.strerror, self._mount, self.free_bytes, self._total_bytes))

  def _advice(self) -> str:
    fs = (f'the filesystem mounted at {self._mount}' if self._mount
          else f'the filesystem of {self.filename}')
    if self.errno == errno_lib.ENOSPC:
      return f'Free space on {fs}{self._space()} and rerun the same command'
    if self.errno == errno_lib.EDQUOT:
      return (f'Free space within your disk quota on {fs}{self._space()} (or have the quota '
              'raised) and rerun the same command')
    if self.errno == errno_lib.EROFS:
      return (f'{fs[0].upper()}{fs[1:]} is read-only: remount it read-write, or move the run '
              'directory to a writable filesystem, and rerun the same command')
    if self.errno in (errno_lib.EACCES, errno_lib.EPERM):
      return (f'Give user {_user()} write permission there (or choose another run directory) '
              'and rerun the same command')
    if self.errno == errno_lib.EIO:
      return (f'The device behind {fs} reported an I/O error: check it (e.g. dmesg), then '
              'rerun the same command')
    return 'Choose a writable directory (or fix this path) and rerun'

  def _space(self) -> str:
    if self.free_bytes is None:
      return ''
    total = f' of {_size(self._total_bytes)}' if self._total_bytes else ''
    return f' ({_size(self.free_bytes)} free{total})'

  def _resume(self) -> str:
    if self.resume_step is None:
      return ''
    return f': it resumes from the checkpoint at step {self.resume_step}'


def _rebuild(cls, what, path, errno, resume_step, reason, mount, free, total):
  err = cls(what, path, errno, resume_step=resume_step, reason=reason)
  err._mount, err.free_bytes, err._total_bytes = mount, free, total  # as when it was raised
  return err


def storage_errno(exc: BaseException) -> int | None:
  """The OS error number if `exc` is a storage failure (an errno in STORAGE_ERRNOS), else None.

  Looks at `exc`, the exceptions it was raised from or during (__cause__, __context__) and the
  members of exception groups; reads OSError.errno, and in the text of other exceptions
  tensorstore's "[os_error_code='N']" or an OSError's "[Errno N]".
  """
  seen = set()
  todo = [exc]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
      return e.errno
    if not isinstance(e, OSError):  # an OSError's text never hides a second, different errno
      match = _OS_ERROR_CODE.search(str(e))
      if match and int(match.group(match.lastindex)) in STORAGE_ERRNOS:
        return int(match.group(match.lastindex))
    todo.extend(getattr(e, 'exceptions', None) or ())  # ExceptionGroup
    todo.extend((e.__cause__, e.__context__))
  return None


_NOT_GIVEN: Any = object()  # storage_errors(resume_step=...) not given


@contextlib.contextmanager
def storage_errors(what: str, path: str, *,
                   resume_step: int | None | Callable[[], int | None] = _NOT_GIVEN
                   ) -> Iterator[None]:
  """Turns a storage failure raised inside the block into a StorageError (raised from it);
  every other exception passes unchanged.

  Args:
    what: what the block writes, e.g. 'results.json' or 'metrics'.
    path: the file or directory it writes.
    resume_step: the step of the checkpoint a rerun resumes from (None: none, a rerun starts
      afresh), or a function returning it, called only on failure (e.g. `ckpt.latest_step`,
      right even if the block completed a checkpoint before it failed). If given, it also
      replaces the resume step of a StorageError raised inside (e.g. by the Checkpointer of the
      best model, whose own latest step is not where a rerun resumes); if not, that is kept.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (orbax wraps OS errors in ValueError)
    if not isinstance(e, StorageError) and storage_errno(e) is None:
      raise
    given = resume_step is not _NOT_GIVEN
    step = (resume_step() if callable(resume_step) else resume_step) if given else None
    if isinstance(e, StorageError):
      if given:
        e.with_resume_step(step)
      raise
    raise StorageError.from_exception(e, what, path, resume_step=step) from e


def check_writable(directory: str, *, what: str = 'files') -> str:
  """Creates `directory` if needed and checks that a file can be created, written and deleted
  in it; raises StorageError at once if not (read-only filesystem, no permission, a file in the
  way, a full disk).

  Returns:
    The directory as an absolute path.
  """
  path = os.path.abspath(os.fspath(directory))
  if os.path.exists(path) and not os.path.isdir(path):
    raise StorageError(what, path, errno_lib.ENOTDIR, reason='it is a file, not a directory')
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=path)
    try:
      os.write(fd, b'ok\n')  # a full filesystem may still create the (empty) file
    finally:
      os.close(fd)
      os.unlink(probe)
  except OSError as e:
    raise StorageError(what, path, e.errno or errno_lib.EIO, reason=e.strerror) from e
  return path


def _filesystem(path: str) -> tuple[str | None, int | None, int | None]:
  """(mount point, free bytes, total bytes) of the filesystem holding `path` or its nearest
  existing ancestor; None for what cannot be found out (never raises)."""
  try:
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
      existing = os.path.dirname(existing)
    mount = os.path.realpath(existing)
    while not os.path.ismount(mount):
      mount = os.path.dirname(mount)
    usage = shutil.disk_usage(existing)
    return mount, usage.free, usage.total
  except (OSError, ValueError):
    return None, None, None


def _size(n: int) -> str:
  if n >= 1e9:
    return f'{n / 1e9:.1f} GB'
  return f'{n / 1e6:.1f} MB' if n >= 1e6 else f'{n / 1e3:.0f} kB'


def _user() -> str:
  try:
    return getpass.getuser()
  except Exception:  # pylint: disable=broad-except  (no passwd entry, e.g. in a container)
    return str(os.getuid())


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())
