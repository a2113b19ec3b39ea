"""`weight`: weight normalization of the input and recurrent matrices.

Salimans & Kingma (2016), "Weight Normalization: A Simple Reparameterization to Accelerate
Training of Deep Neural Networks", arXiv:1602.07868, eq. 2:

  w_k = g_k * v_k / ||v_k||

applied to every column k (each of the 4*hidden gate units) of W_x and of W_h, with separate
gains (docs/method.md, "weight"):

  (f, i, o, g) = (V_x diag(g_x / ||V_x||)) x_t + (V_h diag(g_h / ||V_h||)) h_{t-1} + b

No statistics; identical train and test computation; batch-size independent. The data-dependent
init of the paper is for feed-forward nets only; here g starts at ||v_init|| per column, so the
effective weights start exactly at the paper's orthogonal / identity init. The kernel is
normalized once per forward pass, outside the time loop. The cell keeps the baseline's learned
offset beta_c.
"""
import flax.linen as nn
import jax.numpy as jnp

from normrnn.norms import none
from normrnn.norms.scheme import Scheme


class WeightNormKernel(nn.Module):
  """w = g * v / ||v|| column-wise; g initialized to the initial column norms of v."""

  @nn.compact
  def __call__(self, kernel):
    norms = jnp.sqrt(jnp.sum(jnp.square(kernel), axis=0))
    g = self.param('g', lambda _: norms)
    return kernel * (g / norms)


SCHEME = Scheme(
    name='weight', label='WN-LSTM', paper='Salimans & Kingma 2016, eq. 2',
    gamma_init=1.0,  # unused: g starts at ||v_init|| so W starts at the paper's init
    batch_statistics=False,
    input=none.Identity, recurrent=none.Identity, cell=none.Identity, kernel=WeightNormKernel,
    cells=('lstm', 'gru'))
