"""Per-site schemes: a registered scheme with the module of some sites taken from other schemes.

Cooijmans et al. (2016), "Recurrent Batch Normalization", arXiv:1603.09025, sec. 5.4, BN-e*:
the input term is normalized with sequence-wise statistics (over the batch and all valid time
steps, padding masked, as Deep Speech 2) to avoid the bias zero-padding puts into per-step
statistics, while the recurrent term and the cell keep per-step statistics (eqs. 6-8):

  (g, f, i, o) = BN_step(W_h h_{t-1}; gamma_h, 0) + BN_seq(W_x x_t; gamma_x, 0) + b
  c_t          = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
  h_t          = sigma(o) * tanh(BN_step(c_t; gamma_c, beta_c))

that is `compose('batch', input='sequence')` ('batch[input=sequence]'). BN-e** is the same cell in
a bidirectional encoder whose reverse pass reverses only the valid prefix
(`normrnn.recurrent.Recurrent(reverse=True)`).

Rules (docs/method.md, "Per-site schemes"), checked by `site_refusal`:
  * a site's module comes from the scheme named there, every other field from the named scheme:
    gain `gamma_init` (one gain init for all sites, as for every scheme), kernel transform;
  * one kernel transform per cell: weight and cosine norm act through a transform of W_x and W_h
    (cosine's site modules divide by |x| and are only a cosine with its unit-norm kernel), so the
    input and recurrent sites may only take modules of schemes with the named scheme's kernel
    transform. The cell site has no kernel and takes any scheme's cell module;
  * a scheme that does not act at a site (its module there is the baseline's pass-through
    `none.Identity`, e.g. `sequence` at the recurrent site) is refused there: name `none` for no
    normalization, so `recurrent=sequence` cannot silently mean "nothing";
  * a module that needs the whole sequence (sequence-wise BN) only at the input site;
  * the composite supports the cells of the named scheme that every site's scheme supports, minus
    the tanh RNN (one `sum` site: nothing to mix) and, when the cell site is given, the GRU (it has
    no cell site, so the choice would be silently ignored).
Per-sequence state (streaming norm) is kept per site in the carry (`carry['norm'][site]`), so a
stateful module works at any site of a composite.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from normrnn.norms import none
from normrnn.norms.scheme import CELL_SITES, Scheme

# The sites a composite may mix (the LSTM's; the GRU uses the first two).
COMPOSABLE_SITES = ('input', 'recurrent', 'cell')
_KERNEL_SITES = ('input', 'recurrent')


def _registry():
  # Imported here: normrnn.norms imports this module while it builds the registry.
  from normrnn.norms import NORMS, get_scheme  # pylint: disable=g-import-not-at-top
  return NORMS, get_scheme


def site_refusal(named: Scheme, site: str, other: Scheme) -> str | None:
  """Why `other`'s module cannot sit at `site` of `named` (None if it can)."""
  if other.name == named.name:
    return None
  module = getattr(other, site)
  if module is None:
    return f'{other.name!r} has no {site} module'
  if module.needs_whole_sequence and site != 'input':
    return f"{other.name!r} needs the whole sequence, which only the input site has"
  if module is none.Identity and other.name != 'none':
    return f"{other.name!r} does not normalize the {site} site (use 'none' for nothing there)"
  if site in _KERNEL_SITES and other.kernel is not named.kernel:
    return (f"{other.name!r} and {named.name!r} transform the weights differently (one kernel "
            'transform per cell)')
  return None


def valid_at(name: str, site: str) -> tuple[str, ...]:
  """The registered schemes whose `site` module may replace that of scheme `name`."""
  norms, get_scheme = _registry()
  if site not in COMPOSABLE_SITES:
    raise ValueError(f'unknown site {site!r}; sites: {", ".join(COMPOSABLE_SITES)}')
  named = get_scheme(name)
  return tuple(other for other, scheme in norms.items()
               if site_refusal(named, site, scheme) is None)


