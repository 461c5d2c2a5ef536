"""TensorBoard scalars (process 0 only) and a progress line with steps/s and ETA."""

from __future__ import annotations

import datetime
import os
import time

import numpy as np


class MetricWriter:
  """Writes scalars to WORKDIR/tensorboard (a local path or gs://) as TensorBoard event files."""

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool):
    self._writer = None
    if enabled:
      import tensorflow as tf  # Heavy; only the writing process needs it.

      self._tf = tf
      self._writer = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

  def scalars(self, step: int, scalars: dict) -> None:
    if self._writer is None:
      return
    with self._writer.as_default(step=step):
      for name, value in scalars.items():
        self._tf.summary.scalar(name, float(np.asarray(value)))
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class Progress:
  """Speed since the last update and the time left at that speed."""

  def __init__(self, num_steps: int, start_step: int):
    self.num_steps = num_steps
    self._last_step, self._last_time = start_step, time.time()
    self.steps_per_second = float('nan')

  def update(self, step: int) -> float:
    now = time.time()
    self.steps_per_second = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    return self.steps_per_second

  def line(self, step: int) -> str:
    eta = (self.num_steps - step) / self.steps_per_second if self.steps_per_second > 0 else 0
    return (
      f'step {step}/{self.num_steps} ({100 * step / self.num_steps:.0f}%) | '
      f'{self.steps_per_second:.1f} steps/s | ETA {datetime.timedelta(seconds=round(eta))}'
    )
