"""Everything this project measures on a GPU, in one call, written to one JSON file.

    python scripts/gpu_check.py --out gpu.json                # the GPU (docs/benchmarks.md, "GPU")
    python scripts/gpu_check.py --smoke --out /tmp/smoke.json # any machine: tiny shapes, minutes

Sections, in priority order (each in its own child process: a crash, an out-of-memory or a
timeout of one is recorded and the others still run; the JSON is rewritten after each; sections
that would start after --budget-s are recorded as skipped; --sections runs a subset):

  bench/<shape>   scripts/benchmark.py's side-by-side train step (normrnn.bench, its shapes:
      sMNIST B64 T784 D1 H100, PTB B64 T100 one-hot 50 H1000; float32, forward + backward +
      Adam): flax's nn.OptimizedLSTMCell (the reference), cuDNN's LSTM through
      jax.experimental.rnn, every LSTM scheme of normrnn through the scan, and the schemes of
      --kernel-schemes through each registered kernel of normrnn.kernels ('fused', 'pallas';
      'cpu' refuses on a GPU: it runs on the CPU backend only), named '<scheme>@<kernel>'. Medians of --reps round-robin steps, ratios to flax and to
      cuDNN, XLA's memory estimate, compile time; a model that fails (a kernel refusing a size,
      cuDNN missing) is listed under 'errors'.
  train/<task>/<norm>/<kernel>   --steps steps of the paper-size config (configs/smnist.py,
      configs/ptb_char.py, size=paper) on the data that is here, mnist10k and ptb_char_valid
      (NOT the paper's data sets: same shapes and steps, other examples): compile time, median
      and mean step time, the host's batch time, the device's peak memory
      (`memory_stats()['peak_bytes_in_use']`, this process only) and XLA's estimate, first and
      last loss, and the projected wall time of the paper's schedule = train.num_steps x (mean
      step + mean batch time), evaluation and checkpoints not included.
  pallas_variants   the Pallas kernel alone (normrnn/kernels/pallas_lstm.py: forward + backward
      of the BN-LSTM recurrence at the sMNIST shape) for W_h resident / streamed, float32 / tf32
      matmuls and 4 / 8 warps: time, and the largest difference of outputs and gradients from the
      same kernel in interpret mode (which the CPU tests prove equal to the scan).

The result records the device, versions, default matmul precision, date and command.
"""
import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPS, STEPS, BUDGET_S = 10, 200, 540
KERNEL_SCHEMES = ('none', 'batch', 'layer')  # the schemes timed through each kernel
# sMNIST BN-LSTM first: the kernel's target; each section's time limit in seconds.
SECTIONS = (
    ('bench/smnist', 240), ('train/smnist/batch/scan', 90), ('train/smnist/batch/pallas', 90),
    ('train/ptb/batch/scan', 90), ('bench/ptb', 200), ('pallas_variants', 150),
    ('train/smnist/batch/fused', 90), ('train/ptb/batch/fused', 90),
    ('train/smnist/none/scan', 90), ('train/ptb/none/scan', 90))
SMOKE_SECTIONS = (('bench/smnist', 120), ('bench/ptb', 120), ('pallas_variants', 120),
                  ('train/smnist/batch/pallas', 120), ('train/ptb/batch/scan', 120))
SMOKE_SHAPES = dict(smnist=dict(batch=4, length=6, hidden=8),
                    ptb=dict(batch=4, length=5, hidden=8))
TASKS = dict(smnist=('smnist.py', 'mnist10k', 'mnist'),
             ptb=('ptb_char.py', 'ptb_char_valid', 'ptb_char'))


def _error(exc: BaseException) -> str:
  return f'{type(exc).__name__}: {exc}'[:600]


def _progress(args, partial: dict) -> None:
  """Writes a child's partial result, so that a timeout still shows how far it got."""
  if args.child:
    Path(args.out).write_text(json.dumps(dict(partial=partial), indent=1))


# ----------------------------------------------------------------------------------------------
# bench/<shape>


