"""`layer`: the layer-normalized LSTM.

Ba, Kiros, Hinton (2016), "Layer Normalization", arXiv:1607.06450, supplementary eqs. 20-22:

  (f, i, o, g) = LN(W_h h_{t-1}; alpha_1, 0) + LN(W_x x_t; alpha_2, 0) + b
  c_t          = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
  h_t          = sigma(o) * tanh(LN(c_t; alpha_3, beta_3))

  LN(z; alpha, beta) = alpha * (z - mu) / sqrt(sigma^2 + eps) + beta, with mu, sigma^2 the mean and
  biased variance over the FEATURE axis of one example at one time step.

Choices (docs/method.md, "layer"; pitfall P19): normalization over all 4*hidden gate units
jointly (as the official code `ryankiros/layer-norm`), eps inside the sqrt (1e-5), the carried
c_t is the un-normalized one, gains initialized from the config (1.0 in Ba et al.). The shifts
of the two terms are dropped because the single bias b absorbs them (as in recurrent BN); the
cell LN keeps beta_3. Train and test compute the same thing; works at batch size 1; no
statistics to store.
"""
import jax.numpy as jnp

import flax.linen as nn

from normrnn.norms import base
from normrnn.norms.scheme import Scheme


class LayerNorm(base.SiteNorm):
  """Layer normalization over the feature axis."""

  @nn.compact
  def __call__(self, a, *, x, mask, stats, state):
    del x, mask, stats
    mean = jnp.mean(a, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(a - mean), axis=-1, keepdims=True)
    y = self.gain() * base.standardize(a, mean, var, self.options.eps)
    return self.shift(y), None, state


SCHEME = Scheme(
    name='layer', label='LN-LSTM', paper='Ba et al. 2016, supp. eqs. 20-22',
    gamma_init=1.0,  # Ba et al. 2016 sec. 6.2
    batch_statistics=False,
    input=LayerNorm, recurrent=LayerNorm, cell=LayerNorm, sum=LayerNorm,
    kernel=base.IdentityKernel, cells=('lstm', 'tanh_rnn', 'gru'))
