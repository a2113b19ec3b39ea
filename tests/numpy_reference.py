"""An independent numpy implementation of every scheme's LSTM and GRU, written from the equations
(docs/method.md and each scheme's docstring), with a plain Python loop over
time and over examples where the maths is per example. The tests compare normrnn against it.
"""
import numpy as np

# What each scheme does at each site, spelled out independently of normrnn.norms.
SITE_KIND = {
    #              input        recurrent    cell
    'none':        ('id',        'id',        'shift'),
    'batch':       ('bn_step',   'bn_step',   'bn_step'),
    'batch_input': ('bn_step',   'id',        'shift'),
    'sequence':    ('bn_seq',    'id',        'shift'),
    'layer':       ('ln',        'ln',        'ln'),
    'weight':      ('id',        'id',        'shift'),
    'cosine':      ('cos',       'cos',       'shift'),
    'streaming':   ('stream',    'stream',    'stream'),
}
# BN-e* (Cooijmans et al. 2016 sec. 5.4): the BN-LSTM with sequence-wise statistics (over batch
# and valid steps) for the input term only: LSTMReference(params, 'batch', kinds=BN_E_STAR).
BN_E_STAR = (SITE_KIND['sequence'][0], SITE_KIND['batch'][1], SITE_KIND['batch'][2])


def sigmoid(z):
  # The tests fill padding with large garbage: there exp(-z) overflows to inf and the sigmoid is
  # exactly 0, as it should be; the overflow is not an error.
  with np.errstate(over='ignore'):
    return 1.0 / (1.0 + np.exp(-z))


def moments(rows, m):
  """Mean and biased variance of rows [N, F] over the rows with m == 1."""
  rows = rows[m > 0]
  if len(rows) == 0:
    return None
  return rows.mean(0), rows.var(0), len(rows)


def reverse_valid_np(x, lengths):
  out = x.copy()
  for b, n in enumerate(lengths):
    out[b, :n] = x[b, :n][::-1]
  return out


