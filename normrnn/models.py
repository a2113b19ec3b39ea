"""Task models: a sequence classifier (sequential / permuted MNIST) and a character-level
language model (PTB, text8), both = stacked recurrent layers + an orthogonal softmax head; the
question-answering model (CNN QA) is `normrnn.reader.AttentiveReader` on the same `RNNSpec`.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from normrnn import cells, inits, kernels
from normrnn.norms import COMPOSABLE_SITES, NormOptions, Scheme, compose, get_scheme, site_pairs
from normrnn.reader import AttentiveReader, ReaderSpec
from normrnn.recurrent import RecurrentStack


@dataclasses.dataclass(frozen=True, kw_only=True)
class RNNSpec:
  """Everything that defines the recurrent stack (hashable, so it can be a module attribute).

  Keyword arguments only. Required: hidden, norm, max_time_steps; the defaults of the rest are
  the paper's LSTM settings (the task configs always write every field explicitly).

  Attributes:
    cell: 'lstm', 'gru' or 'tanh_rnn' (`normrnn.cells.CELLS`).
    hidden: units per layer.
    layers: number of stacked layers.
    norm: scheme name (`normrnn.norms.NORMS`).
    options: the scheme's options (`spec.scheme.make_options(...)`); None = its defaults.
    recurrent_init: 'orthogonal', 'identity_orthogonal' (MNIST) or 'identity' (tanh RNN).
    forget_bias: initial forget-gate bias.
    h0_noise: std of the Gaussian noise added to h_0 (the paper's --noise; 0 = off).
    max_time_steps: length of the per-step statistic tables (the training length).
    stats_rate: rate of the running averages of the population statistics (0.01: the paper's
      MNIST value; its PTB/text8 configs use 0.05).
    unroll: scan unroll.
    remat: recompute step activations in the backward pass.
    hoist_input: input projection (and its normalization) before the loop (True) or in each step
      (False); see `normrnn.cells.NormLSTMCell`. Speed and memory only: the values are the same.
    sites: per-site schemes, (site, scheme name) pairs such as (('input', 'sequence'),) (BN-e*
      with norm='batch'); () = the named scheme at every site (`normrnn.norms.compose`; a mapping
      is accepted and stored as canonical pairs).
    kernel: the implementation of the recurrence, 'scan' (the reference) or one of
      `normrnn.kernels.KERNELS` ('fused': hand-written backward pass); same values, same
      parameters. A kernel that does not support the cell/scheme/settings is refused here.
  """
  hidden: int
  norm: str
  max_time_steps: int
  cell: str = 'lstm'
  layers: int = 1
  options: NormOptions | None = None  # None = the scheme's declared defaults
  recurrent_init: str = 'orthogonal'
  forget_bias: float = 1.0
  h0_noise: float = 0.0
  stats_rate: float = 0.01
  unroll: int = 1
  remat: bool = False
  hoist_input: bool = True
  sites: tuple[tuple[str, str], ...] = ()
  kernel: str = kernels.SCAN

  def __post_init__(self):
    cells.get_cell(self.cell)
    object.__setattr__(self, 'sites', site_pairs(self.sites))
    scheme = self.scheme
    if self.options is None:
      object.__setattr__(self, 'options', scheme.make_options())
    for field in ('hidden', 'layers', 'max_time_steps', 'unroll'):
      if getattr(self, field) < 1:
        raise ValueError(f'model {field} must be >= 1, got {getattr(self, field)}')
    if self.h0_noise < 0:
      raise ValueError(f'model h0_noise must be >= 0, got {self.h0_noise}')
    if not 0.0 < self.stats_rate <= 1.0:
      raise ValueError(f'norm stats_rate must be in (0, 1], got {self.stats_rate}')
    reason = kernels.refusal(self.kernel, self.cell, scheme, hoist_input=self.hoist_input,
                             remat=self.remat, unroll=self.unroll, hidden=self.hidden)
    if reason is not None:
      raise ValueError(f'model kernel={self.kernel!r} is not valid: {reason}')

  @property
  def scheme(self) -> Scheme:
    """The scheme the cells use: `norm`, with `sites` replaced (`normrnn.norms.compose`)."""
    return compose(self.norm, **dict(self.sites)) if self.sites else get_scheme(self.norm)

  def stack(self, input_features: int, train: bool, *, reverse: bool = False,
            name: str = 'rnn') -> RecurrentStack:
    """The stack of `layers` layers; reverse=True makes every layer read each sequence's valid
    prefix back to front (the backward half of a bidirectional encoder, `normrnn.reader`)."""
    cell_cls, scheme = cells.get_cell(self.cell), self.scheme
    layer_cells = tuple(
        cell_cls(self.hidden, input_features if i == 0 else self.hidden, scheme, self.options,
                 self.recurrent_init, self.forget_bias, self.h0_noise, train, self.hoist_input)
        for i in range(self.layers))
    return RecurrentStack(layer_cells, self.max_time_steps, self.stats_rate,
                          reverse=(reverse,) * self.layers, unroll=self.unroll,
                          remat=self.remat, kernel=self.kernel, name=name)


class SequenceClassifier(nn.Module):
  """Reads a sequence and predicts one label from the last valid hidden state (MNIST: h_784).

  __call__(inputs [batch, time, features] float, mask [batch, time] | None, *, train)
    -> logits [batch, num_classes]
  """
  spec: RNNSpec
  num_classes: int

  @nn.compact
  def __call__(self, inputs, mask=None, *, train: bool, probe=None):
    if inputs.ndim != 3:
      raise ValueError(f'SequenceClassifier expects inputs [batch, time, features], got shape '
                       f'{inputs.shape}')
    _, carries = self.spec.stack(inputs.shape[-1], train)(inputs, mask, probe=probe)
    return nn.Dense(self.num_classes, kernel_init=inits.orthogonal, name='head')(carries[-1]['h'])


class CharLM(nn.Module):
  """Next-character model on one-hot inputs.

  __call__(tokens [batch, time] int, mask [batch, time] | None, *, train)
    -> logits [batch, time, vocab_size]
  """
  spec: RNNSpec
  vocab_size: int

  @nn.compact
  def __call__(self, tokens, mask=None, *, train: bool, probe=None, carries=None,
               position_offset=0, return_carries=False):
    """`carries`/`position_offset`/`return_carries` evaluate a long stream in chunks: pass the
    previous chunk's carries and the number of symbols already read."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'CharLM expects integer tokens [batch, time], got {tokens.dtype} '
                       f'{tokens.shape}')
    x = jax.nn.one_hot(tokens, self.vocab_size, dtype=jnp.float32)
    outputs, final = self.spec.stack(self.vocab_size, train)(
        x, mask, probe=probe, initial_carries=carries, position_offset=position_offset)
    logits = nn.Dense(self.vocab_size, kernel_init=inits.orthogonal, name='head')(outputs)
    return (logits, final) if return_carries else logits


