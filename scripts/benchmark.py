"""Train-step speed of every normrnn scheme beside flax's OptimizedLSTMCell and PyTorch, in one
process.

    python scripts/benchmark.py --shape smnist|ptb --json OUT [--reps N] [--schemes a,b,...]
        [--kernels fused,...] [--unroll N] [--remat auto|true|false]
        [--hoist-input auto|true|false] [--eval-length L] [--no-torch] [--torch-threads N]

The shapes, the models, the batches, the train step and its timing are `normrnn.bench`'s (shared
with scripts/gpu_check.py); this script adds the command line, the run plan (which kernel runs
which scheme), the torch columns, the matmul peak, the eval pass and the tables.

One float32 train step = forward + backward over the whole sequence + optax Adam update
(softmax cross-entropy, mean over the targets), jitted; compile (`.lower().compile()`) timed
apart as compile_s; 2 warm-up steps; `--reps` timed steps (`jax.block_until_ready`) taken
round-robin over the models so that machine noise hits all alike, each one right after an
untimed step of the same model (as in a training loop: a step timed right after another model's
was up to 50% slower, that model's lingering work, freeing its buffers and spinning threads,
taking the CPUs); the median is reported.
Models:
* flax_optimized_lstm = `nn.RNN(nn.OptimizedLSTMCell(H))` + Dense, the reference (unroll 1
  always: --unroll/--remat go to the normrnn models as RNNSpec.unroll/remat);
* one per LSTM scheme of `normrnn.norms.NORMS` (by default every one registered when the command
  runs, see `normrnn.bench.default_schemes`; `models.SequenceClassifier` for smnist,
  `models.CharLM` for ptb; options `NORMS[name].make_options()`: the scheme's declared
  gamma_init and option defaults; W_h orthogonal; max_time_steps = the sequence length;
  hoist_input and remat as the task configs: hoist_input False for both, remat True for smnist
  and False for ptb, the faster settings on CPU, docs/benchmarks.md), run by the reference scan
  (model.kernel='scan');
* '<scheme>/<kernel>' = the same model run by each kernel of --kernels (default: fused,cpu;
  `normrnn.kernels.KERNELS`) that supports the scheme (the others are listed under "skipped");
  the JSON records the C++ kernel's BLAS kernel set (`cpu_kernel_blas`, e.g. SkylakeX or Haswell:
  OPENBLAS_CORETYPE) and its threads per call (`cpu_kernel_threads`);
* torch_lstm = `torch.nn.LSTM` + Linear + Adam, and torch_bn_lstm = a BN-LSTM written the way the
  public PyTorch reimplementations write it (per-step `F.batch_norm` with per-step running
  buffers at the three sites, one Python loop over time, the length mask blended into the
  state, fwd + bwd + SGD; `torch_bn_lstm`), when torch imports (threads: --torch-threads,
  default the CPU count). torch is optional (`pip install torch`); without it the two columns
  are skipped with a note.

gflops = nominal matmul FLOPs of one train step / median time, the same count for every model:
forward = 2 * B * T * (D * 4H + H * 4H)  (LSTM input and recurrent matmuls; one-hot inputs
counted as a dense matmul) + 2 * B * T_out * H * C (head; T_out = T for ptb, 1 for smnist), and
train step = 3 x forward (backward = two matmuls per forward matmul). Normalization arithmetic
and elementwise gate math are not counted. matmul_gflops = best of 10 runs of a jitted
2048x2048 float32 matmul, measured before and after the models (the higher is kept).
peak_memory_mb = XLA's static buffer assignment of the compiled step
(`compiled.memory_analysis()`: argument + output + temp bytes, 1 MB = 1e6 bytes): an estimate
of the step's device-memory peak from the compiler, not a measured process RSS.
ratio_to_flax and ratio_to_torch_bn = median / the median of flax_optimized_lstm and of
torch_bn_lstm (measured in the same process). load_average = os.getloadavg() before and after.
--eval-length L adds an "eval" entry: median time and memory of one jitted eval forward pass
(population statistics, train=False) of L steps, same batch size.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normrnn import kernels
from normrnn.bench import (AUTO, REF, SHAPES, JaxBench, build_model, default_schemes,
                           forward_flops, make_batch, memory_mb, spec_settings, timed)
from normrnn.kernels import cpu_lstm
from normrnn.norms import NORMS

TORCH, TORCH_BN = 'torch_lstm', 'torch_bn_lstm'


def spec_kwargs(args):
  """build_model's unroll, remat and hoist_input from the parsed `args` ('true'/'false' as bools,
  'auto' as is: the shape's setting)."""
  choice = {'auto': AUTO, 'true': True, 'false': False}
  return dict(unroll=args.unroll, remat=choice[args.remat], hoist_input=choice[args.hoist_input])


