"""`none`: the baseline LSTM of Cooijmans et al. 2016 (their `--baseline` flag).

Every BN call is replaced by "x + beta" (docs/method.md, "The baseline LSTM (`none`)"): the
input and recurrent terms pass through (the LSTM bias b carries the shift) and the cell state
gets a learned per-unit offset beta_c (init 0) before the output tanh,
h_t = sigma(o) * tanh(c_t + beta_c). Keeping that offset makes the LSTM-vs-BN-LSTM comparison
like-for-like (docs/method.md, pitfall P10).
"""
import flax.linen as nn

from normrnn.norms import base
from normrnn.norms.scheme import Scheme


class Identity(base.SiteNorm):
  """y = a at the input/recurrent sites; y = a + beta at the cell site."""

  @nn.compact
  def __call__(self, a, *, x, mask, stats, state):
    del x, mask, stats
    return self.shift(a), None, state


SCHEME = Scheme(
    name='none', label='LSTM', paper='Cooijmans et al. 2016, baseline LSTM (--baseline)',
    gamma_init=1.0,  # unused (no gain); every scheme has the field so configs have one shape
    batch_statistics=False,
    input=Identity, recurrent=Identity, cell=Identity, sum=Identity, kernel=base.IdentityKernel,
    cells=('lstm', 'tanh_rnn', 'gru'))
