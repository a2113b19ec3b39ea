"""Loading experiment config files by path: `configs/<task>.py[:<arg>]` plus `--config.a.b=v`
overrides, as `python -m normrnn.train` reads them, for every other command that needs a
config (sweeps, reproduce tables, the quickstart).

Config files live outside the package (top-level configs/), so they are imported by path, not as
a package; a file that builds on another loads it with `load_sibling`.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
from types import ModuleType

from normrnn.config.schema import ConfigError


def load_config_module(path: str) -> ModuleType:
  """Imports a config file by path (cached per absolute path)."""
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path} does not exist')
  name = '_normrnn_config_' + hashlib.sha1(path.encode()).hexdigest()[:12]
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def load_sibling(this_file: str, name: str) -> ModuleType:
  """The config file `name`.py in the directory of `this_file` (pass `__file__`)."""
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(this_file)),
                                         f'{name}.py'))


def split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/smnist.py:norm=batch' -> ('configs/smnist.py', 'norm=batch')."""
  path, sep, arg = spec.partition(':')
  return path, (arg if sep else None)


def parse_value(text: str, current):
  """A `--config.k=text` value as ml_collections' flags read it, typed like `current`."""
  if isinstance(current, bool):
    if text.lower() in ('true', '1'):
      return True
    if text.lower() in ('false', '0'):
      return False
    raise ValueError(f'{text!r} is not a bool')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, (tuple, list)):
    value = ast.literal_eval(text)
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  return text


def apply_overrides(config, overrides: dict) -> None:
  """Sets {dotted key: value or text} on a (locked) config; text is parsed like the flags.

  Raises:
    ConfigError: an unknown field (with the valid fields of its section) or a value that does
      not parse as the field's type.
  """
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for i, part in enumerate(parents):
      if part not in node:
        raise ConfigError(f'--config.{dotted}: config.{".".join(parents[:i]) or ""} has no '
                          f'section {part!r}; valid: {", ".join(sorted(node.keys()))}')
      node = node[part]
    if leaf not in node:
      raise ConfigError(f'--config.{dotted}: unknown field {leaf!r}; valid fields of '
                        f'config.{".".join(parents)}: {", ".join(sorted(node.keys()))}')
    if isinstance(value, str) and not isinstance(node[leaf], str):
      try:
        value = parse_value(value, node[leaf])
      except (ValueError, SyntaxError):
        raise ConfigError(f'--config.{dotted}={value!r} is not a valid '
                          f'{type(node[leaf]).__name__}') from None
    with config.unlocked():
      node[leaf] = value


def parse_override_flags(flags) -> dict:
  """['--config.a.b=1', ...] -> {'a.b': '1', ...}."""
  out = {}
  for flag in flags:
    body = flag[len('--config.'):] if flag.startswith('--config.') else None
    key, sep, value = (body or '').partition('=')
    if not body or not sep or not key:
      raise ConfigError(f'{flag!r} is not a --config.<field>=<value> override')
    out[key] = value
  return out


def parse_args_and_overrides(parser, argv=None):
  """`parser.parse_known_args(argv)` for a command that passes --config.<key>=<value> overrides
  through to the runs it launches (scripts/sweep.py, experiments/reproduce.py): (args, the
  override flags in order). Any other unknown argument is a usage error that names it."""
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith('--config.')]
  if bad:
    parser.error(f'unrecognized arguments: {" ".join(bad)} (only --config.<key>=<value> '
                 'overrides are passed through)')
  return args, extra


def load_config(spec: str, overrides: dict | None = None):
  """The locked config of `configs/<task>.py[:<arg>]` with `overrides` applied."""
  path, arg = split_spec(spec)
  module = load_config_module(path)
  config = module.get_config(arg)
  if overrides:
    apply_overrides(config, overrides)
  return config


def load_sweep(spec: str) -> list[dict]:
  """The `get_sweep(arg)` points of a config file: [{dotted key: value}, ...]."""
  path, arg = split_spec(spec)
  module = load_config_module(path)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'{path} defines no get_sweep(); nothing to sweep')
  return module.get_sweep(arg)
