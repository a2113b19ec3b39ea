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


def question_answering(logits, answer, weights):
  """Cross-entropy of the answer over candidate-masked logits [batch, E] (-inf = not a candidate;
  `normrnn.reader`) -> sums {'loss', 'correct'} and 'count'.

  An example whose answer is not among its candidates (possible when a document is cut to its
  most relevant sentences, Cooijmans et al. 2016 App. B) is counted as an error but adds no loss
  (its cross-entropy is infinite and its gradient zero); so do padding rows (weights 0, possibly
  without any candidate). Every example counts in `count`, so error = 1 - correct / count.
  """
  label_logit = jnp.take_along_axis(logits, answer[:, None], axis=-1)[:, 0]
  answerable = jnp.isfinite(label_logit) & (weights > 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, answer)
  correct = ((jnp.argmax(logits, -1) == answer) & answerable).astype(jnp.float32)
  return dict(loss=jnp.sum(jnp.where(answerable, ce * weights, 0.0)),
              correct=jnp.sum(correct * weights), count=jnp.sum(weights))


def summarize(sums, kind: str) -> dict:
  """Turns summed statistics into metrics: loss (nats), error, and acc (classify, qa) or bpc."""
  count = max(float(sums['count']), 1.0)
  loss = float(sums['loss']) / count
  acc = float(sums['correct']) / count
  out = dict(loss=loss, error=1.0 - acc)
  if kind in ('classify', 'qa'):
    out['acc'] = acc
  else:
    out['bpc'] = loss / LN2
  return out
