"""Files on disk: the error type, checksums, and a download that never hangs.

Every loader first looks in the directory the user gave (`data.dir`). Nothing is downloaded unless
the config says `download=True`; without it a missing file is an immediate `DataError` that names
the file, the directory and the URL, so an offline machine fails in milliseconds rather than after
minutes of retries.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import threading
import urllib.parse
from pathlib import Path

_CHUNK = 1 << 20


class DataError(ValueError):
  """A data file or data setting is unusable; the message names the file and the fix."""


def sha256_of(path) -> str:
  """Hex SHA-256 of a file's bytes."""
  return _digest(path, 'sha256')


def sha1_of(path) -> str:
  """Hex SHA-1 of a file's bytes (only for sources that publish SHA-1 alone, e.g. text8.zip)."""
  return _digest(path, 'sha1')


def _digest(path, algorithm: str) -> str:
  h = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      h.update(chunk)
  return h.hexdigest()


def provenance(paths) -> list[dict]:
  """[{'file', 'bytes', 'sha256'}] for each path: what a run actually read, for `describe()`."""
  return [{'file': str(Path(p)), 'bytes': Path(p).stat().st_size, 'sha256': sha256_of(p)}
          for p in paths]


def missing_error(names, directory, url: str, how: str | None = None) -> DataError:
  """The error for files that are absent while `download=False`: what to put where, from where."""
  names = [names] if isinstance(names, str) else list(names)
  where = Path(directory)
  state = '' if where.is_dir() else ' (the directory does not exist yet)'
  how = how or f'download from {url}'
  return DataError(
      f'missing {", ".join(names)} in {where}{state}. Put {"it" if len(names) == 1 else "them"} '
      f'there ({how}), or set data.download=True on a machine with internet access.')


def fetch(url: str, dest, sha256: str | None, *, download: bool, timeout_s: float = 20,
          sha1: str | None = None, size: int | None = None) -> Path:
  """Returns `dest`, downloading it from `url` first if it is absent and `download` is True.

  An existing `dest` is returned as is (its content is the caller's to validate). The download
  goes to a temporary file in the same directory, is checked against every given checksum
  (`sha256`, `sha1`, byte `size`; pass `sha256=None` only where no SHA-256 is published), and is
  renamed into place atomically, so an interrupted or corrupt download never leaves `dest`.
  Network failures (refused, unreachable, DNS, timeout) raise `DataError` within about
  `timeout_s` seconds: every socket operation has that timeout and name resolution is bounded too.
  """
  dest = Path(dest)
  if dest.exists():
    return dest
  if not download:
    raise missing_error(dest.name, dest.parent, url)
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f'cannot create {dest.parent} to download {dest.name} into ({e}); set '
                    'data.dir to a writable directory.') from e
  fd, tmp_name = tempfile.mkstemp(prefix=f'.{dest.name}.', suffix='.part', dir=dest.parent)
  tmp = Path(tmp_name)
  try:
    with os.fdopen(fd, 'wb') as out:
      digests = _download(url, out, dest, timeout_s)
    got_size = tmp.stat().st_size
    for name, expected, got in (('sha256', sha256, digests['sha256']),
                                ('sha1', sha1, digests['sha1']),
                                ('size in bytes', size, got_size)):
      if expected is not None and str(expected).lower() != str(got).lower():
        raise DataError(
            f'download of {dest.name} from {url} has the wrong {name}: expected {expected}, '
            f'got {got}. The downloaded file was deleted; retry, or put a correct copy of '
            f'{dest.name} in {dest.parent}.')
    os.replace(tmp, dest)
  finally:
    if tmp.exists():
      tmp.unlink()
  return dest


def _download(url: str, out, dest: Path, timeout_s: float) -> dict:
  """Streams `url` into the open file `out`; returns {'sha256', 'sha1'} of the bytes."""
  import urllib.request  # Imported here: only downloads need it.
  offline = (f'could not download {dest.name} from {url}: {{}}. Offline? Put {dest.name} in '
             f'{dest.parent} and run again.')
  host = urllib.parse.urlsplit(url).hostname
  if host:
    require_host(host, timeout_s=timeout_s, message=offline)
  h256, h1 = hashlib.sha256(), hashlib.sha1()
  try:
    response = urllib.request.urlopen(url, timeout=timeout_s)
  except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError.
    raise DataError(offline.format(e)) from e
  with response:
    while True:
      try:
        chunk = response.read(_CHUNK)
      except (OSError, http.client.HTTPException) as e:  # Timeouts, resets, cut transfers.
        raise DataError(offline.format(e)) from e
      if not chunk:
        break
      out.write(chunk)  # A full disk raises its own OSError, not "offline".
      h256.update(chunk)
      h1.update(chunk)
  return {'sha256': h256.hexdigest(), 'sha1': h1.hexdigest()}


def require_host(host: str, *, timeout_s: float, message: str,
                 port: int | None = None) -> None:
  """Raises DataError(message.format(reason)) unless `host` resolves (and `port` accepts a TCP
  connection, if given) within `timeout_s` seconds.

  Name resolution is not covered by socket timeouts, so it runs in a daemon thread that is
  abandoned after `timeout_s`.
  """
  result = {}

  def resolve():
    try:
      result['addresses'] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
      result['error'] = e

  worker = threading.Thread(target=resolve, daemon=True)
  worker.start()
  worker.join(timeout_s)
  if 'addresses' not in result:
    reason = result.get('error', f'resolving {host} took more than {timeout_s} s')
    raise DataError(message.format(reason))
  if port is not None:
    try:
      socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
      raise DataError(message.format(e)) from e
