"""Weight initializers of Cooijmans et al. 2016 (docs/method.md, "Initialization"; pitfall P9).

`orthogonal` for an (n, 4n) matrix gives ONE semi-orthogonal matrix with orthonormal rows over
the whole 4n width (the authors' SVD-of-a-Gaussian init), not four independent blocks;
jax's orthogonal initializer has exactly that property. For MNIST the recurrent matrix is
[I_n, orthogonal(n, 3n)]: identity on the candidate block g (the code's gate order is
[g, f, i, o]) and one semi-orthogonal (n, 3n) matrix for f, i, o.
"""
import jax
import jax.numpy as jnp
from flax import linen as nn

RECURRENT_INITS = ('orthogonal', 'identity_orthogonal', 'identity')


def orthogonal(key, shape, dtype=jnp.float32):
  return nn.initializers.orthogonal()(key, shape, dtype)


def recurrent_kernel(kind: str):
  """Initializer for W_h of shape (n, blocks * n)."""
  if kind not in RECURRENT_INITS:
    raise ValueError(f'unknown recurrent_init {kind!r}; valid: {", ".join(RECURRENT_INITS)}')

  def init(key, shape, dtype=jnp.float32):
    n, width = shape
    if kind == 'orthogonal':
      return orthogonal(key, shape, dtype)
    eye = jnp.eye(n, dtype=dtype)
    if kind == 'identity':
      if width != n:
        raise ValueError(f"recurrent_init 'identity' needs a square kernel, got {shape}")
      return eye
    return jnp.concatenate([eye, orthogonal(key, (n, width - n), dtype)], axis=1)

  return init


def lstm_bias(forget_bias: float):
  """Bias of the gates in the code's order [g, f, i, o]: forget slice = forget_bias, rest 0."""

  def init(key, shape, dtype=jnp.float32):
    del key
    hidden = shape[0] // 4
    return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(forget_bias)

  return init


def noise(key: jax.Array, shape, std: float):
  return std * jax.random.normal(key, shape, jnp.float32)
