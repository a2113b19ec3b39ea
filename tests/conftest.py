"""Test settings: CPU only, 4 forced host devices (for the data-parallel tests), wandb off, and one
persistent JAX compilation cache for the whole session.

The cache: the suite compiles the same programs many times (every `train_and_evaluate` of the
same smoke config builds new jitted functions; every `python -m normrnn.train` subprocess starts
cold), and loading an executable from disk costs a fraction of compiling it. The directory is made
once per session by the process that loads this file first (pytest, or xdist's controller before
it starts the workers), inherited through the environment by the workers and every subprocess the
tests start, and removed at exit. A cache entry is keyed by the program, the compile options, the
devices and the jax/XLA versions, so a hit runs the executable that compiling would have produced.
JAX_COMPILATION_CACHE_MAX_SIZE turns on the cache's file lock (reads and writes of concurrent
processes do not interleave). A JAX_COMPILATION_CACHE_DIR set by the caller is used as is.
"""
import atexit
import importlib.util
import os
import shutil
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('WANDB_MODE', 'disabled')
os.environ.setdefault('WANDB_SILENT', 'true')
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4').strip()

# Without filelock (requirements.txt) JAX cannot lock the cache's files: then no shared cache.
_LOCKS = importlib.util.find_spec('filelock') is not None
if _LOCKS and not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  _CACHE = tempfile.mkdtemp(prefix='normrnn-tests-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Programs that compile in under 0.1 s (the op-by-op dispatches of un-jitted code, thousands in
# the numerical tests) are left out: writing and scanning their entries cost more than they save.
if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
  os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(8 << 30))