def site_pairs(sites: Mapping[str, str] | Iterable[tuple[str, str]] | None
               ) -> tuple[tuple[str, str], ...]:
  """Canonical (site, scheme name) pairs, in COMPOSABLE_SITES order, empty names dropped.

  Accepts a mapping {'input': 'sequence'} or pairs (('input', 'sequence'),), as `RNNSpec.sites`
  and `NormRNN.sites` do; a name of None or '' means the named scheme's own module.
  """
  items = list((sites or {}).items()) if isinstance(sites, Mapping) else list(sites or ())
  out = {}
  for item in items:
    if not (isinstance(item, tuple) and len(item) == 2):
      raise ValueError(f'sites must be (site, scheme name) pairs, got {item!r}')
    site, scheme = item
    scheme = '' if scheme is None else scheme
    if site not in COMPOSABLE_SITES:
      raise ValueError(f'unknown site {site!r}; sites: {", ".join(COMPOSABLE_SITES)}')
    if site in out:
      raise ValueError(f'site {site!r} given twice')
    if not isinstance(scheme, str):
      raise ValueError(f'the scheme at site {site!r} must be a scheme name, got {scheme!r}')
    if scheme:
      out[site] = scheme
  return tuple((site, out[site]) for site in COMPOSABLE_SITES if site in out)


def _short(label: str) -> str:
  """'sequence-BN LSTM' -> 'sequence-BN', 'BN-LSTM' -> 'BN', 'LSTM' -> 'none'."""
  for suffix in (' LSTM', '-LSTM'):
    if label.endswith(suffix):
      return label[:-len(suffix)]
  return 'none' if label == 'LSTM' else label


def compose(name: str, input: str | None = None,  # pylint: disable=redefined-builtin
            recurrent: str | None = None, cell: str | None = None) -> Scheme:
  """Scheme `name` with the module of each given site taken from the scheme given there.

    compose('batch', input='sequence')   # BN-e*: 'batch[input=sequence]',
                                         # label 'BN-LSTM (input: sequence-BN)'

  None or '' (and the named scheme itself, or a scheme with the same module there) leave a site
  as it is; with nothing left to replace the named scheme itself is returned. The composite's
  name and label are derived ('batch[input=sequence]'), its paper is the named scheme's citation
  followed by each site's, `batch_statistics` and `options` follow from its site modules, gain
  and kernel transform are the named scheme's (module docstring: the rules).

  Raises:
    ValueError: an unknown scheme name, or a scheme that cannot sit at a site (the message lists
      the valid ones for that site), or a combination no cell supports.
  """
  norms, get_scheme = _registry()
  named = get_scheme(name)
  replaced = {}
  for site, other_name in site_pairs(dict(input=input, recurrent=recurrent, cell=cell)):
    other = norms.get(other_name)
    reason = ('no scheme has that name' if other is None
              else site_refusal(named, site, other))
    if reason is not None:
      raise ValueError(
          f'{site}={other_name!r} is not valid with scheme {name!r}: {reason}; valid at the '
          f'{site} site: {", ".join(valid_at(name, site))}')
    if getattr(other, site) is not getattr(named, site):
      replaced[site] = other
  if not replaced:
    return named
  modules = {site: getattr(named, site) for site in COMPOSABLE_SITES}
  modules.update({site: getattr(other, site) for site, other in replaced.items()})
  cells = tuple(
      c for c in named.cells
      if c != 'tanh_rnn' and not (c == 'gru' and 'cell' in replaced)
      and all(c in other.cells for other in replaced.values())
      and all(modules[s] is not None for s in CELL_SITES[c]))
  composite = f'{name}[{",".join(f"{site}={other.name}" for site, other in replaced.items())}]'
  if not cells:
    raise ValueError(f'no cell supports {composite} (cells of {name!r}: '
                     f'{", ".join(named.cells)}; of the site schemes: '
                     f'{"; ".join(", ".join(o.cells) for o in replaced.values())})')
  classes = [m for m in modules.values() if m is not None]
  return dataclasses.replace(
      named,
      name=composite,
      label=f'{named.label} ('
            + ', '.join(f'{site}: {_short(other.label)}' for site, other in replaced.items())
            + ')',
      paper='; '.join([named.paper] + [
          f'{", ".join(s for s, o in replaced.items() if o is other)}: {other.paper}'
          for other in dict.fromkeys(replaced.values())]),
      batch_statistics=any(getattr(m, 'batch_statistics', False) for m in classes),
      sum=None, cells=cells, parts=tuple((site, other.name) for site, other in replaced.items()),
      **modules)