def cudnn_model(hidden, classes, per_step, one_hot):
  """cuDNN's LSTM (jax.experimental.rnn.lstm; GPU only) with the reference's Dense head."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jax.experimental import rnn

  class CudnnLSTM(nn.Module):
    @nn.compact
    def __call__(self, x, mask=None, *, train=True):
      del mask, train
      if one_hot:
        x = jax.nn.one_hot(x, one_hot, dtype=jnp.float32)
      b, t, d = x.shape
      w = self.param('lstm', lambda k: rnn.init_lstm_weight(k, d, hidden, 1, False))
      zeros = jnp.zeros((1, b, hidden), x.dtype)
      y = rnn.lstm(x, zeros, zeros, w, jnp.full((b,), t, jnp.int32), d, hidden, 1, 0.0,
                   False)[0]
      return nn.Dense(classes)(y if per_step else y[:, -1])

  return CudnnLSTM()


def bench_shape(shape: str, args) -> dict:
  import jax
  import optax
  from normrnn import kernels
  from normrnn.bench import (REF, SHAPES, JaxBench, build_model, default_schemes, forward_flops,
                             make_batch)

  s = dict(SHAPES[shape], **(SMOKE_SHAPES[shape] if args.smoke else {}))
  batch, tx = make_batch(s, s['length']), optax.adam(1e-3)
  schemes = args.schemes or default_schemes()
  # build_model's default settings: unroll 1, remat and hoist_input as the task configs.
  makers = {REF: lambda: build_model(REF, s),
            'cudnn_lstm': lambda: cudnn_model(s['hidden'], s['classes'], s['per_step'],
                                              s['features'] if s['per_step'] else 0)}
  for name in schemes:
    makers[name] = lambda name=name: build_model(name, s)
  for kernel in kernels.KERNELS:
    for name in [x for x in args.kernel_schemes if x in schemes]:
      makers[f'{name}@{kernel}'] = lambda name=name, kernel=kernel: build_model(name, s,
                                                                                 kernel=kernel)
  benches, errors = {}, {}
  for name, make in makers.items():
    print(f'[{shape}] compiling {name}', file=sys.stderr, flush=True)
    try:
      bench = JaxBench(name, make(), batch, tx)
      for _ in range(2):  # warm-up
        jax.block_until_ready(bench.step())
      benches[name] = bench
    except Exception as e:  # pylint: disable=broad-except
      errors[name] = _error(e)
    _progress(args, dict(compiled=list(benches), errors=errors))
  for _ in range(args.reps):  # round-robin: noise hits every model alike
    for bench in benches.values():
      bench.rep()
  ms = {k: 1e3 * statistics.median(v.times) for k, v in benches.items()}
  out = dict(shape=dict(s), reps=args.reps, ms=ms, errors=errors,
             compile_s={k: v.compile_s for k, v in benches.items()},
             xla_memory_mb={k: v.memory_mb for k, v in benches.items()},
             gflops={k: 3 * forward_flops(s, s['length']) / (v / 1e3) / 1e9
                     for k, v in ms.items()})
  for base in (REF, 'cudnn_lstm'):
    if base in ms:
      out[f'ratio_to_{base}'] = {k: v / ms[base] for k, v in ms.items()}
  return out


# ----------------------------------------------------------------------------------------------
# train/<task>/<norm>/<kernel>


def train_run(task: str, norm: str, kernel: str, args) -> dict:
  import jax
  from normrnn.config.files import load_config
  from normrnn.experiment import Experiment

  config_file, data, data_dir = TASKS[task]
  size = 'smoke' if args.smoke else 'paper'
  config = load_config(f'{ROOT / "configs" / config_file}:norm={norm},size={size},data={data}',
                       {'data.dir': str(Path(args.data_root).resolve() / data_dir),
                        'model.kernel': kernel})
  exp = Experiment.from_config(config)
  state = exp.init_state()
  t = time.perf_counter()
  step = jax.jit(exp.train_step(), donate_argnums=0).lower(
      state, exp.task.train_batch(0)).compile()
  compile_s = time.perf_counter() - t
  try:
    memory = step.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend reports it)
    memory = None
  step_s, batch_s, losses = [], [], []
  warmup = 3
  for i in range(args.steps + warmup):
    t = time.perf_counter()
    batch = exp.task.train_batch(i)
    t1 = time.perf_counter()
    state, metrics = step(state, batch)
    losses.append(float(jax.block_until_ready(metrics['loss'])))
    if i >= warmup:
      step_s.append(time.perf_counter() - t1)
      batch_s.append(t1 - t)
  stats = jax.devices()[0].memory_stats() or {}
  per_step = statistics.mean(step_s) + statistics.mean(batch_s)
  steps = config.train.num_steps
  return dict(
      config=f'configs/{config_file}:norm={norm},size={size},data={data}', kernel=kernel,
      data_note=f'{data}: the data here, not the paper\'s data set',
      batch_size=config.data.batch_size, hidden=config.model.hidden, steps_timed=len(step_s),
      compile_s=compile_s, step_ms_median=1e3 * statistics.median(step_s),
      step_ms_mean=1e3 * statistics.mean(step_s), batch_ms_mean=1e3 * statistics.mean(batch_s),
      peak_memory_mb=stats['peak_bytes_in_use'] / 1e6 if 'peak_bytes_in_use' in stats else None,
      xla_memory_mb=None if memory is None else (
          memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes) / 1e6,
      loss_first=losses[0], loss_last=losses[-1], paper_steps=steps,
      projected_hours=steps * per_step / 3600)


# ----------------------------------------------------------------------------------------------
# pallas_variants


def pallas_variants(args) -> dict:
  import jax
  import jax.numpy as jnp
  from normrnn.kernels import pallas_lstm

  t, b, h = (6, 4, 8) if args.smoke else (784, 64, 100)
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  x = jax.random.normal(keys[0], (t, b, 4 * h)) * 0.5
  h0, c0 = (jax.random.normal(k, (b, h)) * 0.1 for k in keys[1:3])
  w = jax.random.normal(keys[3], (h, 4 * h)) / jnp.sqrt(h)
  bias = jax.random.normal(keys[4], (4 * h,)) * 0.1
  gains = 0.1 + 0.01 * jax.random.normal(keys[5], (5 * h,))
  mask = jnp.ones((t, b))

  def grad_fn(cfg):
    def loss(x, w, bias, gains):
      hs, cs, _ = pallas_lstm.lstm_recurrence(
          x, mask, h0, c0, w, bias, cfg=cfg, recurrent_gain=gains[:4 * h],
          cell_gain=gains[4 * h:], cell_shift=bias[:h])
      return jnp.sum(hs[-1]) + jnp.sum(jnp.sin(hs)) * 1e-3, hs
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))

  base = dict(hidden=h, recurrent='batch', cell='batch', train=True)
  variants = [dict(), dict(precision='tf32'), dict(num_warps=4), dict(weights='resident')]
  if args.smoke:
    variants = variants[:1]
  reference = []  # interpret mode's result, computed once if a variant is compiled

  def difference(result):
    if not reference:
      reference.append(jax.block_until_ready(
          grad_fn(pallas_lstm.KernelConfig(**base, interpret=True))(x, w, bias, gains)))
    return max(float(jnp.max(jnp.abs(a - r)))
               for a, r in zip(jax.tree.leaves(result), jax.tree.leaves(reference[0])))

  out = {}
  for v in variants:
    cfg = pallas_lstm.KernelConfig(**base, **v)
    key = ','.join(f'{k}={val}' for k, val in v.items()) or 'default'
    try:
      fn = grad_fn(cfg)
      t0 = time.perf_counter()
      result = jax.block_until_ready(fn(x, w, bias, gains))
      compile_s = time.perf_counter() - t0
      times = []
      for _ in range(args.reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x, w, bias, gains))
        times.append(time.perf_counter() - t0)
      out[key] = dict(ms=1e3 * statistics.median(times), first_call_s=compile_s,
                      resident=cfg.resident, interpreted=cfg.use_interpret(),
                      max_abs_diff_vs_interpret=None if cfg.use_interpret() else difference(result))
    except Exception as e:  # pylint: disable=broad-except
      out[key] = dict(error=_error(e))
    _progress(args, dict(variants=out))
  return dict(shape=dict(time=t, batch=b, hidden=h, scheme='batch (train)'), variants=out)


# ----------------------------------------------------------------------------------------------
# The parent: runs each section in a child process and collects the results.


def run_section(name: str, args) -> dict:
  kind, *rest = name.split('/')
  if kind == 'bench':
    return bench_shape(rest[0], args)
  if kind == 'train':
    return train_run(*rest, args)
  if kind == 'pallas_variants':
    return pallas_variants(args)
  raise ValueError(f'unknown section {name!r}')


def environment() -> dict:
  import jax
  import jaxlib
  import flax
  import optax
  dev = jax.devices()[0]
  return dict(device=f'{dev.platform}: {dev.device_kind}', device_count=jax.device_count(),
              python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
              flax=flax.__version__, optax=optax.__version__,
              default_matmul_precision=str(getattr(jax.config, 'jax_default_matmul_precision',
                                                   None)))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='the JSON file to write')
  p.add_argument('--smoke', action='store_true', help='tiny shapes and few steps (any machine)')
  p.add_argument('--sections', default='', help='comma-separated subset of the section names')
  p.add_argument('--reps', type=int, default=None, help=f'timed steps per model ({REPS})')
  p.add_argument('--steps', type=int, default=None, help=f'timed training steps ({STEPS})')
  p.add_argument('--budget-s', type=float, default=BUDGET_S,
                 help='start no section after this many seconds')
  p.add_argument('--schemes', default='', help='bench: scan schemes (default: every LSTM one)')
  p.add_argument('--kernel-schemes', default=','.join(KERNEL_SCHEMES),
                 help='bench: schemes also run through every registered kernel')
  p.add_argument('--data-root', default=str(ROOT.parent / 'shared' / 'data'),
                 help='folder holding mnist/ and ptb_char/ (mnist10k, ptb_char_valid)')
  p.add_argument('--child', default='', help=argparse.SUPPRESS)  # one section, in-process
  args = p.parse_args(argv)
  args.reps = args.reps or (1 if args.smoke else REPS)
  args.steps = args.steps or (2 if args.smoke else STEPS)
  args.schemes = [x for x in args.schemes.split(',') if x] or (['batch'] if args.smoke else [])
  args.kernel_schemes = [x for x in args.kernel_schemes.split(',') if x]
  if args.smoke:
    args.kernel_schemes = [x for x in args.kernel_schemes if x in args.schemes]
  table = dict(SMOKE_SECTIONS if args.smoke else SECTIONS)
  args.section_list = [x for x in args.sections.split(',') if x] or list(table)
  args.limits = {}
  for name in args.section_list:
    parts = name.split('/')
    limit = table.get(name, dict(SECTIONS).get(name))
    if limit is None and len(parts) == 4 and parts[0] == 'train' and parts[1] in TASKS:
      limit = 120  # any train/<task>/<norm>/<kernel>
    if limit is None:
      p.error(f'unknown section {name!r}; valid: {", ".join(dict(SECTIONS))} or '
              f'train/<{"|".join(TASKS)}>/<norm>/<kernel>')
    args.limits[name] = limit
  return args


def child_command(name: str, out: str, argv) -> list[str]:
  return [sys.executable, str(Path(__file__).resolve()), *argv, '--child', name, '--out', out]


def strip(argv, *flags):
  """argv without the given --flag value pairs (the parent's --out and --sections)."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
      continue
    if a in flags:
      skip = True
      continue
    if not any(a.startswith(f + '=') for f in flags):
      out.append(a)
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.child:  # one section in this process
    try:
      result = dict(result=run_section(args.child, args), environment=environment())
    except Exception as e:  # pylint: disable=broad-except
      result = dict(error=_error(e), traceback=traceback.format_exc()[-3000:])
    Path(args.out).write_text(json.dumps(result, indent=1))
    return
  start = time.perf_counter()
  report = dict(
      date=datetime.datetime.now().isoformat(timespec='seconds'),
      command=' '.join(['python', 'scripts/gpu_check.py', *argv]), smoke=args.smoke,
      environment=None, sections={})  # the environment comes from a child: this process never
  # initializes the accelerator (JAX would reserve most of its memory for itself)
  out = Path(args.out)
  child_argv = strip(argv, '--out', '--sections')
  for name in args.section_list:
    elapsed = time.perf_counter() - start
    # Every section ends by budget + 40 s (a device call is limited to 600 s).
    limit = min(args.limits[name], args.budget_s + 40 - elapsed)
    if elapsed > args.budget_s or limit < 30:
      report['sections'][name] = dict(skipped=f'time budget: {elapsed:.0f} s of {args.budget_s} s')
      continue
    tmp = out.with_name(out.name + f'.{name.replace("/", "_")}.part')
    print(f'== {name} (limit {limit:.0f} s)', file=sys.stderr, flush=True)
    t = time.perf_counter()
    try:
      proc = subprocess.run(child_command(name, str(tmp), child_argv), timeout=limit,
                            capture_output=True, text=True, cwd=ROOT)
      section = json.loads(tmp.read_text()) if tmp.exists() else {}
      if 'result' not in section and 'error' not in section:  # e.g. killed by a signal
        section['error'] = f'child exited {proc.returncode} without a result'
      if proc.returncode or 'error' in section:
        section['stderr_tail'] = proc.stderr[-2000:]
    except subprocess.TimeoutExpired as e:
      section = json.loads(tmp.read_text()) if tmp.exists() else {}  # the partial result
      section.update(error=f'timeout after {limit:.0f} s',
                     stderr_tail=(e.stderr or b'')[-2000:].decode(errors='replace')
                     if isinstance(e.stderr, bytes) else (e.stderr or '')[-2000:])
    finally:
      tmp.unlink(missing_ok=True)
    section['wall_s'] = time.perf_counter() - t
    report['environment'] = report['environment'] or section.pop('environment', None)
    section.pop('environment', None)
    report['sections'][name] = section
    report['total_s'] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=1))
    print(f'   {name}: {"error" if "error" in section else "ok"} in {section["wall_s"]:.0f} s',
          file=sys.stderr, flush=True)
  report['total_s'] = time.perf_counter() - start
  out.write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
  main()
