"""`cosine`: cosine normalization of the input and recurrent terms.

Luo, Zhan, Wang, Yang (2017), "Cosine Normalization: Using Cosine Similarity Instead of Dot
Product in Neural Networks", arXiv:1702.05870, eq. 4:

  net_k = cos(theta_k) = (w_k . x) / (|w_k| |x|)

Applied inside the LSTM to each gate unit of both terms separately (docs/method.md, "cosine";
the paper has no recurrent experiment, so this placement is our extension):

  (f, i, o, g) = s_x * cos(W_x, x_t) + s_h * cos(W_h, h_{t-1}) + b

Cosines lie in [-1, 1] with a fluctuation of about 1/sqrt(fan-in), too small for the gates to
saturate, so each term has a learnable per-unit scale s (init gamma_init from the config). The
bias is added after the cosine (not folded into the vectors as keras-contrib's CosineDense does).
|x| is computed as sqrt(|x|^2 + eps), so a zero vector (h_0 = 0) gives cosine 0, not NaN.
The weight-side normalization happens once per forward pass outside the loop; only |h_{t-1}| is
computed per step. No statistics; train = test; batch-size independent.
"""
import flax.linen as nn
import jax.numpy as jnp

from normrnn.norms import base, none
from normrnn.norms.scheme import Scheme


class CosineKernel(nn.Module):
  """Unit-norm columns: w_k / |w_k|."""

  @nn.compact
  def __call__(self, kernel):
    return kernel / jnp.sqrt(jnp.sum(jnp.square(kernel), axis=0, keepdims=True))


class Cosine(base.SiteNorm):
  """s * a / |x|, where a = (W / |W|) x was computed with the normalized kernel."""

  @nn.compact
  def __call__(self, a, *, x, mask, stats, state):
    del mask, stats
    x_norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + self.options.eps)
    return self.shift(self.gain() * a / x_norm), None, state


SCHEME = Scheme(
    name='cosine', label='cosine-norm LSTM', paper='Luo et al. 2017, eq. 4',
    gamma_init=1.0,  # the per-unit scale of the cosines (which are O(1/sqrt(fan-in)))
    batch_statistics=False,
    input=Cosine, recurrent=Cosine, cell=none.Identity, kernel=CosineKernel,
    cells=('lstm', 'gru'))
