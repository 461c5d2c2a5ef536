"""What a run writes as it trains, process 0 only, through clu's metric writers: scalars, images
and the hyperparameters to TensorBoard (WORKDIR/tensorboard) and the scalars of each step to
WORKDIR/metrics.jsonl, both in background threads; train metrics as means over the steps since
the last log (`IntervalMean`); a progress line with steps/s, images/s and the time left.

Without TensorFlow or clu (clu's metric writers import TensorFlow), only metrics.jsonl is
written: this module imports neither, so that the trainer runs where they are missing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def write_atomically(path: epath.Path, text: str) -> None:
  """`text` into `path` through a temporary file, so a reader never sees half of it (and a
  bucket, which cannot append, gets whole files)."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)


def read_step_lines(path: epath.Path) -> dict[int, dict]:
  """{step: record} of a JSON-lines file of {"step": s, ...} records ({} when it is absent)."""
  if not path.exists():
    return {}
  return {r['step']: r for r in map(json.loads, path.read_text().splitlines())}


def step_lines(records: Mapping[int, dict]) -> str:
  """{step: record} as the text of a JSON-lines file, steps ascending."""
  return ''.join(json.dumps(records[step]) + '\n' for step in sorted(records))


class JsonLinesWriter:
  """The scalars of each step as one JSON line of a file, {"step": s, tag: value, ...}, steps
  ascending; clu's MetricWriter interface for scalars (images and hyperparameters are
  TensorBoard's; config.json holds the config). The file is rewritten whole (a bucket cannot
  append) in a background thread, with at most one rewrite waiting. A run resumed at
  `start_step` keeps the lines of the steps up to it and writes the later ones again."""

  def __init__(self, path: epath.Path, start_step: int):
    self._path = path
    self._records = {s: r for s, r in read_step_lines(path).items() if s <= start_step}
    self._lock = threading.Lock()
    self._rewrite_waiting = False
    self._thread = futures.ThreadPoolExecutor(1, thread_name_prefix='JsonLinesWriter')
    self._last_rewrite = None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    with self._lock:
      record = self._records.setdefault(step, {'step': step})
      record.update({tag: float(value) for tag, value in scalars.items()})
      if self._rewrite_waiting:
        return
      self._rewrite_waiting = True
    self._last_rewrite = self._thread.submit(self._rewrite)

  def _rewrite(self) -> None:
    with self._lock:
      self._rewrite_waiting = False
      text = step_lines(self._records)
    write_atomically(self._path, text)

  def write_images(self, step: int, images: Mapping) -> None:
    del step, images  # TensorBoard's.

  def write_hparams(self, hparams: Mapping) -> None:
    del hparams  # config.json holds them.

  def flush(self) -> None:
    """Waits for the file to be written; raises what writing it raised."""
    if self._last_rewrite is not None:
      self._last_rewrite.result()

  def close(self) -> None:
    try:
      self.flush()
    finally:
      self._thread.shutdown()


def create_writer(workdir: epath.Path, start_step: int):
  """clu's MultiWriter of TensorBoard (in a background thread) and WORKDIR/METRICS_FILE; the
  latter alone, with a warning, where TensorFlow or clu cannot be imported."""
  jsonl = JsonLinesWriter(workdir / METRICS_FILE, start_step)
  try:
    import tensorflow  # noqa: F401  clu's metric writers import it.
    from clu import metric_writers
  except ImportError as error:
    logging.warning(
      'No TensorBoard (%s): metrics go to %s only; tensorflow-cpu and clu would add it.',
      error,
      workdir / METRICS_FILE,
    )
    return jsonl
  tensorboard = metric_writers.SummaryWriter(os.fspath(workdir / TENSORBOARD_DIR))
  return metric_writers.MultiWriter([metric_writers.AsyncWriter(tensorboard), jsonl])


