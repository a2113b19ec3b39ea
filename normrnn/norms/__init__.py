"""The normalization schemes: one explicit registry of the `SCHEME` each scheme file declares.

Adding a scheme = one new file `normrnn/norms/<name>.py` ending in `SCHEME = Scheme(...)` (see
`scheme.py` for every field) + one line in `_BUILTIN` below + its numpy reference in the tests.
Everything else (config defaults and validation, reproduce rows, the benchmark's schemes, the
parameterized tests) reads this registry. Code outside the package can add a scheme at run time
with `register(SCHEME)` (README, "Adding a normalization scheme").
`compose(name, input=..., recurrent=..., cell=...)` builds a per-site scheme from registered ones
(BN-e* = `compose('batch', input='sequence')`; `compose.py`); composites are derived, never
registered.
"""
from __future__ import annotations

from normrnn.norms import (batch, batch_input, cosine, layer, none, sequence, streaming,
                           weight)
from normrnn.norms.base import SiteNorm
from normrnn.norms.compose import COMPOSABLE_SITES, compose, site_pairs, valid_at
from normrnn.norms.scheme import NormOptions, Option, Scheme

__all__ = ['NORMS', 'NormOptions', 'Option', 'Scheme', 'SiteNorm', 'get_scheme', 'register',
           'unregister', 'all_options', 'compose', 'valid_at', 'site_pairs', 'COMPOSABLE_SITES']

_BUILTIN = (
    none.SCHEME,          # baseline LSTM (Cooijmans et al. 2016, --baseline)
    batch.SCHEME,         # Cooijmans et al. 2016
    batch_input.SCHEME,   # Laurent et al. 2016
    sequence.SCHEME,      # Amodei et al. 2016 (Deep Speech 2)
    layer.SCHEME,         # Ba et al. 2016
    weight.SCHEME,        # Salimans & Kingma 2016
    cosine.SCHEME,        # Luo et al. 2017
    streaming.SCHEME,     # Liao et al. 2016
)

NORMS: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
  """Adds `scheme` to NORMS after checking its declaration; returns it.

  Raises:
    ValueError: a scheme of that name exists, the declaration is inconsistent, or one of its
      options has the name of another scheme's option with a different default.
  """
  if scheme.name in NORMS:
    raise ValueError(f'a scheme named {scheme.name!r} is already registered')
  scheme.check()
  known = all_options()
  for option in scheme.options:
    if option.name in ('name', 'gamma_init', 'eps', 'max_time_steps', 'stats_rate', 'popstats',
                       *COMPOSABLE_SITES):
      raise ValueError(f'scheme {scheme.name!r}: option {option.name!r} shadows a config field')
    other = known.get(option.name)
    if other is not None and other is not option:
      raise ValueError(f'scheme {scheme.name!r}: option {option.name!r} is already declared by '
                       'another scheme with a different definition; choose another name')
  NORMS[scheme.name] = scheme
  return scheme


def unregister(name: str) -> None:
  """Removes a scheme added with `register` (tests use it to clean up)."""
  if name in {s.name for s in _BUILTIN}:
    raise ValueError(f'{name!r} is a built-in scheme')
  NORMS.pop(name, None)


def all_options() -> dict[str, Option]:
  """Every registered scheme's own options by name (the `model.norm.<option>` config fields)."""
  out = {}
  for scheme in NORMS.values():
    for option in scheme.options:
      out.setdefault(option.name, option)
  return out


def get_scheme(name: str) -> Scheme:
  try:
    return NORMS[name]
  except KeyError:
    raise ValueError(f'unknown normalization scheme {name!r}; valid names: '
                     f'{", ".join(NORMS)}') from None


for _scheme in _BUILTIN:
  register(_scheme)
del _scheme
