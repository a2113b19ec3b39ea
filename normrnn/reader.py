"""The Attentive Reader (Hermann et al. 2015) with normalized recurrent encoders, as Cooijmans et
al. (2016, sec. 5.4, App. B) use it on the CNN question-answering task.

Hermann, Kocisky, Grefenstette, Espeholt, Kay, Suleyman, Blunsom (2015), "Teaching Machines to
Read and Comprehend", arXiv:1506.03340, sec. 4 ("Attentive Reader"):

  y_d(t)   = [fwd_t ; bwd_t]                 bidirectional encoding of document token t
  u        = [fwd_|q| ; bwd_1]               the query: last forward and first backward state
  m(t)     = tanh(W_ym y_d(t) + W_um u)                                             (Hermann eq. 5)
  s(t)     ∝ exp(w_ms^T m(t))                over the valid document positions only
  r        = sum_t y_d(t) s(t)
  g(d, q)  = tanh(W_rg r + W_ug u)                                                  (Hermann eq. 6)
  p(a|d,q) ∝ exp(W(a) g(d, q))               over the candidate entities (see below)

Variants of Cooijmans et al. 2016, sec. 5.4 (docs/method.md, "Attentive Reader"):
  LSTM            both encoders use the baseline LSTM (norm `none`);
  BN-LSTM         the encoders are BN-LSTMs (norm `batch`, eqs. 6-8);
  BN-everywhere   also BN on every term entering a tanh of the attention and output:
                    m(t) = tanh(BN(W_ym y_d(t)) + BN(W_um u) + b_m)
                    g    = tanh(BN(W_rg r) + BN(W_ug u) + b_g)
                  gains initialized at 0.1 (`everywhere_gamma`), no shift of their own (the bias
                  of the tanh absorbs it, as the LSTM bias does for the gates); the document term
                  W_ym y_d(t) with sequence-wise statistics (over the batch and every valid
                  document position: the authors' code normalizes the flattened [time * batch]
                  matrix), the per-example terms with statistics over the batch;
  BN-e*           BN-everywhere with sequence-wise statistics for the encoders' input terms
                  (`model.norm.input='sequence'`, `normrnn.norms.compose`);
  BN-e**          BN-e* with bidirectional encoders whose reverse pass reverses only the valid
                  prefix of each sequence, padding left at the end (`reverse_padding='valid'`);
  LN-LSTM         layer-normalized encoders (Ba et al. 2016 used this model; `everywhere='layer'`
                  puts LN on the attention terms too).
The authors' launch scripts run the LSTM, BN-LSTM, BN-everywhere and BN-e* readers with
forward-only encoders (`bidirectional=False`: y_d(t) = fwd_t, u = fwd_|q|) and make only BN-e**
bidirectional; `configs/cnn_qa.py` follows them, and either setting can be chosen.
`reverse_padding='whole'` reproduces the reversal the code had before BN-e**: the whole padded
sequence is flipped, so the reverse pass reads the padding first. Here padding never enters a
statistic and holds the carry in either mode, so what 'whole' changes is the per-step statistics'
alignment: step t of the reversed pass is a different document offset for every example.

Output: the logits are W(a) g + b_a for the `num_entities` entity placeholders (ids 2 .. 2+E-1 of
the vocabulary, `normrnn.data`); with `answer_mask='candidates'` (default) entities that do not
occur in the document get -inf, so the softmax is over the candidates only. Hermann et al. and the
authors' code take the softmax over the whole vocabulary instead; 'entities' keeps every entity.

Everything recurrent runs in the one scan (`normrnn.recurrent`, through `RNNSpec.stack`); the
attention/output normalizations keep their population statistics in 'batch_stats' and write their
per-batch moments to 'moments' exactly like the scan, so `normrnn.popstats.reestimate` and the
running averages treat them like every other site.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from normrnn.norms import NormOptions, get_scheme
from normrnn.recurrent import update_table

REVERSE_PADDING = ('valid', 'whole')
EVERYWHERE = ('none', 'batch', 'layer')
ANSWER_MASKS = ('candidates', 'entities')
# config.model.reader (every config has the section; only task kind 'qa' reads it). The sizes are
# the authors' (one `dim` of 240 for embedding, attention and output); the rest are Hermann et
# al.'s reader. Also the values a saved config without the section is read with
# (`normrnn.config.schema.ADDED_FIELDS`).
CONFIG_DEFAULTS = dict(embed=240, attention=240, output=240, bidirectional=True,
                       reverse_padding='valid', everywhere='none', everywhere_gamma=0.1,
                       answer_mask='candidates', embed_init_std=0.01)
# Masked attention scores: exp underflows to exactly 0, and a row without any valid position
# (a padding row of an evaluation batch) still gives finite values instead of NaN.
_MASKED_SCORE = -1e30


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReaderSpec:
  """What the Attentive Reader adds to the recurrent encoders (hashable module attribute).

  Attributes:
    vocab_size: token ids [0, vocab_size) (0 = padding).
    num_entities: E, the answer classes (entity placeholders).
    embed: word-embedding size.
    attention: size of m(t).
    output: size of g(d, q).
    bidirectional: forward + backward encoders (Hermann et al., BN-e**) or forward only.
    reverse_padding: 'valid' (reverse each sequence's valid prefix, BN-e**) or 'whole' (flip the
      padded sequence, the code before BN-e**).
    everywhere: normalization of the attention/output terms: 'none', 'batch' (BN-everywhere) or
      'layer'.
    everywhere_gamma: initial gain of those normalizations (0.1 for BN as in the authors' code).
    answer_mask: 'candidates' (softmax over the entities in the document) or 'entities' (all E).
    embed_init_std: std of the Gaussian init of the word embeddings (0.01 in the authors' code).
  """
  vocab_size: int
  num_entities: int
  embed: int
  attention: int
  output: int
  bidirectional: bool = True
  reverse_padding: str = 'valid'
  everywhere: str = 'none'
  everywhere_gamma: float = 0.1
  answer_mask: str = 'candidates'
  embed_init_std: float = 0.01

  def __post_init__(self):
    for field in ('vocab_size', 'num_entities', 'embed', 'attention', 'output'):
      if getattr(self, field) < 1:
        raise ValueError(f'reader {field} must be >= 1, got {getattr(self, field)}')
    for field, valid in (('reverse_padding', REVERSE_PADDING), ('everywhere', EVERYWHERE),
                         ('answer_mask', ANSWER_MASKS)):
      if getattr(self, field) not in valid:
        raise ValueError(f'reader {field}={getattr(self, field)!r} is not valid; choose one of: '
                         f'{", ".join(valid)}')
    if not self.everywhere_gamma > 0 or not self.embed_init_std > 0:
      raise ValueError('reader everywhere_gamma and embed_init_std must be > 0')
    if self.num_entities + 2 > self.vocab_size:
      raise ValueError(f'vocab_size={self.vocab_size} cannot hold padding, unknown and '
                       f'{self.num_entities} entity ids')


def variant_label(config: dict) -> str:
  """The paper's name of the reader a run config (config.json as a dict) describes: 'LSTM',
  'BN-LSTM', 'BN-everywhere', 'BN-e*', 'BN-e**', 'LN-LSTM', else the scheme's label; with the
  settings that differ from that variant's in parentheses ('LSTM (bidirectional)')."""
  from normrnn.norms import compose  # pylint: disable=g-import-not-at-top
  model = config.get('model', {})
  norm, r = model.get('norm', {}), {**CONFIG_DEFAULTS, **model.get('reader', {})}
  name, site = norm.get('name'), norm.get('input', '')
  extra = []
  if name == 'batch' and r['everywhere'] == 'batch' and site == 'sequence':
    label = 'BN-e**' if r['bidirectional'] else 'BN-e*'
    bidirectional = r['bidirectional']
  else:
    if name == 'batch' and not site and r['everywhere'] in ('none', 'batch'):
      label = 'BN-everywhere' if r['everywhere'] == 'batch' else 'BN-LSTM'
    else:
      try:
        label = compose(name, input=site or None).label
      except ValueError:
        label = str(name)
      if r['everywhere'] != 'none':
        extra.append(f'{r["everywhere"]} norm in the attention')
    bidirectional = False
  if r['bidirectional'] != bidirectional:
    extra.append('bidirectional')
  if r['bidirectional'] and r['reverse_padding'] != 'valid':
    extra.append(f'{r["reverse_padding"]}-sequence reversal')
  return label + (f' ({", ".join(extra)})' if extra else '')


class TermNorm(nn.Module):
  """Normalization of one term entering a tanh of the attention or output (BN-everywhere).

  'batch' reuses the scan's site modules: `BatchSequence` (statistics over every valid position
  of the batch, one shared [F] population table) for a [batch, time, F] term, `BatchStep`
  (statistics over the valid rows of the batch, a shared [F] table) for a [batch, F] term;
  'layer' reuses `LayerNorm`. Training writes the batch's moments to 'moments' (for
  `normrnn.popstats.reestimate`) and moves the running averages when 'batch_stats' is mutable,
  as `normrnn.recurrent.Recurrent` does for its sites; evaluation uses the population tables.
  Variables: params `site/gamma`; batch_stats `input_mean`, `input_var` ([F]).
  """
  kind: str            # 'batch' or 'layer'
  features: int
  gamma_init: float
  eps: float
  stats_rate: float
  train: bool

  @nn.compact
  def __call__(self, a, mask):
    """a: [batch, time, F] with mask [batch, time], or [batch, F] with mask [batch]."""
    options = NormOptions(gamma_init=self.gamma_init, eps=self.eps)
    if self.kind == 'layer':
      site = get_scheme('layer').input(self.features, 'input', options, self.train, name='site')
      return site(a, x=None, mask=mask, stats=None, state=())[0]
    # The 'input' site has no shift of its own: the bias of the tanh carries it.
    cls = get_scheme('sequence' if a.ndim == 3 else 'batch').input
    site = cls(self.features, 'input', options, self.train, name='site')
    table = (self.variable('batch_stats', 'input_mean', jnp.zeros, (self.features,), jnp.float32),
             self.variable('batch_stats', 'input_var', jnp.ones, (self.features,), jnp.float32))
    y, moments, _ = site(a, x=None, mask=mask,
                         stats=dict(mean=table[0].value, var=table[1].value), state=())
    if self.train and not self.is_initializing():
      if self.is_mutable_collection('moments'):
        self.sow('moments', 'sites', {'input': moments}, init_fn=lambda: None,
                 reduce_fn=lambda _, new: new)
      if self.is_mutable_collection('batch_stats'):
        update_table(table, moments, self.stats_rate, per_step=False)
    return y


class Attention(nn.Module):
  """Attention and output of the Attentive Reader (Hermann et al. 2015, eqs. 5-6) on encoded
  inputs; see the module docstring for the equations and the BN-everywhere terms.

  __call__(y_d [batch, time, D], document_mask [batch, time], u [batch, Q],
           candidates [batch, E]) -> (logits [batch, E], s [batch, time])
  """
  spec: ReaderSpec
  eps: float
  stats_rate: float
  train: bool

  def _norm(self, name, a, mask):
    spec = self.spec
    if spec.everywhere == 'none':
      return a
    return TermNorm(spec.everywhere, a.shape[-1], spec.everywhere_gamma, self.eps,
                    self.stats_rate, self.train, name=name)(a, mask)

  @nn.compact
  def __call__(self, y_d, document_mask, u, candidates):
    spec = self.spec
    dense = lambda size, name, bias=False: nn.Dense(size, use_bias=bias, name=name,
                                                    kernel_init=nn.initializers.orthogonal())
    valid = document_mask > 0
    rows = jnp.any(valid, axis=1)  # padding rows of an evaluation batch have no document
    a_ym = self._norm('norm_ym', dense(spec.attention, 'W_ym')(y_d), valid)
    a_um = self._norm('norm_um', dense(spec.attention, 'W_um')(u), rows)
    b_m = self.param('b_m', nn.initializers.zeros, (spec.attention,))
    m = jnp.tanh(a_ym + a_um[:, None, :] + b_m)
    score = dense(1, 'w_ms')(m)[..., 0]
    s = jax.nn.softmax(jnp.where(valid, score, _MASKED_SCORE), axis=1) * valid
    r = jnp.einsum('bt,btd->bd', s, y_d)
    a_rg = self._norm('norm_rg', dense(spec.output, 'W_rg')(r), rows)
    a_ug = self._norm('norm_ug', dense(spec.output, 'W_ug')(u), rows)
    b_g = self.param('b_g', nn.initializers.zeros, (spec.output,))
    g = jnp.tanh(a_rg + a_ug + b_g)
    logits = dense(spec.num_entities, 'W_a', bias=True)(g)
    if spec.answer_mask == 'candidates':
      logits = jnp.where(candidates > 0, logits, -jnp.inf)
    return logits, s


class AttentiveReader(nn.Module):
  """Embedding, document and query encoders, attention and output (module docstring).

  __call__(document [batch, Td] int, document_mask [batch, Td], query [batch, Tq] int,
           query_mask [batch, Tq], candidates [batch, E], *, train) -> logits [batch, E]
           (-inf outside the candidates with answer_mask='candidates')

  The document and the query have separate encoders (Hermann et al.) sharing the embedding;
  `rnn` (a `normrnn.models.RNNSpec`) defines both, so every scheme and per-site scheme applies.
  With `rnn.layers` > 1 each direction is a stack of its own and the two are concatenated at the
  top. Padding (mask 0) must be at the end of each row.
  """
  rnn: object      # normrnn.models.RNNSpec (not imported: models imports this module)
  spec: ReaderSpec

  def _encode(self, x, mask, train, name):
    """(outputs [batch, time, D], summary [batch, D]): y_d and u of the module docstring."""
    fwd, carries = self.rnn.stack(x.shape[-1], train, name=f'{name}_fwd')(x, mask)
    if not self.spec.bidirectional:
      return fwd, carries[-1]['h']
    if self.spec.reverse_padding == 'valid':
      bwd, back = self.rnn.stack(x.shape[-1], train, reverse=True, name=f'{name}_bwd')(x, mask)
    else:  # the whole padded sequence flipped: the pass reads the padding first
      out, back = self.rnn.stack(x.shape[-1], train, name=f'{name}_bwd')(
          jnp.flip(x, axis=1), jnp.flip(mask, axis=1))
      bwd = jnp.flip(out, axis=1)
    # The backward pass's final state is the one after reading the first token: bwd_1.
    return (jnp.concatenate([fwd, bwd], axis=-1),
            jnp.concatenate([carries[-1]['h'], back[-1]['h']], axis=-1))

  @nn.compact
  def __call__(self, document, document_mask, query, query_mask, candidates, *, train: bool,
               return_attention: bool = False):
    for name, tokens in (('document', document), ('query', query)):
      if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f'AttentiveReader expects integer {name} ids [batch, time], got '
                         f'{tokens.dtype} {tokens.shape}')
    spec = self.spec
    if candidates.shape != (document.shape[0], spec.num_entities):
      raise ValueError(f'candidates must have shape [batch, num_entities] = '
                       f'{(document.shape[0], spec.num_entities)}, got {candidates.shape}')
    embed = nn.Embed(spec.vocab_size, spec.embed, name='embed',
                     embedding_init=nn.initializers.normal(spec.embed_init_std))
    document_mask = document_mask.astype(jnp.float32)
    query_mask = query_mask.astype(jnp.float32)
    y_d, _ = self._encode(embed(document), document_mask, train, 'document')
    _, u = self._encode(embed(query), query_mask, train, 'query')
    options = self.rnn.options
    logits, s = Attention(spec, options.eps, self.rnn.stats_rate, train, name='attention')(
        y_d, document_mask, u, candidates)
    return (logits, s) if return_attention else logits