class RunWriter:
  """A run's writer: on process 0 (`enabled`) `create_writer`'s, train metrics under `train/`,
  evaluations under `eval/`; on the others, nothing."""

  def __init__(self, workdir: epath.Path, *, enabled: bool, start_step: int):
    self._writer = create_writer(workdir, start_step) if enabled else None

  def hparams(self, config) -> None:
    """The config, flattened to dotted keys (clu's `write_hparams`)."""
    if self._writer:
      self._writer.write_hparams(config.to_dict())

  def train(self, step: int, metrics: Mapping[str, float]) -> None:
    if self._writer:
      self._writer.write_scalars(step, {f'train/{k}': v for k, v in metrics.items()})

  def evaluation(self, step: int, figures: Mapping[str, float]) -> None:
    if self._writer:
      self._writer.write_scalars(step, {f'eval/{k}': v for k, v in figures.items()})

  def images(self, step: int, images: Mapping) -> None:
    """Float [H, W, C] images in [0, 1] under their tags."""
    if self._writer:
      self._writer.write_images(step, images)

  def close(self) -> None:
    if self._writer:
      self._writer.close()


@jax.jit
def _accumulate(sums: dict, counts: dict, metrics: dict) -> tuple[dict, dict]:
  """(sums, counts) of each metric's finite values, `metrics` (scalars) added."""
  finite = jax.tree.map(jnp.isfinite, metrics)
  sums = jax.tree.map(lambda s, m, f: s + jnp.where(f, m, 0).astype(s.dtype), sums, metrics, finite)
  return sums, jax.tree.map(lambda c, f: c + f.astype(c.dtype), counts, finite)


class IntervalMean:
  """The mean of each metric's finite values over the steps since the last `mean()` (a step
  that `config.nonfinite='skip'` skipped counts in none; a metric never finite is NaN). The
  sums stay on the devices (one jitted add per step, which nothing waits for) until `mean()`
  fetches them."""

  def __init__(self):
    self._sums = self._counts = None

  def add(self, metrics: dict) -> None:
    """`metrics`: scalar arrays (a step's), under the same names at every step."""
    if self._sums is None:
      self._sums = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), metrics)
      self._counts = jax.tree.map(lambda _: jnp.zeros((), jnp.int32), metrics)
    self._sums, self._counts = _accumulate(self._sums, self._counts, metrics)

  def mean(self) -> dict[str, float]:
    """The means since the last call; starts a new interval."""
    sums, counts = jax.device_get((self._sums, self._counts))
    self._sums = self._counts = None
    return {name: float(sums[name]) / counts[name] if counts[name] else math.nan for name in sums}


class Progress:
  """Steps/s and images/s since the last update, and the time left at that speed, counting only
  the seconds spent training: those inside `paused()` (evaluations, dataset passes) and before
  `restart` (compilation) are left out."""

  def __init__(
    self,
    num_steps: int,
    start_step: int,
    images_per_step: int,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.num_steps, self.images_per_step, self._clock = num_steps, images_per_step, clock
    self.steps_per_second = math.nan
    self._last_step, self._last_time, self._paused = start_step, clock(), 0.0

  def restart(self, step: int) -> float:
    """Starts the interval anew at `step`; the seconds since the last update or restart, not
    counting pauses (after the first step: its compilation and run)."""
    now = self._clock()
    seconds = now - self._last_time - self._paused
    self._last_step, self._last_time, self._paused = step, now, 0.0
    return seconds

  @contextlib.contextmanager
  def paused(self):
    """Seconds spent in this context do not count toward the speed."""
    start = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - start

  def update(self, step: int) -> dict[str, float]:
    """{steps_per_second, images_per_second} since the last update or restart (unchanged if no
    step was done; {} until a step after the first has been timed)."""
    steps = step - self._last_step
    seconds = self.restart(step)
    if steps > 0:
      self.steps_per_second = steps / max(seconds, 1e-9)
    if math.isnan(self.steps_per_second):
      return {}
    return {
      'steps_per_second': self.steps_per_second,
      'images_per_second': self.steps_per_second * self.images_per_step,
    }

  def line(self, step: int) -> str:
    """'step S/N (P%) | steps/s | images/s | ETA', the speed 'not timed yet' before `update`
    has timed a step after the first."""
    prefix = f'step {step}/{self.num_steps} ({100 * step / self.num_steps:.0f}%)'
    speed = self.steps_per_second
    if math.isnan(speed):
      return f'{prefix} | speed not timed yet (the first step compiles)'
    eta = (self.num_steps - step) / speed if speed > 0 else 0
    return (
      f'{prefix} | {speed:.1f} steps/s | {speed * self.images_per_step:.0f} images/s | '
      f'ETA {datetime.timedelta(seconds=round(eta))}'
    )
