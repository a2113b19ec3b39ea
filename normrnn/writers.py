"""MetricWriter: one metric vocabulary for JSONL, wandb and TensorBoard (NullWriter: the same
interface for the processes of a multi-process job that write nothing).

Every run writes into its workdir:
  config.json       the run's full config (sorted keys, indent 2), rewritten at each start.
  metrics.jsonl     one JSON object per `write`/`write_final` call: {"step": int, "time": unix s,
                    **metrics}. Metric keys are slash-namespaced ('train/loss', 'val/bpc', ...).
                    Non-finite values are written as null, so every line is valid JSON.
  wandb_run_id.txt  the wandb run id (unless wandb is disabled); a resumed run reuses it.
  wandb/            wandb's run directories (offline runs: `wandb sync workdir/wandb/offline-*`).
  tensorboard/      TensorBoard event files (optional), written without TensorFlow.

Two kinds of metrics: learning curves (`write`: train/, val/, val_batch/, logged many times) and
final numbers (`write_final`: test/, val_final/, test_batch/, test_stream/, ..., logged once after
training). wandb receives exactly the keys of the JSONL lines (with NaN kept as NaN), the final
numbers also as the run summary. TensorBoard gets the same keys, but only the learning curves as
scalars: its Time Series dashboard groups scalar tags by their first path component, sorts the
groups by name and expands only the first two, so single-point `test/...` scalars would open
first ('test' < 'train') and push the curves into collapsed groups. The final numbers go to one
text summary (tag `results`, a markdown table in the Text dashboard) instead.

Resuming: pass `resume_step` (the restored checkpoint's step). metrics.jsonl keeps only lines
with step <= resume_step, because a crashed run may have logged past its last checkpoint, and
TensorBoard is told to drop the orphaned events after resume_step (scalars and text alike).

wandb never blocks or kills a run: 'online' init is bounded by `wandb_init_timeout_s` and falls
back to 'offline' (then to no wandb) with a logged warning; a failing `run.log` turns wandb off.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
import threading
import time
from typing import Any, Callable, Mapping

from normrnn.jsonio import write_json_atomic

WANDB_MODES = ('disabled', 'offline', 'online')
_RESERVED_KEYS = ('step', 'time')
RESULTS_TAG = 'results'  # the TensorBoard text summary of `write_final`
_ID_ALPHABET = string.ascii_lowercase + string.digits

logger = logging.getLogger(__name__)


def read_metrics(path: str) -> list[dict]:
  """Parses a metrics.jsonl file.

  A trailing line without its newline (a run killed mid-write, or one still writing) is
  skipped. JSON nulls (non-finite values) come back as float('nan').

  Args:
    path: the metrics.jsonl file.

  Returns:
    One dict per complete line, in file order.

  Raises:
    ValueError: a complete line is not a JSON object with an int "step" (names the line).
  """
  with open(path, encoding='utf-8') as f:
    return [record for _, record in _parse_lines(f.read(), path)]


def _parse_lines(text: str, path: str) -> list[tuple[str, dict]]:
  """(line, record) for every complete, non-blank line of a JSONL text; see `read_metrics`."""
  out = []
  for lineno, line in enumerate(text.split('\n')[:-1], start=1):  # [-1]: '' or a partial line
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}:{lineno}: not a JSON line ({e}): {line[:200]!r}') from e
    if not isinstance(record, dict) or not isinstance(record.get('step'), int):
      raise ValueError(f'{path}:{lineno}: expected a JSON object with an int "step", got '
                       f'{line[:200]!r}')
    out.append((line, {k: (math.nan if v is None else v) for k, v in record.items()}))
  return out


class MetricWriter:
  """Writes scalar metrics to metrics.jsonl, and to wandb and TensorBoard if enabled.

  Usage:
    writer = MetricWriter(workdir, config=config.to_dict(), wandb_mode='offline', ...)
    writer.write(step, {'train/loss': loss, 'train/bpc': bpc})    # learning curves
    writer.write_final(step, {'test/bpc': 1.32, 'val_final/bpc': 1.30})  # once, after training
    writer.close()
  """

  def __init__(self, workdir: str, *, config: dict, wandb_mode: str, wandb_project: str,
               wandb_group: str, wandb_name: str, wandb_tags: tuple[str, ...],
               wandb_init_timeout_s: float, tensorboard: bool, resume_step: int | None):
    """Opens all outputs.

    Args:
      workdir: the run's directory (created if missing).
      config: the run's full config as a plain (JSON-serialisable) dict.
      wandb_mode: 'disabled' (wandb is not even imported), 'offline' or 'online'.
      wandb_project: wandb project.
      wandb_group: wandb group (one per paper table).
      wandb_name: wandb run name.
      wandb_tags: wandb tags.
      wandb_init_timeout_s: the most seconds 'online' init may take before falling back to
        'offline'.
      tensorboard: also write TensorBoard event files to workdir/tensorboard/.
      resume_step: the step of the checkpoint this run resumes from, or None for a new run.

    Raises:
      ValueError: unknown `wandb_mode`, non-positive timeout or negative `resume_step`.
    """
    if wandb_mode not in WANDB_MODES:
      raise ValueError(f'unknown wandb_mode {wandb_mode!r}; valid modes: {", ".join(WANDB_MODES)}')
    if not wandb_init_timeout_s > 0:
      raise ValueError(f'wandb_init_timeout_s must be > 0, got {wandb_init_timeout_s}')
    if resume_step is not None and resume_step < 0:
      raise ValueError(f'resume_step must be >= 0 or None, got {resume_step}')
    self.workdir = workdir
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, 'config.json'), config)

    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    _prepare_jsonl(self.metrics_path, resume_step)
    self._jsonl = open(self.metrics_path, 'a', encoding='utf-8')

    self._tb = None
    if tensorboard:
      self._tb = _TensorBoard(os.path.join(workdir, 'tensorboard'), resume_step)
    self._run = None
    if wandb_mode != 'disabled':
      self._run = _init_wandb(
          wandb_mode, workdir=workdir, timeout_s=wandb_init_timeout_s,
          init_kwargs=dict(project=wandb_project, group=wandb_group, name=wandb_name,
                           tags=list(wandb_tags), config=config, dir=workdir))

  @property
  def wandb_run(self):
    """The live wandb run, or None (disabled, or every init attempt failed)."""
    return self._run

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes one set of scalar metrics for `step` to every enabled output.

    Args:
      step: the training step (>= 0).
      metrics: {slash/namespaced key: scalar}; Python numbers, numpy scalars or 0-d arrays.

    Raises:
      ValueError: a key without a '/' namespace or a reserved key; a non-scalar value.
    """
    step, values, wall_time = self._write_jsonl(step, metrics)
    if self._tb is not None:
      self._tb.write(step, values, wall_time)
    self._call_wandb('log', lambda run: run.log(values, step=step))

  def write_final(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes the final numbers of a run (test/, val_final/, ...), once, after training.

    metrics.jsonl and wandb get them exactly like `write` does (one JSONL line, one `run.log`),
    and wandb also as the run summary. TensorBoard gets them as one text summary, tag `results`
    (a markdown table: one row per prefix, one column per metric), not as single-point scalar
    cards that would open before the learning curves.

    Args and Raises: as for `write`.
    """
    step, values, wall_time = self._write_jsonl(step, metrics)
    if self._tb is not None:
      self._tb.write_text(step, RESULTS_TAG, results_markdown(step, values), wall_time)
    self._call_wandb('log', lambda run: run.log(values, step=step))
    self._call_wandb('summary', lambda run: run.summary.update(values))

  def _write_jsonl(self, step: int, metrics: Mapping[str, Any]) -> tuple[int, dict, float]:
    """Checks the metrics and appends their JSONL line; returns (step, float values, time)."""
    step = int(step)
    values = {key: _scalar(key, value) for key, value in metrics.items()}
    record = {'step': step, 'time': time.time()}
    record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    self._jsonl.flush()
    return step, values, record['time']

  def summary(self, metrics: Mapping[str, Any]) -> None:
    """Sets the wandb run summary (final numbers); a no-op without wandb. `write_final` already
    does this for the numbers it writes."""
    values = {key: _scalar(key, value) for key, value in metrics.items()}
    self._call_wandb('summary', lambda run: run.summary.update(values))

  def close(self) -> None:
    """Flushes and closes every output and finishes the wandb run. Idempotent."""
    if not self._jsonl.closed:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self._call_wandb('finish', lambda run: run.finish())
    self._run = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _call_wandb(self, what: str, fn: Callable[[Any], Any]) -> None:
    """Calls fn(run); a wandb failure turns wandb off with a warning instead of killing the run."""
    if self._run is None:
      return
    try:
      fn(self._run)
    except Exception as e:  # pylint: disable=broad-except
      logger.warning('wandb %s failed (%s: %s); wandb is off for the rest of this run, '
                     'metrics.jsonl is complete.', what, type(e).__name__, e)
      self._run = None


class NullWriter:
  """MetricWriter's interface writing nothing: the writer of every process of a multi-process job
  but process 0, which alone writes the workdir's metric files. It still checks the metrics, so
  a bad key or value fails in every process alike."""

  wandb_run = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    del step
    for key, value in metrics.items():
      _scalar(key, value)

  write_final = write

  def summary(self, metrics: Mapping[str, Any]) -> None:
    self.write(0, metrics)

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _scalar(key: str, value: Any) -> float:
  """Checks a metric key and converts its value to a Python float."""
  if not isinstance(key, str) or '/' not in key or key in _RESERVED_KEYS:
    raise ValueError(f'metric keys must be slash-namespaced strings like "train/loss" or '
                     f'"val/bpc", got {key!r}')
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f'metric {key!r} must be a scalar, got {type(value).__name__} '
                     f'{getattr(value, "shape", "")}: {e}') from e


def results_markdown(step: int, values: Mapping[str, float]) -> str:
  """The final numbers as markdown: one row per prefix ('test', 'val_final', ...), one column per
  metric name ('loss', 'bpc', ...), both in first-seen order; '-' where a prefix lacks a name."""
  table: dict[str, dict[str, float]] = {}
  names: dict[str, None] = {}
  for key, value in values.items():
    prefix, name = key.split('/', 1)
    table.setdefault(prefix, {})[name] = value
    names.setdefault(name, None)
  lines = [f'Final metrics at step {step}, written once after training.', '',
           '| | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for prefix, row in table.items():
    cells = [f'{row[n]:.4g}' if n in row else '-' for n in names]
    lines.append(f'| {prefix} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _prepare_jsonl(path: str, resume_step: int | None) -> None:
  """Drops a partial trailing line and, when resuming, every line with step > resume_step."""
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if resume_step is None and (not text or text.endswith('\n')):
    return  # nothing to drop: keep appending
  keep = [line for line, record in _parse_lines(text, path)
          if resume_step is None or record['step'] <= resume_step]
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(line + '\n' for line in keep)
  os.replace(tmp, path)


def _event_files(logdir: str) -> list[str]:
  if not os.path.isdir(logdir):
    return []
  return [n for n in os.listdir(logdir)
          if n.startswith('events.out.tfevents.') and n.split('.')[3].isdigit()]


class _TensorBoard:
  """Scalar and text event files written with tensorboard's pure-Python writer (no TensorFlow)."""

  def __init__(self, logdir: str, resume_step: int | None):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.text import metadata as text_metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._text_metadata, self._tensor_util = text_metadata, tensor_util
    # TensorBoard reads event files in name order and names start with the creation second:
    # make sure a resumed run's file sorts after the earlier ones (the uid part of the name is
    # not zero-padded, so the same second can sort wrongly).
    latest = max((int(name.split('.')[3]) for name in _event_files(logdir)), default=-1)
    while int(time.time()) <= latest:
      time.sleep(0.05)
    self._writer = EventFileWriter(logdir)
    # TensorBoard discards events of earlier files with step >= a START event's step (the
    # "purge_step" mechanism): for a resumed run, whatever a crashed run logged after its
    # checkpoint. Every file starts with one, because TensorBoard's Python loader
    # (--load_fast=false) ignores the first START of a run and purges only at later ones; the
    # default Rust loader purges at each. A new run's START at step 0 purges nothing but a
    # restart-from-scratch's abandoned events.
    self._writer.add_event(event_pb2.Event(
        wall_time=time.time(), step=0 if resume_step is None else resume_step + 1,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    self._add(step, summary, wall_time)

  def write_text(self, step: int, tag: str, markdown: str, wall_time: float) -> None:
    """One text-plugin summary (what tf.summary.text writes): a scalar string tensor."""
    metadata = self._text_metadata.create_summary_metadata(display_name=tag, description='')
    summary = self._summary_pb2.Summary(value=[self._summary_pb2.Summary.Value(
        tag=tag, metadata=metadata, tensor=self._tensor_util.make_tensor_proto(markdown))])
    self._add(step, summary, wall_time)

  def _add(self, step: int, summary, wall_time: float) -> None:
    self._writer.add_event(self._event_pb2.Event(wall_time=wall_time, step=step, summary=summary))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _init_wandb(mode: str, *, workdir: str, timeout_s: float, init_kwargs: dict):
  """Starts a wandb run in `mode`, never raising and never hanging past `timeout_s`.

  'online' runs in a helper thread that is abandoned after `timeout_s`; wandb's own
  `init_timeout` is set a little shorter so that it normally gives up cleanly first. On any
  online failure the run falls back to 'offline' with the same run id (a later `wandb sync`
  uploads it); if that fails too, wandb is off. Every fallback is logged as a warning.

  Returns:
    The wandb run, or None.
  """
  import wandb  # pylint: disable=g-import-not-at-top
  kwargs = dict(init_kwargs, id=_run_id(workdir), resume='allow')
  if mode == 'online':
    settings = wandb.Settings(init_timeout=max(0.5 * timeout_s, timeout_s - 2.0))
    try:
      return _call_with_timeout(lambda: wandb.init(mode='online', settings=settings, **kwargs),
                                timeout_s)
    except Exception as e:  # pylint: disable=broad-except
      logger.warning('wandb online init failed (%s: %s); falling back to offline mode. Upload '
                     'later with `wandb sync %s`.', type(e).__name__, e,
                     os.path.join(workdir, 'wandb', 'offline-run-*'))
      # The failed init still holds the run id inside wandb's service process (a second init
      # with that id fails with "run ID ... is in use"), so shut the service down first.
      try:
        wandb.teardown()
      except Exception as e2:  # pylint: disable=broad-except
        logger.warning('wandb.teardown() after the failed init raised %s: %s',
                       type(e2).__name__, e2)
  try:
    return wandb.init(mode='offline', **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    logger.warning('wandb offline init failed (%s: %s); continuing without wandb '
                   '(metrics.jsonl is unaffected).', type(e).__name__, e)
    return None


def _run_id(workdir: str) -> str:
  """The run id stored in workdir/wandb_run_id.txt, created (8 chars of [a-z0-9]) if missing."""
  path = os.path.join(workdir, 'wandb_run_id.txt')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      run_id = f.read().strip()
    if run_id:
      return run_id
  run_id = ''.join(secrets.choice(_ID_ALPHABET) for _ in range(8))
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(run_id + '\n')
  os.replace(tmp, path)
  return run_id


def _call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
  """Returns fn() run in a daemon thread, or raises TimeoutError after `timeout_s` seconds.

  On timeout the thread is abandoned (it cannot be killed); fn's eventual result is dropped.
  """
  box = {}

  def target():
    try:
      box['result'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      box['error'] = e if isinstance(e, Exception) else RuntimeError(repr(e))

  thread = threading.Thread(target=target, name='wandb-init', daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise TimeoutError(f'no answer within {timeout_s:g} s')
  if 'error' in box:
    raise box['error']
  return box['result']