class LSTMReference:
  """params: the flax 'params' of one Recurrent layer's cell, as numpy. kinds: what each site
  does (input, recurrent, cell), default SITE_KIND[scheme]; other rows mix schemes per site."""

  def __init__(self, params, scheme, *, eps, lam, tables=None, max_time_steps=None, kinds=None):
    self.p = params
    self.scheme = scheme
    self.kinds = SITE_KIND[scheme] if kinds is None else kinds
    self.eps, self.lam = eps, lam
    self.tables = tables or {}
    self.t_max = max_time_steps
    self.moments = {'input': {}, 'recurrent': {}, 'cell': {}}  # site -> {t or 'all': moments}

  def kernel(self, name):
    v = np.asarray(self.p[name], np.float64)
    col = np.sqrt((v ** 2).sum(0))
    if self.scheme == 'weight':
      return v * (np.asarray(self.p[name + '_norm']['g']) / col)
    if self.scheme == 'cosine':
      return v / col
    return v

  def gamma(self, site):
    return np.asarray(self.p[site + '_norm']['gamma'], np.float64)

  def beta(self, site):
    return np.asarray(self.p[site + '_norm']['beta'], np.float64)

  def pop(self, site, t=None):
    mean, var = self.tables[site + '_mean'], self.tables[site + '_var']
    if t is None:
      return mean, var
    k = min(t, self.t_max - 1)
    return mean[k], var[k]

  def step_norm(self, site, kind, a, m, t, train, src, stream):
    """Normalizes a [B, F] at step t (recurrent or cell site)."""
    shift = self.beta(site) if site == 'cell' else 0.0
    if kind == 'id':
      return a
    if kind == 'shift':
      return a + shift
    if kind == 'bn_step':
      if train:
        mean, var, n = moments(a, m)
        self.moments[site][t] = (mean, var, n)
      else:
        mean, var = self.pop(site, t)
      return self.gamma(site) * (a - mean) / np.sqrt(var + self.eps) + shift
    if kind == 'ln':
      out = np.empty_like(a)
      for b in range(a.shape[0]):
        mu, var = a[b].mean(), a[b].var()
        out[b] = self.gamma(site) * (a[b] - mu) / np.sqrt(var + self.eps) + shift
      return out
    if kind == 'cos':
      return self.gamma(site) * a / np.sqrt((src ** 2).sum(-1, keepdims=True) + self.eps)
    if kind == 'stream':
      return self.stream_norm(site, a, m, t, train, stream)
    raise AssertionError(kind)

  def stream_norm(self, site, a, m, t, train, acc):
    """acc[site] holds per-example running (n, s1, s2) over this sequence's valid steps."""
    shift = self.beta(site) if site == 'cell' else 0.0
    mu_l, var_l = self.pop(site)
    out = np.empty_like(a)
    for b in range(a.shape[0]):
      n, s1, s2 = acc[site][b]
      if m[b] > 0:
        n, s1, s2 = n + 1, s1 + a[b], s2 + a[b] ** 2
        acc[site][b] = (n, s1, s2)
      n_safe = max(n, 1)
      mu = self.lam * s1 / n_safe + (1 - self.lam) * mu_l
      second = self.lam * s2 / n_safe + (1 - self.lam) * (var_l + mu_l ** 2)
      var = np.maximum(second - mu ** 2, 0.0)
      out[b] = self.gamma(site) * (a[b] - mu) / np.sqrt(var + self.eps) + shift
    if train:
      self.moments[site][t] = moments(a, m)
    return out

  def input_term(self, x, mask, train):
    """The normalized input term for all steps, [B, T, 4H]."""
    ax = x @ self.kernel('kernel_x')
    kind = self.kinds[0]
    B, T, _ = ax.shape
    if kind == 'id':
      return ax
    if kind == 'bn_seq':
      if train:
        mean, var, n = moments(ax.reshape(B * T, -1), mask.reshape(-1))
        self.moments['input']['all'] = (mean, var, n)
      else:
        mean, var = self.pop('input')
      return self.gamma('input') * (ax - mean) / np.sqrt(var + self.eps)
    out = np.empty_like(ax)
    if kind == 'stream':
      acc = {'input': [(0, 0.0, 0.0)] * B}
      for t in range(T):
        out[:, t] = self.stream_norm('input', ax[:, t], mask[:, t], t, train, acc)
      return out
    for t in range(T):
      out[:, t] = self.step_norm('input', kind, ax[:, t], mask[:, t], t, train, x[:, t], None)
    return out

  def _start(self, x, mask, train, reverse, noise):
    """What every cell's run starts from: the (valid-prefix reversed) inputs' normalized input
    term for all steps, the normalized recurrent kernel and h_0 (+ noise).

    Returns (mask, lengths, B, T, H, input term [B, T, F], kernel_h, h [B, H])."""
    x = np.asarray(x, np.float64)
    mask = np.asarray(mask, np.float64)
    lengths = mask.sum(1).astype(int)
    if reverse:
      x = reverse_valid_np(x, lengths)
    B, T, _ = x.shape
    h = np.tile(np.asarray(self.p['h0'], np.float64), (B, 1))
    if noise is not None:
      h = h + noise
    return (mask, lengths, B, T, h.shape[1], self.input_term(x, mask, train),
            self.kernel('kernel_h'), h)

  def run(self, x, mask, *, train, reverse=False, noise=None):
    """x [B, T, D], mask [B, T] -> outputs [B, T, H]."""
    mask, lengths, B, T, H, ax, kh, h = self._start(x, mask, train, reverse, noise)
    bias = np.asarray(self.p['bias'], np.float64)
    c = np.tile(np.asarray(self.p['c0'], np.float64), (B, 1))
    acc = {'recurrent': [(0, 0.0, 0.0)] * B, 'cell': [(0, 0.0, 0.0)] * B}
    outputs = np.zeros((B, T, H))
    for t in range(T):
      m = mask[:, t]
      ah = self.step_norm('recurrent', self.kinds[1], h @ kh, m, t, train, h, acc)
      pre = ax[:, t] + ah + bias
      g, f, i, o = pre[:, :H], pre[:, H:2 * H], pre[:, 2 * H:3 * H], pre[:, 3 * H:]
      c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
      c_hat = self.step_norm('cell', self.kinds[2], c_new, m, t, train, c_new, acc)
      h_new = sigmoid(o) * np.tanh(c_hat)
      for b in range(B):
        if m[b] > 0:
          h[b], c[b] = h_new[b], c_new[b]
          outputs[b, t] = h_new[b]
    if reverse:
      outputs = reverse_valid_np(outputs, lengths)
    return outputs, h

  def updated_tables(self, rate, T):
    """Running-average update of the population tables with this run's moments."""
    new = {k: np.array(v, np.float64) for k, v in self.tables.items()}
    for site, per_t in self.moments.items():
      if not per_t:
        continue
      kind = self.kinds[('input', 'recurrent', 'cell').index(site)]
      if kind == 'bn_step':
        for t, mom in per_t.items():
          if mom is not None:
            for stat, val in zip(('mean', 'var'), mom[:2]):
              new[f'{site}_{stat}'][t] = (1 - rate) * new[f'{site}_{stat}'][t] + rate * val
      else:  # shared: pool all valid positions
        if 'all' in per_t:
          mean, var, _ = per_t['all']
        else:
          valid = [mom for mom in per_t.values() if mom is not None]
          n = sum(mm[2] for mm in valid)
          mean = sum(mm[2] * mm[0] for mm in valid) / n
          var = sum(mm[2] * (mm[1] + mm[0] ** 2) for mm in valid) / n - mean ** 2
        for stat, val in (('mean', mean), ('var', var)):
          new[f'{site}_{stat}'] = (1 - rate) * new[f'{site}_{stat}'] + rate * val
    return new