def spec_from_config(model_cfg) -> RNNSpec:
  """Reads config.model (every field explicit; see normrnn/config/build.py)."""
  n = model_cfg.norm
  sites = site_pairs({site: n[site] for site in COMPOSABLE_SITES})
  scheme = compose(n.name, **dict(sites))
  return RNNSpec(
      cell=model_cfg.cell, hidden=model_cfg.hidden, layers=model_cfg.layers, norm=n.name,
      sites=sites,
      options=scheme.make_options(gamma_init=n.gamma_init, eps=n.eps,
                                  **{option.name: n[option.name] for option in scheme.options}),
      recurrent_init=model_cfg.recurrent_init, forget_bias=model_cfg.forget_bias,
      h0_noise=model_cfg.h0_noise, max_time_steps=n.max_time_steps, stats_rate=n.stats_rate,
      unroll=model_cfg.unroll, remat=model_cfg.remat, hoist_input=model_cfg.hoist_input,
      kernel=model_cfg.kernel)


def reader_spec_from_config(model_cfg, *, vocab_size: int, num_entities: int) -> ReaderSpec:
  """config.model.reader plus the task's vocabulary and entity count."""
  return ReaderSpec(vocab_size=vocab_size, num_entities=num_entities, **model_cfg.reader)


def build_model(model_cfg, *, kind: str, num_classes: int,
                vocab_size: int | None = None) -> nn.Module:
  """A SequenceClassifier (kind='classify'), CharLM (kind='lm') or AttentiveReader (kind='qa':
  num_classes = the number of entities, vocab_size = the task's vocabulary) from config.model."""
  spec = spec_from_config(model_cfg)
  if kind == 'classify':
    return SequenceClassifier(spec, num_classes)
  if kind == 'lm':
    return CharLM(spec, num_classes)
  if kind == 'qa':
    return AttentiveReader(spec, reader_spec_from_config(model_cfg, vocab_size=vocab_size,
                                                         num_entities=num_classes))
  raise ValueError(f"unknown task kind {kind!r}; valid: 'classify', 'lm', 'qa'")
