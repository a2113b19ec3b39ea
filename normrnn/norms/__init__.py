"""The normalization schemes, selectable by name from one explicit table.

Each scheme file defines the site modules it uses and a `SITES` dict naming the module for the
input term, the recurrent term, the cell state, and the kernel transform (see `base.py` for the
shared call signature). Adding a scheme = one file + one line here; the parameterized tests pick
it up from this table.
"""
from __future__ import annotations

import dataclasses

from normrnn.norms import (base, batch, batch_input, cosine, layer, none, sequence, streaming,
                           weight)
from normrnn.norms.base import NormOptions, SiteNorm

__all__ = ['NORMS', 'Scheme', 'NormOptions', 'SiteNorm', 'get_scheme']


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Which module acts at each site. `kernel` transforms W_x and W_h before the matmul."""
  name: str
  input: type
  recurrent: type
  cell: type
  kernel: type

  @property
  def uses_batch_statistics(self) -> bool:
    """True if training normalizes with statistics of the current batch (needs batch >= 2)."""
    return any(cls in (batch.BatchStep, sequence.BatchSequence)
               for cls in (self.input, self.recurrent, self.cell))


def _scheme(name, module):
  return Scheme(name=name, **module.SITES)


NORMS: dict[str, Scheme] = {
    'none': _scheme('none', none),                       # baseline LSTM (Cooijmans --baseline)
    'batch': _scheme('batch', batch),                    # Cooijmans et al. 2016
    'batch_input': _scheme('batch_input', batch_input),  # Laurent et al. 2016
    'sequence': _scheme('sequence', sequence),           # Amodei et al. 2016 (Deep Speech 2)
    'layer': _scheme('layer', layer),                    # Ba et al. 2016
    'weight': _scheme('weight', weight),                 # Salimans & Kingma 2016
    'cosine': _scheme('cosine', cosine),                 # Luo et al. 2017
    'streaming': _scheme('streaming', streaming),        # Liao et al. 2016
}


def get_scheme(name: str) -> Scheme:
  try:
    return NORMS[name]
  except KeyError:
    raise ValueError(f'unknown normalization scheme {name!r}; valid names: '
                     f'{", ".join(NORMS)}') from None