def kernel_refusal(name, kernel, s, args):
  """None if `kernel` runs scheme `name` with these settings, else why not."""
  settings = spec_settings(s, **spec_kwargs(args))
  return kernels.refusal(kernel, 'lstm', NORMS[name], hoist_input=settings['hoist_input'],
                         remat=settings['remat'], unroll=settings['unroll'], hidden=s['hidden'])


class TorchBench:
  """A PyTorch model + Linear head on the same shapes (CPU, `threads` threads, 0 = CPU count):
  torch.nn.LSTM with Adam (bn=False) or `torch_bn_lstm` with SGD (bn=True)."""

  def __init__(self, s, batch, *, bn=False, threads=0):
    import torch
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    self.torch, self.s, self.bn, self.times = torch, s, bn, []
    if bn:
      self.lstm = torch_bn_lstm(torch, s)
    else:
      self.lstm = torch.nn.LSTM(s['features'], s['hidden'], batch_first=True)
    self.head = torch.nn.Linear(s['hidden'], s['classes'])
    params = list(self.lstm.parameters()) + list(self.head.parameters())
    self.opt = torch.optim.SGD(params, lr=1e-3) if bn else torch.optim.Adam(params)
    x = torch.as_tensor(np.array(batch['inputs']))
    if s['per_step']:
      x = torch.nn.functional.one_hot(x.long(), s['features']).float()
    self.x, self.y = x, torch.as_tensor(np.array(batch['targets'])).long()
    self.mask = torch.as_tensor(np.array(batch['mask']))
    self.compile_s, self.memory_mb = None, None

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    h = self.lstm(self.x, self.mask) if self.bn else self.lstm(self.x)[0]
    logits = self.head(h if self.s['per_step'] else h[:, -1])
    loss = self.torch.nn.functional.cross_entropy(logits.reshape(-1, self.s['classes']),
                                                  self.y.reshape(-1))
    loss.backward()
    self.opt.step()
    return loss.item()

  rep = JaxBench.rep


def torch_bn_lstm(torch, s):
  """The BN-LSTM of the public PyTorch reimplementations (Cooijmans et al. 2016, eqs. 6-8), as
  they write it: `SeparatedBatchNorm1d` = `F.batch_norm` with one pair of running buffers per
  time step (steps beyond max_length use the last pair), at W_h h, W_x x and c; separate input
  and recurrent matmuls; a Python loop over time with the length mask blended into (h, c).
  Returns a module mapping (x [B, T, D], mask [B, T]) to the hidden states [B, T, H]."""
  nn, F = torch.nn, torch.nn.functional

  class SeparatedBatchNorm1d(nn.Module):
    def __init__(self, features, max_length, shift):
      super().__init__()
      self.max_length = max_length
      self.weight = nn.Parameter(torch.full((features,), 0.1))
      self.bias = nn.Parameter(torch.zeros(features)) if shift else None
      for t in range(max_length):
        self.register_buffer(f'running_mean_{t}', torch.zeros(features))
        self.register_buffer(f'running_var_{t}', torch.ones(features))

    def forward(self, a, time):
      time = min(time, self.max_length - 1)
      return F.batch_norm(a, getattr(self, f'running_mean_{time}'),
                          getattr(self, f'running_var_{time}'), self.weight, self.bias,
                          training=self.training, momentum=0.1, eps=1e-5)

  class BNLSTMCell(nn.Module):
    def __init__(self, d, h, max_length):
      super().__init__()
      self.weight_ih = nn.Parameter(nn.init.orthogonal_(torch.empty(d, 4 * h)))
      self.weight_hh = nn.Parameter(nn.init.orthogonal_(torch.empty(h, 4 * h)))
      self.bias = nn.Parameter(torch.zeros(4 * h))
      self.bn_ih = SeparatedBatchNorm1d(4 * h, max_length, shift=False)
      self.bn_hh = SeparatedBatchNorm1d(4 * h, max_length, shift=False)
      self.bn_c = SeparatedBatchNorm1d(h, max_length, shift=True)

    def forward(self, x, hx, time):
      h0, c0 = hx
      pre = (self.bn_hh(h0 @ self.weight_hh, time) + self.bn_ih(x @ self.weight_ih, time)
             + self.bias)
      g, f, i, o = pre.chunk(4, dim=1)
      c1 = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
      return torch.sigmoid(o) * torch.tanh(self.bn_c(c1, time)), c1

  class BNLSTM(nn.Module):
    def __init__(self, d, h, max_length):
      super().__init__()
      self.cell, self.h = BNLSTMCell(d, h, max_length), h

    def forward(self, x, mask):
      h = c = x.new_zeros(x.shape[0], self.h)
      hs = []
      for t in range(x.shape[1]):
        h1, c1 = self.cell(x[:, t], (h, c), t)
        m = mask[:, t:t + 1]
        h, c = h1 * m + h * (1 - m), c1 * m + c * (1 - m)
        hs.append(h)
      return torch.stack(hs, 1)

  return BNLSTM(s['features'], s['hidden'], s['length'])


