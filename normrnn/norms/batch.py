"""`batch`: recurrent batch normalization with per-time-step statistics.

Cooijmans, Ballas, Laurent, Guelcehre, Courville (2016), "Recurrent Batch Normalization",
arXiv:1603.09025, sec. 3, eqs. 6-8:

  (f, i, o, g) = BN(W_h h_{t-1}; gamma_h, 0) + BN(W_x x_t; gamma_x, 0) + b
  c_t          = sigma(f) * c_{t-1} + sigma(i) * tanh(g)
  h_t          = sigma(o) * tanh(BN(c_t; gamma_c, beta_c))

  BN(a; gamma, beta) = beta + gamma * (a - E[a]) / sqrt(Var[a] + eps)                 (sec. 2.2)

* Training: E and Var are the mean and the biased variance over the batch axis only, separately
  for every time step t and for every site (docs/method.md, "Population statistics"), with
  padded positions masked out.
* Evaluation: per-time-step population statistics, a [max_time_steps, features] table per site;
  for t >= max_time_steps the scan passes the last trained step's statistics
  (docs/method.md, "Population statistics"; pitfall P4). The tables are either the running
  averages kept during training (pop <- (1 - rate) * pop + rate * batch) or, for the paper's
  reported numbers, re-estimated as the plain average of per-batch statistics over a pass of
  training batches (`normrnn.popstats.reestimate`).
* gamma is shared over time and initialized from the config (0.1 in the paper); the input and
  recurrent terms have no shift (b carries it), the cell BN has a learned beta_c (init 0).
"""
import flax.linen as nn

from normrnn.norms import base
from normrnn.norms.scheme import Scheme


class BatchStep(base.SiteNorm):
  """Batch normalization with statistics over the batch axis only (one set per time step).

  `a` is [batch, features] inside the loop or [time, batch, features] for the hoisted input term;
  either way the moments are taken over the batch axis (-2) only, so the hoisted call yields
  per-step statistics [time, features], identical to normalizing every step separately.
  """
  stats_kind = 'per_step'
  batch_statistics = True

  @nn.compact
  def __call__(self, a, *, x, mask, stats, state):
    del x
    if self.train:
      if a.shape[base.batch_axis(a)] == 1:
        raise ValueError(
            f'{type(self).__name__} at the {self.site} site uses batch statistics in training, '
            'which are undefined at batch size 1 (the variance is 0, every output equals beta). '
            'Train with batch size >= 2, or evaluate with population statistics (train=False).')
      y, mean, var, count = base.masked_standardize(a, mask, (base.batch_axis(a),),
                                                    self.options.eps)
      moments = dict(mean=mean, var=var, count=count)
    else:
      mean, var, moments = stats['mean'], stats['var'], None
      y = base.standardize(a, base.per_position(mean, a), base.per_position(var, a),
                           self.options.eps)
    y = self.gain() * y
    return self.shift(y), moments, state


SCHEME = Scheme(
    name='batch', label='BN-LSTM', paper='Cooijmans et al. 2016, eqs. 6-8',
    gamma_init=0.1,  # the paper's value in every experiment; 1.0 saturates tanh (Fig. 4a/6)
    batch_statistics=True,
    input=BatchStep, recurrent=BatchStep, cell=BatchStep, sum=BatchStep,
    kernel=base.IdentityKernel, cells=('lstm', 'tanh_rnn', 'gru'))
