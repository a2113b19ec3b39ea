"""Population statistics re-estimated from training batches (Cooijmans et al. 2016 sec. 3;
docs/method.md, "Population statistics", mechanism 2, the one behind the paper's reported test
numbers).

The authors' evaluation scripts reset the population statistics and set them to the plain
average of the per-batch statistics (per-batch means, per-batch biased variances) over one pass
of the training set, computed with the training-mode graph. `reestimate` does exactly that: for
every site and every time step it averages the batch moments over the batches in which that
step had at least one valid position; steps never seen keep their previous value.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from flax import traverse_util


class _Average:
  """Running sums of one site's per-batch moments, shaped like its population table
  ([max_time_steps, F] for per-step sites, [F] for shared ones)."""

  def __init__(self, table_shape):
    self.mean = np.zeros(table_shape, np.float64)
    self.var = np.zeros(table_shape, np.float64)
    self.batches = np.zeros(table_shape[:-1] + (1,), np.float64)  # batches that saw each step

  def add(self, mean, var, count):
    seen = (np.asarray(count) > 0).astype(np.float64)[..., None]
    steps = seen.shape[0] if seen.ndim == 2 else None
    where = slice(None) if steps is None else slice(0, steps)
    self.mean[where] += seen * np.asarray(mean, np.float64)
    self.var[where] += seen * np.asarray(var, np.float64)
    self.batches[where] += seen

  def result(self, old_mean, old_var):
    n = self.batches
    safe = np.maximum(n, 1.0)
    new_mean = np.where(n > 0, self.mean / safe, old_mean)
    new_var = np.where(n > 0, self.var / safe, old_var)
    return new_mean.astype(np.float32), new_var.astype(np.float32)


def reestimate(moments_fn: Callable, variables: dict, batches: Iterable) -> dict:
  """Returns new 'batch_stats': plain averages of per-batch moments over `batches`.

  Args:
    moments_fn: (variables, batch) -> the 'moments' collection of a training-mode apply, e.g.
      `jax.jit(lambda v, b: model.apply(v, b['inputs'], b['mask'], train=True,
                                        mutable=['moments'])[1]['moments'])`.
    variables: {'params', 'batch_stats', ...}.
    batches: iterable of batches (for the paper: one pass over the training set).

  Returns:
    A 'batch_stats' tree with the same structure as variables['batch_stats'].
  """
  old = traverse_util.flatten_dict(variables['batch_stats'])
  averages: dict[tuple, _Average] = {}
  num_batches = 0
  for batch in batches:
    num_batches += 1
    flat = traverse_util.flatten_dict(moments_fn(variables, batch))
    for key in flat:
      *path, sites, site, stat = key
      if sites != 'sites':
        raise ValueError(f'unexpected entry {key} in the moments collection')
      if stat == 'mean':
        table_key = (*path, f'{site}_mean')
        if table_key not in old:
          raise ValueError(f'moments for {table_key} have no population table in batch_stats')
        averages.setdefault((*path, site), _Average(np.shape(old[table_key]))).add(
            flat[key], flat[(*path, sites, site, 'var')], flat[(*path, sites, site, 'count')])
  if num_batches == 0:
    raise ValueError('reestimate needs at least one batch')
  new = dict(old)
  for (*path, site), avg in averages.items():
    mean_key, var_key = (*path, f'{site}_mean'), (*path, f'{site}_var')
    new[mean_key], new[var_key] = avg.result(np.asarray(old[mean_key]), np.asarray(old[var_key]))
  return traverse_util.unflatten_dict(new)