def matmul_gflops(n=2048, reps=10):
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x, y = jax.random.normal(k1, (n, n)), jax.random.normal(k2, (n, n))
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(x, y))
  return 2 * n ** 3 / min(timed(lambda: mm(x, y)) for _ in range(reps)) / 1e9


def eval_bench(benches, s, length, reps):
  """Median time and memory of one eval forward pass (train=False) of `length` steps."""
  batch = make_batch(s, length, seed=1)
  runs, out = {}, dict(length=length, ms={}, peak_memory_mb={})
  for name, b in benches.items():
    params, stats, _ = b.state
    variables = {'params': params, **({'batch_stats': stats} if stats else {})}
    fwd = jax.jit(lambda v, x, m, model=b.model: model.apply(v, x, m, train=False))
    compiled = fwd.lower(variables, batch['inputs'], batch['mask']).compile()
    out['peak_memory_mb'][name] = memory_mb(compiled)
    runs[name] = lambda c=compiled, v=variables: c(v, batch['inputs'], batch['mask'])
    jax.block_until_ready(runs[name]())
  times = {name: [] for name in runs}
  for _ in range(reps):
    for name, run in runs.items():
      times[name].append(timed(run))
  out['ms'] = {k: 1e3 * statistics.median(v) for k, v in times.items()}
  return out


def fmt(v, spec):
  return '-' if v is None else format(v, spec)


def cpu_name():
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def parse_args(argv=None):
  """The command line; args.schemes is the list of schemes to run (default_schemes() unless
  --schemes is given)."""
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--shape', choices=sorted(SHAPES), required=True)
  p.add_argument('--json', required=True, help='output file')
  p.add_argument('--reps', type=int, default=5)
  p.add_argument('--schemes', default='',
                 help='comma-separated NORMS keys (default: every registered LSTM scheme: '
                 f'{",".join(default_schemes())})')
  p.add_argument('--kernels', default='fused,cpu',
                 help='comma-separated kernels (normrnn.kernels.KERNELS) that also run every scheme '
                 "they support, beside the reference scan ('' = none)")
  p.add_argument('--unroll', type=int, default=1, help='RNNSpec.unroll of the normrnn models')
  p.add_argument('--remat', choices=('auto', 'true', 'false'), default='auto',
                 help='RNNSpec.remat; auto = as the task configs (smnist true, ptb false)')
  p.add_argument('--hoist-input', choices=('auto', 'true', 'false'), default='auto',
                 help='RNNSpec.hoist_input; auto = as the task configs (false)')
  p.add_argument('--eval-length', type=int, default=0, help='also time an eval forward pass')
  p.add_argument('--no-torch', action='store_true', help='skip the torch columns')
  p.add_argument('--torch-threads', type=int, default=0,
                 help='torch.set_num_threads (0 = CPU count). On a loaded machine use 1: torch\'s '
                 'spinning worker threads then slow its steps down by up to 10x')
  args = p.parse_args(argv)
  valid = default_schemes()
  args.schemes = [x for x in args.schemes.split(',') if x] or valid
  if any(x not in valid for x in args.schemes):
    p.error(f'unknown scheme in {args.schemes}; valid: {", ".join(valid)}')
  args.kernels = [x for x in args.kernels.split(',') if x]
  if any(x not in kernels.KERNELS for x in args.kernels):
    p.error(f'unknown kernel in {args.kernels}; valid: {", ".join(kernels.KERNELS)}')
  return args


def add_torch(benches, s, batch, threads):
  """The two torch columns, or a note why there are none."""
  try:
    benches[TORCH] = TorchBench(s, batch, threads=threads)
    benches[TORCH_BN] = TorchBench(s, batch, bn=True, threads=threads)
  except ImportError:
    return 'torch is not installed (pip install torch): no torch columns'
  return None


def plan_runs(s, args):
  """({model key: (model name, kernel)}, {key: why skipped}): the reference, every scheme by the
  scan, then by each kernel of args.kernels that supports it ('<scheme>/<kernel>')."""
  runs, skipped = {REF: (REF, kernels.SCAN)}, {}
  runs.update({name: (name, kernels.SCAN) for name in args.schemes})
  for kernel in args.kernels:
    for name in args.schemes:
      why = kernel_refusal(name, kernel, s, args)
      if why is None:
        runs[f'{name}/{kernel}'] = (name, kernel)
      else:
        skipped[f'{name}/{kernel}'] = why
  return runs, skipped


