"""Build of normrnn's one compiled part, the optional C++ kernel model.kernel='cpu'
(normrnn/kernels/cpu_lstm.cc; everything else is in pyproject.toml).

`pip install -e .` compiles it into normrnn/kernels/_cpu_lstm*.so against the XLA FFI headers that
ship with jaxlib (a build requirement in pyproject.toml). It is an optional extension: without a
C++17 compiler the install still succeeds, and the kernel refuses with a one-line reason when a
config asks for it (normrnn/kernels/cpu_lstm.py).

Flags: -O3; -ffast-math at compile time only (it lets the compiler call glibc's vectorized tanh
and exp, libmvec; linking with it would switch the whole Python process to flush-to-zero), so
libmvec is linked on x86-64 Linux; -march=native, so the kernel is built for the installing
machine's CPU. To install once for a cluster of different CPUs, set NORMRNN_CPU_ARCH to a common
baseline before installing (e.g. NORMRNN_CPU_ARCH=x86-64-v3), or to '' for the compiler's default.
"""
import importlib.util
import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup


def _ffi_include() -> list[str]:
  spec = importlib.util.find_spec('jaxlib')
  if spec is None or not spec.submodule_search_locations:
    return []
  return [str(Path(p) / 'include') for p in spec.submodule_search_locations
          if (Path(p) / 'include' / 'xla' / 'ffi' / 'api' / 'ffi.h').exists()]


arch = os.environ.get('NORMRNN_CPU_ARCH', 'native')
x86_linux = sys.platform.startswith('linux') and platform.machine() in ('x86_64', 'AMD64')
cpu_lstm = Extension(
    'normrnn.kernels._cpu_lstm',
    sources=['normrnn/kernels/cpu_lstm.cc'],
    include_dirs=_ffi_include(),
    language='c++',
    extra_compile_args=['-std=c++17', '-O3', '-ffast-math']
    + ([f'-march={arch}'] if arch else []),
    extra_link_args=['-lmvec'] if x86_linux else [],
    optional=True,
)

setup(ext_modules=[cpu_lstm])
