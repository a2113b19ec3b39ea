"""Shared maths and the interface every normalization site implements.

A recurrent cell has up to three *sites* where a scheme may act (Cooijmans et al. 2016, eqs. 6-8):

  input      the input term      a_x = W_x x_t      [time, batch, 4*hidden]  (computed for all
                                                    steps at once, outside the time loop)
  recurrent  the recurrent term  a_h = W_h h_{t-1}  [batch, 4*hidden]          (inside the loop)
  cell       the cell state c_t before the output tanh [batch, hidden]         (inside the loop)
  sum        the summed pre-activation of a tanh RNN (Fig. 4a's BN-RNN)       (inside the loop)

Every site module has the same call signature:

  y, moments, state = site(a, x=..., mask=..., stats=..., state=...)

  a        the term to normalize: [batch, features] inside the loop, [time, batch, features]
           (time-major) for the hoisted input term. The batch axis is always axis -2.
  x        the vector the term was computed from, [(time,) batch, in_features] (cosine norm
           needs its length); for the cell site it is the cell state itself
  mask     [(time,) batch] float, 1 for valid positions; padding never enters any statistic
  stats    population statistics {'mean', 'var'}: per-step tables [(time,) features] (already
           indexed by time step by the scan) or shared tables [features]; the scan always passes
           them, schemes using batch statistics in training ignore them there
  state    per-sequence state carried through the time loop (only streaming norm uses it)

  moments  this batch's statistics {'mean', 'var', 'count'} for the scan to fold into the
           population tables (training only; None for schemes without statistics)

Why time-major: XLA:CPU reduces over a leading axis of a large [batch, time, features] tensor
about 7x slower than over the middle axis of [time, batch, features] (docs/benchmarks.md), and
the scan consumes time-major inputs anyway, so the hoisted term never needs a transposed copy.

Class attributes tell the scan what to allocate: `stats_kind` is None, 'per_step' (a
[max_time_steps, features] table indexed by position) or 'shared' (one [features] table).
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from normrnn.norms.scheme import NormOptions, Option

SITES = ('input', 'recurrent', 'cell', 'sum')
# Sites that carry a learned shift beta. The input and recurrent terms have none: the LSTM bias b
# absorbs it (Cooijmans et al. 2016 sec. 3); the cell BN and the tanh-RNN BN keep theirs.
SHIFT_SITES = ('cell', 'sum')


def masked_moments(a: jax.Array, mask: jax.Array, axes: tuple[int, ...]):
  """Mean, biased variance and count of `a` over `axes`, counting only mask == 1 entries.

  Args:
    a: [..., features].
    mask: a's shape without the feature axis, 1 = valid.
    axes: axes to reduce (never the feature axis).

  Returns:
    mean, var of shape a.shape without `axes`; count of shape mask.shape without `axes`.
    Where count is 0 the mean and variance are 0 (and must not be used).
  """
  m = mask.astype(a.dtype)[..., None]
  count = jnp.sum(m, axis=axes)
  safe = jnp.maximum(count, 1.0)
  mean = jnp.sum(a * m, axis=axes) / safe
  centered = a - jnp.expand_dims(mean, axes)
  var = jnp.sum(jnp.square(centered) * m, axis=axes) / safe
  return mean, var, count[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def masked_standardize(a: jax.Array, mask: jax.Array, axes: tuple[int, ...], eps: float):
  """BN's core: (a - mean) / sqrt(var + eps) with the masked moments of `masked_moments`.

  Returns (y, mean, var, count). Same values as `standardize(a, *masked_moments(a, mask, axes))`,
  but with a hand-written backward pass (the classic BN gradient, masked):

    da = r * (dy - m * (sum(dy) + y * sum(dy * y)) / n)   (+ the terms of d mean, d var)

  with r = 1/sqrt(var + eps), n the number of valid positions and the sums over `axes` (all
  positions: a padded position's y also depends on the valid positions' mean and r). It saves
  only y and r for the backward pass and needs two reductions there, where autodiff of the
  forward formula saves more and reduces more; inside the time loop that is most of BN's cost on
  CPU (docs/benchmarks.md).
  """
  return _masked_standardize_fwd(a, mask, axes, eps)[0]


def _masked_standardize_fwd(a, mask, axes, eps):
  mean, var, count = masked_moments(a, mask, axes)
  r = jax.lax.rsqrt(jnp.expand_dims(var, axes) + eps)
  y = (a - jnp.expand_dims(mean, axes)) * r
  m = mask.astype(a.dtype)[..., None]
  n = jnp.expand_dims(jnp.maximum(count, 1.0), axes)[..., None]
  return (y, mean, var, count), (y, r, m, n)


def _masked_standardize_bwd(axes, eps, res, cts):
  del eps
  y, r, m, n = res
  dy, dmean, dvar, _ = cts
  # Every position's y (padded ones too) depends on the mean and r of the valid ones.
  s1 = jnp.sum(dy, axis=axes, keepdims=True) / n
  s2 = jnp.sum(dy * y, axis=axes, keepdims=True) / n
  da = r * (dy - m * (s1 + y * s2))
  # Cotangents of the returned moments (zero when only y is used by the loss):
  # d mean / da = m / n; d var / da = 2 (a - mean) m / n = 2 y m / (r n).
  da = da + m * (jnp.expand_dims(dmean, axes) + 2.0 * y * jnp.expand_dims(dvar, axes) / r) / n
  return da, None


masked_standardize.defvjp(_masked_standardize_fwd, _masked_standardize_bwd)


def combine_moments(mean: jax.Array, var: jax.Array, count: jax.Array):
  """Pools per-step moments [time, F] (with counts [time]) into moments over all valid positions."""
  w = count[:, None]
  total = jnp.sum(count)
  safe = jnp.maximum(total, 1.0)
  pooled_mean = jnp.sum(w * mean, axis=0) / safe
  second = jnp.sum(w * (var + jnp.square(mean)), axis=0) / safe
  return pooled_mean, jnp.maximum(second - jnp.square(pooled_mean), 0.0), total


def batch_axis(a: jax.Array) -> int:
  """The batch axis of a site's input: [batch, F] in the loop, [time, batch, F] hoisted."""
  return a.ndim - 2


