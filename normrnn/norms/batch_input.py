"""`batch_input`: BN on the input term only, frame-wise (per-time-step) statistics.

Laurent, Pereyra, Brakel, Zhang, Bengio (2016), "Batch Normalized Recurrent Neural Networks",
ICASSP 2016, arXiv:1510.01378, eq. 8 as it sits in an LSTM (docs/method.md, "batch_input"):

  (f, i, o, g) = W_h h_{t-1} + BN(W_x x_t; gamma_x, 0) + b

with the "frame-wise" statistics of their paper: over the batch, separately per time step
(the same per-step machinery as `batch`, including the population tables and the
last-step rule beyond max_time_steps). The recurrent term is not normalized, and the cell keeps
the baseline's learned offset beta_c so the comparison with `none` is like-for-like.
Laurent et al. initialized gamma to 1; Cooijmans et al. attribute their failure largely to that,
so gamma_init is an explicit config value here (the sweep over it is a config override).
"""
from normrnn.norms import base, batch, none
from normrnn.norms.scheme import Scheme

SCHEME = Scheme(
    name='batch_input', label='BN-input LSTM', paper='Laurent et al. 2016, eq. 8',
    gamma_init=0.1,  # Laurent et al. used 1.0; 0.1 here for parity with 'batch' (sweep it)
    batch_statistics=True,
    input=batch.BatchStep, recurrent=none.Identity, cell=none.Identity,
    kernel=base.IdentityKernel, cells=('lstm', 'gru'))
