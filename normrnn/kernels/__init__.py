"""Kernels: alternative implementations of the recurrence `normrnn.recurrent.Recurrent` runs
(config field `model.kernel`, `RNNSpec.kernel`).

'scan' (the default) is the reference: `flax.linen.scan` over the cell's `step`, differentiated
by autodiff. Every other kernel computes the same values (tested against the scan) faster for
the cells and schemes it supports, and is registered here as a `Kernel`: 'fused' (pure JAX,
fused_lstm.py), 'cpu' (the same loops in C++, cpu_lstm.py / cpu_lstm.cc), 'pallas' (GPU,
pallas_lstm.py). Each has:

  supports(cell, scheme, *, hoist_input, remat, unroll, hidden, train) -> None | reason
      `cell` a name of `normrnn.cells.CELLS`, `scheme` the (possibly per-site composed) Scheme
      of the layer, the layer's settings, its number of hidden units and mode; None if the
      kernel runs that layer. Every limit of the kernel is checked here, none only in `run`:
      the config validation calls this before anything is written or compiled.
  run(cell, carry0, xs, consts, *, unroll, remat) -> (carry, (ys, moments))
      called by `Recurrent` where it would call the scan, with the same arguments: the bound
      cell, the initial carry, the time-major scanned inputs {'inputs', 'mask', 'stats',
      'probe'?} and the hoisted constants {'cell', 'shared_stats'}; returns the final carry,
      the outputs [time, batch, hidden] (zero at padded steps) and the in-loop sites' per-step
      moments {site: {'mean', 'var', 'count'}} exactly as the scan returns them.

The parameters are the cell's own (the kernel reads them from the bound cell; initialization
always runs the scan), so checkpoints, re-estimation and every other tool work unchanged
whichever kernel trained the model. `refusal` is the one check, used by the config validation
(`normrnn.config.schema`), `RNNSpec` and `Recurrent`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from normrnn.cells import CELLS
from normrnn.kernels import cpu_lstm
from normrnn.kernels import fused_lstm
from normrnn.kernels import pallas_lstm
from normrnn.norms import NORMS

SCAN = 'scan'


@dataclasses.dataclass(frozen=True)
class Kernel:
  name: str
  doc: str
  supports: Callable[..., str | None]
  run: Callable


KERNELS: dict[str, Kernel] = {
    'fused': Kernel('fused', 'pure-JAX custom_vjp over the whole LSTM recurrence',
                    fused_lstm.supports, fused_lstm.run),
    'cpu': Kernel('cpu', "the fused kernel's two loops in C++ (XLA FFI, OpenBLAS), CPU backend",
                  cpu_lstm.supports, functools.partial(fused_lstm.run, native=True)),
    'pallas': Kernel('pallas', 'Pallas (Triton) kernel: the whole LSTM recurrence on chip',
                     pallas_lstm.supports, pallas_lstm.run),
}


def names() -> tuple[str, ...]:
  """Every valid model.kernel value."""
  return (SCAN,) + tuple(KERNELS)


def refusal(kernel: str, cell: str, scheme, *, hoist_input: bool, remat: bool, unroll: int,
            hidden: int, train: bool = True) -> str | None:
  """None if `kernel` runs this layer, else one line saying why not and what it supports.

  The schemes it supports are listed (found by asking `supports` for every registered scheme
  with these settings), unless every scheme is refused for this same reason: then the reason is
  about the layer (cell, unroll, hidden size), not its scheme, and is given alone with the scan
  as the alternative."""
  if kernel == SCAN:
    return None
  if kernel not in KERNELS:
    return f'unknown kernel; valid: {", ".join(names())}'
  settings = dict(hoist_input=hoist_input, remat=remat, unroll=unroll, hidden=hidden, train=train)
  reason = KERNELS[kernel].supports(cell, scheme, **settings)
  if reason is None:
    return None
  reasons = {name: KERNELS[kernel].supports(cell, s, **settings)
             for name, s in NORMS.items() if cell in s.cells}
  if all(r == reason for r in reasons.values()):
    return f'{reason}; use model.kernel=scan'
  ok = [name for name, r in reasons.items() if r is None]
  supported = (f'with cell={cell!r} it supports the schemes {", ".join(ok)}' if ok else
               f'it supports no scheme with cell={cell!r}')
  return f"{reason}; {supported}; kernel 'scan' runs every one"


def for_layer(kernel: str, cell, *, remat: bool, unroll: int) -> Kernel:
  """The registered kernel for a layer of `Recurrent` (`cell`: its bound cell module); a
  ValueError with `refusal`'s line if it does not support that layer."""
  name = next((k for k, v in CELLS.items() if type(cell) is v), type(cell).__name__)
  reason = refusal(kernel, name, cell.scheme, hoist_input=cell.hoist_input, remat=remat,
                   unroll=unroll, hidden=cell.hidden, train=cell.train)
  if reason is not None:
    raise ValueError(f'kernel={kernel!r} is not valid: {reason}')
  return KERNELS[kernel]