def per_position(stats: jax.Array, a: jax.Array) -> jax.Array:
  """Aligns a per-step statistic [(time,) F] with a [(time,) batch, F] term."""
  return stats[:, None, :] if a.ndim == 3 else stats


def standardize(a, mean, var, eps):
  return (a - mean) * jax.lax.rsqrt(var + eps)


class SiteNorm(nn.Module):
  """Interface of a normalization site (see the module docstring for the call signature)."""
  features: int
  site: str
  options: NormOptions
  train: bool

  stats_kind: ClassVar[str | None] = None
  # True if training normalizes with statistics of the current batch (batch size >= 2 needed).
  batch_statistics: ClassVar[bool] = False
  # The scheme options this class reads (`Scheme.options` collects them).
  OPTIONS: ClassVar[tuple[Option, ...]] = ()
  # True if the statistics need the whole [time, batch, F] term (sequence-wise BN): such an input
  # site is always computed before the time loop.
  needs_whole_sequence: ClassVar[bool] = False

  def initial_state(self, batch_size: int, dtype) -> Any:
    """Per-sequence state carried through the time loop (empty unless a scheme needs one)."""
    del batch_size, dtype
    return ()

  def option(self, name: str):
    """The value of one of this class's OPTIONS: from `options`, else its declared default."""
    for option in self.OPTIONS:
      if option.name == name:
        return self.options.get(name, option.default)
    raise KeyError(f'{type(self).__name__} declares no option {name!r}')

  def gain(self):
    return self.param('gamma', nn.initializers.constant(self.options.gamma_init),
                      (self.features,))

  def shift(self, y):
    """Adds the learned shift beta (init 0) at the sites that have one."""
    if self.site in SHIFT_SITES:
      y = y + self.param('beta', nn.initializers.zeros, (self.features,))
    return y

  def __call__(self, a, *, x, mask, stats, state):
    raise NotImplementedError


class IdentityKernel(nn.Module):
  """Kernel transform of schemes that do not reparameterize the weights: w = v."""

  @nn.compact
  def __call__(self, kernel):
    return kernel
