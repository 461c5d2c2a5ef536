"""A jax.profiler trace of the train steps `config.profile_steps` names, where TensorBoard's
profiler reads it: `jax.profiler.start_trace(WORKDIR)` writes
WORKDIR/plugins/profile/<time>/<host>.xplane.pb (`tensorboard --logdir WORKDIR`, Profile tab).
"""

from __future__ import annotations

import os

import jax
from absl import logging


class StepProfiler:
  """Traces steps start..stop (counted from 1) of a loop that calls `before(step)` and
  `after(step, state)` around each step and `close()` at its end; a run resumed inside the
  range traces from its first step."""

  def __init__(self, steps: tuple[int, ...], workdir: str | os.PathLike):
    self.start, self.stop = steps or (0, -1)
    self.workdir = os.fspath(workdir)
    self.tracing = False

  def before(self, step: int) -> None:
    if not self.tracing and self.start <= step <= self.stop:
      jax.profiler.start_trace(self.workdir)
      self.tracing = True

  def after(self, step: int, state) -> None:
    if self.tracing and step >= self.stop:
      jax.block_until_ready(state)  # The traced steps end on the devices, not at dispatch.
      self.close()
      logging.info('Profile of steps %d-%d in %s/plugins/profile.', self.start, step, self.workdir)

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
