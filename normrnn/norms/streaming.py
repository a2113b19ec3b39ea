"""`streaming`: streaming normalization for recurrent nets.

Liao, Kawaguchi, Poggio (2016), "Streaming Normalization: Towards Simpler and More
Biologically-plausible Normalizations for Online and Recurrent Learning", arXiv:1610.06160.

The paper's idea: normalization statistics accumulated online from the samples seen so far
(a short-term and a long-term accumulator, combined), shared over time steps, with the SAME
computation at training and test time, so it works for online learning at batch size 1 and
for any sequence length. Its exact mixing weights and "streaming gradient" formulas could not
be confirmed from the sources available here (docs/method.md, "Open points"), so this is the
formulation we implement, stated exactly:

  short-term  causal per-example moments of this sequence, over its valid steps s <= t:
              mu_S = (1/n_t) sum_{s<=t} a_s,   m2_S = (1/n_t) sum_{s<=t} a_s^2
  long-term   a shared population table (mu_L, var_L), initialized to (0, 1) and, in training,
              updated after every batch with the batch's moments over all valid (example, step)
              positions: pop <- (1 - rate) * pop + rate * batch
  normalizer  mu  = lam * mu_S + (1 - lam) * mu_L
              var = lam * m2_S + (1 - lam) * (var_L + mu_L^2) - mu^2
              y   = gamma * (a - mu) / sqrt(var + eps) (+ beta at the cell site)

with lam = `streaming_mix` from the config. Why this form: (1) it is causal, so it is valid for
language modelling (no statistic looks at future characters); (2) it is per-example, so test
results never depend on which other sequences share the batch, and batch size 1 is fine;
(3) train and test run the identical function (only the long-term table's update is
training-only); (4) the long-term part keeps the scale defined at t = 0, where the short-term
variance is 0. Gradients flow exactly through the short-term statistics (autodiff through the
scan) instead of the paper's approximate streaming gradients; the long-term table gets none.
At the input site the running sums are cumulative sums over time (outside the loop); at the
recurrent and cell sites they are carried through the time loop as per-sequence state.
"""
import jax
import jax.numpy as jnp

import flax.linen as nn

from normrnn.norms import base
from normrnn.norms.scheme import Option, Scheme


class Streaming(base.SiteNorm):
  """Causal short-term + long-term statistics, shared over time (see module docstring)."""
  stats_kind = 'shared'
  OPTIONS = (Option('streaming_mix', 0.5, 'in [0, 1]', lambda v: 0.0 <= v <= 1.0,
                    'weight lambda of the short-term (per-sequence) statistics'),)

  def initial_state(self, batch_size, dtype):
    zeros = jnp.zeros((batch_size, self.features), dtype)
    return dict(n=jnp.zeros((batch_size, 1), dtype), s1=zeros, s2=zeros)

  @nn.compact
  def __call__(self, a, *, x, mask, stats, state):
    del x
    m = mask.astype(a.dtype)[..., None]
    if a.ndim == 3:  # hoisted [time, batch, features]: running sums are cumulative sums
      n = state['n'][None] + jax.lax.cumsum(m, axis=0)
      s1 = state['s1'][None] + jax.lax.cumsum(a * m, axis=0)
      s2 = state['s2'][None] + jax.lax.cumsum(jnp.square(a) * m, axis=0)
      new_state = dict(n=n[-1], s1=s1[-1], s2=s2[-1])
    else:  # one step inside the loop: running sums are carried
      n = state['n'] + m
      s1 = state['s1'] + a * m
      s2 = state['s2'] + jnp.square(a) * m
      new_state = dict(n=n, s1=s1, s2=s2)
    safe = jnp.maximum(n, 1.0)
    lam = self.option('streaming_mix')
    mu_l, var_l = stats['mean'], stats['var']
    mu = lam * s1 / safe + (1.0 - lam) * mu_l
    second = lam * s2 / safe + (1.0 - lam) * (var_l + jnp.square(mu_l))
    var = jnp.maximum(second - jnp.square(mu), 0.0)
    y = self.shift(self.gain() * base.standardize(a, mu, var, self.options.eps))
    moments = None
    if self.train:
      axes = tuple(range(a.ndim - 1))
      mean, bvar, count = base.masked_moments(a, mask, axes=axes)
      moments = dict(mean=mean, var=bvar, count=count)
    return y, moments, new_state


SCHEME = Scheme(
    name='streaming', label='streaming-norm LSTM', paper='Liao et al. 2016 (our formulation)',
    gamma_init=0.1,  # a BN-type normalizer: same reasoning as 'batch'
    batch_statistics=False,
    input=Streaming, recurrent=Streaming, cell=Streaming, sum=Streaming,
    kernel=base.IdentityKernel, cells=('lstm', 'tanh_rnn', 'gru'))
