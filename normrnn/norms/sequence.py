"""`sequence`: sequence-wise BN on the input term (Deep Speech 2; Cooijmans' BN-e*).

Amodei et al. (2016), "Deep Speech 2", arXiv:1512.02595, sec. 3.2, eq. (with B = BN):

  h^l_t = f(B(W^l h^{l-1}_t) + U^l h^l_{t-1})

For each unit the mean and biased variance are taken over all batch items AND all valid time
steps of the minibatch; padded frames are excluded (Cooijmans et al. 2016 sec. 5.4, BN-e*).
Inference uses one shared population table (no per-step statistics), so any length works. In an
LSTM (docs/method.md, "sequence"): (f, i, o, g) = W_h h_{t-1} + BN_seq(W_x x_t; gamma_x, 0) + b;
the cell keeps the baseline's learned offset beta_c.
"""
import flax.linen as nn

from normrnn.norms import base, none
from normrnn.norms.scheme import Scheme


class BatchSequence(base.SiteNorm):
  """BN with statistics over batch and time. Only defined where the time axis is present, i.e.
  for the input term, which the scan computes for all steps before the loop."""
  stats_kind = 'shared'
  needs_whole_sequence = True
  batch_statistics = True

  @nn.compact
  def __call__(self, a, *, x, mask, stats, state):
    del x
    if a.ndim != 3:
      raise ValueError('sequence-wise BN needs the whole [time, batch, features] term; it can only '
                       f'sit at the input site, not at the {self.site} site.')
    if self.train:
      y, mean, var, count = base.masked_standardize(a, mask, (0, 1), self.options.eps)
      moments = dict(mean=mean, var=var, count=count)
    else:
      mean, var, moments = stats['mean'], stats['var'], None
      y = base.standardize(a, mean, var, self.options.eps)
    y = self.gain() * y
    return self.shift(y), moments, state


SCHEME = Scheme(
    name='sequence', label='sequence-BN LSTM', paper='Amodei et al. 2016 (Deep Speech 2), sec. 3.2',
    gamma_init=0.1,  # as batch_input
    batch_statistics=True,
    input=BatchSequence, recurrent=none.Identity, cell=none.Identity,
    kernel=base.IdentityKernel, cells=('lstm', 'gru'))
