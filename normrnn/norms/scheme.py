"""What a normalization scheme declares about itself (`Scheme`), its own options (`Option`) and
the option values a model is built with (`NormOptions`).

Every scheme file ends with one `SCHEME = Scheme(...)`; `normrnn.norms` lists those objects in
its registry, and every other table of the code base (config defaults and validation, the
reproduce rows, the benchmark's scheme list, the test parameterization) is read from there.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

# Sites a cell may ask a scheme for (see norms/base.py for what each one is).
NORM_SITES = ('input', 'recurrent', 'cell', 'sum')
# The sites each cell of normrnn.cells normalizes (a scheme supporting a cell must define them).
CELL_SITES = {'lstm': ('input', 'recurrent', 'cell'), 'tanh_rnn': ('sum',),
              'gru': ('input', 'recurrent')}


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of a scheme, declared on the site class that reads it.

  Attributes:
    name: the config field (`model.norm.<name>`) and the `NormOptions` keyword. Must be unique
      over all registered schemes.
    default: the value written into every config and used by the Python API when not given.
    valid: a human-readable range, printed when a value is refused ('in [0, 1]').
    check: value -> bool; True if the value is valid.
    doc: what the option means.
  """
  name: str
  default: Any
  valid: str
  check: Callable[[Any], bool]
  doc: str


class NormOptions:
  """The option values of one model: the common `gamma_init` and `eps`, plus any scheme options
  by keyword (e.g. `streaming_mix=0.5`). Hashable (it is an attribute of flax modules).

    NormOptions(gamma_init=0.1, eps=1e-5)                      # BN: no further options
    NormOptions(gamma_init=0.1, eps=1e-5, streaming_mix=0.5)   # streaming norm's own option

  A site reads its options with `SiteNorm.option(name)`, which falls back to the option's
  declared default when the value was not given here.
  """

  def __init__(self, gamma_init: float, eps: float = 1e-5, **extra):
    if not gamma_init > 0:
      raise ValueError(f'norm gamma_init must be > 0, got {gamma_init} (the paper uses 0.1 for BN; '
                       'values <= 0.01 were unstable).')
    if not eps > 0:
      raise ValueError(f'norm eps must be > 0, got {eps}.')
    object.__setattr__(self, 'gamma_init', float(gamma_init))
    object.__setattr__(self, 'eps', float(eps))
    object.__setattr__(self, 'extra', tuple(sorted(extra.items())))

  def __setattr__(self, name, value):
    raise dataclasses.FrozenInstanceError(f'NormOptions is immutable (cannot set {name})')

  def get(self, name: str, default=None):
    for key, value in self.extra:
      if key == name:
        return value
    return default

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    value = self.get(name, _MISSING)
    if value is _MISSING:
      raise AttributeError(f'NormOptions has no option {name!r}; given: '
                           f'gamma_init, eps{"".join(", " + k for k, _ in self.extra)}')
    return value

  def _key(self):
    return (self.gamma_init, self.eps, self.extra)

  def __eq__(self, other):
    return isinstance(other, NormOptions) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __repr__(self):
    extra = ''.join(f', {k}={v!r}' for k, v in self.extra)
    return f'NormOptions(gamma_init={self.gamma_init!r}, eps={self.eps!r}{extra})'


_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Everything the rest of normrnn needs to know about one normalization scheme.

  Attributes:
    name: registry key and config value (`model.norm.name`).
    label: display name of an LSTM with this scheme ('BN-LSTM'), used in tables and figures.
    paper: citation with equation, e.g. 'Cooijmans et al. 2016, eqs. 6-8'.
    gamma_init: default initial gain written into configs (explicit there: it changes the
      science). For schemes without a gain it is unused but still has to be > 0.
    batch_statistics: True if training normalizes with the current batch's statistics, so that
      batch size 1 is refused in training and the batch-statistics evaluation mode
      (`val_batch/`) is meaningful.
    input, recurrent, cell: site modules for the LSTM's input term W_x x_t, recurrent term
      W_h h_{t-1} and cell state c_t (subclasses of `base.SiteNorm`); None where the scheme does
      not act on an LSTM. The GRU uses the input and recurrent sites only.
    sum: site module for a tanh RNN's summed pre-activation, or None if the scheme has no tanh-RNN
      form.
    kernel: module transforming W_x and W_h before the matmul (weight / cosine norm), identity
      otherwise.
    cells: the cells of `normrnn.cells.CELLS` this scheme supports: the one place that says
      which scheme has an LSTM, tanh-RNN or GRU form (`check` verifies the sites each needs).
    parts: for a per-site composite (`normrnn.norms.compose`), the (site, scheme name) pairs
      whose modules replaced the named scheme's; () for a registered scheme.
  """
  name: str
  label: str
  paper: str
  gamma_init: float
  batch_statistics: bool
  input: type | None
  recurrent: type | None
  cell: type | None
  kernel: type
  sum: type | None = None
  cells: tuple[str, ...] = ('lstm',)
  parts: tuple[tuple[str, str], ...] = ()

  def site(self, name: str) -> type:
    """The module class at site `name`; a clear error if the scheme has none there."""
    cls = getattr(self, name) if name in NORM_SITES else None
    if cls is None:
      raise ValueError(f'scheme {self.name!r} has no module for the {name!r} site')
    return cls

  def site_classes(self) -> tuple[type, ...]:
    return tuple(dict.fromkeys(c for c in (self.input, self.recurrent, self.cell, self.sum)
                               if c is not None))

  @property
  def options(self) -> tuple[Option, ...]:
    """The scheme's own options: the OPTIONS of its site classes, in order, no duplicates."""
    out = {}
    for cls in self.site_classes():
      for option in getattr(cls, 'OPTIONS', ()):
        out.setdefault(option.name, option)
    return tuple(out.values())

  def make_options(self, gamma_init: float | None = None, eps: float = 1e-5,
                   **values) -> NormOptions:
    """NormOptions with this scheme's defaults for everything not given (validated)."""
    known = {o.name: o for o in self.options}
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ValueError(f'scheme {self.name!r} has no option(s) {", ".join(unknown)}; its '
                       f'options: {", ".join(known) or "none"}')
    filled = {name: values.get(name, option.default) for name, option in known.items()}
    for name, value in filled.items():
      if not known[name].check(value):
        raise ValueError(f'norm {name} must be {known[name].valid}, got {value!r}')
    return NormOptions(self.gamma_init if gamma_init is None else gamma_init, eps, **filled)

  def check(self) -> None:
    """Raises ValueError if the declaration is inconsistent (run by `norms.register`)."""
    if not self.name.isidentifier():
      raise ValueError(f'scheme name {self.name!r} must be a Python identifier')
    if not (isinstance(self.gamma_init, (int, float)) and math.isfinite(self.gamma_init)
            and self.gamma_init > 0):
      raise ValueError(f'scheme {self.name!r}: gamma_init must be > 0, got {self.gamma_init}')
    needs = CELL_SITES
    for cell in self.cells:
      for site in needs.get(cell, ()):
        if getattr(self, site) is None:
          raise ValueError(f'scheme {self.name!r} lists cell {cell!r} but has no {site!r} site')
    uses = any(getattr(cls, 'batch_statistics', False) for cls in self.site_classes())
    if uses != self.batch_statistics:
      raise ValueError(f'scheme {self.name!r} declares batch_statistics={self.batch_statistics} '
                       f'but its site modules {"do" if uses else "do not"} use batch statistics')