def main(argv=None):
  args = parse_args(argv)
  s = SHAPES[args.shape]
  batch, tx = make_batch(s, s['length']), optax.adam(1e-3)
  flops = 3 * forward_flops(s, s['length'])
  load = [os.getloadavg()]
  peak = matmul_gflops()

  benches = {}
  runs, skipped = plan_runs(s, args)
  for key, (name, kernel) in runs.items():
    print(f'compiling {key} ...', file=sys.stderr, flush=True)
    benches[key] = JaxBench(key, build_model(name, s, kernel=kernel, **spec_kwargs(args)),
                             batch, tx)
  if not args.no_torch:
    note = add_torch(benches, s, batch, args.torch_threads)
    if note:
      skipped[TORCH] = skipped[TORCH_BN] = note
      print(note, file=sys.stderr)
  for b in benches.values():  # warm-up
    for _ in range(2):
      jax.block_until_ready(b.step())
  for i in range(args.reps):  # round-robin: noise hits every model alike
    for b in benches.values():
      b.rep()
    print(f'rep {i + 1}/{args.reps} done', file=sys.stderr, flush=True)
  peak = max(peak, matmul_gflops())
  load.append(os.getloadavg())
  ms = {k: 1e3 * statistics.median(b.times) for k, b in benches.items()}
  dev = jax.devices()[0]
  result = dict(
      shape=args.shape, device=f'{dev} {dev.device_kind} ({cpu_name()}, {os.cpu_count()} cores)',
      date=datetime.datetime.now().isoformat(timespec='seconds'),
      command=' '.join(['python'] + sys.argv), load_average=dict(before=load[0], after=load[1]),
      matmul_gflops=peak, ms=ms,
      ratio_to_flax={k: v / ms[REF] for k, v in ms.items()},
      ratio_to_torch_bn={k: v / ms[TORCH_BN] for k, v in ms.items()} if TORCH_BN in ms else {},
      gflops={k: flops / (v / 1e3) / 1e9 for k, v in ms.items()},
      peak_memory_mb={k: b.memory_mb for k, b in benches.items()},
      compile_s={k: b.compile_s for k, b in benches.items()}, skipped=skipped)
  if 'cpu' in args.kernels and cpu_lstm.unavailable() is None:
    result.update(cpu_kernel_blas=cpu_lstm.blas_core(),
                  cpu_kernel_threads=cpu_lstm.threads(s['batch']))
  if args.eval_length:
    jax_benches = {k: b for k, b in benches.items() if isinstance(b, JaxBench)}
    result['eval'] = eval_bench(jax_benches, s, args.eval_length, args.reps)
  with open(args.json, 'w') as f:
    json.dump(result, f, indent=2)
  print_tables(result, s, args, flops)


def print_tables(result, s, args, flops):
  peak, ms = result['matmul_gflops'], result['ms']
  load = ', '.join(f'{k} {v[0]:.1f}' for k, v in result['load_average'].items())
  print(f'\n{args.shape}: B={s["batch"]} T={s["length"]} D={s["features"]} H={s["hidden"]} '
        f'C={s["classes"]}, {flops / 1e9:.2f} GFLOP/step, matmul peak {peak:.0f} GFLOP/s, '
        f'{args.reps} reps, unroll {args.unroll}, remat {args.remat}, '
        f'hoist_input {args.hoist_input}; 1-min load average {load}'
        + (f'; cpu kernel: {result["cpu_kernel_threads"]} threads, OpenBLAS '
           f'{result["cpu_kernel_blas"]}' if 'cpu_kernel_blas' in result else '') + '\n')
  print('| model | median ms | ratio to flax | ratio to torch BN-LSTM | GFLOP/s | % of matmul peak '
        '| memory MB | compile s |\n|---|---|---|---|---|---|---|---|')
  for k in ms:
    g = result['gflops'][k]
    print(f'| {k} | {ms[k]:.1f} | {result["ratio_to_flax"][k]:.2f} | '
          f'{fmt(result["ratio_to_torch_bn"].get(k), ".2f")} | {g:.1f} | '
          f'{100 * g / peak:.0f}% | {fmt(result["peak_memory_mb"][k], ".1f")} | '
          f'{fmt(result["compile_s"][k], ".1f")} |')
  for k, why in result['skipped'].items():
    print(f'skipped {k}: {why}')
  if args.eval_length:
    e = result['eval']
    print(f'\neval forward, {e["length"]} steps, batch {s["batch"]}\n')
    print('| model | median ms | memory MB |\n|---|---|---|')
    for k, v in e['ms'].items():
      print(f'| {k} | {v:.1f} | {fmt(e["peak_memory_mb"][k], ".1f")} |')


if __name__ == '__main__':
  main()
