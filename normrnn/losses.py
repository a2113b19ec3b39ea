"""Losses and metrics (pure functions). Cross-entropy is in nats; bits per character is
cross-entropy / ln 2. `weights` [batch] mark real examples (0 = padding row of a last eval batch);
`mask` [batch, time] marks real prediction steps of a language model.
"""
import jax.numpy as jnp
import optax

LN2 = float(jnp.log(2.0))


def classification(logits, targets, weights):
  """logits [batch, classes], targets [batch] -> sums {'loss', 'correct'} and 'count'."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return dict(loss=jnp.sum(ce * weights), correct=jnp.sum(correct * weights),
              count=jnp.sum(weights))


def language_model(logits, targets, mask, weights):
  """logits [batch, time, vocab], targets/mask [batch, time] -> sums over valid positions."""
  w = mask * weights[:, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return dict(loss=jnp.sum(ce * w), correct=jnp.sum(correct * w), count=jnp.sum(w))


def summarize(sums, kind: str) -> dict:
  """Turns summed statistics into metrics: loss (nats), error, and acc or bpc."""
  count = max(float(sums['count']), 1.0)
  loss = float(sums['loss']) / count
  acc = float(sums['correct']) / count
  out = dict(loss=loss, error=1.0 - acc)
  if kind == 'classify':
    out['acc'] = acc
  else:
    out['bpc'] = loss / LN2
  return out
