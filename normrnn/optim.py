"""Optimizers of the paper (docs/method.md, "Optimizers"): global-norm clipping of the raw
gradient, then Blocks' RMSProp (MNIST) or Adam (PTB, text8).

Blocks `RMSProp` differs from optax.rmsprop: no momentum, and the step is
lr * g / max(sqrt(ms), eps) instead of lr * g / (sqrt(ms) + eps), with
ms <- decay * ms + (1 - decay) * g^2 starting from 0. `scale_by_blocks_rmsprop` is that rule.
Blocks' Adam is standard Adam with the bias correction folded into the step size, i.e. optax.adam.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('rmsprop', 'adam')


class BlocksRMSPropState(NamedTuple):
  ms: optax.Updates


def scale_by_blocks_rmsprop(decay: float, eps: float) -> optax.GradientTransformation:
  def init(params):
    return BlocksRMSPropState(ms=jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    ms = jax.tree.map(lambda m, g: decay * m + (1.0 - decay) * jnp.square(g), state.ms, updates)
    updates = jax.tree.map(lambda g, m: g / jnp.maximum(jnp.sqrt(m), eps), updates, ms)
    return updates, BlocksRMSPropState(ms=ms)

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg) -> optax.GradientTransformation:
  """From config.optimizer (fields: name, learning_rate, clip_norm, rmsprop_decay, rmsprop_eps,
  adam_b1, adam_b2, adam_eps)."""
  if cfg.name == 'rmsprop':
    rule = optax.chain(scale_by_blocks_rmsprop(cfg.rmsprop_decay, cfg.rmsprop_eps),
                       optax.scale(-cfg.learning_rate))
  elif cfg.name == 'adam':
    rule = optax.adam(cfg.learning_rate, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps)
  else:
    raise ValueError(f'unknown optimizer {cfg.name!r}; valid: {", ".join(OPTIMIZERS)}')
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), rule)
