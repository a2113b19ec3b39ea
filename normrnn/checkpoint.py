"""Checkpointer: atomic, resumable checkpoints of a training-state pytree (orbax).

Layout of `directory`:
  <step>/                     one complete orbax checkpoint per kept step.
  <step>.orbax-checkpoint-tmp-<ts>/
                              a checkpoint being written. Orbax writes there and renames it to
                              <step>/ only once it is complete, so a kill -9 leaves at most such a
                              leftover; it is never listed as a step and is deleted when the next
                              Checkpointer opens the directory.
  config_at_checkpoint.json   {"step": int, "config": dict}: the run's config at the most recent
                              `save(..., config=...)`, replaced atomically (temp file +
                              os.replace) after that checkpoint is complete. `saved_config()`
                              reads it, so a resumed run can compare its config with the one
                              that produced the checkpoint.

States are pytrees (dicts, flax struct dataclasses, optax namedtuple states, EmptyState) of
jax/numpy arrays. numpy scalar leaves (np.float32(3.0)), which orbax saves but cannot restore,
are turned into 0-d numpy arrays on save and in the restore target.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from normrnn.jsonio import write_json_atomic

CONFIG_FILE = 'config_at_checkpoint.json'

logger = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores training states under one directory, keeping the newest few.

  Usage:
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=2)
    step = ckpt.latest_step()
    if step is not None:
      state = ckpt.restore(step, state)   # `state`: a freshly initialised state (the target)
    ...
    ckpt.save(step, state, config=config_dict)
    ckpt.close()
  """

  def __init__(self, directory: str, *, max_to_keep: int):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: where the checkpoints live.
      max_to_keep: how many of the newest checkpoints to keep (>= 1).

    Raises:
      ValueError: max_to_keep < 1.
    """
    if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(f'max_to_keep must be an int >= 1, got {max_to_keep!r}')
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of all complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False,
           config: dict | None = None) -> bool:
    """Writes a checkpoint of `state` at `step` and waits until it is complete on disk.

    Saving a step that already has a checkpoint is a no-op (the loop may save the same step
    twice, e.g. periodically and again on a signal); saving a step older than the newest
    checkpoint is skipped with a warning unless `force`, in which case the newer ones become
    the oldest and are the first deleted by `max_to_keep`.

    Args:
      step: the training step the state belongs to.
      state: a pytree of arrays (numpy scalar leaves are allowed).
      force: save even a step older than the newest checkpoint.
      config: if given, the run's config dict, written to config_at_checkpoint.json once the
        checkpoint is complete.

    Returns:
      True if a checkpoint was written, False if it was skipped.
    """
    step = int(step)
    if step in self._manager.all_steps():
      logger.info('checkpoint for step %d already exists in %s; not saving again', step,
                  self.directory)
      return False
    saved = self._manager.save(step, args=ocp.args.StandardSave(_arrays(state)), force=force)
    self._manager.wait_until_finished()
    if not saved:
      logger.warning('checkpoint for step %d not saved: it is older than the latest checkpoint '
                     '(step %s) in %s; pass force=True to save it anyway', step,
                     self._manager.latest_step(), self.directory)
      return False
    if config is not None:
      write_json_atomic(os.path.join(self.directory, CONFIG_FILE),
                         {'step': step, 'config': config})
    return True

  def restore(self, step: int, target: Any) -> Any:
    """Restores the checkpoint of `step` into the structure, dtypes and shardings of `target`.

    Args:
      step: a step listed by `all_steps()`.
      target: a pytree shaped like the saved state, e.g. a freshly initialised state.

    Returns:
      The restored pytree, with the same tree structure as `target`.

    Raises:
      FileNotFoundError: no complete checkpoint for `step` (lists the available steps).
      ValueError: `target`'s structure or shapes do not match the checkpoint (orbax's message).
    """
    step = int(step)
    steps = self.all_steps()
    if step not in steps:
      raise FileNotFoundError(f'no complete checkpoint for step {step} in {self.directory}; '
                              f'available steps: {steps or "none"}')
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(_arrays(target)))
    except ValueError as e:
      raise ValueError(f'cannot restore step {step} of {self.directory} into the given target '
                       f'(does the model/optimizer config match the checkpoint?): {e}') from e

  def saved_config(self) -> dict | None:
    """The config saved with the most recent `save(..., config=...)`, or None if none was."""
    path = os.path.join(self.directory, CONFIG_FILE)
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
    latest = self.latest_step()
    if saved['step'] != latest:
      logger.warning('%s belongs to step %d but the latest checkpoint is step %s', path,
                     saved['step'], latest)
    return saved['config']

  def close(self) -> None:
    """Waits for pending work and releases orbax's resources."""
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _arrays(tree: Any) -> Any:
  """Replaces numpy scalar leaves by 0-d numpy arrays (orbax cannot restore numpy scalars)."""
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, np.generic) else x, tree)
