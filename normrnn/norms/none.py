"""`none`: the baseline LSTM of Cooijmans et al. 2016 (their `--baseline` flag).

Every BN call is replaced by "x + beta" (spec A.3): the input and recurrent terms pass through
(the LSTM bias b carries the shift) and the cell state gets a learned per-unit offset beta_c
(init 0) before the output tanh, h_t = sigma(o) * tanh(c_t + beta_c). Keeping that offset makes
the LSTM-vs-BN-LSTM comparison like-for-like (pitfall D.10).
"""
import flax.linen as nn

from normrnn.norms import base


class Identity(base.SiteNorm):
  """y = a at the input/recurrent sites; y = a + beta at the cell site."""

  @nn.compact
  def __call__(self, a, *, x, mask, stats, state):
    del x, mask, stats
    return self.shift(a), None, state


SITES = dict(input=Identity, recurrent=Identity, cell=Identity, kernel=base.IdentityKernel)