class GRUReference(LSTMReference):
  """The normalized GRU of docs/method.md ("GRU"), gate order [n, r, z], with the per-site
  normalizations of LSTMReference at the input and recurrent sites (a GRU has no cell site):

    (x_n, x_r, x_z) = N_x(W_x x_t),  (h_n, h_r, h_z) = N_h(W_h h_{t-1}),  (b_n, b_r, b_z) = b
    r = sigmoid(x_r + h_r + b_r),  z = sigmoid(x_z + h_z + b_z)
    n = tanh(x_n + b_n + r * (h_n + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}
  """

  def run(self, x, mask, *, train, reverse=False, noise=None):
    """x [B, T, D], mask [B, T] -> outputs [B, T, H], final h [B, H]."""
    mask, lengths, B, T, H, ax, kh, h = self._start(x, mask, train, reverse, noise)
    b = np.asarray(self.p['bias'], np.float64)
    b_hn = np.asarray(self.p['bias_hn'], np.float64)
    acc = {'recurrent': [(0, 0.0, 0.0)] * B}
    outputs = np.zeros((B, T, H))
    for t in range(T):
      m = mask[:, t]
      ah = self.step_norm('recurrent', self.kinds[1], h @ kh, m, t, train, h, acc)
      x_n, x_r, x_z = ax[:, t, :H], ax[:, t, H:2 * H], ax[:, t, 2 * H:]
      h_n, h_r, h_z = ah[:, :H], ah[:, H:2 * H], ah[:, 2 * H:]
      with np.errstate(over='ignore'):  # the tests put huge garbage in padded (discarded) steps
        r = sigmoid(x_r + h_r + b[H:2 * H])
        z = sigmoid(x_z + h_z + b[2 * H:])
      n = np.tanh(x_n + b[:H] + r * (h_n + b_hn))
      h_new = (1 - z) * n + z * h
      for i in range(B):
        if m[i] > 0:
          h[i] = h_new[i]
          outputs[i, t] = h_new[i]
    if reverse:
      outputs = reverse_valid_np(outputs, lengths)
    return outputs, h


def term_norm_np(a, valid, kind, gamma, table, *, train, eps):
  """A BN-everywhere term (Cooijmans et al. 2016 sec. 5.4): 'batch' standardizes with the mean
  and biased variance over the positions with valid == 1 (all valid document positions of the
  batch for a [B, T, F] term, the valid rows for a [B, F] term) in training and with the
  population table in evaluation; 'layer' over the features of each position."""
  if kind == 'none':
    return a
  if kind == 'layer':
    mu = a.mean(-1, keepdims=True)
    return gamma * (a - mu) / np.sqrt(a.var(-1, keepdims=True) + eps)
  if train:
    mean, var, _ = moments(a.reshape(-1, a.shape[-1]), valid.reshape(-1))
  else:
    mean, var = table['input_mean'], table['input_var']
  return gamma * (a - mean) / np.sqrt(var + eps)


def attention_np(p, stats, y_d, document_mask, u, candidates, *, everywhere, answer_mask,
                 train, eps):
  """The Attentive Reader's attention and output (Hermann et al. 2015 eqs. 5-6), with a Python
  loop over examples and positions for the masked softmax:

    m(t) = tanh(N(W_ym y_d(t)) + N(W_um u) + b_m),  s(t) ∝ exp(w_ms . m(t)) over valid t,
    r = sum_t s(t) y_d(t),  g = tanh(N(W_rg r) + N(W_ug u) + b_g),
    logits = W_a g + b_a, -inf outside the candidates (answer_mask='candidates').

  p: the 'attention' params, stats: its 'batch_stats'. Returns (logits [B, E], s [B, T])."""
  f = lambda t: np.asarray(t, np.float64)
  kernel = lambda name: f(p[name]['kernel'])
  valid = np.asarray(document_mask) > 0
  rows = valid.any(1)

  def norm(name, a, where):
    if everywhere == 'none':
      return a
    return term_norm_np(a, where, everywhere, f(p[name]['site']['gamma']),
                        {k: f(v) for k, v in stats.get(name, {}).items()}, train=train, eps=eps)

  y_d, u = f(y_d), f(u)
  a_ym = norm('norm_ym', y_d @ kernel('W_ym'), valid)
  a_um = norm('norm_um', u @ kernel('W_um'), rows)
  m = np.tanh(a_ym + a_um[:, None, :] + f(p['b_m']))
  score = (m @ kernel('w_ms'))[..., 0]
  B, T = score.shape
  s = np.zeros((B, T))
  for b in range(B):
    idx = [t for t in range(T) if valid[b, t]]
    if idx:
      e = np.exp(score[b, idx] - score[b, idx].max())
      s[b, idx] = e / e.sum()
  r = np.einsum('bt,btd->bd', s, y_d)
  g = np.tanh(norm('norm_rg', r @ kernel('W_rg'), rows) + norm('norm_ug', u @ kernel('W_ug'), rows)
              + f(p['b_g']))
  logits = g @ kernel('W_a') + f(p['W_a']['bias'])
  if answer_mask == 'candidates':
    logits = np.where(np.asarray(candidates) > 0, logits, -np.inf)
  return logits, s


def attentive_reader_np(params, stats, document, document_mask, query, query_mask, candidates,
                        *, scheme, kinds, everywhere, answer_mask, bidirectional, train, eps,
                        max_time_steps):
  """The whole Attentive Reader: embedding, one-layer LSTMReference encoders (forward, and the
  valid-prefix reversed backward pass when bidirectional), `attention_np`.
  y_d(t) = [fwd_t; bwd_t], u = [fwd_|q|; bwd_1]."""
  emb = np.asarray(params['embed']['embedding'], np.float64)

  def encode(name, tokens, mask):
    outs, finals = [], []
    for direction in ('fwd', 'bwd') if bidirectional else ('fwd',):
      layer = f'{name}_{direction}'
      ref = LSTMReference(params[layer]['layer_0']['cell'], scheme, eps=eps, lam=0.0,
                          tables={k: np.asarray(v, np.float64)
                                  for k, v in stats.get(layer, {}).get('layer_0', {}).items()},
                          max_time_steps=max_time_steps, kinds=kinds)
      y, h = ref.run(emb[np.asarray(tokens)], mask, train=train, reverse=direction == 'bwd')
      outs.append(y)
      finals.append(h)
    return np.concatenate(outs, -1), np.concatenate(finals, -1)

  y_d, _ = encode('document', document, document_mask)
  _, u = encode('query', query, query_mask)
  return attention_np(params['attention'], stats.get('attention', {}), y_d, document_mask, u,
                      candidates, everywhere=everywhere, answer_mask=answer_mask, train=train,
                      eps=eps)
